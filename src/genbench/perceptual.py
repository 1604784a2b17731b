"""Per-image reconstruction losses as modules with one interface: ``loss(x_hat, x) -> (N,)``.

- ``PerceptualLoss``: the incremental-GLO report's loss ||x - y||_1 + sum_i ||phi_i(x) - phi_i(y)||_1, phi_i the
  features at the end of block i of a frozen network (VGG16 in the report: ``genbench.nets.pretrained.VGG16Blocks``;
  any module returning a list of feature maps works, so tests use a small one).
- ``PixelLoss``: weighted per-pixel L2 + Lap1 (GLO's losses), the setting without pretrained weights.

Norms are means over elements (per image) rather than sums, so weights carry across image and feature sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from genbench import losses


def perceptual_distance(
    x_hat: Tensor,
    x: Tensor,
    blocks: Callable[[Tensor], list[Tensor]],
    pixel_weight: float = 1.0,
    feature_weight: float = 1.0,
) -> Tensor:
    """pixel_weight * mean|x_hat - x| + feature_weight * sum_i mean|phi_i(x_hat) - phi_i(x)|. (N, C, H, W) x 2 -> (N,).

    Both images go through ``blocks`` in one batch (a frozen net in eval mode: they do not interact).
    """
    n = x.shape[0]
    loss = pixel_weight * (x_hat - x).abs().flatten(1).mean(dim=1)
    if feature_weight:
        for phi in blocks(torch.cat([x_hat, x.to(x_hat.dtype)])):
            loss = loss + feature_weight * (phi[:n] - phi[n:]).abs().flatten(1).mean(dim=1)
    return loss


class PerceptualLoss(nn.Module):
    """``perceptual_distance`` with a frozen block-feature network (``network(x) -> list of (N, C_i, H_i, W_i)``)."""

    def __init__(self, network: nn.Module, pixel_weight: float = 1.0, feature_weight: float = 1.0) -> None:
        super().__init__()
        if pixel_weight < 0 or feature_weight < 0 or pixel_weight + feature_weight == 0:
            raise ValueError("pixel_weight and feature_weight must be >= 0 and not both 0")
        self.network, self.pixel_weight, self.feature_weight = network, pixel_weight, feature_weight
        self.name = f"{getattr(network, 'name', type(network).__name__)}_perceptual"
        self.pretrained = bool(getattr(network, "pretrained", False))

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        return perceptual_distance(x_hat, x, self.network, self.pixel_weight, self.feature_weight)


class PixelLoss(nn.Module):
    """l2_weight * per-pixel squared error + lap1_weight * per-pixel Lap1, per image. (N, C, H, W) x 2 -> (N,)."""

    pretrained = False

    def __init__(self, l2_weight: float = 1.0, lap1_weight: float = 1.0) -> None:
        super().__init__()
        if l2_weight < 0 or lap1_weight < 0 or l2_weight + lap1_weight == 0:
            raise ValueError("l2_weight and lap1_weight must be >= 0 and not both 0")
        self.l2_weight, self.lap1_weight = l2_weight, lap1_weight
        self.name = "+".join(n for n, w in (("l2", l2_weight), ("lap1", lap1_weight)) if w)

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        loss = self.l2_weight * losses.squared_error(x_hat, x)
        if self.lap1_weight:
            loss = loss + self.lap1_weight * losses.lap1(x_hat, x)
        return loss / x[0].numel()


__all__ = ["PerceptualLoss", "PixelLoss", "perceptual_distance"]
