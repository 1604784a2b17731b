"""Group run rows by (data, model, sampler, protocol) and summarise each metric as mean, sample std and count.

Protocols never mix. Each generative value comes with its protocol record (``protocols`` in metrics.json: n_gen,
n_ref, reference split, resizer, feature extractor with its weights, KID subsets, k...; every field counts); a
value without one has the protocol "not recorded", which matches no recorded protocol. Runs of one
(data, model, sampler) are averaged together only when every metric they share was measured under the same
protocol; runs that differ become separate rows (and a warning). A metric one run lacks (Inception weights
missing there) does not split: it is counted "(k/n)". The rows of a dataset are then laid out in tables the same
way (:meth:`Board.tables`): within one table each metric column has exactly one protocol, shown once above it.
The protocol most runs used comes first (the first row of a split group, the first table of a dataset).

A run's re-evaluations under other protocols (its ``other_protocols``) are rows of their own
(:func:`~genbench.leaderboard.collect.run_rows`), so they land in their protocol's row and table; they average
with other runs only where those were measured under that same protocol. Pieces of one run that fall into one row
(its own values and a re-evaluation of other metrics) are one run there: ``n`` counts runs.

NaN and ±Infinity (a diverged run, a failed metric) are left out of the mean and std: the cell says how many runs
gave one ("12 ± 2 (2/3; 1 NaN)", or "NaN in 3/3" when no run gave a number), the row's notes name the runs, and
each such value is a warning naming its run directory and key. ``nan ± nan`` never appears.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from genbench.leaderboard.collect import (
    RUN_METRICS,
    Collection,
    Problem,
    RunRow,
    UnsafeFile,
    contained_file,
    display_path,
    format_nonfinite,
    run_rows,
)

MEASURED = "measured"

_ABSENT = object()

# A protocol as compared: its fields sorted by name, or None for "not recorded".
Protocol = tuple[tuple[str, Any], ...] | None


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool = False


# Column order of every table; metrics found in runs but not listed here are appended by name.
METRICS = (
    Metric("fid_inception", "FID (Inception)"),
    Metric("fid_classifier", "FID (classifier)"),
    Metric("kid_inception", "KID (Inception)"),
    Metric("kid_classifier", "KID (classifier)"),
    Metric("precision_inception", "precision (Inception)", True),
    Metric("precision_classifier", "precision (classifier)", True),
    Metric("recall_inception", "recall (Inception)", True),
    Metric("recall_classifier", "recall (classifier)", True),
    Metric("recon_mse_train", "recon MSE train"),
    Metric("recon_mse_test", "recon MSE test"),
    Metric("recon_psnr_test", "recon PSNR test", True),
    Metric("recon_ssim_test", "recon SSIM test", True),
    Metric("probe_linear_acc", "linear probe acc", True),
    Metric("probe_1nn_acc", "1-NN acc", True),
    Metric("train_seconds", "train s"),
    Metric("images_per_second", "images/s", True),
)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of the ``count`` finite values; ``std`` is None for a single
    value. ``nonfinite`` names the values left out ("NaN", "+Infinity"); with no finite value ``mean`` is NaN and
    ``count`` 0."""

    mean: float
    std: float | None
    count: int | None  # None for published numbers, whose run count is not recorded
    nonfinite: tuple[str, ...] = ()

    @property
    def finite(self) -> bool:
        return self.count != 0 and math.isfinite(self.mean)


def summarise(values: Sequence[float]) -> Stat:
    """Mean and std of the finite ``values``; NaN and ±inf are counted in ``nonfinite``, not averaged."""
    if not values:
        raise ValueError("no values to summarise")
    finite = [v for v in values if math.isfinite(v)]
    dropped = tuple(sorted(format_nonfinite(v) for v in values if not math.isfinite(v)))
    if not finite:
        return Stat(math.nan, None, 0, dropped)
    try:
        mean = statistics.fmean(finite)
    except OverflowError:  # values near the float limit: exact arithmetic
        mean = float(statistics.mean(finite))
    try:
        std = statistics.stdev(finite) if len(finite) >= 2 else None
    except OverflowError:
        std = math.inf
    return Stat(mean, std, len(finite), dropped)


