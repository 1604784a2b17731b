"""The words and numbers every leaderboard output shares: how a value, a row's source and a table's protocol are
written. The formats (:mod:`.markdown`, :mod:`.csv_export`, :mod:`.render`) escape this text for their own syntax."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from genbench.leaderboard.collect import clip, format_nonfinite
from genbench.leaderboard.stats import Board, BoardRow, Metric, Protocol, Stat, Table

INTRO = (
    "Mean ± sample standard deviation over seeds; n = runs averaged; (k/n) = the metric exists in k of them; "
    "NaN and infinite values are left out of the mean and counted beside it; blank = not measured. "
    "Each table holds runs measured under one evaluation protocol, stated above it; runs measured under "
    "different protocols are never averaged together, and a run re-evaluated under another protocol appears in "
    "that protocol's table too ('re-evaluated'). Published rows are copied from papers, with their own "
    "protocol ([P1]...) under the table; 'unverified' means recalled, not yet re-read from the paper."
)
PROTOCOL_FIELD_ORDER = ("n_gen", "n_ref", "reference_split", "feature_extractor", "resizer")
MAX_FIELD_CHARS = 300  # a protocol field as shown


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


def shown_metrics(board: Board, rows: Sequence[BoardRow]) -> list[Metric]:
    """The board's metrics that at least one of ``rows`` has: empty columns are left out of a table."""
    return [m for m in board.metrics if any(m.key in row.stats for row in rows)]


def source_text(row: BoardRow) -> str:
    """measured, "measured, re-evaluated (k/n)" (values from other_protocols) or the published citation."""
    if not row.published:
        if not row.reevaluated:
            return row.source
        return f"{row.source}, re-evaluated" + (
            "" if row.reevaluated == row.n else f" ({row.reevaluated}/{row.n})"
        )
    return f"published: {row.source}" + ("" if row.verified else " (unverified)")


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


def table_caption(table: Table) -> tuple[str, list[tuple[str, str]]]:
    """:func:`protocol_caption` of the table, or what a table of published numbers only is."""
    if all(r.published for r in table.rows):
        return "no run measured on this dataset; published numbers only", []
    return protocol_caption(table.protocols)


def table_notes(rows) -> list[str]:
    """Each distinct note of the table's rows once, naming the rows it applies to ("model/sampler, ..."), so a
    reason shared by every row (no Inception weights) is read once, not once a row."""
    where: dict[str, list[str]] = {}
    for row in rows:
        for note in row.notes:
            where.setdefault(note, []).append(f"{row.model}/{row.sampler}")
    return [f"{', '.join(names)}: {note}" for note, names in where.items()]


APART_TITLE = "Published numbers under other protocols (not comparable with the tables above)"


def apart_lines(board: Board, rows: Sequence[BoardRow]) -> list[str]:
    """One line per published row listed apart: its numbers, its protocol, and why no table matches it."""
    labels = {m.key: m.label for m in board.metrics}
    lines = []
    for row in rows:
        values = ", ".join(
            f"{labels.get(k, k)} {format_stat(stat, None)}" for k, stat in sorted(row.stats.items())
        )
        if row.comparable_when is None:
            why = "its protocol cannot be reproduced here"
        else:
            why = f"no table here measured {', '.join(sorted(row.stats))} with {_fields(row.comparable_when)}"
        lines.append(
            f"{row.model} / {row.sampler}: {values}. {source_text(row)}. Protocol: {row.protocol}. Apart: {why}."
        )
    return lines
