"""Render a :class:`Board` as Markdown, CSV and one self-contained HTML page (inline CSS, JS, SVG and images)."""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from genbench.leaderboard.collect import Problem
from genbench.leaderboard.stats import Board, BoardRow, Metric, Stat

log = logging.getLogger(__name__)

INTRO = (
    "Mean ± sample standard deviation over seeds; n = runs averaged; (k/n) = the metric exists in k of them; "
    "blank = not measured. Published rows are copied from papers with their protocol; "
    "'unverified' means recalled, not yet re-read from the paper."
)
THUMBNAIL_PX = 256


# ---------------------------------------------------------------------------------------------------- text helpers
def format_number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.0f}" if abs(x) >= 1e4 else f"{x:.4g}"


def format_stat(stat: Stat | None, n: int | None) -> str:
    if stat is None:
        return ""
    text = format_number(stat.mean)
    if stat.std is not None:
        text += f" ± {format_number(stat.std)}"
    if n is not None and stat.count is not None and stat.count < n:
        text += f" ({stat.count}/{n})"
    return text


def source_text(row: BoardRow) -> str:
    if not row.published:
        return row.source
    return f"published: {row.source}" + ("" if row.verified else " (unverified)")


def display_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def shown_metrics(board: Board, rows: Sequence[BoardRow]) -> list[Metric]:
    """The board's metrics that at least one of ``rows`` has: empty columns are left out of a table."""
    return [m for m in board.metrics if any(m.key in row.stats for row in rows)]


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
    return lines


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------- Markdown
def to_markdown(board: Board) -> str:
    lines = ["# genbench leaderboard", "", INTRO, ""]
    if not board.rows:
        lines += ["No finished runs found.", ""]
    for data in board.datasets:
        rows = board.table(data)
        metrics = shown_metrics(board, rows)
        header = ["model", "sampler", "source", "n", *(m.label for m in metrics), "protocol"]
        body = [
            [
                row.model,
                row.sampler,
                source_text(row),
                "" if row.n is None else str(row.n),
                *(format_stat(row.stats.get(m.key), row.n) for m in metrics),
                row.protocol,
            ]
            for row in rows
        ]
        lines += [f"## {data}", "", *_md_table(header, body), ""]
        notes = [f"- {row.model}/{row.sampler}: {note}" for row in rows for note in row.notes]
        if notes:
            lines += ["Skipped metrics:", "", *(_md_cell(n) for n in notes), ""]
    lines += _md_problems(board.problems)
    if board.warnings:
        lines += ["## Warnings", "", *(f"- {_md_cell(w)}" for w in board.warnings), ""]
    return "\n".join(lines)


