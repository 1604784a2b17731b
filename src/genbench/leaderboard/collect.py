"""Find run directories under some roots and read their ``metrics.json`` into rows, one per sampler.

A run directory is any folder holding ``metrics.json``, a ``.hydra/`` folder or a ``checkpoints/`` folder; the walk
does not descend into a run directory. Only runs whose status is ``finished`` become rows; failed, running, unfinished
(no ``metrics.json``) and corrupt runs become :class:`Problem` entries, listed apart and never averaged.

Nothing read is trusted. ``metrics.json`` must be a regular file inside its run directory, of at most
:data:`MAX_METRICS_BYTES`, that parses (a file nested too deeply for the parser is corrupt, not a crash) to an
object naming ``data`` and ``model``; otherwise the run is listed as corrupt, with the reason. Of a readable record
only values of the expected type are kept: a metric (``<metric>@<sampler>`` or one of :data:`RUN_METRICS`) must be a
number, not a string, list or boolean; a protocol a mapping of scalars; a skip reason text. Each dropped value is
a warning naming the run directory and the key. NaN and ±Infinity are kept here, with a warning; the board leaves
them out of the mean (see :mod:`genbench.leaderboard.stats`).

A re-evaluation under another protocol (``other_protocols`` in metrics.json, written by
:func:`genbench.run.record.merge_metrics`: ``{<id>: {"protocol": {...}, "values": {"<metric>@<sampler>": x}}}``) gives
the run further rows, one per sampler and entry, each marked ``reevaluated`` and carrying that entry's protocol, so
the board files them under their own protocol and never averages them with the run's own values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench.run.record import FINISHED, METRICS_FILE, RUNNING, is_live

log = logging.getLogger(__name__)

RUN_MARKERS = (".hydra", "checkpoints")
# Measurements that do not depend on the sampler: repeated on each of a run's rows.
RUN_METRICS = (
    "recon_mse_train",
    "recon_mse_test",
    "recon_psnr_train",
    "recon_psnr_test",
    "recon_ssim_train",
    "recon_ssim_test",
    "probe_linear_acc",
    "probe_1nn_acc",
    "train_seconds",
    "images_per_second",
)
MAX_METRICS_BYTES = 16 * 2**20  # a real metrics.json is a few KiB
MAX_NAME_CHARS = 200  # data, model and sampler names, seeds, metric names
MAX_TEXT_CHARS = 2000  # skip reasons, errors, protocol values as shown (a protocol is compared in full)
MAX_NOTES_PER_RUN = 20  # warnings about dropped values, per run; the rest are counted
MAX_OTHER_PROTOCOLS = 50  # re-evaluations read per run; a real run has a handful
# Characters that must not reach a terminal, a Markdown file or a page: C0/C1 controls (terminal escapes) and the
# bidirectional overrides that reorder what a reader sees.
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def clean_text(text: str) -> str:
    """``text`` with control characters (tab and newline become spaces), lone surrogates (which cannot be written
    as UTF-8) and bidi overrides replaced."""
    if text.isprintable():
        return text
    return "".join(
        " " if c in "\t\n\r" else "\ufffd" if unicodedata.category(c) in ("Cc", "Cs") or c in _BIDI else c
        for c in text
    )


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(value: Any, limit: int = 60) -> str:
    """A short, safe description of a JSON value for a warning: its type and the start of its text."""
    kind = {bool: "boolean", str: "string", list: "list", dict: "object", type(None): "null"}.get(
        type(value), type(value).__name__
    )
    if value is None:
        return "null"
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (RecursionError, ValueError, TypeError):
        text = "…"
    return f"{kind} {clip(clean_text(repr(text) if isinstance(value, str) else text), limit)}"


def display_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


@dataclass(frozen=True)
class Run:
    """A finished run: its folder, its ``metrics.json`` object with only well-typed values left, and what was
    dropped from it (one warning each)."""

    path: Path
    metrics: dict[str, Any]
    notes: tuple[str, ...] = ()

    @property
    def data(self) -> str:
        return self.metrics["data"]

    @property
    def model(self) -> str:
        return self.metrics["model"]

    @property
    def seed(self) -> Any:
        return self.metrics.get("seed")

    @property
    def samplers(self) -> list[str]:
        """The samplers named in the run's own ``<metric>@<sampler>`` keys, sorted."""
        return sorted({k.rsplit("@", 1)[1] for k, v in self.metrics.items() if "@" in k and _is_number(v)})

    def own_samples_sampler(self) -> str | None:
        """The sampler that drew the run's ``samples.png``: its ``sampler`` field (what training and evaluation
        sample with), else its only sampler; None when it has several and names none."""
        if self.metrics.get("sampler"):
            return str(self.metrics["sampler"])
        samplers = self.samplers
        return samplers[0] if len(samplers) == 1 else None


