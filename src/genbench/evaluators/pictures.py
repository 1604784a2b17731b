"""Sample and reconstruction grids, written as PNG files in the run directory."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid

from genbench.evaluators.base import EvalContext
from genbench.io import atomic_path


def save_grid(ctx: EvalContext, name: str, images: Tensor, nrow: int) -> Tensor:
    """Tile (N, C, H, W) images in [0, 1] into a grid, write ``<run_dir>/<name>.png`` atomically, return the grid."""
    from PIL import Image

    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    with atomic_path(ctx.run_dir / f"{name}.png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    ctx.pictures[name] = grid
    return grid


class SampleGrid:
    """``samples.png``: an ``rows`` x ``rows`` grid of ``model.sample`` draws (fixed seed: comparable across epochs)."""

    def __init__(self, rows: int = 8) -> None:
        self.rows = rows

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        samples = ctx.model.sample(self.rows * self.rows, generator=ctx.generator(1))
        save_grid(ctx, "samples", samples, nrow=self.rows)
        return {}


class ReconstructionGrid:
    """``reconstructions.png``: test images (odd rows) above their reconstructions (even rows)."""

    def __init__(self, columns: int = 8, pairs_of_rows: int = 4) -> None:
        self.columns, self.pairs = columns, pairs_of_rows

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        split = "test" if len(ctx.datamodule.split("test")) else "train"
        n = min(self.columns * self.pairs, len(ctx.datamodule.split(split)))
        rows = n // self.columns
        if rows == 0:
            return {}
        index = torch.arange(rows * self.columns, device=ctx.device)
        x = ctx.datamodule.images(split, index, ctx.device)
        x_hat = ctx.model.reconstruct(x, index if split == "train" else None)
        c, h, w = x.shape[1:]
        # (rows, 2, columns, C, H, W): each originals row followed by its reconstructions row
        paired = torch.stack(
            [x.view(rows, self.columns, c, h, w), x_hat.view(rows, self.columns, c, h, w)], dim=1
        )
        save_grid(ctx, "reconstructions", paired.reshape(-1, c, h, w), nrow=self.columns)
        return {}
