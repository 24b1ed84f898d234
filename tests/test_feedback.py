"""Feedback on answers, on both platforms: 👍 / 👎 under each final answer, one vote per person
per answer (a second press changes it, the same press again changes nothing), stored with the
chain on both store back ends, counted in `/metrics` as `ponder_feedback_total{platform,vote}`.
Through the fake Slack (HTTP and Socket Mode, post + edit and streamed) and the fake Discord."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from adapters.slack import SlackBot
from adapters.slack.feedback import FEEDBACK_PREFIX
from adapters.slack.inbound import MemorySeenEvents
from adapters.slack.stop import STOP_ACTION
from bot.metrics import start_metrics_server
from bot.service import Ponder
from bot.store import ChainRecord, Store
from tests.conftest import make_settings, until
from tests.fakes.discord_server import MESSAGE_FLAG_EPHEMERAL, FakeDiscord, scaled_rate_limits
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import (
    ASKER,
    CHANNEL,
    FAST,
    Harness,
    envelope,
    start_harness,
    stop_harness,
    three_steps,
)
from tests.test_discord import Harness as DiscordHarness
from tests.test_discord import four, start, stop
from tests.test_slack_stop import press

UP, DOWN = f"{FEEDBACK_PREFIX}up", f"{FEEDBACK_PREFIX}down"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.pg)]


async def metric(url: str, platform: str, vote: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
    found = re.search(rf'^ponder_feedback_total{{platform="{platform}",vote="{vote}"}} (\S+)$',
                      text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
async def metrics_url() -> AsyncIterator[str]:
    runner = await start_metrics_server(0, lambda: True)
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        await runner.cleanup()


# --- the rule, on both back ends -----------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    where = str(tmp_path / "ponder.db") if request.param == "sqlite" else str(
        request.getfixturevalue("pg_url"))
    opened = Store(where)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_one_vote_per_person_per_answer_kept_with_the_chain(store: Store) -> None:
    for chain in ("c1", "c2"):
        await store.start_chain(ChainRecord(id=chain, platform="slack", question="q",
                                            mode="chain", asker="UASKER"))
    assert await store.vote("c1", "slack", "U1", "up") == "new"
    assert await store.vote("c1", "slack", "U1", "up") == "same"
    assert await store.vote("c1", "slack", "U1", "down") == "changed"
    assert await store.vote("c1", "slack", "U2", "up") == "new"
    assert await store.vote("c2", "slack", "U1", "up") == "new"
    assert await store.vote("gone", "slack", "U1", "up") == "unknown"
    assert await store.votes("c1") == {"up": 1, "down": 1}
    tallies = await store.tallies(0)
    assert [(t.up, t.down) for t in tallies] == [(1, 1), (1, 0)]
    # Forgetting a person takes their votes on others' answers too.
    await store.forget("U1")
    assert await store.votes("c1") == {"up": 1, "down": 0}
    assert await store.votes("c2") == {"up": 0, "down": 0}
    # Their own chains go with their votes.
    await store.forget("UASKER", force=True)
    assert await store.tallies(0) == []


# --- Slack ---------------------------------------------------------------------------------


@pytest.fixture
async def h(tmp_path: Path, fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        harness = await start_harness(tmp_path, slack, fake_llm, streaming=False)
        try:
            yield harness
        finally:
            await stop_harness(harness)


async def test_slack_votes_reach_the_store_and_metrics(h: Harness, metrics_url: str) -> None:
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await until(lambda: any("Thought for" in r.text for r in h.replies(question.ts)), 10)
    await h.settle()
    replies = h.replies(question.ts)
    answer = replies[-1]
    assert set(answer.buttons()) == {UP, DOWN}
    assert "Thought for" in answer.blocks[0]["text"]["text"]
    assert all(r.buttons() == {} for r in replies[:-1])  # Stop came off the first reply
    (record,) = await h.ponder.store.chains_with_status("answered")
    up, down = (await metric(metrics_url, "slack", "up"),
                await metric(metrics_url, "slack", "down"))

    await press(h, h.slack.block_action(answer, UP, user=ASKER))
    await until(lambda: len(h.slack.ephemerals_to(ASKER)) == 1, 10)
    await press(h, h.slack.block_action(answer, UP, user=ASKER))  # a double press
    await until(lambda: len(h.slack.ephemerals_to(ASKER)) == 2, 10)
    assert await h.ponder.store.votes(record.id) == {"up": 1, "down": 0}
    await press(h, h.slack.block_action(answer, DOWN, user=ASKER))  # changes the vote
    await press(h, h.slack.block_action(answer, UP, user="UBOB"))
    await until(lambda: len(h.slack.ephemerals_to(ASKER)) == 3 and h.slack.ephemerals_to(
        "UBOB"), 10)
    await h.settle()
    assert await h.ponder.store.votes(record.id) == {"up": 1, "down": 1}
    assert [e.text for e in h.slack.ephemerals_to(ASKER)] == [
        "Thanks for the feedback (👍).", "You already gave this answer 👍.",
        "Changed your vote to 👎."]
    assert all(e.thread_ts == question.ts for e in h.slack.ephemerals)
    assert await metric(metrics_url, "slack", "up") == up + 2  # asker's first, Bob's
    assert await metric(metrics_url, "slack", "down") == down + 1  # the change


async def test_a_streamed_answer_ends_with_the_buttons_and_takes_votes_over_socket_mode(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        cfg = make_settings(fake_llm.base_url, tmp_path, slack_bot_token=slack.token,
                            slack_app_token=slack.app_token, slack_api_url=slack.base_url,
                            min_steps=3, max_steps=6)
        ponder = Ponder(cfg)
        await ponder.start()
        bot = SlackBot(ponder, cfg, limits=FAST, seen=MemorySeenEvents())
        await bot.start()
        await bot.serve_socket()
        try:
            async with asyncio.timeout(10):
                await slack.socket_connected.wait()
            fake_llm.script(*three_steps())
            question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> 2+2?")
            await slack.push_event(envelope(slack, {
                "type": "app_mention", "user": ASKER, "text": question.text,
                "ts": question.ts, "channel": CHANNEL, "event_ts": question.ts}))
            await until(lambda: slack.thread(CHANNEL, question.ts) and slack.thread(
                CHANNEL, question.ts)[0].stream_state == "stopped", 10)
            (streamed,) = slack.thread(CHANNEL, question.ts)
            assert {UP, DOWN, STOP_ACTION} <= set(streamed.buttons())
            (stop,) = slack.calls_to("chat.stopStream")
            assert {e["action_id"] for b in stop.body["blocks"] for e in b["elements"]} == {
                UP, DOWN}
            acked = await slack.push_interactive(slack.block_action(streamed, DOWN, user=ASKER))
            async with asyncio.timeout(10):
                await slack.acked(acked)
            (record,) = await ponder.store.chains_with_status("answered")
            await until(lambda: slack.ephemerals_to(ASKER), 10)
            assert await ponder.store.votes(record.id) == {"up": 0, "down": 1}
        finally:
            await ponder.drain(0)
            await bot.close(grace=5)
            await ponder.close()


# --- Discord -------------------------------------------------------------------------------


@pytest.fixture
async def dh(tmp_path: Path, fake_llm: FakeOpenAI) -> AsyncIterator[DiscordHarness]:
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as discord:
        harness = await start(tmp_path, discord, fake_llm)
        try:
            yield harness
        finally:
            await stop(harness)


async def test_discord_votes_under_the_answer_one_per_person(dh: DiscordHarness,
                                                            metrics_url: str) -> None:
    dh.llm.script(*four())
    interaction = await dh.ask("What is 2+2?")
    await dh.finished(interaction)
    messages = dh.discord.channel_messages(dh.thread_of(interaction))
    answer = messages[-1]
    assert answer["content"].startswith("**Answer**")
    (row,) = answer["components"]
    ids = [b["custom_id"] for b in row["components"]]
    assert [b["emoji"]["name"] for b in row["components"]] == ["👍", "👎"]
    assert all(not m.get("components") for m in messages[:-1])
    (record,) = await dh.ponder.store.chains_with_status("answered")
    assert ids == [f"ponder:vote:up:{record.id}", f"ponder:vote:down:{record.id}"]
    before = await metric(metrics_url, "discord", "down")

    first = await dh.discord.click(int(answer["id"]), ids[0])
    again = await dh.discord.click(int(answer["id"]), ids[0])
    change = await dh.discord.click(int(answer["id"]), ids[1])
    other = await dh.discord.click(int(answer["id"]), ids[0], user=dh.discord.bob)
    started = time.monotonic()
    for pressed in (first, again, change, other):
        await dh.discord.wait_for(lambda p=pressed: p.response_type is not None, 10)
    assert time.monotonic() - started < 10
    replies = [dh.discord.requests_to("POST", rf"^/interactions/{p.id}/")[0].json
               for p in (first, again, change, other)]
    assert all(r["type"] == 4 and r["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL for r in replies)
    assert [r["data"]["content"] for r in replies] == [
        "Thanks for the feedback (👍).", "You already gave this answer 👍.",
        "Changed your vote to 👎.", "Thanks for the feedback (👍)."]
    assert await dh.ponder.store.votes(record.id) == {"up": 1, "down": 1}
    assert await metric(metrics_url, "discord", "down") == before + 1