@dataclass(frozen=True)
class Problem:
    """A run that is not averaged in: failed, running, unfinished (no metrics.json) or corrupt."""

    path: Path
    status: str
    error: str = ""


@dataclass(frozen=True)
class RunRow:
    """One (run, sampler) pair: ``values`` maps a metric name without its ``@sampler`` suffix to a number (NaN and
    ±inf included); ``protocols`` maps the same names to the protocol record of the value. ``reevaluated``: the
    values come from one of the run's ``other_protocols`` entries, not from its own evaluation."""

    run: Run
    sampler: str
    values: dict[str, float]
    protocols: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    reevaluated: bool = False


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        message = clean_text(message)
        log.warning(message)
        self.warnings.append(message)


class UnsafeFile(ValueError):
    """A file a run directory names that the leaderboard will not read: it resolves outside the run directory, is
    not a regular file, or its name is not a plain file name."""


def is_plain_name(name: str) -> bool:
    """Whether ``name`` names a file in its folder and nothing else: no separator, no ``..``, no NUL."""
    if not name or name in (".", "..") or any(c in name for c in ("/", "\\", "\0")):
        return False
    try:
        return len(os.fsencode(name)) <= 255
    except UnicodeError:  # a lone surrogate
        return False


def contained_file(run_dir: Path, name: str) -> Path | None:
    """The resolved path of the regular file ``run_dir/name``, None when there is none; raises
    :class:`UnsafeFile` when ``name`` is not a plain name, or the file resolves outside ``run_dir`` (a symlink
    out), or is not a regular file (a folder, a FIFO, a device)."""
    if not is_plain_name(name):
        raise UnsafeFile(f"{name!r} is not a plain file name")
    candidate = run_dir / name
    try:
        resolved = candidate.resolve(strict=True)
        root = run_dir.resolve(strict=True)
        mode = os.stat(resolved).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.lexists(candidate):
            raise UnsafeFile(f"{name} is a broken link") from None
        return None
    except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before Python 3.13), permissions
        raise UnsafeFile(f"cannot resolve {name}: {err}") from err
    if not resolved.is_relative_to(root):
        raise UnsafeFile(f"{name} resolves outside the run directory, to {resolved}")
    if not stat.S_ISREG(mode):
        raise UnsafeFile(f"{name} is not a regular file")
    return resolved


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (not followed if a link); raises ValueError when it is not a regular
    file or holds more than ``limit`` bytes, OSError when it cannot be opened. Never blocks on a FIFO."""
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    )
    with os.fdopen(os.open(path, flags), "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path.name} is not a regular file")
        if info.st_size > limit:
            raise ValueError(
                f"{path.name} is {info.st_size} bytes, over the {limit} bytes the leaderboard reads"
            )
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is over the {limit} bytes the leaderboard reads")
    return data


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or any((path / marker).is_dir() for marker in RUN_MARKERS)


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories at or below ``root``, sorted; hidden folders are not searched, links are not followed."""
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


def _text(value: Any) -> str:
    """A record's free text (status, error) as safe, bounded text, whatever JSON type it has."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clip(clean_text(value))
    try:
        return clip(clean_text(json.dumps(value)))
    except (RecursionError, ValueError, TypeError):
        return f"<unreadable {type(value).__name__}>"


def _name(value: Any) -> str | None:
    """``value`` when it is a usable name: a non-empty string of at most MAX_NAME_CHARS characters."""
    return value if isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS else None


def _clean_protocol(value: dict[str, Any]) -> dict[str, Any]:
    """A protocol record with scalar fields only: a nested value becomes its JSON text; NaN its name."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = repr(v)
        elif v is not None and not isinstance(v, str | int | float | bool):
            try:
                v = json.dumps(v, sort_keys=True)
            except (RecursionError, ValueError, TypeError):
                v = f"<unreadable {type(v).__name__}>"
        out[k] = v
    return out


