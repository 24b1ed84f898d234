"""Structured logs: one line per event, the chain id on every line logged inside a chain."""

from __future__ import annotations

import contextvars
import logging
import sys

chain_id: contextvars.ContextVar[str] = contextvars.ContextVar("chain_id", default="-")


class _ChainField(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.chain = chain_id.get()
        return True


def setup_logging(level: str | int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ChainField())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s chain=%(chain)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
