"""``interpolations.png``: decoded paths between the codes of pairs of test images.

Paths are straight lines in the latent space, or great-circle arcs (slerp) for models whose codes live on the unit
sphere. A model says which through the optional attribute ``latent_geometry`` ("euclidean", the default, or
"sphere"); evaluators never look at the concrete class.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from genbench.evaluators.base import EvalContext
from genbench.evaluators.pictures import MIN_CELL, save_grid
from genbench.evaluators.sampling import held_out_split
from genbench.interface import EncoderUnavailable, GenerativeModel

log = logging.getLogger(__name__)

GEOMETRIES = ("euclidean", "sphere")


def latent_geometry(model: GenerativeModel) -> str:
    """Where the model's codes live: ``model.latent_geometry`` when set, else "euclidean"."""
    geometry = getattr(model, "latent_geometry", "euclidean")
    if geometry not in GEOMETRIES:
        raise ValueError(f"latent_geometry must be one of {GEOMETRIES}, got {geometry!r}")
    return geometry


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Points (N, T, D) on the segments from codes a (N, D) to b (N, D) at fractions t (T,)."""
    t = t.to(a).view(1, -1, 1)
    return a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t


def slerp(a: Tensor, b: Tensor, t: Tensor, eps: float = 1e-6) -> Tensor:
    """Points (N, T, D) on the great-circle arcs from a (N, D) to b (N, D) at fractions t (T,).

    Endpoints are returned exactly (t=0 gives a, t=1 gives b); unit-norm inputs give unit-norm points. Nearly
    parallel or antipodal pairs (the arc is undefined or degenerate) fall back to the straight line.
    """
    t = t.to(a).view(1, -1, 1)  # (1, T, 1)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1).clamp(-1, 1)  # (N,)
    omega = cos.acos().view(-1, 1, 1)  # (N, 1, 1)
    sin = omega.sin()
    degenerate = sin.abs() < eps
    safe = torch.where(degenerate, torch.ones_like(sin), sin)
    wa = torch.where(degenerate, 1 - t, ((1 - t) * omega).sin() / safe)  # (N, T, 1)
    wb = torch.where(degenerate, t, (t * omega).sin() / safe)
    return wa * a.unsqueeze(1) + wb * b.unsqueeze(1)


def interpolate(a: Tensor, b: Tensor, steps: int, geometry: str = "euclidean") -> Tensor:
    """``steps`` evenly spaced points (N, steps, D) from a (N, D) to b (N, D), endpoints included."""
    t = torch.linspace(0, 1, steps, device=a.device)
    return slerp(a, b, t) if geometry == "sphere" else lerp(a, b, t)


class Interpolations:
    """``interpolations.png``: ``rows`` rows, each ``steps`` decodings from one test image's code to another's.

    Row r goes from test image r to test image r + rows. With ``with_originals`` the two images themselves
    frame the row (``steps`` + 2 columns), which also shows how well the endpoints are reconstructed. Columns are
    labelled with their fraction t of the path ("from" / "to" over the originals); the caption names the path
    (lerp or slerp).
    """

    def __init__(
        self, rows: int = 8, steps: int = 10, with_originals: bool = True, min_cell: int = MIN_CELL
    ) -> None:
        if rows < 1 or steps < 2:
            raise ValueError(f"need rows >= 1 and steps >= 2, got rows={rows}, steps={steps}")
        self.rows, self.steps, self.with_originals, self.min_cell = rows, steps, with_originals, min_cell

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        split = held_out_split(ctx.datamodule)
        rows = min(self.rows, len(ctx.datamodule.split(split)) // 2)
        if rows == 0:
            return {}
        x = ctx.datamodule.images(
            split, torch.arange(2 * rows, device=ctx.device), ctx.device
        )  # (2R, C, H, W)
        try:
            z = ctx.model.encode(x)  # (2R, D); models without an encoder optimise here (under enable_grad)
        except EncoderUnavailable as err:
            log.warning("interpolations.png skipped: %s", err)
            ctx.records.setdefault("skipped", {})["interpolations"] = str(err)
            return {}
        geometry = latent_geometry(ctx.model)
        path = interpolate(z[:rows], z[rows:], self.steps, geometry)  # (R, S, D)
        images = ctx.model.decode(path.flatten(0, 1)).unflatten(0, (rows, self.steps))  # (R, S, C, H, W)
        columns = [f"{t:.2g}" for t in torch.linspace(0, 1, self.steps).tolist()]
        if self.with_originals:
            images = torch.cat([x[:rows, None], images.to(x), x[rows:, None]], dim=1)  # (R, S + 2, C, H, W)
            columns = ["from", *columns, "to"]
        how = "slerp: great-circle arc on the sphere" if geometry == "sphere" else "lerp: straight line"
        ends = (
            f"from the {split} image at the left (from) to the one at the right (to)"
            if self.with_originals
            else f"from one {split} image's code to another's"
        )
        caption = f"interpolations ({how}): each row decodes {self.steps} points, at fractions t, of the latent path {ends}"
        save_grid(
            ctx,
            "interpolations",
            images.flatten(0, 1),
            nrow=images.shape[1],
            caption=caption,
            column_labels=columns,
            min_cell=self.min_cell,
        )
        return {}
