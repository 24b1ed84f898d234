from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings, load_settings
from bot.engine import Engine
from bot.events import Event, Question
from bot.llm import LLMClient
from tests.fakes.openai_server import FakeOpenAI
from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures: the `pg` tests' PostgreSQL)

# Started as a background job of a shell script (`make test &`), the suite and its xdist workers
# inherit SIGINT ignored, and so would every process a test starts: a Ctrl-C sent to one would
# never arrive, and the test would wait out its deadline.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests never read a developer's .env, settings or real tokens.
    for field in Settings.model_fields.values():
        if isinstance(field.validation_alias, str):
            monkeypatch.delenv(field.validation_alias, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


async def until(check: Callable[[], object], seconds: float = 30.0,
                interval: float = 0.02) -> None:
    """Poll `check()` until it is truthy (the loop runs meanwhile); TimeoutError after
    `seconds`. For state no fake can signal (a store row, a service's counters)."""
    async with asyncio.timeout(seconds):
        while True:
            if check():
                return
            await asyncio.sleep(interval)


def make_settings(base_url: str, tmp: Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"openai_base_url": base_url, "request_timeout": 10.0,
                              "connect_timeout": 2.0}
    if tmp is not None:
        values["db"] = tmp / "ponder.db"
    values.update(overrides)
    return load_settings(**values)


def make_engine(settings: Settings) -> tuple[Engine, LLMClient]:
    llm = LLMClient(settings, retry_base_delay=0.01)
    return Engine(llm, settings), llm


async def collect(engine: Engine, question: Question | str) -> list[Event]:
    q = question if isinstance(question, Question) else Question(question)
    return [event async for event in engine.run(q)]


# The Slack harness most Slack tests share: post + chat.update (streaming has tests of its own).
# Imported when used: tests/slack_harness.py itself builds on this module.
@pytest.fixture
async def slack() -> AsyncIterator[Any]:
    from tests.fakes.slack_server import FakeSlack

    async with FakeSlack(streaming=False, update_limit=None) as fake:
        yield fake


@pytest.fixture
async def h(tmp_path: Path, slack: Any, fake_llm: FakeOpenAI) -> AsyncIterator[Any]:
    from tests.slack_harness import start_harness, stop_harness

    harness = await start_harness(tmp_path, slack, fake_llm)
    try:
        yield harness
    finally:
        await stop_harness(harness)
