"""What the runs ran on: each distinct machine, set of library versions and git commit in their ``metrics.json``
(``machine``, ``versions``, ``git_commit``), with how many runs share it. A run that recorded none counts as
"not recorded"; a value of an unexpected type is shown as text, never trusted as a mapping.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from genbench.leaderboard.collect import clean_text, clip

MACHINE_FIELDS = (  # (key in metrics.json's "machine", how it is shown)
    ("platform", "{}"),
    ("processor", "{}"),
    ("cpu_count", "{} CPUs"),
    ("torch_threads", "{} torch threads"),
    ("device", "device {}"),
)
NOT_RECORDED = "not recorded"


def _scalar(value: Any) -> str:
    return clip(clean_text(str(value)), 200)


def machine_text(record: dict[str, Any]) -> str:
    """``Linux-6.8-x86_64, AMD EPYC 7B13, 16 CPUs, 1 torch threads, device cpu``; fields absent are left out."""
    machine = record.get("machine")
    if not isinstance(machine, dict):
        return NOT_RECORDED if machine is None else _scalar(machine)
    parts = [
        form.format(_scalar(machine[key])) for key, form in MACHINE_FIELDS if machine.get(key) is not None
    ]
    return ", ".join(parts) or NOT_RECORDED


def versions_text(record: dict[str, Any]) -> str:
    """``python 3.12.3, torch 2.4.1, ...`` in the record's order."""
    versions = record.get("versions")
    if not isinstance(versions, dict):
        return NOT_RECORDED if versions is None else _scalar(versions)
    return ", ".join(f"{_scalar(k)} {_scalar(v)}" for k, v in versions.items()) or NOT_RECORDED


def commit_text(record: dict[str, Any]) -> str:
    commit = record.get("git_commit")
    return NOT_RECORDED if commit in (None, "") else _scalar(commit)


def distinct(texts: Iterable[str]) -> list[tuple[str, int]]:
    """Each distinct text with its count, the most common first (ties: first seen first)."""
    return Counter(texts).most_common()


def provenance(records: list[dict[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    """``{"machine": [(text, runs)], "libraries": [...], "git commit": [...]}`` over ``records``."""
    return {
        "machine": distinct(machine_text(r) for r in records),
        "libraries": distinct(versions_text(r) for r in records),
        "git commit": distinct(commit_text(r) for r in records),
    }
