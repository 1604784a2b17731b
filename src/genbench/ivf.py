"""Batched k-means and an inverted-file (IVF) nearest-neighbour search, for matching many points on a small CPU.

An exact 1-NN of 60k queries among 120k keys in 64 dimensions (IMLE's matching on MNIST codes) is 9e11 flops, about
a minute of a loaded 2-core CPU per epoch. The IVF search (faiss' ``IndexIVFFlat``; Jégou et al., 2011) partitions
the keys by k-means into ``lists`` cells and compares each query only with the keys of its ``probes`` nearest
cells: ``probes / lists`` of the work (8 / 256: 1/32). It is approximate: a query whose nearest key lies in an
unprobed cell gets the nearest key of the probed ones. Everything is matrix products on the tensors' device
(``genbench.metrics.knn``) and one Python iteration per cell, none per point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from genbench.metrics.knn import knn


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): ``k`` rows of ``x`` (N, D), each drawn with probability
    proportional to its squared distance to the nearest centre drawn so far. Returns (k, D)."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, N={n}]")
    where = generator.device if generator is not None else x.device
    first = int(torch.randint(n, (1,), generator=generator, device=where))
    centres = [x[first]]
    nearest = (x - x[first]).pow(2).sum(dim=1)  # (N,) squared distance to the nearest centre
    for _ in range(1, k):
        weights = nearest.clamp_min(0).double()
        if float(weights.sum()) <= 0:  # fewer distinct points than k: any point will do
            weights = torch.ones_like(weights)
        pick = int(torch.multinomial(weights.to(where), 1, generator=generator))
        centres.append(x[pick])
        nearest = torch.minimum(nearest, (x - x[pick]).pow(2).sum(dim=1))
    return torch.stack(centres)


def kmeans(
    x: Tensor,
    centroids: Tensor,
    iterations: int,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    """``iterations`` (>= 1) Lloyd steps on ``x`` (N, D) from ``centroids`` (k, D): assign every point to its
    nearest centroid, then move each centroid to the mean of its cell (an empty cell keeps its centroid).

    Returns the centroids (k, D) and the cells (N,) they are the means of: one nearest-centroid search per step,
    so a warm start (last epoch's centroids for this epoch's draws) costs one search."""
    x = x.float()
    centroids = centroids.to(x).clone()
    k = centroids.shape[0]
    for _ in range(max(1, iterations)):
        assign = knn(x, centroids, 1, chunk_size, squared=True)[1][:, 0]
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids, assign


def ivf_nearest(
    queries: Tensor,
    keys: Tensor,
    centroids: Tensor,
    key_cells: Tensor,
    probes: int,
    chunk_size: int = 4096,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Tensor, Tensor]:
    """Each query's (Q, D) nearest key (M, D) among the keys of its ``probes`` nearest cells.

    ``centroids`` (k, D) and ``key_cells`` (M,) (each key's cell, e.g. from :func:`kmeans`) define the cells.
    Returns squared distances (Q,) and key indices (Q,). ``should_stop`` is polled once per cell; when it returns
    True the search returns early with +inf distances (and index -1) where it had not finished. A query whose probed
    cells hold no key (k-means can leave cells empty) gets an exact search over all keys instead.
    """
    queries, keys = queries.float(), keys.float()
    k = centroids.shape[0]
    probes = min(probes, k)
    n_q = queries.shape[0]
    # Keys grouped by cell: cell c owns keys_sorted[start[c]:start[c + 1]].
    key_order = torch.argsort(key_cells, stable=True)
    keys_sorted = keys[key_order]
    key_sq = keys_sorted.pow(2).sum(dim=1)
    key_start = [0, *torch.bincount(key_cells, minlength=k).cumsum(0).tolist()]
    # (query, probed cell) pairs grouped by cell.
    probed = knn(queries, centroids.float(), probes, chunk_size, squared=True)[1]  # (Q, P)
    pair_cell = probed.reshape(-1)
    pair_order = torch.argsort(pair_cell, stable=True)
    pair_start = [0, *torch.bincount(pair_cell, minlength=k).cumsum(0).tolist()]
    pair_dist = torch.full((n_q * probes,), float("inf"), device=queries.device)
    pair_index = torch.full((n_q * probes,), -1, dtype=torch.long, device=queries.device)
    q_sq = queries.pow(2).sum(dim=1)
    stopped = False
    for c in range(k):
        if should_stop is not None and should_stop():
            stopped = True
            break
        k0, k1, p0, p1 = key_start[c], key_start[c + 1], pair_start[c], pair_start[c + 1]
        if k0 == k1 or p0 == p1:
            continue
        cell_keys = keys_sorted[k0:k1]  # (Kc, D)
        for s in range(p0, p1, chunk_size):
            pairs = pair_order[s : min(s + chunk_size, p1)]
            who = torch.div(pairs, probes, rounding_mode="floor")  # (Pc,) the pairs' queries
            d = torch.addmm(key_sq[k0:k1], queries[who], cell_keys.T, alpha=-2.0)  # (Pc, Kc) minus ||q||^2
            d_min, j = d.min(dim=1)
            pair_dist[pairs] = d_min + q_sq[who]
            pair_index[pairs] = key_order[k0 + j]
    dist, best = pair_dist.view(n_q, probes).min(dim=1)
    index = pair_index.view(n_q, probes).gather(1, best[:, None])[:, 0]
    unmatched = index < 0
    if not stopped and bool(unmatched.any()):
        exact_dist, exact_index = knn(queries[unmatched], keys, 1, chunk_size, squared=True)
        dist[unmatched], index[unmatched] = exact_dist[:, 0], exact_index[:, 0]
    return dist.clamp_min_(0), index


__all__ = ["ivf_nearest", "kmeans", "kmeans_plus_plus"]
