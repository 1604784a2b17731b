"""``python -m genbench.evaluate run_dir=<path> [eval=fast] [eval.<key>=<value> ...] [device=cpu]``

Re-evaluates a finished run from its ``config.yaml`` and ``checkpoints/last.ckpt`` (e.g. once the Inception
weights are available), with the run's own evaluation config or another ``conf/eval/<name>.yaml``, and merges
the results into its ``metrics.json``: recomputed keys are overwritten, every other key is kept, and skip records
of metrics that now have values are dropped. Example::

    python -m genbench.evaluate run_dir=outputs/vae/mnist/2024-01-01_12-00-00 eval.inception.weights_path=~/w.pth

Arguments are ``key=value`` pairs: ``run_dir`` (required), ``checkpoint`` (default ``checkpoints/last.ckpt``,
relative to run_dir), ``device`` (``auto``), ``eval`` (a config name under conf/eval) and ``eval.*`` overrides.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from genbench.errors import UserError
from genbench.io import write_json
from genbench.run.paths import CONFIG_DIR
from genbench.run.record import merge_metrics
from genbench.run.resume import register_resolvers

log = logging.getLogger(__name__)


class RunNotFound(UserError, FileNotFoundError):
    """run_dir is not a genbench run directory."""


USAGE = "usage: python -m genbench.evaluate run_dir=<path> [eval=<name>] [eval.<key>=<value> ...] [device=auto|cpu|cuda] [checkpoint=<path>]"


def parse_args(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments into options (run_dir, checkpoint, device, eval) and ``eval.*`` overrides."""
    options: dict[str, str] = {"checkpoint": "checkpoints/last.ckpt", "device": "auto"}
    overrides: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {arg!r}\n{USAGE}")
        if key in ("run_dir", "checkpoint", "device", "eval"):
            options[key] = value
        elif key.startswith("eval."):
            overrides.append(arg)
        else:
            raise SystemExit(f"unknown argument {key!r}\n{USAGE}")
    if "run_dir" not in options:
        raise SystemExit(f"run_dir is required\n{USAGE}")
    return options, overrides


def evaluation_config(cfg: DictConfig, eval_name: str | None, overrides: Sequence[str]) -> DictConfig:
    """The run config with its ``eval`` node replaced by ``conf/eval/<eval_name>.yaml`` (when given) and
    ``eval.*`` overrides applied."""
    cfg = cfg.copy()
    if eval_name is not None:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        register_resolvers()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            composed = compose("config", overrides=[f"eval={eval_name}", *overrides])
        GlobalHydra.instance().clear()
        cfg.eval = composed.eval  # its interpolations (${eval.inception...}) resolve against the run config
        return cfg
    for override in overrides:
        key, _, value = override.partition("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=True)
    return cfg


def load_model(cfg: DictConfig, checkpoint: Path, device: torch.device):
    """The run's model, rebuilt from its config, with the checkpoint's weights (GLO's code table resizes on load)."""
    import hydra

    from genbench.interface import GenerativeModel
    from genbench.run.checkpoints import load_checkpoint

    model = hydra.utils.instantiate(cfg.model)
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"{type(model).__name__} does not implement genbench.interface.GenerativeModel")
    model.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    return model.to(device).eval()


def evaluate(
    run_dir: str | Path,
    eval_name: str | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    checkpoint: str | Path = "checkpoints/last.ckpt",
) -> dict[str, Any]:
    """Re-evaluate the run in ``run_dir``; write and return its merged ``metrics.json``."""
    import hydra

    from genbench.callbacks.evaluation import run_evaluators

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunNotFound(f"{config_path} does not exist: is {run_dir} a genbench run directory?")
    cfg = evaluation_config(OmegaConf.load(config_path), eval_name, overrides)
    where = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    checkpoint = run_dir / checkpoint
    datamodule = hydra.utils.instantiate(cfg.data)
    model = load_model(cfg, checkpoint, where)
    evaluators = {
        name: hydra.utils.instantiate(spec) for name, spec in cfg.eval.evaluators.items() if spec is not None
    }
    started = time.perf_counter()
    results, _ = run_evaluators(
        evaluators,
        model,
        datamodule,
        run_dir,
        where,
        int(cfg.seed),
        final=True,
        samplers=list(cfg.eval.get("samplers") or []),
    )
    log.info("evaluated %s in %.1fs", run_dir, time.perf_counter() - started)

    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        existing = json.loads(metrics_path.read_text())
    else:  # a run that never finished: say so, and who it is
        existing = {
            "status": "unfinished",
            "model": cfg.get("model_name"),
            "data": cfg.data.name,
            "image_size": cfg.data.image_size,
            "seed": cfg.seed,
            "sampler": model.sampler_name,
        }
    merged = merge_metrics(existing, results)
    for entry in merged.get("other_protocols", {}).values():
        kept_apart = [k for k, v in entry["values"].items() if results.get(k) == v]
        if kept_apart:
            log.info(
                "%s: measured under another protocol (%s) than the run's; kept under other_protocols, the run's "
                "values stay",
                ", ".join(sorted(kept_apart)),
                ", ".join(
                    f"{k}={v}" for k, v in sorted(entry["protocol"].items()) if k in ("n_gen", "n_ref")
                ),
            )
    record = {"checkpoint": str(checkpoint), "eval": eval_name or "the run's", "overrides": list(overrides)}
    merged["reevaluations"] = [
        *existing.get("reevaluations", []),
        {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
    ]
    write_json(metrics_path, merged)
    return merged


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from genbench.run.outcome import run_entry

    options, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    merged = run_entry(
        lambda: evaluate(
            options["run_dir"], options.get("eval"), overrides, options["device"], options["checkpoint"]
        )
    )
    print(f"\nupdated {Path(options['run_dir']) / 'metrics.json'}")
    for key, value in sorted(merged.items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            print(f"  {key}: {value:.6g}" if isinstance(value, float) else f"  {key}: {value}")


if __name__ == "__main__":
    main()
