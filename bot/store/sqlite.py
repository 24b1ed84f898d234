"""The SQLite back end (the default: one process), WAL mode.

sqlite3 blocks, so all of it runs on one worker thread of its own; callers only await.

A write that fails (a full disk, a read-only file, an I/O error) raises `StoreFailed`; the
cause is logged once until writes work again. A kv key that ends in `:<chain id>` belongs to
that chain and goes with it; one that ends in `:<platform>:<thread>` belongs to that thread and
goes with its last chain.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import SettingsError
from bot.events import Turn
from bot.prompts import detect_language
from bot.store.base import (
    CHAIN_COLUMNS,
    PRUNE_BATCH,
    TALLY_QUERY,
    ChainRecord,
    ChainTally,
    Claim,
    Hold,
    Removed,
    StepRecord,
    Store,
    StoreFailed,
    Vote,
    Voted,
    history_json,
    is_postgres,
    log,
    record_of,
    tally_of,
    unquoted,
)
from bot.store.migrations import SQLITE

T = TypeVar("T")

# Room for the ids of chains whose failure could not be written to the database: see
# `SqliteStore.abandon`. A uuid hex and a newline each: about 120 chains.
UNSAVED_ROOM = 4096


class SqliteStore(Store):
    """One process's store: an SQLite file in WAL mode, on one worker thread of its own."""

    @classmethod
    def opens(cls, where: str | Path) -> bool:
        return not is_postgres(where)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ponder-store")
        self._db: sqlite3.Connection | None = None
        self._failing: str | None = None  # the cause, while writes fail (logged once)
        # Chains whose failure is not in the database yet -> why (see `abandon`).
        self._unsaved: dict[str, str] = {}
        self._unsaved_fd: int | None = None

    @property
    def unsaved_path(self) -> Path:
        return Path(f"{self.path}-unsaved")

    async def open(self) -> None:
        """Open (and upgrade) the database, and check it takes a write: a store that cannot
        is a setting to fix (`SettingsError`, one line naming PONDER_DB), not a traceback."""
        try:
            await self._call(self._open)
        except (sqlite3.Error, OSError) as exc:
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
            raise SettingsError(
                f"setting PONDER_DB: cannot use {self.path}: {cause}{where} — it must be an "
                "SQLite file (or a new name) in a folder Ponder can write to, on a disk with "
                "room") from None

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._close)
        self._pool.shutdown(wait=False)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write; a failure raises `StoreFailed`, its cause logged once per outage."""
        try:
            result = await self._call(fn, *args)
        except sqlite3.Error as exc:
            if self._failing is None:
                log.error("the store (PONDER_DB %s) refuses writes: %s. Chains that cannot be "
                          "saved end with a message and are not resumed", self.path, exc)
            self._failing = str(exc)
            raise StoreFailed(str(exc)) from exc
        if self._failing is not None:
            self._failing = None
            log.warning("the store (PONDER_DB %s) takes writes again", self.path)
        if self._unsaved:
            await self._call(self._save_marks)
        return result

    def _open(self) -> None:
        memory = str(self.path) == ":memory:"
        if not memory:
            for folder in (self.path.parent, *self.path.parent.parents):
                if folder.exists() and not folder.is_dir():  # say so, not "File exists"
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(SQLITE[version:], start=version + 1):
                db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
            if version < 2:
                # Chains from before the language was stored: a Chinese one that is resumed
                # after the upgrade must go on in Chinese.
                rows = db.execute("SELECT id, question FROM chains WHERE status='running'")
                for chain_id, question in rows.fetchall():
                    db.execute("UPDATE chains SET language=? WHERE id=?",
                               (detect_language(question), chain_id))
            # A real write (the header page): a read-only file or a full disk shows here, at
            # start-up, rather than in the middle of someone's chain.
            db.execute(f"PRAGMA user_version={max(version, len(SQLITE))}")
            if not memory:
                self._open_unsaved()
        except BaseException:
            db.close()
            raise
        self._db = db
        # Marks an earlier process could not write: before anything reads what to resume.
        self._save_marks()

    def _close(self) -> None:
        self._save_marks()
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._unsaved_fd is not None:
            os.close(self._unsaved_fd)
            self._unsaved_fd = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    # --- chains ----------------------------------------------------------------------------

    async def start_chain(self, record: ChainRecord, claim: Claim | None = None) -> None:
        # One process: its Gate has counted the asker and the thread already.
        history = history_json(record.history)
        await self._write(
            self._conn.execute,
            "INSERT INTO chains (id, platform, workspace, channel, thread, asker, question, mode,"
            " status, started_at, handles, history, language, anchor)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (record.id, record.platform, record.workspace, record.channel, record.thread,
             record.asker, record.question, record.mode, record.status, record.started_at,
             json.dumps(record.handles), history, record.language, json.dumps(record.anchor)),
        )

    async def add_step(self, chain_id: str, step: StepRecord) -> None:
        await self._write(
            self._conn.execute,
            "INSERT OR REPLACE INTO steps (chain_id, idx, title, content, seconds)"
            " VALUES (?,?,?,?,?)",
            (chain_id, step.index, step.title, step.content, step.seconds),
        )

    async def finish_chain(self, chain_id: str, status: str, *, answer: str | None = None,
                           reason: str | None = None, total_seconds: float | None = None) -> None:
        await self._write(
            self._conn.execute,
            "UPDATE chains SET status=?, answer=?, reason=?, total_seconds=?, finished_at=?"
            " WHERE id=?",
            (status, answer, reason, total_seconds, time.time(), chain_id),
        )

    async def set_handles(self, chain_id: str, handles: dict[str, list[Any]]) -> None:
        await self._write(self._conn.execute, "UPDATE chains SET handles=? WHERE id=?",
                         (json.dumps(handles), chain_id))

    async def set_owed(self, chain_id: str, owed: list[dict[str, Any]],
                       delivery: str | None = None, *, owner: str = "",
                       seconds: float = 0.0) -> None:
        """What of a chain the platform has still to take; `delivery` 'owed' while there is
        any, 'done' once there is none, or 'expired' when it was given up on. (No lease: one
        process delivers all.)"""
        state = delivery or ("owed" if owed else "done")
        await self._write(self._conn.execute, "UPDATE chains SET owed=?, delivery=? WHERE id=?",
                         (json.dumps(owed, ensure_ascii=False), state, chain_id))

    async def chains_owing(self) -> list[ChainRecord]:
        return await self._call(self._select, "WHERE delivery='owed' ORDER BY started_at", ())

    async def chain(self, chain_id: str) -> ChainRecord | None:
        rows = await self._call(self._select, "WHERE id=?", (chain_id,))
        return rows[0] if rows else None

    async def chains_with_status(self, *statuses: str) -> list[ChainRecord]:
        marks = ",".join("?" * len(statuses))
        records = await self._call(self._select,
                                   f"WHERE status IN ({marks}) ORDER BY started_at", statuses)
        # A chain abandoned while the store failed is not running, whatever the file says.
        return [r for r in records if r.status != "running" or r.id not in self._unsaved]

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
        rows = self._conn.execute(f"SELECT {CHAIN_COLUMNS} FROM chains {where}", args)
        return [record_of(row) for row in rows.fetchall()]

    # --- feedback and stats ----------------------------------------------------------------

    async def vote(self, chain_id: str, platform: str, voter: str, vote: Vote) -> Voted:
        def cast() -> Voted:
            db = self._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM chains WHERE id=?", (chain_id,)).fetchone() is None:
                    db.execute("ROLLBACK")
                    return "unknown"
                row = db.execute("SELECT vote FROM feedback WHERE chain_id=? AND voter=?",
                                 (chain_id, voter)).fetchone()
                if row is not None and row[0] == vote:
                    db.execute("ROLLBACK")
                    return "same"
                db.execute(
                    "INSERT INTO feedback (chain_id, voter, platform, vote, at)"
                    " VALUES (?,?,?,?,?) ON CONFLICT (chain_id, voter) DO UPDATE SET"
                    " vote=excluded.vote, platform=excluded.platform, at=excluded.at",
                    (chain_id, voter, platform, vote, time.time()))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return "new" if row is None else "changed"
        return await self._write(cast)

    async def votes(self, chain_id: str) -> dict[Vote, int]:
        def read() -> dict[Vote, int]:
            rows = self._conn.execute(
                "SELECT vote, count(*) FROM feedback WHERE chain_id=? GROUP BY vote",
                (chain_id,)).fetchall()
            counts = dict(rows)
            return {"up": int(counts.get("up", 0)), "down": int(counts.get("down", 0))}
        return await self._call(read)

    async def tallies(self, since: float) -> list[ChainTally]:
        def read() -> list[ChainTally]:
            rows = self._conn.execute(TALLY_QUERY.format(since="?"), (since,)).fetchall()
            return [tally_of(row) for row in rows]
        return await self._call(read)

    # --- several processes: this store has one -------------------------------------------

    async def claim_interrupted(self, platform: str, owner: str, seconds: float,
                                skip: frozenset[str] = frozenset()) -> list[ChainRecord]:
        # The only process: every running chain it is not running was left by a dead one.
        return [r for r in await self.chains_with_status("running")
                if r.platform == platform and r.id not in skip]

    async def hold(self, hold: Hold) -> None:
        return None  # the one process's `Gate` has counted every chain and question already

    async def unhold(self, chain_id: str) -> None:
        return None

    async def claim_owed(self, platform: str, owner: str, seconds: float,
                         skip: frozenset[str] = frozenset()) -> list[ChainRecord]:
        # The only process: whatever is owed and not being delivered here was left by a
        # dead one.
        return [r for r in await self.chains_owing()
                if r.platform == platform and r.id not in skip]

    async def renew(self, owner: str, seconds: float) -> list[str]:
        return []  # no other process can ask for a stop

    async def release(self, owner: str) -> None:
        return None  # the next start resumes whatever is left running

    async def running_elsewhere(self, platform: str, thread: str, owner: str) -> str | None:
        return None

    async def request_stop(self, chain_id: str) -> bool:
        return False  # a chain is stopped in the process that runs it, the only one

    async def listen_stops(self, stop: Callable[[str], None]) -> None:
        return None

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
        return await self._write(claim)

    async def get(self, key: str) -> str | None:
        def read() -> str | None:
            row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
            return row[0] if row else None
        return await self._call(read)

    async def put(self, key: str, value: str) -> None:
        await self._write(self._conn.execute,
                          "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    async def delete(self, key: str) -> None:
        await self._write(self._conn.execute, "DELETE FROM kv WHERE key=?", (key,))

    # --- installs by OAuth -----------------------------------------------------------------

    async def save_installation(self, platform: str, workspace: str, data: str) -> None:
        await self._write(
            self._conn.execute,
            "INSERT OR REPLACE INTO installations (platform, workspace, data, installed_at)"
            " VALUES (?,?,?,?)", (platform, workspace, data, time.time()))

    async def installation(self, platform: str, workspace: str) -> str | None:
        def read() -> str | None:
            row = self._conn.execute(
                "SELECT data FROM installations WHERE platform=? AND workspace=?",
                (platform, workspace)).fetchone()
            return row[0] if row else None
        return await self._call(read)

    async def delete_installation(self, platform: str, workspace: str) -> bool:
        def remove() -> bool:
            cur = self._conn.execute(
                "DELETE FROM installations WHERE platform=? AND workspace=?",
                (platform, workspace))
            return cur.rowcount > 0
        return await self._write(remove)

    async def issue_state(self, state: str, expires_at: float) -> None:
        def issue() -> None:
            # Expired states go as new ones come: the table holds only links still usable.
            self._conn.execute("DELETE FROM oauth_states WHERE expires_at < ?", (time.time(),))
            self._conn.execute("INSERT INTO oauth_states (state, expires_at) VALUES (?, ?)",
                               (state, expires_at))
        await self._write(issue)

    async def consume_state(self, state: str) -> bool:
        def consume() -> bool:
            cur = self._conn.execute(
                "DELETE FROM oauth_states WHERE state=? AND expires_at >= ?",
                (state, time.time()))
            return cur.rowcount == 1
        return await self._write(consume)

    # --- chains that could not be saved --------------------------------------------------

    async def abandon(self, chain_id: str, cause: str) -> None:
        """A chain that could not be saved ends here: marked failed, so that no later start
        resumes it (its thread already says it could not be saved). Never raises.

        The mark is a write too, and the store that has just failed may refuse it (a disk
        still full). So it is also held here for this process (`chains_with_status` leaves
        the chain out; every write that works afterwards, and `close`, tries the mark again)
        and noted in a small side file next to the database, whose room was taken when the
        store opened: overwriting bytes a file already has needs no free space, so the note
        survives a full disk and a crash, and the next `open` writes the mark before anything
        is resumed."""
        try:
            await self._call(self._hold, chain_id, f"storage: {cause}")
        except RuntimeError:  # closed already: no worker thread left to race with
            self._unsaved[chain_id] = f"storage: {cause}"
            log.warning("chain %s: the store is closed; the mark is lost", chain_id)

    def _hold(self, chain_id: str, reason: str) -> None:
        # `_unsaved` changes only on the store's thread; the loop only reads it.
        self._unsaved[chain_id] = reason
        self._write_unsaved()
        self._save_marks()

    def _open_unsaved(self) -> None:
        fd = os.open(self.unsaved_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size < UNSAVED_ROOM:
                room = b"\0" * (UNSAVED_ROOM - size)
                if os.pwrite(fd, room, size) != len(room):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                                  str(self.unsaved_path))
                os.fsync(fd)
            noted = os.pread(fd, UNSAVED_ROOM, 0).split(b"\0", 1)[0].decode("ascii", "replace")
        except BaseException:
            os.close(fd)
            raise
        self._unsaved_fd = fd
        for chain_id in noted.split():
            self._unsaved.setdefault(chain_id, "storage: its writes failed before a restart")

    def _write_unsaved(self) -> None:
        """The side file lists what `_unsaved` holds (in place, within its room)."""
        if self._unsaved_fd is None:
            return
        data = "".join(f"{chain_id}\n" for chain_id in self._unsaved).encode("ascii", "replace")
        if len(data) > UNSAVED_ROOM:
            log.warning("%s is full: %d more unsaved chains are known only to this process",
                        self.unsaved_path, data[UNSAVED_ROOM:].count(b"\n"))
            data = data[:data.rfind(b"\n", 0, UNSAVED_ROOM) + 1]
        try:
            os.pwrite(self._unsaved_fd, data.ljust(UNSAVED_ROOM, b"\0"), 0)
            os.fsync(self._unsaved_fd)
        except OSError as exc:
            log.warning("could not note unsaved chains in %s: %s", self.unsaved_path, exc)

    def _save_marks(self) -> None:
        """Write the marks `abandon` holds into the database, where it takes them now."""
        if not self._unsaved or self._db is None:
            return
        saved = []
        try:
            for chain_id, reason in list(self._unsaved.items()):
                self._db.execute(
                    "UPDATE chains SET status='failed', reason=?,"
                    " finished_at=COALESCE(finished_at, ?) WHERE id=? AND status='running'",
                    (reason, time.time(), chain_id))
                saved.append(chain_id)
        except sqlite3.Error:
            pass  # still refused: kept, and tried again after the next write that works
        for chain_id in saved:
            del self._unsaved[chain_id]
        if saved:
            log.info("marked %d chain(s) that could not be saved as failed", len(saved))
            self._write_unsaved()

    # --- retention and forgetting ----------------------------------------------------------

    async def prune(self, days: float) -> Removed:
        """Remove chains finished more than `days` ago, with their steps, the delivery state
        they kept and their kv rows, and event ids as old. Running chains stay, however old.
        In batches, so running chains' writes get their turn in between."""
        cutoff = time.time() - days * 86400
        chains = steps = events = 0
        while True:
            batch = await self._write(self._prune_batch, cutoff)
            chains, steps, events = (chains + batch.chains, steps + batch.steps,
                                     events + batch.events)
            if batch.chains < PRUNE_BATCH:
                return Removed(chains=chains, steps=steps, events=events)

    def _prune_batch(self, cutoff: float) -> Removed:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [row[0] for row in db.execute(
                "SELECT id FROM chains WHERE status != 'running' AND finished_at < ? LIMIT ?",
                (cutoff, PRUNE_BATCH))]
            chains, steps = self._remove(ids)
            events = db.execute("DELETE FROM seen_events WHERE seen_at < ?", (cutoff,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return Removed(chains=chains, steps=steps, events=events)

    async def forget(self, asker: str, platform: str | None = None, *,
                     force: bool = False) -> Removed:
        """Remove every chain `asker` started (follow-ups are chains too) with its steps,
        answer, delivery state, language, anchor and kv rows, and take their turns out of the
        history other askers' chains in the same threads quoted. With a chain of theirs still
        marked running, nothing is removed (`Removed.running` says how many) unless `force`."""
        return await self._write(self._forget, asker, platform, force)

    def _forget(self, asker: str, platform: str | None, force: bool) -> Removed:
        db = self._conn
        where, args = "asker=?", [asker]
        if platform:
            where, args = f"{where} AND platform=?", [asker, platform]
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(f"SELECT id, platform, thread, status, question, answer"
                              f" FROM chains WHERE {where}", args).fetchall()
            running = sum(1 for row in rows if row[3] == "running")
            if running and not force:
                db.execute("ROLLBACK")
                return Removed(running=running)
            chains, steps = self._remove([row[0] for row in rows])
            # Their votes on other people's answers go too (votes on theirs went with them).
            db.execute(f"DELETE FROM feedback WHERE voter=?"
                       f"{' AND platform=?' if platform else ''}", args)
            rewritten = self._unquote(
                {(row[1], row[2]) for row in rows if row[2]},
                {(row[4], row[5]) for row in rows if row[5] is not None})
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return Removed(chains=chains, steps=steps, running=running, rewritten=rewritten)

    def _remove(self, ids: list[str]) -> tuple[int, int]:
        """Delete these chains, their steps and kv rows, and the kv rows of threads left
        without a chain (inside the caller's transaction)."""
        db = self._conn
        chains = steps = 0
        threads: set[tuple[str, str]] = set()
        for at in range(0, len(ids), PRUNE_BATCH):
            part = ids[at:at + PRUNE_BATCH]
            marks = ",".join("?" * len(part))
            threads.update(db.execute(f"SELECT platform, thread FROM chains WHERE id IN ({marks})"
                                      " AND thread != ''", part).fetchall())
            steps += db.execute(f"DELETE FROM steps WHERE chain_id IN ({marks})", part).rowcount
            db.executemany("DELETE FROM kv WHERE substr(key, -?) = ?",
                           [(len(i) + 1, f":{i}") for i in part])
            chains += db.execute(f"DELETE FROM chains WHERE id IN ({marks})", part).rowcount
        for platform, thread in threads:
            if db.execute("SELECT 1 FROM chains WHERE platform=? AND thread=? LIMIT 1",
                          (platform, thread)).fetchone() is None:
                suffix = f":{platform}:{thread}"
                db.execute("DELETE FROM kv WHERE substr(key, -?) = ?", (len(suffix), suffix))
        return chains, steps

    def _unquote(self, threads: set[tuple[str, str]],
                 turns: set[tuple[str, str | None]]) -> int:
        """Take removed turns out of the stored history of the chains left in `threads`."""
        db = self._conn
        rewritten = 0
        for platform, thread in threads:
            rows = db.execute("SELECT id, history FROM chains WHERE platform=? AND thread=?",
                              (platform, thread)).fetchall()
            for chain_id, history in rows:
                kept = unquoted(history, turns)
                if kept is not None:
                    db.execute("UPDATE chains SET history=? WHERE id=?", (kept, chain_id))
                    rewritten += 1
        return rewritten
