"""Read published reference numbers (``experiments/published.yaml``) into board rows.

An entry's ``comparable_when`` (protocol fields, e.g. ``{n_gen: 10000, n_ref: 10000, reference_split: test}``) says
when a measured column was judged as the paper judged: only then does the number sit in that table; without it (a
protocol genbench cannot reproduce, such as TensorFlow's Inception) the number is listed apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from genbench.leaderboard.stats import METRICS, BoardRow, Stat

ENTRY_FIELDS = {"name", "model", "sampler", "source", "protocol", "verified", "comparable_when"}
METRIC_KEYS = {m.key for m in METRICS}


def _number(value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return number


def parse_published(entries: Any, origin: str = "published numbers") -> list[BoardRow]:
    """Validate the YAML list strictly (unknown keys fail) and expand it to one row per (entry, dataset)."""
    if not isinstance(entries, list):
        raise ValueError(f"{origin}: expected a list of entries")
    rows = []
    for i, entry in enumerate(entries):
        where = f"{origin}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping")
        unknown = set(entry) - ENTRY_FIELDS - METRIC_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        missing = {"name", "model", "sampler", "source", "protocol", "verified"} - set(entry)
        if missing:
            raise ValueError(f"{where}: missing keys {sorted(missing)}")
        if not isinstance(entry["verified"], bool):
            raise ValueError(f"{where}: 'verified' must be true or false")
        when = entry.get("comparable_when")
        if when is not None and (
            not isinstance(when, dict)
            or not when
            or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in when.values())
        ):
            raise ValueError(
                f"{where}.comparable_when: expected a mapping of protocol fields to values, or null"
            )
        per_data: dict[str, dict[str, Stat]] = {}
        for metric in sorted(set(entry) & METRIC_KEYS):
            if not isinstance(entry[metric], dict):
                raise ValueError(f"{where}.{metric}: expected a mapping dataset -> {{mean, std}}")
            for data, value in entry[metric].items():
                if not isinstance(value, dict) or set(value) - {"mean", "std"} or "mean" not in value:
                    raise ValueError(f"{where}.{metric}.{data}: expected {{mean, std}}")
                std = value.get("std")
                per_data.setdefault(str(data), {})[metric] = Stat(
                    mean=_number(value["mean"], f"{where}.{metric}.{data}.mean"),
                    std=None if std is None else _number(std, f"{where}.{metric}.{data}.std"),
                    count=None,
                )
        for data, stats in sorted(per_data.items()):
            rows.append(
                BoardRow(
                    data=data,
                    model=str(entry["model"]),
                    sampler=str(entry["sampler"]),
                    source=f"{entry['name']}; {entry['source']}",
                    n=None,
                    stats=stats,
                    protocol=str(entry["protocol"]),
                    verified=entry["verified"],
                    comparable_when=None if when is None else tuple(sorted(when.items())),
                )
            )
    return rows


def load_published(path: str | Path) -> list[BoardRow]:
    import yaml  # PyYAML comes with Hydra; imported here to keep `import genbench.leaderboard` minimal

    path = Path(path)
    return parse_published(yaml.safe_load(path.read_text()), str(path))
