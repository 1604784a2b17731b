"""An exclusive lock on a run directory, held while a process trains in it: two processes never write one run."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from genbench.errors import UserError

LOCK_FILE = ".genbench.lock"


class RunDirInUse(UserError):
    """Another live process holds the run directory."""


class RunLock:
    """``with RunLock(run_dir):`` holds ``<run_dir>/.genbench.lock`` (flock: released by the kernel when the holder
    dies, SIGKILL included, so a killed run never leaves a stale lock)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirInUse(
                f"run directory {self.path.parent} is in use by another genbench process (pid {holder}); "
                "wait for it to end or choose another run directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
