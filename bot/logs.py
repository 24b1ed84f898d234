"""Structured logs: one line per event, the chain id on every line logged inside a chain.

Terminals stay readable: libraries (httpx2, openai, aiohttp, discord.py, slack_bolt, asyncio…)
log at WARNING and above unless PONDER_LOG_LEVEL=DEBUG, so a chain drawn in the terminal is
not cut up by a line per HTTP request; Ponder's own loggers follow PONDER_LOG_LEVEL.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from bot.config import SettingsError

chain_id: contextvars.ContextVar[str] = contextvars.ContextVar("chain_id", default="-")

# Ponder's loggers: the core, the front doors, and the `ponder` command itself.
OWN_LOGGERS = ("bot", "adapters", "ponder")


class _ChainField(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "chain"):  # a held record keeps the chain it was logged in
            record.chain = chain_id.get()
        return True


class StderrHandler(logging.StreamHandler[TextIO]):
    """Log lines on stderr that never cut through a terminal UI.

    While rich's Live draws a chain it swaps `sys.stderr` for a proxy that prints each line
    above the display; when stderr is a terminal this handler writes to whatever `sys.stderr`
    is at that moment, so its lines go there too. When stderr is a file or a pipe the lines go
    straight to it: nothing is drawn there to interleave with.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self._base: TextIO = self.stream
        self._terminal = _isatty(self._base)

    def emit(self, record: logging.LogRecord) -> None:
        # Called under the handler's lock, so switching the stream here is safe.
        self.stream = sys.stderr if self._terminal else self._base
        super().emit(record)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        raise SettingsError(f"setting PONDER_LOG_LEVEL: {level!r} is not a log level "
                            "(DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    return number


def setup_logging(level: str | int, stream: TextIO | None = None) -> None:
    """Ponder's loggers at `level`; every other logger at WARNING, or DEBUG when asked for.

    Raises SettingsError for a level that is not one."""
    own = level_number(level)
    handler = StderrHandler(stream)
    handler.addFilter(_ChainField())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s chain=%(chain)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(own if own <= logging.DEBUG else max(own, logging.WARNING))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own)


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(_ChainField())
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.records.append(record)


@contextmanager
def held_logs() -> Iterator[None]:
    """Keep log lines back while a checklist is printed line by line, then write them after
    it, in order: a log line between two ✓ lines reads as one of them."""
    root = logging.getLogger()
    before = root.handlers[:]
    # With no handler set up, Python writes warnings through its last-resort handler.
    targets = before or [h for h in (logging.lastResort,) if h is not None]
    held = _Held()
    root.handlers[:] = [held]
    try:
        yield
    finally:
        root.handlers[:] = before
        for record in held.records:
            for handler in targets:
                if record.levelno >= handler.level:
                    handler.handle(record)
