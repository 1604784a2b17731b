"""Find run directories under some roots and read their ``metrics.json`` into rows, one per sampler.

A run directory is any folder holding ``metrics.json``, a ``.hydra/`` folder or a ``checkpoints/`` folder; the walk
does not descend into a run directory. Only runs whose status is ``finished`` become rows; failed, running, unfinished
(no ``metrics.json``) and corrupt runs become :class:`Problem` entries, listed apart and never averaged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench.run.record import FINISHED, METRICS_FILE, RUNNING, is_live

log = logging.getLogger(__name__)

RUN_MARKERS = (".hydra", "checkpoints")
# Measurements that do not depend on the sampler: repeated on each of a run's rows.
RUN_METRICS = ("recon_mse_train", "recon_mse_test", "train_seconds", "images_per_second")


@dataclass(frozen=True)
class Run:
    """A finished run: its folder and its parsed ``metrics.json`` object."""

    path: Path
    metrics: dict[str, Any]

    @property
    def data(self) -> str:
        return self.metrics["data"]

    @property
    def model(self) -> str:
        return self.metrics["model"]

    @property
    def seed(self) -> Any:
        return self.metrics.get("seed")


@dataclass(frozen=True)
class Problem:
    """A run that is not averaged in: failed, running, unfinished (no metrics.json) or corrupt."""

    path: Path
    status: str
    error: str = ""


@dataclass(frozen=True)
class RunRow:
    """One (run, sampler) pair: ``values`` maps a metric name without its ``@sampler`` suffix to a number."""

    run: Run
    sampler: str
    values: dict[str, float]
    protocols: dict[str, dict[str, Any]]
    skipped: dict[str, str]


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or any((path / marker).is_dir() for marker in RUN_MARKERS)


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories at or below ``root``, sorted; hidden folders are not searched."""
    found = []
    for folder, subdirs, _ in os.walk(root):
        if is_run_dir(Path(folder)):
            found.append(Path(folder))
            subdirs.clear()  # a run's own checkpoints/ or logs are not runs
        else:
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return sorted(found)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_run(path: Path) -> Run | Problem:
    """Parse one run directory. Raises ValueError when metrics.json is corrupt."""
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        return Problem(path, "unfinished", "no metrics.json")
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {metrics_path}: {err}") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"{metrics_path} holds a JSON {type(metrics).__name__}, not an object")
    status = metrics.get("status")
    if status == RUNNING and not is_live(
        metrics
    ):  # SIGKILL, OOM killer, power loss: nothing else was written
        return Problem(
            path,
            "killed",
            f"process {metrics.get('pid')} on {metrics.get('host')} is gone; resume=true continues it",
        )
    if status != FINISHED:
        return Problem(
            path, str(status) if status is not None else "no status", str(metrics.get("error") or "")
        )
    for key in ("data", "model"):
        if not isinstance(metrics.get(key), str) or not metrics[key]:
            raise ValueError(f"{metrics_path}: finished run without a '{key}' name")
    return Run(path, metrics)


def collect(roots: Iterable[str | Path]) -> Collection:
    """Read every run under ``roots``; a corrupt metrics.json is warned about and skipped."""
    collection = Collection()
    seen: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            collection.warn(f"run root {root} does not exist; skipped")
            continue
        for path in find_run_dirs(root):
            if path.resolve() in seen:  # overlapping roots
                continue
            seen.add(path.resolve())
            try:
                result = read_run(path)
            except ValueError as err:
                collection.warn(f"corrupt run skipped: {err}")
                collection.problems.append(Problem(path, "corrupt", str(err)))
                continue
            if isinstance(result, Run):
                collection.runs.append(result)
            else:
                collection.problems.append(result)
    return collection


def run_rows(run: Run) -> list[RunRow]:
    """Split a run into one row per sampler named in its ``<metric>@<sampler>`` keys.

    A run with no generative metric gives one row under its ``sampler`` field (or ``""``). Non-numeric values are
    ignored; NaN is kept so that a diverged run shows as such.
    """
    shared = {k: float(run.metrics[k]) for k in RUN_METRICS if _is_number(run.metrics.get(k))}
    per_sampler: dict[str, dict[str, float]] = {}
    for key, value in run.metrics.items():
        if "@" in key and _is_number(value):
            metric, sampler = key.rsplit("@", 1)
            per_sampler.setdefault(sampler, {})[metric] = float(value)
    if not per_sampler:
        per_sampler[str(run.metrics.get("sampler") or "")] = {}
    protocols = run.metrics.get("protocols") if isinstance(run.metrics.get("protocols"), dict) else {}
    skipped = run.metrics.get("skipped") if isinstance(run.metrics.get("skipped"), dict) else {}
    rows = []
    for sampler, values in sorted(per_sampler.items()):
        row_protocols = {
            k.rsplit("@", 1)[0]: v
            for k, v in protocols.items()
            if isinstance(v, dict) and k.endswith(f"@{sampler}")
        }
        rows.append(
            RunRow(
                run,
                sampler,
                {**values, **shared},
                row_protocols,
                {str(k): str(v) for k, v in skipped.items()},
            )
        )
    return rows
