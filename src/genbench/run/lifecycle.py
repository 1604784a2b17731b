"""The run directory's lifecycle around ``fit``: prepared and proven writable, where a run resumes from, whether it
is already finished, and Lightning's SLURM environment."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genbench.errors import UserError
from genbench.io import atomic_path, clean_stale_temp_files
from genbench.run import record
from genbench.run.checkpoints import last_checkpoint
from genbench.run.resume import wants_resume

log = logging.getLogger(__name__)


class RunDirUnwritable(UserError):
    """The run directory (or its checkpoints/ folder) cannot be written."""


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory and checkpoints/, prove both writable, and clear temp files a killed run left."""
    folder = run_dir / "checkpoints"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / ".write-test") as tmp:
            tmp.write_text("")
        (folder / ".write-test").unlink()
    except OSError as exc:
        raise RunDirUnwritable(
            f"cannot write to {exc.filename or folder}: {exc.strerror or exc}; make it writable or choose "
            "another run directory (hydra.run.dir=...)"
        ) from None
    for stale in clean_stale_temp_files(run_dir):
        log.info("removed %s, left by a process that was killed while writing it", stale)


def resume_point(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to start from: ``ckpt_path``, else with ``resume`` this run's last.ckpt when it has one."""
    last = last_checkpoint(run_dir)
    if cfg.ckpt_path:
        return str(cfg.ckpt_path)
    if wants_resume(cfg.resume):
        if last.is_file():
            return str(last)
        log.info("resume=true: %s has no checkpoint yet; starting the run from the beginning", run_dir)
        return None
    if last.is_file():
        raise UserError(
            f"{run_dir} already holds a run ({last}); add resume=true to continue it, "
            "or choose another run directory"
        )
    return None


def worker_resume_point(cfg: DictConfig, run_dir: Path) -> str | None:
    """A DDP worker resumes from the checkpoint rank 0 resumes from (it does not write the run directory)."""
    if cfg.ckpt_path:
        return str(cfg.ckpt_path)
    last = last_checkpoint(run_dir)
    return str(last) if wants_resume(cfg.resume) and last.is_file() else None


def already_finished(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """With ``resume``, the record of a run that already finished (with its checkpoint): nothing left to do."""
    existing = record.read_record(run_dir)
    if not wants_resume(cfg.resume) or cfg.ckpt_path or not existing:
        return None
    if existing.get("status") == record.FINISHED and last_checkpoint(run_dir).is_file():
        log.info("resume=true: %s already finished; nothing to do", run_dir)
        return existing
    return None


def slurm_plugins(cfg: DictConfig, on_slurm: bool) -> list[Any]:
    """Lightning's SLURM environment with genbench's requeue switch (Lightning's own requeue, not a home-made one)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=bool(cfg.get("slurm_auto_requeue", True)))] if on_slurm else []


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
