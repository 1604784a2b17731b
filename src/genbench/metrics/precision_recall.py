"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models").

Each set's manifold is approximated by balls around its points with radius = distance to the k-th nearest
neighbour in the same set. Precision: share of generated points inside the real manifold (fidelity).
Recall: share of real points inside the generated manifold (coverage). FID folds both into one number;
these two separate blurry-but-diverse from sharp-but-collapsed models.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from genbench.metrics.neighbours import nearest_neighbours


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def knn_radii(features: Tensor, k: int = 3, chunk_size: int = 1024) -> Tensor:
    """Distance (N,) from each row of ``features`` (N, D) to its k-th nearest other row."""
    # k + 1 because every point is its own nearest neighbour at distance 0.
    return nearest_neighbours(features, features, k + 1, chunk_size)[0][:, k]


def manifold_coverage(queries: Tensor, reference: Tensor, radii: Tensor, chunk_size: int = 1024) -> float:
    """Share of queries (Q, D) within ``radii[j]`` (R,) of at least one reference point ``reference[j]`` (R, D)."""
    inside = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)  # (Q,)
    for q0 in range(0, queries.shape[0], chunk_size):
        q = queries[q0 : q0 + chunk_size]  # (Qc, D)
        hit = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)  # (Qc,)
        for r0 in range(0, reference.shape[0], chunk_size):
            d = torch.cdist(q, reference[r0 : r0 + chunk_size])  # (Qc, Rc)
            hit |= (d <= radii[r0 : r0 + chunk_size]).any(dim=1)
        inside[q0 : q0 + chunk_size] = hit
    return inside.sum().item() / inside.numel()


def precision_recall(
    real_feats: Tensor, fake_feats: Tensor, k: int = 3, chunk_size: int = 1024
) -> PrecisionRecall:
    """Improved precision and recall of generated features (M, D) against real features (N, D)."""
    if real_feats.dim() != 2 or fake_feats.dim() != 2 or real_feats.shape[1] != fake_feats.shape[1]:
        raise ValueError(
            f"need (N, D) and (M, D), got {tuple(real_feats.shape)} and {tuple(fake_feats.shape)}"
        )
    real_radii = knn_radii(real_feats, k, chunk_size)  # (N,)
    fake_radii = knn_radii(fake_feats, k, chunk_size)  # (M,)
    return PrecisionRecall(
        precision=manifold_coverage(fake_feats, real_feats, real_radii, chunk_size),
        recall=manifold_coverage(real_feats, fake_feats, fake_radii, chunk_size),
    )
