"""Render a :class:`Board` as Markdown, CSV and one self-contained HTML page (inline CSS, JS, SVG and images).

Every string comes from files the board does not trust, so each output escapes it for its own syntax: HTML
(``html.escape`` of text and attributes), Markdown (``<``, ``>``, ``&`` as entities; ``\\``, ``|``, backticks,
brackets, ``*`` and ``~`` backslash-escaped; newlines collapsed) and CSV (a text cell starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return gets a leading ``'``, as OWASP recommends against formula injection; numbers are
written as numbers). Control characters and bidi overrides are replaced everywhere. Images are embedded only when
they are regular PNG files inside their run directory, re-encoded as thumbnails.

Each dataset is one or more tables, one per evaluation protocol (:meth:`Board.tables`); a table shows its protocol
once, above it (a collapsed ``<details>`` in HTML, one line in Markdown). Published rows sit in each table beside
the measured rows of the same model, with a marker ([P1]...) for their own protocol, spelt out under the table.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from genbench.leaderboard.collect import (
    Problem,
    clean_text,
    clip,
    display_path,
    format_nonfinite,
    read_regular_file,
)
from genbench.leaderboard.stats import Board, BoardRow, Metric, Protocol, Stat, Table

log = logging.getLogger(__name__)

INTRO = (
    "Mean ± sample standard deviation over seeds; n = runs averaged; (k/n) = the metric exists in k of them; "
    "NaN and infinite values are left out of the mean and counted beside it; blank = not measured. "
    "Each table holds runs measured under one evaluation protocol, stated above it; runs measured under "
    "different protocols are never averaged together. Published rows are copied from papers, with their own "
    "protocol ([P1]...) under the table; 'unverified' means recalled, not yet re-read from the paper."
)
THUMBNAIL_PX = 256
MAX_IMAGE_BYTES = 32 * 2**20
MAX_IMAGE_PIXELS = 32 * 2**20
PROTOCOL_FIELD_ORDER = ("n_gen", "n_ref", "reference_split", "feature_extractor", "resizer")
MAX_FIELD_CHARS = 300  # a protocol field as shown


# ---------------------------------------------------------------------------------------------------- text helpers
def format_number(x: float) -> str:
    if not math.isfinite(x):
        return format_nonfinite(x) if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.0f}" if abs(x) >= 1e4 else f"{x:.4g}"


def _dropped_text(nonfinite: Sequence[str]) -> str:
    return ", ".join(f"{k} {kind}" for kind, k in sorted(Counter(nonfinite).items()))


def format_stat(stat: Stat | None, n: int | None) -> str:
    """``mean ± std``, then ``(k/n)`` when only k of the n runs have a number, and how many gave NaN/inf."""
    if stat is None:
        return ""
    if stat.count == 0:  # every run gave NaN or inf: nothing to average
        kinds = "/".join(sorted(set(stat.nonfinite))) or "NaN"
        return f"{kinds} in {len(stat.nonfinite)}/{n}" if n is not None else kinds
    text = format_number(stat.mean)
    if stat.std is not None:
        text += f" ± {format_number(stat.std)}"
    note = []
    if n is not None and stat.count is not None and stat.count < n:
        note.append(f"{stat.count}/{n}")
    if stat.nonfinite:
        note.append(_dropped_text(stat.nonfinite))
    return text + (f" ({'; '.join(note)})" if note else "")


def source_text(row: BoardRow) -> str:
    if not row.published:
        return row.source
    return f"published: {row.source}" + ("" if row.verified else " (unverified)")


def shown_metrics(board: Board, rows: Sequence[BoardRow]) -> list[Metric]:
    """The board's metrics that at least one of ``rows`` has: empty columns are left out of a table."""
    return [m for m in board.metrics if any(m.key in row.stats for row in rows)]


def _field(key: str, value: object) -> str:
    return f"{key}={clip(str(value), MAX_FIELD_CHARS)}"


