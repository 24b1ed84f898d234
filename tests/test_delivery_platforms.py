"""Through the fakes: the platform vanishes as the final answer is written and comes back once
the chain is over (longer than the presenter's own retries, so the answer is owed). The thread
gets the complete answer and its summary without a restart — or, when Ponder is stopped during
the outage, from the next process. Retry pauses are scaled down; the code paths are
production's."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from bot import delivery, presenter
from tests.conftest import until
from tests.fakes.discord_server import FakeDiscord, scaled_rate_limits
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import Call, FakeSlack
from tests.slack_harness import start_harness, stop_harness
from tests.test_discord import start as start_discord
from tests.test_discord import stop as stop_discord
from tests.test_faults import free_port


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presenter, "FINAL_POST_PAUSES", (0.1, 0.3))
    monkeypatch.setattr(delivery, "FIRST_WAIT", 0.2)


def script(llm: FakeOpenAI) -> None:
    # At a model's pace, so the answer is first posted unfinished (an answer already whole
    # when its turn to be posted comes is posted whole, with its summary, in one write).
    llm.chunk_delay, llm.chunk_chars = 0.02, 4
    llm.script(Step("Add", "Two and two make four.", "continue"),
               Step("Check", "Four less two is two, so four is right.", "final_answer"),
               Text("The answer is **4**."))


def slack_down_at_the_answer(slack: FakeSlack, seconds: float) -> list[asyncio.Task[None]]:
    """Slack vanishes the moment Ponder first writes the answer, for `seconds`."""
    outages: list[asyncio.Task[None]] = []

    def watch(call: Call) -> None:
        text = json.dumps(call.body, ensure_ascii=False) if call.method.startswith("chat.") \
            else ""
        if not outages and "Answer" in text:
            outages.append(slack.outage(seconds))

    slack.on_call(watch)
    return outages


async def discord_down_at_the_answer(discord: FakeDiscord,
                                     outages: list[asyncio.Task[None]]) -> None:
    """Discord vanishes as soon as an answer message has been written (back when the test
    says so)."""
    await discord.wait_for(lambda: any(
        "Answer" in json.dumps(r.body, ensure_ascii=False)
        for r in discord.requests if r.method in ("POST", "PATCH")), 30)
    outages.append(discord.outage(600))


async def test_slack_an_answer_written_during_an_outage_lands_when_slack_is_back(
        tmp_path: Path) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack, FakeOpenAI() as llm:
        script(llm)
        outages = slack_down_at_the_answer(slack, seconds=600)  # back when the test says so
        h = await start_harness(tmp_path, slack, llm, min_steps=2)
        try:
            question, body = h.ask("What is 2+2?")
            assert await h.post(body) == 200
            await until(lambda: bool(outages))
            await until(lambda: not h.ponder.running)  # thought through; not delivered
            (record,) = await h.ponder.store.chains_with_status("answered")
            assert h.ponder.deliveries.owing(record.id)
            assert "Thought for" not in h.replies(question.ts)[-1].text
            outages[0].cancel()
            await slack.come_back()  # Slack is back; no restart
            await until(lambda: "Thought for" in h.replies(question.ts)[-1].text)
            last = h.replies(question.ts)[-1].text
            assert "The answer is *4*." in last
            await until(lambda: not h.ponder.deliveries.owing(record.id))
            done = await h.ponder.store.chain(record.id)
            assert done is not None and done.delivery == "done"
        finally:
            await stop_harness(h)


async def test_slack_stopped_during_the_outage_the_next_process_delivers(
        tmp_path: Path) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack, FakeOpenAI() as llm:
        script(llm)
        outages = slack_down_at_the_answer(slack, seconds=600)  # back when the test says so
        h = await start_harness(tmp_path, slack, llm, min_steps=2)
        question, body = h.ask("What is 2+2?")
        assert await h.post(body) == 200
        await until(lambda: bool(outages))
        await until(lambda: not h.ponder.running)
        (record,) = await h.ponder.store.chains_with_status("answered")
        assert h.ponder.deliveries.owing(record.id)
        await stop_harness(h)  # SIGTERM during the outage
        owed = await _store_chain(tmp_path, record.id)
        assert owed == "owed"
        outages[0].cancel()
        await slack.come_back()
        h2 = await start_harness(tmp_path, slack, llm, min_steps=2)
        try:
            assert await h2.bot.recover() == []
            await until(lambda: "Thought for" in h2.replies(question.ts)[-1].text)
            assert "The answer is *4*." in h2.replies(question.ts)[-1].text
            await until(lambda: not h2.ponder.deliveries.owing(record.id))
            done = await h2.ponder.store.chain(record.id)
            assert done is not None and done.delivery == "done"
        finally:
            await stop_harness(h2)


async def _store_chain(tmp_path: Path, chain_id: str) -> str:
    """The chain's delivery state as the store has it, read by a fresh service."""
    from bot.store import Store

    store = Store(tmp_path / "ponder.db")
    await store.open()
    try:
        record = await store.chain(chain_id)
        return record.delivery if record is not None else "?"
    finally:
        await store.close()


