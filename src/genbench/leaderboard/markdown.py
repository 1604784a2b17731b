"""The board as Markdown: one table per dataset and protocol, the protocol in one line above it.

Every string is inert Markdown (:func:`md`): ``<``, ``>``, ``&`` become entities; ``\\``, ``|``, backticks,
brackets, ``*`` and ``~`` are backslash-escaped; newlines collapse; control characters and bidi overrides are
replaced. So a model name cannot open HTML, a link or a new table cell.
"""

from __future__ import annotations

from collections.abc import Sequence

from genbench.leaderboard.collect import Problem, clean_text, clip, display_path
from genbench.leaderboard.stats import Board, BoardRow, Table
from genbench.leaderboard.text import (
    APART_TITLE,
    INTRO,
    apart_lines,
    format_stat,
    published_protocols,
    shown_metrics,
    source_text,
    table_caption,
    table_notes,
    table_title,
)

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


def md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in body]
    return lines


def _short(text: str, limit: int = 300) -> str:
    return clip(" ".join(text.split()), limit)


def _md_source(row: BoardRow, markers: dict[str, str]) -> str:
    text = md(source_text(row))
    return f"{text} [{markers[row.protocol]}]" if row.published else text


def md_protocol_line(table: Table) -> str:
    summary, details = table_caption(table)
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
            lines += [md_protocol_line(table), ""]
            lines += ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cells) + " |" for cells in body]
            lines.append("")
            if markers:
                legend = "; ".join(f"[{marker}] {md(text)}" for text, marker in markers.items())
                lines += [f"Published protocols: {legend}", ""]
            notes = [f"- {md(note)}" for note in table_notes(table.rows)]
            if notes:
                lines += ["Skipped or dropped values:", "", *notes, ""]
        apart = apart_lines(board, board.apart(data))
        if apart:
            lines += [f"{APART_TITLE}:", "", *(f"- {md(line)}" for line in apart), ""]
    lines += md_problems(board.problems)
    if board.warnings:
        lines += ["## Warnings", "", *(f"- {md(w)}" for w in board.warnings), ""]
    return "\n".join(lines)


def md_problems(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        return []
    body = [[display_path(p.path), p.status, _short(p.error)] for p in problems]
    return [
        "## Failed or unfinished runs (not averaged)",
        "",
        *md_table(["path", "status", "error"], body),
        "",
    ]