def _fields(fields: Sequence[tuple[str, object]]) -> str:
    rank = {k: i for i, k in enumerate(PROTOCOL_FIELD_ORDER)}
    ordered = sorted(fields, key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
    return ", ".join(_field(k, v) for k, v in ordered)


def protocol_caption(protocols: dict[str, Protocol]) -> tuple[str, list[tuple[str, str]]]:
    """A table's protocol as (summary, [(metrics, fields)]): the summary holds the fields every recorded protocol
    of the table shares (and the metrics without one); each group of metrics with one protocol then lists its
    other fields, or "" when it has none."""
    if not protocols:
        return "no generative metric measured", []
    groups: dict[Protocol, list[str]] = {}
    for metric, protocol in sorted(protocols.items()):
        groups.setdefault(protocol, []).append(metric)
    recorded = [p for p in groups if p is not None]
    if not recorded:
        return "not recorded (these runs wrote no protocol record)", []
    common = [kv for kv in recorded[0] if all(kv in p for p in recorded)]
    summary = _fields(common) if common else "differs per metric"
    if None in groups:
        summary += f"; not recorded for {', '.join(groups[None])}"
    details = [
        (", ".join(metrics), _fields([kv for kv in protocol if kv not in common]))
        for protocol, metrics in groups.items()
        if protocol is not None
    ]
    return summary, details


def table_title(table: Table) -> str:
    return table.data if table.count == 1 else f"{table.data}: protocol {table.index + 1} of {table.count}"


def published_protocols(rows: Sequence[BoardRow]) -> dict[str, str]:
    """Distinct protocols of the published rows, in order, each with its marker: protocol text -> "P1"."""
    texts = dict.fromkeys(r.protocol for r in rows if r.published)
    return {text: f"P{i + 1}" for i, text in enumerate(texts)}


# ---------------------------------------------------------------------------------------------------- Markdown
_MD_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        "|": "\\|",
        "`": "\\`",
        "[": "\\[",
        "]": "\\]",
        "*": "\\*",
        "~": "\\~",
        "<": "&lt;",
        ">": "&gt;",
        "&": "&amp;",
    }
)


def md(text: object) -> str:
    """``text`` as inert Markdown inline text: one line, no HTML, no link, no emphasis, no table break."""
    return " ".join(clean_text(str(text)).split()).translate(_MD_ESCAPES)


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in body]
    return lines


def _short(text: str, limit: int = 300) -> str:
    return clip(" ".join(text.split()), limit)


def _md_source(row: BoardRow, markers: dict[str, str]) -> str:
    text = md(source_text(row))
    return f"{text} [{markers[row.protocol]}]" if row.published else text


def _caption(table: Table) -> tuple[str, list[tuple[str, str]]]:
    if all(r.published for r in table.rows):
        return "no run measured on this dataset; published numbers only", []
    return protocol_caption(table.protocols)


def _md_protocol_line(table: Table) -> str:
    summary, details = _caption(table)
    extra = [f"{md(metrics)}: {md(fields)}" for metrics, fields in details if fields]
    return f"Protocol: {md(summary)}" + "".join(f"; {part}" for part in extra)


