"""Group run rows by (data, model, sampler) and summarise each metric as mean, sample std and count."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from genbench.leaderboard.collect import Collection, Problem, RunRow, run_rows

MEASURED = "measured"


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
    Metric("train_seconds", "train s"),
    Metric("images_per_second", "images/s", True),
)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of ``count`` values; ``std`` is None for a single value."""

    mean: float
    std: float | None
    count: int | None  # None for published numbers, whose run count is not recorded


def summarise(values: Sequence[float]) -> Stat:
    if not values:
        raise ValueError("no values to summarise")
    mean = statistics.fmean(values)
    if len(values) < 2:
        std = None
    elif all(math.isfinite(v) for v in values):
        std = statistics.stdev(values)
    else:  # a diverged run: keep it visible rather than averaging it away
        std = math.nan
    return Stat(mean, std, len(values))


@dataclass(frozen=True)
class BoardRow:
    """One line of a table: a measured group of runs, or a published reference number."""

    data: str
    model: str
    sampler: str
    source: str  # MEASURED, or the citation of a published number
    n: int | None  # runs averaged; None for published rows
    stats: dict[str, Stat]
    protocol: str = ""
    verified: bool | None = None  # published rows only
    runs: tuple[Path, ...] = ()
    samples: Path | None = None  # samples.png of the row's best (lowest FID) or first run
    notes: tuple[str, ...] = ()  # metrics the runs skipped, and why
    git_commits: tuple[str, ...] = ()

    @property
    def published(self) -> bool:
        return self.source != MEASURED

    def fid_key(self) -> str | None:
        """The FID this row is ranked and plotted by: Inception when present, else the classifier one."""
        return next((k for k in ("fid_inception", "fid_classifier") if k in self.stats), None)


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


def _protocol_summary(rows: Iterable[RunRow]) -> str:
    """Distinct evaluation protocols of the rows, the metrics that share one named together."""
    by_protocol: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        for metric, protocol in row.protocols.items():
            text = ", ".join(f"{k}={v}" for k, v in sorted(protocol.items()))
            by_protocol[text].add(metric)
    return "; ".join(f"{', '.join(sorted(metrics))}: {text}" for text, metrics in sorted(by_protocol.items()))


def _samples_of(rows: Sequence[RunRow], sampler: str) -> Path | None:
    """samples_<sampler>.png or samples.png of the run with the lowest FID, else of the first run that has one."""

    def fid(row: RunRow) -> float:
        value = row.values.get("fid_inception", row.values.get("fid_classifier"))
        return value if value is not None and math.isfinite(value) else math.inf

    for row in sorted(rows, key=fid):  # stable: ties keep path order
        for name in (f"samples_{sampler}.png", "samples.png"):
            if (row.run.path / name).is_file():
                return row.run.path / name
    return None


def group(rows: Iterable[RunRow]) -> tuple[list[BoardRow], list[str]]:
    """Average rows over seeds per (data, model, sampler); also return warnings about repeated seeds."""
    groups: dict[tuple[str, str, str], list[RunRow]] = defaultdict(list)
    for row in rows:
        groups[(row.run.data, row.run.model, row.sampler)].append(row)
    board_rows, warnings = [], []
    for (data, model, sampler), members in sorted(groups.items()):
        members.sort(key=lambda r: str(r.run.path))
        values: dict[str, list[float]] = defaultdict(list)
        for member in members:
            for metric, value in member.values.items():
                values[metric].append(value)
        seeds: dict[str, list[str]] = defaultdict(list)
        for member in members:
            if member.run.seed is not None:
                seeds[repr(member.run.seed)].append(str(member.run.path))
        for seed, paths in seeds.items():
            if len(paths) > 1:
                warnings.append(
                    f"{data}/{model}/{sampler}: {len(paths)} runs share seed {seed} and are all averaged: {', '.join(paths)}"
                )
        skipped: dict[tuple[str, str], int] = defaultdict(int)
        for member in members:
            for metric, reason in member.skipped.items():
                skipped[(metric, reason)] += 1
        notes = tuple(
            f"{metric} skipped in {k} of {len(members)} runs: {reason}"
            for (metric, reason), k in sorted(skipped.items())
        )
        commits = sorted(
            {str(m.run.metrics["git_commit"]) for m in members if m.run.metrics.get("git_commit")}
        )
        board_rows.append(
            BoardRow(
                data=data,
                model=model,
                sampler=sampler,
                source=MEASURED,
                n=len(members),
                stats={metric: summarise(vs) for metric, vs in values.items()},
                protocol=_protocol_summary(members),
                runs=tuple(m.run.path for m in members),
                samples=_samples_of(members, sampler),
                notes=notes,
                git_commits=tuple(commits),
            )
        )
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