@dataclass(frozen=True)
class Samples:
    """The sample grid a row shows: the PNG (resolved, inside its run directory), the run it comes from, its seed
    and FID (the one runs are ranked by, None when it has none), and how that run was chosen among the row's runs
    ("lowest fid_classifier of 3 runs", "the only run", "first of 3 runs with a grid")."""

    path: Path
    run: Path
    seed: Any
    fid_key: str | None
    fid: float | None
    chosen: str


@dataclass(frozen=True)
class BoardRow:
    """One line of a table: a measured group of runs, or a published reference number."""

    data: str
    model: str
    sampler: str
    source: str  # MEASURED, or the citation of a published number
    n: int | None  # runs averaged; None for published rows
    stats: dict[str, Stat]
    protocol: str = ""  # as text: the CSV's column; a published row's protocol
    verified: bool | None = None  # published rows only
    runs: tuple[Path, ...] = ()
    samples: Samples | None = None  # the sample grid of the row's best (lowest FID) or first run
    notes: tuple[str, ...] = ()  # metrics the runs skipped or could not average, and why
    git_commits: tuple[str, ...] = ()
    protocols: dict[str, Protocol] = field(default_factory=dict)  # measured rows: metric -> its one protocol
    reevaluated: int = 0  # runs whose values here come from a re-evaluation (other_protocols)
    # published rows: the protocol fields a measured column must have for the number to sit beside it (None: the
    # paper's protocol cannot be reproduced here, e.g. TensorFlow's Inception: always listed apart)
    comparable_when: tuple[tuple[str, Any], ...] | None = None

    def comparable_with(self, protocols: dict[str, Protocol]) -> bool:
        """Whether this published row was measured under the protocol of a table's columns: each of its metrics
        is a column there whose protocol has every ``comparable_when`` field with the same value."""
        if self.comparable_when is None or not self.stats:
            return False
        for metric in self.stats:
            measured = dict(protocols.get(metric) or ())
            if not measured or any(measured.get(k, _ABSENT) != v for k, v in self.comparable_when):
                return False
        return True

    @property
    def published(self) -> bool:
        return self.source != MEASURED

    def fid_key(self) -> str | None:
        """The FID this row is ranked and plotted by: Inception when present, else the classifier one."""
        return next((k for k in ("fid_inception", "fid_classifier") if k in self.stats), None)


@dataclass(frozen=True)
class Table:
    """The rows of one dataset measured under one protocol, with the dataset's published rows beside them."""

    data: str
    index: int  # 0, 1, ... among the dataset's tables
    count: int  # how many tables the dataset has
    protocols: dict[str, Protocol]  # metric -> the protocol of every value in its column
    rows: list[BoardRow]

    @property
    def id(self) -> str:
        return f"board-{self.data}" if self.index == 0 else f"board-{self.data}-{self.index + 1}"


@dataclass
class Board:
    rows: list[BoardRow]
    metrics: list[Metric]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def datasets(self) -> list[str]:
        return sorted({row.data for row in self.rows})

    def table(self, data: str) -> list[BoardRow]:
        return [row for row in self.rows if row.data == data]

    def tables(self, data: str) -> list[Table]:
        """The dataset's measured rows split into tables of one protocol each, each with the published rows
        measured under that protocol (:meth:`BoardRow.comparable_with`); the others are :meth:`apart`."""
        rows = self.table(data)
        clusters = _by_size(
            cluster_by_protocol([r for r in rows if not r.published], lambda r: r.protocols),
            lambda r: r.n or 0,
        )
        if not clusters:
            clusters = [({}, [])]
        tables = []
        for i, (protocols, members) in enumerate(clusters):
            ids = {id(r) for r in members}
            # the board's order: a comparable published row beside the measured rows of its model and sampler
            shown = [r for r in rows if (r.published and r.comparable_with(protocols)) or id(r) in ids]
            tables.append(Table(data, i, len(clusters), protocols, shown))
        return tables

    def apart(self, data: str) -> list[BoardRow]:
        """The dataset's published rows that no table's protocol matches: listed apart, never beside ours."""
        shown = {id(r) for table in self.tables(data) for r in table.rows}
        return [r for r in self.table(data) if r.published and id(r) not in shown]