def _metric_value(where: str, key: str, value: Any, notes: list[str]) -> float | None:
    """``value`` as a float when it is a JSON number (NaN and ±inf noted, kept), else None and a note."""
    if len(key) > 2 * MAX_NAME_CHARS + 1:
        notes.append(f"{where}: a metric key of {len(key)} characters; dropped")
        return None
    if not _is_number(value):
        notes.append(f"{where}: {key}: expected a number, got {describe(value)}; dropped")
        return None
    try:
        number = float(value)
    except OverflowError:
        notes.append(f"{where}: {key}: {describe(value, 20)} is too large for a float; dropped")
        return None
    if not math.isfinite(number):
        notes.append(f"{where}: {key} is {format_nonfinite(number)}; left out of the mean")
    return number


def _clean_other_protocols(where: str, others: Any, notes: list[str]) -> list[dict[str, Any]]:
    """The well-formed entries of ``other_protocols`` as ``[{"protocol": {...}, "values": {key: float}}]``: a
    protocol mapping and ``<metric>@<sampler>`` numbers; a note for everything else."""
    if not isinstance(others, dict):
        notes.append(f"{where}: other_protocols: expected a mapping, got {describe(others)}; ignored")
        return []
    entries = []
    for i, (name, entry) in enumerate(others.items()):
        label = f"other_protocols.{clip(clean_text(str(name)), 100)}"
        if i == MAX_OTHER_PROTOCOLS:
            notes.append(f"{where}: other_protocols: {len(others)} entries, only the first {i} read")
            break
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("protocol"), dict)
            and isinstance(entry.get("values"), dict)
        ):
            notes.append(
                f"{where}: {label}: expected {{'protocol': mapping, 'values': mapping}}, got {describe(entry)}; ignored"
            )
            continue
        values = {}
        for key, value in entry["values"].items():
            if "@" not in key:
                notes.append(f"{where}: {label}.{clip(key, 100)}: not a <metric>@<sampler> key; dropped")
                continue
            number = _metric_value(f"{where}: {label}", key, value, notes)
            if number is not None:
                values[key] = number
        if values:
            entries.append({"protocol": _clean_protocol(entry["protocol"]), "values": values})
    return entries


