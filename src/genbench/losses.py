"""Loss terms shared by the models, as pure functions on tensors. Shapes in comments."""

from __future__ import annotations

import functools

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


# -- Laplacian-pyramid L1 (GLO's "Lap1", Bojanowski et al. 2018) ------------------------------------------------------

_BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)  # Burt & Adelson's 5-tap generating kernel, normalised below


def _blur_matrix(n: int) -> Tensor:
    """(n, n) float64 matrix of the 5-tap binomial blur along one axis, reflect-padded (F.pad's "reflect")."""
    m = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for offset, tap in zip(range(-2, 3), _BINOMIAL_5, strict=True):
            j = abs(i + offset)  # reflect at the start: -1 -> 1, -2 -> 2
            j = 2 * (n - 1) - j if j >= n else j  # and at the end: n -> n - 2
            m[i, j] += tap / 16.0
    return m


@functools.lru_cache(maxsize=64)
def _axis_operators(n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """One axis of one pyramid level, as matrices: ``down`` (m, n) blurs then keeps every second sample and ``up``
    (n, m) inserts zeros, blurs at size 2m and crops to n, times 2 (so 4 in 2D keeps the mean); m = ceil(n / 2).

    The blur is separable, so a 2D level is ``down_h @ x @ down_w.T``: small matmuls, fast on CPU and GPU.
    """
    m = (n + 1) // 2
    down = _blur_matrix(n)[::2]
    up = 2.0 * _blur_matrix(2 * m)[:n, ::2]  # columns of the blur at the inserted (even) positions
    return down.to(dtype=dtype, device=device), up.to(dtype=dtype, device=device)


def pyramid_upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The pyramid's expand step: (N, C, ceil(H/2), ceil(W/2)) -> (N, C, H, W) for ``size`` = (H, W)."""
    up_h = _axis_operators(size[0], x.dtype, x.device)[1]
    up_w = _axis_operators(size[1], x.dtype, x.device)[1]
    return up_h @ x @ up_w.T


def default_pyramid_levels(size: int) -> int:
    """Band-pass levels for a ``size``-pixel image: halve until the low-pass residual is 4 to 7 pixels wide."""
    levels = 0
    while size >= 8:
        size = (size + 1) // 2
        levels += 1
    return levels


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """[L^0(x), ..., L^levels(x)]: ``levels`` band-pass images (finest first) then the low-pass residual.

    L^j = G^j - up(G^(j+1)) with G^0 = x and G^(j+1) = blur(G^j) taken at every second pixel. (N, C, H, W) in.
    """
    pyramid, current = [], x
    for _ in range(levels):
        down_h = _axis_operators(current.shape[-2], x.dtype, x.device)[0]
        down_w = _axis_operators(current.shape[-1], x.dtype, x.device)[0]
        down = down_h @ current @ down_w.T
        pyramid.append(current - pyramid_upsample(down, current.shape[-2:]))
        current = down
    pyramid.append(current)
    return pyramid


def lap1(x: Tensor, target: Tensor, levels: int | None = None) -> Tensor:
    """Lap1(x, x') = sum_j 2^(-2j) |L^j(x) - L^j(x')|_1 per sample (j = 0 finest). (N, C, H, W) -> (N,).

    ``levels`` band-pass levels (default: down to a 4-7 pixel residual); the residual counts as level ``levels``.
    The pyramid is linear, so it is built once on the difference.
    """
    if levels is None:
        levels = default_pyramid_levels(min(x.shape[-2:]))
    bands = laplacian_pyramid(x - target, levels)
    return sum(4.0**-j * band.abs().flatten(1).sum(dim=1) for j, band in enumerate(bands))
