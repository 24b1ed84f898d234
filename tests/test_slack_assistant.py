"""Slack's assistant panel end to end: bolt's `Assistant` middleware behind the real `AsyncApp`
(signed Events API requests), a real `Ponder`, the fake Slack and the fake model server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.slack.assistant import suggested_prompts
from bot.errors import SettingsError
from bot.wording import say
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import ASKER, Harness, envelope, start_harness, stop_harness, three_steps

PANEL = "D0ASSIST"


@pytest.fixture(params=["post+edit", "streaming"])
async def slack(request: pytest.FixtureRequest) -> AsyncIterator[FakeSlack]:
    async with FakeSlack(streaming=request.param == "streaming", update_limit=None) as fake:
        yield fake


@pytest.fixture
async def h(tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    harness = await start_harness(tmp_path, slack, fake_llm)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def open_panel(h: Harness, user: str = ASKER) -> str:
    """`user` opens the assistant panel; the new thread's ts."""
    event = h.slack.start_assistant_thread(user=user, channel=PANEL)
    assert await h.post(envelope(h.slack, event)) == 200
    await h.settle()
    return str(event["assistant_thread"]["thread_ts"])


@pytest.mark.parametrize("slack", ["post+edit"], indirect=True)
async def test_opening_the_panel_greets_and_suggests_three_prompts(h: Harness) -> None:
    thread_ts = await open_panel(h)
    replies = h.replies(thread_ts, channel=PANEL)
    assert [r.text for r in replies] == [say("assistant_greeting", "en")]
    [(channel, ts, title, prompts)] = h.slack.suggested
    assert (channel, ts, title) == (PANEL, thread_ts, say("assistant_prompts_title", "en"))
    assert [p["message"] for p in prompts] == [say(f"assistant_prompt_{n}", "en")
                                               for n in (1, 2, 3)]
    assert all(p["title"] for p in prompts)
    [info] = h.slack.calls_to("users.info")
    assert info.body["user"] == ASKER and info.body["include_locale"] in (True, "true", "1")
    assert h.llm.requests == []  # opening the panel asks nothing


@pytest.mark.parametrize("slack", ["post+edit"], indirect=True)
async def test_the_panel_speaks_chinese_to_a_chinese_locale(h: Harness) -> None:
    h.slack.locales["UZH"] = "zh-CN"
    thread_ts = await open_panel(h, user="UZH")
    assert [r.text for r in h.replies(thread_ts, channel=PANEL)] == [
        say("assistant_greeting", "zh")]
    [(_, _, title, prompts)] = h.slack.suggested
    assert title == say("assistant_prompts_title", "zh")
    assert [p["message"] for p in prompts] == [say(f"assistant_prompt_{n}", "zh")
                                               for n in (1, 2, 3)]
    await open_panel(h, user="UZH")  # remembered: Slack is asked once per person
    assert len(h.slack.calls_to("users.info")) == 1


@pytest.mark.parametrize("slack", ["post+edit"], indirect=True)
async def test_the_suggested_prompts_can_be_set(tmp_path: Path, slack: FakeSlack,
                                                fake_llm: FakeOpenAI) -> None:
    h = await start_harness(tmp_path, slack, fake_llm,
                            slack_suggested_prompts="Is 91 prime? | Why is the sky blue?")
    try:
        await open_panel(h)
    finally:
        await stop_harness(h)
    [(_, _, _, prompts)] = slack.suggested
    assert prompts == [{"title": "Is 91 prime?", "message": "Is 91 prime?"},
                       {"title": "Why is the sky blue?", "message": "Why is the sky blue?"}]


def test_suggested_prompts_setting_reads_json_or_bars() -> None:
    assert suggested_prompts(None) is None
    assert suggested_prompts('[{"title": "Primes", "message": "Is 91 prime?"}, "Why?"]') == [
        {"title": "Primes", "message": "Is 91 prime?"}, {"title": "Why?", "message": "Why?"}]
    for bad in ("[not json", "[1, 2]", "a|b|c|d|e", " | "):
        with pytest.raises(SettingsError, match="SLACK_SUGGESTED_PROMPTS"):
            suggested_prompts(bad)


async def test_a_message_in_an_assistant_thread_is_a_chain_with_title_and_step_status(
        h: Harness) -> None:
    thread_ts = await open_panel(h)
    h.llm.chunk_delay, h.llm.chunk_chars = 0.01, 8  # steps take a moment each
    h.llm.script(*three_steps())
    _, body = h.ask("What is 2+2?", channel=PANEL, mention=False, thread_ts=thread_ts)
    assert body["event"]["channel_type"] == "im"
    assert await h.post(body) == 200
    await h.settle()

    assert h.llm.requests[0].body["messages"][-1]["content"] == "What is 2+2?"
    replies = [r for r in h.replies(thread_ts, channel=PANEL) if r.is_bot]
    assert "4" in replies[-1].text and "Thought for" in replies[-1].text
    assert h.slack.titles[(PANEL, thread_ts)] == "What is 2+2?"
    # The status line followed the steps: their titles, in order, the first at least, all
    # under "is thinking…", and it was cleared once the answer was there.
    shown = [messages for channel, ts, messages in h.slack.loading
             if (channel, ts) == (PANEL, thread_ts)]
    titles = [m[0] for m in shown]
    assert titles and titles[0] == "Restate"
    assert titles == [t for t in ("Restate", "Add", "Check") if t in titles]
    statuses = [s for c, ts, s in h.slack.statuses if (c, ts) == (PANEL, thread_ts)]
    assert set(statuses[:-1]) == {say("thinking_status", "en")} and statuses[-1] == ""

    # A second question in the thread: answered too, the thread keeps its first title.
    h.llm.script(*three_steps())
    _, again = h.ask("And 3+3?", channel=PANEL, mention=False, thread_ts=thread_ts)
    assert await h.post(again) == 200
    await h.settle()
    assert len(h.llm.requests) == 8
    assert h.slack.titles[(PANEL, thread_ts)] == "What is 2+2?"
    assert len(h.slack.calls_to("assistant.threads.setTitle")) == 1


@pytest.mark.parametrize("slack", ["post+edit"], indirect=True)
async def test_a_panel_question_over_the_limit_is_refused_to_the_asker_alone(
        tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> None:
    h = await start_harness(tmp_path, slack, fake_llm, max_question_chars=10)
    try:
        thread_ts = await open_panel(h)
        _, body = h.ask("A question far longer than ten characters", channel=PANEL,
                        mention=False, thread_ts=thread_ts)
        assert await h.post(body) == 200
        await h.settle()
    finally:
        await stop_harness(h)
    assert fake_llm.requests == []
    [refusal] = slack.ephemerals_to(ASKER)
    assert refusal.thread_ts == thread_ts
    assert (PANEL, thread_ts) not in slack.titles
