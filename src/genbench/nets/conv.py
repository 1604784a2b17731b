"""Convolutional encoder and decoder sized by the image size.

Both halve/double the resolution with stride-2 convolutions between the image and a small base grid: 7x7 for
28-pixel images (as in the Fashion-MNIST post), 4x4 for 16, 32, 64 and 128 pixels. Widths double per block
from ``base_width`` (encoder) and halve towards the image (decoder), capped at ``max_width``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def base_grid(image_size: int) -> tuple[int, int]:
    """(base side, number of stride-2 blocks) for a supported image size."""
    for base in (4, 7):
        blocks = math.log2(image_size / base)
        if blocks >= 1 and blocks == int(blocks):
            return base, int(blocks)
    raise ValueError(
        f"image size {image_size} is not 4 or 7 times a power of two (supported: 16, 28, 32, 64, 128)"
    )


def _widths(base_width: int, blocks: int, max_width: int) -> list[int]:
    return [min(base_width * 2**i, max_width) for i in range(blocks)]


class ConvEncoder(nn.Module):
    """(N, C, S, S) images -> (N, out_features) via stride-2 convs (kernel 4) and a linear head."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        out_features: int,
        base_width: int = 32,
        max_width: int = 256,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        base, blocks = base_grid(image_size)
        widths = _widths(base_width, blocks, max_width)
        layers: list[nn.Module] = []
        in_ch = channels
        for w in widths:
            layers += [nn.Conv2d(in_ch, w, 4, stride=2, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.2) if batch_norm else nn.ReLU())
            in_ch = w
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(in_ch * base * base, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """(N, in_features) codes -> (N, C, S, S) logits via a linear layer to the base grid and stride-2 deconvs.

    Returns unbounded logits; the model maps them to [0, 1] (sigmoid) so the loss can use the logits directly.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        in_features: int,
        base_width: int = 32,
        max_width: int = 256,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        base, blocks = base_grid(image_size)
        widths = _widths(base_width, blocks, max_width)[::-1]  # widest at the base grid
        self.base, self.first_width = base, widths[0]
        self.project = nn.Sequential(nn.Linear(in_features, widths[0] * base * base), nn.ReLU())
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            out_ch = widths[i + 1] if i + 1 < len(widths) else channels
            last = i + 1 == len(widths)
            layers.append(nn.ConvTranspose2d(w, out_ch, 4, stride=2, padding=1, bias=last or not batch_norm))
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU())
        self.blocks = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], self.first_width, self.base, self.base)
        return self.blocks(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["ConvDecoder", "ConvEncoder", "base_grid", "count_parameters"]
