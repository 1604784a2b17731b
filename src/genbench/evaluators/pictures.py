"""Sample and reconstruction grids, written as PNG files in the run directory, and the drawing helpers every
picture evaluator shares.

A grid is ``make_grid`` of the images, optionally made readable (``save_grid``'s keywords): each image upscaled with
nearest-neighbour so a cell is at least ``min_cell`` pixels (digits 16 px x3, MNIST 28 px x2, 64 px images as they
are), a 2 px white separator, labels at the left of each row and/or above each column, and a caption strip on top
saying what the picture shows. Text is drawn with Pillow's default font (:mod:`genbench.drawing`); no matplotlib.

What the loggers get: ``ctx.pictures[name]`` holds exactly the picture written to ``<name>.png`` (captioned and
upscaled; RGB, (3, H, W) in [0, 1]), so W&B and TensorBoard show the same labelled picture as the run directory.
Without the keywords ``save_grid`` writes the plain ``make_grid`` picture, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid

from genbench.drawing import BACKGROUND, LABEL_SIZE, TEXT, font, line_height, with_caption
from genbench.evaluators.base import EvalContext
from genbench.evaluators.sampling import draw_samples, held_out_split
from genbench.io import atomic_path

if TYPE_CHECKING:
    from PIL import Image as PILImage

MIN_CELL = 48  # pixels: the smallest side of a grid cell after upscaling
SEPARATOR = 2  # pixels of white between cells


def upscale_factor(height: int, width: int, min_cell: int) -> int:
    """The integer nearest-neighbour factor that makes the smaller side of an image at least ``min_cell``."""
    return max(1, math.ceil(min_cell / max(1, min(height, width))))


def to_pil(picture: Tensor) -> PILImage.Image:
    """A (C, H, W) tensor in [0, 1] (C = 1 or 3) as an RGB Pillow image."""
    from PIL import Image

    array = picture.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    array = array.expand(3, -1, -1) if array.shape[0] == 1 else array
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


def to_tensor(image: PILImage.Image) -> Tensor:
    """An RGB Pillow image as a (3, H, W) tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float().div(255.0)


def render_grid(
    images: Tensor,
    nrow: int,
    caption: str | None = None,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    min_cell: int = 0,
    padding: int = SEPARATOR,
) -> Tensor:
    """(N, C, H, W) images in [0, 1] tiled ``nrow`` per row into a (3, H', W') picture in [0, 1].

    Images are upscaled (nearest) to cells of at least ``min_cell`` pixels; ``row_labels[r]`` is written at the
    left of row r, ``column_labels[c]`` above column c (cycled when shorter), ``caption`` on a strip on top. With
    none of these it is torchvision's ``make_grid`` (``padding`` px of white), unchanged.
    """
    from PIL import Image, ImageDraw

    images = images.detach().float().clamp(0, 1).cpu()
    scale = upscale_factor(images.shape[2], images.shape[3], min_cell) if min_cell else 1
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)  # (3, H', W')
    if not (caption or row_labels or column_labels):
        return grid
    cell_h, cell_w = images.shape[2] + padding, images.shape[3] + padding
    rows, columns = grid.shape[1] // cell_h, min(nrow, len(images))
    label_font = font(LABEL_SIZE)
    left = int(max(label_font.getlength(str(label)) for label in row_labels)) + 10 if row_labels else 0
    top = line_height(label_font) + 4 if column_labels else 0
    body = Image.new("RGB", (left + grid.shape[2], top + grid.shape[1]), BACKGROUND)
    body.paste(to_pil(grid), (left, top))
    draw = ImageDraw.Draw(body)
    if row_labels:
        for r in range(rows):
            label = str(row_labels[r % len(row_labels)])
            y = top + padding + r * cell_h + (cell_h - padding) / 2
            draw.text((left - 5, y), label, fill=TEXT, font=label_font, anchor="rm")
    if column_labels:
        for c in range(columns):
            label = str(column_labels[c % len(column_labels)])
            x = left + padding + c * cell_w + (cell_w - padding) / 2
            draw.text((x, top - 3), label, fill=TEXT, font=label_font, anchor="md")
    return to_tensor(with_caption(body, caption))


def save_picture(ctx: EvalContext, name: str, picture: Tensor, grey: bool = False) -> Tensor:
    """Write a (C, H, W) picture in [0, 1] to ``<run_dir>/<name>.png`` atomically (8-bit grey when ``grey``) and
    hand it to the loggers through ``ctx.pictures[name]``; return it."""
    image = to_pil(picture)
    if grey:
        image = image.convert("L")
    with atomic_path(ctx.run_dir / f"{name}.png") as tmp:
        image.save(tmp, format="PNG")
    ctx.pictures[name] = picture
    return picture


def save_grid(
    ctx: EvalContext,
    name: str,
    images: Tensor,
    nrow: int,
    *,
    caption: str | None = None,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    min_cell: int = 0,
) -> Tensor:
    """Tile (N, C, H, W) images in [0, 1] into a grid (see ``render_grid`` for the keywords), write
    ``<run_dir>/<name>.png`` atomically, put the picture in ``ctx.pictures[name]`` and return it."""
    picture = render_grid(images, nrow, caption, row_labels, column_labels, min_cell)
    return save_picture(ctx, name, picture, grey=images.shape[1] == 1)


class SampleGrid:
    """``samples.png``: an ``rows`` x ``rows`` grid of ``model.sample`` draws (fixed seed: comparable across epochs),
    captioned with the sampler's name; ``samples_<sampler>.png`` for a sampler fitted after training."""

    uses_samples = True  # runs once more per extra sampler (eval.samplers)

    def __init__(self, rows: int = 8, min_cell: int = MIN_CELL) -> None:
        self.rows, self.min_cell = rows, min_cell

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        n = self.rows * self.rows
        samples = draw_samples(ctx, n, batch_size=n, offset=1)
        how = "the model's own" if ctx.own_sampler else "fitted to the training codes after training"
        caption = f"samples ({ctx.sampler_name} sampler, {how}), {n} draws"
        name = "samples" if ctx.own_sampler else f"samples_{ctx.sampler_name}"
        save_grid(ctx, name, samples, nrow=self.rows, caption=caption, min_cell=self.min_cell)
        return {}


class ReconstructionGrid:
    """``reconstructions.png``: rows of test images (labelled "test"), each above its reconstructions ("recon.")."""

    def __init__(self, columns: int = 8, pairs_of_rows: int = 4, min_cell: int = MIN_CELL) -> None:
        self.columns, self.pairs, self.min_cell = columns, pairs_of_rows, min_cell

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        split = held_out_split(ctx.datamodule)
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
            [x.view(rows, self.columns, c, h, w), x_hat.view(rows, self.columns, c, h, w).to(x)], dim=1
        )
        save_grid(
            ctx,
            "reconstructions",
            paired.reshape(-1, c, h, w),
            nrow=self.columns,
            caption=f"reconstructions: rows alternate {split} images and, below each, their reconstructions",
            row_labels=(split, "recon."),
            min_cell=self.min_cell,
        )
        return {}
