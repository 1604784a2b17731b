"""Clocks and memory gauges for the benchmark.

Step times are intervals between marks taken at the end of consecutive steps, so they cover everything a step
costs: fetching the batch, hooks, forward, backward, optimiser, logging. On CUDA the marks are events recorded on
the stream, read after one final synchronisation: timing adds no sync to the hot loop (a per-step
``synchronize`` would serialise host and device and inflate every per-step Python overhead).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class StepClock:
    """Marks at step boundaries; ``intervals()`` are the step times in seconds."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def tick(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def step_stats(intervals: list[float], batch_size: int) -> dict[str, Any]:
    """Median step time and the images/s it implies (the median shrugs off a neighbour's burst on a shared box)."""
    if not intervals:
        raise ValueError("no timed steps (steps must be >= 1)")
    median = statistics.median(intervals)
    return {
        "steps": len(intervals),
        "step_ms": [round(1e3 * t, 3) for t in intervals],
        "step_ms_median": 1e3 * median,
        "step_ms_min": 1e3 * min(intervals),
        "step_ms_max": 1e3 * max(intervals),
        "images_per_s": batch_size / median,
    }


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in KiB, None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory over a ``with`` block.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, reset on entry). CPU: the process's peak resident set
    (VmHWM), reset on entry through /proc/self/clear_refs where Linux allows it; elsewhere ``ru_maxrss``, which is
    the lifetime peak and says so in ``kind``. CPU figures include the interpreter and libraries (~0.5 GiB), and
    freed memory the allocator keeps: compare ``increase_mib`` within one run, not across machines.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, float | str] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            self._reset = True
        except OSError:
            pass
        self._start = 1024 * (_status_kib("VmRSS") or 0)
        return self

    def __exit__(self, *exc: object) -> None:
        mib = 2.0**20
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak, kind = torch.cuda.max_memory_allocated(self.device), "cuda_max_allocated"
        elif self._reset and _status_kib("VmHWM") is not None:
            peak, kind = 1024 * _status_kib("VmHWM"), "cpu_peak_rss"
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
            peak, kind = scale * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "cpu_lifetime_peak_rss"
        self.result = {"peak_mib": peak / mib, "increase_mib": max(peak - self._start, 0) / mib, "kind": kind}


class StopFit(Exception):
    """Raised by ``StepTimer(stop=True)`` to end a fit after the timed steps, skipping the end-of-training work
    (GLO's batch-norm recalibration and sampler fit over a 60k-code table) that an estimate does not need."""


class StepTimer(pl.Callback):
    """Marks the end of every training batch after ``warmup`` batches, and snapshots the weights the fit starts
    from (after the model's ``setup``, so GLO's code table is sized and initialised) for the plain loop."""

    def __init__(self, device: torch.device, warmup: int, steps: int, stop: bool = False) -> None:
        if warmup < 1:
            raise ValueError(
                "warmup must be >= 1: the first timed interval starts at the end of the last warm-up step"
            )
        self.clock = StepClock(device)
        self.warmup, self.steps, self.stop = warmup, steps, stop
        self.batches = 0
        self.initial_state: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches >= self.warmup:
            self.clock.tick()
        if self.stop and self.batches >= self.warmup + self.steps:
            raise StopFit
