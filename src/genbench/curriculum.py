"""Incremental GLO's curriculum: split a training set into subsets that each cover the image space.

features (N, F) -> PCA to ``pca_dim`` -> ``n_stages - 1`` rounds of: k-means with ``n_clusters`` on the images not
chosen yet, and the ``k`` images nearest each centroid (among its cluster's members) form the round's subset; the
images left form the last subset (Helman, Zingerman & Schreiber 2019: ResNet-50 features, PCA 100, 128 clusters,
4 or 8 representatives).

A cluster with fewer than ``k`` members gives all of them, and the round's shortfall is filled with the unchosen
images nearest their own centroids, so every round's subset has exactly ``n_clusters * k`` images. The PCA is fitted
once on all images; k-means runs again each round. Pure functions on arrays (numpy, scikit-learn), deterministic for
a seed; ``extract_features`` is the one step that runs a network.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from torch import Tensor, nn

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Features (N, F) float64 of uint8 images (N, C, H, W), run through ``net`` in batches on ``device``."""
    chunks = [
        net(images[start : start + batch_size].to(device).float().div_(255.0)).flatten(1).double().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks).numpy()


def reduce_dimension(features: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """PCA of features (N, F) to (N, min(dim, N, F)) dimensions."""
    dim = min(dim, *features.shape)
    return PCA(n_components=dim, random_state=seed).fit_transform(features)


def cluster(
    features: np.ndarray, n_clusters: int, seed: int, n_init: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of features (N, d): (labels (N,), centroids (K, d)), K = min(n_clusters, N)."""
    kmeans = KMeans(n_clusters=min(n_clusters, len(features)), n_init=n_init, random_state=seed)
    labels = kmeans.fit_predict(features)
    return labels, kmeans.cluster_centers_


def nearest_to_centroids(
    features: np.ndarray, labels: np.ndarray, centroids: np.ndarray, k: int
) -> np.ndarray:
    """Positions (sum_c min(k, |c|),) of the k members of each cluster c nearest its centroid, cluster by cluster."""
    chosen = []
    for c, centroid in enumerate(centroids):
        members = np.flatnonzero(labels == c)
        distance = np.linalg.norm(features[members] - centroid, axis=1)
        chosen.append(members[np.argsort(distance, kind="stable")[:k]])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def representatives(features: np.ndarray, n_clusters: int, k: int, seed: int) -> np.ndarray:
    """Positions of ``min(n_clusters * k, N)`` representatives of features (N, d): see the module docstring."""
    labels, centroids = cluster(features, n_clusters, seed)
    chosen = nearest_to_centroids(features, labels, centroids, k)
    wanted = min(n_clusters * k, len(features))
    if len(chosen) < wanted:  # small clusters: top up with the images nearest their own centroid
        rest = np.setdiff1d(np.arange(len(features)), chosen)
        distance = np.linalg.norm(features[rest] - centroids[labels[rest]], axis=1)
        chosen = np.concatenate([chosen, rest[np.argsort(distance, kind="stable")[: wanted - len(chosen)]]])
    return chosen


def split(
    features: np.ndarray, n_stages: int, n_clusters: int, k: int, pca_dim: int, seed: int
) -> list[np.ndarray]:
    """Disjoint subsets (sorted index arrays) covering range(N): n_stages - 1 of n_clusters * k, then the rest."""
    n = len(features)
    per_round = n_clusters * k
    if n_stages < 1 or n_clusters < 1 or k < 1:
        raise ValueError("n_stages, n_clusters and k_representatives must be at least 1")
    if (n_stages - 1) * per_round >= n:
        raise ValueError(
            f"{n_stages - 1} rounds of {n_clusters} clusters x {k} representatives need more than {n} images: "
            "lower n_stages, n_clusters or k_representatives"
        )
    reduced = reduce_dimension(features, pca_dim, seed)
    left = np.arange(n)
    subsets = []
    for round_ in range(n_stages - 1):
        chosen = left[representatives(reduced[left], n_clusters, k, seed + round_)]
        subsets.append(np.sort(chosen))
        left = np.setdiff1d(left, chosen)
        log.info(
            "curriculum round %d: %d representatives, %d images left", round_ + 1, len(chosen), len(left)
        )
    subsets.append(left)
    return subsets


def stage_of(subsets: list[np.ndarray], n: int) -> np.ndarray:
    """(N,) int64: the subset each index belongs to (-1 where none)."""
    out = np.full(n, -1, dtype=np.int64)
    for s, subset in enumerate(subsets):
        out[subset] = s
    return out


__all__ = [
    "cluster",
    "extract_features",
    "nearest_to_centroids",
    "reduce_dimension",
    "representatives",
    "split",
    "stage_of",
]
