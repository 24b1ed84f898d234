"""Stop on Slack, end to end: the real bolt app against the fake Slack (HTTP mode, signed
`block_actions`; and Socket Mode with streaming), a real `Ponder`, the fake model server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from adapters.slack import SlackBot
from adapters.slack.inbound import MemorySeenEvents
from adapters.slack.stop import STOP_ACTION
from bot.service import Ponder
from tests.conftest import make_settings, until
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack, Message
from tests.slack_harness import (
    ASKER,
    CHANNEL,
    FAST,
    Harness,
    envelope,
    sign,
    start_harness,
    stop_harness,
)


def slow_chain() -> list[Step | Text]:
    return [*[Step(f"S{n}", "slowly " * 30, "continue") for n in range(6)], Text("never")]


async def press(h: Harness, payload: dict[str, Any]) -> int:
    """Slack delivers a press over HTTP as a signed form post: `payload=<json>`."""
    raw = urlencode({"payload": json.dumps(payload)})
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sign(raw, stamp)}
    async with h.http.post(h.url, data=raw, headers=headers) as resp:
        await resp.read()
        return resp.status


@pytest.fixture
async def h(tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    harness = await start_harness(tmp_path, slack, fake_llm, streaming=False)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def test_the_asker_stops_a_chain_from_its_first_reply_and_others_are_told_privately(
        h: Harness) -> None:
    h.llm.chunk_delay = 0.03
    h.llm.script(*slow_chain())
    question, body = h.ask("Take your time")
    assert await h.post(body) == 200
    await until(lambda: h.replies(question.ts), 10)
    first = h.replies(question.ts)[0]
    assert STOP_ACTION in first.buttons()
    # The text is shown in blocks, so the blocks carry it (the `text` is the fallback).
    assert first.blocks[0]["type"] == "section"

    assert await press(h, h.slack.block_action(first, STOP_ACTION, user="UBOB")) == 200
    await until(lambda: h.slack.ephemerals_to("UBOB"), 10)
    (note,) = h.slack.ephemerals_to("UBOB")
    assert note.text.startswith("Only the person who asked, or a workspace admin")
    assert note.thread_ts == question.ts
    assert not any("Stopped after" in r.text for r in h.replies(question.ts))

    asked = len(h.llm.requests)
    assert await press(h, h.slack.block_action(first, STOP_ACTION, user=ASKER)) == 200
    await until(lambda: any("Stopped after" in r.text for r in h.replies(question.ts)), 10)
    await h.settle()
    replies = h.replies(question.ts)
    assert replies[-1].text.startswith("⏹️ Stopped after")
    steps_shown = len(replies)
    await asyncio.sleep(0.3)
    assert len(h.replies(question.ts)) == steps_shown  # no further step is posted
    assert len(h.llm.requests) <= asked + 1
    assert h.replies(question.ts)[0].buttons() == {}  # nothing left to stop
    records = await h.ponder.store.chains_with_status("cancelled")
    assert [r.thread for r in records] == [f"{CHANNEL}:{question.ts}"]
    assert not h.slack.ephemerals_to(ASKER)


async def test_a_workspace_admin_may_stop_someone_elses_chain(h: Harness) -> None:
    h.slack.admins.add("UADMIN")
    h.llm.chunk_delay = 0.03
    h.llm.script(*slow_chain())
    question, body = h.ask("Another slow one")
    await h.post(body)
    await until(lambda: h.replies(question.ts), 10)
    first = h.replies(question.ts)[0]
    await press(h, h.slack.block_action(first, STOP_ACTION, user="UADMIN"))
    await until(lambda: any("Stopped after" in r.text for r in h.replies(question.ts)), 10)
    assert not h.slack.ephemerals_to("UADMIN")
    assert [c.body["user"] for c in h.slack.calls_to("users.info")] == ["UADMIN"]


async def test_stop_after_the_end_says_it_has_finished(h: Harness) -> None:
    h.llm.script(Step("Only", "2+2 is 4.", "final_answer"), Text("**4**"))
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await until(lambda: any("Thought for" in r.text for r in h.replies(question.ts)), 10)
    await h.settle()
    # The button a slow client still shows is pressed after the chain ended.
    first = h.replies(question.ts)[0]
    stale = Message(first.channel, first.ts, first.thread_ts, first.text,
                    bot_id=first.bot_id, blocks=[{"type": "actions", "elements": [
                        {"type": "button", "action_id": STOP_ACTION,
                         "value": (await h.ponder.store.chains_with_status("answered"))[0].id}]}])
    await press(h, h.slack.block_action(stale, STOP_ACTION, user=ASKER))
    await until(lambda: h.slack.ephemerals_to(ASKER), 10)
    assert h.slack.ephemerals_to(ASKER)[0].text == "This chain has already finished."


async def test_stop_over_socket_mode_stops_a_streamed_chain(
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
            fake_llm.chunk_delay = 0.03
            fake_llm.script(*slow_chain())
            question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> Go slowly")
            await slack.push_event(envelope(slack, {
                "type": "app_mention", "user": ASKER, "text": question.text,
                "ts": question.ts, "channel": CHANNEL, "event_ts": question.ts}))
            await until(lambda: slack.thread(CHANNEL, question.ts), 10)
            streamed = slack.thread(CHANNEL, question.ts)[0]
            assert streamed.stream_state == "streaming"
            assert STOP_ACTION in streamed.buttons()
            acked = await slack.push_interactive(
                slack.block_action(streamed, STOP_ACTION, user=ASKER))
            async with asyncio.timeout(10):
                await slack.acked(acked)
            await until(lambda: streamed.stream_state == "stopped", 10)
            assert "Stopped after" in streamed.text
            assert "👍" not in str(streamed.blocks)  # no feedback on a stopped chain
            async with asyncio.timeout(10):
                await bot.idle()
            assert len(slack.thread(CHANNEL, question.ts)) == 1  # no further step posted
            assert [r.status for r in await ponder.store.chains_with_status("cancelled")] == [
                "cancelled"]
        finally:
            await ponder.drain(0)
            await bot.close(grace=5)
            await ponder.close()
