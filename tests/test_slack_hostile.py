"""Slack under hostile or odd input: floods of refused mentions, 429s, model text written to
ping everyone, Slack Connect askers, and the message subtypes people write with.

Each test drives the real slack-bolt app over signed HTTP (`tests/slack_harness.py`) against
the fake Slack Web API, which records every call's full payload, and the fake model server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.slack.web import SlackLimits, Workspace
from tests.conftest import until
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import Call, FakeSlack
from tests.slack_harness import (
    ASKER,
    FAST,
    Harness,
    shows_what_was_thought,
    start_harness,
    stop_harness,
    three_steps,
)

HONEST, FLOOD = "C0HONEST", "C0FLOOD"


def in_channel(calls: list[Call], channel: str) -> list[Call]:
    return [c for c in calls if c.body.get("channel") == channel]


# --- refusals: private, one a minute, paced ------------------------------------------------


async def test_a_flood_of_refused_mentions_is_one_private_note_and_slows_no_one(
        tmp_path: Path, fake_llm: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    # Slack's limits in miniature: posts about 5 a second per channel, ephemerals per
    # workspace; Ponder paced a little under them.
    limits = dataclasses.replace(FAST, post_calls=4, post_window=1)
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        slack.limit("chat.postMessage", 5, 1.0)  # per channel, as Slack
        slack.limit("chat.postEphemeral", 5, 1.0)
        h = await start_harness(tmp_path, slack, fake_llm, limits=limits, streaming=False,
                                allowed_users=("UHONEST",))
        try:
            caplog.set_level(logging.INFO, logger="adapters.slack.refusals")
            fake_llm.chunk_delay = 0.01  # the honest chain is still running during the flood
            fake_llm.script(*three_steps())
            honest, body = h.ask("What is 2+2?", channel=HONEST, user="UHONEST")
            assert await h.post(body) == 200
            flood = [h.ask(f"spam {n}", channel=FLOOD, user="USPAM")[1] for n in range(15)]
            assert await asyncio.gather(*(h.post(b) for b in flood)) == [200] * 15
            await h.settle()

            (note,) = slack.ephemerals  # one, to the person refused, and no one else
            assert (note.user, note.channel) == ("USPAM", FLOOD)
            assert "not on the list of people who may use Ponder" in note.text
            assert in_channel(slack.calls_to("chat.postMessage"), FLOOD) == []
            assert slack.rate_limited == 0
            dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
            assert len(dropped) == 14  # the rest were dropped, and said so in the log
            # The honest chain made exactly the calls it makes alone: a post per step and
            # one for the answer, each taken the first time.
            await shows_what_was_thought(h, honest)
            posts = in_channel(slack.calls_to("chat.postMessage"), HONEST)
            assert len(posts) == 4 and all(c.ok for c in posts)
            assert all(c.ok for c in in_channel(slack.calls, HONEST))
            asked = [str(r.body) for r in fake_llm.requests]
            assert asked and not [b for b in asked if "spam" in b], asked
        finally:
            await stop_harness(h)


async def test_refusals_are_remembered_for_a_while_and_for_few_people(
        tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> None:
    limits = dataclasses.replace(FAST, refusal_memory=3, refusal_interval=0.5)
    h = await start_harness(tmp_path, slack, fake_llm, limits=limits, allowed_users=("UOK",))
    try:
        async def refused(user: str) -> int:
            before = len(slack.ephemerals)
            assert await h.post(h.ask("Hello?", user=user)[1]) == 200
            await h.settle()
            return len(slack.ephemerals) - before

        assert [await refused(f"U{n}") for n in range(5)] == [1] * 5
        assert len(h.bot.refusals) == 3  # the memory is bounded: U0 and U1 are forgotten
        assert await refused("U0") == 1  # forgotten, so told again
        assert await refused("U4") == 0  # told less than `refusal_interval` ago
        await asyncio.sleep(0.5)
        assert await refused("U4") == 1  # the interval is over
        assert fake_llm.requests == []
    finally:
        await stop_harness(h)


# --- 429s: only the method and channel they belong to --------------------------------------


async def test_a_429_on_one_channels_posts_does_not_hold_another_channels(
        h: Harness, slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.slack.web")
    h.llm.script(*three_steps(), *three_steps(), *three_steps())
    _, body = h.ask("What is 1+1?", channel="C0OTHER", user="U2")
    assert await h.post(body) == 200
    await h.settle()  # the other channel has posted before: Ponder knows its budget
    slack.inject("chat.postMessage", status=429, retry_after=1, channel="C0LIMITED")
    limited, body = h.ask("What is 2+2?", channel="C0LIMITED", user="U1")
    assert await h.post(body) == 200
    await until(lambda: any("Slack rate limit on chat.postMessage" in r.getMessage()
                            for r in caplog.records))
    ws = h.bot.workspace(slack.team_id)
    assert ws.post_budget("C0OTHER").try_acquire()  # the other channel's posts go on
    assert not ws.post_budget("C0LIMITED").try_acquire()  # the limited one's wait
    other, body = h.ask("What is 2+2?", channel="C0OTHER", user="U2")
    assert await h.post(body) == 200
    await h.settle()

    posts = slack.calls_to("chat.postMessage")
    (refused,) = [c for c in posts if c.status == 429]
    retried = next(c for c in in_channel(posts, "C0LIMITED") if c.at > refused.at)
    # The other channel's chain was shown while the limited one waited out its Retry-After.
    others = [c for c in in_channel(posts, "C0OTHER") if c.at > refused.at]
    assert len(others) == 4 and min(c.at for c in others) < retried.at
    await shows_what_was_thought(h, limited)
    await shows_what_was_thought(h, other)


async def test_idle_channels_post_budgets_are_dropped() -> None:
    # A budget at rest has its whole window again 10 ms after its last use.
    limits = SlackLimits(post_calls=1, post_window=0.01, window_margin=0, channels_kept=8)
    ws = Workspace("T0", limits)
    paused = ws.post_budget("C0PAUSED")
    ws.rate_limited("chat.postMessage", 30, "C0PAUSED")
    for batch in range(20):  # 1,000 channels, each asked for once
        for n in range(50):
            ws.post_budget(f"C{batch}x{n}")
        await asyncio.sleep(0.02)
    ws.post_budget("C0LAST")
    assert len(ws.post_budgets) <= 8
    # A budget that still holds something is kept: the channel stays paused.
    assert ws.post_budget("C0PAUSED") is paused
    assert not paused.try_acquire()


# --- nothing sent can ping anyone ----------------------------------------------------------

NASTY = "<!channel> <!here> <!everyone> <@U123> <!subteam^S1> @channel @here"
# Slack's control sequences, and the bare words some of its surfaces turn into mentions.
_PINGS = re.compile(r"<[!@#]|(?<![\w@])@(?:channel|here|everyone)\b", re.IGNORECASE)


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a payload, with where it is (`chunks[2].title`)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from strings(item, f"{path}[{n}]")


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "posts"])
async def test_nothing_sent_to_slack_can_ping_anyone(
        tmp_path: Path, fake_llm: FakeOpenAI, streaming: bool) -> None:
    async with FakeSlack(streaming=streaming, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm, streaming=streaming)
        try:
            fake_llm.chunk_delay = 0.01
            fake_llm.script(Step(f"Tell {NASTY}", f"Shout {NASTY} now", "continue"),
                            Step(NASTY, f"- {NASTY}\n\n`{NASTY}`", "continue"),
                            Step("Done", "fine", "final_answer"),
                            Text(f"**{NASTY}** and [{NASTY}](https://example.com/x)"))
            question, body = h.ask("Make noise")
            assert await h.post(body) == 200
            await until(lambda: slack.count("chat.postMessage") + slack.count(
                "chat.startStream") > 0)
            _, follow = h.ask(NASTY, thread_ts=question.ts, mention=False)
            assert await h.post(follow) == 200  # refused while the chain runs: an ephemeral
            await h.settle()

            assert slack.ephemerals and (slack.count("chat.startStream") > 0) == streaming
            seen = []
            for call in slack.calls:
                for path, text in strings(call.body):
                    assert not _PINGS.search(text), (call.method, path, text)
                    seen.append(text)
            shown = "\n".join(seen)
            # Shown, not dropped: the words are there, made harmless.
            assert shown.count("subteam^S1") >= 4 and shown.count("@\u2060here") >= 4
            if streaming:
                titles = [t.title for m in h.replies(question.ts) for t in m.tasks.values()]
                assert any("subteam^S1" in t for t in titles), titles
        finally:
            await stop_harness(h)


# --- Slack Connect: the asker's own team -----------------------------------------------------


@pytest.mark.parametrize("where", ["user_team", "user_profile"])
async def test_slack_connect_allow_lists_check_the_askers_own_team(
        tmp_path: Path, fake_llm: FakeOpenAI, where: str) -> None:
    """In a channel shared with another organisation the envelope's `team_id` is the
    workspace that received the event; the asker may belong to the other one."""
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm, allowed_teams=("T0PARTNER",))
        try:
            def team(name: str) -> dict[str, Any]:
                return {"user_team": name} if where == "user_team" else {
                    "user_profile": {"name": "someone", "team": name}}

            fake_llm.script(*three_steps())
            partner, body = h.ask("What is 2+2?", user="UPARTNER", **team("T0PARTNER"))
            assert body["team_id"] == slack.team_id != "T0PARTNER"
            assert await h.post(body) == 200
            stranger, body = h.ask("And 3+3?", user="USTRANGER", **team("T0STRANGER"))
            assert await h.post(body) == 200
            await h.settle()

            assert "Thought for" in h.replies(partner.ts)[-1].text
            (start,) = slack.calls_to("chat.startStream")
            assert start.body["recipient_team_id"] == "T0PARTNER"  # the asker's own team
            # The chain used the budgets of the workspace that received it.
            assert set(h.bot.workspaces) == {slack.team_id}
            assert h.replies(stranger.ts) == []
            (note,) = slack.ephemerals
            assert note.user == "USTRANGER" and "not enabled for this" in note.text
            assert len(fake_llm.requests) == 4
        finally:
            await stop_harness(h)


# --- message subtypes people write with ----------------------------------------------------


async def test_a_follow_up_also_sent_to_the_channel_is_answered(h: Harness) -> None:
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await h.settle()
    h.llm.script(Step("Double", "4*2 is 8.", "continue"), Step("Again", "8", "continue"),
                 Step("Check", "ok", "final_answer"), Text("8"))
    _, body = h.ask("And doubled?", thread_ts=question.ts, mention=False,
                    subtype="thread_broadcast", root={"ts": question.ts, "user": ASKER})
    assert await h.post(body) == 200
    await h.settle()
    assert h.llm.requests[4].body["messages"][-1]["content"] == "And doubled?"
    replies = h.replies(question.ts)
    assert sum("Thought for" in r.text for r in replies) == 2
    assert replies[-1].text.startswith("*Answer*\n8")


async def test_a_dm_with_a_file_attached_is_answered_by_its_text(h: Harness) -> None:
    h.llm.script(*three_steps())
    files = [{"id": "F0NOTES", "name": "notes.txt", "mimetype": "text/plain",
              "user": ASKER, "mode": "hosted"}]
    question, body = h.ask("What is 2+2?", channel="D0DIRECT", mention=False,
                           subtype="file_share", files=files, upload=True)
    assert await h.post(body) == 200
    await h.settle()
    assert h.llm.requests[0].body["messages"][-1]["content"] == "What is 2+2?"
    replies = h.replies(question.ts, channel="D0DIRECT")
    assert len(replies) == 4 and "Thought for" in replies[-1].text


@pytest.mark.parametrize("subtype", ["bot_message", "message_changed", "message_deleted",
                                     "channel_join"])
async def test_other_subtypes_are_still_not_questions(h: Harness, subtype: str) -> None:
    h.llm.script(*three_steps())
    question, body = h.ask("What is 2+2?")
    await h.post(body)
    await h.settle()
    before = len(h.llm.requests)
    # In a Ponder thread by its asker, and in a DM: where a plain message would be answered.
    _, in_thread = h.ask("And 3+3?", thread_ts=question.ts, mention=False, subtype=subtype)
    _, in_dm = h.ask("And 4+4?", channel="D0DIRECT", mention=False, subtype=subtype)
    for body in (in_thread, in_dm):
        assert await h.post(body) == 200
    await h.settle()
    assert len(h.llm.requests) == before
    assert h.slack.ephemerals == []
    assert len([r for r in h.replies(question.ts) if r.is_bot]) == 4

