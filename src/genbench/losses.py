"""Loss terms shared by the models, as pure functions on tensors. Shapes in comments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over latent dims. (N, D) -> (N,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Sigmoid cross-entropy per sample, summed over pixels. (N, C, H, W) -> (N,)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(dim=1)


def squared_error(x: Tensor, target: Tensor) -> Tensor:
    """Squared error per sample, summed over pixels. (N, C, H, W) -> (N,)."""
    return (x - target).pow(2).flatten(1).sum(dim=1)


def gaussian_kernel(x: Tensor, y: Tensor) -> Tensor:
    """k(x, y) = exp(-||x - y||^2 / dim), the InfoVAE post's kernel. (N, D), (M, D) -> (N, M)."""
    return torch.exp(-torch.cdist(x, y).pow(2) / x.shape[1])


def imq_kernel(x: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
    """Inverse multiquadric kernel C / (C + ||x - y||^2), C = 2 * dim * scale (pythae's and PyTorch-VAE's default)."""
    c = 2.0 * x.shape[1] * scale
    return c / (c + torch.cdist(x, y).pow(2))


KERNELS = {"gaussian": gaussian_kernel, "imq": imq_kernel}


def mmd(x: Tensor, y: Tensor, kernel: str = "gaussian") -> Tensor:
    """Biased (V-statistic) estimate of MMD^2 between samples x (N, D) and y (M, D), as in the InfoVAE post."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {sorted(KERNELS)}")
    k = KERNELS[kernel]
    return k(x, x).mean() + k(y, y).mean() - 2.0 * k(x, y).mean()
