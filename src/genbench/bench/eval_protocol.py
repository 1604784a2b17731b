"""The default evaluation's cost at its real protocol: seconds per evaluator for VAE and GLO on real MNIST.

Each model trains one epoch (``eval=none``, a ``python -m genbench`` process: the benchmark reads run directories,
it does not compose runs itself) into a temporary run directory, then ``genbench.evaluate`` judges it
with ``conf/eval/default.yaml`` exactly as a user's run is judged (10k vs 10k classifier features, reconstruction,
neighbours over the train split, every picture). The feature classifier is trained first, untimed, if it is not in
the cache (``make classifiers`` does it ahead of time); its training time is reported apart.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODELS = ("vae", "glo")


def bench_eval_protocol(data_root: str, tmp: Path, models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    """{"rows": [{"model", "evaluators": {name: s}, "total"}], "classifier_seconds": s or None}."""
    from hydra.utils import instantiate

    from genbench.bench.configs import compose_run
    from genbench.classifier import classifier_path, load_or_train
    from genbench.evaluate import evaluate

    os.environ["GENBENCH_DATA"] = str(data_root)
    rows, classifier_seconds = [], None
    for model in models:
        run_dir = tmp / f"eval-protocol-{model}"
        # preset=none: genbench's own model settings, whose evaluation the budgets are about (not a paper's setting,
        # which may add samplers such as GLANN's IMLE).
        overrides = [
            f"model={model}",
            "data=mnist",
            "preset=none",
            "trainer.max_epochs=1",
            "eval=none",
            "logger=none",
        ]
        cfg = compose_run(overrides, run_dir)
        if classifier_seconds is None:
            datamodule = instantiate(cfg.data)
            path = classifier_path(datamodule.name, datamodule.image_size)
            if not path.is_file():
                started = time.perf_counter()
                load_or_train(datamodule, "cuda" if _cuda() else "cpu")
                classifier_seconds = time.perf_counter() - started
        log.info("eval protocol: training %s one epoch on MNIST", model)
        subprocess.run(
            [sys.executable, "-m", "genbench", *overrides, f"hydra.run.dir={run_dir}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        started = time.perf_counter()
        merged = evaluate(run_dir, "default")  # the run trained with eval=none; judge it as a default run
        rows.append(
            {
                "model": model,
                "evaluators": dict(merged.get("eval_seconds", {})),
                "wall_seconds": time.perf_counter() - started,
                "fid_classifier": next(
                    (v for k, v in merged.items() if k.startswith("fid_classifier@")), None
                ),
            }
        )
    return {"rows": rows, "classifier_seconds": classifier_seconds}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def format_eval_protocol(result: dict[str, Any]) -> str:
    rows = result.get("rows") or []
    if not rows:
        return ""
    names = sorted({n for r in rows for n in r["evaluators"] if n != "total"})
    header = ["model", *names, "total s", "wall s"]
    lines = [
        "Default evaluation on real MNIST (seconds per evaluator, after 1 training epoch)",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        cells = [r["model"], *(f"{r['evaluators'].get(n, 0):.1f}" for n in names)]
        cells += [f"{r['evaluators'].get('total', 0):.1f}", f"{r['wall_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("classifier_seconds") is not None:
        lines.append(
            f"(the MNIST feature classifier was trained first, untimed above: {result['classifier_seconds']:.0f}s)"
        )
    return "\n".join(lines)
