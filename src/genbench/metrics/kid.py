"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs"), by torch-fidelity.

Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets
(torch-fidelity 0.4's ``kid_features_to_metric``: numpy ``RandomState(seed).choice`` draws, set 1 then set 2).
Unlike FID it has an unbiased estimator, so values from different sample sizes are comparable. genbench hands the
features over as float64 (torch-fidelity computes the kernels in the features' dtype) and returns a named pair.

Measured against genbench's former torch implementation (float64 kernels, the same draws) on 10,000 x 10,000 random
features, 100 subsets of 1,000, 2 threads on a 2-core CPU shared with other jobs (load 1-14, so absolute times are
inflated): D = 128 4.9 s (own 20.4 s) and 43 s (own 74 s) in two runs; D = 2048 85 s (own 107 s) and 146 s (own
362 s). Equal to 1e-13 relative.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class KIDResult(NamedTuple):
    """Mean and (population) standard deviation of MMD^2 over the subsets."""

    mean: float
    std: float


def kernel_inception_distance(
    features_1: Tensor,
    features_2: Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> KIDResult:
    """KID between feature sets (N1, D) and (N2, D): MMD^2 on ``num_subsets`` subsets of ``subset_size`` each.

    Defaults are torch-fidelity's (100 subsets of 1000, seed 2020); its order of arguments is generated first.
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    n1, n2 = features_1.shape[0], features_2.shape[0]
    if features_1.shape[1:] != features_2.shape[1:] or features_1.dim() != 2:
        raise ValueError(
            f"need (N, D) features of equal D, got {tuple(features_1.shape)}, {tuple(features_2.shape)}"
        )
    if subset_size < 2 or subset_size > min(n1, n2):
        raise ValueError(f"KID subset size {subset_size} must be in [2, min(N1, N2) = {min(n1, n2)}]")
    if subset_size == n1 == n2:
        # every "subset" is the whole of both sets (a permutation: the same MMD): one is enough (periodic
        # evaluations at 1,000 vs 1,000 spent 4 s on 100 copies), and the spread is exactly 0
        num_subsets = 1
    out = kid_features_to_metric(
        features_1.detach().to("cpu", torch.float64),
        features_2.detach().to("cpu", torch.float64),
        kid_subsets=num_subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        kid_kernel="poly",  # pinned, not left to the library's defaults: (x.y / D + 1)^3
        kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None,  # 1 / D
        kid_kernel_poly_coef0=1,
        verbose=False,
    )
    std = 0.0 if num_subsets == 1 else float(out[KEY_METRIC_KID_STD])
    return KIDResult(mean=float(out[KEY_METRIC_KID_MEAN]), std=std)
