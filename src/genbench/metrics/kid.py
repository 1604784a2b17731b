"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs").

Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets.
Unlike FID it has an unbiased estimator, so values from different sample sizes are comparable. Subsets are
drawn with numpy's ``RandomState(seed).choice`` in torch-fidelity's order, so for the same features, seed and
subset parameters the numbers equal torch-fidelity's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class KIDResult(NamedTuple):
    """Mean and (population) standard deviation of MMD^2 over the subsets."""

    mean: float
    std: float


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef0: float = 1.0) -> Tensor:
    """k(x, y) = (x.y / D + coef0)^degree for x (N, D), y (M, D) -> (N, M)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(k_xx: Tensor, k_xy: Tensor, k_yy: Tensor) -> Tensor:
    """Unbiased MMD^2 from kernel matrices of two equal-size samples (m, m); the diagonals of K_XX, K_YY are dropped."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return (sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)


def kernel_inception_distance(
    features_1: Tensor,
    features_2: Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> KIDResult:
    """KID between feature sets (N1, D) and (N2, D): MMD^2 on ``num_subsets`` subsets of ``subset_size`` each.

    Defaults are torch-fidelity's (100 subsets of 1000, seed 2020). Computed in float64 on the inputs' device.
    """
    n1, n2 = features_1.shape[0], features_2.shape[0]
    if features_1.shape[1:] != features_2.shape[1:] or features_1.dim() != 2:
        raise ValueError(
            f"need (N, D) features of equal D, got {tuple(features_1.shape)}, {tuple(features_2.shape)}"
        )
    if subset_size < 2 or subset_size > min(n1, n2):
        raise ValueError(f"KID subset size {subset_size} must be in [2, min(N1, N2) = {min(n1, n2)}]")
    x_all = features_1.to(torch.float64)  # (N1, D)
    y_all = features_2.to(torch.float64)  # (N2, D)
    rng = np.random.RandomState(seed)
    mmds = np.zeros(num_subsets)
    for i in range(num_subsets):
        # Draw order matches torch-fidelity: set 1 then set 2, without replacement.
        x = x_all[torch.from_numpy(rng.choice(n1, subset_size, replace=False)).to(x_all.device)]  # (m, D)
        y = y_all[torch.from_numpy(rng.choice(n2, subset_size, replace=False)).to(y_all.device)]  # (m, D)
        mmds[i] = mmd2_unbiased(
            polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y)
        ).item()
    return KIDResult(mean=float(mmds.mean()), std=float(mmds.std()))
