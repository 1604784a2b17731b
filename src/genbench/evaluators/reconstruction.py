"""Reconstruction error on the train and test splits, per pixel in [0, 1]."""

from __future__ import annotations

import torch

from genbench.evaluators.base import EvalContext
from genbench.progress import Progress


def reconstruction_mse(ctx: EvalContext, split: str, n_images: int | None, batch_size: int) -> float | None:
    """Mean squared error per pixel of ``model.reconstruct`` over the first ``n_images`` of ``split``.

    Train images pass their indices, so models with learned per-image codes (GLO) use them; test images do not.
    Returns None for an empty split.
    """
    total = len(ctx.datamodule.split(split))
    n = total if n_images is None else min(n_images, total)
    if n == 0:
        return None
    squared, count = torch.zeros((), device=ctx.device, dtype=torch.float64), 0
    with Progress(f"reconstructing {split} images", n, unit="images") as progress:
        for start in range(0, n, batch_size):
            index = torch.arange(start, min(start + batch_size, n), device=ctx.device)
            x = ctx.datamodule.images(split, index, ctx.device)
            x_hat = ctx.model.reconstruct(x, index if split == "train" else None)
            squared += (x_hat.float() - x).pow(2).sum(dtype=torch.float64)
            count += x.numel()
            progress.update(len(index))
    return float(squared / count)


class ReconstructionMSE:
    """``recon_mse_train`` and ``recon_mse_test``; periodic runs use ``periodic_n_images``."""

    def __init__(
        self, n_images: int | None = 10000, periodic_n_images: int = 1000, batch_size: int = 500
    ) -> None:
        self.n_images, self.periodic_n_images, self.batch_size = n_images, periodic_n_images, batch_size

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        n = self.n_images if ctx.final else self.periodic_n_images
        out = {}
        for split in ("train", "test"):
            value = reconstruction_mse(ctx, split, n, self.batch_size)
            if value is not None:
                out[f"recon_mse_{split}"] = value
        return out
