"""A store that stops taking writes (a full disk, a read-only file): the chain says so in its
thread and is never resumed; a database Ponder cannot use at start-up is one readable line.

The faults are SQLite's own: `PRAGMA query_only` makes every write fail with "attempt to write
a readonly database", `PRAGMA max_page_count` makes one that needs room fail with "database or
disk is full", on the store's own connection (a seam: a small real filesystem is not at hand).
"""

from __future__ import annotations

import logging
import resource
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.events import Question
from bot.service import ChainRequest, Ponder
from bot.store import ChainRecord, StepRecord, Store, StoreFailed
from bot.wording import say
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import start_harness, stop_harness
from tests.surfaces import RecordingSurface
from tests.test_cli import ponder

COULD_NOT_SAVE = "Ponder could not save this conversation"
FAULTS = {"readonly": "attempt to write a readonly database",
          "full": "database or disk is full"}


async def fail_writes(store: Store, fault: str) -> None:
    """From now on the store's connection refuses writes (`readonly`: all of them; `full`:
    every one that needs a page more than the database has now)."""
    def pragma() -> None:
        db = store._conn
        if fault == "readonly":
            db.execute("PRAGMA query_only=1")
        else:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={pages}")
    await store._call(pragma)


def failing_from(store: Store, method: str, fault: str, *, index: int = 0) -> Callable[..., Any]:
    """`store.<method>` that turns the fault on just before it writes (for `add_step`: from
    step `index` on)."""
    real = getattr(store, method)

    async def write(*args: Any, **kwargs: Any) -> Any:
        step = next((a for a in args if isinstance(a, StepRecord)), None)
        if step is None or step.index >= index:
            await fail_writes(store, fault)
        return await real(*args, **kwargs)
    return write


