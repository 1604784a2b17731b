"""``<sweep dir>/summary.md`` at the end of a multirun: one row per job, read from each job's ``metrics.json``.

A Hydra callback (``conf/config.yaml``: ``hydra.callbacks.sweep_summary``). ``on_multirun_end`` prints the table
and writes it atomically. Hydra's basic sweeper stops a sweep at its first failed job and then never calls
``on_multirun_end``, so the summary is also written when the process exits after an ``on_multirun_start`` without
an end (it then says the sweep ended early). Nothing here may fail the sweep: errors are logged, never raised.

Also usable by hand: ``python -m genbench.run.sweep_summary <sweep dir>``.
"""

from __future__ import annotations

import atexit
import logging
import math
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from genbench.run.record import METRICS_FILE, RUNNING, is_live, read_record

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"
# Metric columns, in this order: exact keys, or prefixes ending in "@" (one column per sampler found).
KEY_METRICS = ("fid_classifier@", "fid_inception@", "recon_mse_test", "train_seconds")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The jobs' folders under ``sweep_dir``: those with a ``metrics.json`` or Hydra's ``.hydra/``, in job order
    (the leading job number of Hydra's subdir names, then the name)."""
    found = {
        p.parent for p in sweep_dir.rglob(METRICS_FILE) if ".hydra" not in p.relative_to(sweep_dir).parts
    }
    found |= {p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()}
    found.discard(sweep_dir)

    def order(path: Path) -> tuple[Any, ...]:
        rel = path.relative_to(sweep_dir).parts
        return tuple(
            (int(m.group()), part) if (m := re.match(r"\d+", part)) else (math.inf, part) for part in rel
        )

    return sorted(found, key=order)


def metric_columns(records: Iterable[dict[str, Any]]) -> list[str]:
    keys = {
        k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    columns: list[str] = []
    for wanted in KEY_METRICS:
        if wanted.endswith("@"):
            columns += sorted(k for k in keys if k.startswith(wanted))
        elif wanted in keys:
            columns.append(wanted)
    return columns


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def note(record: dict[str, Any]) -> str:
    """What a reader of the table needs beyond the status: the error, where an interruption stopped, a dead run."""
    status = record.get("status")
    if status == "failed":
        error = str(record.get("error", "")).strip().splitlines()
        return (error[0] if error else "")[:120]
    if status == "interrupted":
        return f"{record.get('signal', 'signal')} at epoch {record.get('epoch')}, step {record.get('global_step')}"
    if status == RUNNING and not is_live(record):
        return "process gone (killed?)"
    return ""


def job_overrides(job_dir: Path) -> list[str]:
    """The job's command-line overrides (Hydra's ``.hydra/overrides.yaml``), [] when unreadable."""
    import yaml

    try:
        loaded = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in loaded] if isinstance(loaded, list) else []


def summary_rows(sweep_dir: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the sweep's table: job folder, identity, status, the overrides that differ between jobs,
    key metrics and a note."""
    jobs = [(d, read_record(d), job_overrides(d)) for d in job_dirs(sweep_dir)]
    metrics = metric_columns(r for _, r, _ in jobs if r)
    known = [set(o) for _, _, o in jobs if o]
    common = set.intersection(*known) if len(known) > 1 else set().union(*known)
    header = ["job", "model", "data", "seed", "status", "overrides", *metrics, "note"]
    rows = []
    for folder, record, overrides in jobs:
        job = folder.relative_to(sweep_dir).as_posix()
        varying = " ".join(o for o in overrides if o not in common)
        if record is None:
            rows.append([job, "", "", "", "no record", varying, *[""] * len(metrics), "no metrics.json"])
            continue
        rows.append(
            [
                job,
                fmt(record.get("model")),
                fmt(record.get("data")),
                fmt(record.get("seed")),
                fmt(record.get("status")),
                varying,
                *[fmt(record.get(m)) for m in metrics],
                note(record),
            ]
        )
    return header, [[cell.replace("|", "/").replace("\n", " ") for cell in row] for row in rows]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown(sweep_dir: Path, header: list[str], rows: list[list[str]], ended_early: bool = False) -> str:
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row[4]] = statuses.get(row[4], 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none"
    lines = [
        f"# Sweep summary: {sweep_dir.name}",
        "",
        f"{len(rows)} jobs ({counts}); written {time.strftime('%Y-%m-%d %H:%M:%S')} from each job's {METRICS_FILE}."
        + (" The sweep ended early (a job failed or the sweep was stopped)." if ended_early else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    return "\n".join(lines)


def write_summary(sweep_dir: str | Path, ended_early: bool = False, echo: bool = True) -> Path | None:
    """Write ``<sweep_dir>/summary.md`` (and print the table when ``echo``); return its path. Never raises: on an
    error it logs a warning and returns None."""
    try:
        from genbench.io import atomic_path

        sweep_dir = Path(sweep_dir)
        if not sweep_dir.is_dir():
            log.warning("sweep summary skipped: no sweep directory %s", sweep_dir)
            return None
        header, rows = summary_rows(sweep_dir)
        path = sweep_dir / SUMMARY_FILE
        with atomic_path(path) as tmp:
            tmp.write_text(markdown(sweep_dir, header, rows, ended_early))
        if echo:
            print(f"\nsweep summary ({path}):\n{text_table(header, rows)}\n", flush=True)
        log.info("sweep summary written to %s", path)
        return path
    except Exception as exc:  # a summary must never fail the sweep
        log.warning("sweep summary not written: %s: %s", type(exc).__name__, exc)
        return None


def _sweep_dir(config: Any) -> Path | None:
    try:
        return Path(str(config.hydra.sweep.dir))
    except Exception as exc:
        log.warning("sweep summary skipped: no hydra.sweep.dir (%s)", exc)
        return None


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; keep the module importable regardless
    Callback = object  # type: ignore[assignment,misc]


class SweepSummary(Callback):
    """Writes ``summary.md`` into the sweep directory when a multirun ends (or its process exits early)."""

    def __init__(self) -> None:
        self._pending: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            self._pending = _sweep_dir(config)
            if self._pending is not None:
                atexit.register(self._at_exit)
        except Exception as exc:
            log.warning("sweep summary: %s", exc)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        try:
            sweep_dir = self._pending or _sweep_dir(config)
            self._pending = None
            atexit.unregister(self._at_exit)
            if sweep_dir is not None:
                write_summary(sweep_dir)
        except Exception as exc:
            log.warning("sweep summary not written: %s", exc)

    def _at_exit(self) -> None:
        if self._pending is not None:
            sweep_dir, self._pending = self._pending, None
            write_summary(sweep_dir, ended_early=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m genbench.run.sweep_summary <sweep dir>", file=sys.stderr)
        return 2
    return 0 if write_summary(args[0]) is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
