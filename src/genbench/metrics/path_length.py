"""Perceptual path length (StyleGAN, Karras et al. 2019; ALAE, Pidhorskyi et al. 2020), on plain tensors.

For code pairs (z0, z1) and fractions t, each pair's value is

    d(phi(G(interp(z0, z1, t))), phi(G(interp(z0, z1, t + eps)))) / eps^2,    d(a, b) = ||a - b||^2

with G the decoder, phi a feature map (pixels, a classifier's features), interp ``lerp`` (straight lines) or
``slerp`` (great circles, for codes on the unit sphere). The path length is the mean of these values after
discarding those below the 1st and above the 99th percentile (``trimmed_mean``), as StyleGAN's
``metrics/perceptual_path_length.py`` does. For a linear decoder G(z) = W z, lerp and pixel features every value
is exactly ||W (z1 - z0)||^2, whatever t and eps.

Never imports Lightning or models: the decoder and the feature map are plain callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

INTERPOLATIONS = ("lerp", "slerp")


def lerp_pairs(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Points (N, D) z0 + t (z1 - z0) of pairs z0, z1 (N, D), one fraction t (N,) per pair."""
    return z0 + t.to(z0).unsqueeze(1) * (z1 - z0)


def slerp_pairs(z0: Tensor, z1: Tensor, t: Tensor, eps: float = 1e-6) -> Tensor:
    """Points (N, D) on the great-circle arcs from z0 to z1 (N, D) at one fraction t (N,) per pair.

    sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1 with w the angle between the codes (the formula of
    ``genbench.evaluators.interpolation.slerp``, there with fractions shared by all pairs); unit-norm inputs give
    unit-norm points. Nearly parallel or antipodal pairs (|sin w| < eps) fall back to the straight line.
    """
    t = t.to(z0).unsqueeze(1)  # (N, 1)
    cos = torch.nn.functional.cosine_similarity(z0, z1, dim=1).clamp(-1, 1).unsqueeze(1)  # (N, 1)
    omega = cos.acos()
    sin = omega.sin()
    degenerate = sin.abs() < eps
    safe = torch.where(degenerate, torch.ones_like(sin), sin)
    w0 = torch.where(degenerate, 1 - t, ((1 - t) * omega).sin() / safe)
    w1 = torch.where(degenerate, t, (t * omega).sin() / safe)
    return w0 * z0 + w1 * z1


def _interpolation(name: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    if name == "lerp":
        return lerp_pairs
    if name == "slerp":
        return slerp_pairs
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {name!r}")


def path_lengths(
    decode: Callable[[Tensor], Tensor],
    features: Callable[[Tensor], Tensor],
    z0: Tensor,
    z1: Tensor,
    t: Tensor,
    epsilon: float = 1e-4,
    interpolation: str = "lerp",
    batch_size: int = 500,
) -> Tensor:
    """Per-pair values (N,) float64 on the CPU: ||phi(G(p(t))) - phi(G(p(t + eps)))||^2 / eps^2.

    ``z0``, ``z1``: codes (N, D); ``t``: fractions (N,); ``decode``: codes (B, D) -> images; ``features``: images
    -> (B, ...) (flattened). Both endpoints of ``batch_size`` pairs go through ``decode`` and ``features`` in one
    call of 2 x batch_size rows. Gradients are not tracked.
    """
    if z0.shape != z1.shape or z0.dim() != 2 or t.shape != z0.shape[:1]:
        raise ValueError(
            f"need z0, z1 (N, D) and t (N,), got {tuple(z0.shape)}, {tuple(z1.shape)}, {tuple(t.shape)}"
        )
    if not epsilon > 0 or batch_size < 1:
        raise ValueError(f"need epsilon > 0 and batch_size >= 1, got {epsilon}, {batch_size}")
    interp = _interpolation(interpolation)
    out = []
    with torch.no_grad():
        for start in range(0, z0.shape[0], batch_size):
            a, b = z0[start : start + batch_size], z1[start : start + batch_size]
            tb = t[start : start + batch_size].to(a.device)
            codes = torch.cat([interp(a, b, tb), interp(a, b, tb + epsilon)])  # (2B, D)
            phi = features(decode(codes)).flatten(1).double()  # (2B, F)
            first, second = phi.chunk(2)
            out.append((second - first).pow(2).sum(dim=1).div(epsilon**2).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def trimmed_mean(values: Tensor, lower: float = 0.01, upper: float = 0.99) -> float:
    """Mean of the values (N,) within [q_lower, q_upper], q_lower the ``lower`` quantile rounded down to a value
    and q_upper the ``upper`` quantile rounded up (numpy's 'lower' / 'higher' percentiles, as StyleGAN). NaN when
    a value is not finite (a diverged model) or there are none."""
    values = values.detach().double().flatten().cpu()
    if values.numel() == 0 or not bool(torch.isfinite(values).all()):
        return math.nan
    lo = torch.quantile(values, lower, interpolation="lower")
    hi = torch.quantile(values, upper, interpolation="higher")
    return float(values[(values >= lo) & (values <= hi)].mean())


__all__ = ["INTERPOLATIONS", "lerp_pairs", "path_lengths", "slerp_pairs", "trimmed_mean"]
