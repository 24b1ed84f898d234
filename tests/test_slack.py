"""The Slack front door end to end: the real bolt `AsyncApp` served over HTTP (signed requests
to `/slack/events`) and Socket Mode, a real `Ponder` service, the fake Slack Web API and the fake
model server. Assertions are about what a person in Slack would see."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from pathlib import Path

import pytest

from adapters.slack import SlackBot, SlackLimits
from adapters.slack.chunks import continued
from adapters.slack.inbound import MemorySeenEvents, question_text
from adapters.slack.mrkdwn import to_mrkdwn
from bot.service import Ponder
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack, Message
from tests.slack_harness import (
    ASKER,
    CHANNEL,
    FAST,
    SECRET,
    Harness,
    envelope,
    shows_what_was_thought,
    sign,
    start_harness,
    stop_harness,
    texts_sent,
    three_steps,
)

# --- the basic flow ------------------------------------------------------------------------


async def test_mention_is_answered_step_by_step_in_its_thread(h: Harness) -> None:
    h.llm.chunk_delay, h.llm.chunk_chars = 0.01, 4  # a model's pace: steps visibly grow
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    assert await h.post(body) == 200
    await h.settle()

    replies = h.replies(question.ts)
    assert len(replies) == 4, [r.text for r in replies]
    assert all(r.channel == CHANNEL and r.thread_ts == question.ts for r in replies)
    # Nothing went anywhere else: every bot message is one of these replies.
    assert {m.ts for m in h.slack.bot_messages()} == {r.ts for r in replies}

    steps, answer = replies[:3], replies[3]
    for n, (reply, title) in enumerate(zip(steps, ["Restate", "Add", "Check"], strict=True), 1):
        assert reply.text.startswith(f"*Step {n} · {title}* · "), reply.text
        assert reply.text.split("\n")[0].endswith(" s")  # the step's time
        assert "⏳" not in reply.text
    assert "We need 2+2." in steps[0].text
    # Step replies were posted, then edited in place while they streamed.
    assert any(r.edits >= 1 for r in steps)
    for reply in steps:
        sizes = [len(t) for t in reply.texts]
        assert sizes[-1] == max(sizes)
    assert answer.text.startswith("*Answer*\n*4*")  # Markdown bold became mrkdwn bold
    assert answer.text.rstrip().endswith("steps_")
    assert "_Thought for " in answer.text and " s · 3 steps_" in answer.text
    # The question asked of the model is the text without the bot's mention.
    assert h.llm.requests[0].body["messages"][-1]["content"] == "What is 2+2?"


async def test_status_shows_while_thinking_and_is_cleared(h: Harness) -> None:
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await h.settle()
    assert h.slack.statuses[0] == (CHANNEL, question.ts, "is thinking…")
    assert h.slack.statuses[-1] == (CHANNEL, question.ts, "")
    assert not question.reactions


async def test_without_assistant_status_a_reaction_shows_thinking_then_done(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=False, update_limit=None, assistant_status=False) as slack:
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            fake_llm.script(*three_steps())
            question, body = h.ask("What is 2+2?")
            await h.post(body)
            await asyncio.sleep(0.05)
            await h.settle()
            added = [c.body["name"] for c in slack.calls_to("reactions.add")]
            removed = [c.body["name"] for c in slack.calls_to("reactions.remove")]
            assert added == ["hourglass_flowing_sand", "white_check_mark"]
            assert removed == ["hourglass_flowing_sand"]
            assert set(question.reactions) == {"white_check_mark"}
            # The workspace is remembered: the next chain goes straight to reactions.
            fake_llm.script(*three_steps())
            _, body = h.ask("Again?")
            await h.post(body)
            await h.settle()
            assert slack.count("assistant.threads.setStatus") == 1
        finally:
            await stop_harness(h)


async def test_mention_inside_a_thread_answers_in_that_thread(h: Harness) -> None:
    parent = h.slack.add_user_message(CHANNEL, "Let's discuss numbers", user="UOTHER")
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?", thread_ts=parent.ts)
    await h.post(body)
    await h.settle()
    assert h.replies(question.ts) == []
    mine = [r for r in h.replies(parent.ts) if r.is_bot]
    assert len(mine) == 4 and "Thought for" in mine[-1].text


async def test_dm_is_answered_in_a_thread_under_it(h: Harness) -> None:
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?", channel="D0DIRECT", mention=False)
    await h.post(body)
    await h.settle()
    replies = h.replies(question.ts, channel="D0DIRECT")
    assert len(replies) == 4 and "Thought for" in replies[-1].text


# --- safety and formatting -----------------------------------------------------------------


async def test_model_text_never_pings_anyone(h: Harness) -> None:
    h.llm.script(Step("Shout", "Tell <!channel> and <!here> & <@U0BOSS> about a<b>c", "continue"),
                 Step("Calm", "<!everyone> ok", "continue"),
                 Step("Done", "fine", "final_answer"),
                 Text("Answer for <!channel>: 1 < 2 && 3 > 2"))
    question, body = h.ask("Make noise")
    await h.post(body)
    await h.settle()
    sent = texts_sent(h.slack)
    assert sent
    for text in sent:
        assert "<!" not in text and "<@" not in text, text
    first = h.replies(question.ts)[0].text
    assert "&lt;!channel&gt; and &lt;!here&gt; &amp; &lt;@U0BOSS&gt; about a&lt;b&gt;c" in first
    assert "1 &lt; 2 &amp;&amp; 3 &gt; 2" in h.replies(question.ts)[-1].text


async def test_markdown_becomes_mrkdwn(h: Harness) -> None:
    answer = ("## Result\n**Bold** and *italic* and ~~gone~~, see [the docs](https://example.com/a?b=1&c=2)\n"
              "- first\n- second\n```python\nprint(1 < 2)\n```")
    h.llm.script(Step("A", "a", "continue"), Step("B", "b", "continue"),
                 Step("C", "c", "final_answer"), Text(answer))
    question, body = h.ask("Format please")
    await h.post(body)
    await h.settle()
    text = h.replies(question.ts)[-1].text
    assert "*Result*" in text
    assert "*Bold* and _italic_ and ~gone~" in text
    assert "<https://example.com/a?b=1&amp;c=2|the docs>" in text
    assert "• first\n• second" in text
    assert "```\nprint(1 &lt; 2)\n```" in text
    assert "**" not in text and "##" not in text


def test_mrkdwn_conversion_rules() -> None:
    assert to_mrkdwn("**a** __b__ *c* _d_ ~~e~~") == "*a* *b* _c_ _d_ ~e~"
    assert to_mrkdwn("snake_case_name and 2 * 3 * 4") == "snake_case_name and 2 * 3 * 4"
    assert to_mrkdwn("`**x** <y>`") == "`**x** &lt;y&gt;`"
    assert to_mrkdwn("# Title") == "*Title*"
    assert to_mrkdwn("  - nested\n* top\n1. one") == "    ◦ nested\n• top\n1. one"
    assert to_mrkdwn("> quoted **b**") == "> quoted *b*"
    assert to_mrkdwn("[x](javascript:alert(1))") == "[x](javascript:alert(1))"
    assert to_mrkdwn("<https://a.b/c>") == "<https://a.b/c>"
    assert to_mrkdwn("```\n<!here>\n```") == "```\n&lt;!here&gt;\n```"


def test_manifest_asks_for_what_the_adapter_uses() -> None:
    manifest = (Path(__file__).resolve().parents[1] / "slack-manifest.yml").read_text()
    for needed in ("app_mentions:read", "chat:write", "channels:history", "groups:history",
                   "im:history", "reactions:write", "- app_mention", "- message.channels",
                   "- message.im", "socket_mode_enabled: true", "messages_tab_enabled: true"):
        assert needed in manifest, needed


def test_question_text_undoes_slack_markup() -> None:
    raw = "<@UBOT> is <https://x.y|this> &lt;ok&gt; for <#C1|general> and <@U2>? <!here>"
    assert question_text(raw, "UBOT") == "is this (https://x.y) <ok> for #general and @U2? @here"


async def test_long_content_is_split_and_never_too_long(h: Harness) -> None:
    # Escaping makes `<` four times longer: the presenter must split the rendered text.
    long = ("Compare a<b with care. " * 400).strip()
    h.llm.script(Step("Long", long, "continue"), Step("B", "b", "continue"),
                 Step("C", "c", "final_answer"), Text("done"))
    question, body = h.ask("Go long")
    await h.post(body)
    await h.settle()
    assert all(c.error != "msg_too_long" for c in h.slack.calls)
    assert all(len(t) <= 4000 for t in texts_sent(h.slack))
    replies = h.replies(question.ts)
    step_one = [r for r in replies if "Compare a&lt;b" in r.text]
    assert len(step_one) >= 3
    shown = "".join(r.text for r in step_one)
    assert shown.count("Compare a&lt;b with care.") == 400


# --- delivery: signatures, retries, socket mode --------------------------------------------


async def test_a_redelivered_event_starts_nothing(h: Harness) -> None:
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    assert await h.post(body) == 200
    assert await h.post(body, retry_num=1) == 200
    assert await h.post(body, retry_num=2) == 200
    await h.settle()
    replies = h.replies(question.ts)
    assert sum("Thought for" in r.text for r in replies) == 1
    assert len(replies) == 4
    assert h.slack.count("chat.postMessage") == 4


async def test_a_redelivery_after_a_restart_is_still_recognised(
        tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> None:
    h = await start_harness(tmp_path, slack, fake_llm)
    fake_llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await h.settle()
    await stop_harness(h)
    h = await start_harness(tmp_path, slack, fake_llm)  # a new process, the same database
    try:
        assert await h.post(body, retry_num=3) == 200
        await h.settle()
        assert len(fake_llm.requests) == 4
        assert sum("Thought for" in r.text for r in h.replies(question.ts)) == 1
    finally:
        await stop_harness(h)


async def test_memory_dedup_forgets_after_its_window() -> None:
    seen = MemorySeenEvents(keep_seconds=0.05)
    assert await seen.first_sight("Ev1") is True
    assert await seen.first_sight("Ev1") is False
    await asyncio.sleep(0.06)
    assert await seen.first_sight("Ev1") is True


async def test_bad_or_stale_signatures_are_refused(h: Harness) -> None:
    _, body = h.ask("Sneaky?")
    assert await h.post(body, signature="v0=" + "0" * 64) == 401
    stale = int(time.time()) - 10 * 60
    raw = json.dumps(body)
    assert await h.post(body, timestamp=stale, signature=sign(raw, str(stale))) == 401
    assert await h.post(body, signature=sign(json.dumps(body), str(int(time.time())),
                                             secret="wrong-secret")) == 401
    await h.settle()
    assert h.llm.requests == []
    assert h.slack.count("chat.postMessage") == 0


async def test_url_verification_challenge_is_answered(h: Harness) -> None:
    raw = json.dumps({"token": "x", "challenge": "abc123", "type": "url_verification"})
    stamp = str(int(time.time()))
    async with h.http.post(h.url, data=raw, headers={
        "Content-Type": "application/json", "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": sign(raw, stamp)}) as resp:
        assert resp.status == 200
        assert "abc123" in await resp.text()


async def started_socket_mode_ponder(tmp_path: Path, slack: FakeSlack,
                                     llm: FakeOpenAI) -> Ponder:
    """A started `Ponder` whose settings serve Slack over Socket Mode (the caller closes it)."""
    cfg = make_settings(llm.base_url, tmp_path, slack_bot_token=slack.token,
                        slack_app_token=slack.app_token, slack_api_url=slack.base_url,
                        min_steps=3, max_steps=6)
    ponder = Ponder(cfg)
    await ponder.start()
    return ponder


async def test_socket_mode_events_are_acked_and_answered(
        tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> None:
    ponder = await started_socket_mode_ponder(tmp_path, slack, fake_llm)
    bot = SlackBot(ponder, ponder.settings, limits=FAST, seen=MemorySeenEvents())
    await bot.start()
    await bot.serve_socket()
    try:
        async with asyncio.timeout(10):
            await slack.socket_connected.wait()
        fake_llm.script(*three_steps())
        question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> What is 2+2?")
        body = envelope(slack, {"type": "app_mention", "user": ASKER, "text": question.text,
                                "ts": question.ts, "channel": CHANNEL, "event_ts": question.ts})
        first = await slack.push_event(body)
        again = await slack.push_event(body, retry_attempt=1, retry_reason="timeout")
        async with asyncio.timeout(10):
            await slack.acked(first)
            await slack.acked(again)
        async with asyncio.timeout(30):
            await bot.idle()
        replies = slack.thread(CHANNEL, question.ts)
        assert len(replies) == 4
        assert sum("Thought for" in r.text for r in replies) == 1
    finally:
        await ponder.drain(0)
        await bot.close(grace=5)
        await ponder.close()


# --- who and what is answered --------------------------------------------------------------


async def test_follow_up_by_the_asker_carries_the_history(h: Harness) -> None:
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await h.settle()

    # Someone else chatting in the thread is not a question for Ponder.
    _, other = h.ask("nice", user="UOTHER", thread_ts=question.ts, mention=False)
    await h.post(other)
    await h.settle()
    requests_before = len(h.llm.requests)
    assert requests_before == 4

    h.llm.script(Step("Double", "4*2 is 8.", "continue"), Step("Again", "8", "continue"),
                 Step("Check", "ok", "final_answer"), Text("8"))
    _, body = h.ask("And doubled?", thread_ts=question.ts, mention=False)
    await h.post(body)
    await h.settle()
    assert len(h.llm.requests) == requests_before + 4
    messages = h.llm.requests[requests_before].body["messages"]
    contents = [m["content"] for m in messages]
    assert "What is 2+2?" in contents and "**4**" in contents
    assert contents[-1] == "And doubled?"
    replies = h.replies(question.ts)
    assert sum("Thought for" in r.text for r in replies) == 2
    assert replies[-1].text.startswith("*Answer*\n8")


async def test_own_messages_edits_and_other_bots_are_ignored(h: Harness) -> None:
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await h.settle()
    before = len(h.llm.requests)
    base = {"channel": CHANNEL, "thread_ts": question.ts, "channel_type": "channel"}
    noise = [
        {"type": "message", "user": h.slack.bot_user_id, "bot_id": h.slack.bot_id,
         "text": "my own reply", "ts": h.slack.next_ts(), **base},
        {"type": "message", "subtype": "message_changed", "ts": h.slack.next_ts(),
         "message": {"user": ASKER, "text": "edited"}, **base},
        {"type": "message", "user": "UBOT2", "bot_id": "B0THER", "text": "beep",
         "ts": h.slack.next_ts(), **base},
        {"type": "message", "subtype": "bot_message", "bot_id": "B0THER", "text": "boop",
         "ts": h.slack.next_ts(), **base},
    ]
    for event in noise:
        assert await h.post(envelope(h.slack, event)) == 200
    await h.settle()
    assert len(h.llm.requests) == before


async def test_a_refused_question_gets_a_readable_reply(
        tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> None:
    h = await start_harness(tmp_path, slack, fake_llm, allowed_channels=("C0OTHER",))
    try:
        question, body = h.ask("What is 2+2?")
        await h.post(body)
        await h.settle()
        assert h.replies(question.ts) == []  # nothing public: shown to the asker alone
        (note,) = slack.ephemerals
        assert (note.channel, note.user) == (CHANNEL, ASKER)
        assert "does not answer in this channel" in note.text
        assert note.thread_ts is None  # the question started no thread to show it in
        assert fake_llm.requests == []
    finally:
        await stop_harness(h)


async def test_model_server_down_gives_a_readable_message(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=False, update_limit=None, assistant_status=False) as slack:
        h = await start_harness(tmp_path, slack, fake_llm, openai_base_url="http://127.0.0.1:9/v1",
                                max_attempts=1, connect_timeout=0.5, model_wait=1.0)
        try:
            question, body = h.ask("What is 2+2?")
            await h.post(body)
            await h.settle()
            replies = h.replies(question.ts)
            assert replies, "nothing was said in the thread"
            assert replies[-1].text.startswith("⚠️ ")
            # What to do about it; the server's address is for the log, not the thread.
            assert "ponder model serve" in replies[-1].text
            assert "127.0.0.1:9" not in replies[-1].text
            assert "Gave up after" in replies[-1].text
            # Nothing still looks busy (the service's own waiting notice aside).
            busy = [r.text for r in replies if "⏳" in r.text or "thinking…" in r.text]
            assert all(t.startswith("⏳ The model server is not answering") for t in busy), busy
            assert set(question.reactions) == {"x"}
        finally:
            await stop_harness(h)


# --- budgets -------------------------------------------------------------------------------


async def test_a_429_storm_slows_updates_but_loses_nothing(h: Harness) -> None:
    h.slack.inject("chat.update", status=429, retry_after=1, times=4)
    # At a model's pace, so replies are posted unfinished and edited (a text already final
    # when its turn to be posted comes is posted as it is, with no edit).
    h.llm.chunk_delay, h.llm.chunk_chars = 0.01, 4
    questions = []
    for n in range(3):  # the fake model answers on its own: three chains at once
        question, body = h.ask(f"What is {n}+{n}?", user=f"U{n}")
        questions.append(question)
        await h.post(body)
    await h.settle(60)
    updates = h.slack.calls_to("chat.update")
    limited = [c for c in updates if c.status == 429]
    assert len(limited) == 4
    # A 429 holds back every chain's edits for Retry-After, not just the call that met it:
    # apart from calls already on their way, nothing reaches chat.update in that second.
    first_429 = limited[0].at
    during = [c for c in updates if first_429 + 0.1 < c.at < first_429 + 0.9]
    assert during == []
    for question in questions:
        await shows_what_was_thought(h, question)


async def test_many_chains_stay_inside_the_workspace_budget(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    # Slack's Tier 3 in miniature: 12 chat.update per 2 s for the whole workspace.
    limits = SlackLimits(update_calls=12, update_window=2, post_calls=25, post_window=1,
                         edit_interval=0.05,
                         request_timeout=5)
    async with FakeSlack(streaming=False, update_limit=(12, 2.0)) as slack:
        h = await start_harness(tmp_path, slack, fake_llm, limits=limits, min_steps=2,
                                max_steps=2)
        try:
            questions = []
            for n in range(6):
                q, body = h.ask(f"Question {n}?", user=f"U{n:04d}")
                questions.append(q)
                await h.post(body)
            await h.settle(90)
            assert slack.rate_limited == 0
            for q in questions:
                await shows_what_was_thought(h, q)
        finally:
            await stop_harness(h)


# --- Slack's streaming methods -------------------------------------------------------------


async def test_streaming_shows_one_task_per_step(tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            fake_llm.script(*three_steps())
            question, body = h.ask("What is 2+2?")
            await h.post(body)
            await h.settle()
            replies = h.replies(question.ts)
            assert len(replies) == 1
            stream = replies[0]
            assert stream.stream_state == "stopped"
            start = slack.calls_to("chat.startStream")[0].body
            assert start["recipient_user_id"] == ASKER
            assert start["recipient_team_id"] == slack.team_id
            assert start["thread_ts"] == question.ts
            assert list(stream.tasks) == ["step-1", "step-2", "step-3"]
            assert all(t.status == "complete" for t in stream.tasks.values())
            assert stream.tasks["step-2"].title.startswith("Step 2 · Add · ")
            assert stream.tasks["step-2"].title.endswith(" s")
            text = stream.text
            assert text.index("We need 2+2.") < text.index("2+2 is 4.") < text.index("**4**")
            assert "**Answer**" in text and "_Thought for " in text and "3 steps_" in text
            assert slack.count("chat.update") == 0
            assert slack.count("chat.appendStream") >= 1
        finally:
            await stop_harness(h)


@pytest.mark.parametrize("error", ["unknown_method", "not_allowed_token_type", "missing_scope"])
async def test_streaming_refused_falls_back_to_chat_update_and_is_remembered(
        tmp_path: Path, fake_llm: FakeOpenAI, error: str) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        slack.stream_error = error
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            for n in range(2):
                fake_llm.script(*three_steps())
                question, body = h.ask(f"What is 2+2? ({n})")
                await h.post(body)
                await h.settle()
                replies = h.replies(question.ts)
                assert len(replies) == 4
                assert "Thought for" in replies[-1].text
            assert slack.count("chat.startStream") == 1  # tried once, then remembered
            # Plain replies instead: a post per step and answer (edited when still growing).
            assert slack.count("chat.postMessage") >= 8
        finally:
            await stop_harness(h)


async def test_streaming_refused_for_a_channel_type_is_remembered_for_that_type_only(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            slack.streaming = False  # channels refuse...
            slack.stream_error = "method_not_supported_for_channel_type"
            fake_llm.script(*three_steps())
            q1, body = h.ask("In a channel")
            await h.post(body)
            await h.settle()
            assert len(h.replies(q1.ts)) == 4
            slack.streaming = True  # ...DMs stream
            fake_llm.script(*three_steps())
            q2, body = h.ask("In a DM", channel="D0DIRECT", mention=False)
            await h.post(body)
            await h.settle()
            dm = h.replies(q2.ts, channel="D0DIRECT")
            assert len(dm) == 1 and dm[0].stream_state == "stopped"
            fake_llm.script(*three_steps())
            q3, body = h.ask("Channel again")
            await h.post(body)
            await h.settle()
            assert len(h.replies(q3.ts)) == 4
            assert slack.count("chat.startStream") == 2  # the channel was not tried again
        finally:
            await stop_harness(h)


@pytest.mark.parametrize("who_ends_it", ["slack", "ponder"])
async def test_a_long_stream_continues_in_a_new_one(tmp_path: Path, who_ends_it: str) -> None:
    """Slack ends a stream after about five minutes (here: 0.3 s). Ponder rolls over before
    that; if Slack ends it first anyway, the chain goes on in a fresh streamed reply."""
    limits = FAST
    async with FakeSlack(streaming=True, update_limit=None) as slack, \
            FakeOpenAI(chunk_delay=0.03, chunk_chars=2) as slow_llm:
        if who_ends_it == "slack":
            slack.stream_max_age = 0.3
        else:
            limits = dataclasses.replace(FAST, stream_max_age=0.3)
        h = await start_harness(tmp_path, slack, slow_llm, limits=limits)
        try:
            slow_llm.script(Step("One", "first thought", "continue"),
                            Step("Two", "second thought", "continue"),
                            Step("Three", "third thought", "final_answer"), Text("done"))
            question, body = h.ask("Take your time")
            await h.post(body)
            await h.settle()
            replies = h.replies(question.ts)
            assert len(replies) >= 2
            assert all(r.stream_state == "stopped" for r in replies)
            # Under load a short-lived stream may roll over between two words: read the
            # replies as one text, without the notes that say it goes on below.
            shown = "".join(r.text for r in replies).replace(continued("en"), "")
            for part in ("first thought", "second thought", "third thought", "Thought for"):
                assert part in shown
            if who_ends_it == "ponder":  # stopped in time: no card is left spinning
                refused = [(c.method, c.error) for c in slack.calls if not c.ok]
                assert refused == []
                cards = [(r.ts, t.id, t.status) for r in replies for t in r.tasks.values()]
                assert all(status == "complete" for *_, status in cards), cards
        finally:
            await stop_harness(h)


async def test_a_429_on_a_stream_holds_every_chains_appends(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            fake_llm.chunk_delay = 0.02  # long enough for both chains to be appending
            asked = [h.ask(f"Question {n}?", user=f"U{n}") for n in range(2)]
            for _, body in asked:
                await h.post(body)
            for _ in range(200):  # until both streams are well under way
                if slack.count("chat.appendStream") >= 4:
                    break
                await asyncio.sleep(0.05)
            slack.inject("chat.appendStream", status=429, retry_after=1)
            await h.settle()
            (limited,) = [c for c in slack.calls if c.method == "chat.appendStream"
                          and c.status == 429]
            # The workspace's append budget is shared: neither chain appends until it is over
            # (past one already on its way when the 429 was answered).
            held = [c for c in slack.calls if c.method == "chat.appendStream" and c.ok
                    and limited.at + 0.3 < c.at < limited.at + 0.95]
            assert held == []
            for question, _ in asked:
                assert "Thought for" in h.replies(question.ts)[-1].text
        finally:
            await stop_harness(h)


async def replies_when_failing(tmp_path: Path, fake_llm: FakeOpenAI,
                               method: str) -> list[Message]:
    """The thread's replies after a chain whose every `method` call fails."""
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            slack.inject(method, error="fatal_error", times=100)
            fake_llm.script(*three_steps())
            question, body = h.ask("What is 2+2?")
            await h.post(body)
            await h.settle()
            return h.replies(question.ts)
        finally:
            await stop_harness(h)


