"""One store suite, run against both back ends: SQLite (one process) and PostgreSQL (several).

The `store` fixture is parametrised over both; the PostgreSQL half is marked `pg` (a real
server started by `tests/pg.py`, `make test-pg`). The tests after the suite are what only a
shared store does: leases, limits counted over processes, Stop through the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bot.events import Turn
from bot.store import (
    ChainRecord,
    Claim,
    Hold,
    PostgresStore,
    SqliteStore,
    StepRecord,
    Store,
    StoreFailed,
    Taken,
)
from bot.store.migrations import POSTGRES
from tests.conftest import until

DAY = 86400.0
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.pg)]


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """PONDER_DB for one back end: an SQLite path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "ponder.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(where: str) -> AsyncIterator[Store]:
    opened = Store(where)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def chain(chain_id: str, **fields: object) -> ChainRecord:
    values: dict[str, object] = {"platform": "slack", "question": f"q {chain_id}",
                                 "mode": "chain", "asker": "U1", "thread": f"C1:{chain_id}"}
    values.update(fields)
    return ChainRecord(id=chain_id, **values)  # type: ignore[arg-type]


async def read_only(store: Store, on: bool) -> None:
    """Make the database refuse writes (or take them again), as a full disk would."""
    if isinstance(store, SqliteStore):
        await store._call(store._conn.execute, f"PRAGMA query_only={int(on)}")
        return
    assert isinstance(store, PostgresStore)
    async with store.pool.acquire() as conn:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute("SET default_transaction_read_only = off")  # for this one session
        await conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = "
                           f"{'on' if on else 'off'}")
        await conn.execute("RESET default_transaction_read_only")
    # The setting holds for new sessions: the pool's connections start again.
    await store.pool.expire_connections()


# --- the suite, on both back ends -----------------------------------------------------------


async def test_the_store_picks_its_back_end_from_ponder_db(where: str) -> None:
    store = Store(where)
    assert isinstance(store, PostgresStore if where.startswith("postgresql://") else SqliteStore)
    assert store.shared is isinstance(store, PostgresStore)


async def test_a_chain_is_recorded_as_it_happens(store: Store) -> None:
    await store.start_chain(chain("a", language="zh", anchor={"message_ts": "1.2"},
                                  history=[Turn("earlier?", "yes")]))
    await store.add_step("a", StepRecord(1, "first", "draft", 0.5))
    await store.add_step("a", StepRecord(1, "first", "final", 0.7))  # a step written again
    await store.add_step("a", StepRecord(2, "second", "more", 0.25))
    await store.set_handles("a", {"step:1": ["1.3"], "answer": ["1.4"]})
    running = await store.chains_with_status("running")
    assert [r.id for r in running] == ["a"]
    await store.finish_chain("a", "answered", answer="42", total_seconds=1.5)

    record = await store.chain("a")
    assert record is not None
    assert (record.status, record.answer, record.total_seconds) == ("answered", "42", 1.5)
    assert record.language == "zh" and record.anchor == {"message_ts": "1.2"}
    assert record.history == [Turn("earlier?", "yes")]
    assert record.handles == {"step:1": ["1.3"], "answer": ["1.4"]}
    assert record.finished_at is not None and record.finished_at >= record.started_at
    assert await store.steps("a") == [StepRecord(1, "first", "final", 0.7),
                                      StepRecord(2, "second", "more", 0.25)]
    assert await store.chain("missing") is None
    assert await store.chains_with_status("running") == []


async def test_a_thread_has_its_history_and_its_asker(store: Store) -> None:
    await store.start_chain(chain("a", thread="C1:t", started_at=1.0))
    await store.finish_chain("a", "answered", answer="one")
    await store.start_chain(chain("b", thread="C1:t", asker="U2", started_at=2.0))
    await store.finish_chain("b", "failed", reason="model_error: no")
    await store.start_chain(chain("c", thread="C1:t", started_at=3.0))
    await store.finish_chain("c", "answered", answer="three")
    assert await store.history("slack", "C1:t") == (Turn("q a", "one"), Turn("q c", "three"))
    assert await store.thread_asker("slack", "C1:t") == "U1"
    assert await store.thread_asker("slack", "C1:other") is None
    assert await store.history("discord", "C1:t") == ()


async def test_what_is_owed_is_kept_until_delivered(store: Store) -> None:
    await store.start_chain(chain("a"))
    await store.finish_chain("a", "answered", answer="x")
    owed = [{"slot": "answer", "handle": None, "text": "x · 中文"}]
    await store.set_owed("a", owed)
    assert [(r.id, r.owed, r.delivery) for r in await store.chains_owing()] == [
        ("a", owed, "owed")]
    await store.set_owed("a", [])
    assert await store.chains_owing() == []
    assert (await store.chain("a")).delivery == "done"  # type: ignore[union-attr]


