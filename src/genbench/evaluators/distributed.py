"""Sharded evaluation under DDP: each rank does 1/W of the work, the results meet on every rank.

An evaluator opts in with the class attribute ``sharded = True``; the Evaluation callback then runs it on every
rank (before the rank-0-only evaluators, so no rank waits in a collective while rank 0 draws pictures). On one
process (``ctx.world_size == 1``) every helper here is the identity, so a sharded evaluator needs no second path.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import Tensor

from genbench.evaluators.base import EvalContext

T = TypeVar("T")


def is_sharded(evaluator: Any) -> bool:
    """Whether ``evaluator`` runs on every rank and meets the others in collectives."""
    return bool(getattr(evaluator, "sharded", False))


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Rows per rank when ``n`` rows are split into ``world_size`` contiguous shards (sizes differ by <= 1)."""
    return [n * (r + 1) // world_size - n * r // world_size for r in range(world_size)]


def shard(n: int, ctx: EvalContext) -> range:
    """This rank's contiguous slice of ``range(n)``."""
    return range(n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size)


def gather_rows(rows: Tensor, n: int, ctx: EvalContext) -> Tensor:
    """Every rank's ``rows`` (its ``shard(n)``, (n_r, ...)) concatenated in rank order: (n, ...) on the CPU.

    Shards are padded to the longest one, because all_gather needs equal shapes; the padding is dropped.
    """
    if ctx.world_size == 1:
        return rows.cpu()
    sizes = shard_sizes(n, ctx.world_size)
    if rows.shape[0] != sizes[ctx.rank]:
        raise ValueError(
            f"rank {ctx.rank} holds {rows.shape[0]} rows, its shard of {n} has {sizes[ctx.rank]}"
        )
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    stacked = _collectives(ctx).all_gather(padded.to(ctx.device))  # (W, longest, ...)
    return torch.cat([stacked[r, :size] for r, size in enumerate(sizes)]).cpu()


def all_true(flag: bool, ctx: EvalContext) -> bool:
    """True on every rank when ``flag`` is True on every rank."""
    if ctx.world_size == 1:
        return flag
    flags = _collectives(ctx).all_gather(torch.tensor([int(flag)], device=ctx.device))  # (W, 1)
    return bool(flags.min())


def broadcast(obj: T, ctx: EvalContext) -> T:
    """Rank 0's ``obj`` on every rank."""
    return obj if ctx.world_size == 1 else _collectives(ctx).broadcast(obj, src=0)


def _collectives(ctx: EvalContext):
    if ctx.collectives is None:
        raise RuntimeError(f"world_size={ctx.world_size} but the evaluation context has no collectives")
    return ctx.collectives
