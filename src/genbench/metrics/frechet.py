"""Frechet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017).

Split as torch-fidelity does: features -> (mu, sigma) -> distance, so reference statistics can be cached and
each step tested alone. The statistics are float64: FID is a small difference of large traces and float32
loses digits at D = 2048.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of ``features`` (N, D), both float64 on the input's device."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {tuple(features.shape)}")
    x = features.to(torch.float64)  # (N, D)
    mu = x.mean(dim=0)  # (D,)
    centred = x - mu  # (N, D)
    sigma = centred.T @ centred / (x.shape[0] - 1)  # (D, D), same as np.cov(rowvar=False)
    return mu, sigma


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))`` for mu (D,), sigma (D, D).

    ``Tr(sqrt(sigma1 sigma2))`` is the sum of square roots of the eigenvalues of the product, as torch-fidelity
    and torchmetrics compute it. Unlike pytorch-fid's ``scipy.linalg.sqrtm`` this stays exact when the product
    is singular (fewer samples than dimensions), where sqrtm returns inf and needs an ``eps`` diagonal offset.
    The offset is kept as the fallback for an eigen-solver failure. Round-off makes some eigenvalues slightly
    negative or complex: their roots' imaginary parts are dropped, unless they are large enough to mean the
    inputs are not covariance matrices.
    """
    m1, m2 = _numpy64(mu1), _numpy64(mu2)  # (D,)
    s1, s2 = _numpy64(sigma1), _numpy64(sigma2)  # (D, D)
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.shape[0], m1.shape[0]):
        raise ValueError(f"shape mismatch: mu {m1.shape} vs {m2.shape}, sigma {s1.shape} vs {s2.shape}")

    try:
        eigenvalues = np.linalg.eigvals(s1 @ s2)  # (D,) complex in general
        if not np.isfinite(eigenvalues).all():
            raise np.linalg.LinAlgError("non-finite eigenvalues")
    except np.linalg.LinAlgError as exc:
        log.warning("eigenvalues of sigma1 sigma2 failed (%s); adding %g to the diagonals", exc, eps)
        offset = np.eye(s1.shape[0]) * eps
        eigenvalues = np.linalg.eigvals((s1 + offset) @ (s2 + offset))
    roots = np.sqrt(eigenvalues.astype(np.complex128))  # (D,)
    if np.abs(roots.imag).sum() > 1e-3 * max(np.abs(roots.real).sum(), 1e-12):
        raise ValueError(
            "sigma1 sigma2 has large complex/negative eigenvalues: are these covariance matrices?"
        )
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * roots.real.sum())


def fid_from_features(real_feats: Tensor, fake_feats: Tensor) -> float:
    """FID straight from two feature sets (N, D) and (M, D), when no cached reference statistics exist."""
    return frechet_distance(*feature_statistics(real_feats), *feature_statistics(fake_feats))


def _numpy64(x: Tensor) -> np.ndarray:
    """A float64 CPU copy for scipy."""
    return x.detach().to("cpu", torch.float64).numpy()
