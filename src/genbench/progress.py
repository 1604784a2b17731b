"""Progress of a long phase, with counts and an ETA: a bar on a terminal, a log line about every 10 s otherwise.

Every phase that can take more than a few seconds (decoding a dataset, training the feature classifier, each
evaluator's loops, inversion) reports through one :class:`Progress`, so nothing long happens unannounced::

    with Progress("classifier training", total=steps, unit="steps") as progress:
        for step in ...:
            ...
            progress.update()
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    """``0.4s``, ``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Progress:
    """Counts ``update(n)`` calls towards ``total``; logs ``what: done/total unit (p%), elapsed, ETA`` every
    ``every_s`` seconds (never more often), or drives a tqdm bar when stderr is a terminal; ``close`` logs the total
    time once when the phase took longer than ``quiet_below_s``."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "items",
        every_s: float = 10.0,
        quiet_below_s: float = 2.0,
        logger: logging.Logger | None = None,
        bar: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit = what, max(int(total), 0), unit
        self.every_s, self.quiet_below_s = every_s, quiet_below_s
        self.log = logger or log
        self.done = 0
        self.clock = clock
        self.started = self._last = clock()
        self.lines = 0  # progress lines written (tests read it)
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar: Any = None
        if use_bar and self.total:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=what, unit=f" {unit}", leave=False, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate so far (None before the first update)."""
        if not self.done:
            return None
        elapsed = (self.clock() if now is None else now) - self.started
        return elapsed / self.done * max(self.total - self.done, 0)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self.clock()
        if now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            self.lines += 1
            percent = 100.0 * self.done / self.total if self.total else 100.0
            self.log.info(
                "%s: %d/%d %s (%.0f%%), %s elapsed, ETA %s",
                self.what,
                self.done,
                self.total,
                self.unit,
                percent,
                format_seconds(now - self.started),
                format_seconds(self.eta(now) or 0.0),
            )

    __call__ = update  # a callback (e.g. ``knn``'s ``on_block``)

    def close(self, failed: bool = False) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elapsed = self.clock() - self.started
        if not failed and elapsed >= self.quiet_below_s:
            self.log.info("%s: %d %s in %s", self.what, self.done, self.unit, format_seconds(elapsed))