async def test_an_event_id_is_taken_once_and_forgotten_after_its_time(store: Store) -> None:
    assert await store.first_sight("Ev1") is True
    assert await store.first_sight("Ev1") is False
    assert await store.first_sight("Ev2") is True
    await asyncio.sleep(0.05)
    # Past its keeping time an id is new again (Slack's retries come within minutes).
    assert await store.first_sight("Ev1", keep_seconds=0.01) is True


async def test_small_state_is_kept_by_key(store: Store) -> None:
    assert await store.get("k") is None
    await store.put("k", "1")
    await store.put("k", "2")
    assert await store.get("k") == "2"
    await store.delete("k")
    assert await store.get("k") is None


async def test_what_is_stored_survives_a_restart(where: str) -> None:
    first = Store(where)
    await first.open()
    await first.start_chain(chain("a"))
    await first.add_step("a", StepRecord(1, "t", "c", 0.1))
    assert await first.first_sight("Ev1")
    await first.close()
    again = Store(where)  # its schema is there: nothing is created twice
    await again.open()
    try:
        assert [r.id for r in await again.chains_with_status("running")] == ["a"]
        assert await again.steps("a") == [StepRecord(1, "t", "c", 0.1)]
        assert await again.first_sight("Ev1") is False
    finally:
        await again.close()


async def test_a_refused_write_is_store_failed_and_the_mark_waits_for_the_database(
        store: Store) -> None:
    await store.start_chain(chain("a"))
    await read_only(store, True)
    with pytest.raises(StoreFailed):
        await store.add_step("a", StepRecord(1, "t", "c", 0.1))
    with pytest.raises(StoreFailed):
        await store.first_sight("Ev1")
    await store.abandon("a", "read-only")  # never raises; held meanwhile
    assert await store.chains_with_status("running") == []
    await read_only(store, False)
    await store.put("k", "v")  # the first write that works writes the mark too
    record = await store.chain("a")
    assert record is not None and record.status == "failed"
    assert record.reason is not None and record.reason.startswith("storage: ")


async def test_prune_removes_what_is_old_and_keeps_what_runs(store: Store) -> None:
    old = time.time() - 100 * DAY
    await store.start_chain(chain("old", started_at=old))
    await store.add_step("old", StepRecord(1, "t", "c", 0.1))
    await store.finish_chain("old", "answered", answer="x")
    await store.put("delivery-note:old", "1")
    await store.put("turns-left-out:slack:C1:old", "1")
    await store.start_chain(chain("new"))
    await store.finish_chain("new", "answered", answer="y")
    await store.start_chain(chain("running", started_at=old))
    assert await store.first_sight("EvOld", keep_seconds=1000 * DAY)

    await _age(store, "old", 91 * DAY)
    removed = await store.prune(90)
    assert (removed.chains, removed.steps) == (1, 1)
    assert await store.chain("old") is None
    assert await store.steps("old") == []
    assert await store.get("delivery-note:old") is None
    assert await store.get("turns-left-out:slack:C1:old") is None  # its thread has no chain
    assert await store.chain("new") is not None and await store.chain("running") is not None


async def _age(store: Store, chain_id: str, seconds: float) -> None:
    """Move a finished chain's end `seconds` into the past."""
    if isinstance(store, SqliteStore):
        await store._call(store._conn.execute,
                          "UPDATE chains SET finished_at = finished_at - ? WHERE id = ?",
                          (seconds, chain_id))
        return
    assert isinstance(store, PostgresStore)
    async with store.pool.acquire() as conn:
        await conn.execute("UPDATE chains SET finished_at = finished_at - $1 WHERE id = $2",
                           seconds, chain_id)


async def test_forget_removes_an_asker_and_unquotes_their_turns(store: Store) -> None:
    await store.start_chain(chain("mine", thread="C1:t", started_at=1.0))
    await store.add_step("mine", StepRecord(1, "t", "c", 0.1))
    await store.finish_chain("mine", "answered", answer="secret")
    await store.start_chain(chain("theirs", asker="U2", thread="C1:t", started_at=2.0,
                                  history=[Turn("q mine", "secret"), Turn("other", "a")]))
    await store.start_chain(chain("running", thread="C1:r", started_at=3.0))

    held = await store.forget("U1")
    assert (held.running, held.chains) == (1, 0)  # a running chain: nothing removed
    assert await store.chain("mine") is not None

    removed = await store.forget("U1", force=True)
    assert (removed.chains, removed.steps, removed.rewritten) == (2, 1, 1)
    assert await store.chain("mine") is None and await store.chain("running") is None
    theirs = await store.chain("theirs")
    assert theirs is not None and theirs.history == [Turn("other", "a")]


