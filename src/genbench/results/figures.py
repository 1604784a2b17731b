"""``samples_<section>_<data>.png``: the samples of every (model, sampler) of a dataset side by side.

One cell per (model, sampler), models in rows and samplers in columns, each the samples picture of that pair's
lowest-seed run (``samples.png`` when the sampler is the run's own, else ``samples_<sampler>.png``: the board's
:func:`~genbench.leaderboard.stats.sample_names`), read as the leaderboard reads pictures (a regular file inside
its run directory, a bounded PNG: :func:`~genbench.leaderboard.images.open_png`) and scaled to
:data:`CELL_PX` wide; "model / sampler" above it, that run's FID and seed under it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genbench.drawing import BACKGROUND, TEXT, font, line_height, with_caption
from genbench.leaderboard.collect import (
    Run,
    RunRow,
    UnsafeFile,
    clean_text,
    clip,
    contained_file,
    display_path,
    run_rows,
)
from genbench.leaderboard.images import open_png
from genbench.leaderboard.stats import ranking_fid, sample_names
from genbench.leaderboard.text import format_number
from genbench.results.runs import seed_order

if TYPE_CHECKING:
    from PIL import Image as PILImage

CELL_PX = 240  # an 8x8 grid of 28 px digits at 30 px each: readable without zooming
GAP_PX = 12
MAX_SOURCE_SIDE = 1024  # decoded at most this big, then scaled to the cell
MISSING = (236, 236, 236)
FAINT = (110, 110, 110)


@dataclass(frozen=True)
class Cell:
    row: RunRow  # of the pair's lowest-seed run
    picture: Path | None

    @property
    def model(self) -> str:
        return self.row.run.model


RECONSTRUCTION = "reconstruction"  # the pseudo-sampler of the decoder's reconstructions (genbench.evaluators)


def pictures_of(row: RunRow) -> tuple[str, ...]:
    """The pictures that show a row's images: the sampler's grids, or for the reconstructions pseudo-sampler the
    run's ``reconstructions.png`` (originals and their reconstructions, captioned in the picture)."""
    if row.sampler == RECONSTRUCTION:
        return ("reconstructions.png",)
    return sample_names(row, row.sampler)


def sample_cells(runs: list[Run], warn: Callable[[str], None]) -> list[Cell]:
    """One cell per (model, sampler) of ``runs``' own evaluations, sorted, from the lowest-seed run."""
    pairs: dict[tuple[str, str], list[RunRow]] = {}
    for run in runs:
        for row in run_rows(run):
            if not row.reevaluated:
                pairs.setdefault((run.model, row.sampler), []).append(row)
    cells = []
    for _, rows in sorted(pairs.items()):
        row = min(rows, key=lambda r: seed_order(r.run))
        picture = None
        for name in pictures_of(row):
            try:
                picture = contained_file(row.run.path, name)
            except UnsafeFile as err:
                warn(f"{display_path(row.run.path)}: samples not shown: {err}")
                continue
            if picture is not None:
                break
        cells.append(Cell(row, picture))
    return cells


def fit_text(text: str, width: int, text_font) -> str:
    """``text`` cut with "…" to at most ``width`` pixels."""
    text = clean_text(text)
    if text_font.getlength(text) <= width:
        return text
    while text and text_font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def thumbnail(cell: Cell, warn: Callable[[str], None]) -> PILImage.Image:
    """The cell's picture ``CELL_PX`` wide (nearest-neighbour when enlarged: pixels stay sharp), or a grey box."""
    from PIL import Image, ImageDraw

    if cell.picture is not None:
        try:
            image = open_png(cell.picture, MAX_SOURCE_SIDE).convert("RGB")
            scale = CELL_PX / image.width
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
            return image.resize((CELL_PX, max(1, round(image.height * scale))), resample)
        except Exception as err:  # Pillow raises many types on a hostile file; none may stop the figure
            warn(f"{display_path(cell.picture)}: samples not shown: {clip(str(err), 300)}")
    box = Image.new("RGB", (CELL_PX, CELL_PX // 2), MISSING)
    ImageDraw.Draw(box).text(
        (CELL_PX / 2, CELL_PX / 4), "no samples picture", fill=FAINT, font=font(), anchor="mm"
    )
    return box


def _under(cell: Cell, labels: dict[str, str]) -> str:
    key, fid = ranking_fid(cell.row)
    seed = "no seed" if cell.row.run.seed is None else f"seed {cell.row.run.seed}"
    if key is None:
        return f"no FID · {seed}"
    value = cell.row.values.get(key)
    return f"{labels.get(key, key)} {format_number(fid if value is None else value)} · {seed}"


def samples_figure(
    data: str, runs: list[Run], labels: dict[str, str], warn: Callable[[str], None]
) -> PILImage.Image | None:
    """The figure of ``runs`` (one dataset's), None when they have no (model, sampler) pair."""
    from PIL import Image, ImageDraw

    cells = sample_cells(runs, warn)
    if not cells:
        return None
    models = sorted({c.model for c in cells})
    samplers = sorted({c.row.sampler for c in cells})
    thumbs = {(c.model, c.row.sampler): (c, thumbnail(c, warn)) for c in cells}
    label_font = font(12)
    text_h = line_height(label_font) + 4
    heights = [max(t.height for (m, _), (_, t) in thumbs.items() if m == model) for model in models]
    width = GAP_PX + len(samplers) * (CELL_PX + GAP_PX)
    height = GAP_PX + sum(2 * text_h + h + GAP_PX for h in heights)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = GAP_PX
    for model, row_height in zip(models, heights, strict=True):
        for j, sampler in enumerate(samplers):
            if (model, sampler) not in thumbs:
                continue
            cell, thumb = thumbs[(model, sampler)]
            x = GAP_PX + j * (CELL_PX + GAP_PX)
            above = fit_text(f"{model} / {sampler or 'no sampler'}", CELL_PX, label_font)
            draw.text((x + CELL_PX / 2, y + text_h - 3), above, fill=TEXT, font=label_font, anchor="md")
            canvas.paste(thumb, (x, y + text_h))
            below = fit_text(_under(cell, labels), CELL_PX, label_font)
            draw.text(
                (x + CELL_PX / 2, y + text_h + thumb.height + 3),
                below,
                fill=FAINT,
                font=label_font,
                anchor="ma",
            )
        y += 2 * text_h + row_height + GAP_PX
    caption = (
        f"{clean_text(data)}: samples of each model (rows) with each sampler (columns), from the pair's "
        "lowest-seed run; under each, that run's FID and seed"
    )
    return with_caption(canvas, caption)
