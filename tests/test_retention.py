"""What is kept, and for how long: `PONDER_RETENTION_DAYS` (a prune when the service starts,
then hourly) and `ponder forget --user ID` (the real command, on a database filled through the
real store API)."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import bot.service
from bot.events import Turn
from bot.service import Ponder
from bot.store import ChainRecord, Removed, StepRecord, Store
from tests.conftest import make_settings, until
from tests.test_cli import ponder

DAY = 86400.0


def stored(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def age(db: Path, chain_id: str, days: float) -> None:
    """The chain started and finished `days` ago (its clock moved back)."""
    then = time.time() - days * DAY
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE chains SET started_at=?,"
                      " finished_at=CASE WHEN finished_at IS NULL THEN NULL ELSE ? END"
                      " WHERE id=?", (then - 10, then, chain_id))


async def chain(store: Store, chain_id: str, *, asker: str = "U1", platform: str = "slack",
                thread: str = "", steps: int = 1, status: str = "answered",
                history: tuple[Turn, ...] = ()) -> None:
    await store.start_chain(ChainRecord(chain_id, platform, f"question {chain_id}", "chain",
                                        asker=asker, thread=thread, history=list(history),
                                        anchor={"message_ts": "1.2"}))
    for i in range(1, steps + 1):
        await store.add_step(chain_id, StepRecord(i, f"step {i}", "thinking", 1.0))
    if status != "running":
        await store.finish_chain(chain_id, status, answer=f"answer {chain_id}"
                                 if status == "answered" else None, total_seconds=2.0)


# --- PONDER_RETENTION_DAYS ---------------------------------------------------------------------


async def test_prune_removes_what_finished_before_the_window_and_never_a_running_chain(
        tmp_path: Path) -> None:
    db = tmp_path / "ponder.db"
    store = Store(db)
    await store.open()
    await chain(store, "old", steps=3, thread="T-old")
    await store.set_owed("old", [{"slot": "answer", "handle": None, "text": "late"}], "expired")
    await chain(store, "old_stopped", status="cancelled", steps=1)
    await chain(store, "old_running", status="running", steps=2)
    await chain(store, "recent", steps=2, thread="T-new")
    for name, thread in (("old", "T-old"), ("recent", "T-new")):
        await store.put(f"votes:{name}", "1")  # kv rows that belong to a chain...
        await store.put(f"turns-left-out:slack:{thread}", "1")  # ...and to its thread
    await store.put("discord:commands", "hash")  # and one that belongs to none
    assert await store.first_sight("EvOld", keep_seconds=1000 * DAY)
    assert await store.first_sight("EvNew", keep_seconds=1000 * DAY)
    for chain_id in ("old", "old_stopped", "old_running"):
        age(db, chain_id, 31)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE seen_events SET seen_at=? WHERE event_id='EvOld'",
                     (time.time() - 31 * DAY,))

    assert await store.prune(30) == Removed(chains=2, steps=4, events=1)
    assert stored(db, "SELECT id FROM chains ORDER BY id") == [("old_running",), ("recent",)]
    assert stored(db, "SELECT chain_id, COUNT(*) FROM steps GROUP BY chain_id"
                      " ORDER BY chain_id") == [("old_running", 2), ("recent", 2)]
    assert stored(db, "SELECT key FROM kv ORDER BY key") == [
        ("discord:commands",), ("turns-left-out:slack:T-new",), ("votes:recent",)]
    assert stored(db, "SELECT event_id FROM seen_events") == [("EvNew",)]
    assert await store.prune(30) == Removed()
    await store.close()


async def test_the_service_prunes_when_it_starts_and_then_every_so_often(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.store")
    db = tmp_path / "ponder.db"
    store = Store(db)
    await store.open()
    await chain(store, "old", steps=2)
    await chain(store, "recent")
    await store.close()
    age(db, "old", 8)
    monkeypatch.setattr(bot.service, "PRUNE_EVERY", 0.05)
    service = Ponder(make_settings("http://127.0.0.1:9/v1", tmp_path, retention_days=7))
    await service.start()
    try:
        await until(lambda: stored(db, "SELECT id FROM chains") == [("recent",)], 5)
        assert any("retention: removed 1 chains (2 steps) finished over 7 days ago"
                   in r.getMessage() for r in caplog.records), caplog.text
        # Later: what has aged past the window since goes at the next round.
        age(db, "recent", 7.5)
        await until(lambda: stored(db, "SELECT id FROM chains") == [], 5)
    finally:
        await service.close()


async def test_retention_0_keeps_everything(tmp_path: Path) -> None:
    db = tmp_path / "ponder.db"
    store = Store(db)
    await store.open()
    await chain(store, "ancient")
    await store.close()
    age(db, "ancient", 3650)
    service = Ponder(make_settings("http://127.0.0.1:9/v1", tmp_path, retention_days=0))
    await service.start()
    assert len(service.housekeeping) == 0  # no pruning task at all
    await service.close()
    assert stored(db, "SELECT id FROM chains") == [("ancient",)]


# --- ponder forget ---------------------------------------------------------------------------


async def filled(db: Path) -> None:
    """U1 asked on Slack (a question and its follow-up in thread T1) and on Discord; U2 wrote
    in U1's thread (its history quotes U1's turns) and in a thread of their own."""
    store = Store(db)
    await store.open()
    await chain(store, "a", thread="T1", steps=2)
    await store.set_owed("a", [{"slot": "answer", "handle": "1.5", "text": "owed"}])
    u1_turns = (Turn("question a", "answer a"),)
    await chain(store, "b", thread="T1", steps=1, history=u1_turns)
    await chain(store, "c", platform="discord", thread="D1", steps=1)
    await chain(store, "d", asker="U2", thread="T1",
                history=(*u1_turns, Turn("question b", "answer b")))
    await chain(store, "e", asker="U2", thread="T2", steps=2)
    await store.put("votes:a", "3")
    await store.put("discord:explained:C1", "1")
    await store.put("turns-left-out:slack:T1", "1")  # U2's chain stays in T1: so does this
    await store.put("turns-left-out:discord:D1", "1")
    await store.close()


@pytest.mark.process
async def test_forget_removes_everything_of_one_user_and_says_how_much(tmp_path: Path) -> None:
    db = tmp_path / "ponder.db"
    await filled(db)
    env = {"PONDER_DB": str(db)}
    code, out, err = await ponder("forget", "--user", "U1", "--platform", "slack", env=env)
    assert code == 0, err
    assert out.strip() == ("Forgot U1 on slack: removed 2 chains (follow-ups included) and 3 "
                           "steps, with their answers and delivery state; 1 other chains no "
                           "longer quote them.")
    assert stored(db, "SELECT id, asker FROM chains ORDER BY id") == [
        ("c", "U1"), ("d", "U2"), ("e", "U2")]
    assert stored(db, "SELECT DISTINCT chain_id FROM steps ORDER BY chain_id") == [
        ("c",), ("d",), ("e",)]
    # U2's chain in U1's thread no longer quotes what U1 asked or was answered.
    (history,) = stored(db, "SELECT history FROM chains WHERE id='d'")[0]
    assert "question a" not in history and "answer b" not in history
    assert stored(db, "SELECT key FROM kv ORDER BY key") == [
        ("discord:explained:C1",), ("turns-left-out:discord:D1",),
        ("turns-left-out:slack:T1",)]

    code, out, err = await ponder("forget", "--user", "U1", env=env)
    assert code == 0, err
    assert out.startswith("Forgot U1: removed 1 chains (follow-ups included) and 1 steps")
    assert stored(db, "SELECT COUNT(*) FROM chains WHERE asker='U1'") == [(0,)]
    assert stored(db, "SELECT COUNT(*) FROM chains") == [(2,)]
    assert stored(db, "SELECT key FROM kv ORDER BY key") == [
        ("discord:explained:C1",), ("turns-left-out:slack:T1",)]


@pytest.mark.process
async def test_forget_leaves_a_running_chain_alone_unless_forced(tmp_path: Path) -> None:
    db = tmp_path / "ponder.db"
    await filled(db)
    store = Store(db)
    await store.open()
    await chain(store, "live", asker="U1", thread="T9", status="running", steps=2)
    await store.close()
    env = {"PONDER_DB": str(db)}
    code, out, err = await ponder("forget", "--user", "U1", env=env)
    assert code == 1 and out == ""
    assert err.strip() == ("ponder: U1 has 1 chain(s) still marked running (a live Ponder may "
                           "be answering); nothing removed. Wait for it to finish, or use "
                           "--force.")
    assert stored(db, "SELECT COUNT(*) FROM chains WHERE asker='U1'") == [(4,)]
    code, out, err = await ponder("forget", "--user", "U1", "--force", env=env)
    assert code == 0, err
    assert "removed 4 chains" in out and "and 6 steps" in out
    assert stored(db, "SELECT COUNT(*) FROM chains WHERE asker='U1'") == [(0,)]


@pytest.mark.process
async def test_forget_without_a_database_removes_nothing_and_makes_none(tmp_path: Path) -> None:
    code, out, err = await ponder("forget", "--user", "U1",
                                  env={"PONDER_DB": str(tmp_path / "data" / "ponder.db")})
    assert code == 0, err
    assert out.startswith("Forgot U1: removed 0 chains")
    assert not (tmp_path / "data").exists()