def to_markdown(board: Board) -> str:
    lines = ["# genbench leaderboard", "", INTRO, ""]
    if not board.rows:
        lines += ["No finished runs found.", ""]
    for data in board.datasets:
        lines += [f"## {md(data)}", ""]
        for table in board.tables(data):
            if table.count > 1:
                lines += [f"### {md(table_title(table))}", ""]
            metrics = shown_metrics(board, table.rows)
            markers = published_protocols(table.rows)
            header = ["model", "sampler", "source", "n", *(m.label for m in metrics)]
            body = [
                [
                    md(row.model),
                    md(row.sampler),
                    _md_source(row, markers),
                    "" if row.n is None else str(row.n),
                    *(md(format_stat(row.stats.get(m.key), row.n)) for m in metrics),
                ]
                for row in table.rows
            ]
            lines += [_md_protocol_line(table), ""]
            lines += ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cells) + " |" for cells in body]
            lines.append("")
            if markers:
                legend = "; ".join(f"[{marker}] {md(text)}" for text, marker in markers.items())
                lines += [f"Published protocols: {legend}", ""]
            notes = [
                f"- {md(row.model)}/{md(row.sampler)}: {md(note)}" for row in table.rows for note in row.notes
            ]
            if notes:
                lines += ["Skipped or dropped values:", "", *notes, ""]
    lines += _md_problems(board.problems)
    if board.warnings:
        lines += ["## Warnings", "", *(f"- {md(w)}" for w in board.warnings), ""]
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
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet will not run: text starting like a formula gets a leading ``'`` (numbers,
    negative ones included, stay numbers). Control characters are replaced."""
    if not isinstance(value, str):
        return value
    if value.startswith(CSV_FORMULA_STARTS):
        value = "'" + value
    return clean_text(value)


def to_csv(board: Board) -> str:
    """One line per board row, every metric as mean, std and count columns (blank when missing); the row's
    protocol (measured rows: per metric) and notes as text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["data", "model", "sampler", "source", "verified", "n"]
    for m in board.metrics:
        header += [f"{m.key}_mean", f"{m.key}_std", f"{m.key}_count"]
    writer.writerow([*header, "protocol", "git_commits", "runs", "notes"])

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
            if stat is None:
                cells += ["", "", ""]
            elif stat.count == 0:  # only NaN/inf: no mean
                cells += ["", "", 0]
            else:
                cells += [stat.mean, blank(stat.std), blank(stat.count)]
        cells += [
            row.protocol,
            ";".join(row.git_commits),
            ";".join(display_path(p) for p in row.runs),
            " | ".join(row.notes),
        ]
        writer.writerow([csv_cell(c) for c in cells])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------- HTML
def e(value: object) -> str:
    return html.escape(clean_text(str(value)), quote=True)


def thumbnail_data_uri(
    path: Path, max_px: int = THUMBNAIL_PX, problems: list[str] | None = None
) -> str | None:
    """A PNG data URI of the PNG file ``path`` shrunk to at most ``max_px`` a side, or None when it cannot be read
    (not a regular file, over MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS, not a PNG); why is appended to ``problems``."""
    try:
        from PIL import Image  # lazy: only the HTML page needs Pillow

        data = read_regular_file(path, MAX_IMAGE_BYTES)
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{width}x{height} pixels, over the {MAX_IMAGE_PIXELS} the leaderboard decodes"
                )
            image.thumbnail((max_px, max_px))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except Exception as err:  # Pillow raises many types on a hostile file; none may stop the board
        message = clean_text(f"{display_path(path)}: samples not embedded: {clip(str(err), 300)}")
        log.warning(message)
        if problems is not None:
            problems.append(message)
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


def _fid_time_svg(rows: Sequence[BoardRow], metrics: Sequence[Metric]) -> str:
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


