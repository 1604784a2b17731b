"""DCGAN-style generator (Radford et al., 2016), the decoder of GLO.

A code (N, D) is treated as a 1x1 map and lifted to the base grid by a transposed convolution (4x4 for 16, 32, 64
and 128 pixels, 7x7 for 28), then doubled by stride-2 transposed convolutions with batch norm and ReLU until the
image size; the last one outputs the image. 128 pixels = 4x4 start and five stride-2 blocks, as in the GLO post
(kernel 3 there, 4 in DCGAN: ``kernel_size``). Widths halve towards the image from ``width * 2^(blocks-1)``
(DCGAN's ngf*8 at 4x4 for 64 pixels), capped at ``max_width``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genbench.nets.conv import base_grid

OUTPUTS = ("sigmoid", "tanh")


class DCGANGenerator(nn.Module):
    """(N, in_features) codes -> (N, channels, image_size, image_size) images in [0, 1].

    ``output="tanh"`` maps tanh to [0, 1] as (tanh + 1) / 2 (DCGAN, the GLO post); ``"sigmoid"`` uses a sigmoid.
    ``normalize_input``: codes are divided by their norm (held constant for the gradient) first, as GLANN's
    generator does, so only their direction matters whatever the scale they start or drift at.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        in_features: int,
        width: int = 64,
        max_width: int = 512,
        kernel_size: int = 4,
        batch_norm: bool = True,
        output: str = "tanh",
        normalize_input: bool = False,
    ) -> None:
        super().__init__()
        self.normalize_input = normalize_input
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if kernel_size < 3:
            raise ValueError("kernel_size must be at least 3")
        base, blocks = base_grid(image_size)
        self.output = output
        # Widths at the base grid, 2x the base, ..., half the image size.
        widths = [min(width * 2 ** (blocks - 1 - i), max_width) for i in range(blocks)]
        padding = (kernel_size - 1) // 2
        output_padding = 2 + 2 * padding - kernel_size  # makes every stride-2 layer exactly double the size

        def norm_relu(ch: int) -> list[nn.Module]:
            return ([nn.BatchNorm2d(ch)] if batch_norm else []) + [nn.ReLU(inplace=True)]

        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_features, widths[0], base, 1, 0, bias=not batch_norm)
        ]
        layers += norm_relu(widths[0])
        for i in range(blocks):
            last = i + 1 == blocks
            out_ch = channels if last else widths[i + 1]
            layers.append(
                nn.ConvTranspose2d(
                    widths[i], out_ch, kernel_size, 2, padding, output_padding, bias=last or not batch_norm
                )
            )
            if not last:
                layers += norm_relu(out_ch)
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if self.normalize_input:
            z = z / z.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
        y = self.net(z.view(z.shape[0], z.shape[1], 1, 1))
        if self.output == "tanh":
            return 0.5 * (torch.tanh(y) + 1.0)
        return torch.sigmoid(y)


__all__ = ["DCGANEncoder", "DCGANGenerator"]


class DCGANEncoder(nn.Module):
    """(N, channels, image_size, image_size) images in [0, 1] -> (N, out_features) codes.

    The DCGAN discriminator (Radford et al., 2016) with a linear head instead of its last convolution: stride-2
    convolutions (kernel 4) from the image down to the base grid (4x4, or 7x7 for 28 pixels), LeakyReLU(0.2), batch
    norm on all but the first; widths ``width``, 2 * ``width``, ... (DCGAN's ndf), capped at ``max_width``. The
    incremental-GLO report's encoder (64 feature maps).
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        out_features: int,
        width: int = 64,
        max_width: int = 512,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        base, blocks = base_grid(image_size)
        layers: list[nn.Module] = []
        in_ch = channels
        for i in range(blocks):
            out_ch = min(width * 2**i, max_width)
            norm = batch_norm and i > 0
            layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not norm))
            layers += ([nn.BatchNorm2d(out_ch)] if norm else []) + [nn.LeakyReLU(0.2, inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(in_ch * base * base, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