def _md_problems(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        return []
    body = [[display_path(p.path), p.status, _short(p.error)] for p in problems]
    return [
        "## Failed or unfinished runs (not averaged)",
        "",
        *_md_table(["path", "status", "error"], body),
        "",
    ]


# ---------------------------------------------------------------------------------------------------- CSV
def to_csv(board: Board) -> str:
    """One line per board row, every metric as mean, std and count columns (blank when missing)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["data", "model", "sampler", "source", "verified", "n"]
    for m in board.metrics:
        header += [f"{m.key}_mean", f"{m.key}_std", f"{m.key}_count"]
    writer.writerow([*header, "protocol", "git_commits", "runs"])

    def blank(value: object) -> object:
        return "" if value is None else value

    for row in board.rows:
        cells: list[object] = [
            row.data,
            row.model,
            row.sampler,
            row.source,
            blank(row.verified),
            blank(row.n),
        ]
        for m in board.metrics:
            stat = row.stats.get(m.key)
            cells += ["", "", ""] if stat is None else [stat.mean, blank(stat.std), blank(stat.count)]
        cells += [row.protocol, ";".join(row.git_commits), ";".join(display_path(p) for p in row.runs)]
        writer.writerow(cells)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------- HTML
def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def thumbnail_data_uri(path: Path, max_px: int = THUMBNAIL_PX) -> str | None:
    """A PNG data URI of ``path`` shrunk to at most ``max_px`` a side, or None when it cannot be read."""
    try:
        from PIL import Image  # lazy: only the HTML page needs Pillow

        with Image.open(path) as image:
            image.thumbnail((max_px, max_px))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except (OSError, ValueError) as err:  # PIL raises OSError subclasses for unreadable images
        log.warning("cannot embed samples %s: %s", path, err)
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _padded(lo: float, hi: float) -> tuple[float, float]:
    pad = (hi - lo) * 0.08 or (abs(lo) * 0.1 or 1.0)
    return lo - pad, hi + pad


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def fid_time_svg(rows: Sequence[BoardRow], metrics: Sequence[Metric]) -> str:
    """An SVG scatter of FID against training time for the measured rows, one labelled point per row."""
    measured = [r for r in rows if not r.published]
    fid_key = next(
        (k for k in ("fid_inception", "fid_classifier") if any(k in r.stats for r in measured)), None
    )
    if fid_key is None:
        return '<p class="noplot">No FID measured: nothing to plot.</p>'
    points = [
        (r, r.stats["train_seconds"].mean, r.stats[fid_key])
        for r in measured
        if fid_key in r.stats and "train_seconds" in r.stats
    ]
    points = [(r, x, s) for r, x, s in points if math.isfinite(x) and x > 0 and math.isfinite(s.mean)]
    if not points:
        return '<p class="noplot">No row has both an FID and a training time: nothing to plot.</p>'
    width, height, left, right, top, bottom = 640, 340, 64, 150, 28, 46
    xs = [x for _, x, _ in points]
    log_x = max(xs) / min(xs) >= 10
    if log_x:
        x_lo, x_hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
        x_hi = max(x_hi, x_lo + 1)
        x_ticks = [10.0**k for k in range(x_lo, x_hi + 1)]
        x_of = lambda v: (math.log10(v) - x_lo) / (x_hi - x_lo)  # noqa: E731
    else:
        x_lo, x_hi = _padded(min(xs), max(xs))
        x_ticks = [t for t in _nice_ticks(x_lo, x_hi) if t > 0]
        x_of = lambda v: (v - x_lo) / (x_hi - x_lo)  # noqa: E731
    ys = [
        s.mean + sign * (s.std if s.std is not None and math.isfinite(s.std) else 0)
        for _, _, s in points
        for sign in (-1, 1)
    ]
    y_lo, y_hi = _padded(min(ys), max(ys))
    y_of = lambda v: (v - y_lo) / (y_hi - y_lo)  # noqa: E731
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return round(left + x_of(v) * plot_w, 1)

    def py(v: float) -> float:
        return round(top + (1 - y_of(v)) * plot_h, 1)

    label = next((m.label for m in metrics if m.key == fid_key), fid_key)
    parts = [
        f'<svg class="plot" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f"<title>{e(label)} against training time</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for t in x_ticks:
        parts.append(f'<line x1="{px(t)}" x2="{px(t)}" y1="{top}" y2="{top + plot_h}" stroke="#eee"/>')
        parts.append(
            f'<text x="{px(t)}" y="{top + plot_h + 16}" text-anchor="middle">{e(format_number(t))}</text>'
        )
    for t in _nice_ticks(y_lo, y_hi):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(t)}" y2="{py(t)}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{py(t) + 4}" text-anchor="end">{e(format_number(t))}</text>')
    x_name = "training time (s, log scale)" if log_x else "training time (s)"
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{e(x_name)}</text>')
    parts.append(
        f'<text transform="translate(16 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">{e(label)}</text>'
    )
    models = sorted({r.model for r, _, _ in points})
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    for row, x, stat in points:
        name = f"{row.model}/{row.sampler}" if row.sampler else row.model
        c = colour[row.model]
        if stat.std is not None and math.isfinite(stat.std) and stat.std > 0:
            parts.append(
                f'<line x1="{px(x)}" x2="{px(x)}" y1="{py(stat.mean - stat.std)}" y2="{py(stat.mean + stat.std)}" stroke="{c}"/>'
            )
        tip = f"{name}: {label} {format_stat(stat, row.n)}, {format_number(x)} s, n={row.n}"
        parts.append(
            f'<circle class="point" cx="{px(x)}" cy="{py(stat.mean)}" r="5" fill="{c}"><title>{e(tip)}</title></circle>'
        )
        parts.append(
            f'<text class="label" x="{px(x) + 8}" y="{py(stat.mean) + 4}" fill="{c}">{e(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: middle; }
th { background: #f2f2f2; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.protocol, td.error { max-width: 28em; font-size: 12px; color: #555; }
tr.published td { background: #fbf8ec; font-style: italic; }
img.samples { width: 96px; image-rendering: pixelated; display: block; }
svg.plot { font-size: 11px; overflow: visible; }
p.intro { max-width: 60em; color: #444; }
"""

# Click a header to sort by it (again to reverse); blanks always sort last. The page honours a URL hash
# "#sort=<column key>" (or "#sort=-<key>" for descending) on load, so a sorted view can be linked.
JS = """
(function () {
  "use strict";
  function value(cell) {
    var v = cell.getAttribute("data-v");
    if (v !== null) { return v === "" ? null : Number(v); }
    var t = cell.textContent.trim();
    return t === "" ? null : t.toLowerCase();
  }
  function sortTable(table, key, descending) {
    var heads = table.tHead.rows[0].cells, index = -1;
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].getAttribute("data-key") === key) { index = i; }
      heads[i].removeAttribute("aria-sort");
    }
    if (index < 0) { return; }
    heads[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[index]), y = value(b.cells[index]);
      if (x === null || y === null) { return x === null ? (y === null ? 0 : 1) : -1; }
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return descending ? -c : c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  function fromHash() {
    var match = /(?:^|&)sort=(-?)([^&]+)/.exec(decodeURIComponent(window.location.hash.slice(1)));
    if (!match) { return; }
    document.querySelectorAll("table.sortable").forEach(function (table) {
      sortTable(table, match[2], match[1] === "-");
    });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () {
        var descending = th.getAttribute("aria-sort") === "ascending" ||
          (th.getAttribute("aria-sort") === null && th.getAttribute("data-first") === "descending");
        sortTable(table, th.getAttribute("data-key"), descending);
      });
    });
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""


def _th(key: str, label: str, higher_is_better: bool = False) -> str:
    first = ' data-first="descending"' if higher_is_better else ""
    return f'<th data-key="{e(key)}"{first} title="sort by {e(label)}">{e(label)}</th>'


def _num_td(value: float | None, text: str) -> str:
    v = "" if value is None or not math.isfinite(value) else repr(float(value))
    return f'<td class="num" data-v="{e(v)}">{e(text)}</td>'


def _html_table(board: Board, data: str, rows: Sequence[BoardRow], thumbnails: dict[Path, str | None]) -> str:
    metrics = shown_metrics(board, rows)
    head = [_th("model", "model"), _th("sampler", "sampler"), _th("source", "source"), _th("n", "n", True)]
    head += [_th(m.key, m.label, m.higher_is_better) for m in metrics]
    head += [_th("protocol", "protocol"), _th("samples", "samples")]
    body = []
    for row in rows:
        cells = [f"<td>{e(row.model)}</td>", f"<td>{e(row.sampler)}</td>", f"<td>{e(source_text(row))}</td>"]
        cells.append(_num_td(row.n, "" if row.n is None else str(row.n)))
        for m in metrics:
            stat = row.stats.get(m.key)
            cells.append(_num_td(None if stat is None else stat.mean, format_stat(stat, row.n)))
        cells.append(f'<td class="protocol">{e(row.protocol)}</td>')
        uri = thumbnails.get(row.samples) if row.samples is not None else None
        img = (
            f'<img class="samples" alt="samples of {e(row.model)}/{e(row.sampler)}" src="{e(uri)}">'
            if uri
            else ""
        )
        cells.append(f'<td data-v="">{img}</td>')
        title = " ".join(row.notes)
        attrs = ' class="published"' if row.published else ' class="measured"'
        attrs += f' title="{e(title)}"' if title else ""
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    return (
        f'<table class="sortable board" id="board-{e(data)}" data-dataset="{e(data)}">\n'
        f"<thead><tr>{''.join(head)}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"
    )


def to_html(board: Board) -> str:
    thumbnails = {
        row.samples: thumbnail_data_uri(row.samples) for row in board.rows if row.samples is not None
    }
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        "<title>genbench leaderboard</title>",
        f"<style>{CSS}</style>\n</head>\n<body>",
        "<h1>genbench leaderboard</h1>",
        f'<p class="intro">{e(INTRO)} Click a column header to sort.</p>',
    ]
    if not board.rows:
        parts.append("<p>No finished runs found.</p>")
    for data in board.datasets:
        rows = board.table(data)
        parts.append(f'<section class="dataset" id="data-{e(data)}">\n<h2>{e(data)}</h2>')
        parts.append(_html_table(board, data, rows, thumbnails))
        parts.append(fid_time_svg(rows, board.metrics))
        notes = [f"{row.model}/{row.sampler}: {note}" for row in rows for note in row.notes]
        if notes:
            parts.append("<p>Skipped metrics:</p><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
        parts.append("</section>")
    if board.problems:
        parts.append('<section id="problems">\n<h2>Failed or unfinished runs (not averaged)</h2>')
        parts.append(
            '<table class="sortable problems" id="problems-table"><thead><tr>'
            + _th("path", "path")
            + _th("status", "status")
            + _th("error", "error")
            + "</tr></thead>\n<tbody>\n"
            + "\n".join(
                f'<tr><td>{e(display_path(p.path))}</td><td>{e(p.status)}</td><td class="error">{e(p.error)}</td></tr>'
                for p in board.problems
            )
            + "\n</tbody></table>\n</section>"
        )
    if board.warnings:
        parts.append('<section id="warnings">\n<h2>Warnings</h2>\n<ul>')
        parts += [f"<li>{e(w)}</li>" for w in board.warnings]
        parts.append("</ul>\n</section>")
    parts.append(f"<script>{JS}</script>\n</body>\n</html>\n")
    return "\n".join(parts)