async def test_discord_an_answer_written_during_an_outage_lands_when_discord_is_back(
        tmp_path: Path) -> None:
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as discord, \
            FakeOpenAI() as llm:
        script(llm)
        outages: list[asyncio.Task[None]] = []
        h = await start_discord(tmp_path, discord, llm, min_steps=2)
        watcher = asyncio.create_task(discord_down_at_the_answer(discord, outages))
        try:
            interaction = await h.ask("What is 2+2?")
            await until(lambda: bool(outages))
            await until(lambda: not h.ponder.running)  # thought through; not delivered
            (record,) = await h.ponder.store.chains_with_status("answered")
            assert h.ponder.deliveries.owing(record.id)
            outages[0].cancel()
            await discord.come_back()  # Discord is back; no restart
            thread_id = h.thread_of(interaction)
            await until(lambda: any("Thought for" in t for t in h.texts(thread_id)))
            answer = [t for t in h.texts(thread_id) if t.startswith("**Answer**")]
            assert answer and "The answer is **4**." in answer[-1]
            # The message the chain hangs from gets its summary too, once Discord is back.
            opening = await h.finished(interaction)
            assert "Thought for" in opening.rsplit("\n", 1)[-1]
            await until(lambda: not h.ponder.deliveries.owing(record.id))
            done = await h.ponder.store.chain(record.id)
            assert done is not None and done.delivery == "done"
        finally:
            watcher.cancel()
            await stop_discord(h)


async def test_slack_an_answer_owed_past_the_bound_is_logged_and_on_metrics(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    async with FakeSlack(streaming=False, update_limit=None) as slack, FakeOpenAI() as llm:
        script(llm)
        outages = slack_down_at_the_answer(slack, seconds=600)  # it never comes back in time
        h = await start_harness(tmp_path, slack, llm, min_steps=2, metrics_port=port,
                                delivery_hours=1.0 / 3600)
        try:
            _, body = h.ask("What is 2+2?")
            assert await h.post(body) == 200
            await until(lambda: bool(outages))
            await until(lambda: not h.ponder.running)
            (record,) = await h.ponder.store.chains_with_status("answered")
            with caplog.at_level(logging.ERROR, logger="bot.delivery"):
                await until(lambda: not h.ponder.deliveries.owing(record.id))
            assert any("given up" in r.getMessage() for r in caplog.records)
            expired = await h.ponder.store.chain(record.id)
            assert expired is not None and expired.delivery == "expired" and expired.owed
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                metrics = await resp.text()
            counted = [line for line in metrics.splitlines()
                       if line.startswith('ponder_undelivered_total{platform="slack"}')]
            assert counted and float(counted[0].split()[-1]) >= 1
        finally:
            outages[0].cancel()
            await stop_harness(h)


async def test_discord_a_question_asked_as_discord_vanishes_is_answered_when_it_is_back(
        tmp_path: Path) -> None:
    """The /reason arrives and is deferred; then Discord is unreachable before the thread can
    be opened. The question waits (its interaction token lives 15 minutes) and is answered
    once Discord is back, instead of being dropped."""
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as discord, \
            FakeOpenAI() as llm:
        script(llm)
        outages: list[asyncio.Task[None]] = []

        async def down_after_the_defer() -> None:
            await discord.wait_for(lambda: any(r.path.endswith("/callback")
                                               for r in discord.requests), 30)
            outages.append(discord.outage(1.5))

        h = await start_discord(tmp_path, discord, llm, min_steps=2)
        watcher = asyncio.create_task(down_after_the_defer())
        try:
            interaction = await h.ask("What is 2+2?")
            await until(lambda: bool(outages))
            opening = await h.finished(interaction, seconds=40)
            assert "Thought for" in opening.rsplit("\n", 1)[-1]
            answer = [t for t in h.texts(h.thread_of(interaction)) if t.startswith("**Answer")]
            assert answer and "The answer is **4**." in answer[-1]
        finally:
            watcher.cancel()
            await stop_discord(h)
