"""Every chain, step and answer, written as it happens (SQLite, WAL).

sqlite3 blocks, so all of it runs on one worker thread of its own; callers only await.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bot.events import Language, Turn
from bot.prompts import detect_language

T = TypeVar("T")

# Each entry upgrades the schema by one version; never edit an entry that has shipped.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE chains (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        workspace TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        thread TEXT NOT NULL DEFAULT '',
        asker TEXT NOT NULL DEFAULT '',
        question TEXT NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        answer TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        total_seconds REAL,
        handles TEXT NOT NULL DEFAULT '[]',
        history TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX chains_thread ON chains (platform, thread, started_at);
    CREATE INDEX chains_status ON chains (status);
    CREATE TABLE steps (
        chain_id TEXT NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        title TEXT NOT NULL,
        content TEXT NOT NULL,
        seconds REAL NOT NULL,
        PRIMARY KEY (chain_id, idx)
    );
    CREATE TABLE seen_events (
        event_id TEXT PRIMARY KEY,
        seen_at REAL NOT NULL
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # The chain's language (decided once, at admission) and its anchor: where the platform
    # shows the chain's opening message, as the front door describes it, so a restart finds
    # it again without per-platform keys. `handles` becomes a JSON object keyed by slot.
    """
    ALTER TABLE chains ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
    ALTER TABLE chains ADD COLUMN anchor TEXT NOT NULL DEFAULT '{}';
    UPDATE chains SET anchor = (SELECT value FROM kv WHERE key = 'discord:opening:' || chains.id)
        WHERE EXISTS (SELECT 1 FROM kv WHERE key = 'discord:opening:' || chains.id);
    UPDATE chains SET anchor = json_object('message_ts',
            (SELECT value FROM kv WHERE key = 'slack:question:' || chains.id))
        WHERE EXISTS (SELECT 1 FROM kv WHERE key = 'slack:question:' || chains.id);
    DELETE FROM kv WHERE key LIKE 'discord:opening:%' OR key LIKE 'slack:question:%';
    """,
    # Delivery, apart from thinking: final texts the platform has not taken yet ('owed'),
    # kept until it does ('done') or until PONDER_DELIVERY_HOURS have passed ('expired').
    """
    ALTER TABLE chains ADD COLUMN delivery TEXT NOT NULL DEFAULT 'done';
    ALTER TABLE chains ADD COLUMN owed TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX chains_delivery ON chains (delivery);
    """,
)


@dataclass(slots=True)
class ChainRecord:
    id: str
    platform: str
    question: str
    mode: str
    workspace: str = ""
    channel: str = ""
    thread: str = ""
    asker: str = ""
    status: str = "running"
    reason: str | None = None
    answer: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    total_seconds: float | None = None
    # Message handles keyed by slot (`step:2`, `answer`, ...); a chain stored before slots
    # existed has its flat list under "" (what each showed is then read back, not known).
    handles: dict[str, list[Any]] = field(default_factory=dict)
    history: list[Turn] = field(default_factory=list)
    language: Language = "en"
    anchor: dict[str, Any] = field(default_factory=dict)
    delivery: str = "done"  # 'owed' while final texts wait for the platform; 'expired'
    owed: list[dict[str, Any]] = field(default_factory=list)  # Owed.as_json() each


@dataclass(frozen=True, slots=True)
class StepRecord:
    index: int
    title: str
    content: str
    seconds: float


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ponder-store")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._call(self._open)

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._pool.shutdown(wait=False)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
        if version < 2:
            # Chains from before the language was stored: a Chinese one that is resumed
            # after the upgrade must go on in Chinese.
            rows = db.execute("SELECT id, question FROM chains WHERE status='running'")
            for chain_id, question in rows.fetchall():
                db.execute("UPDATE chains SET language=? WHERE id=?",
                           (detect_language(question), chain_id))
        self._db = db

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    # --- chains ----------------------------------------------------------------------------

    async def start_chain(self, record: ChainRecord) -> None:
        history = json.dumps([[t.question, t.answer] for t in record.history], ensure_ascii=False)
        await self._call(
            self._conn.execute,
            "INSERT INTO chains (id, platform, workspace, channel, thread, asker, question, mode,"
            " status, started_at, handles, history, language, anchor)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (record.id, record.platform, record.workspace, record.channel, record.thread,
             record.asker, record.question, record.mode, record.status, record.started_at,
             json.dumps(record.handles), history, record.language, json.dumps(record.anchor)),
        )

    async def add_step(self, chain_id: str, step: StepRecord) -> None:
        await self._call(
            self._conn.execute,
            "INSERT OR REPLACE INTO steps (chain_id, idx, title, content, seconds)"
            " VALUES (?,?,?,?,?)",
            (chain_id, step.index, step.title, step.content, step.seconds),
        )

    async def finish_chain(self, chain_id: str, status: str, *, answer: str | None = None,
                           reason: str | None = None, total_seconds: float | None = None) -> None:
        await self._call(
            self._conn.execute,
            "UPDATE chains SET status=?, answer=?, reason=?, total_seconds=?, finished_at=?"
            " WHERE id=?",
            (status, answer, reason, total_seconds, time.time(), chain_id),
        )

    async def set_handles(self, chain_id: str, handles: dict[str, list[Any]]) -> None:
        await self._call(self._conn.execute, "UPDATE chains SET handles=? WHERE id=?",
                         (json.dumps(handles), chain_id))

    async def set_owed(self, chain_id: str, owed: list[dict[str, Any]],
                       delivery: str | None = None) -> None:
        """What of a chain the platform has still to take; `delivery` 'owed' while there is
        any, 'done' once there is none, or 'expired' when it was given up on."""
        state = delivery or ("owed" if owed else "done")
        await self._call(self._conn.execute, "UPDATE chains SET owed=?, delivery=? WHERE id=?",
                         (json.dumps(owed, ensure_ascii=False), state, chain_id))

    async def chains_owing(self) -> list[ChainRecord]:
        return await self._call(self._select, "WHERE delivery='owed' ORDER BY started_at", ())

    async def chain(self, chain_id: str) -> ChainRecord | None:
        rows = await self._call(self._select, "WHERE id=?", (chain_id,))
        return rows[0] if rows else None

    async def chains_with_status(self, *statuses: str) -> list[ChainRecord]:
        marks = ",".join("?" * len(statuses))
        return await self._call(self._select, f"WHERE status IN ({marks}) ORDER BY started_at",
                                statuses)

    async def steps(self, chain_id: str) -> list[StepRecord]:
        def read() -> list[StepRecord]:
            rows = self._conn.execute(
                "SELECT idx, title, content, seconds FROM steps WHERE chain_id=? ORDER BY idx",
                (chain_id,)).fetchall()
            return [StepRecord(*row) for row in rows]
        return await self._call(read)

    async def history(self, platform: str, thread: str) -> tuple[Turn, ...]:
        """Earlier questions of a thread with their final answers (not the steps)."""
        def read() -> tuple[Turn, ...]:
            rows = self._conn.execute(
                "SELECT question, answer FROM chains WHERE platform=? AND thread=?"
                " AND status='answered' ORDER BY started_at", (platform, thread)).fetchall()
            return tuple(Turn(q, a) for q, a in rows)
        return await self._call(read)

    async def thread_asker(self, platform: str, thread: str) -> str | None:
        """The asker of the thread's first chain, when Ponder runs chains in that thread."""
        def read() -> str | None:
            row = self._conn.execute(
                "SELECT asker FROM chains WHERE platform=? AND thread=? ORDER BY started_at"
                " LIMIT 1", (platform, thread)).fetchone()
            return row[0] if row else None
        return await self._call(read)

    def _select(self, where: str, args: tuple[Any, ...]) -> list[ChainRecord]:
        rows = self._conn.execute(
            "SELECT id, platform, question, mode, workspace, channel, thread, asker, status,"
            " reason, answer, started_at, finished_at, total_seconds, handles, history,"
            f" language, anchor, delivery, owed FROM chains {where}", args).fetchall()
        out = []
        for row in rows:
            record = ChainRecord(*row[:14])
            handles = json.loads(row[14])
            record.handles = handles if isinstance(handles, dict) else {"": handles}
            record.history = [Turn(q, a) for q, a in json.loads(row[15])]
            record.language = "zh" if row[16] == "zh" else "en"
            record.anchor = json.loads(row[17])
            record.delivery, record.owed = row[18], json.loads(row[19])
            out.append(record)
        return out

    # --- de-duplication and small state ----------------------------------------------------

    async def first_sight(self, event_id: str, keep_seconds: float = 3600.0) -> bool:
        """True the first time an event id is seen (within `keep_seconds`), False after."""
        def claim() -> bool:
            now = time.time()
            self._conn.execute("DELETE FROM seen_events WHERE seen_at < ?", (now - keep_seconds,))
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO seen_events (event_id, seen_at) VALUES (?, ?)",
                (event_id, now))
            return cur.rowcount == 1
        return await self._call(claim)

    async def get(self, key: str) -> str | None:
        def read() -> str | None:
            row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
            return row[0] if row else None
        return await self._call(read)

    async def put(self, key: str, value: str) -> None:
        await self._call(self._conn.execute,
                         "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    async def delete(self, key: str) -> None:
        await self._call(self._conn.execute, "DELETE FROM kv WHERE key=?", (key,))