async def test_recovery_finds_the_chains_left_running(store: Store) -> None:
    await store.start_chain(chain("a", started_at=1.0))
    await store.start_chain(chain("b", started_at=2.0))
    await store.start_chain(chain("c", platform="discord", started_at=3.0))
    await store.start_chain(chain("done", started_at=4.0))
    await store.finish_chain("done", "answered", answer="x")
    await store.release("gone")  # nobody holds them
    claimed = await store.claim_interrupted("slack", "me", 30.0, skip=frozenset({"b"}))
    assert [r.id for r in claimed] == ["a"]


async def test_owed_texts_are_found_for_the_next_process(store: Store) -> None:
    owed = [{"slot": "answer", "handle": None, "text": "late"}]
    for chain_id, platform in (("a", "slack"), ("b", "slack"), ("c", "discord")):
        await store.start_chain(chain(chain_id, platform=platform))
        await store.finish_chain(chain_id, "answered", answer="x")
        await store.set_owed(chain_id, owed)
    await store.start_chain(chain("done"))
    await store.finish_chain("done", "answered", answer="x")
    claimed = await store.claim_owed("slack", "me", 30.0, skip=frozenset({"b"}))
    assert [(r.id, r.owed) for r in claimed] == [("a", owed)]


# --- what only a shared store does ----------------------------------------------------------


