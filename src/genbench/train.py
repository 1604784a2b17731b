"""The composition root: config -> datamodule, model, callbacks, loggers, trainer -> fit -> metrics.json."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from genbench.run.callbacks import ConfigInCheckpoint, EpochSummary, RNGState, Throughput
from genbench.callbacks.evaluation import Evaluation
from genbench.run.checkpoints import check_compatible
from genbench.run.launcher import kill_this_process, launched_as_global_zero, local_ranks, strategy_for
from genbench.interface import GenerativeModel
from genbench.io import atomic_path, write_json
from genbench.run.loggers import build_loggers, finish_wandb

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = [
        "torch",
        "torchvision",
        "pytorch-lightning",
        "hydra-core",
        "torchmetrics",
        "torch-fidelity",
        "wandb",
        "numpy",
    ]
    versions = {"python": sys.version.split()[0], "genbench": md.version("genbench")}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_callbacks(
    cfg: DictConfig, run_dir: Path, resolved: dict[str, Any]
) -> tuple[list[pl.Callback], Throughput, Evaluation]:
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    throughput = Throughput()
    evaluators = {
        name: hydra.utils.instantiate(spec) for name, spec in cfg.eval.evaluators.items() if spec is not None
    }
    evaluation = Evaluation(evaluators, run_dir, seed=cfg.seed, every_n_epochs=cfg.eval.every_n_epochs)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0, every_n_epochs=1
    )
    callbacks: list[pl.Callback] = [
        throughput,
        RNGState(),
        ConfigInCheckpoint(resolved),
        checkpoint,
        evaluation,
    ]
    callbacks.append(TQDMProgressBar(refresh_rate=10) if sys.stderr.isatty() else EpochSummary())
    return callbacks, throughput, evaluation


def final_metrics(
    cfg: DictConfig, trainer: pl.Trainer, throughput: Throughput, evaluation: Evaluation, model
) -> dict[str, Any]:
    """The flat record written to metrics.json."""
    logged = {
        k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and not k.endswith("_step")
    }
    return {
        "status": "finished",
        "model": cfg.model_name,
        "data": cfg.data.name,
        "image_size": cfg.data.image_size,
        "seed": cfg.seed,
        "sampler": model.sampler_name,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_seconds": throughput.train_seconds,
        "images_per_second": throughput.images_per_second,
        "world_size": trainer.world_size,
        **{k.replace("/", "_") if k.startswith(("train/", "val/")) else k: v for k, v in logged.items()},
        **evaluation.results,
        "versions": library_versions(),
        "git_commit": git_commit(),
    }


def failure_record(cfg: DictConfig, error: str) -> dict[str, Any]:
    return {"status": "failed", "error": error, "data": cfg.data.name, "seed": cfg.seed}


def worker_failure_handler(cfg: DictConfig, run_dir: Path) -> Callable[[int, int], None]:
    """What rank 0 does when a DDP worker dies: record the failure, then end (it may be blocked in a collective)."""

    def on_failure(rank: int, code: int) -> None:
        write_json(run_dir / "metrics.json", failure_record(cfg, f"DDP rank {rank} exited with code {code}"))
        kill_this_process(rank, code)

    return on_failure


def write_resolved_config(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return resolved


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one model on one dataset; returns (and writes) the run's metrics."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    rank_zero = launched_as_global_zero()
    resolved = write_resolved_config(cfg, run_dir) if rank_zero else OmegaConf.to_container(cfg, resolve=True)
    if cfg.print_config and rank_zero:
        print(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        model = hydra.utils.instantiate(cfg.model)
        if not isinstance(model, GenerativeModel):
            raise TypeError(f"{type(model).__name__} does not implement genbench.interface.GenerativeModel")
        callbacks, throughput, evaluation = build_callbacks(cfg, run_dir, resolved)
        loggers = build_loggers(cfg, run_dir, resolved, rank_zero) if cfg.logger else False
        trainer: pl.Trainer = hydra.utils.instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers,
            enable_progress_bar=sys.stderr.isatty(),
            strategy=strategy_for(cfg.trainer.strategy, model),
        )
        if cfg.ckpt_path:
            check_compatible(cfg.ckpt_path, resolved)
        if cfg.compile and model.compile_unsupported:
            raise ValueError(
                f"compile=true: {type(model).__name__} cannot be compiled: {model.compile_unsupported}. "
                "Run it without compile=true (trainer.precision=bf16-mixed is the other speed switch)"
            )
        fit_model = torch.compile(model) if cfg.compile else model
        started = time.perf_counter()
        # DDP ranks on this node: started here, not by Lightning re-running the (Hydra sweep) command line
        with local_ranks(trainer, resolved, on_failure=worker_failure_handler(cfg, run_dir)):
            trainer.fit(fit_model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        metrics = final_metrics(cfg, trainer, throughput, evaluation, model)
    except BaseException as exc:
        if rank_zero:
            write_json(run_dir / "metrics.json", failure_record(cfg, f"{type(exc).__name__}: {exc}"))
        finish_wandb(failed=True)
        raise
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        log.info("run directory: %s (%.1fs)", run_dir, time.perf_counter() - started)
        print(f"\nrun directory: {run_dir}")
        for key, value in sorted(shown.items()):
            print(f"  {key}: {value:.6g}" if isinstance(value, float) else f"  {key}: {value}")
    finish_wandb(failed=False)  # a sweep's next job in this process must start its own W&B run
    return metrics
