"""Every chain, step and answer, written as it happens: SQLite for one process (the default),
PostgreSQL (`PONDER_DB=postgresql://…`) for several processes acting as one bot.

`base.py` is the interface and its records, `sqlite.py` and `postgres.py` the back ends,
`migrations.py` the schema of each. What is kept is bounded by `PONDER_RETENTION_DAYS`
(`prune`, `keep_pruned`), and `forget` removes an asker's chains.
"""

from __future__ import annotations

from bot.config import Settings
from bot.store.base import (
    PRUNE_BATCH,
    ChainRecord,
    ChainTally,
    Claim,
    Hold,
    Removed,
    StepRecord,
    Store,
    StoreFailed,
    Taken,
    Vote,
    Voted,
    backend_for,
    is_postgres,
    keep_pruned,
)
from bot.store.migrations import SQLITE as _MIGRATIONS
from bot.store.postgres import PostgresStore
from bot.store.sqlite import UNSAVED_ROOM, SqliteStore

__all__ = [
    "PRUNE_BATCH",
    "UNSAVED_ROOM",
    "_MIGRATIONS",
    "ChainRecord",
    "ChainTally",
    "Claim",
    "Hold",
    "PostgresStore",
    "Removed",
    "SqliteStore",
    "StepRecord",
    "Store",
    "StoreFailed",
    "Taken",
    "Vote",
    "Voted",
    "backend_for",
    "is_postgres",
    "keep_pruned",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """The store `PONDER_DB` names: an SQLite path, or a `postgresql://` URL (not opened yet:
    `await store.open()`)."""
    return backend_for(settings.db_url)(settings.db_url)