T = TypeVar("T")


def cluster_by_protocol(
    items: Iterable[T], protocols_of: Callable[[T], dict[str, Protocol]]
) -> list[tuple[dict[str, Protocol], list[T]]]:
    """Split ``items`` (in order) into clusters in which each metric has one protocol: an item joins the first
    cluster that agrees with it on every metric both have, else starts one. Returns (metric -> protocol, items)
    per cluster, in the order the clusters were started."""
    clusters: list[tuple[dict[str, Protocol], list[T]]] = []
    for item in items:
        mine = protocols_of(item)
        for union, members in clusters:
            if all(union.get(k, _ABSENT) in (_ABSENT, v) for k, v in mine.items()):
                union.update(mine)
                members.append(item)
                break
        else:
            clusters.append((dict(mine), [item]))
    return clusters


def _by_size(
    clusters: list[tuple[dict[str, Protocol], list[T]]], size: Callable[[T], int]
) -> list[tuple[dict[str, Protocol], list[T]]]:
    """The clusters, the one with the most runs first (ties: in order)."""
    return sorted(clusters, key=lambda c: -sum(size(m) for m in c[1]))


def _names_the_sampler(key: str, value: Any, sampler: str) -> bool:
    """A field that only says which sampler the row is: ``sampler`` itself, or an older path-length record's
    ``codes`` naming it (now ``codes`` says how codes are drawn and ``sampler`` which)."""
    if key == "sampler":
        return value == sampler
    return key == "codes" and value in (
        f"model.sample_codes ({sampler})",
        f"the {sampler} sampler fitted to the codes",
        f"the model's {sampler} sampler (what sample decodes)",
    )


def protocols_of(row: RunRow) -> dict[str, Protocol]:
    """The protocol of each of the row's generative values (run-level metrics such as training time have none);
    a field naming the row's own sampler is left out, since rows already differ by sampler (:func:`_names_the_sampler`),
    and a ``seed`` field (older path-length records) too: seeds are what a row averages over, not a protocol."""
    out: dict[str, Protocol] = {}
    for metric in row.values:
        if metric in RUN_METRICS:
            continue
        record = row.protocols.get(metric)
        out[metric] = (
            None
            if record is None
            else tuple(
                sorted(
                    (
                        (k, v)
                        for k, v in record.items()
                        if not _names_the_sampler(k, v, row.sampler) and k != "seed"
                    ),
                    key=lambda kv: kv[0],
                )
            )
        )
    return out


def protocol_fields_text(protocol: Protocol) -> str:
    return "not recorded" if protocol is None else ", ".join(f"{k}={v}" for k, v in protocol)


def _protocol_summary(protocols: dict[str, Protocol]) -> str:
    """The protocols as one line, the metrics that share one named together."""
    by_protocol: dict[str, list[str]] = defaultdict(list)
    for metric, protocol in sorted(protocols.items()):
        by_protocol[protocol_fields_text(protocol)].append(metric)
    return "; ".join(f"{', '.join(metrics)}: {text}" for text, metrics in sorted(by_protocol.items()))


def _protocol_difference(clusters: Sequence[dict[str, Protocol]]) -> str:
    """What tells the clusters' protocols apart, e.g. ``n_gen=10000 / n_gen=1000 for fid_classifier, kid_...``."""
    by_difference: dict[str, list[str]] = defaultdict(list)
    for metric in sorted({m for c in clusters for m in c}):
        seen = list(dict.fromkeys(c[metric] for c in clusters if metric in c))
        if len(seen) < 2:
            continue
        records = [dict(p) if p is not None else None for p in seen]
        keys = sorted({k for r in records if r is not None for k in r})
        varying = [k for k in keys if len({repr(r.get(k)) if r is not None else "-" for r in records}) > 1]
        shown = [
            "not recorded" if r is None else ", ".join(f"{k}={r.get(k)}" for k in varying) or "…"
            for r in records
        ]
        by_difference[" / ".join(shown)].append(metric)
    text = "; ".join(
        f"{difference} for {', '.join(metrics)}" for difference, metrics in by_difference.items()
    )
    return text if len(text) <= 500 else text[:499] + "…"


