"""A section's runs: the leaderboard's collection and board of its roots, plus the parts of each run's
``metrics.json`` the board does not keep (image size, training-set size, machine, versions, flags, curve), read
again through the leaderboard's safe reader and trusted no more than it trusts them.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench.leaderboard.collect import (
    Problem,
    Run,
    clean_text,
    clip,
    collect,
    display_path,
    read_metrics_object,
)
from genbench.leaderboard.stats import Board, Protocol, build_board
from genbench.results.layout import Section

log = logging.getLogger(__name__)

MAX_FLAGS_PER_RUN = 20


@dataclass
class SectionRuns:
    """The finished runs of one section, their board, their raw records (run path -> metrics.json object) and the
    warnings the results found beyond the board's."""

    section: Section
    board: Board
    runs: list[Run]
    records: dict[Path, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        message = clean_text(message)
        log.warning(message)
        self.warnings.append(message)

    @property
    def problems(self) -> list[Problem]:
        return self.board.problems

    @property
    def datasets(self) -> list[str]:
        return sorted({run.data for run in self.runs})

    def runs_of(self, data: str) -> list[Run]:
        return [run for run in self.runs if run.data == data]

    def record(self, run: Run) -> dict[str, Any]:
        return self.records.get(run.path, {})


def load_section(section: Section) -> SectionRuns:
    """Collect the runs under the section's roots and build their board (no published rows: these are ours)."""
    collection = collect(section.roots)
    board = build_board(collection)
    loaded = SectionRuns(section, board, list(collection.runs), {})
    for run in collection.runs:
        try:
            record = read_metrics_object(run.path)
        except ValueError as err:  # rewritten since it was collected
            loaded.warn(f"{display_path(run.path)}: metrics.json unreadable on a second read: {err}")
            record = None
        loaded.records[run.path] = record or {}
    return loaded


def seed_order(run: Run) -> tuple[int, Any, str]:
    """Sort key putting the lowest seed first: numbers, then names, then runs without a seed; then by path."""
    seed = run.seed
    if isinstance(seed, int | float):
        return (0, seed, str(run.path))
    return (1, str(seed), str(run.path)) if seed is not None else (2, "", str(run.path))


def own_sampler(runs: list[Run]) -> str | None:
    """The sampler most of ``runs`` draw their own samples with (``Run.own_samples_sampler``)."""
    counts = Counter(s for s in (run.own_samples_sampler() for run in runs) if s)
    return counts.most_common(1)[0][0] if counts else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _size_text(value: Any) -> str | None:
    """``28`` -> "28×28 px", ``[64, 48]`` -> "64×48 px"; None for anything else."""
    if _count(value):
        return f"{value}×{value} px"
    if isinstance(value, list) and len(value) == 2 and all(_count(v) for v in value):
        return f"{value[0]}×{value[1]} px"
    return None


def data_label(data: str, records: list[dict[str, Any]]) -> str:
    """``mnist (28×28 px, 60,000 training images)`` from the runs' ``image_size`` and ``n_train_images`` (each
    distinct value when the runs differ; left out when none recorded it)."""
    sizes = list(dict.fromkeys(s for s in (_size_text(r.get("image_size")) for r in records) if s))
    counts = list(
        dict.fromkeys(n for n in (_count(r.get("n_train_images")) for r in records) if n is not None)
    )
    parts = []
    if sizes:
        parts.append(" / ".join(sizes))
    if counts:
        parts.append(" / ".join(f"{n:,}" for n in counts) + " training images")
    return f"{data} ({', '.join(parts)})" if parts else data


def flags(run: Run, record: dict[str, Any], warn) -> list[tuple[str, str]]:
    """The run's ``flags`` (name -> text: a sample collapse, a reconstruction-recall ceiling) as safe text."""
    found = record.get("flags")
    if found is None:
        return []
    if not isinstance(found, dict):
        warn(f"{display_path(run.path)}: flags: expected a mapping, got {type(found).__name__}; ignored")
        return []
    out = []
    for name, text in list(found.items())[:MAX_FLAGS_PER_RUN]:
        shown = text if isinstance(text, str) else repr(text)
        out.append((clip(clean_text(str(name)), 200), clip(clean_text(shown), 500)))
    return out


def file_stem(text: str) -> str:
    """A name safe in a file name and a Markdown link: letters, digits, ``.``, ``_`` and ``-`` (others ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80].lstrip(".") or "_"


def as_protocol(value: Any) -> Protocol:
    """A protocol record as the board compares it (fields sorted by name, values as bounded text); None when the
    value is not a mapping (not recorded)."""
    if not isinstance(value, dict):
        return None
    return tuple(sorted((clip(str(k), 200), clip(clean_text(str(v)), 300)) for k, v in value.items()))
