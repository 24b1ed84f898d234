"""`ponder stats`: answers, failures, feedback, median steps and thinking time per day for the
last days, read from the store as `ponder` run from the command line reads it."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.cli import main
from bot.store import ChainRecord, StepRecord, Store

DAY = 86400.0


async def fill(db: Path) -> None:
    """Chains over three days (noon, local time), and one older than the window."""
    noon = datetime.combine(datetime.now().date(), datetime.min.time()) + timedelta(hours=12)
    today, yesterday = noon.timestamp(), (noon - timedelta(days=1)).timestamp()
    older = (noon - timedelta(days=9)).timestamp()
    store = Store(db)
    await store.open()
    try:
        chains = [  # id, started, status, steps, seconds, votes
            ("a1", today, "answered", 3, 10.0, ["up", "up"]),
            ("a2", today, "answered", 5, 20.0, ["down"]),
            ("a3", today, "answered", 4, 40.0, []),
            ("f1", today, "failed", 1, None, []),
            ("s1", today, "cancelled", 2, None, []),
            ("b1", yesterday, "answered", 6, 12.0, ["up"]),
            ("b2", yesterday, "interrupted", 0, None, []),
            ("old", older, "answered", 2, 5.0, ["up"]),
        ]
        for chain_id, started, status, steps, seconds, votes in chains:
            await store.start_chain(ChainRecord(id=chain_id, platform="slack", question="q",
                                                mode="chain", asker="U", started_at=started))
            for i in range(1, steps + 1):
                await store.add_step(chain_id, StepRecord(i, "t", "c", 1.0))
            await store.finish_chain(chain_id, status, answer="x" if seconds else None,
                                     total_seconds=seconds)
            for n, vote in enumerate(votes):
                assert await store.vote(chain_id, "slack", f"V{n}", vote) == "new"
    finally:
        await store.close()


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ponder.db"
    monkeypatch.setenv("PONDER_DB", str(path))
    return path


def test_stats_per_day_as_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(fill(db))
    assert main(["stats", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    days = out["days"]
    assert len(days) == 7
    today = datetime.fromtimestamp(time.time()).date()
    assert [d["day"] for d in days][-2:] == [(today - timedelta(days=1)).isoformat(),
                                             today.isoformat()]
    assert days[-1] == {"day": today.isoformat(), "answers": 3, "failures": 1, "stopped": 1,
                        "up": 2, "down": 1, "median_steps": 4, "median_seconds": 20.0}
    assert days[-2] == {"day": days[-2]["day"], "answers": 1, "failures": 1, "stopped": 0,
                        "up": 1, "down": 0, "median_steps": 6, "median_seconds": 12.0}
    assert all(d["answers"] == 0 and d["median_steps"] is None for d in days[:-2])
    # The chain older than the window counts nowhere.
    assert out["total"] == {"day": "total", "answers": 4, "failures": 2, "stopped": 1,
                            "up": 3, "down": 1, "median_steps": 4.5, "median_seconds": 16.0}


def test_stats_as_a_table_and_the_days_asked_for(db: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(fill(db))
    assert main(["stats", "--days", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Ponder, the last 2 days")
    assert lines[1].split()[:6] == ["day", "answers", "failures", "stopped", "👍", "👎"]
    today = lines[3].split()
    assert today[:7] == [datetime.now().date().isoformat(), "3", "1", "1", "2", "1", "4"]
    assert lines[4].split()[:2] == ["total", "4"]
    assert len(lines) == 5


def test_stats_without_a_database_makes_none(db: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["answers"] == 0
    assert not db.exists()
    assert main(["stats", "--days", "0"]) == 2
