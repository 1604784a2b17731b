"""Nearest neighbours in feature space, and the memorisation ratio built on them.

``nearest_neighbours`` is :func:`genbench.metrics.knn.knn`, genbench's one exact k-NN search (chunked matrix
products on the inputs' device; see there), under the name its callers import.
"""

from __future__ import annotations

from torch import Tensor

from genbench.metrics.knn import knn

nearest_neighbours = knn


def memorisation_ratio(
    sample_feats: Tensor, test_feats: Tensor, train_feats: Tensor, chunk_size: int = 1024
) -> float:
    """Mean NN distance of samples (S, D) to train (T, D) over that of held-out test images (Q, D) to train.

    Test images show how far genuinely new images sit from the training set, so a ratio well below 1 means
    samples hug training images (memorisation); about 1 means they are as novel as unseen data.
    """
    to_train = knn(sample_feats, train_feats, 1, chunk_size)[0].mean()
    test_to_train = knn(test_feats, train_feats, 1, chunk_size)[0].mean()
    return float(to_train / test_to_train)


__all__ = ["knn", "memorisation_ratio", "nearest_neighbours"]
