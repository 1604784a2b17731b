"""The README's tables as plain text cells (the README escapes them): per (model, sampler), per model, the curves'
final points, and a section's comparison.

Metrics split in two kinds. Those measured on a sampler's draws (``<metric>@<sampler>`` in metrics.json: FID, KID,
precision, recall, path length) are the board's rows, one per (model, sampler), one table per protocol
(:meth:`Board.tables`). Those of the run whatever the sampler (reconstruction, training time and speed, code
probes: :func:`is_run_level`) would repeat on every sampler's row; they get one row per model instead, averaged
over the model's runs from their metrics.json. Every cell is mean ± sample std over seeds
(:func:`~genbench.leaderboard.text.format_stat`); a header's arrow says which way is better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from genbench.leaderboard.collect import RUN_METRICS, Run
from genbench.leaderboard.stats import METRICS, Board, BoardRow, Protocol, Stat, Table, summarise
from genbench.leaderboard.stats import protocol_fields_text as fields_text
from genbench.leaderboard.text import format_stat, shown_metrics, table_notes, table_title
from genbench.results.curve import ModelCurve, curve_protocols
from genbench.results.layout import Compare
from genbench.results.runs import as_protocol, own_sampler

RUN_LEVEL_PREFIXES = ("recon_", "probe_")  # with RUN_METRICS: the metrics of a run, not of a sampler
# Which way is better for metrics the board's list (stats.METRICS) does not name, by key prefix (True: higher).
DIRECTIONS = (
    ("recon_psnr_", True),
    ("recon_ssim_", True),
    ("recon_mse_", False),
    ("probe_", True),
    ("path_length_", False),
    ("fid_", False),
    ("kid_", False),
    ("precision_", True),
    ("recall_", True),
)
_KNOWN = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class TextTable:
    """Header and rows of plain text; the protocol is the board table's (``board_table``) or ``protocol``."""

    header: list[str]
    rows: list[list[str]]
    title: str = ""
    board_table: Table | None = None
    protocol: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelStats:
    """A model's run-level metrics over its ``n`` runs; ``protocols``: each metric's distinct protocols."""

    model: str
    n: int
    sampler: str | None  # its own sampler
    stats: dict[str, Stat]
    protocols: dict[str, list[Protocol]]


def is_run_level(key: str) -> bool:
    return key in RUN_METRICS or key.startswith(RUN_LEVEL_PREFIXES)


def higher_is_better(key: str) -> bool | None:
    """Which way ``key`` is better: the board's word for its metrics, else :data:`DIRECTIONS`; None: unknown."""
    if key in _KNOWN:
        return _KNOWN[key].higher_is_better
    if key.endswith("_std"):  # a spread (KID's over subsets), not a quality
        return None
    return next((higher for prefix, higher in DIRECTIONS if key.startswith(prefix)), None)


def heading(key: str, labels: dict[str, str], words: bool = False) -> str:
    """The metric's label with ↑ (higher is better) or ↓, or those words when ``words`` (Pillow's default font
    has no arrows)."""
    better = higher_is_better(key)
    if words:
        return (
            labels.get(key, key) + {True: ", higher is better", False: ", lower is better", None: ""}[better]
        )
    return labels.get(key, key) + {True: " ↑", False: " ↓", None: ""}[better]


def selected(key: str, columns: Sequence[str] | None) -> bool:
    """Whether the layout's ``columns`` (keys or key prefixes; None: all) show ``key``."""
    return columns is None or any(key == c or key.startswith(c) for c in columns)


def labels_of(board: Board) -> dict[str, str]:
    return {m.key: m.label for m in (*METRICS, *board.metrics)}


def sampler_tables(board: Board, data: str, columns: Sequence[str] | None) -> list[TextTable]:
    """The dataset's board tables (one per protocol), with the sampler's metrics only."""
    labels, out = labels_of(board), []
    for table in board.tables(data):
        rows = [r for r in table.rows if not r.published]
        metrics = [
            m for m in shown_metrics(board, rows) if not is_run_level(m.key) and selected(m.key, columns)
        ]
        if not rows or not metrics:
            continue
        body = [
            [r.model, r.sampler or "-", str(r.n), *(format_stat(r.stats.get(m.key), r.n) for m in metrics)]
            for r in rows
        ]
        out.append(
            TextTable(
                ["model", "sampler", "n", *(heading(m.key, labels) for m in metrics)],
                body,
                title=table_title(table) if table.count > 1 else "",
                board_table=table,
                notes=tuple(table_notes(rows)),
            )
        )
    return out


def _run_values(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if "@" not in k and is_run_level(k) and isinstance(v, int | float) and not isinstance(v, bool)
    }


def model_stats(runs: list[Run], record_of: Callable[[Run], dict[str, Any]]) -> list[ModelStats]:
    """Each model's run-level metrics, mean ± std over its runs (NaN and ±inf counted apart), sorted by model."""
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    out = []
    for model, members in sorted(by_model.items()):
        values: dict[str, list[float]] = {}
        protocols: dict[str, list[Protocol]] = {}
        for run in members:
            record = record_of(run)
            recorded = record.get("protocols") if isinstance(record.get("protocols"), dict) else {}
            for key, value in _run_values(record).items():
                values.setdefault(key, []).append(value)
                seen = protocols.setdefault(key, [])
                if (protocol := as_protocol(recorded.get(key))) not in seen:
                    seen.append(protocol)
        stats = {k: summarise(vs) for k, vs in values.items()}
        out.append(ModelStats(model, len(members), own_sampler(members), stats, protocols))
    return out


