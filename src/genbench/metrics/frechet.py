"""Frechet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017), by torch-fidelity.

torch-fidelity 0.4's own chain, features -> (mu, sigma) -> distance (``fid_features_to_statistics``,
``fid_statistics_to_metric``), so reference statistics can be cached and each step tested alone. genbench only pins
the precision: features are handed over as float64, because FID is a small difference of large traces and float32
statistics lose digits at D = 2048. ``Tr((sigma1 sigma2)^(1/2))`` is the sum of the square roots of the eigenvalues
of the product (exact also when it is singular, with fewer samples than dimensions).

Measured against genbench's former torch implementation (float64 covariance by a matrix product, the same
``numpy.linalg.eigvals``) on 10,000 x 10,000 random features, 2 threads on a 2-core CPU shared with other jobs (load
1-14, so absolute times are inflated and vary 2x between runs): D = 128 0.90 s (own 0.93 s); D = 2048 24.7 s (own
35.5 s) in one run, 193 s (own 142 s) in another. The difference is noise: the covariances alone took 11-16 s
(numpy.cov) against 11-21 s (torch matmul) over three interleaved runs, and the eigenvalues, which dominate, are the
same call. Equal to 1e-13 relative, so no own version is kept.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from torch import Tensor


class Statistics(TypedDict):
    """torch-fidelity's statistics dict: mean (D,) and unbiased covariance (D, D), float64."""

    mu: np.ndarray
    sigma: np.ndarray


def feature_statistics(features: Tensor) -> Statistics:
    """Mean (D,) and unbiased covariance (D, D) of ``features`` (N, D), float64 (torch-fidelity's dict)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {tuple(features.shape)}")
    return fid_features_to_statistics(features.detach().to("cpu", torch.float64))


def frechet_distance(stats_1: Statistics, stats_2: Statistics) -> float:
    """``||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))`` of two statistics dicts."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    mu_1, mu_2, sigma_1, sigma_2 = stats_1["mu"], stats_2["mu"], stats_1["sigma"], stats_2["sigma"]
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape or sigma_1.shape != mu_1.shape * 2:
        raise ValueError(
            f"shape mismatch: mu {mu_1.shape} vs {mu_2.shape}, sigma {sigma_1.shape} vs {sigma_2.shape}"
        )
    as64 = [{k: np.asarray(s[k], dtype=np.float64) for k in ("mu", "sigma")} for s in (stats_1, stats_2)]
    return float(fid_statistics_to_metric(*as64, verbose=False)[KEY_METRIC_FID])


def fid_from_features(real_feats: Tensor, fake_feats: Tensor) -> float:
    """FID straight from two feature sets (N, D) and (M, D), when no cached reference statistics exist."""
    return frechet_distance(feature_statistics(real_feats), feature_statistics(fake_feats))
