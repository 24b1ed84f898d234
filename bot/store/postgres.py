"""The PostgreSQL back end (`PONDER_DB=postgresql://…`): one database for several processes.

asyncpg, a pool per process. Every query has a timeout (`COMMAND_TIMEOUT`), so a database that
stops answering fails a write (`StoreFailed`) instead of holding a chain. Leases are compared
with the server's clock, the one clock every process shares.

What makes the processes one bot, in the database rather than in any one of them:
- `first_sight`: an event id is a primary key, inserted once (`ON CONFLICT DO NOTHING`);
- `hold` (admission, before the front door answers): under the same per-asker and per-thread
  advisory locks, the asker's running chains and held questions (live leases, any process), the
  thread's, and the asker's questions within the rate window are counted, and the question
  held (`admissions`) when within every limit; `start_chain` with a `Claim` counts again under
  the same locks (one count, `ponder_busy`) and lets go of the question's hold as it inserts;
- `claim_interrupted`: chains whose lease ran out, taken `FOR UPDATE SKIP LOCKED` so each goes
  to exactly one process; `claim_owed` the same for final texts still owed (`bot/delivery.py`),
  whose lease is taken when they become owed; `renew` keeps the leases of a process's running
  chains, held questions and owed deliveries, `release` gives them up;
- `request_stop`: a flag on the chain and a NOTIFY on `ponder_stop`, which the process running
  it LISTENs to (`listen_stops`); `renew` also returns flagged chains, should a notice be lost.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from bot.errors import SettingsError
from bot.events import Turn
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
    Taken,
    Vote,
    Voted,
    history_json,
    is_postgres,
    log,
    record_of,
    tally_of,
    unquoted,
)
from bot.store.migrations import POSTGRES

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0  # seconds to open a connection
COMMAND_TIMEOUT = 15.0  # seconds any one query may take
POOL_SIZE = 10  # connections per process: chains write a row at a time
STOP_CHANNEL = "ponder_stop"
# Seconds an admission row is kept (pruning): well past any rate window it counts in.
ADMISSIONS_KEPT = 3600.0
# pg_advisory_xact_lock(key1, key2) namespace of schema upgrades (7202 and 7203, an asker's
# and a thread's, are taken in `ponder_start_chain`, bot/store/migrations.py).
LOCK_SCHEMA = 7201
NOW = "extract(epoch from clock_timestamp())::double precision"
_COLUMNS = ("id, platform, workspace, channel, thread, asker, question, mode, status, started_at,"
            " handles, history, language, anchor, lease_owner, lease_until")
# A chain without an owner (no claim) has no lease: it is free for recovery at once.
_VALUES = ("$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
           f" CASE WHEN $15 = '' THEN 0 ELSE {NOW} + $16 END")

# What a database that does not take a query raises: the server's refusal, a connection
# gone or closed, a query past its timeout.
FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def shown_url(url: str) -> str:
    """The URL as it may be logged: without its password."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection back in the pool needs no reset query (a round trip a write): nothing
    here sets session state, and advisory locks are taken per transaction. (asyncpg still
    rolls back a transaction left open, before this.)"""


def _count(status: str) -> int:
    """The row count of a command tag (`DELETE 3`, `INSERT 0 1`)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PostgresStore(Store):
    """A store several Ponder processes share."""

    shared = True

    @classmethod
    def opens(cls, where: str | Path) -> bool:
        return is_postgres(where)

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._failing: str | None = None  # the cause, while writes fail (logged once)
        # Chains whose failure is not in the database yet -> why (see `abandon`).
        self._unsaved: dict[str, str] = {}

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, reset=_keep_session)
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
                await self._migrate(conn)
        except (*FAILURES, ValueError) as exc:
            await self._close_pool()
            cause = str(exc) or type(exc).__name__
            raise SettingsError(
                f"setting PONDER_DB: cannot use {shown_url(self.url)}: {cause} — it must name "
                "a PostgreSQL database that answers and that its user may write to") from None

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            # Processes starting together: one upgrades, the others then find it done.
            await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_SCHEMA)
            await conn.execute("CREATE TABLE IF NOT EXISTS ponder_schema "
                               "(version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM ponder_schema")
            for number, script in enumerate(POSTGRES[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute("INSERT INTO ponder_schema (version) VALUES ($1)", number)
            # A real write: a read-only database shows here, at start-up, rather than in the
            # middle of someone's chain.
            await conn.execute("UPDATE ponder_schema SET version = version "
                               "WHERE version = (SELECT max(version) FROM ponder_schema)")

    async def close(self) -> None:
        if self._unsaved and self._pool is not None:
            await self._save_marks()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                await listener.close(timeout=CONNECT_TIMEOUT)
            except FAILURES:
                listener.terminate()
        await self._close_pool()

    async def _close_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):  # queries still out get this long
                    await pool.close()
            except FAILURES:
                pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with self.pool.acquire(timeout=COMMAND_TIMEOUT) as conn:
            return await fn(conn)

    async def _write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a write; a failure raises `StoreFailed`, its cause logged once per outage."""
        try:
            async with self.pool.acquire(timeout=COMMAND_TIMEOUT) as conn:
                result = await fn(conn)
        except FAILURES as exc:
            cause = str(exc) or type(exc).__name__
            if self._failing is None:
                log.error("the store (PONDER_DB %s) refuses writes: %s. Chains that cannot be "
                          "saved end with a message and are not resumed",
                          shown_url(self.url), cause)
            self._failing = cause
            raise StoreFailed(cause) from exc
        if self._failing is not None:
            self._failing = None
            log.warning("the store (PONDER_DB %s) takes writes again", shown_url(self.url))
        if self._unsaved:
            await self._save_marks()
        return result

    # --- chains ----------------------------------------------------------------------------

    async def start_chain(self, record: ChainRecord, claim: Claim | None = None) -> None:
        values = (record.id, record.platform, record.workspace, record.channel, record.thread,
                  record.asker, record.question, record.mode, record.status, record.started_at,
                  json.dumps(record.handles), history_json(record.history), record.language,
                  json.dumps(record.anchor), claim.owner if claim else "",
                  claim.seconds if claim else 0.0)
        if claim is None:
            await self._write(lambda conn: conn.execute(f"INSERT INTO chains ({_COLUMNS})"
                                                        f" VALUES ({_VALUES})", *values))
            return

        row = await self._write(lambda conn: conn.fetchrow(
            "SELECT asker_running, thread_running, added FROM ponder_start_chain("
            "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            *values, claim.user_limit))
        running, thread, added = row
        if not added:  # busy in some process: nothing was recorded
            raise Taken("thread") if thread else Taken("user", int(running))

    async def add_step(self, chain_id: str, step: StepRecord) -> None:
        await self._write(lambda conn: conn.execute(
            "INSERT INTO steps (chain_id, idx, title, content, seconds) VALUES ($1,$2,$3,$4,$5)"
            " ON CONFLICT (chain_id, idx) DO UPDATE SET title = EXCLUDED.title,"
            " content = EXCLUDED.content, seconds = EXCLUDED.seconds",
            chain_id, step.index, step.title, step.content, step.seconds))

    async def finish_chain(self, chain_id: str, status: str, *, answer: str | None = None,
                           reason: str | None = None, total_seconds: float | None = None) -> None:
        await self._write(lambda conn: conn.execute(
            "UPDATE chains SET status=$1, answer=$2, reason=$3, total_seconds=$4,"
            " finished_at=$5 WHERE id=$6",
            status, answer, reason, total_seconds, time.time(), chain_id))

    async def set_handles(self, chain_id: str, handles: dict[str, list[Any]]) -> None:
        await self._write(lambda conn: conn.execute(
            "UPDATE chains SET handles=$1 WHERE id=$2", json.dumps(handles), chain_id))

    async def set_owed(self, chain_id: str, owed: list[dict[str, Any]],
                       delivery: str | None = None, *, owner: str = "",
                       seconds: float = 0.0) -> None:
        state = delivery or ("owed" if owed else "done")
        if not owner:
            await self._write(lambda conn: conn.execute(
                "UPDATE chains SET owed=$1, delivery=$2 WHERE id=$3",
                json.dumps(owed, ensure_ascii=False), state, chain_id))
            return
        # Taken in the same statement that makes them owed: no moment in which another
        # process could find them owed and unheld.
        await self._write(lambda conn: conn.execute(
            f"UPDATE chains SET owed=$1, delivery=$2, lease_owner=$4, lease_until={NOW} + $5"
            " WHERE id=$3", json.dumps(owed, ensure_ascii=False), state, chain_id, owner,
            seconds))

    async def chains_owing(self) -> list[ChainRecord]:
        return await self._select("WHERE delivery = 'owed' ORDER BY started_at")

    async def chain(self, chain_id: str) -> ChainRecord | None:
        rows = await self._select("WHERE id = $1", chain_id)
        return rows[0] if rows else None

    async def chains_with_status(self, *statuses: str) -> list[ChainRecord]:
        records = await self._select("WHERE status = ANY($1::text[]) ORDER BY started_at",
                                     list(statuses))
        # A chain abandoned while the store failed is not running, whatever the row says.
        return [r for r in records if r.status != "running" or r.id not in self._unsaved]

    async def steps(self, chain_id: str) -> list[StepRecord]:
        rows = await self._read(lambda conn: conn.fetch(
            "SELECT idx, title, content, seconds FROM steps WHERE chain_id=$1 ORDER BY idx",
            chain_id))
        return [StepRecord(*row) for row in rows]

    async def history(self, platform: str, thread: str) -> tuple[Turn, ...]:
        rows = await self._read(lambda conn: conn.fetch(
            "SELECT question, answer FROM chains WHERE platform=$1 AND thread=$2"
            " AND status='answered' ORDER BY started_at", platform, thread))
        return tuple(Turn(q, a) for q, a in rows)

    async def thread_asker(self, platform: str, thread: str) -> str | None:
        return await self._read(lambda conn: conn.fetchval(
            "SELECT asker FROM chains WHERE platform=$1 AND thread=$2 ORDER BY started_at"
            " LIMIT 1", platform, thread))

    async def _select(self, where: str, *args: Any) -> list[ChainRecord]:
        rows = await self._read(lambda conn: conn.fetch(
            f"SELECT {CHAIN_COLUMNS} FROM chains {where}", *args))
        return [record_of(row) for row in rows]

    # --- feedback and stats ----------------------------------------------------------------

    async def vote(self, chain_id: str, platform: str, voter: str, vote: Vote) -> Voted:
        async def cast(conn: asyncpg.Connection) -> Voted:
            # One statement: two presses at once (in two processes) count once. `xmax = 0`
            # tells a fresh row from an updated one; no row back: the same vote, or no chain.
            row = await conn.fetchrow(
                "INSERT INTO feedback (chain_id, voter, platform, vote, at)"
                " SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM chains WHERE id = $1)"
                " ON CONFLICT (chain_id, voter) DO UPDATE SET vote = EXCLUDED.vote,"
                " platform = EXCLUDED.platform, at = EXCLUDED.at"
                " WHERE feedback.vote <> EXCLUDED.vote RETURNING (xmax = 0) AS fresh",
                chain_id, voter, platform, vote, time.time())
            if row is not None:
                return "new" if row["fresh"] else "changed"
            known = await conn.fetchval("SELECT 1 FROM chains WHERE id = $1", chain_id)
            return "same" if known else "unknown"
        return await self._write(cast)

    async def votes(self, chain_id: str) -> dict[Vote, int]:
        rows = await self._read(lambda conn: conn.fetch(
            "SELECT vote, count(*) FROM feedback WHERE chain_id = $1 GROUP BY vote", chain_id))
        counts = {str(row[0]): int(row[1]) for row in rows}
        return {"up": counts.get("up", 0), "down": counts.get("down", 0)}

    async def tallies(self, since: float) -> list[ChainTally]:
        rows = await self._read(lambda conn: conn.fetch(TALLY_QUERY.format(since="$1"), since))
        return [tally_of(row) for row in rows]

    # --- several processes -----------------------------------------------------------------

    async def claim_interrupted(self, platform: str, owner: str, seconds: float,
                                skip: frozenset[str] = frozenset()) -> list[ChainRecord]:
        skipped = sorted(skip | self._unsaved.keys())
        rows = await self._write(lambda conn: conn.fetch(
            f"UPDATE chains SET lease_owner = $1, lease_until = {NOW} + $2"
            " WHERE id IN (SELECT id FROM chains WHERE status = 'running' AND platform = $3"
            f" AND lease_until < {NOW} AND NOT (id = ANY($4::text[]))"
            " FOR UPDATE SKIP LOCKED)"
            f" AND status = 'running' AND lease_until < {NOW}"
            f" RETURNING {CHAIN_COLUMNS}", owner, seconds, platform, skipped))
        return sorted((record_of(row) for row in rows), key=lambda r: r.started_at)

    async def hold(self, hold: Hold) -> None:
        row = await self._write(lambda conn: conn.fetchrow(
            "SELECT asker_running, thread_running, recent, oldest_age, added FROM"
            " ponder_admit($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            hold.id, hold.platform, hold.asker, hold.thread, hold.owner, hold.seconds,
            hold.user_limit, hold.rate, hold.window))
        running, thread, recent, age, added = row
        if added:
            return
        if thread:
            raise Taken("thread")
        if running >= hold.user_limit:
            raise Taken("user", int(running))
        raise Taken("rate", int(recent), limit=hold.rate, age=float(age))

    async def unhold(self, chain_id: str) -> None:
        await self._write(lambda conn: conn.execute(
            "UPDATE admissions SET held = FALSE WHERE id = $1", chain_id))

    async def claim_owed(self, platform: str, owner: str, seconds: float,
                         skip: frozenset[str] = frozenset()) -> list[ChainRecord]:
        rows = await self._write(lambda conn: conn.fetch(
            f"UPDATE chains SET lease_owner = $1, lease_until = {NOW} + $2"
            " WHERE id IN (SELECT id FROM chains WHERE delivery = 'owed' AND platform = $3"
            f" AND status <> 'running' AND lease_until < {NOW}"
            " AND NOT (id = ANY($4::text[])) FOR UPDATE SKIP LOCKED)"
            f" AND delivery = 'owed' AND lease_until < {NOW}"
            f" RETURNING {CHAIN_COLUMNS}", owner, seconds, platform, sorted(skip)))
        return sorted((record_of(row) for row in rows), key=lambda r: r.started_at)

    async def renew(self, owner: str, seconds: float) -> list[str]:
        # One round trip for all three: held questions, owed deliveries, running chains.
        rows = await self._write(lambda conn: conn.fetch(
            f"WITH held AS (UPDATE admissions SET lease_until = {NOW} + $2"
            " WHERE lease_owner = $1 AND held),"
            f" owed AS (UPDATE chains SET lease_until = {NOW} + $2 WHERE lease_owner = $1"
            " AND status <> 'running' AND delivery = 'owed')"
            f" UPDATE chains SET lease_until = {NOW} + $2"
            " WHERE lease_owner = $1 AND status = 'running' RETURNING id, stop_requested",
            owner, seconds))
        return [row[0] for row in rows if row[1]]

    async def release(self, owner: str) -> None:
        await self._write(lambda conn: conn.execute(
            "WITH held AS (UPDATE admissions SET held = FALSE"
            " WHERE lease_owner = $1 AND held)"
            " UPDATE chains SET lease_until = 0 WHERE lease_owner = $1"
            " AND (status = 'running' OR delivery = 'owed')", owner))

    async def running_elsewhere(self, platform: str, thread: str, owner: str) -> str | None:
        if not thread:
            return None
        return await self._read(lambda conn: conn.fetchval(
            "SELECT id FROM chains WHERE status = 'running' AND platform = $1 AND thread = $2"
            f" AND lease_owner <> $3 AND lease_until > {NOW} LIMIT 1", platform, thread, owner))

    async def request_stop(self, chain_id: str) -> bool:
        async def flag(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                status = await conn.execute(
                    "UPDATE chains SET stop_requested = TRUE WHERE id = $1 AND status = 'running'",
                    chain_id)
                if _count(status):
                    # Delivered when the transaction commits, with the flag already there.
                    await conn.execute("SELECT pg_notify($1, $2)", STOP_CHANNEL, chain_id)
                return bool(_count(status))
        return await self._write(flag)

    async def listen_stops(self, stop: Callable[[str], None]) -> None:
        def heard(conn: object, pid: int, channel: str, payload: str) -> None:
            stop(payload)

        conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT,
                                     command_timeout=COMMAND_TIMEOUT)
        await conn.add_listener(STOP_CHANNEL, heard)
        # A listener whose connection drops hears nothing more: `renew` still finds the flag.
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn

    def _listener_lost(self, conn: object) -> None:
        if self._listener is conn:  # not closed by `close`
            log.warning("the store's Stop listener disconnected; Stops from other processes "
                        "now arrive with the next lease renewal")

    # --- de-duplication and small state ----------------------------------------------------

    async def first_sight(self, event_id: str, keep_seconds: float = 3600.0) -> bool:
        async def claim(conn: asyncpg.Connection) -> bool:
            now = time.time()
            async with conn.transaction():
                await conn.execute("DELETE FROM seen_events WHERE seen_at < $1",
                                   now - keep_seconds)
                status = await conn.execute(
                    "INSERT INTO seen_events (event_id, seen_at) VALUES ($1, $2)"
                    " ON CONFLICT (event_id) DO NOTHING", event_id, now)
            return _count(status) == 1
        return await self._write(claim)

    async def get(self, key: str) -> str | None:
        return await self._read(lambda conn: conn.fetchval(
            "SELECT value FROM kv WHERE key=$1", key))

    async def put(self, key: str, value: str) -> None:
        await self._write(lambda conn: conn.execute(
            "INSERT INTO kv (key, value) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", key, value))

    async def delete(self, key: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM kv WHERE key=$1", key))

    # --- installs by OAuth -----------------------------------------------------------------

    async def save_installation(self, platform: str, workspace: str, data: str) -> None:
        await self._write(lambda conn: conn.execute(
            "INSERT INTO installations (platform, workspace, data, installed_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (platform, workspace)"
            " DO UPDATE SET data = EXCLUDED.data, installed_at = EXCLUDED.installed_at",
            platform, workspace, data, time.time()))

    async def installation(self, platform: str, workspace: str) -> str | None:
        return await self._read(lambda conn: conn.fetchval(
            "SELECT data FROM installations WHERE platform=$1 AND workspace=$2",
            platform, workspace))

    async def delete_installation(self, platform: str, workspace: str) -> bool:
        status = await self._write(lambda conn: conn.execute(
            "DELETE FROM installations WHERE platform=$1 AND workspace=$2",
            platform, workspace))
        return _count(status) > 0

    async def issue_state(self, state: str, expires_at: float) -> None:
        async def issue(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                # Expired states go as new ones come: the table holds only usable links.
                await conn.execute("DELETE FROM oauth_states WHERE expires_at < $1",
                                   time.time())
                await conn.execute(
                    "INSERT INTO oauth_states (state, expires_at) VALUES ($1, $2)",
                    state, expires_at)
        await self._write(issue)

    async def consume_state(self, state: str) -> bool:
        # One DELETE: of processes racing with the same state, exactly one removes the row.
        status = await self._write(lambda conn: conn.execute(
            "DELETE FROM oauth_states WHERE state=$1 AND expires_at >= $2",
            state, time.time()))
        return _count(status) == 1

    # --- chains that could not be saved --------------------------------------------------

    async def abandon(self, chain_id: str, cause: str) -> None:
        """The mark is held by this process until the database takes it (no side file: the
        database is elsewhere). Meanwhile this process keeps the chain's lease, so no other
        process resumes it."""
        self._unsaved[chain_id] = f"storage: {cause}"
        if self._pool is not None:
            await self._save_marks()
        else:
            log.warning("chain %s: the store is closed; the mark is lost", chain_id)

    async def _save_marks(self) -> None:
        saved = []
        try:
            async with self.pool.acquire(timeout=COMMAND_TIMEOUT) as conn:
                for chain_id, reason in list(self._unsaved.items()):
                    await conn.execute(
                        "UPDATE chains SET status='failed', reason=$1,"
                        " finished_at=COALESCE(finished_at, $2) WHERE id=$3 AND status='running'",
                        reason, time.time(), chain_id)
                    saved.append(chain_id)
        except FAILURES:
            pass  # still refused: kept, and tried again after the next write that works
        for chain_id in saved:
            self._unsaved.pop(chain_id, None)
        if saved:
            log.info("marked %d chain(s) that could not be saved as failed", len(saved))

    # --- retention and forgetting ----------------------------------------------------------

    async def prune(self, days: float) -> Removed:
        cutoff = time.time() - days * 86400
        chains = steps = events = 0
        while True:
            batch = await self._write(lambda conn: self._prune_batch(conn, cutoff))
            chains, steps, events = (chains + batch.chains, steps + batch.steps,
                                     events + batch.events)
            if batch.chains < PRUNE_BATCH:
                return Removed(chains=chains, steps=steps, events=events)

    async def _prune_batch(self, conn: asyncpg.Connection, cutoff: float) -> Removed:
        async with conn.transaction():
            ids = [row[0] for row in await conn.fetch(
                "SELECT id FROM chains WHERE status <> 'running' AND finished_at < $1"
                " LIMIT $2 FOR UPDATE SKIP LOCKED", cutoff, PRUNE_BATCH)]
            chains, steps = await self._remove(conn, ids)
            events = _count(await conn.execute("DELETE FROM seen_events WHERE seen_at < $1",
                                               cutoff))
            # Admissions of askers who have not come back since their rate window passed.
            await conn.execute(
                f"DELETE FROM admissions WHERE admitted_at < {NOW} - $1"
                f" AND (NOT held OR lease_until < {NOW})", ADMISSIONS_KEPT)
        return Removed(chains=chains, steps=steps, events=events)

    async def forget(self, asker: str, platform: str | None = None, *,
                     force: bool = False) -> Removed:
        return await self._write(lambda conn: self._forget(conn, asker, platform, force))

    async def _forget(self, conn: asyncpg.Connection, asker: str, platform: str | None,
                      force: bool) -> Removed:
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT id, platform, thread, status, question, answer FROM chains"
                " WHERE asker = $1 AND ($2::text IS NULL OR platform = $2) FOR UPDATE",
                asker, platform or None)
            running = sum(1 for row in rows if row[3] == "running")
            if running and not force:
                return Removed(running=running)
            chains, steps = await self._remove(conn, [row[0] for row in rows])
            # Their votes on other people's answers go too (votes on theirs went with them).
            await conn.execute("DELETE FROM feedback WHERE voter = $1"
                               " AND ($2::text IS NULL OR platform = $2)", asker, platform or None)
            rewritten = await self._unquote(
                conn, {(row[1], row[2]) for row in rows if row[2]},
                {(row[4], row[5]) for row in rows if row[5] is not None})
        return Removed(chains=chains, steps=steps, running=running, rewritten=rewritten)

    async def _remove(self, conn: asyncpg.Connection, ids: list[str]) -> tuple[int, int]:
        """Delete these chains, their steps and kv rows, and the kv rows of threads left
        without a chain (inside the caller's transaction)."""
        if not ids:
            return 0, 0
        threads = await conn.fetch("SELECT DISTINCT platform, thread FROM chains"
                                   " WHERE id = ANY($1::text[]) AND thread <> ''", ids)
        steps = _count(await conn.execute("DELETE FROM steps WHERE chain_id = ANY($1::text[])",
                                          ids))
        await self._delete_suffixed(conn, [f":{i}" for i in ids])
        chains = _count(await conn.execute("DELETE FROM chains WHERE id = ANY($1::text[])", ids))
        left = await conn.fetch(
            "SELECT t.platform, t.thread FROM unnest($1::text[], $2::text[]) AS t(platform,"
            " thread) WHERE NOT EXISTS (SELECT 1 FROM chains c WHERE c.platform = t.platform"
            " AND c.thread = t.thread)",
            [row[0] for row in threads], [row[1] for row in threads])
        await self._delete_suffixed(conn, [f":{row[0]}:{row[1]}" for row in left])
        return chains, steps

    @staticmethod
    async def _delete_suffixed(conn: asyncpg.Connection, suffixes: list[str]) -> None:
        if suffixes:
            await conn.execute(
                "DELETE FROM kv USING unnest($1::text[]) AS s(suffix)"
                " WHERE right(kv.key, length(s.suffix)) = s.suffix", suffixes)

    @staticmethod
    async def _unquote(conn: asyncpg.Connection, threads: set[tuple[str, str]],
                       turns: set[tuple[str, str | None]]) -> int:
        """Take removed turns out of the stored history of the chains left in `threads`."""
        rewritten = 0
        for platform, thread in threads:
            rows = await conn.fetch("SELECT id, history FROM chains WHERE platform=$1"
                                    " AND thread=$2", platform, thread)
            for chain_id, history in rows:
                kept = unquoted(history, turns)
                if kept is not None:
                    await conn.execute("UPDATE chains SET history=$1 WHERE id=$2", kept,
                                       chain_id)
                    rewritten += 1
        return rewritten

