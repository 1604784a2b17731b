#!/usr/bin/env bash
# `make results`: the sweeps behind results/README.md, then its render. Two streams run side by side, each on one
# CPU core (OMP_NUM_THREADS=1; a 2-core machine): MNIST then CelebA-64, and Fashion-MNIST then the incremental-GLO
# Figure-4 rows. Each sweep logs to <runs>/<name>.log; a sweep that fails does not stop the others, and the render
# lists its failed runs. Rerun with RESULTS_RESUME=true to continue interrupted runs from their checkpoints.
#   RESULTS_RUNS (outputs/results)  RESULTS_SEEDS (0,1)  RESULTS_THREADS (1)  RESULTS_RESUME (false)  PY (.venv/bin/python)
set -uo pipefail
RUNS=${RESULTS_RUNS:-outputs/results}
SEEDS=${RESULTS_SEEDS:-0,1}
THREADS=${RESULTS_THREADS:-1}
RESUME=${RESULTS_RESUME:-false}
PY=${PY:-.venv/bin/python}
MODELS=experiment=results/glo,results/incremental_glo,results/vae,results/mmd_vae,results/alae
CELEBA=experiment=results/celeba64/glo,results/celeba64/incremental_glo,results/celeba64/vae
FIG4=experiment=results/fig4_glo,results/fig4_incremental_glo,results/fig4_incremental_glo_continuity
mkdir -p "$RUNS"

sweep() {  # sweep <name> <overrides...>: one Hydra multirun into $RUNS/<name>
  local name=$1
  shift
  echo "$(date +%H:%M:%S) start  $name: python -m genbench -m $* seed=$SEEDS hydra.sweep.dir=$RUNS/$name (log: $RUNS/$name.log)"
  if OMP_NUM_THREADS=$THREADS "$PY" -m genbench -m "$@" "seed=$SEEDS" "hydra.sweep.dir=$RUNS/$name" \
    "resume=$RESUME" >"$RUNS/$name.log" 2>&1; then
    echo "$(date +%H:%M:%S) done   $name"
  else
    echo "$(date +%H:%M:%S) FAILED $name (see $RUNS/$name.log)"
    return 1
  fi
}

(
  status=0
  sweep mnist "$MODELS" data=mnist || status=1
  sweep celeba64 "$CELEBA" data=celeba || status=1
  exit $status
) &
first=$!
(
  status=0
  sweep fashion_mnist "$MODELS" data=fashion_mnist || status=1
  sweep fig4 "$FIG4" data=fashion_mnist || status=1
  exit $status
) &
second=$!
status=0
wait $first || status=1
wait $second || status=1
"$PY" -m genbench.results --layout results/layout.yaml --out results || status=1
exit $status
