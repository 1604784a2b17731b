"""Fully-connected networks with an equalised learning rate, as in MLP-ALAE (Pidhorskyi et al., CVPR 2020).

Equalised learning rate (Karras et al., ProGAN/StyleGAN; used by every ALAE network): a layer stores its weights
without the He scale and multiplies them by ``sqrt(2 / fan_in) * lr_multiplier`` in ``forward``. Adam's steps are
roughly the same size for every parameter, so scaling at run time makes the *effective* step of each layer
proportional to its He constant, whatever its fan-in. The stored weights start at N(0, 1 / lr_multiplier^2), so every
layer starts He-initialised whatever its multiplier, and the multiplier only slows learning: 0.1 on the mapping F and
the head D, as in the official code. (Storing N(0, 1) and multiplying by 0.1 would also shrink F's initial output
by 0.1 per layer, 1e-6 through six layers.)

Pixel tensors here are "signed": the networks see and produce images in [-1, 1] as the official code does; the model
maps to and from the [0, 1] contract range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.2


class EqualizedLinear(nn.Module):
    """y = x @ (c * W)^T + lr_multiplier * b with c = gain / sqrt(in_features) * lr_multiplier. (N, in) -> (N, out)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        lr_multiplier: float = 1.0,
        gain: float = math.sqrt(2.0),
    ) -> None:
        super().__init__()
        if lr_multiplier <= 0:
            raise ValueError(f"lr_multiplier must be positive, got {lr_multiplier}")
        self.in_features, self.out_features, self.lr_multiplier = in_features, out_features, lr_multiplier
        self.weight_scale = gain / math.sqrt(in_features) * lr_multiplier
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        # Scale the output, not the weight: the same result without a weight-sized multiply per call.
        out = F.linear(x, self.weight) * self.weight_scale
        return out if self.bias is None else out + self.bias * self.lr_multiplier

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, lr_multiplier={self.lr_multiplier}"


def mlp(widths: Sequence[int], lr_multiplier: float = 1.0, activate_last: bool = False) -> nn.Sequential:
    """Equalised linear layers widths[0] -> widths[1] -> ... with leaky ReLU (0.2) between them (and after the last)."""
    if len(widths) < 2:
        raise ValueError(f"an MLP needs at least an input and an output width, got {list(widths)}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(EqualizedLinear(fan_in, fan_out, lr_multiplier=lr_multiplier))
        if activate_last or i < len(widths) - 2:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


def pixel_norm(z: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row to unit root-mean-square. (N, D) -> (N, D)."""
    return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    """F: z (N, features) -> w (N, features). Pixel norm, then ``num_layers`` layers each followed by leaky ReLU.

    Width = latent size throughout, as the official ``MappingFromLatent`` (mapping_fmaps = latent size).
    """

    def __init__(self, features: int, num_layers: int = 6, lr_multiplier: float = 0.1) -> None:
        super().__init__()
        self.net = mlp([features] * (num_layers + 1), lr_multiplier, activate_last=True)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(pixel_norm(z))


OUTPUTS = {"linear": lambda x: x, "clamp": lambda x: x.clamp(-1.0, 1.0), "tanh": torch.tanh}


class FCGenerator(nn.Module):
    """G: w (N, in_features) -> signed images (N, C, S, S), unbounded (linear output, as the official GeneratorFC).

    ``output_init_scale`` scales the output layer's initial weights (1: He, as the official code). At He scale the
    untrained output layer maps each hidden vector to independent per-pixel noise of about the data's range, which
    the adversarial signal (through E, whose input gradients R1 keeps small) removes only slowly.

    ``output``: ``linear`` (the official GeneratorFC), ``clamp`` (clipped to the data's range [-1, 1], the images
    that are shown and scored, so the critic judges those) or ``tanh``.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        in_features: int,
        hidden: int = 1024,
        num_layers: int = 3,
        output_init_scale: float = 1.0,
        output: str = "linear",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {sorted(OUTPUTS)}, got {output!r}")
        self.shape, self.output = (channels, image_size, image_size), output
        self.net = mlp([in_features] + [hidden] * (num_layers - 1) + [math.prod(self.shape)])
        with torch.no_grad():
            self.net[-1].weight.mul_(output_init_scale)

    def forward(self, w: Tensor) -> Tensor:
        return OUTPUTS[self.output](self.net(w)).view(w.shape[0], *self.shape)


class FCEncoder(nn.Module):
    """E: signed images (N, C, S, S) -> w (N, out_features). ``output_activation``: leaky ReLU on the output like
    F's (official EncoderFC), else a linear output."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        out_features: int,
        hidden: int = 1024,
        num_layers: int = 3,
        output_activation: bool = True,
    ) -> None:
        super().__init__()
        self.net = mlp(
            [channels * image_size * image_size] + [hidden] * (num_layers - 1) + [out_features],
            activate_last=output_activation,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class LatentDiscriminator(nn.Module):
    """D: w (N, in_features) -> real/fake logits (N,). ``num_layers`` layers (width in_features, the last one logit).

    ``activation=False`` (the official MappingD / MappingDNoStyle) stacks the layers with no non-linearity between
    them, so D is affine in w and the critic D(E(x)) is non-linear through E alone; ``True`` puts leaky ReLUs
    between them (an MLP head).
    """

    def __init__(
        self, in_features: int, num_layers: int = 3, lr_multiplier: float = 0.1, activation: bool = False
    ) -> None:
        super().__init__()
        widths = [in_features] * num_layers + [1]
        if activation:
            self.net = mlp(widths, lr_multiplier)
        else:
            self.net = nn.Sequential(
                *(
                    EqualizedLinear(a, b, lr_multiplier=lr_multiplier)
                    for a, b in zip(widths, widths[1:], strict=False)
                )
            )

    def forward(self, w: Tensor) -> Tensor:
        return self.net(w).squeeze(1)


__all__ = [
    "EqualizedLinear",
    "FCEncoder",
    "FCGenerator",
    "LatentDiscriminator",
    "MappingNetwork",
    "mlp",
    "pixel_norm",
]
