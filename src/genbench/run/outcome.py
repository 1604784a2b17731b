"""How an entry point ends: the exit code and the one line a user sees (see ``genbench.run.record`` for the codes)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from genbench.errors import ExpectedFailure, UserError, one_line, wants_traceback
from genbench.run.record import EXIT_FAILED, EXIT_USER_ERROR, exit_code_for_signal

log = logging.getLogger(__name__)


def run_entry(call: Callable[[], Any]) -> Any:
    """Run ``call``; a user error becomes one line on stderr and exit code 2, an expected failure one line and
    exit code 1, an interruption exit code 128 + signal. Other exceptions propagate with their traceback (exit 1)."""
    from genbench.run.callbacks import RunInterrupted

    try:
        return call()
    except RunInterrupted as exc:
        print(f"genbench: {exc}; the run can be continued with resume=true", file=sys.stderr)
        raise SystemExit(exit_code_for_signal(exc.signum)) from None
    except (UserError, ExpectedFailure) as exc:
        if wants_traceback():
            raise
        print(one_line(exc), file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR if isinstance(exc, UserError) else EXIT_FAILED) from None