def fid_time_svg(rows: Sequence[BoardRow], metrics: Sequence[Metric]) -> str:
    """An SVG scatter of FID against training time for the measured rows, one labelled point per row."""
    try:
        return _fid_time_svg(rows, metrics)
    except (ArithmeticError, ValueError) as err:  # values at the float limits
        return f'<p class="noplot">Cannot plot these values: {e(err)}.</p>'


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.3em 0 0.4em; }
div.scroll { overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 2px 7px; vertical-align: middle; }
th { background: #f2f2f2; cursor: pointer; user-select: none; max-width: 8em; vertical-align: bottom;
  font-size: 13px; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.error { white-space: normal; max-width: 40em; overflow-wrap: anywhere; font-size: 12px; color: #555; }
td.thumb { padding: 1px 3px; }
tr.published td { background: #fbf8ec; font-style: italic; }
sup.protocol-ref { font-style: normal; color: #8a6d00; cursor: help; }
img.samples { height: 40px; width: auto; image-rendering: pixelated; display: block; }
img.samples:hover { transform: scale(4); transform-origin: left center; position: relative; z-index: 2;
  box-shadow: 0 0 6px #888; }
details.protocol { margin: 0.2em 0; max-width: 75em; font-size: 13px; color: #333; }
details.protocol summary { cursor: pointer; }
details.protocol ul { margin: 0.3em 0; font-size: 12px; color: #555; }
p.published-protocols, p.notes-title, ul.notes { font-size: 12px; color: #555; max-width: 75em; margin: 0.2em 0; }
div.protocol-table { margin-bottom: 1.5em; }
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
    var hash;
    try { hash = decodeURIComponent(window.location.hash.slice(1)); } catch (err) { return; }
    var match = /(?:^|&)sort=(-?)([^&]+)/.exec(hash);
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


def _html_protocol(table: Table) -> str:
    summary, details = _caption(table)
    items = "".join(
        f"<li><b>{e(metrics)}</b>: {e(fields or 'only the fields above')}</li>" for metrics, fields in details
    )
    return (
        f'<details class="protocol"><summary>Protocol: {e(summary)}</summary>'
        + (f"<ul>{items}</ul>" if items else "")
        + "</details>"
    )


def _html_table(board: Board, table: Table, thumbnails: dict[Path, str | None]) -> str:
    rows = table.rows
    metrics = shown_metrics(board, rows)
    markers = published_protocols(rows)
    head = [_th("model", "model"), _th("sampler", "sampler"), _th("source", "source"), _th("n", "n", True)]
    head += [_th("samples", "samples")]
    head += [_th(m.key, m.label, m.higher_is_better) for m in metrics]
    body = []
    for row in rows:
        source = e(source_text(row))
        if row.published:
            source += f' <sup class="protocol-ref" title="{e(row.protocol)}">[{markers[row.protocol]}]</sup>'
        cells = [f"<td>{e(row.model)}</td>", f"<td>{e(row.sampler)}</td>", f"<td>{source}</td>"]
        cells.append(_num_td(row.n, "" if row.n is None else str(row.n)))
        uri = thumbnails.get(row.samples) if row.samples is not None else None
        img = (
            f'<img class="samples" alt="samples of {e(row.model)}/{e(row.sampler)}" src="{e(uri)}">'
            if uri
            else ""
        )
        cells.append(f'<td class="thumb" data-v="">{img}</td>')
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


def to_html(board: Board) -> str:
    image_problems: list[str] = []
    thumbnails = {
        row.samples: thumbnail_data_uri(row.samples, problems=image_problems)
        for row in board.rows
        if row.samples is not None
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
        parts.append(f'<section class="dataset" id="data-{e(data)}">\n<h2>{e(data)}</h2>')
        for table in board.tables(data):
            parts.append(f'<div class="protocol-table" id="{e(table.id)}-block">')
            if table.count > 1:
                parts.append(f"<h3>{e(table_title(table))}</h3>")
            parts.append(_html_protocol(table))
            parts.append(_html_table(board, table, thumbnails))
            parts.append(fid_time_svg(table.rows, board.metrics))
            notes = [f"{row.model}/{row.sampler}: {note}" for row in table.rows for note in row.notes]
            if notes:
                parts.append(
                    '<p class="notes-title">Skipped or dropped values:</p><ul class="notes">'
                    + "".join(f"<li>{e(n)}</li>" for n in notes)
                    + "</ul>"
                )
            parts.append("</div>")
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
    warnings = [*board.warnings, *image_problems]
    if warnings:
        parts.append('<section id="warnings">\n<h2>Warnings</h2>\n<ul>')
        parts += [f"<li>{e(w)}</li>" for w in warnings]
        parts.append("</ul>\n</section>")
    parts.append(f"<script>{JS}</script>\n</body>\n</html>\n")
    return "\n".join(parts)
