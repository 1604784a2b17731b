"""Experiment loggers from ``conf/logger/``, with what W&B needs in sweeps: a group per sweep, a resumable run id,
the resolved config, and one finished W&B run per job (the basic launcher runs every job in one process, and
Lightning's WandbLogger would otherwise log into the previous job's run)."""

from __future__ import annotations

import csv
import secrets
import sys
from pathlib import Path
from typing import Any

import hydra
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

WANDB_ID_FILE = "wandb_id"


def build_loggers(cfg: DictConfig, run_dir: Path, resolved: dict[str, Any], rank_zero: bool) -> list[Logger]:
    """One logger per entry of ``cfg.logger``; a W&B logger gets its id, group and the resolved config."""
    loggers = []
    for spec in cfg.logger.values():
        if issubclass(hydra.utils.get_class(spec._target_), WandbLogger) and rank_zero:
            group = spec.get("group") or sweep_name()
            run_id = wandb_run_id(run_dir, cfg.ckpt_path)
            # `config` is passed on to wandb.init, after instantiate (whose first parameter is also named config)
            partial = hydra.utils.instantiate(spec, _partial_=True, id=run_id, resume="allow", group=group)
            loggers.append(partial(config=resolved))
        else:
            loggers.append(hydra.utils.instantiate(spec))
    return loggers


def wandb_run_id(run_dir: Path, ckpt_path: str | None) -> str:
    """The W&B run id of ``run_dir``, kept in ``<run_dir>/wandb_id``: reused when the run directory already has one,
    else taken from the run a resumed checkpoint (``<run>/checkpoints/*.ckpt``) came from, else new."""
    own = run_dir / WANDB_ID_FILE
    if own.is_file():
        return own.read_text().strip()
    source = Path(ckpt_path).resolve().parent.parent / WANDB_ID_FILE if ckpt_path else None
    if source is not None and source.is_file():
        run_id = source.read_text().strip()
    else:
        run_id = secrets.token_hex(4)  # W&B ids: letters and digits; W&B's own are 8 characters
    own.write_text(run_id + "\n")
    return run_id


def sweep_name() -> str | None:
    """The multirun's sweep directory name (``hydra.sweep.dir``), or None outside a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None


def finish_wandb(failed: bool) -> None:
    """End this process's active W&B run, if any (a no-op when wandb was never imported)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger, appending to an existing ``metrics.csv`` (a resumed run continues its history)
    instead of deleting it, as Lightning's does ("Previous log files in this directory will be deleted")."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Keep what is there; take over its header so appended rows line up with it."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)
