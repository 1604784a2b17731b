"""The board as one self-contained HTML page: sortable tables, each table's protocol once, and a gallery of samples.

Each dataset is one or more tables, one per evaluation protocol (:meth:`Board.tables`); a table shows its protocol
once, above it, in a collapsed ``<details>``. Published rows sit beside the measured rows of the same model, with a
marker ([P1]...) for their own protocol, spelt out under the table. Under each table a gallery shows every
measured row's sample grid side by side, :data:`GALLERY_WIDTH_PX` wide (the grid of the row's lowest-FID run,
captioned with model, sampler and seed); click one to enlarge it.

The look and the behaviour live in ``static/leaderboard.css`` and ``static/leaderboard.js`` (package data),
inlined here with the images (:mod:`.images`) so the page is one file that works offline. Nothing else is
referenced. Every string comes from files the board does not trust and is HTML-escaped (text and attributes),
with control characters and bidi overrides replaced.

There is no plot: a FID-against-training-time scatter used to be drawn here as hand-made SVG (130 lines of axes,
ticks and float-limit cases). Both numbers are columns of the table, which sorts by either; matplotlib is not a
dependency, and the pictures a reader wants at a glance are the samples.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from genbench.leaderboard.collect import clean_text, display_path
from genbench.leaderboard.images import MAX_SIDE_PX, InlineImage, inline_png
from genbench.leaderboard.stats import Board, BoardRow, Table
from genbench.leaderboard.text import (
    APART_TITLE,
    INTRO,
    apart_lines,
    format_number,
    format_stat,
    published_protocols,
    shown_metrics,
    source_text,
    table_caption,
    table_notes,
    table_title,
)

# An 8x8 grid of 28 px digits shows each at 30 px: readable without a click; five grids side by side at 1440 px.
GALLERY_WIDTH_PX = 240


def static_text(name: str) -> str:
    """A file of ``static/`` (package data), checked to be safe to inline in a ``<style>`` or ``<script>``."""
    text = resources.files("genbench.leaderboard").joinpath("static", name).read_text(encoding="utf-8")
    if "</" in text:  # would end the element early
        raise RuntimeError(f"static/{name} holds '</' and cannot be inlined")
    return text


def e(value: object) -> str:
    return html.escape(clean_text(str(value)), quote=True)


def _th(key: str, label: str, higher_is_better: bool = False) -> str:
    first = ' data-first="descending"' if higher_is_better else ""
    return f'<th data-key="{e(key)}"{first} title="sort by {e(label)}">{e(label)}</th>'


def _num_td(value: float | None, text: str) -> str:
    v = "" if value is None or not math.isfinite(value) else repr(float(value))
    return f'<td class="num" data-v="{e(v)}">{e(text)}</td>'


def _protocol(table: Table) -> str:
    summary, details = table_caption(table)
    items = "".join(
        f"<li><b>{e(metrics)}</b>: {e(fields or 'only the fields above')}</li>" for metrics, fields in details
    )
    return (
        f'<details class="protocol"><summary>Protocol: {e(summary)}</summary>'
        + (f"<ul>{items}</ul>" if items else "")
        + "</details>"
    )


def _table(board: Board, table: Table) -> str:
    rows = table.rows
    metrics = shown_metrics(board, rows)
    markers = published_protocols(rows)
    head = [_th("model", "model"), _th("sampler", "sampler"), _th("source", "source"), _th("n", "n", True)]
    head += [_th(m.key, m.label, m.higher_is_better) for m in metrics]
    body = []
    for row in rows:
        source = e(source_text(row))
        if row.published:
            source += f' <sup class="protocol-ref" title="{e(row.protocol)}">[{markers[row.protocol]}]</sup>'
        cells = [
            f"<td>{e(row.model)}</td>",
            f"<td>{e(row.sampler)}</td>",
            f'<td class="source" title="{e(source_text(row))}">{source}</td>',
        ]
        cells.append(_num_td(row.n, "" if row.n is None else str(row.n)))
        for m in metrics:
            stat = row.stats.get(m.key)
            cells.append(_num_td(None if stat is None else stat.mean, format_stat(stat, row.n)))
        title = " ".join(row.notes)
        attrs = ' class="published"' if row.published else ' class="measured"'
        attrs += f' title="{e(title)}"' if title else ""
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    parts = [
        f'<div class="scroll"><table class="sortable board" id="{e(table.id)}" data-dataset="{e(table.data)}">\n'
        f"<thead><tr>{''.join(head)}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table></div>"
    ]
    if markers:
        legend = "; ".join(f"<b>[{marker}]</b> {e(text)}" for text, marker in markers.items())
        parts.append(f'<p class="published-protocols">Published rows, their protocols: {legend}</p>')
    return "\n".join(parts)


def _figure(row: BoardRow, image: InlineImage, labels: dict[str, str]) -> str:
    """One sample grid, GALLERY_WIDTH_PX wide (a smaller grid is enlarged without blurring), captioned with model,
    sampler, the seed it comes from, that run's FID and how it was chosen among the row's runs."""
    samples = row.samples
    assert samples is not None
    height = max(1, round(GALLERY_WIDTH_PX * image.height / image.width))
    upscaled = ' class="pixelated"' if image.width < GALLERY_WIDTH_PX else ""
    seed = "seed not recorded" if samples.seed is None else f"seed {samples.seed}"
    if samples.fid_key is not None and samples.fid is not None:
        seed += f", {labels.get(samples.fid_key, samples.fid_key)} {format_number(samples.fid)}"
    name = f"{row.model}, {row.sampler} sampler, {seed}"
    return (
        f'<figure class="samples" data-run="{e(display_path(samples.run))}">'
        f'<img{upscaled} src="{e(image.uri)}" width="{GALLERY_WIDTH_PX}" height="{height}" '
        f'alt="samples of {e(name)}" title="{e(name)}: click to enlarge">'
        f"<figcaption><b>{e(row.model)}</b> · {e(row.sampler or 'no sampler')}<br>{e(seed)}<br>"
        f'<span class="how">{e(samples.chosen)}</span></figcaption></figure>'
    )


def _gallery(board: Board, rows: Sequence[BoardRow], images: dict[Path, InlineImage | None]) -> str:
    labels = {m.key: m.label for m in board.metrics}
    figures = [
        _figure(row, image, labels)
        for row in rows
        if row.samples is not None and (image := images.get(row.samples.path)) is not None
    ]
    if not figures:
        return ""
    return (
        "<h4>Samples: each row's grid, from its lowest-FID run</h4>\n"
        '<div class="gallery">\n' + "\n".join(figures) + "\n</div>"
    )


def _problems(board: Board) -> str:
    rows = "\n".join(
        f'<tr><td>{e(display_path(p.path))}</td><td>{e(p.status)}</td><td class="error">{e(p.error)}</td></tr>'
        for p in board.problems
    )
    return (
        '<section id="problems">\n<h2>Failed or unfinished runs (not averaged)</h2>\n'
        '<table class="sortable problems" id="problems-table"><thead><tr>'
        + _th("path", "path")
        + _th("status", "status")
        + _th("error", "error")
        + f"</tr></thead>\n<tbody>\n{rows}\n</tbody></table>\n</section>"
    )


def to_html(board: Board, title: str = "genbench leaderboard", image_side: int | None = MAX_SIDE_PX) -> str:
    """The page; its sample grids at most ``image_side`` pixels a side (None: no gallery), so that a board of
    many rows stays a page of a few MiB."""
    image_problems: list[str] = []
    images = {
        row.samples.path: inline_png(row.samples.path, image_side, problems=image_problems)
        for row in board.rows
        if row.samples is not None and image_side is not None
    }
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>\n{static_text('leaderboard.css')}</style>\n</head>\n<body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="intro">{e(INTRO)} Click a column header to sort, a sample grid to enlarge it.</p>',
    ]
    if not board.rows:
        parts.append("<p>No finished runs found.</p>")
    for data in board.datasets:
        parts.append(f'<section class="dataset" id="data-{e(data)}">\n<h2>{e(data)}</h2>')
        for table in board.tables(data):
            parts.append(f'<div class="protocol-table" id="{e(table.id)}-block">')
            if table.count > 1:
                parts.append(f"<h3>{e(table_title(table))}</h3>")
            parts += [_protocol(table), _table(board, table)]
            notes = table_notes(table.rows)
            if notes:
                parts.append(
                    '<p class="notes-title">Skipped or dropped values:</p><ul class="notes">'
                    + "".join(f"<li>{e(n)}</li>" for n in notes)
                    + "</ul>"
                )
            parts += [_gallery(board, table.rows, images), "</div>"]
        apart = apart_lines(board, board.apart(data))
        if apart:
            parts.append(
                f'<div class="published-apart"><p class="notes-title">{e(APART_TITLE)}:</p><ul class="notes">'
                + "".join(f"<li>{e(line)}</li>" for line in apart)
                + "</ul></div>"
            )
        parts.append("</section>")
    if board.problems:
        parts.append(_problems(board))
    warnings = [*board.warnings, *image_problems]
    if warnings:
        parts.append('<section id="warnings">\n<h2>Warnings</h2>\n<ul>')
        parts += [f"<li>{e(w)}</li>" for w in warnings]
        parts.append("</ul>\n</section>")
    parts.append(f"<script>\n{static_text('leaderboard.js')}</script>\n</body>\n</html>\n")
    return "\n".join(p for p in parts if p)
