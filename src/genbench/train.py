"""The composition root: config -> datamodule, model, callbacks, loggers, trainer -> fit -> metrics.json.

The run's lifecycle (its record, checkpoints, signals, resuming, the DDP ranks) lives in ``genbench.run``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from genbench.callbacks.evaluation import Evaluation
from genbench.interface import GenerativeModel
from genbench.io import atomic_path
from genbench.run import record
from genbench.run.callbacks import (
    BatchLimit,
    ConfigInCheckpoint,
    DivergenceGuard,
    EpochSummary,
    FinalCheckpoint,
    LastCheckpoint,
    Preemption,
    RNGState,
    RunInterrupted,
    Throughput,
)
from genbench.run.checkpoints import AtomicCheckpointIO, check_compatible, last_checkpoint
from genbench.run.launcher import kill_this_process, launched_as_global_zero, local_ranks, strategy_for
from genbench.run.lifecycle import (
    already_finished,
    prepare_run_dir,
    resume_point,
    signal_name,
    slurm_plugins,
    worker_resume_point,
)
from genbench.run.lock import RunLock
from genbench.run.loggers import build_loggers, finish_wandb
from genbench.run.provenance import git_commit, library_versions, machine
from genbench.run.quiet import silence_inapplicable_warnings
from genbench.run.validation import ConfigError, validate_config

log = logging.getLogger(__name__)


def build_callbacks(
    cfg: DictConfig, run_dir: Path, resolved: dict[str, Any], preemption: Preemption
) -> tuple[list[pl.Callback], Throughput, Evaluation, LastCheckpoint]:
    from pytorch_lightning.callbacks import TQDMProgressBar

    throughput = Throughput()
    max_batches = batch_limit(cfg)
    evaluators = {
        name: hydra.utils.instantiate(spec) for name, spec in cfg.eval.evaluators.items() if spec is not None
    }
    evaluation = Evaluation(
        evaluators,
        run_dir,
        seed=cfg.seed,
        every_n_epochs=cfg.eval.every_n_epochs,
        samplers=list(cfg.eval.get("samplers") or []),
        periodic_evaluators=(
            list(cfg.eval.periodic_evaluators) if cfg.eval.get("periodic_evaluators") is not None else None
        ),
        periodic_at_end=bool(cfg.eval.get("periodic_at_end", False)),
    )
    guard = DivergenceGuard(cfg.divergence.check_every_n_steps)
    checkpoint = LastCheckpoint(
        last_checkpoint(run_dir), cfg.checkpoint.every_minutes, cfg.checkpoint.every_n_steps, guard
    )
    preemption.checkpoint = checkpoint
    progress = (
        TQDMProgressBar(refresh_rate=10) if sys.stderr.isatty() else EpochSummary(throughput, max_batches)
    )
    # order matters: batches are counted, then the limit stops after its batch, before the guard, checkpoints or
    # signals act on that batch; the guard sees a diverged step before a checkpoint could keep it; signals stop the
    # epoch-end hooks at once; the final weights are saved before the final evaluation; the epoch's checkpoint last
    limit = [BatchLimit(max_batches, throughput)] if max_batches > 0 else []
    callbacks: list[pl.Callback] = [
        throughput,
        *limit,
        RNGState(),
        ConfigInCheckpoint(resolved),
        guard,
        preemption,
        FinalCheckpoint(checkpoint),
        evaluation,
        progress,
        checkpoint,
    ]
    return callbacks, throughput, evaluation, checkpoint


def batch_limit(cfg: DictConfig) -> int:
    """``trainer.max_steps``: genbench counts it in batches (-1: no limit), whatever the number of optimisers."""
    max_steps = cfg.trainer.get("max_steps", -1)
    return -1 if max_steps is None else int(max_steps)


def lightning_limits(cfg: DictConfig) -> dict[str, Any]:
    """The Trainer's own limits: epochs only. Lightning's ``max_steps`` counts optimiser steps (4 a batch for the
    MLP-ALAE), so the batch limit is :class:`BatchLimit`'s; an epoch count of null then means no epoch limit."""
    max_epochs = cfg.trainer.get("max_epochs")
    return {"max_steps": -1, "max_epochs": -1 if max_epochs is None else max_epochs}