def clean_record(path: Path, metrics: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The values of a finished run's record that have the type the board expects, and a note for each other."""
    where = display_path(path)
    notes: list[str] = []
    clean: dict[str, Any] = {"status": FINISHED, "data": metrics["data"], "model": metrics["model"]}
    seed = metrics.get("seed")
    if (_is_number(seed) and math.isfinite(seed)) or _name(seed) is not None:
        clean["seed"] = seed
    elif seed is not None:
        notes.append(f"{where}: seed: expected an integer or a name, got {describe(seed)}; ignored")
    for key, check in (("git_commit", _name), ("sampler", _name)):
        if key in metrics and metrics[key] is not None:
            if check(metrics[key]) is None:
                notes.append(f"{where}: {key}: expected a name, got {describe(metrics[key])}; ignored")
            else:
                clean[key] = metrics[key]
    for key, value in metrics.items():
        if "@" in key or key in RUN_METRICS:
            number = _metric_value(where, key, value, notes)
            if number is not None:
                clean[key] = number
    protocols = metrics.get("protocols", {})
    if isinstance(protocols, dict):
        clean["protocols"] = {}
        for key, value in protocols.items():
            if isinstance(value, dict):
                clean["protocols"][key] = _clean_protocol(value)
            else:
                notes.append(
                    f"{where}: protocols.{clip(key, 100)}: expected a mapping, got {describe(value)}"
                )
    else:
        notes.append(f"{where}: protocols: expected a mapping, got {describe(protocols)}; ignored")
    skipped = metrics.get("skipped", {})
    if isinstance(skipped, dict):
        clean["skipped"] = {clip(k, MAX_NAME_CHARS): _text(v) for k, v in skipped.items()}
    else:
        notes.append(f"{where}: skipped: expected a mapping, got {describe(skipped)}; ignored")
    clean["other_protocols"] = _clean_other_protocols(where, metrics.get("other_protocols", {}), notes)
    if len(notes) > MAX_NOTES_PER_RUN:
        notes[MAX_NOTES_PER_RUN:] = [f"{where}: and {len(notes) - MAX_NOTES_PER_RUN} more values dropped"]
    return clean, notes


def format_nonfinite(x: float) -> str:
    return "NaN" if math.isnan(x) else ("+Infinity" if x > 0 else "-Infinity")


def read_metrics_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in the run directory ``path``'s metrics.json, as written (nothing checked but that it is
    an object); None when there is none. Raises ValueError when it is corrupt, unsafe or too large."""
    where = display_path(path / METRICS_FILE)
    try:
        metrics_file = contained_file(path, METRICS_FILE)
    except UnsafeFile as err:
        raise ValueError(f"{where}: {err}") from err
    if metrics_file is None:
        return None
    try:
        raw = read_regular_file(metrics_file, MAX_METRICS_BYTES)
    except OSError as err:
        raise ValueError(f"cannot read {where}: {err}") from err
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    try:
        metrics = json.loads(raw)
    except RecursionError as err:
        raise ValueError(f"cannot read {where}: nested too deeply to parse") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise ValueError(f"cannot read {where}: {clip(clean_text(str(err)), 300)}") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"{where} holds a JSON {type(metrics).__name__}, not an object")
    return metrics


def read_run(path: Path) -> Run | Problem:
    """Parse one run directory. Raises ValueError when metrics.json is corrupt, unsafe or too large."""
    where = display_path(path / METRICS_FILE)
    metrics = read_metrics_object(path)
    if metrics is None:
        return Problem(path, "unfinished", "no metrics.json")
    status = metrics.get("status")
    if status == RUNNING:
        try:
            live = is_live(metrics)
        except (TypeError, ValueError, OverflowError):
            return Problem(path, RUNNING, "pid/host unreadable: cannot tell whether the process is alive")
        if not live:  # SIGKILL, OOM killer, power loss: nothing else was written
            return Problem(
                path,
                "killed",
                f"process {_text(metrics.get('pid'))} on {_text(metrics.get('host'))} is gone; "
                "resume=true continues it",
            )
    if status != FINISHED:
        return Problem(path, _text(status) or "no status", _text(metrics.get("error")))
    for key in ("data", "model"):
        if _name(metrics.get(key)) is None:
            raise ValueError(
                f"{where}: finished run without a '{key}' name (got {describe(metrics.get(key))}; "
                f"a name is a string of 1 to {MAX_NAME_CHARS} characters)"
            )
    clean, notes = clean_record(path, metrics)
    return Run(path, clean, tuple(notes))


def collect(roots: Iterable[str | Path]) -> Collection:
    """Read every run under ``roots``; a corrupt metrics.json is warned about and skipped, and so is each value of
    the wrong type."""
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
                collection.problems.append(Problem(path, "corrupt", clean_text(str(err))))
                continue
            if isinstance(result, Run):
                collection.runs.append(result)
                for note in result.notes:
                    collection.warn(note)
            else:
                collection.problems.append(result)
    return collection


def _split_by_sampler(values: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"fid@a": 1, "kid@a": 2, "fid@b": 3}`` -> ``{"a": {"fid": 1, "kid": 2}, "b": {"fid": 3}}`` (numbers only)."""
    per_sampler: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        if "@" in key and _is_number(value):
            metric, sampler = key.rsplit("@", 1)
            per_sampler.setdefault(sampler, {})[metric] = float(value)
    return per_sampler


def run_rows(run: Run) -> list[RunRow]:
    """Split a run into one row per sampler named in its ``<metric>@<sampler>`` keys, then one row per sampler of
    each ``other_protocols`` entry (``reevaluated``, with that entry's protocol on every value).

    A run with no generative metric gives one row under its ``sampler`` field (or ``""``). NaN and ±inf are kept:
    the board counts them apart from the mean. Run-level metrics (training time, reconstruction) are repeated on
    every row, re-evaluated ones included, since they belong to the run whatever protocol judged its samples.
    """
    shared = {k: float(run.metrics[k]) for k in RUN_METRICS if _is_number(run.metrics.get(k))}
    per_sampler = _split_by_sampler(run.metrics)
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
    for entry in run.metrics.get("other_protocols", ()):
        for sampler, values in sorted(_split_by_sampler(entry["values"]).items()):
            protocol = entry["protocol"]
            rows.append(RunRow(run, sampler, {**values, **shared}, dict.fromkeys(values, protocol), {}, True))
    return rows
