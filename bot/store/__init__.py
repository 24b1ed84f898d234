"""Every chain, step and answer, written as it happens: SQLite for one process (the default),
PostgreSQL (`PONDER_DB=postgresql://…`) for several processes acting as one bot.

`base.py` is the interface and its records, `sqlite.py` and `postgres.py` the back ends,
`migrations.py` the schema of each. What is kept is bounded by `PONDER_RETENTION_DAYS`
(`prune`, `keep_pruned`), and `forget` removes an asker's chains.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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
    "stored",
]


def open_store(settings: Settings) -> Store:
    """The store `PONDER_DB` names: an SQLite path, or a `postgresql://` URL (not opened yet:
    `await store.open()`)."""
    return backend_for(settings.db_url)(settings.db_url)


@asynccontextmanager
async def stored(settings: Settings) -> AsyncIterator[Store | None]:
    """The store, opened for an operator command and closed after it; None where no SQLite
    database exists yet (a command that only reads or removes makes none just to say so)."""
    db = settings.db
    if isinstance(db, Path) and not db.exists() \
            and all(p.is_dir() or not p.exists() for p in db.parents):
        yield None
        return
    store = open_store(settings)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
