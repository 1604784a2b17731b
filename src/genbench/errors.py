"""The one base class of the errors a user can fix: shown as one line naming the key or path and the remedy.

Entry points (``python -m genbench``, ``genbench.evaluate``, ``genbench.classifier``) print a ``UserError`` as
``genbench: error: <message>`` without a traceback and exit with code 2; ``HYDRA_FULL_ERROR=1`` (or
``GENBENCH_TRACEBACK=1``) shows the traceback too. An ``ExpectedFailure`` (training diverged) is shown the same
way with exit code 1. Anything else is a bug or a failure and keeps its traceback.

It lives at the package root, beside nothing else, so that data, metrics, nets and the run can all raise it
without importing one another.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """An expected mistake: bad config value, missing or corrupt file, bad checkpoint, unwritable folder."""


class ExpectedFailure(Exception):
    """A run that failed for a reason its message fully explains (a diverged loss): one line, exit code 1."""


def wants_traceback() -> bool:
    """Whether the user asked for full tracebacks of user errors."""
    return any(
        os.environ.get(name, "") not in ("", "0") for name in ("HYDRA_FULL_ERROR", "GENBENCH_TRACEBACK")
    )


def one_line(exc: BaseException) -> str:
    """The error's message on one line (continuation lines are joined), as ``genbench: error: ...``."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"genbench: error: {text or type(exc).__name__}"
