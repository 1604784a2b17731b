"""The board as CSV: one line per row, each metric as mean, std and count columns, for spreadsheets and scripts.

A text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'`` (OWASP's advice
against formula injection), so a spreadsheet shows a hostile model name instead of running it; numbers, negative
ones included, stay numbers. Control characters and bidi overrides are replaced.
"""

from __future__ import annotations

import csv
import io

from genbench.leaderboard.collect import clean_text, display_path
from genbench.leaderboard.stats import Board

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
    protocol (measured rows: per metric) and notes as text; ``reevaluated``: how many of the runs' values come
    from a re-evaluation under this row's protocol."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["data", "model", "sampler", "source", "verified", "n"]
    for m in board.metrics:
        header += [f"{m.key}_mean", f"{m.key}_std", f"{m.key}_count"]
    writer.writerow([*header, "protocol", "git_commits", "runs", "notes", "reevaluated"])

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
            "" if row.published else row.reevaluated,
        ]
        writer.writerow([csv_cell(c) for c in cells])
    return out.getvalue()