def ranking_fid(row: RunRow) -> tuple[str | None, float]:
    """The FID a run is ranked by for its samples (Inception, else classifier) and its value; inf when none."""
    for key in ("fid_inception", "fid_classifier"):
        value = row.values.get(key)
        if value is not None:
            return key, value if math.isfinite(value) else math.inf
    return None, math.inf


def sample_names(row: RunRow, sampler: str) -> tuple[str, ...]:
    """The grids that show ``sampler``'s draws in ``row``'s run: ``samples_<sampler>.png``, and ``samples.png``
    when the run's own sampler is ``sampler`` (another sampler's grid must not be captioned with this one)."""
    own = row.run.own_samples_sampler()
    return (f"samples_{sampler}.png", "samples.png") if own == sampler else (f"samples_{sampler}.png",)


def _samples_of(rows: Sequence[RunRow], sampler: str) -> tuple[Samples | None, list[str]]:
    """The grid of ``sampler`` of the run with the lowest FID among those that have one, else of the first run
    that has one; only a regular file inside its run directory (a warning for each other one)."""
    found, warnings = [], []
    for row in sorted(rows, key=lambda r: ranking_fid(r)[1]):  # stable: ties keep path order
        for name in sample_names(row, sampler):
            try:
                path = contained_file(row.run.path, name)
            except UnsafeFile as err:
                warnings.append(f"{display_path(row.run.path)}: samples not embedded: {err}")
                continue
            if path is not None:
                found.append((row, path))
                break
    if not found:
        return None, warnings
    row, path = found[0]
    key, fid = ranking_fid(row)
    among = "" if len(found) == len(rows) else f" with a grid (of {len(rows)})"
    if len(rows) == 1:
        how = "the only run"
    elif math.isfinite(fid):
        how = f"lowest {key} of {len(found)} runs{among}"
    else:
        how = f"first of {len(found)} runs{among or ' with a grid'}"
    return Samples(path, row.run.path, row.run.seed, key, fid if math.isfinite(fid) else None, how), warnings


def merge_same_run(members: Sequence[RunRow]) -> tuple[list[RunRow], list[str]]:
    """One row per run: a run's own row and a re-evaluation of other metrics that fell into the same cluster become
    one, so ``n`` counts runs. A metric both hold (only possible for a record whose protocols differ in nothing the
    board compares) keeps the first value, with a warning."""
    merged: dict[Path, RunRow] = {}
    warnings = []
    for member in members:
        first = merged.get(member.run.path)
        if first is None:
            merged[member.run.path] = member
            continue
        clash = sorted(k for k in member.values.keys() & first.values.keys() if k not in RUN_METRICS)
        if clash:
            warnings.append(
                f"{display_path(member.run.path)}: {', '.join(clash)} recorded twice under one protocol; "
                "the first value kept"
            )
        merged[member.run.path] = RunRow(
            first.run,
            first.sampler,
            {**member.values, **first.values},
            {**member.protocols, **first.protocols},
            {**member.skipped, **first.skipped},
            first.reevaluated or member.reevaluated,
        )
    return list(merged.values()), warnings


def _nonfinite_notes(members: Sequence[RunRow]) -> list[str]:
    dropped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for member in members:
        for metric, value in sorted(member.values.items()):
            if not math.isfinite(value):
                dropped[(metric, format_nonfinite(value))].append(display_path(member.run.path))
    return [
        f"{metric} is {kind} in {len(paths)} of {len(members)} runs, left out of the mean: {', '.join(paths)}"
        for (metric, kind), paths in sorted(dropped.items())
    ]