def _ordered(keys: set[str]) -> list[str]:
    """The board's column order, then the other keys by name."""
    rank = {m.key: i for i, m in enumerate(METRICS)}
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), k))


def _protocol_text(per_metric: dict[str, list[tuple[Protocol, str]]]) -> str:
    """``recon_mse_test, recon_psnr_test: split=test, n_images=2000 (glo); ... (vae)``: metrics that read the same
    named together; a protocol that differs between models names its models."""
    by_text: dict[str, list[str]] = {}
    for metric, entries in per_metric.items():
        protocols: dict[Protocol, list[str]] = {}
        for protocol, owner in entries:
            protocols.setdefault(protocol, []).append(owner)
        if len(protocols) == 1:
            text = fields_text(next(iter(protocols)))
        else:
            text = "; ".join(f"{fields_text(p)} ({', '.join(owners)})" for p, owners in protocols.items())
        by_text.setdefault(text, []).append(metric)
    return " | ".join(f"{', '.join(metrics)}: {text}" for text, metrics in by_text.items())


def model_table(
    models: list[ModelStats], labels: dict[str, str], columns: Sequence[str] | None
) -> TextTable | None:
    """One row per model: its run-level metrics; the protocol of each (training time and speed have none)."""
    keys = _ordered({k for m in models for k in m.stats if selected(k, columns)})
    if not keys:
        return None
    rows = [
        [m.model, m.sampler or "-", str(m.n), *(format_stat(m.stats.get(k), m.n) for k in keys)]
        for m in models
    ]
    per_metric: dict[str, list[tuple[Protocol, str]]] = {}
    for key in keys:
        for m in models:
            for protocol in m.protocols.get(key, []):
                if protocol is not None:
                    per_metric.setdefault(key, []).append((protocol, m.model))
    return TextTable(
        ["model", "own sampler", "n", *(heading(k, labels) for k in keys)],
        rows,
        protocol=_protocol_text(per_metric) or "no protocol recorded",
    )


def quality_table(
    curves: list[ModelCurve],
    metrics: Sequence[str],
    labels: dict[str, str],
    record_of: Callable[[Run], dict[str, Any]],
) -> TextTable | None:
    """Per model (own sampler): its curves' final points, mean ± std over runs: the epoch, images seen, the
    training loop's seconds and each metric there."""
    if not curves:
        return None
    rows = []
    per_metric: dict[str, list[tuple[Protocol, str]]] = {}
    for curve in curves:
        finals, n = curve.final_points(), len(curve.runs)
        epochs = sorted({p.epoch for p in finals})
        images = [float(p.images_seen) for p in finals if p.images_seen is not None]
        cells = [
            curve.model,
            curve.sampler,
            str(n),
            str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}",
            format_stat(summarise(images), n) if images else "",
            format_stat(summarise([p.seconds for p in finals]), n),
        ]
        for metric in metrics:
            found = [p.values[metric] for p in finals if metric in p.values]
            cells.append(format_stat(summarise(found), n) if found else "")
        rows.append(cells)
        runs = [(run, record_of(run)) for run, _ in curve.runs]
        for metric, protocols in curve_protocols(runs, curve.sampler, tuple(metrics)).items():
            per_metric.setdefault(metric, []).extend((p, curve.model) for p in protocols)
    return TextTable(
        [
            "model",
            "sampler",
            "n",
            "epoch",
            "images seen",
            "train-loop s ↓",
            *(heading(m, labels) for m in metrics),
        ],
        rows,
        protocol=_protocol_text(per_metric),
    )


def _own_row(board: Board, data: str, model: str, sampler: str | None) -> BoardRow | None:
    """The board row of ``model`` with its own sampler (of most runs, when split by protocol)."""
    rows = [r for r in board.table(data) if r.model == model and not r.published]
    own = [r for r in rows if r.sampler == sampler] or rows
    return max(own, key=lambda r: r.n or 0) if own else None


def compare_table(compare: Compare, board: Board, data: str, models: list[ModelStats]) -> TextTable:
    """The layout's ``compare``: its metrics for its models, in its order; run-level metrics over the model's
    runs, the others from the model's own-sampler row."""
    labels, by_name = labels_of(board), {m.model: m for m in models}
    rows, notes = [], []
    for model in compare.models:
        stats = by_name.get(model)
        if stats is None:
            rows.append([model, "0", *([""] * len(compare.metrics))])
            notes.append(f"{model}: no finished run on {data}")
            continue
        row = _own_row(board, data, model, stats.sampler)
        cells = []
        for metric in compare.metrics:
            if is_run_level(metric):
                cells.append(format_stat(stats.stats.get(metric), stats.n))
            else:
                cells.append(format_stat(row.stats.get(metric), row.n) if row is not None else "")
        rows.append([model, str(stats.n), *cells])
    header = ["model", "n", *(heading(m, labels) for m in compare.metrics)]
    protocol = "as in the tables above (sampler metrics: each model's own sampler)"
    return TextTable(header, rows, title=compare.title, protocol=protocol, notes=tuple(notes))
