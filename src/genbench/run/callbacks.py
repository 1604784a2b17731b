"""The run's lifecycle callbacks: throughput and the batches/images seen, the batch limit, RNG and config in
checkpoints, epoch logs, checkpoints during training, preemption signals, divergence."""

from __future__ import annotations

import logging
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from genbench.errors import ExpectedFailure

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ends_epoch(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether the epoch's end hooks follow this batch: its last batch, or a stop (the batch limit) after it."""
    return batch_idx + 1 >= trainer.num_training_batches or trainer.should_stop


def training_ends(trainer: pl.Trainer) -> bool:
    """Whether training ends with this epoch: a stop was asked for (the batch limit), or its last epoch."""
    last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
    return bool(trainer.should_stop) or last_epoch


class Throughput(pl.Callback):
    """Training images per second over the training loop only (validation and evaluation excluded), and the
    batches and images seen so far, all ranks; kept in checkpoints, so a resumed run counts the whole run.

    ``batches`` counts training-loop steps (each DDP rank takes one batch per step); ``images`` the images of those
    batches on every rank (the index sampler gives every rank the same batch sizes, so B x world size a step).
    """

    def __init__(self) -> None:
        self.images = 0
        # None: restored from a checkpoint older than this count, taken from Lightning's at on_train_start
        self.batches: int | None = 0
        self.loop_seconds = 0.0
        self.train_seconds = 0.0
        self._started: float | None = None
        self._fit_started = 0.0
        self._before = 0.0  # training seconds of the run's earlier segments (resumed runs)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.batches is None:  # Lightning's own count: batches processed before the checkpoint
            self.batches = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        self._fit_started = time.perf_counter()
        # a run resumed mid-epoch gets no on_train_epoch_start for that epoch
        self._started = self._fit_started

    def _pause(self, pl_module) -> None:
        if self._started is not None:
            _sync(pl_module.device)
            self.loop_seconds += time.perf_counter() - self._started
            self._started = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # first of the callbacks: a checkpoint saved at this batch's end counts it, and the resumed run goes on
        # from the next batch
        self.batches += 1
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
        self.train_seconds = self._elapsed()

    def state_dict(self) -> dict[str, Any]:
        """Totals so far, so a resumed run reports the whole run's training time and images."""
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return {
            "images": self.images,
            "batches": self.batches,
            "loop_seconds": self.loop_seconds + running,
            "train_seconds": self._elapsed(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images = int(state_dict.get("images", 0))
        batches = state_dict.get("batches")
        self.batches = int(batches) if batches is not None else None
        self.loop_seconds = float(state_dict.get("loop_seconds", 0.0))
        self._before = self.train_seconds = float(state_dict.get("train_seconds", 0.0))

    def _elapsed(self) -> float:
        running = time.perf_counter() - self._fit_started if self._fit_started else 0.0
        return self._before + running

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.loop_seconds if self.loop_seconds > 0 else None


class BatchLimit(pl.Callback):
    """Stops training after ``max_batches`` batches, whatever the number of optimiser steps a model makes in one.

    Lightning's ``max_steps`` counts ``optimizer.step()`` calls (manual optimisation: one per optimiser per batch;
    the MLP-ALAE makes 4 a batch), so genbench gives Lightning no step limit and counts batches here instead
    (``counter``, a :class:`Throughput`, restored from the checkpoint on resume): the run stops after the limit's
    batch, runs that epoch's end hooks (the model's end-of-training steps among them) and ends. A run resumed at or
    past the limit trains no further batch. The checkpoint and signal callbacks treat the last batch as an epoch's
    last (``ends_epoch``: no mid-epoch checkpoint there), and no checkpoint is saved between it and the end of
    training (``training_ends``), so a resumed run never skips the model's end-of-training steps.
    """

    def __init__(self, max_batches: int, counter: Throughput) -> None:
        if max_batches < 1:
            raise ValueError(f"max_batches must be >= 1, got {max_batches}")
        self.max_batches = int(max_batches)
        self.counter = counter

    def on_train_start(self, trainer, pl_module) -> None:
        if self.counter.batches >= self.max_batches:  # resumed at the limit (after counter's on_train_start)
            trainer.should_stop = True  # the loop ends before its next batch
            return
        epochs = trainer.max_epochs
        per_epoch = trainer.num_training_batches
        if epochs not in (None, -1) and trainer.is_global_zero and epochs * per_epoch < self.max_batches:
            log.warning(
                "trainer.max_epochs=%d ends training after %d batches (%d an epoch), before trainer.max_steps=%d; "
                "add trainer.max_epochs=-1 to train by batches alone",
                epochs,
                epochs * per_epoch,
                per_epoch,
                self.max_batches,
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # set before the last batch runs, so its step knows: Lightning logs a step when a stop is due (the model's
        # train/* values in metrics.json are then the last batch's), and the loop ends after it
        if self.counter.batches + 1 >= self.max_batches:
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info("training stops after this batch: trainer.max_steps=%d batches", self.max_batches)


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
    """One log line per epoch, for non-interactive runs where a progress bar would flood the log: the epoch, the
    batches and images seen so far (``counter``) against the limits, and the epoch's logged values."""

    def __init__(self, counter: Throughput | None = None, max_batches: int = -1) -> None:
        self._start: float | None = None
        self.counter = counter
        self.max_batches = max_batches

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        started, self._start = self._start, None
        if not trainer.is_global_zero or started is None:  # None: an epoch end replayed on resume
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith("_step"))
        epochs = "" if trainer.max_epochs in (None, -1) else f"/{trainer.max_epochs}"
        seen = ""
        if self.counter is not None:
            limit = f"/{self.max_batches}" if self.max_batches > 0 else ""
            seen = f" batches {self.counter.batches}{limit} images {self.counter.images}"
        log.info(
            "epoch %d%s%s (%.1fs) %s",
            trainer.current_epoch + 1,
            epochs,
            seen,
            time.perf_counter() - started,
            shown,
        )


class LastCheckpoint(pl.Callback):
    """Keeps ``<run_dir>/checkpoints/last.ckpt`` fresh: rewritten (atomically, through the trainer's checkpoint IO)
    at the end of every epoch, every ``every_minutes`` of training within an epoch, every ``every_n_steps`` batches
    when set, when a signal stops the run (see :class:`Preemption`), and when training ends (before the final
    evaluation, by :class:`FinalCheckpoint`).

    Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last`` only at the end of training, and
    versions the name (``last-v1.ckpt``) in a folder that already has one; this callback writes the one file.
    Under DDP the time-based decision is all-reduced (any rank's clock), so every rank saves (a collective) at the
    same step.
    """

    def __init__(
        self,
        path: str | Path,
        every_minutes: float = 10.0,
        every_n_steps: int = 0,
        guard: DivergenceGuard | None = None,
    ) -> None:
        self.path = Path(path)
        self.guard = guard  # checked before each save: a checkpoint never keeps diverged weights
        self.every_seconds = every_minutes * 60.0
        self.every_n_steps = every_n_steps
        self.saves = 0
        self.saved_at: tuple[int, int] | None = None  # (epoch, global step) of the checkpoint now on disk
        self._last_save = time.monotonic()

    def save(self, trainer: pl.Trainer, why: str) -> None:
        if self.guard is not None:
            self.guard.check(trainer, trainer.lightning_module)
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_save = time.monotonic()
        self.saves += 1
        self.saved_at = (trainer.current_epoch, trainer.global_step)
        log.debug(
            "checkpoint %s (%s, epoch %d, step %d)",
            self.path,
            why,
            trainer.current_epoch,
            trainer.global_step,
        )

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if ends_epoch(trainer, batch_idx):
            return  # the epoch's own checkpoint follows, in on_train_epoch_end
        batches = trainer.fit_loop.total_batch_idx + 1
        due = bool(self.every_n_steps) and batches % self.every_n_steps == 0
        if not due:
            due = time.monotonic() - self._last_save >= self.every_seconds
            if trainer.world_size > 1:  # any rank's clock: one small all-reduce, no pickled broadcast
                due = trainer.strategy.reduce_boolean_decision(due, all=False)
        if due:
            self.save(trainer, "periodic")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Last of the callbacks, after validation and the periodic evaluation; the model's own epoch-end hook runs
        # after it. A run resumed from here runs the epoch-end hooks again (Lightning does): the model's thus runs
        # once, as in the uninterrupted run, and genbench's callbacks skip an epoch they already handled.
        # Not after the last epoch: Lightning resumes a finished loop without any hook, so the model's end-of-
        # training steps (batch-norm recalibration, fitting the sampler) would be lost; FinalCheckpoint saves
        # after them, and a crash before it replays the epoch from the previous checkpoint.
        if not training_ends(trainer):
            self.save(trainer, "epoch end")


class FinalCheckpoint(pl.Callback):
    """Saves the trained weights when training ends, before the final evaluation starts (placed before it)."""

    def __init__(self, checkpoint: LastCheckpoint) -> None:
        self.checkpoint = checkpoint

    def on_train_end(self, trainer, pl_module) -> None:
        self.checkpoint.save(trainer, "end of training")


class RunInterrupted(Exception):
    """A signal stopped the run; ``signum`` names it. The latest checkpoint is in place."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


class Preemption(pl.Callback):
    """SIGTERM (preemption, ``kill``), SIGUSR1 (SLURM's warning before the time limit) and SIGINT stop the run.

    During an epoch's training batches the stop waits for the end of the current batch: the checkpoint is saved
    there (every DDP rank agrees on the batch: rank 0's signal is all-reduced at each batch end, under DDP only)
    and the run ends ``interrupted``. Anywhere else (data loading, the epoch's last batch and its end hooks, the
    evaluation) it stops at once by raising :class:`RunInterrupted`, and the latest checkpoint (at most one epoch or
    ``checkpoint.every_minutes`` old) is where a resumed run continues, exactly.

    Lightning's own SIGTERM handler is replaced for the training loop: on DDP it broadcasts from inside the signal
    handler, which crashes gloo when the signal lands during another collective (measured: "Received data size
    doesn't match expected size"). Under SLURM with Lightning's auto-requeue, SIGUSR1 stays Lightning's (it saves
    ``hpc_ckpt_*.ckpt`` and requeues the job) and the SIGTERM that follows ends the run here.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.checkpoint: LastCheckpoint | None = None  # set once the callbacks are built
        self._deferred = False
        self._previous: dict[int, Any] = {}

    def install(self, slurm_requeue: bool = False) -> None:
        """Take SIGTERM, SIGINT and (unless SLURM requeues) SIGUSR1; call before anything slow starts."""
        signals = [signal.SIGTERM, signal.SIGINT]
        if not slurm_requeue:
            signals.append(signal.SIGUSR1)
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def stop_requested(self) -> bool:
        """A stop signal has arrived (polled by long work inside hooks: a model's sampler fit)."""
        return self.received is not None

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        if first:
            self.received = signum
            log.warning("received %s: stopping the run", signal.Signals(signum).name)
        if not self._deferred or not first:  # a second signal stops at once, whatever the phase
            raise RunInterrupted(self.received)

    def on_train_start(self, trainer, pl_module) -> None:
        signal.signal(signal.SIGTERM, self._handle)  # Lightning registered its own at the start of fit

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._deferred = True

    def _stop(self, trainer) -> bool:
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank stops at the same batch, or none
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if ends_epoch(trainer, batch_idx):
            self._deferred = False  # the epoch-end hooks follow: a signal now stops them at once
            return
        if self._stop(trainer):
            self._deferred = False
            if self.checkpoint is not None:
                self.checkpoint.save(trainer, "interrupted")
            raise RunInterrupted(self.received or signal.SIGTERM)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._deferred = False
        if self._stop(trainer):
            raise RunInterrupted(self.received or signal.SIGTERM)

    def on_train_end(self, trainer, pl_module) -> None:
        self._deferred = False
        if self.received is not None:
            raise RunInterrupted(self.received)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._deferred = False


class Diverged(ExpectedFailure, RuntimeError):
    """A training loss term became NaN or infinite."""


class DivergenceGuard(pl.Callback):
    """Stops training when a logged loss term has become NaN or infinite, naming the term and the step.

    The model records non-finite terms on the device every step (``GenerativeModel.log_train_step``); this reads
    the record every ``every_n_steps`` batches and at each epoch end: one host sync per check, none per step.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = max(1, int(every_n_steps))

    def check(self, trainer, pl_module) -> None:
        bad = pl_module.nonfinite_terms() if hasattr(pl_module, "nonfinite_terms") else {}
        if not bad:
            return
        first = min(step for step, _ in bad.values())
        terms = ", ".join(f"{name}={value}" for name, (step, value) in sorted(bad.items()) if step == first)
        raise Diverged(
            f"training diverged: {terms} at global step {first} (epoch {trainer.current_epoch}); "
            "lower the learning rate or enable gradient clipping (trainer.gradient_clip_val), then start again"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.fit_loop.total_batch_idx + 1) % self.every_n_steps == 0:
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module)
