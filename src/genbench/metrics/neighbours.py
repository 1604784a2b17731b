"""Exact k-nearest-neighbour search in feature space, and the memorisation ratio built on it.

Chunked over queries and reference so 10k x 50k searches never hold more than a (chunk, chunk) distance
block; runs on whatever device the inputs are on. Distances come from ``torch.cdist`` (matrix-product form,
so an exact duplicate may read ~1e-3 relative instead of 0).
"""

from __future__ import annotations

import torch
from torch import Tensor


def nearest_neighbours(
    queries: Tensor, reference: Tensor, k: int = 1, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest rows of ``reference`` (R, D) to each query (Q, D) in L2.

    Returns distances (Q, k), ascending, and int64 indices into ``reference`` (Q, k). A point present in
    both sets is its own nearest neighbour; drop column 0 yourself when searching a set against itself.
    """
    if queries.dim() != 2 or reference.dim() != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(f"need (Q, D) and (R, D), got {tuple(queries.shape)} and {tuple(reference.shape)}")
    if not 1 <= k <= reference.shape[0]:
        raise ValueError(f"k={k} must be in [1, R={reference.shape[0]}]")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    all_dists, all_idx = [], []
    for q0 in range(0, queries.shape[0], chunk_size):
        q = queries[q0 : q0 + chunk_size]  # (Qc, D)
        best_d = q.new_empty(q.shape[0], 0)  # (Qc, <=k) running k best
        best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
        for r0 in range(0, reference.shape[0], chunk_size):
            d = torch.cdist(q, reference[r0 : r0 + chunk_size])  # (Qc, Rc)
            i = torch.arange(r0, r0 + d.shape[1], device=q.device).expand_as(d)  # (Qc, Rc)
            cand_d = torch.cat([best_d, d], dim=1)  # (Qc, <=k + Rc)
            cand_i = torch.cat([best_i, i], dim=1)
            best_d, pos = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False, sorted=True)
            best_i = cand_i.gather(1, pos)
        all_dists.append(best_d)
        all_idx.append(best_i)
    return torch.cat(all_dists), torch.cat(all_idx)


def memorisation_ratio(
    sample_feats: Tensor, test_feats: Tensor, train_feats: Tensor, chunk_size: int = 1024
) -> float:
    """Mean NN distance of samples (S, D) to train (T, D) over that of held-out test images (Q, D) to train.

    Test images show how far genuinely new images sit from the training set, so a ratio well below 1 means
    samples hug training images (memorisation); about 1 means they are as novel as unseen data.
    """
    to_train = nearest_neighbours(sample_feats, train_feats, 1, chunk_size)[0].mean()
    test_to_train = nearest_neighbours(test_feats, train_feats, 1, chunk_size)[0].mean()
    return float(to_train / test_to_train)
