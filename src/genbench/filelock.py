"""An exclusive inter-process lock on a file (``fcntl.flock``), so that concurrent runs do a shared job once.

The lock belongs to the open file: the kernel releases it when its holder exits, however it dies, so a killed
process never leaves a lock held. The lock file itself stays (deleting it would race with a process about to lock
it); it is empty and made with the umask's mode, so colleagues sharing a cache can take it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locking, every process does the job itself
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def _open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the kernel applies the umask
    except PermissionError:  # made by a colleague, readable but not writable: flock needs no write access
        return os.open(path, os.O_RDONLY)


@contextlib.contextmanager
def exclusive_lock(
    path: str | Path,
    timeout: float | None = None,
    poll_interval: float = 0.25,
    waiting_message: str | None = None,
) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block; yield whether it is held.

    When another process holds it, log ``waiting_message`` (default: "waiting for <path>") once at INFO and poll
    every ``poll_interval`` seconds. After ``timeout`` seconds (None: no limit) give up with a warning and run the
    block without the lock (yielding False): the lock saves duplicate work, it must not stall a run forever
    behind a hung process. Without ``fcntl`` (not POSIX) the block also runs unlocked.
    """
    path = Path(path)
    if fcntl is None:
        yield False
        return
    fd = _open_lock_file(path)
    try:
        started, held, waiting = time.monotonic(), False, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                pass
            if not waiting:
                log.info("%s", waiting_message or f"waiting for {path}")
                waiting = True
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                log.warning("gave up waiting for %s after %.0fs: going on without the lock", path, waited)
                break
            time.sleep(poll_interval if timeout is None else max(0.0, min(poll_interval, timeout - waited)))
        if held and waiting:
            log.info("acquired %s after %.1fs", path, time.monotonic() - started)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
