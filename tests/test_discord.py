"""Ponder on Discord, end to end: discord.py's real client against a fake Discord (REST and
gateway), a fake model server, and the real Ponder service. Assertions read what the fake
Discord recorded, i.e. what users would see."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import re
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.discord import DiscordBot, run_discord
from adapters.discord.surface import LimiterRegistry
from adapters.discord.sync import commands_hash
from adapters.discord.text import render, thread_name
from bot.config import Settings
from bot.errors import PlatformError
from bot.llm import LLMClient
from bot.ratelimit import RateLimiter
from bot.service import Ponder
from tests.conftest import make_settings
from tests.fakes.discord_server import (
    MESSAGE_CONTENT_INTENT,
    MESSAGE_FLAG_EPHEMERAL,
    FakeDiscord,
    Interaction,
    RecordedRequest,
    scaled_rate_limits,
)
from tests.fakes.openai_server import FakeOpenAI, Step, Text

SUMMARY = re.compile(r"Thought for \d+\.\d s · (\d+) steps?")
DONE_MARK = ("✅", "⏹️", "⚠️", "↻")


# --- harness -------------------------------------------------------------------------------


@dataclass
class Harness:
    discord: FakeDiscord
    llm: FakeOpenAI
    ponder: Ponder
    settings: Settings
    task: asyncio.Task[None]
    bot: DiscordBot | None = None

    async def ask(self, question: str, **options: Any) -> Interaction:
        return await self.discord.slash("reason", question=question, **options)

    def opening(self, interaction: Interaction) -> dict[str, Any]:
        assert interaction.original_id is not None, "the interaction was never answered"
        return self.discord.messages[interaction.original_id]

    async def finished(self, interaction: Interaction, seconds: float = 30.0,
                       marks: tuple[str, ...] = DONE_MARK) -> str:
        """Wait for the opening message's closing line; return the opening's content."""
        def done() -> str | None:
            if interaction.original_id is None:
                return None
            content = self.discord.messages[interaction.original_id]["content"]
            last = content.rsplit("\n", 1)[-1]
            return content if last.startswith(marks) else None
        return str(await self.discord.wait_for(done, seconds))

    def thread_of(self, interaction: Interaction) -> int:
        assert interaction.original_id is not None
        thread = self.discord.messages[interaction.original_id].get("thread")
        assert thread is not None, "no thread was started from the opening message"
        return int(thread["id"])

    def texts(self, channel_id: int) -> list[str]:
        return [m["content"] for m in self.discord.channel_messages(channel_id)]


async def start(tmp_path: Path, discord: FakeDiscord, llm: FakeOpenAI, *,
                entry: str = "bot", guilds: bool = True, limiters: LimiterRegistry | None = None,
                **overrides: Any) -> Harness:
    values: dict[str, Any] = {
        "discord_token": discord.token, "discord_api_url": discord.api_url,
        "discord_gateway_url": discord.gateway_url, "min_steps": 1,
        "discord_guild_ids": str(discord.guild_id) if guilds else "",
    }
    values.update(overrides)
    settings = make_settings(llm.base_url, tmp_path, **values)
    ponder = Ponder(settings, llm=LLMClient(settings, retry_base_delay=0.01))
    await ponder.start()
    bot: DiscordBot | None = None
    if entry == "run_discord":
        task = asyncio.create_task(run_discord(ponder, settings))
        synced = (lambda: discord.guild_commands.get(discord.guild_id)) if guilds else (
            lambda: discord.global_commands)
        await _alongside(task, discord.wait_for(synced, 15))
        await _alongside(task, discord.wait_identified(15))
    else:
        # Paced by the windows the fake's answers describe, scaled or Discord's own.
        limiters = limiters if limiters is not None else LimiterRegistry()
        bot = DiscordBot(ponder, settings, client_options={"guild_ready_timeout": 0.05},
                         limiters=limiters)
        task = asyncio.create_task(bot.run())
        await _alongside(task, asyncio.wait_for(bot.ready.wait(), 15))
    return Harness(discord, llm, ponder, settings, task, bot)


async def stop(h: Harness) -> None:
    h.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await h.task
    await h.ponder.close()


async def _alongside(task: asyncio.Task[None], awaitable: Any) -> None:
    """Await `awaitable`, but fail at once (with its error) if the bot's task dies first."""
    waiter = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()
        raise AssertionError("the Discord bot stopped before it was ready")
    waiter.result()


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    # Discord's buckets ten times faster, the bot's pacing with them (`start`): the same code
    # paths and the same zero-429 target, without waiting out 5-second windows.
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as fake:
        yield fake