def stored(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """What the database file holds, read on a connection of its own."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def store_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "refuses writes" in r.getMessage()]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    ours = [r for r in caplog.records if r.name.startswith(("bot", "adapters")) and r.exc_info]
    assert ours == [], [r.getMessage() for r in ours]


# --- mid-chain, through the Slack front door --------------------------------------------------


@pytest.mark.parametrize("fault", ["readonly", "full"])
async def test_a_store_that_fails_mid_chain_ends_it_visibly_and_no_restart_resumes_it(
        fault: str, tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    db = tmp_path / "ponder.db"
    h = await start_harness(tmp_path, slack, fake_llm)
    try:
        store = h.ponder.store
        monkeypatch.setattr(store, "add_step", failing_from(store, "add_step", fault, index=2))
        fake_llm.script(Step("Restate", "We need 2+2.", "continue"),
                        Step("Add", "2+2 is 4. " * 600, "continue"),  # needs pages of its own
                        Step("Check", "4-2 is 2.", "final_answer"), Text("**4**"))
        question, body = h.ask("What is 2+2?")
        assert await h.post(body) == 200
        await h.settle()
        replies = [r.text for r in h.replies(question.ts)]
        # Step 1 and step 2 as the model gave them, then the failure, said plainly; no
        # answer was asked for once the store refused.
        assert replies[0].startswith("*Step 1 · Restate*") and "We need 2+2." in replies[0]
        assert replies[1].startswith("*Step 2 · Add*")
        assert COULD_NOT_SAVE in replies[-1] and "may be incomplete" in replies[-1]
        assert not any(r.startswith("*Answer*") for r in replies), replies
        assert len(fake_llm.requests) == 2
        # The cause, logged once (however many writes it refused), without a traceback.
        (line,) = store_lines(caplog)
        assert FAULTS[fault] in line.getMessage() and "PONDER_DB" in line.getMessage()
        no_tracebacks(caplog)
        (chain_id,) = [row[0] for row in stored(db, "SELECT id FROM chains")]
        assert [r.id for r in await store.chains_with_status("running")] == []
        if fault == "readonly":
            # Even the mark was refused: it waits in the side file for the next start.
            assert stored(db, "SELECT status FROM chains") == [("running",)]
            assert store.unsaved_path.read_bytes().split(b"\0")[0] == f"{chain_id}\n".encode()
    finally:
        await stop_harness(h)

    h = await start_harness(tmp_path, slack, fake_llm)  # a new process, the same database
    try:
        assert await h.bot.recover() == []
        await h.settle()
        assert len(fake_llm.requests) == 2  # nothing asked of the model again
        status, reason = stored(db, "SELECT status, reason FROM chains")[0]
        assert status == "failed" and reason.startswith("storage: ")
        assert not any("picking up again" in r.text for r in h.replies(question.ts))
        assert store_lines(caplog) == [line]
    finally:
        await stop_harness(h)


# --- each write of a chain, in-process ----------------------------------------------------


@pytest.mark.parametrize("method", ["start_chain", "add_step", "finish_chain"])
async def test_whichever_write_fails_the_thread_says_so_and_the_chain_is_not_resumed(
        method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAI(auto_steps=3) as fake:
        service = Ponder(make_settings(fake.base_url, tmp_path))
        await service.start()
        store = service.store
        monkeypatch.setattr(store, method, failing_from(store, method, "readonly", index=2))
        surface = RecordingSurface()
        request = ChainRequest("test", Question("你好，二加二是多少？"), "U1", thread="T1")
        outcome = await service.submit(request, surface).wait()
        shown = surface.text()
        assert outcome.status == "failed"
        assert say("store_failed", "zh") in shown  # in the asker's language
        if method == "finish_chain":  # the answer was thought: it is shown, above the note
            assert shown.index("The answer is 42.") < shown.index(say("store_failed", "zh"))
        assert "⏳" not in shown
        assert len(store_lines(caplog)) == 1
        no_tracebacks(caplog)
        await service.close()

        again = Ponder(make_settings(fake.base_url, tmp_path))
        await again.start()
        requests = len(fake.requests)

        async def surface_for(record: ChainRecord) -> RecordingSurface:
            return RecordingSurface()

        assert await again.recover("test", surface_for) == []
        assert len(fake.requests) == requests
        assert await again.store.chains_with_status("running") == []
        await again.close()


async def test_a_mark_the_database_refuses_waits_beside_it_until_a_write_works(
        tmp_path: Path) -> None:
    db = tmp_path / "ponder.db"
    store = Store(db)
    await store.open()
    for chain_id in ("a1", "b2"):
        await store.start_chain(ChainRecord(chain_id, "test", "q", "chain", asker="U1"))
    await fail_writes(store, "readonly")
    with pytest.raises(StoreFailed) as failed:
        await store.add_step("a1", StepRecord(1, "t", "c", 1.0))
    assert failed.value.cause == FAULTS["readonly"]
    await store.abandon("a1", failed.value.cause)
    assert stored(db, "SELECT id, status FROM chains ORDER BY id") == [
        ("a1", "running"), ("b2", "running")]
    assert [r.id for r in await store.chains_with_status("running")] == ["b2"]
    assert store.unsaved_path.read_bytes().rstrip(b"\0") == b"a1\n"
    # The disk has room again: the next write that works writes the mark too.
    await store._call(store._conn.execute, "PRAGMA query_only=0")
    await store.add_step("b2", StepRecord(1, "t", "c", 1.0))
    assert stored(db, "SELECT status, reason FROM chains WHERE id='a1'") == [
        ("failed", f"storage: {FAULTS['readonly']}")]
    assert store.unsaved_path.read_bytes().rstrip(b"\0") == b""
    # A process that dies before the disk has room again: its next start writes the mark
    # before anything can be resumed.
    await fail_writes(store, "readonly")
    await store.abandon("b2", "disk I/O error")
    store._unsaved.clear()  # it died: the side file is all that is left of what it knew
    await store.close()
    assert stored(db, "SELECT status FROM chains WHERE id='b2'") == [("running",)]
    again = Store(db)
    await again.open()
    assert await again.chains_with_status("running") == []
    assert stored(db, "SELECT status FROM chains WHERE id='b2'") == [("failed",)]
    assert again.unsaved_path.stat().st_size == 4096  # its room stays taken
    await again.close()


# --- start-up: a database Ponder cannot use ---------------------------------------------------


async def _filled_db(path: Path) -> None:
    """A database as Ponder left it: up to date, so opening it needs no migration (only the
    check that it takes a write can find it read-only)."""
    store = Store(path)
    await store.open()
    await store.start_chain(ChainRecord("c1", "test", "q", "chain"))
    await store.close()


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """`chattr +i`: read-only even for root (tests may run as root, where modes mean nothing)."""
    marked: list[Path] = []

    def mark(path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not available here: {done.stderr.decode().strip()}")
        marked.append(path)
    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def _no_room() -> None:
    # Writes past 1 KiB fail as on a full disk (EFBIG; Python ignores SIGXFSZ).
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def _one_line(code: int, out: str, err: str, db: Path) -> None:
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ponder: setting PONDER_DB: cannot use {db}: "), err


@pytest.mark.process
@pytest.mark.parametrize("case", ["a folder", "not sqlite", "under a file", "read-only file",
                                  "read-only folder", "no room"])
async def test_a_database_ponder_cannot_use_is_one_readable_line(
        case: str, tmp_path: Path, immutable: Callable[[Path], None]) -> None:
    # `ponder forget` opens the store as the service does, and starts faster.
    db = tmp_path / "ponder.db"
    limit: Callable[[], None] | None = None
    match case:
        case "a folder":
            db.mkdir()
        case "not sqlite":
            db.write_text("these are somebody's notes, not a database\n" * 100)
        case "under a file":
            (tmp_path / "data").write_text("a file where a folder should be")
            db = tmp_path / "data" / "ponder.db"
        case "read-only file":
            await _filled_db(db)
            immutable(db)
        case "read-only folder":  # no room for the write-ahead log beside it
            db = tmp_path / "locked" / "ponder.db"
            db.parent.mkdir()
            await _filled_db(db)
            immutable(db.parent)
        case "no room":
            await _filled_db(db)
            limit = _no_room
    code, out, err = await ponder("forget", "--user", "U1", env={"PONDER_DB": str(db)},
                                  preexec_fn=limit)
    _one_line(code, out, err, db)


@pytest.mark.process
async def test_the_service_does_not_start_on_a_database_it_cannot_use(tmp_path: Path) -> None:
    db = tmp_path / "ponder.db"
    await _filled_db(db)
    env = {"PONDER_DB": str(db), "SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": "s",
           "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    code, out, err = await ponder("slack", "--http", "--port", "0", env=env,
                                  preexec_fn=_no_room)
    _one_line(code, out, err, db)
    assert "disk I/O error" in err or "disk is full" in err


