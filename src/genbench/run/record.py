"""The run record, ``<run_dir>/metrics.json``: its statuses, how it is written, and how re-evaluations merge in.

Every run writes one, and it always tells the truth about the run's outcome:

- ``running``: written when training starts (with ``pid`` and ``host``, so a reader can tell a live run from one
  killed with SIGKILL, which leaves no chance to write anything else);
- ``finished``: training and the final evaluation ended, ``checkpoints/last.ckpt`` holds the final weights;
  ``batches_seen`` and ``images_seen`` say how much it trained (the whole run, across resumes and DDP ranks) and
  ``global_step`` is Lightning's count of optimiser steps (several a batch for multi-optimiser models);
- ``interrupted``: a signal (SIGTERM, SIGUSR1, SIGINT) stopped the run after a checkpoint was saved; ``resume=true``
  continues it; ``signal``, ``epoch``, ``batches_seen`` and ``global_step`` say where;
- ``failed``: an error ended it (``error`` says which); ``unfinished``: written by ``genbench.evaluate`` for a run
  that has no record of its own.

Exit codes of ``python -m genbench`` (``EXIT_*``): 0 finished, 1 failed, 2 a user error (bad config value, missing
or corrupt file, unwritable folder), 128 + the signal number when interrupted (143 for SIGTERM, 138 for SIGUSR1,
130 for SIGINT), as a shell reports a process killed by that signal.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from genbench.io import write_json

METRICS_FILE = "metrics.json"

RUNNING = "running"
FINISHED = "finished"
INTERRUPTED = "interrupted"
FAILED = "failed"
UNFINISHED = "unfinished"
STATUSES = (RUNNING, FINISHED, INTERRUPTED, FAILED, UNFINISHED)

EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2


def exit_code_for_signal(signum: int) -> int:
    return 128 + int(signum)


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's record, or None when it has none (or an unreadable one)."""
    path = metrics_path(run_dir)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # ValueError: JSON, huge integers
        return None
    return record if isinstance(record, dict) else None


def write_record(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Atomically replace the run's record."""
    if record.get("status") not in STATUSES:
        raise ValueError(f"unknown run status {record.get('status')!r}; one of {STATUSES}")
    write_json(metrics_path(run_dir), record)


def identity(model: str | None, data: str, image_size: int, seed: Any) -> dict[str, Any]:
    """The fields that name a run in every record, whatever its status."""
    return {"model": model, "data": data, "image_size": image_size, "seed": seed}


def running_record(who: dict[str, Any], resumed_from: str | None = None) -> dict[str, Any]:
    record = {
        "status": RUNNING,
        **who,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if resumed_from:
        record["resumed_from"] = resumed_from
    return record


def seen(batches: int | None, images: int | None) -> dict[str, int]:
    """``batches_seen`` / ``images_seen`` of a record: training batches (steps of the loop) and their images on
    every rank; the counts that are known."""
    counts = {"batches_seen": batches, "images_seen": images}
    return {key: int(value) for key, value in counts.items() if value is not None}


def failure_record(who: dict[str, Any], error: str, **where: Any) -> dict[str, Any]:
    return {"status": FAILED, **who, "error": error, **where}


def interrupted_record(
    who: dict[str, Any],
    signal_name: str,
    epoch: int,
    global_step: int,
    checkpoint: str | None,
    checkpoint_at: tuple[int, int] | None,
    **counts: int,
) -> dict[str, Any]:
    """``epoch``/``global_step`` (and ``counts``, from :func:`seen`): where training stopped; ``checkpoint_*``:
    where resuming will continue from."""
    record = {
        "status": INTERRUPTED,
        **who,
        "signal": signal_name,
        "epoch": epoch,
        **counts,
        "global_step": global_step,
        "checkpoint": checkpoint,
        "resume": "run the same command with resume=true",
    }
    if checkpoint and checkpoint_at is not None:
        record["checkpoint_epoch"], record["checkpoint_global_step"] = checkpoint_at
    return record


def is_live(record: dict[str, Any]) -> bool:
    """Whether a ``running`` record's process is still alive (on this host; another host's run is assumed live).

    Raises TypeError for a pid that is not a number: the caller says it cannot tell."""
    if record.get("status") != RUNNING:
        return False
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def protocol_id(protocol: dict[str, Any]) -> str:
    """A short stable name for a protocol record (the key its results are kept under in ``other_protocols``)."""
    import hashlib

    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:12]


def merge_metrics(existing: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """``existing`` metrics updated with a re-evaluation's ``results``; protocols never mix.

    A metric is replaced only by a value of the same protocol (or added where it had none); a value measured under
    another protocol (another N, reference split or feature extractor) goes to ``other_protocols[<id>]`` as
    ``{"protocol": ..., "values": {...}}`` and the run's own value stays. A metric that now has a value loses its
    skip record; a new skip record is kept only where no value exists.
    """
    merged = {k: v for k, v in existing.items()}
    old_protocols = existing.get("protocols", {}) if isinstance(existing.get("protocols"), dict) else {}
    new_protocols = results.get("protocols", {})
    protocols = dict(old_protocols)
    others: dict[str, Any] = {k: dict(v) for k, v in existing.get("other_protocols", {}).items()}
    for key, value in results.items():
        if key in ("protocols", "skipped"):
            continue
        new, old = new_protocols.get(key), old_protocols.get(key)
        if key in existing and new is not None and old is not None and new != old:
            entry = others.setdefault(protocol_id(new), {"protocol": new, "values": {}})
            entry["values"][key] = value
            continue
        merged[key] = value
        if new is not None:
            protocols[key] = new
    merged["protocols"] = protocols
    merged["other_protocols"] = others
    valued = {key.split("@")[0] for key in merged if isinstance(merged[key], int | float)}
    skipped = {**existing.get("skipped", {}), **results.get("skipped", {})}
    merged["skipped"] = {name: reason for name, reason in skipped.items() if name not in valued}
    for key in ("protocols", "skipped", "other_protocols"):
        if not merged[key]:
            del merged[key]
    return merged