@pytest.fixture
async def h(tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    harness = await start(tmp_path, discord, fake_llm)
    try:
        yield harness
    finally:
        await stop(harness)


def writes(discord: FakeDiscord) -> list[RecordedRequest]:
    """Every request that put text in front of users: message creates and edits."""
    return [r for r in discord.requests
            if (r.method in ("POST", "PATCH") and "/messages" in r.path
                and not r.path.endswith("/threads"))
            or r.route == "POST /interactions/{interaction}/{token}/callback"
            or r.route == "POST /channels/{channel_id}/threads"]


def assert_no_pings(discord: FakeDiscord) -> None:
    checked = 0
    for r in writes(discord):
        body = r.json
        if r.path.endswith("/callback"):
            body = body.get("data") or {}
            if not body:
                continue  # a defer carries no message
        if r.path.endswith("/threads"):
            body = body.get("message") or {}
        assert body.get("allowed_mentions") == {"parse": []}, (r.method, r.path, r.body)
        checked += 1
    assert checked, "no message was written at all"


def four() -> list[Step | Text]:
    return [Step("Restate", "We need 2+2.", "continue"),
            Step("Add", "2+2 is 4.", "continue"),
            Step("Check", "4-2 is 2, so 4 is right.", "final_answer"),
            Text("**4**")]


def still_running(text: str) -> bool:
    """A message that still shows a step or answer as in progress."""
    return bool(re.search(r"\*\* ⏳", text)) or "thinking…" in text


def step_header(index: int, title: str) -> re.Pattern[str]:
    return re.compile(rf"^\*\*Step {index} · {re.escape(title)}\*\* · \d+\.\d s\n")


# --- the whole path ------------------------------------------------------------------------


async def test_reason_logs_in_syncs_and_answers_in_a_thread_from_the_opening_message(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    fake_llm.script(*four())
    h = await start(tmp_path, discord, fake_llm, entry="run_discord")
    try:
        # Login and guild sync, as `ponder discord` does them.
        assert [r.path for r in discord.requests[:2]] == ["/users/@me", "/oauth2/applications/@me"]
        synced = discord.requests_to("PUT", r"^/applications/\d+/guilds/\d+/commands$")
        assert len(synced) == 1 and not discord.requests_to("PUT", r"^/applications/\d+/commands$")
        (command,) = [c for c in synced[0].body if c["name"] == "reason"]
        options = {o["name"]: o for o in command["options"]}
        assert command["name"] == "reason"
        assert options["question"]["type"] == 3 and options["question"]["required"] is True
        assert {c["value"] for c in options["mode"]["choices"]} == {"chain", "native"}
        assert not options["mode"].get("required")

        interaction = await h.ask("What is 2+2?")
        opening = await h.finished(interaction)

        # Deferred at once (the fake refuses an answer after 3 s), as a "thinking" defer.
        callback = discord.requests_to("POST", rf"^/interactions/{interaction.id}/")
        assert [r.json["type"] for r in callback] == [5] and callback[0].status == 200
        assert callback[0].at - interaction.created < 3.0

        # The thread starts from the opening message, which names the asker and the question.
        thread_id = h.thread_of(interaction)
        (create,) = discord.requests_to("POST", r"/messages/\d+/threads$")
        assert create.path == (f"/channels/{discord.text_channel_id}/messages/"
                               f"{interaction.original_id}/threads")
        assert create.json["name"] == "What is 2+2?"
        assert f"<@{discord.alice['id']}>" in opening and "> What is 2+2?" in opening

        texts = h.texts(thread_id)
        assert len(texts) == 4
        for i, (title, content) in enumerate([("Restate", "We need 2+2."), ("Add", "2+2 is 4."),
                                              ("Check", "4-2 is 2, so 4 is right.")], 1):
            assert step_header(i, title).match(texts[i - 1]), texts[i - 1]
            assert texts[i - 1].endswith(content)
        answer = texts[3]
        assert answer.startswith("**Answer**\n**4**")
        match = SUMMARY.search(answer.rsplit("\n", 1)[-1])
        assert match and match.group(1) == "3"

        # The opening message ends with the same summary and a link to the thread, no button.
        last_line = opening.rsplit("\n", 1)[-1]
        assert last_line.startswith("✅ Thought for") and f"<#{thread_id}>" in last_line
        assert h.opening(interaction)["components"] == []
        assert not any(map(still_running, texts))
        assert_no_pings(discord)
        assert discord.count(429) == 0  # paced under the per-route buckets, none hit
    finally:
        await stop(h)


async def test_a_streaming_step_is_one_message_edited_with_growing_content(
        h: Harness) -> None:
    long = " ".join(f"Sentence {n} of a step that takes a while to write." for n in range(35))
    assert len(long) < 1900  # one message: this test is about edits, not splitting
    h.llm.chunk_delay = 0.01  # ~2.5 s of streaming for the step
    h.llm.script(Step("Slow", long, "final_answer"), Text("done"))
    interaction = await h.ask("Think slowly")
    await h.finished(interaction)
    thread_id = h.thread_of(interaction)
    first = h.discord.channel_messages(thread_id)[0]
    history = h.discord.message_history(int(first["id"]))
    bodies = [re.sub(r"^\*\*.*?\*\*.*?\n", "", t, count=1) for t in history]
    assert len(history) >= 3, history  # posted, edited while streaming, edited final
    growing = [b for b in bodies if b.startswith("Sentence")]
    assert len(growing) >= 2
    assert all(len(a) < len(b) and b.startswith(a[:20]) for a, b in itertools.pairwise(growing))
    assert history[-1].endswith(long[-40:])
    # Edits of one message are at least the edit interval apart.
    edits = h.discord.requests_to("PATCH", rf"/channels/{thread_id}/messages/{first['id']}$")
    gaps = [b.at - a.at for a, b in itertools.pairwise(edits)]
    assert all(g >= 0.95 for g in gaps), gaps


async def test_a_429_storm_slows_the_edits_but_the_answer_still_lands(h: Harness) -> None:
    h.llm.chunk_delay = 0.01
    h.llm.script(Step("One", "first " * 80, "continue"), Step("Two", "second " * 80, "continue"),
                 Step("Three", "third", "final_answer"), Text("the answer"))
    h.discord.fail_next(6, 429, method="PATCH", path=r"^/channels/\d+/messages/\d+$",
                        retry_after=0.5)
    interaction = await h.ask("Storm")
    opening = await h.finished(interaction)
    assert opening.rsplit("\n", 1)[-1].startswith("✅")
    thread_id = h.thread_of(interaction)
    texts = h.texts(thread_id)
    assert texts[-1].startswith("**Answer**\nthe answer") and SUMMARY.search(texts[-1])
    limited = h.discord.requests_to("PATCH", status=429)
    assert len(limited) == 6
    assert h.bot is not None and h.bot.observer.rate_limited == 6
    # After a 429 no edit goes to that channel before Retry-After has passed.
    for hit in limited:
        channel = hit.path.split("/")[2]
        later = [r for r in h.discord.requests if r.at > hit.at and r.method == "PATCH"
                 and r.path.startswith(f"/channels/{channel}/messages")]
        assert later and later[0].at - hit.at >= 0.45
    assert_no_pings(h.discord)


async def test_chains_at_once_stay_under_the_bots_global_limit(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    # No per-route buckets: only the bot-wide limit (20 a second here) can refuse anything.
    async with FakeDiscord(rate_limits={}, global_limit=20) as discord:
        h = await start(tmp_path, discord, fake_llm, user_concurrency=10,
                        user_rate_per_minute=60)
        try:
            assert h.bot is not None
            h.bot.observer.bot = RateLimiter(16, burst=2)  # at most 18 in any second
            asked = await asyncio.gather(*(h.ask(f"Question {n}?") for n in range(6)))
            for interaction in asked:
                opening = await h.finished(interaction)
                assert opening.rsplit("\n", 1)[-1].startswith("✅")
                assert SUMMARY.search(h.texts(h.thread_of(interaction))[-1])
            assert [r.scope for r in discord.requests if r.status == 429] == []
            callbacks = [r for r in discord.requests if r.path.endswith("/callback")]
            assert len(callbacks) == 6 and all(r.status < 300 for r in callbacks)
        finally:
            await stop(h)


async def test_a_discord_5xx_is_retried_and_the_step_still_appears(h: Harness) -> None:
    h.discord.fail_next(1, 502, method="POST", path=r"^/channels/\d+/messages$")
    h.llm.script(Step("Only", "the one step", "final_answer"), Text("fine"))
    interaction = await h.ask("Flaky Discord?")
    assert (await h.finished(interaction)).rsplit("\n", 1)[-1].startswith("✅")
    texts = h.texts(h.thread_of(interaction))
    assert step_header(1, "Only").match(texts[0]) and texts[-1].startswith("**Answer**\nfine")
    assert len(h.discord.requests_to("POST", r"^/channels/\d+/messages$", status=502)) == 1


async def test_a_5000_char_step_continues_in_the_next_messages(h: Harness) -> None:
    sentences = [f"Fact number {n} is written out in full here." for n in range(115)]
    long = " ".join(sentences)
    assert len(long) > 5000
    h.llm.script(Step("Long", long, "final_answer"), Text("short answer"))
    interaction = await h.ask("Tell me everything")
    await h.finished(interaction)
    texts = h.texts(h.thread_of(interaction))
    step_parts = texts[:-1]
    assert len(step_parts) == 3
    assert all(len(t) <= 2000 for t in texts)
    joined = " ".join(step_parts)
    assert all(s in joined for s in sentences)  # cut between sentences, nothing lost
    assert texts[-1].startswith("**Answer**\nshort answer")
    assert not h.discord.requests_to(status=400)


async def test_stop_is_for_the_asker_or_a_moderator_and_says_when(h: Harness) -> None:
    h.llm.chunk_delay = 0.05
    h.llm.script(*[Step(f"S{n}", "slowly " * 40, "continue") for n in range(6)], Text("never"))
    interaction = await h.ask("Take your time")
    await h.discord.wait_for(lambda: h.discord.threads() and h.discord.channel_messages(
        int(h.discord.threads()[0]["id"])))
    opening = h.opening(interaction)
    (row,) = opening["components"]
    (button,) = row["components"]
    assert button["label"] == "Stop" and button["custom_id"].startswith("ponder:stop:")

    refused = await h.discord.click(int(opening["id"]), button["custom_id"], user=h.discord.bob)
    await h.discord.wait_for(lambda: refused.response_type is not None)
    (answer,) = h.discord.requests_to("POST", rf"^/interactions/{refused.id}/")
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
    assert "Only the person who asked" in answer.json["data"]["content"]

    await asyncio.sleep(0.5)
    asked = len(h.llm.requests)
    pressed = await h.discord.click(int(opening["id"]), button["custom_id"])
    content = await h.finished(interaction, 10)
    assert pressed.response_type == 6  # acknowledged; the chain's end updates the message
    assert re.search(r"⏹️ Stopped after \d+\.\d s", content.rsplit("\n", 1)[-1])
    texts = h.texts(h.thread_of(interaction))
    assert re.fullmatch(r"⏹️ Stopped after \d+\.\d s\.", texts[-1])
    assert not any(map(still_running, texts))
    assert h.opening(interaction)["components"] == []
    await asyncio.sleep(0.3)
    assert len(h.llm.requests) <= asked + 1  # nothing more was asked of the model

    # Someone with Manage Messages may stop another person's chain.
    second = await h.ask("Another slow one")
    await h.discord.wait_for(lambda: len(h.discord.threads()) == 2 and h.discord.channel_messages(
        int(h.discord.threads()[1]["id"])))
    custom_id = h.opening(second)["components"][0]["components"][0]["custom_id"]
    await h.discord.click(int(h.opening(second)["id"]), custom_id, user=h.discord.mod)
    content = await h.finished(second, 10)
    assert "⏹️ Stopped after" in content


async def test_stop_pressed_while_the_thread_opens_stops_before_any_step(
        h: Harness) -> None:
    h.discord.latency = 0.3  # a slow Discord: the button is there before the thread is
    h.llm.script(Step("After", "the follow-up", "final_answer"), Text("answered after all"))
    interaction = await h.ask("Stop me at once")
    await h.discord.wait_for(lambda: interaction.original_id and h.opening(interaction)[
        "components"])
    assert not h.discord.threads()
    custom_id = h.opening(interaction)["components"][0]["components"][0]["custom_id"]
    await h.discord.click(int(h.opening(interaction)["id"]), custom_id)
    content = await h.finished(interaction, 10)
    assert "⏹️ Stopped after" in content.rsplit("\n", 1)[-1]
    thread_id = h.thread_of(interaction)
    assert h.texts(thread_id)[-1].startswith("⏹️ Stopped after")
    assert h.llm.requests == []

    # The stopped chain is on record, so the thread is Ponder's: the asker may go on in it.
    h.discord.latency = 0.0
    await h.discord.user_message(thread_id, "Then answer this instead?")
    await h.discord.wait_for(lambda: any(
        t.startswith("**Answer**\nanswered after all") for t in h.texts(thread_id)), 20)
    assert any(t.startswith("↪️") for t in h.texts(thread_id))


async def test_a_follow_up_by_the_asker_carries_the_thread_history(h: Harness) -> None:
    h.llm.script(Step("Add", "2+2 is 4.", "final_answer"), Text("**4**"),
                 Step("Double", "4*2 is 8.", "final_answer"), Text("**8**"))
    interaction = await h.ask("What is 2+2?")
    await h.finished(interaction)
    thread_id = h.thread_of(interaction)
    asked = len(h.llm.requests)

    await h.discord.user_message(thread_id, "Someone else chiming in", user=h.discord.bob)
    await h.discord.user_message(thread_id, "And twice that?")
    await h.discord.wait_for(lambda: any(SUMMARY.search(t) for t in h.texts(thread_id)[3:]), 20)
    follow = h.llm.requests[asked].body["messages"]
    turns = [(m["role"], m["content"]) for m in follow if m["role"] != "system"]
    assert turns[:3] == [("user", "What is 2+2?"), ("assistant", "**4**"),
                         ("user", "And twice that?")]
    assert not any("Someone else" in str(r.body) for r in h.llm.requests)
    texts = h.texts(thread_id)
    control = next(t for t in texts if t.startswith("↪️"))
    await h.discord.wait_for(lambda: any(
        t.startswith("↪️") and "✅ Thought for" in t for t in h.texts(thread_id)), 10)
    assert texts[-1].startswith("**Answer**\n**8**")
    assert control  # the follow-up has its own Stop message, replied to the question
    reply = next(r for r in h.discord.requests_to("POST", rf"^/channels/{thread_id}/messages$")
                 if r.json.get("content", "").startswith("↪️"))
    assert reply.json["message_reference"]["message_id"]
    assert reply.json["allowed_mentions"] == {"parse": [], "replied_user": False}


async def test_reason_inside_a_ponder_thread_answers_there_one_chain_at_a_time(
        h: Harness) -> None:
    h.llm.script(Step("Add", "2+2 is 4.", "final_answer"), Text("**4**"))
    first = await h.ask("What is 2+2?")
    await h.finished(first)
    thread_id = h.thread_of(first)
    h.llm.chunk_delay = 0.05  # the next chain is still thinking when the third /reason comes
    h.llm.script(Step("Double", "4*2 is 8, " * 20, "final_answer"), Text("**8**"))
    second = await h.ask("And twice that?", channel_id=thread_id)
    await h.discord.wait_for(lambda: len(h.llm.requests) >= 3, 10)
    third = await h.ask("And thrice?", channel_id=thread_id, user=h.discord.bob)
    await h.discord.wait_for(lambda: third.response_type is not None)
    (refusal,) = h.discord.requests_to("POST", rf"^/interactions/{third.id}/")
    assert refusal.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
    assert "still on the previous question here" in refusal.json["data"]["content"]
    await h.finished(second)
    # Answered inline in the thread, knowing the thread's earlier question and answer.
    assert len(h.discord.threads()) == 1
    asked = [r.body["messages"] for r in h.llm.requests]
    turns = [(m["role"], m["content"]) for m in asked[2] if m["role"] != "system"]
    assert turns[:3] == [("user", "What is 2+2?"), ("assistant", "**4**"),
                         ("user", "And twice that?")]
    assert h.texts(thread_id)[-1].startswith("**Answer**\n**8**")
    assert not any("thrice" in str(body) for body in asked)


async def test_a_refused_follow_up_is_one_reply_with_the_reason_and_starts_nothing(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    h = await start(tmp_path, discord, fake_llm, user_rate_per_minute=1)
    try:
        fake_llm.script(Step("Add", "2+2 is 4.", "final_answer"), Text("**4**"))
        interaction = await h.ask("What is 2+2?")
        await h.finished(interaction)
        thread_id = h.thread_of(interaction)
        asked = len(fake_llm.requests)
        before = len(h.texts(thread_id))

        await discord.user_message(thread_id, "And twice that?")
        reply = await discord.wait_for(lambda: next(
            (m for m in discord.channel_messages(thread_id)[before + 1:]
             if m["author"]["id"] == discord.bot["id"]), None), 10)
        assert reply["content"].startswith("⚠️ ") and "faster than 1 a minute" in reply[
            "content"]
        assert reply["message_reference"]["message_id"]
        assert reply["components"] == []
        await asyncio.sleep(0.5)
        texts = h.texts(thread_id)
        assert len(texts) == before + 2  # the question and the one reply
        assert not any(t.startswith("↪️") for t in texts)
        assert len(fake_llm.requests) == asked
    finally:
        await stop(h)


async def test_model_server_down_is_one_readable_message(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    h = await start(tmp_path, discord, fake_llm, openai_base_url="http://127.0.0.1:9/v1",
                    connect_timeout=0.5, model_wait=1.0)
    try:
        interaction = await h.ask("Anyone there?")
        opening = await h.finished(interaction, 30)
        texts = h.texts(h.thread_of(interaction))
        assert texts[-1].startswith("⚠️ ") and "Gave up after" in texts[-1]
        assert not any(map(still_running, texts))
        assert opening.rsplit("\n", 1)[-1].startswith("⚠️")
        assert "Traceback" not in texts[-1]
    finally:
        await stop(h)


async def test_global_sync_happens_only_when_the_commands_changed(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    put_global = r"^/applications/\d+/commands$"
    for expected in (1, 1):  # first start syncs; the second finds the same hash
        h = await start(tmp_path, discord, fake_llm, guilds=False)
        assert h.bot is not None
        await stop(h)
        assert len(discord.requests_to("PUT", put_global)) == expected
    assert not discord.requests_to("PUT", r"/guilds/")
    # A changed command set (here: a stale hash on record) syncs again.
    settings = make_settings(fake_llm.base_url, tmp_path)
    ponder = Ponder(settings)
    await ponder.start()
    key = f"discord:commands:{discord.application_id}"
    assert await ponder.store.get(key)
    await ponder.store.put(key, "an older command set")
    await ponder.close()
    h = await start(tmp_path, discord, fake_llm, guilds=False)
    try:
        assert h.bot is not None and h.bot.synced == "global"
        assert len(discord.requests_to("PUT", put_global)) == 2
        # And the globally synced command works (found without a guild id).
        fake_llm.script(Step("A", "a", "final_answer"), Text("b"))
        interaction = await h.ask("Global?")
        assert (await h.finished(interaction)).rsplit("\n", 1)[-1].startswith("✅")
    finally:
        await stop(h)


def test_the_command_hash_changes_with_the_command_set() -> None:
    import discord as discord_py
    from discord import app_commands

    client = discord_py.Client(intents=discord_py.Intents.none())
    tree = app_commands.CommandTree(client)

    @tree.command(name="reason", description="d")
    async def reason(interaction: discord_py.Interaction, question: str) -> None: ...

    before = commands_hash(tree)
    assert commands_hash(tree) == before

    @tree.command(name="other", description="d")
    async def other(interaction: discord_py.Interaction) -> None: ...

    assert commands_hash(tree) != before


# --- where threads are impossible or different ---------------------------------------------


async def test_a_forum_channel_gets_a_post(h: Harness) -> None:
    h.llm.script(Step("A", "a", "final_answer"), Text("forum answer"))
    interaction = await h.ask("Forum question?", channel_id=h.discord.forum_channel_id)
    await h.discord.wait_for(lambda: any(
        m["content"].startswith("**Answer**") and SUMMARY.search(m["content"])
        for m in h.discord.messages.values()), 20)
    (post,) = h.discord.requests_to("POST", rf"^/channels/{h.discord.forum_channel_id}/threads$")
    assert post.json["name"] == "Forum question?"
    assert "> Forum question?" in post.json["message"]["content"]
    assert post.json["message"]["components"]  # the Stop button is on the post
    thread_id = int(h.discord.threads()[0]["id"])
    starter = await h.discord.wait_for(lambda: (m := h.discord.channel_messages(thread_id)[0])
                                       and m["content"].rsplit("\n", 1)[-1].startswith("✅")
                                       and m)
    assert starter["components"] == []
    assert h.texts(thread_id)[-1].startswith("**Answer**\nforum answer")
    assert f"<#{thread_id}>" in h.opening(interaction)["content"]
    assert_no_pings(h.discord)


async def test_without_thread_permission_it_answers_inline_and_explains_once(
        h: Harness) -> None:
    h.discord.deny_threads.add(h.discord.text_channel_id)
    h.llm.script(Step("A", "a", "final_answer"), Text("inline one"),
                 Step("B", "b", "final_answer"), Text("inline two"))
    first = await h.ask("First inline?")
    await h.finished(first)
    second = await h.ask("Second inline?")
    await h.finished(second)
    assert not h.discord.threads() and not h.discord.requests_to(path=r"/threads$")
    texts = h.texts(h.discord.text_channel_id)
    assert any(t.startswith("**Answer**\ninline one") for t in texts)
    assert any(t.startswith("**Answer**\ninline two") for t in texts)
    explain = "so I answer right here"
    assert explain in h.opening(first)["content"]
    assert explain not in h.opening(second)["content"]


async def test_a_long_rate_limit_on_thread_creation_answers_inline(h: Harness) -> None:
    h.discord.fail_next(1, 429, method="POST", path=r"/messages/\d+/threads$",
                        retry_after=219.0)  # Discord has answered thread creation like this
    h.llm.script(Step("A", "a", "final_answer"), Text("inline anyway"))
    interaction = await h.ask("Threads are rate-limited?")
    content = await h.finished(interaction)
    assert "Discord asks to wait 219 s" in content and "so I answer here" in content
    assert not h.discord.threads()
    assert any(t.startswith("**Answer**\ninline anyway")
               for t in h.texts(h.discord.text_channel_id))
    assert len(h.discord.requests_to("POST", r"/threads$")) == 1  # not hammered again


async def test_a_dm_answers_inline(h: Harness) -> None:
    h.llm.script(Step("A", "a", "final_answer"), Text("dm answer"))
    interaction = await h.ask("In a DM?", dm=True)
    content = await h.finished(interaction)
    assert "Threads are not available here" in content
    assert any(t.startswith("**Answer**\ndm answer") for t in h.texts(interaction.channel_id))


async def test_after_the_token_expires_the_opening_is_edited_through_the_channel(
        h: Harness) -> None:
    h.llm.chunk_delay = 0.02
    h.llm.script(Step("A", "a " * 100, "final_answer"), Text("late answer"))
    interaction = await h.ask("Slow enough to outlive a token?")
    await h.discord.wait_for(lambda: h.discord.threads())
    h.discord.expire_token(interaction)
    content = await h.finished(interaction)
    assert content.rsplit("\n", 1)[-1].startswith("✅")
    by_channel = h.discord.requests_to(
        "PATCH", rf"^/channels/{h.discord.text_channel_id}/messages/{interaction.original_id}$")
    assert by_channel and by_channel[-1].json["components"] == []
    assert h.discord.requests_to("PATCH", r"^/webhooks/", status=401)


async def test_a_refused_question_is_answered_privately(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    h = await start(tmp_path, discord, fake_llm, max_question_chars=20)
    try:
        interaction = await h.ask("This question is far too long for the limit")
        await discord.wait_for(lambda: interaction.response_type is not None)
        (answer,) = discord.requests_to("POST", rf"^/interactions/{interaction.id}/")
        assert answer.json["type"] == 4
        assert answer.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
        assert "limit is 20" in answer.json["data"]["content"]
        assert not discord.threads() and fake_llm.requests == []
    finally:
        await stop(h)


async def test_a_second_question_while_the_first_thread_opens_is_refused_privately(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    h = await start(tmp_path, discord, fake_llm, user_concurrency=1)
    try:
        first, second = await asyncio.gather(h.ask("What is 2+2?"), h.ask("And 3+3?"))
        await discord.wait_for(lambda: second.response_type is not None)
        (answer,) = discord.requests_to("POST", rf"^/interactions/{second.id}/")
        assert answer.json["type"] == 4
        assert answer.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
        assert "already have 1 question being answered" in answer.json["data"]["content"]
        opening = await h.finished(first)
        assert opening.rsplit("\n", 1)[-1].startswith("✅")
        assert len(discord.threads()) == 1
        # The slot was the chain's, and is free again once it answered.
        third = await h.ask("And 4+4?")
        assert (await h.finished(third)).rsplit("\n", 1)[-1].startswith("✅")
    finally:
        await stop(h)


# --- safety, start-up and shutdown ---------------------------------------------------------


async def test_model_text_cannot_ping_anyone(h: Harness) -> None:
    h.llm.script(Step("Shout", "Hey @everyone and @here, <@&123> <@456>!", "final_answer"),
                 Text("@everyone the answer"))
    interaction = await h.ask("Ping @everyone?")
    await h.finished(interaction)
    for r in writes(h.discord):
        text = str(r.body)
        assert "@everyone" not in text and "@here" not in text, r.body
    texts = h.texts(h.thread_of(interaction))
    assert "@\u200beveryone" in texts[0] and "<@456>" in texts[0]  # shown, never pinged
    assert_no_pings(h.discord)


def test_a_channels_limiter_is_shared_as_long_as_anyone_holds_it() -> None:
    registry = LimiterRegistry(keep=1)
    held = registry.get(1)  # e.g. by the surface of a chain that runs for an hour
    assert registry.get(1) is held
    assert registry.posts(1) is not held and registry.get(2) is not held
    # Nobody holds a channel's limiter any more, and others were used since: the registry
    # does not keep it either.
    gone = weakref.ref(registry.get(3))
    registry.get(4)
    gc.collect()
    assert gone() is None
    assert registry.get(1) is held


def test_render_and_thread_names() -> None:
    assert render("@everyone **bold** @here") == "@\u200beveryone **bold** @\u200bhere"
    assert render("mail me@everyone.org") == "mail me@\u200beveryone.org"
    assert thread_name("  **Why** is   the <@123> sky `blue`?\n\nReally?  ") == \
        "Why is the sky blue? Really?"
    long = thread_name("word " * 60)
    assert len(long) <= 100 and long.endswith("…") and not long.endswith(" …")
    assert thread_name("***") == "Ponder"
    assert thread_name("see https://example.com/a/b/c please") == "see example.com please"


async def test_without_the_message_content_intent_it_reconnects_and_still_serves(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    discord.disallowed_intents = MESSAGE_CONTENT_INTENT
    h = await start(tmp_path, discord, fake_llm)
    try:
        identifies = [f["d"]["intents"] for f in discord.gateway_frames if f.get("op") == 2]
        assert len(identifies) == 2
        assert identifies[0] & MESSAGE_CONTENT_INTENT and not identifies[1] & MESSAGE_CONTENT_INTENT
        fake_llm.script(Step("A", "a", "final_answer"), Text("still here"))
        interaction = await h.ask("Still working?")
        assert (await h.finished(interaction)).rsplit("\n", 1)[-1].startswith("✅")
    finally:
        await stop(h)


async def test_a_wrong_token_is_a_readable_error(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    settings = make_settings(fake_llm.base_url, tmp_path, discord_token="not-the-token",
                             discord_api_url=discord.api_url,
                             discord_gateway_url=discord.gateway_url)
    ponder = Ponder(settings)
    await ponder.start()
    try:
        with pytest.raises(PlatformError, match="Discord refused DISCORD_TOKEN"):
            await asyncio.wait_for(DiscordBot(ponder, settings).run(), 15)
    finally:
        await ponder.close()


async def test_a_restart_interrupts_visibly_and_the_chain_resumes_in_its_thread(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    h = await start(tmp_path, discord, fake_llm)
    fake_llm.chunk_delay = 0.02
    fake_llm.script(Step("S1", "first " * 40, "continue"), Step("S2", "second " * 40, "continue"),
                    Step("S3", "third " * 40, "continue"), Step("S4", "fourth", "final_answer"),
                    Text("resumed answer"))
    interaction = await h.ask("Survive a restart?")
    await discord.wait_for(lambda: discord.threads() and len(discord.channel_messages(
        int(discord.threads()[0]["id"]))) >= 2, 20)
    # What `ponder discord` does on SIGTERM: drain (stopping what still runs), then close.
    await h.ponder.drain(0)
    await stop(h)
    thread_id = h.thread_of(interaction)
    content = h.opening(interaction)["content"]
    assert content.rsplit("\n", 1)[-1].startswith("↻ Interrupted by a restart")
    assert h.opening(interaction)["components"] == []
    assert not any(map(still_running, h.texts(thread_id)))
    stopped_at = len(h.texts(thread_id))

    h = await start(tmp_path, discord, fake_llm)
    try:
        content = await h.finished(interaction, 30, marks=("✅", "⚠️", "⏹️"))
        assert content.rsplit("\n", 1)[-1].startswith("✅")
        texts = h.texts(thread_id)
        assert any(t.startswith("↻") for t in texts[stopped_at:])
        assert texts[-1].startswith("**Answer**\nresumed answer")
        assert not any(map(still_running, texts))
    finally:
        await stop(h)