@pytest.fixture
async def two(pg_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two processes' stores on one database."""
    first, second = Store(pg_url), Store(pg_url)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest.mark.pg
async def test_two_processes_see_an_event_once(two: tuple[Store, Store]) -> None:
    first, second = two
    seen = await asyncio.gather(*(s.first_sight("EvSame") for s in (first, second) * 5))
    assert sorted(seen) == [False] * 9 + [True]


@pytest.mark.pg
async def test_an_interrupted_chain_is_claimed_by_exactly_one_process(
        two: tuple[Store, Store]) -> None:
    first, second = two
    for n in range(20):
        await first.start_chain(chain(f"c{n}"), Claim("dead", 0.2, 100))
    # Still held by the process that started them: nobody takes them yet.
    assert await second.claim_interrupted("slack", "B", 30.0) == []
    await asyncio.sleep(0.3)  # its lease runs out: that process is gone
    a, b = await asyncio.gather(first.claim_interrupted("slack", "A", 30.0),
                                second.claim_interrupted("slack", "B", 30.0))
    ids = [r.id for r in a] + [r.id for r in b]
    assert sorted(ids) == sorted(f"c{n}" for n in range(20))
    assert len(set(ids)) == 20
    # Renewed, they stay where they are; released, they go at once.
    assert await first.renew("A", 30.0) == []
    assert await second.claim_interrupted("slack", "B", 30.0) == []
    await first.release("A")
    assert {r.id for r in await second.claim_interrupted("slack", "B", 30.0)} == {
        r.id for r in a}


@pytest.mark.pg
async def test_limits_count_every_process(two: tuple[Store, Store]) -> None:
    first, second = two
    await first.start_chain(chain("a", thread="C1:t1"), Claim("A", 30.0, 2))
    await second.start_chain(chain("b", thread="C1:t2"), Claim("B", 30.0, 2))
    with pytest.raises(Taken) as over:
        await first.start_chain(chain("c", thread="C1:t3"), Claim("A", 30.0, 2))
    assert (over.value.what, over.value.running) == ("user", 2)
    with pytest.raises(Taken) as busy:
        await second.start_chain(chain("d", asker="U2", thread="C1:t1"), Claim("B", 30.0, 2))
    assert busy.value.what == "thread"
    assert await first.running_elsewhere("slack", "C1:t2", "A") == "b"
    assert await first.running_elsewhere("slack", "C1:t1", "A") is None  # its own
    # Together, at once: the limit still holds (one of each pair is refused).
    await first.finish_chain("a", "answered", answer="x")
    results = await asyncio.gather(
        first.start_chain(chain("e", thread="C1:t5"), Claim("A", 30.0, 2)),
        second.start_chain(chain("f", thread="C1:t6"), Claim("B", 30.0, 2)),
        return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["NoneType", "Taken"]


@pytest.mark.pg
async def test_a_stop_reaches_the_process_that_runs_the_chain(
        two: tuple[Store, Store]) -> None:
    first, second = two
    heard: list[str] = []
    await first.listen_stops(heard.append)
    await first.start_chain(chain("a"), Claim("A", 30.0, 2))
    assert await second.request_stop("a") is True
    await until(lambda: heard == ["a"], 10)
    assert await first.renew("A", 30.0) == ["a"]  # also there, should the notice be lost
    await first.finish_chain("a", "cancelled")
    assert await second.request_stop("a") is False  # over: nothing to stop


@pytest.mark.pg
async def test_a_database_that_cannot_be_reached_is_a_setting_to_fix(pg_server: object) -> None:
    from bot.errors import SettingsError

    store = Store("postgresql://ponder:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(SettingsError) as failed:
        await store.open()
    assert "PONDER_DB" in str(failed.value) and "hunter2" not in str(failed.value)


@pytest.mark.pg
async def test_processes_starting_together_upgrade_the_schema_once(pg_url: str) -> None:
    stores = [Store(pg_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        conn = await asyncpg.connect(pg_url)
        try:
            versions = [row[0] for row in await conn.fetch("SELECT version FROM ponder_schema")]
            assert sorted(versions) == list(range(1, len(POSTGRES) + 1))  # each once
        finally:
            await conn.close()
    finally:
        for s in stores:
            await s.close()


def hold(question: str, owner: str, *, asker: str = "U1", thread: str = "", limit: int = 2,
         rate: int = 3) -> Hold:
    return Hold(question, "slack", asker, thread, owner, 30.0, limit, rate, 60.0)


@pytest.mark.pg
async def test_admission_counts_every_process(
        two: tuple[Store, Store]) -> None:
    first, second = two
    await first.hold(hold("q1", "A", thread="C1:t1"))
    await second.hold(hold("q2", "B"))
    with pytest.raises(Taken) as over:  # two held, in two processes
        await first.hold(hold("q3", "A"))
    assert (over.value.what, over.value.running) == ("user", 2)
    with pytest.raises(Taken) as busy:
        await second.hold(hold("q4", "B", asker="U2", thread="C1:t1"))
    assert busy.value.what == "thread"
    # A held question becomes its chain, counted once; one given up frees its slot.
    await first.start_chain(chain("q1", thread="C1:t1"), Claim("A", 30.0, 2))
    await second.unhold("q2")
    await first.hold(hold("q5", "A"))
    await first.finish_chain("q1", "answered", answer="x")
    await first.unhold("q5")
    # Nothing runs or is held now, but three were asked within the minute (the refused
    # ones not counted): the rate, over both processes.
    with pytest.raises(Taken) as fast:
        await second.hold(hold("q6", "B"))
    assert (fast.value.what, fast.value.running, fast.value.limit) == ("rate", 3, 3)
    assert 0 <= fast.value.age < 60
    await second.hold(hold("q7", "B", asker="U2"))  # others are not held back


@pytest.mark.pg
async def test_admissions_at_once_in_two_processes_keep_the_limit(
        two: tuple[Store, Store]) -> None:
    first, second = two
    results = await asyncio.gather(
        *(store.hold(hold(f"q{n}", "A" if store is first else "B", rate=100))
          for n, store in enumerate((first, second) * 4)), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["NoneType"] * 2 + ["Taken"] * 6
    # A process that leaves lets go of what it held.
    await first.release("A")
    await second.release("B")
    await first.hold(hold("again", "A"))


@pytest.mark.pg
async def test_owed_texts_are_delivered_by_one_process_at_a_time(
        two: tuple[Store, Store]) -> None:
    first, second = two
    owed = [{"slot": "answer", "handle": None, "text": "late"}]
    for chain_id in ("mine", "free"):
        await first.start_chain(chain(chain_id), Claim("A", 30.0, 10))
        await first.finish_chain(chain_id, "answered", answer="x")
    await first.set_owed("mine", owed, owner="A", seconds=30.0)  # A delivers it
    await first.set_owed("free", owed)  # owed by a process gone: free at once
    await first.release("A")
    await first.set_owed("mine", owed, owner="A", seconds=30.0)  # and A takes it again
    a, b = await asyncio.gather(first.claim_owed("slack", "A2", 30.0),
                                second.claim_owed("slack", "B", 30.0))
    assert sorted(r.id for r in a + b) == ["free"]
    await first.set_owed("free", [])  # delivered by whichever took it
    assert await first.renew("A", 30.0) == []
    assert await second.claim_owed("slack", "B", 30.0) == []
    await first.release("A")  # leaving: another process takes over at once
    assert [r.id for r in await second.claim_owed("slack", "B", 30.0)] == ["mine"]
    await second.set_owed("mine", [], owner="B", seconds=30.0)  # delivered
    await second.release("B")
    assert await first.claim_owed("slack", "A", 30.0) == []
