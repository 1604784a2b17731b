"""genbench's one exact k-nearest-neighbour search (L2): every caller (memorisation, precision/recall, the
``neighbours`` evaluator, IMLE matching, code inversion) goes through :func:`knn`.

Distances come from batched matrix products, ``||q||^2 - 2 q.r + ||r||^2`` (``addmm``), in float32 (or the
queries' wider float type) on the queries' device. The reference set is walked once, block by block (a tensor is
split into ``chunk_size`` rows; an iterable of blocks is streamed, so a reference too large for the device, or
computed on the fly, works too); each block meets every query in ``chunk_size`` chunks, and a running top-k per
query keeps memory at one (chunk, chunk) distance block plus (Q, k) results. No per-query Python.

The matrix-product form loses precision to cancellation: an exact duplicate reads a distance of ~1e-3 of the
vectors' norm instead of 0, as ``torch.cdist`` does (it uses the same form for more than 25 rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def knn(
    queries: Tensor,
    reference: Tensor | Iterable[Tensor],
    k: int = 1,
    chunk_size: int = 2048,
    *,
    squared: bool = False,
    on_block: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest reference rows to each query (Q, D), in L2.

    ``reference`` is a tensor (R, D), or an iterable of consecutive blocks (n_i, D) (any device or dtype; each is
    moved to the queries'), indexed as their concatenation. ``on_block(n_i)`` is called after each block (for
    progress). Returns distances (Q, k), ascending (squared distances when ``squared``), and int64 indices (Q, k)
    into the reference set, on the queries' device. On equal distances the lower index wins for k = 1; for
    k > 1 tied neighbours may come in either order. A point present in both sets is its own nearest neighbour;
    drop column 0 yourself when searching a set against itself.
    """
    if queries.dim() != 2:
        raise ValueError(f"queries must be (Q, D), got {tuple(queries.shape)}")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if isinstance(reference, Tensor):
        if reference.dim() != 2 or reference.shape[1] != queries.shape[1]:
            raise ValueError(
                f"need (Q, D) and (R, D), got {tuple(queries.shape)} and {tuple(reference.shape)}"
            )
        if k > reference.shape[0]:
            raise ValueError(f"k={k} must be in [1, R={reference.shape[0]}]")
        blocks: Iterable[Tensor] = reference.split(chunk_size)
    else:
        blocks = reference

    dtype = torch.promote_types(queries.dtype, torch.float32)  # float32, or float64 when given
    q_all = queries.to(dtype)
    q_sq_all = q_all.pow(2).sum(dim=1, keepdim=True)  # (Q, 1)
    n_q, device = q_all.shape[0], q_all.device
    best_d = torch.full((n_q, k), float("inf"), dtype=dtype, device=device)  # running k best, ascending
    best_i = torch.full((n_q, k), -1, dtype=torch.long, device=device)
    seen = 0
    for block in blocks:
        if block.dim() != 2 or block.shape[1] != q_all.shape[1]:
            raise ValueError(f"reference blocks must be (n, {q_all.shape[1]}), got {tuple(block.shape)}")
        r = block.to(device=device, dtype=dtype)  # (Rb, D)
        r_t, r_sq = r.T, r.pow(2).sum(dim=1)  # (D, Rb), (Rb,)
        kb = min(k, r.shape[0])
        for q0 in range(0, n_q, chunk_size):
            q = q_all[q0 : q0 + chunk_size]  # (Qc, D)
            # ||r||^2 - 2 q.r (Qc, Rb); ||q||^2 is constant along a row, so it is added to the k best only
            d = torch.addmm(r_sq, q, r_t, alpha=-2.0)
            q_sq = q_sq_all[q0 : q0 + chunk_size]  # (Qc, 1)
            if k == 1:
                d_min, i_min = d.min(dim=1, keepdim=True)  # (Qc, 1)
                d_min += q_sq
                better = d_min < best_d[q0 : q0 + chunk_size]  # strict: the earlier block wins ties
                best_d[q0 : q0 + chunk_size] = torch.where(better, d_min, best_d[q0 : q0 + chunk_size])
                best_i[q0 : q0 + chunk_size] = torch.where(better, i_min + seen, best_i[q0 : q0 + chunk_size])
            else:
                d_k, i_k = d.topk(kb, dim=1, largest=False, sorted=True)  # (Qc, kb)
                d_k += q_sq
                cand_d = torch.cat([best_d[q0 : q0 + chunk_size], d_k], dim=1)  # (Qc, k + kb)
                cand_i = torch.cat([best_i[q0 : q0 + chunk_size], i_k + seen], dim=1)
                top_d, pos = cand_d.topk(k, dim=1, largest=False, sorted=True)
                best_d[q0 : q0 + chunk_size] = top_d
                best_i[q0 : q0 + chunk_size] = cand_i.gather(1, pos)
        seen += r.shape[0]
        if on_block is not None:
            on_block(r.shape[0])
    if seen < k:
        raise ValueError(f"k={k} must be in [1, R={seen}]")
    best_d.clamp_min_(0)  # cancellation can leave tiny negatives
    return (best_d if squared else best_d.sqrt_()), best_i


__all__ = ["knn"]