def _board_row(
    data: str, model: str, sampler: str, members: list[RunRow], protocols: dict[str, Protocol]
) -> tuple[BoardRow, list[str]]:
    warnings = []
    values: dict[str, list[float]] = defaultdict(list)
    for member in members:
        for metric, value in member.values.items():
            values[metric].append(value)
    seeds: dict[str, list[str]] = defaultdict(list)
    for member in members:
        if member.run.seed is not None:
            seeds[repr(member.run.seed)].append(display_path(member.run.path))
    for seed, paths in seeds.items():
        if len(paths) > 1:
            warnings.append(
                f"{data}/{model}/{sampler}: {len(paths)} runs share seed {seed} and are all averaged: {', '.join(paths)}"
            )
    skipped: Counter[tuple[str, str]] = Counter()
    for member in members:
        for metric, reason in member.skipped.items():
            skipped[(metric, reason)] += 1
    notes = tuple(
        f"{metric} skipped in {k} of {len(members)} runs: {reason}"
        for (metric, reason), k in sorted(skipped.items())
    ) + tuple(_nonfinite_notes(members))
    commits = sorted({str(m.run.metrics["git_commit"]) for m in members if m.run.metrics.get("git_commit")})
    samples, samples_warnings = _samples_of(members, sampler)
    row = BoardRow(
        data=data,
        model=model,
        sampler=sampler,
        source=MEASURED,
        n=len(members),
        stats={metric: summarise(vs) for metric, vs in values.items()},
        protocol=_protocol_summary(protocols),
        runs=tuple(m.run.path for m in members),
        samples=samples,
        notes=notes,
        git_commits=tuple(commits),
        protocols=protocols,
        reevaluated=sum(m.reevaluated for m in members),
    )
    return row, warnings + samples_warnings


def group(rows: Iterable[RunRow]) -> tuple[list[BoardRow], list[str]]:
    """Average rows over seeds per (data, model, sampler) and protocol; also return warnings (repeated seeds,
    runs split by protocol, samples not embedded)."""
    groups: dict[tuple[str, str, str], list[RunRow]] = defaultdict(list)
    for row in rows:
        groups[(row.run.data, row.run.model, row.sampler)].append(row)
    board_rows, warnings = [], []
    for (data, model, sampler), members in sorted(groups.items()):
        # by path; a run's own row before its re-evaluations
        members.sort(key=lambda r: (str(r.run.path), r.reevaluated))
        clusters = []
        for protocols, cluster in cluster_by_protocol(members, protocols_of):
            runs, merge_warnings = merge_same_run(cluster)
            clusters.append((protocols, runs))
            warnings += merge_warnings
        clusters = _by_size(clusters, lambda r: 1)
        own = [c for c, runs in clusters if not all(r.reevaluated for r in runs)]
        if len(own) > 1:  # a re-evaluation under another protocol is asked for; runs that differ are not
            warnings.append(
                f"{data}/{model}/{sampler}: runs measured under {len(own)} different protocols are shown as "
                f"{len(own)} rows, not averaged together ({_protocol_difference(own)})"
            )
        for protocols, cluster in clusters:
            board_row, row_warnings = _board_row(data, model, sampler, cluster, protocols)
            board_rows.append(board_row)
            warnings += row_warnings
    return board_rows, warnings


def build_board(
    collection: Collection, published: Sequence[BoardRow] = (), all_published: bool = False
) -> Board:
    """Measured rows from ``collection`` plus the published rows of the datasets measured (or all of them)."""
    measured, warnings = group(row for run in collection.runs for row in run_rows(run))
    measured_data = {row.data for row in measured}
    shown = [row for row in published if all_published or row.data in measured_data]
    rows = sorted(measured + shown, key=lambda r: (r.data, r.model, r.sampler, r.published, r.source))
    known = {m.key for m in METRICS}
    extras = sorted({k for row in rows for k in row.stats if k not in known})
    for warning in warnings:
        collection.warn(warning)
    return Board(
        rows=rows,
        metrics=[*METRICS, *(Metric(k, k) for k in extras)],
        problems=list(collection.problems),
        warnings=list(collection.warnings),
    )
