"""Atomic file writes: results are written to a temp file beside the target and renamed into place.

The temp file is named ``.{name}.{host}.{pid}.{random}.tmp`` so that its owner can be identified: a process
killed mid-write leaves it behind, and ``clean_stale_temp_files`` removes those whose process is gone. Before the
rename the temp file gets the mode an ordinary ``open(path, "w")`` would give (``0o666 & ~umask``: 0644 under the
usual umask 022) and its data are fsynced; the folder is fsynced after it (best effort), so a crash leaves either
the old target or the complete new one, never half a file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
# Old-style temps (``tempfile.mkstemp``, no owner in the name) are removed once untouched for this long; so are
# temps written by another host, whose pid cannot be checked from here.
STALE_AFTER_S = 3600.0

_NAME_MAX = 255  # bytes in one path component on Linux file systems
_RANDOM_HEX = 12  # mkstemp's random part has 8 characters: the two kinds of name never overlap
_OWNED = re.compile(
    rf"\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)\.(?P<random>[0-9a-f]{{{_RANDOM_HEX}}})\.tmp",
    re.DOTALL,
)
_OLD_STYLE = re.compile(r"\.(?P<name>.+)\.(?P<random>[a-z0-9_]{8})\.tmp", re.DOTALL)
_umask_lock = threading.Lock()


def _host() -> str:
    """This machine's short host name, reduced to the characters a temp file name allows (at most 32)."""
    short = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", short)[:32] or "host"


def temp_name(target_name: str, pid: int | None = None, host: str | None = None) -> str:
    """The name of a temp file staging ``target_name``: ``.{name}.{host}.{pid}.{random}.tmp`` (``name`` is cut
    short when the whole would exceed 255 bytes)."""
    tail = f".{host or _host()}.{os.getpid() if pid is None else pid}.{secrets.token_hex(_RANDOM_HEX // 2)}"
    tail += TEMP_SUFFIX
    room = _NAME_MAX - len(tail.encode()) - 1
    name = target_name
    while len(os.fsencode(name)) > room:  # cut whole characters, not bytes
        name = name[:-1]
    name = name or "_"
    return f".{name}{tail}"


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``); elsewhere it is
    set and restored at once, under a lock."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def _fsync_file(path: str) -> None:
    """Flush ``path``'s data to disk; file systems that cannot fsync (EINVAL, ENOTSUP) are let be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Best effort: make a rename in ``folder`` durable."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto ``path`` only if the block succeeds.

    The block may write the temp path or replace it (as downloaders do); either way it is given the umask's mode
    and fsynced before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(path.parent / temp_name(path.name))
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            break
        except FileExistsError:  # 48 random bits: practically never
            continue
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):  # no such pid can exist
        return False
    return True


def _stale(name: str, folder: str, now: float) -> bool:
    """Whether ``folder/name`` is a genbench temp file that no live process is writing."""
    owned = _OWNED.fullmatch(name)
    if owned is None and _OLD_STYLE.fullmatch(name) is None:
        return False
    try:
        info = os.lstat(os.path.join(folder, name))
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    if owned is not None and owned["host"] == _host():
        return not _alive(int(owned["pid"]))
    # Old-style names carry no owner, and another host's pid means nothing here: go by the last write.
    return now - info.st_mtime > STALE_AFTER_S


def clean_stale_temp_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temp files of ``atomic_path`` in ``folder`` (and below it when ``recursive``; symlinked
    folders are not followed) that no live process is writing; return the paths removed.

    A temp ``.{name}.{host}.{pid}.{random}.tmp`` of this host goes when its pid is not a live process; one of
    another host, or an old-style ``.{name}.XXXXXXXX.tmp`` (no owner in the name), when untouched for an hour.
    Nothing else is ever touched. Files that vanish meanwhile or that we may not delete are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    for top, dirs, files in os.walk(folder):
        if not recursive:
            dirs.clear()
        for name in files:
            if not name.endswith(TEMP_SUFFIX) or not _stale(name, top, now):
                continue
            stale = Path(top) / name
            try:
                stale.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove stale temp file %s (%s)", stale, exc)
                continue
            removed.append(stale)
    for stale in removed:
        log.debug("removed stale temp file %s", stale)
    return removed


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def torch_save(obj: Any, path: str | Path) -> None:
    """Atomically ``torch.save`` ``obj``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
