"""Nearest neighbours in feature space, and the memorisation ratio built on them.

``nearest_neighbours`` is :func:`genbench.metrics.knn.knn`, genbench's one exact k-NN search (chunked matrix
products on the inputs' device; see there), under the name its callers import.
"""

from __future__ import annotations

from torch import Tensor

from genbench.metrics.knn import knn

nearest_neighbours = knn


def memorisation_ratio_of_distances(sample_distances: Tensor, test_distances: Tensor) -> float:
    """Mean distance (S,) of samples to their nearest training image over that (Q,) of held-out test images.

    Test images show how far genuinely new images sit from the training set, so a ratio well below 1 means
    samples hug training images (memorisation); about 1 means they are as novel as unseen data.
    """
    if (
        sample_distances.dim() != 1
        or test_distances.dim() != 1
        or not len(sample_distances)
        or not len(test_distances)
    ):
        raise ValueError(
            f"need non-empty (S,) and (Q,) distances, got {tuple(sample_distances.shape)}, {tuple(test_distances.shape)}"
        )
    return float(sample_distances.double().mean() / test_distances.double().mean())


def memorisation_ratio(
    sample_feats: Tensor, test_feats: Tensor, train_feats: Tensor, chunk_size: int = 1024
) -> float:
    """``memorisation_ratio_of_distances`` of samples (S, D) and test images (Q, D) to train (T, D), by ``knn``."""
    to_train = knn(sample_feats, train_feats, 1, chunk_size)[0][:, 0]  # (S,)
    test_to_train = knn(test_feats, train_feats, 1, chunk_size)[0][:, 0]  # (Q,)
    return memorisation_ratio_of_distances(to_train, test_to_train)


__all__ = ["knn", "memorisation_ratio", "memorisation_ratio_of_distances", "nearest_neighbours"]