def device_name(device: torch.device) -> str:
    """ "cpu", or the accelerator's model name (an H200, not "cuda:0")."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def batches_seen(trainer: pl.Trainer, throughput: Throughput) -> int:
    """Training batches of the whole run (Lightning's count where the checkpoint predates genbench's own)."""
    if throughput.batches is not None:
        return throughput.batches
    return trainer.fit_loop.epoch_loop.batch_progress.total.processed


def final_metrics(
    cfg: DictConfig, trainer: pl.Trainer, throughput: Throughput, evaluation: Evaluation, model
) -> dict[str, Any]:
    """The flat record written to metrics.json."""
    logged = {
        k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and not k.endswith("_step")
    }
    return {
        "status": record.FINISHED,
        **who(cfg),
        "sampler": model.sampler_name,
        "epochs": trainer.current_epoch,
        **record.seen(batches_seen(trainer, throughput), throughput.images),
        "global_step": trainer.global_step,
        "train_seconds": throughput.train_seconds,
        "images_per_second": throughput.images_per_second,
        "world_size": trainer.world_size,
        "checkpoint": str(last_checkpoint(cfg.run_dir)),
        **{k.replace("/", "_") if k.startswith(("train/", "val/")) else k: v for k, v in logged.items()},
        **evaluation.results,
        "n_train_images": len(trainer.datamodule.split("train")),
        "versions": library_versions(),
        "machine": machine(torch.get_num_threads(), device_name(model.device)),
        "git_commit": git_commit(),
    }


def _seen_so_far(trainer: pl.Trainer | None, throughput: Throughput | None) -> dict[str, int]:
    if trainer is None or throughput is None:
        return {}
    return record.seen(batches_seen(trainer, throughput), throughput.images)


def who(cfg: DictConfig) -> dict[str, Any]:
    return record.identity(cfg.get("model_name"), cfg.data.name, cfg.data.image_size, cfg.seed)


def who_unchecked(cfg: DictConfig) -> dict[str, Any]:
    """``who`` for a config that failed validation: whatever of it can be read."""
    data = cfg.get("data") or {}
    return record.identity(cfg.get("model_name"), data.get("name"), data.get("image_size"), cfg.get("seed"))


def worker_failure_handler(cfg: DictConfig, run_dir: Path) -> Callable[[int, int], None]:
    """What rank 0 does when a DDP worker dies: record the failure, then end (it may be blocked in a collective)."""

    def on_failure(rank: int, code: int) -> None:
        record.write_record(
            run_dir, record.failure_record(who(cfg), f"DDP rank {rank} exited with code {code}")
        )
        kill_this_process(rank, code)

    return on_failure


def write_resolved_config(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return resolved


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one model on one dataset; returns (and writes) the run's metrics.

    Raises :class:`RunInterrupted` after a signal (the record says ``interrupted``), a ``UserError`` for a mistake
    the user can fix, anything else for a failure; the record says ``failed`` for both.
    """
    silence_inapplicable_warnings()
    run_dir = Path(cfg.run_dir)
    rank_zero = launched_as_global_zero()
    try:
        validate_config(cfg)
    except ConfigError as exc:
        # Hydra made the folder: say why it stays empty, but never over the record of a run already there
        if rank_zero and run_dir.is_dir() and record.read_record(run_dir) is None:
            record.write_record(run_dir, record.failure_record(who_unchecked(cfg), f"ConfigError: {exc}"))
        raise
    if rank_zero:
        prepare_run_dir(run_dir)
        done = already_finished(cfg, run_dir)
        if done is not None:
            return done
        # Refused here (a run already in run_dir without resume=true) before anything is written: its record stays.
        ckpt_path = resume_point(cfg, run_dir)
    else:
        ckpt_path = worker_resume_point(cfg, run_dir)
    with RunLock(run_dir) if rank_zero else contextlib.nullcontext():
        return _train(cfg, run_dir, rank_zero, ckpt_path)


