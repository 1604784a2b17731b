"""Render a layout's sections into a folder: README.md, results.csv, index.html and the figures.

Per section the runs under its roots are collected and averaged by the leaderboard (:mod:`.runs`); per dataset
come its tables (:mod:`.tables`), its samples figure (:mod:`.figures`) and its learning curves (:mod:`.curves`).
The CSV and the page are the leaderboard's, of all sections' rows together. Every file is written atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genbench.io import atomic_path
from genbench.leaderboard.collect import Problem, display_path
from genbench.leaderboard.csv_export import to_csv
from genbench.leaderboard.render import to_html
from genbench.leaderboard.stats import Board
from genbench.results.curve import model_curves
from genbench.results.curves import curves_figure
from genbench.results.figures import samples_figure
from genbench.results.layout import Layout
from genbench.results.provenance import provenance
from genbench.results.readme import DatasetResult, SectionResult, to_readme
from genbench.results.runs import SectionRuns, data_label, file_stem, flags, load_section
from genbench.results.tables import (
    compare_table,
    labels_of,
    model_stats,
    model_table,
    quality_table,
    sampler_tables,
)

if TYPE_CHECKING:
    from PIL import Image as PILImage

log = logging.getLogger(__name__)

README, CSV, HTML = "README.md", "results.csv", "index.html"
MAX_HTML_BYTES = 3 * 2**20
HTML_IMAGE_SIDES = (256, 128, None)  # tried in turn until the page fits MAX_HTML_BYTES (None: no gallery)


@dataclass
class Written:
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def write_text(path: Path, text: str, written: Written) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    written.files.append(path)


def as_grey(image: PILImage.Image) -> PILImage.Image:
    """An RGB figure whose every pixel is grey, as one channel: a third of the bytes for MNIST's figures (the
    committed results stay small); any colour keeps it RGB."""
    from PIL import ImageChops

    if image.mode != "RGB":
        return image
    r, g, b = image.split()
    if ImageChops.difference(r, g).getbbox() is None and ImageChops.difference(g, b).getbbox() is None:
        return r
    return image


def write_png(path: Path, image: PILImage.Image, written: Written) -> None:
    with atomic_path(path) as tmp:
        as_grey(image).save(tmp, format="PNG", optimize=True)
    written.files.append(path)


def _stems(datasets: list[str]) -> dict[str, str]:
    """A distinct file-name stem per dataset name."""
    stems: dict[str, str] = {}
    for data in datasets:
        stem, i = file_stem(data), 2
        while stem in stems.values():
            stem, i = f"{file_stem(data)}-{i}", i + 1
        stems[data] = stem
    return stems


def _flags(loaded: SectionRuns, data: str) -> list[str]:
    lines = []
    for run in loaded.runs_of(data):
        for name, text in flags(run, loaded.record(run), loaded.warn):
            seed = "no seed" if run.seed is None else f"seed {run.seed}"
            lines.append(f"{run.model} / {seed} ({display_path(run.path)}): {name}: {text}")
    return lines


def render_dataset(loaded: SectionRuns, data: str, stem: str, out: Path, written: Written) -> DatasetResult:
    section, board = loaded.section, loaded.board
    runs = loaded.runs_of(data)
    labels = labels_of(board)
    result = DatasetResult(data, data_label(data, [loaded.record(r) for r in runs]), len(runs))
    result.sampler_tables = sampler_tables(board, data, section.columns)
    models = model_stats(runs, loaded.record)
    result.model_table = model_table(models, labels, section.columns)
    if section.compare is not None:
        result.compare_table = compare_table(section.compare, board, data, models)
    if section.curves:
        curves = model_curves(runs, loaded.record, section.curves, loaded.warn)
        result.quality_table = quality_table(curves, section.curves, labels, loaded.record)
        figure = curves_figure(data, curves, section.curves, labels)
        if figure is not None:
            result.curves_file = f"curves_{section.id}_{stem}.png"
            write_png(out / result.curves_file, figure, written)
        else:
            loaded.warn(
                f"{section.id}/{data}: no curve point of {', '.join(section.curves)}; no curves figure"
            )
    if section.samples_figure:
        figure = samples_figure(data, runs, labels, loaded.warn)
        if figure is not None:
            result.samples_file = f"samples_{section.id}_{stem}.png"
            write_png(out / result.samples_file, figure, written)
    result.flags = _flags(loaded, data)
    return result


def combined_board(boards: list[Board]) -> Board:
    """All sections' rows in one board (a run two sections share counted once), for the CSV and the page."""
    rows, seen = [], set()
    for board in boards:
        for row in board.rows:
            key = (row.data, row.model, row.sampler, row.source, row.runs)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    metrics = list({m.key: m for board in boards for m in board.metrics}.values())
    return Board(
        rows=sorted(rows, key=lambda r: (r.data, r.model, r.sampler, r.published, r.source)),
        metrics=metrics,
        problems=unique_problems(p for board in boards for p in board.problems),
        warnings=list(dict.fromkeys(w for board in boards for w in board.warnings)),
    )


def unique_problems(problems) -> list[Problem]:
    return list({p.path: p for p in problems}.values())


def page(board: Board, title: str, warn) -> str:
    """The leaderboard's page, its sample grids shrunk (or left out) until it fits MAX_HTML_BYTES."""
    for side in HTML_IMAGE_SIDES:
        html = to_html(board, title=title, image_side=side)
        if len(html.encode("utf-8")) <= MAX_HTML_BYTES:
            break
    if side != HTML_IMAGE_SIDES[0]:
        shown = f"at most {side} px a side" if side is not None else "left out"
        warn(f"{HTML}: sample grids {shown} to keep the page under {MAX_HTML_BYTES // 2**20} MiB")
    return html


def render(layout: Layout, out: Path) -> list[Path]:
    """Write the results of ``layout`` into ``out``; return the files written. Roots must exist
    (:func:`~genbench.results.layout.check_roots`)."""
    written = Written()
    loaded_sections = [load_section(section) for section in layout.sections]
    results = []
    for loaded in loaded_sections:
        stems = _stems(loaded.datasets)
        datasets = [render_dataset(loaded, data, stems[data], out, written) for data in loaded.datasets]
        results.append(SectionResult(loaded.section, datasets, len(loaded.problems)))
    board = combined_board([loaded.board for loaded in loaded_sections])

    def warn(message: str) -> None:
        log.warning(message)
        written.warnings.append(message)

    write_text(out / CSV, to_csv(board), written)
    write_text(out / HTML, page(board, layout.title, warn), written)
    runs = {run.path: loaded.record(run) for loaded in loaded_sections for run in loaded.runs}
    warnings = list(
        dict.fromkeys([*board.warnings, *(w for s in loaded_sections for w in s.warnings), *written.warnings])
    )
    readme = to_readme(
        layout, results, provenance(list(runs.values())), len(runs), board.problems, warnings, (CSV, HTML)
    )
    write_text(out / README, readme, written)
    remove_stale_figures(out, written.files)
    return written.files


def remove_stale_figures(out: Path, kept: list[Path]) -> None:
    """Delete the figures of an earlier render that this one did not write (a dataset or section gone), so that
    the folder holds only what the runs show now."""
    for pattern in ("samples_*.png", "curves_*.png"):
        for path in out.glob(pattern):
            if path not in kept and path.is_file() and not path.is_symlink():
                log.info("removing %s: not part of these results", path)
                path.unlink()
