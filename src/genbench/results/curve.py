"""Learning curves from each run's ``metrics.json`` ``curve``, the periodic evaluations made during training::

    "curve": {"points": [{"epoch": 1, "batches_seen": 469, "images_seen": 60000, "train_loop_seconds": 14.2,
                          "values": {"fid_classifier@prior": 40.1, "recon_mse_test": 0.02, ...}}, ...],
              "protocols": {"fid_classifier@prior": {"n_gen": 1000, ...}}}

A value is looked up as ``<metric>@<own sampler>`` (the sampler the run trains and samples with), else as
``<metric>`` (a sampler-independent one). Nothing is trusted: a curve or point of the wrong shape, an epoch that
is not a whole number, a time or value that is not a finite number (NaN, a string, a boolean) is left out with a
warning naming the run and the point; nothing raises. Runs of one (model, sampler) are averaged per epoch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genbench.leaderboard.collect import Run, clip, describe, display_path
from genbench.leaderboard.stats import Protocol
from genbench.results.runs import as_protocol, own_sampler, seed_order

MAX_POINTS = 10_000  # a real curve has a point per epoch
MAX_WARNINGS_PER_RUN = 5


@dataclass(frozen=True)
class CurvePoint:
    epoch: int
    seconds: float  # the training loop's own seconds at this evaluation
    images_seen: int | None
    values: dict[str, float]  # metric (without "@sampler") -> a finite value


@dataclass
class ModelCurve:
    """The curves of the runs of one model with its own sampler: (run, points) each, points sorted by epoch."""

    model: str
    sampler: str
    runs: list[tuple[Run, list[CurvePoint]]] = field(default_factory=list)

    def mean_points(self, metric: str) -> list[tuple[float, float]]:
        """(mean seconds, mean value) per epoch over the runs that have ``metric`` at that epoch."""
        by_epoch: dict[int, list[CurvePoint]] = {}
        for _, points in self.runs:
            for point in points:
                if metric in point.values:
                    by_epoch.setdefault(point.epoch, []).append(point)
        return [
            (statistics.fmean(p.seconds for p in ps), statistics.fmean(p.values[metric] for p in ps))
            for _, ps in sorted(by_epoch.items())
        ]

    def final_points(self) -> list[CurvePoint]:
        """Each run's last point (its highest epoch)."""
        return [points[-1] for _, points in self.runs if points]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def read_curve(
    run: Run, record: dict[str, Any], sampler: str, metrics: tuple[str, ...], warn: Callable[[str], None]
) -> list[CurvePoint]:
    """The run's curve points holding at least one of ``metrics``, sorted by epoch (a repeated epoch, after a
    resume: the last one kept); each point or value left out is a warning (at most MAX_WARNINGS_PER_RUN)."""
    where = display_path(run.path)
    notes: list[str] = []
    curve = record.get("curve")
    if curve is None:
        warn(f"{where}: no curve in metrics.json (periodic evaluations off?); not in the curves")
        return []
    points = curve.get("points") if isinstance(curve, dict) else None
    if not isinstance(points, list):
        warn(f"{where}: curve: expected {{'points': [...]}}, got {describe(curve)}; not in the curves")
        return []
    kept: dict[int, CurvePoint] = {}
    for i, point in enumerate(points[:MAX_POINTS]):
        label = f"{where}: curve point {i}"
        if not isinstance(point, dict):
            notes.append(f"{label}: expected a mapping, got {describe(point)}; skipped")
            continue
        epoch, seconds, values = (
            point.get("epoch"),
            _number(point.get("train_loop_seconds")),
            point.get("values"),
        )
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            notes.append(f"{label}: epoch: expected a whole number, got {describe(epoch)}; skipped")
            continue
        if seconds is None or seconds < 0:
            got = describe(point.get("train_loop_seconds"))
            notes.append(f"{label}: train_loop_seconds: expected a finite number >= 0, got {got}; skipped")
            continue
        if not isinstance(values, dict):
            notes.append(f"{label}: values: expected a mapping, got {describe(values)}; skipped")
            continue
        found = {}
        for metric in metrics:
            key = f"{metric}@{sampler}" if f"{metric}@{sampler}" in values else metric
            if key not in values:
                continue
            number = _number(values[key])
            if number is None:
                notes.append(
                    f"{label}: {clip(key, 100)}: expected a finite number, got {describe(values[key])}; skipped"
                )
            else:
                found[metric] = number
        images = point.get("images_seen")
        images = images if isinstance(images, int) and not isinstance(images, bool) and images >= 0 else None
        if found:
            kept[epoch] = CurvePoint(epoch, seconds, images, found)
    for note in notes[:MAX_WARNINGS_PER_RUN]:
        warn(note)
    if len(notes) > MAX_WARNINGS_PER_RUN:
        warn(f"{where}: and {len(notes) - MAX_WARNINGS_PER_RUN} more curve values skipped")
    return [kept[e] for e in sorted(kept)]


def curve_protocols(
    runs: list[tuple[Run, dict[str, Any]]], sampler: str, metrics: tuple[str, ...]
) -> dict[str, list[Protocol]]:
    """Each metric's distinct protocols (``curve.protocols``) over ``runs`` (run, record), as the board compares
    them: fields sorted by name, a nested value as text; a run that recorded none gives None (not recorded)."""
    out: dict[str, list[Protocol]] = {}
    for _, record in runs:
        curve = record.get("curve")
        protocols = curve.get("protocols") if isinstance(curve, dict) else None
        protocols = protocols if isinstance(protocols, dict) else {}
        for metric in metrics:
            found = protocols.get(f"{metric}@{sampler}", protocols.get(metric))
            protocol = as_protocol(found)
            seen = out.setdefault(metric, [])
            if protocol not in seen:
                seen.append(protocol)
    return out


def model_curves(
    runs: list[Run],
    record_of: Callable[[Run], dict[str, Any]],
    metrics: tuple[str, ...],
    warn: Callable[[str], None],
) -> list[ModelCurve]:
    """One :class:`ModelCurve` per model of ``runs`` (sorted by name) that has a curve: its own sampler's (the one
    most of its runs sample with), over the runs with that sampler, lowest seed first."""
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    curves = []
    for model, members in sorted(by_model.items()):
        sampler = own_sampler(members)
        if sampler is None:
            warn(f"{model}: its runs name no own sampler; not in the curves")
            continue
        curve = ModelCurve(model, sampler)
        for run in sorted(members, key=seed_order):
            if run.own_samples_sampler() == sampler:
                points = read_curve(run, record_of(run), sampler, metrics, warn)
                if points:
                    curve.runs.append((run, points))
        if curve.runs:
            curves.append(curve)
    return curves