async def test_a_stream_that_breaks_half_way_is_finished_with_posts(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    replies = await replies_when_failing(tmp_path, fake_llm, "chat.appendStream")
    assert replies[0].stream_state == "stopped"  # closed, not left streaming
    posted = [r for r in replies if r.stream_state is None]
    shown = "\n".join(r.text for r in posted)
    for part in ("We need 2+2.", "2+2 is 4.", "4-2 is 2", "*4*", "Thought for"):
        assert part in shown
    assert all("⏳" not in r.text for r in posted)
    # The posts that take over title a step by the model's title, not the stream card's.
    card_as_title = re.compile(r"Step \d+ · Step")
    shown_ever = [text for r in replies for text in r.texts]
    assert not [text for text in shown_ever if card_as_title.search(text)], shown_ever


async def test_a_stream_that_cannot_be_stopped_still_shows_the_answer(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    replies = await replies_when_failing(tmp_path, fake_llm, "chat.stopStream")
    assert replies[-1].stream_state is None
    assert replies[-1].text.startswith("*Answer*\n*4*")
    assert "Thought for" in replies[-1].text


async def test_slack_5xx_is_retried(h: Harness) -> None:
    h.slack.inject("chat.postMessage", status=503, times=2)
    h.slack.inject("chat.update", status=500, times=1)
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await h.settle()
    replies = h.replies(question.ts)
    assert len(replies) == 4 and "Thought for" in replies[-1].text
    assert h.slack.count("chat.postMessage", 503) == 2


async def test_shutdown_mid_chain_leaves_nothing_thinking(tmp_path: Path) -> None:
    async with FakeSlack(streaming=False, update_limit=None, assistant_status=False) as slack, \
            FakeOpenAI(chunk_delay=0.05, chunk_chars=2) as slow_llm:
        h = await start_harness(tmp_path, slack, slow_llm)
        posted = asyncio.Event()
        slack.on_call(lambda call: posted.set() if call.method == "chat.postMessage" else None)
        slow_llm.script(Step("Slow", "x" * 400, "continue"))
        question, body = h.ask("Think slowly")
        await h.post(body)
        async with asyncio.timeout(10):
            await posted.wait()
        await stop_harness(h)  # drain(0): the running chain is stopped for the restart
        replies = h.replies(question.ts)
        assert replies
        assert all("⏳" not in r.text and "thinking…" not in r.text for r in replies)
        assert "hourglass_flowing_sand" not in question.reactions


async def test_a_chain_interrupted_by_a_restart_resumes_in_its_thread(
        tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> None:
    from bot.store import ChainRecord, StepRecord

    question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> What is 2+2?")
    h = await start_harness(tmp_path, slack, fake_llm)
    try:
        store = h.ponder.store
        await store.start_chain(ChainRecord(
            id="chain-before-crash", platform="slack", question="What is 2+2?", mode="chain",
            workspace=slack.team_id, channel=CHANNEL, thread=f"{CHANNEL}:{question.ts}",
            asker=ASKER))
        await store.add_step("chain-before-crash", StepRecord(1, "Restate", "We need 2+2.", 1.0))
        fake_llm.script(Step("Add", "2+2 is 4.", "continue"),
                        Step("Check", "4-2 is 2.", "final_answer"), Text("4"))
        handles = await h.bot.recover()
        assert [x.chain_id for x in handles] == ["chain-before-crash"]
        async with asyncio.timeout(30):
            await handles[0].wait()
        replies = h.replies(question.ts)
        assert replies[0].text.startswith("↻ Ponder restarted")
        assert replies[1].text.startswith("*Step 2 · Add*")
        assert "Thought for" in replies[-1].text
    finally:
        await stop_harness(h)


async def test_run_slack_serves_socket_mode_until_cancelled(
        tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> None:
    from adapters.slack import run_slack

    ponder = await started_socket_mode_ponder(tmp_path, slack, fake_llm)
    answered = asyncio.Event()
    slack.on_call(lambda c: answered.set() if "Thought for" in str(c.body.get("text")) and c.ok
                  else None)
    task = asyncio.create_task(run_slack(ponder, ponder.settings))
    try:
        async with asyncio.timeout(10):
            await slack.socket_connected.wait()
        fake_llm.script(*three_steps())
        question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> What is 2+2?")
        await slack.push_event(envelope(slack, {
            "type": "app_mention", "user": ASKER, "text": question.text, "ts": question.ts,
            "channel": CHANNEL, "event_ts": question.ts}))
        async with asyncio.timeout(30):
            await answered.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ponder.close()
    assert task.cancelled()
    assert "Thought for" in slack.thread(CHANNEL, question.ts)[-1].text
    assert slack.calls_to("auth.test") and slack.calls_to("apps.connections.open")


async def test_a_wrong_token_is_reported_in_one_line(
        tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> None:
    from bot.errors import PlatformError

    cfg = make_settings(fake_llm.base_url, tmp_path, slack_bot_token="xoxb-not-the-token",
                        slack_signing_secret=SECRET, slack_api_url=slack.base_url)
    ponder = Ponder(cfg)
    await ponder.start()
    try:
        bot = SlackBot(ponder, cfg)
        # The same error as Discord's for the same failure: the runner reports both alike.
        refused = r"Slack refused SLACK_BOT_TOKEN \(invalid_auth\)"
        with pytest.raises(PlatformError, match=refused) as info:
            await bot.start()
        assert info.value.platform == "slack"
    finally:
        await ponder.close()
