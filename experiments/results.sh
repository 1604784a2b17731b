#!/usr/bin/env bash
# `make results`: the sweeps behind results/README.md, then its render. Two streams run side by side, each on one
# CPU core (OMP_NUM_THREADS=1; a 2-core machine): MNIST then the first half of the seeds of the incremental-GLO
# Figure-4 rows and of CelebA-64, and Fashion-MNIST then the second half. Each sweep logs to <runs>/<name>.log; a
# sweep that fails does not stop the others, and the render lists its failed runs. Rerun with RESULTS_RESUME=true
# to continue interrupted runs from their checkpoints.
#   RESULTS_RUNS (outputs/results)  RESULTS_SEEDS (0,1)  RESULTS_THREADS (1)  RESULTS_RESUME (false)
#   RESULTS_CELEBA (true: the CelebA-64 sweeps; false skips them)  PY (.venv/bin/python)
set -uo pipefail
RUNS=${RESULTS_RUNS:-outputs/results}
SEEDS=${RESULTS_SEEDS:-0,1}
THREADS=${RESULTS_THREADS:-1}
RESUME=${RESULTS_RESUME:-false}
CELEBA_TOO=${RESULTS_CELEBA:-true}
PY=${PY:-.venv/bin/python}
MODELS=experiment=results/glo,results/glo_default,results/incremental_glo,results/vae,results/mmd_vae,results/alae
CELEBA=experiment=results/celeba64/glo,results/celeba64/glo_default,results/celeba64/incremental_glo,results/celeba64/vae
FIG4=experiment=results/fig4_glo,results/fig4_incremental_glo,results/fig4_incremental_glo_continuity
IFS=, read -r -a ALL <<<"$SEEDS"
HALF=$(((${#ALL[@]} + 1) / 2))
FIRST=$(IFS=,; echo "${ALL[*]:0:HALF}")
SECOND=$(IFS=,; echo "${ALL[*]:HALF}")
mkdir -p "$RUNS"

sweep() {  # sweep <name> <seeds> <overrides...>: one Hydra multirun into $RUNS/<name>
  local name=$1 seeds=$2
  shift 2
  [ -n "$seeds" ] || return 0
  mkdir -p "$(dirname "$RUNS/$name")"
  echo "$(date +%H:%M:%S) start  $name: python -m genbench -m $* seed=$seeds hydra.sweep.dir=$RUNS/$name (log: $RUNS/$name.log)"
  if OMP_NUM_THREADS=$THREADS "$PY" -m genbench -m "$@" "seed=$seeds" "hydra.sweep.dir=$RUNS/$name" \
    "resume=$RESUME" >"$RUNS/$name.log" 2>&1; then
    echo "$(date +%H:%M:%S) done   $name"
  else
    echo "$(date +%H:%M:%S) FAILED $name (see $RUNS/$name.log)"
    return 1
  fi
}

stream() {  # stream <main dataset> <seeds of the per-seed sweeps>
  local data=$1 seeds=$2 status=0
  sweep "$data" "$SEEDS" "$MODELS" "data=$data" || status=1
  sweep "fig4/seeds_$seeds" "$seeds" "$FIG4" data=fashion_mnist || status=1
  if [ "$CELEBA_TOO" = true ]; then
    sweep "celeba64/seeds_$seeds" "$seeds" "$CELEBA" data=celeba || status=1
  fi
  return $status
}

stream mnist "$FIRST" &
first=$!
stream fashion_mnist "$SECOND" &
second=$!
status=0
wait $first || status=1
wait $second || status=1
"$PY" -m genbench.results --layout results/layout.yaml --out results || status=1
exit $status
