"""What evaluators draw from: model samples, in batches from one seeded generator with progress, and the split that
held-out images come from.

Every evaluator that scores or shows model samples draws them here, so the same ``(offset, n, batch_size)`` gives
the same images wherever they are drawn, and a long draw is never silent.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from genbench.evaluators.base import EvalContext
from genbench.progress import Progress


def sample_batches(
    ctx: EvalContext, n: int, batch_size: int, generator: torch.Generator, what: str = "model samples"
) -> Iterator[Tensor]:
    """``n`` model samples as consecutive batches (<= batch_size, C, H, W) drawn from ``generator``.

    A :class:`~genbench.progress.Progress` named ``what`` counts them (a bar on a terminal, a log line about every
    10 s otherwise; silent when it all takes under 2 s). The caller holds no_grad and eval mode (``run_evaluators``
    does).
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    with Progress(what, n, unit="samples") as progress:
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            yield ctx.sample(size, generator)
            progress.update(size)


def draw_samples(
    ctx: EvalContext, n: int, batch_size: int, offset: int, what: str = "model samples"
) -> Tensor:
    """``n`` model samples (n, C, H, W), drawn in batches from ``ctx.generator(offset)``."""
    return torch.cat(list(sample_batches(ctx, n, batch_size, ctx.generator(offset), what)))


def held_out_split(datamodule, preferred: str = "test") -> str:
    """``preferred`` when that split has images, else "train" (datasets without a test split)."""
    return preferred if len(datamodule.split(preferred)) else "train"


__all__ = ["draw_samples", "held_out_split", "sample_batches"]
