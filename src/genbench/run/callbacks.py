"""Run bookkeeping: throughput, RNG state in checkpoints, the config in checkpoints, one-line epoch logs."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(pl.Callback):
    """Training images per second over the training loop only (validation and evaluation excluded), all ranks."""

    def __init__(self) -> None:
        self.images = 0
        self.loop_seconds = 0.0
        self.train_seconds = 0.0
        self._started: float | None = None
        self._fit_started = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_started = time.perf_counter()

    def _pause(self, pl_module) -> None:
        if self._started is not None:
            _sync(pl_module.device)
            self.loop_seconds += time.perf_counter() - self._started
            self._started = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += batch.image.shape[0] * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.training:  # validation inside a training epoch: resume the clock
            self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._pause(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._pause(pl_module)
        self.train_seconds = time.perf_counter() - self._fit_started

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.loop_seconds if self.loop_seconds > 0 else None


class RNGState(pl.Callback):
    """Saves and restores the torch, numpy and Python RNG states, so a resumed run draws the same noise.

    The saved state is applied at ``on_train_start``, after Lightning's sanity-check validation, which would
    otherwise consume random numbers the uninterrupted run never drew at that point.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # numpy's state as tensors and numbers, so Lightning's weights_only checkpoint loading accepts it
        _, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_state = {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        }
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is None:
            return
        state_dict, self._pending = self._pending, None
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        np.random.set_state(
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
        )
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class ConfigInCheckpoint(pl.Callback):
    """Stores the run's resolved config in every checkpoint, so a checkpoint names what wrote it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["genbench_config"] = self.config


class EpochSummary(pl.Callback):
    """One log line per epoch, for non-interactive runs where a progress bar would flood the log."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith("_step"))
        log.info(
            "epoch %d/%s (%.1fs) %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            time.perf_counter() - self._start,
            shown,
        )
