"""Settings, the rate limiter, the store, and the service's admission rules."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.config import Mode, SettingsError, load_settings
from bot.events import Question, Turn
from bot.ratelimit import RateLimiter
from bot.runner import configured_platforms
from bot.service import ChainRequest, Ponder, Refused
from bot.store import ChainRecord, StepRecord, Store
from tests.conftest import make_settings


def test_defaults_match_the_design() -> None:
    s = load_settings()
    assert s.openai_base_url == "http://localhost:8000/v1"
    assert s.openai_api_key.get_secret_value() == "EMPTY"
    assert s.model == "Qwen2.5-7B-Instruct" and s.mode is Mode.CHAIN
    assert s.max_steps == 25 and s.temperature == 0.2 and s.user_concurrency == 2


def test_settings_come_from_env_and_dotenv(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PONDER_MAX_STEPS=7\nDISCORD_GUILD_IDS=1,2\n")
    monkeypatch.setenv("PONDER_MODE", "native")
    s = load_settings()
    assert s.max_steps == 7 and s.mode is Mode.NATIVE and s.discord_guild_ids == ("1", "2")


def test_env_example_copied_as_it_is_leaves_every_platform_off(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    s = load_settings()
    assert configured_platforms(s) == []  # blank tokens are unset, not empty secrets
    assert s.discord_token is None and s.slack_bot_token is None and s.vllm_python is None
    assert s.openai_base_url == "http://localhost:8000/v1" and s.allowed_users == ()


@pytest.mark.parametrize(("name", "value"), [
    ("PONDER_MAX_STEPS", "-3"), ("OPENAI_BASE_URL", "localhost:8000"),
    ("PONDER_MODE", "magic"), ("PONDER_TEMPERATURE", "hot"), ("DISCORD_GUILD_IDS", "abc"),
])
def test_a_wrong_value_names_the_setting(monkeypatch: pytest.MonkeyPatch, name: str,
                                         value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(f"setting {name}:")
    assert "\n" not in str(info.value)


async def test_rate_limiter_spaces_calls_and_serves_urgent_first() -> None:
    limiter = RateLimiter(rate=10, per=1.0, burst=1)
    order: list[str] = []
    await limiter.acquire()

    async def take(name: str, urgent: bool) -> None:
        await limiter.acquire(urgent=urgent)
        order.append(name)

    began = time.monotonic()
    await asyncio.gather(take("a", False), take("b", False), take("final", True))
    assert order[0] == "final"
    assert time.monotonic() - began >= 0.25  # three more tokens at 10/s


async def test_rate_limiter_pause_holds_everyone() -> None:
    limiter = RateLimiter(rate=100, per=1.0)
    limiter.pause(0.3)
    began = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - began >= 0.29


async def test_rate_limiter_try_acquire_never_waits_nor_jumps_the_queue() -> None:
    limiter = RateLimiter(rate=100, per=1.0, burst=2)
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()  # the burst is spent: no, at once
    await asyncio.sleep(0.03)
    assert limiter.try_acquire()  # refilled
    limiter.pause(0.1)
    assert not limiter.try_acquire()  # paused: nothing handed out
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    # Blocking on purpose: the pause ends and tokens are due, but the limiter's queue has had
    # no turn to hand one to the waiter yet.
    time.sleep(0.15)  # noqa: ASYNC251
    assert not limiter.try_acquire()  # a token is free, but the waiter comes first
    await asyncio.wait_for(waiter, 1)
    assert limiter.try_acquire()


async def test_store_keeps_chains_steps_history_and_dedup(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    await store.open()
    await store.start_chain(ChainRecord("c1", "slack", "What is 2+2?", "chain", thread="T1",
                                        asker="U1"))
    await store.add_step("c1", StepRecord(1, "Add", "4", 0.5))
    await store.finish_chain("c1", "answered", answer="4", total_seconds=1.0)
    await store.start_chain(ChainRecord("c2", "slack", "Times 3?", "chain", thread="T1",
                                        asker="U1", history=[Turn("What is 2+2?", "4")]))
    assert await store.history("slack", "T1") == (Turn("What is 2+2?", "4"),)
    assert [r.id for r in await store.chains_with_status("running")] == ["c2"]
    assert (await store.chain("c2")).history == [Turn("What is 2+2?", "4")]  # type: ignore[union-attr]
    assert await store.steps("c1") == [StepRecord(1, "Add", "4", 0.5)]
    assert await store.thread_asker("slack", "T1") == "U1"
    assert await store.first_sight("Ev1") is True
    assert await store.first_sight("Ev1") is False
    await store.close()
    reopened = Store(tmp_path / "p.db")  # survives a restart; migrations are not re-run
    await reopened.open()
    assert await reopened.first_sight("Ev1") is False
    await reopened.put("k", "v")
    assert await reopened.get("k") == "v"
    await reopened.delete("k")
    assert await reopened.get("k") is None
    await reopened.close()


async def test_a_store_from_before_slots_gains_language_anchor_and_reads_old_handles(
        tmp_path: Path) -> None:
    import json
    import sqlite3

    from bot.store import _MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(f"BEGIN; {_MIGRATIONS[0]}; PRAGMA user_version=1; COMMIT;")
    db.execute("INSERT INTO chains (id, platform, question, mode, status, started_at, handles)"
               " VALUES ('old', 'slack', 'Q', 'chain', 'running', 0, ?)",
               (json.dumps(["1700000000.000100"]),))
    for chain in ("d1", "s1"):
        db.execute("INSERT INTO chains (id, platform, question, mode, status, started_at)"
                   " VALUES (?, 'x', 'Q', 'chain', 'running', 0)", (chain,))
    # Where the old front doors kept a chain's opening message: now the chain's anchor.
    db.execute("INSERT INTO kv VALUES ('discord:opening:d1', ?)",
               (json.dumps({"channel": 7, "message": 8, "text": "🤔", "where": "<#9>"}),))
    db.execute("INSERT INTO kv VALUES ('slack:question:s1', '1700000000.000200')")
    db.commit()
    db.close()
    store = Store(path)
    await store.open()
    old = await store.chain("old")
    assert old is not None and old.language == "en" and old.anchor == {}
    assert old.handles == {"": ["1700000000.000100"]}  # what each showed is read back later
    discord_chain, slack_chain = await store.chain("d1"), await store.chain("s1")
    assert discord_chain is not None and slack_chain is not None
    assert discord_chain.anchor == {"channel": 7, "message": 8, "text": "🤔", "where": "<#9>"}
    assert slack_chain.anchor == {"message_ts": "1700000000.000200"}
    assert await store.get("slack:question:s1") is None
    await store.start_chain(ChainRecord("new", "discord", "二加二是多少？", "chain",
                                        language="zh", anchor={"message": 5}))
    await store.set_handles("new", {"step:1": [{"channel_id": 1, "message_id": 2}]})
    new = await store.chain("new")
    assert new is not None and new.language == "zh" and new.anchor == {"message": 5}
    assert new.handles == {"step:1": [{"channel_id": 1, "message_id": 2}]}
    await store.close()


async def test_refusals_are_polite_and_specific(tmp_path: Path) -> None:
    settings = make_settings("http://127.0.0.1:9/v1", tmp_path, max_question_chars=20,
                             allowed_users="U1,U2")
    ponder = Ponder(settings)
    await ponder.start()

    def ask(text: str, asker: str = "U1") -> str | None:
        return ponder.refusal(ChainRequest("slack", Question(text), asker))

    assert "include a question" in (ask("   ") or "")
    assert "limit is 20" in (ask("x" * 21) or "")
    assert "not on the list" in (ask("hi", asker="U9") or "")
    assert ask("hi") is None
    assert "上限是 20" in (ask("请" * 21) or "")  # in the asker's language
    with pytest.raises(Refused):
        ponder.submit(ChainRequest("slack", Question(""), "U1"), surface=None)  # type: ignore[arg-type]
    await ponder.close()


def test_env_example_lists_every_setting() -> None:
    from bot.config import Settings

    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    for field in Settings.model_fields.values():
        assert f"\n{field.validation_alias}=" in text, field.validation_alias
