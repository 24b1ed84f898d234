"""SIGTERM and Ctrl-C for long-running commands: one place that installs the handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

# The exit status of a process stopped without its orderly shutdown (as for SIGINT).
EXIT_AT_ONCE = 130


def on_stop_signals(callback: Callable[[], None],
                    again: Callable[[], None] | None = None) -> None:
    """Call `callback` on SIGTERM or SIGINT; on every signal after the first, `again` (the
    same `callback` when None). Where the loop supports signal handlers: not on Windows, not
    outside the main thread."""
    loop = asyncio.get_running_loop()
    seen = 0

    def handle() -> None:
        nonlocal seen
        seen += 1
        (callback if seen == 1 or again is None else again)()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handle)


def exit_at_once(why: str) -> None:
    """Leave the process now, without waiting for anything (a second stop signal, or a front
    door that would not stop). What the chains have done is in the store already: a chain
    cut off here is resumed by the next start."""
    log.warning("%s: exiting at once", why)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # a broken handler must not keep us here
            handler.flush()
    sys.stderr.write(f"ponder: {why}: exiting at once\n")
    sys.stderr.flush()
    os._exit(EXIT_AT_ONCE)
