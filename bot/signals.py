"""SIGTERM and Ctrl-C for long-running commands: one place that installs the handlers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable


def on_stop_signals(callback: Callable[[], None]) -> None:
    """Call `callback` on SIGTERM or SIGINT (where the loop supports signal handlers: not on
    Windows, not outside the main thread)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, callback)
