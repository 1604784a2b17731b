"""Pictures of a 2-D latent space: ``latent_scatter.png`` (test codes coloured by label) and
``latent_manifold.png`` (decodings of a regular grid over the plane), as in the Fashion-MNIST VAE / MMD-VAE
comparisons. Models with another latent size are skipped.

The scatter is drawn with Pillow (already a dependency), not matplotlib. Both pictures share one window: the
codes' [q, 1 - q] quantiles per axis, or [-extent, extent]^2 when ``extent`` is set, so they read side by side
(the manifold's top-left image decodes the scatter's top-left corner).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from genbench.drawing import PALETTE
from genbench.evaluators.base import EvalContext
from genbench.evaluators.pictures import MIN_CELL, save_grid
from genbench.evaluators.sampling import held_out_split
from genbench.interface import EncoderUnavailable

log = logging.getLogger(__name__)

# unlabelled images (label -1) are grey; the labelled ones take the PALETTE's (tab10) colours
UNLABELLED = (160, 160, 160)


def plane_window(codes: Tensor, quantile: float, extent: float | None) -> tuple[Tensor, Tensor]:
    """(lo, hi), each (2,): the per-axis [quantile, 1 - quantile] range of codes (N, 2), or +-extent."""
    if extent is not None:
        return torch.full((2,), -float(extent)), torch.full((2,), float(extent))
    codes = codes.float().cpu()
    lo, hi = codes.quantile(quantile, dim=0), codes.quantile(1 - quantile, dim=0)
    flat = (hi - lo) < 1e-6  # a collapsed axis still gets a window
    return torch.where(flat, lo - 1, lo), torch.where(flat, hi + 1, hi)


def render_scatter(
    codes: Tensor, labels: Tensor, lo: Tensor, hi: Tensor, size: int = 512, radius: int = 2
) -> Tensor:
    """An RGB image (3, size, size) in [0, 1]: codes (N, 2) as dots coloured by labels (N,) inside the window
    [lo, hi] (y up), a frame, the axes through 0 when visible, a colour legend and the window's bounds."""
    from PIL import Image, ImageDraw, ImageFont

    margin = 28
    span = size - 2 * margin
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    lo0, lo1, hi0, hi1 = float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return margin + (x - lo0) / (hi0 - lo0) * span, margin + (hi1 - y) / (hi1 - lo1) * span

    if lo0 < 0 < hi0:
        draw.line([to_pixel(0, lo1), to_pixel(0, hi1)], fill=(210, 210, 210))
    if lo1 < 0 < hi1:
        draw.line([to_pixel(lo0, 0), to_pixel(hi0, 0)], fill=(210, 210, 210))
    points = codes.float().cpu().numpy()
    classes = labels.cpu().numpy()
    inside = np.all((points >= [lo0, lo1]) & (points <= [hi0, hi1]), axis=1)
    order = np.random.default_rng(0).permutation(len(points))  # no class always drawn on top
    for i in order[inside[order]]:
        px, py = to_pixel(*points[i])
        colour = PALETTE[classes[i] % len(PALETTE)] if classes[i] >= 0 else UNLABELLED
        draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
    draw.rectangle([margin, margin, size - margin, size - margin], outline=(90, 90, 90))
    x = margin
    for label in np.unique(classes[classes >= 0]):
        draw.text((x, 8), str(label), fill=PALETTE[label % len(PALETTE)], font=font)
        x += draw.textlength(f"{label} ", font=font)
    bounds = f"x [{lo0:.2f}, {hi0:.2f}]   y [{lo1:.2f}, {hi1:.2f}]"
    outside = int((~inside).sum())
    draw.text(
        (margin, size - margin + 8),
        bounds + (f"   {outside} outside" if outside else ""),
        fill=(0, 0, 0),
        font=font,
    )
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255.0)


def plane_grid(lo: Tensor, hi: Tensor, n: int) -> Tensor:
    """Codes (n * n, 2) of an n x n grid over [lo, hi], row-major from the top-left (x right, y up)."""
    xs = torch.linspace(float(lo[0]), float(hi[0]), n)
    ys = torch.linspace(float(hi[1]), float(lo[1]), n)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y], dim=-1).reshape(-1, 2)


class LatentPlane:
    """``latent_scatter.png`` and ``latent_manifold.png`` for models with ``latent_dim == 2``; nothing otherwise.

    ``n_points`` test images are encoded (batches of ``batch_size``); the manifold decodes a ``grid`` x ``grid``
    lattice over the shared window (see the module docstring for ``quantile`` and ``extent``).
    """

    def __init__(
        self,
        n_points: int = 2000,
        grid: int = 20,
        quantile: float = 0.01,
        extent: float | None = None,
        size: int = 512,
        batch_size: int = 500,
    ) -> None:
        if not 0 <= quantile < 0.5 or grid < 2 or n_points < 1:
            raise ValueError("need 0 <= quantile < 0.5, grid >= 2 and n_points >= 1")
        self.n_points, self.grid, self.quantile, self.extent = n_points, grid, quantile, extent
        self.size, self.batch_size = size, batch_size

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.model.latent_dim != 2:
            log.debug("latent plane pictures skipped: latent_dim=%d", ctx.model.latent_dim)
            return {}
        split = held_out_split(ctx.datamodule)
        n = min(self.n_points, len(ctx.datamodule.split(split)))
        try:
            codes = torch.cat(
                [
                    ctx.model.encode(
                        ctx.datamodule.images(split, torch.arange(s, min(s + self.batch_size, n)), ctx.device)
                    )
                    for s in range(0, n, self.batch_size)
                ]
            )  # (n, 2)
        except EncoderUnavailable as err:
            log.warning("latent_scatter.png skipped: %s", err)
            ctx.records.setdefault("skipped", {})["latent_scatter"] = str(err)
            codes = None
        if codes is not None and n:
            lo, hi = plane_window(codes, self.quantile, self.extent)
            labels = ctx.datamodule.split(split).labels[:n]
            save_grid(
                ctx,
                "latent_scatter",
                render_scatter(codes, labels, lo, hi, self.size)[None],
                nrow=1,
                caption=f"latent codes of {n} {split} images, coloured by label",
            )
        else:  # no codes to place the window on: fall back to the prior's usual +-3
            lo, hi = plane_window(
                torch.zeros(1, 2), self.quantile, self.extent if self.extent is not None else 3.0
            )
        z = plane_grid(lo, hi, self.grid).to(ctx.device)
        decoded = torch.cat([ctx.model.decode(chunk) for chunk in z.split(self.batch_size)])
        window = f"x [{float(lo[0]):.2f}, {float(hi[0]):.2f}], y [{float(lo[1]):.2f}, {float(hi[1]):.2f}]"
        save_grid(
            ctx,
            "latent_manifold",
            decoded,
            nrow=self.grid,
            caption=f"latent manifold: decodings of a {self.grid} x {self.grid} grid over {window}, y up",
            min_cell=MIN_CELL,
        )
        return {}
