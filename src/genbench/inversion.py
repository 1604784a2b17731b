"""Latent inversion: codes for images a decoder has never seen, by batched optimisation (pure torch).

GLO has no encoder: ``encode`` runs Adam on the codes of a whole batch at once (decoder frozen, codes projected
after every step as in training). The start is the mean code or, per image, the best of K candidate codes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from genbench.latent import nearest_neighbours, project


def best_of_candidates(
    decode: Callable[[Tensor], Tensor], x: Tensor, candidates: Tensor, chunk: int = 256
) -> Tensor:
    """For each image x (N, C, H, W), the candidate code (K, D) whose decoding is nearest in pixels. -> (N, D).

    The K candidates are decoded once and shared by all images, so the cost is K decodes plus an N x K distance.
    """
    with torch.no_grad():
        decoded = torch.cat([decode(c).flatten(1) for c in candidates.split(chunk)])  # (K, C*H*W)
        _, nearest = nearest_neighbours(x.flatten(1).to(decoded.dtype), decoded)
    return candidates[nearest]


def invert(
    decode: Callable[[Tensor], Tensor],
    x: Tensor,
    start: Tensor,
    steps: int,
    lr: float,
    per_image_loss: Callable[[Tensor, Tensor], Tensor],
    projection: str = "none",
) -> Tensor:
    """argmin_z loss(decode(z), x) for a batch: Adam on all N codes at once, projected after each step.

    x: (N, C, H, W) targets; start: (N, D) initial codes; ``per_image_loss(x_hat, x)`` -> (N,). Each image's code
    only sees its own loss (Adam is elementwise and the loss a sum), so the batch size does not change the result
    (given a decoder in eval mode). Only the codes get gradients: the decoder's ``.grad`` stay untouched.
    Works when called under ``torch.no_grad`` or inference mode (evaluation loops). Returns (N, D), detached.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()  # a normal tensor even if x was made in inference mode
        z = project(start.detach().clone().to(x.device), projection).requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            (grad,) = torch.autograd.grad(per_image_loss(decode(z), x).sum(), z)
            z.grad = grad
            optimiser.step()
            with torch.no_grad():
                z.copy_(project(z, projection))
    return z.detach()


__all__ = ["best_of_candidates", "invert"]