def _train(cfg: DictConfig, run_dir: Path, rank_zero: bool, ckpt_path: str | None) -> dict[str, Any]:
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    pl.seed_everything(cfg.seed, workers=True)
    on_slurm = SLURMEnvironment.detect()
    preemption = Preemption()
    preemption.install(slurm_requeue=on_slurm and bool(cfg.get("slurm_auto_requeue", True)))
    trainer: pl.Trainer | None = None
    throughput: Throughput | None = None
    checkpoint: LastCheckpoint | None = None
    resumed_at: tuple[int, int] | None = None
    try:
        resolved = (
            write_resolved_config(cfg, run_dir) if rank_zero else OmegaConf.to_container(cfg, resolve=True)
        )
        if rank_zero:
            record.write_record(run_dir, record.running_record(who(cfg), resumed_from=ckpt_path))
        if cfg.print_config and rank_zero:
            print(OmegaConf.to_yaml(cfg, resolve=True))
        if ckpt_path:
            stored = check_compatible(ckpt_path, resolved)
            resumed_at = (int(stored.get("epoch", 0)), int(stored.get("global_step", 0)))
            log.info("resuming from %s (epoch %d, global step %d)", ckpt_path, *resumed_at)
            del stored
        datamodule = hydra.utils.instantiate(cfg.data)
        model = hydra.utils.instantiate(cfg.model)
        if not isinstance(model, GenerativeModel):
            raise TypeError(f"{type(model).__name__} does not implement genbench.interface.GenerativeModel")
        if cfg.compile and model.compile_unsupported:
            raise ConfigError(
                f"compile=true: {type(model).__name__} cannot be compiled: {model.compile_unsupported}. "
                "Run it without compile=true (trainer.precision=bf16-mixed is the other speed switch)"
            )
        callbacks, throughput, evaluation, checkpoint = build_callbacks(cfg, run_dir, resolved, preemption)
        loggers = build_loggers(cfg, run_dir, resolved, rank_zero) if cfg.logger else False
        trainer = hydra.utils.instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers,
            enable_progress_bar=sys.stderr.isatty(),
            enable_checkpointing=False,  # LastCheckpoint writes checkpoints/last.ckpt
            plugins=[AtomicCheckpointIO(), *slurm_plugins(cfg, on_slurm)],
            strategy=strategy_for(cfg.trainer.strategy, model),
            **lightning_limits(cfg),
        )
        fit_model = torch.compile(model) if cfg.compile else model
        started = time.perf_counter()
        # DDP ranks on this node: started here, not by Lightning re-running the (Hydra sweep) command line
        with local_ranks(trainer, resolved, on_failure=worker_failure_handler(cfg, run_dir)):
            trainer.fit(fit_model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            evaluation.run_final_if_skipped(trainer, model)
        if trainer.is_global_zero and not last_checkpoint(run_dir).is_file():
            raise RuntimeError(f"training ended but {last_checkpoint(run_dir)} was not written")
        metrics = final_metrics(cfg, trainer, throughput, evaluation, model)
    except (RunInterrupted, SIGTERMException) as exc:
        signum = exc.signum if isinstance(exc, RunInterrupted) else (preemption.received or 15)
        if rank_zero:
            checkpoint_file = last_checkpoint(run_dir)
            record.write_record(
                run_dir,
                record.interrupted_record(
                    who(cfg),
                    signal_name(signum),
                    trainer.current_epoch if trainer is not None else 0,
                    trainer.global_step if trainer is not None else 0,
                    str(checkpoint_file) if checkpoint_file.is_file() else None,
                    checkpoint.saved_at if checkpoint is not None and checkpoint.saved_at else resumed_at,
                    **_seen_so_far(trainer, throughput),
                ),
            )
            log.warning(
                "run interrupted by %s; continue it with the same command and resume=true",
                signal_name(signum),
            )
        finish_wandb(failed=True)
        raise RunInterrupted(signum) from None
    except BaseException as exc:
        if rank_zero:
            where = {"epoch": trainer.current_epoch, "global_step": trainer.global_step} if trainer else {}
            where.update(_seen_so_far(trainer, throughput))
            record.write_record(
                run_dir, record.failure_record(who(cfg), f"{type(exc).__name__}: {exc}", **where)
            )
        finish_wandb(failed=True)
        raise
    finally:
        preemption.uninstall()
    if trainer.is_global_zero:
        record.write_record(run_dir, metrics)
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        log.info(
            "run directory: %s (%.1fs; trained %s batches, %s images)",
            run_dir,
            time.perf_counter() - started,
            metrics.get("batches_seen"),
            metrics.get("images_seen"),
        )
        print(f"\nrun directory: {run_dir}")
        for key, value in sorted(shown.items()):
            print(f"  {key}: {value:.6g}" if isinstance(value, float) else f"  {key}: {value}")
    finish_wandb(failed=False)  # a sweep's next job in this process must start its own W&B run
    return metrics
