"""Hard cases an independent review of the "one core" layout found, each reproduced here
first: every docstring tells the defect as it was seen, and the test guards its fix."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.service import Ponder
from bot.store import _MIGRATIONS, ChainRecord, StepRecord
from tests.conftest import make_settings
from tests.fakes.discord_server import FakeDiscord, RecordedRequest, scaled_rate_limits
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import start_harness, stop_harness, three_steps, unreachable_model
from tests.surfaces import RecordingSurface
from tests.test_discord import Harness, start, stop


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as fake:
        yield fake


@pytest.fixture
async def dh(tmp_path: Path, fake_discord: FakeDiscord,
             fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    harness = await start(tmp_path, fake_discord, fake_llm)
    try:
        yield harness
    finally:
        await stop(harness)


def _turns(body: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]


async def test_discord_inline_chain_does_not_get_other_peoples_questions_as_history(
        dh: Harness) -> None:
    """Where threads are impossible a chain runs inline in the channel. The old adapter gave
    such a chain no history (only /reason inside a thread carried the thread's); the service
    now loads history for any `request.thread`, and the Discord adapter sets it to the
    *channel* id for inline chains — so bob's question is sent to the model with alice's
    earlier question and answer as if it were his conversation."""
    h = dh
    h.discord.deny_threads.add(h.discord.text_channel_id)
    h.llm.script(Step("A", "a", "final_answer"), Text("alice's secret answer"),
                 Step("B", "b", "final_answer"), Text("bob's answer"))
    first = await h.ask("Alice's private question?")
    await h.finished(first)
    asked = len(h.llm.requests)
    second = await h.ask("Bob's question?", user=h.discord.bob)
    await h.finished(second)
    turns = _turns(h.llm.requests[asked].body)
    assert turns[0] == ("user", "Bob's question?"), turns


# --- Slack ---------------------------------------------------------------------------------




async def test_slack_a_chain_that_crashes_before_showing_anything_says_so_in_the_thread(
        tmp_path: Path) -> None:
    """The store refuses the new chain (disk full, database locked): the chain's task dies
    before any presenter exists. The old Slack adapter caught the crash from
    `handle.wait()` and posted "Something went wrong on Ponder's side…" in the thread; now
    `ChainHandle.wait()` swallows it into an Outcome and `SlackBot._until_done` only clears
    the status, so the asker sees nothing at all (`internal_slack` is worded but unused)."""
    async with FakeSlack(streaming=False, update_limit=None) as slack, \
            FakeOpenAI() as llm:
        llm.script(*three_steps())
        h = await start_harness(tmp_path, slack, llm)
        try:
            async def broken(record: object) -> None:
                raise sqlite3.OperationalError("database or disk is full")
            h.ponder.store.start_chain = broken  # type: ignore[method-assign]
            question, body = h.ask("What is 2+2?")
            assert await h.post(body) == 200
            await h.settle()
            said = [m.text for m in h.replies(question.ts) if m.is_bot]
            assert any("went wrong" in t or "internal error" in t for t in said), said
        finally:
            await stop_harness(h)


def _drop_connection_once(discord: FakeDiscord,
                          match: Callable[[RecordedRequest], bool]) -> list[int]:
    """The fake Discord hangs up (no HTTP answer) on the next request `match(record)` accepts,
    as a reset connection or a proxy restart does."""
    dropped: list[int] = []
    answer = discord._answer

    async def flaky(request: web.Request, record: RecordedRequest,
                    *rest: Any) -> web.Response:
        if not dropped and match(record):
            dropped.append(1)
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
        return await answer(request, record, *rest)

    discord._answer = flaky  # type: ignore[method-assign]
    return dropped


async def test_discord_a_follow_up_whose_reply_is_cut_off_does_not_lock_the_thread(
        dh: Harness) -> None:
    """`DiscordBot._follow_up` gives the admission back only on `HTTPException` or
    `TimeoutError`. A dropped connection (aiohttp's ServerDisconnectedError; discord.py only
    retries resets with BSD/Windows errno 54/10054) escapes, and the admission is never
    released: its asker slot (`Gate.per_user`), the thread (`Gate.threads`) and
    `Ponder.pending` stay taken until the process restarts, so every later follow-up in
    the thread is refused "I am still on the previous question here"."""
    h = dh
    h.llm.script(Step("Add", "2+2 is 4.", "final_answer"), Text("**4**"),
                 Step("Double", "4*2 is 8.", "final_answer"), Text("**8**"))
    interaction = await h.ask("What is 2+2?")
    await h.finished(interaction)
    thread_id = h.thread_of(interaction)
    dropped = _drop_connection_once(h.discord, lambda r: r.method == "POST" and isinstance(
        r.json, dict) and r.json.get("message_reference") is not None)
    await h.discord.user_message(thread_id, "And twice that?")
    await h.discord.wait_for(lambda: dropped, 10)
    await asyncio.sleep(1.0)
    # The asker tries again: answered, not refused as busy.
    await h.discord.user_message(thread_id, "And twice that, please?")
    await h.discord.wait_for(lambda: any(
        t.startswith("**Answer**\n**8**") or "still on the previous question" in t
        for t in h.texts(thread_id)), 20)
    assert not any("still on the previous question" in t for t in h.texts(thread_id))
    await h.discord.wait_for(lambda: not h.ponder.running, 10)
    assert not h.ponder.pending, h.ponder.pending
    assert not h.ponder.gate.threads, h.ponder.gate.threads
    assert sum(h.ponder.gate.per_user.values()) == 0, dict(h.ponder.gate.per_user)


# --- the store migration -------------------------------------------------------------------




async def test_a_chinese_chain_running_across_the_upgrade_is_tidied_and_resumed_in_chinese(
        tmp_path: Path) -> None:
    """A chain left running by the old version (schema 1: no language column, handles a flat
    list). The old recovery detected the language from the question and, for a message
    whose step the store has as finished, wrote the step's final text. After the migration
    every such chain reads as English (`language` defaults to 'en'), and the flat handles
    land in slot "" so a finished step is no longer recognised: the step's message says
    "(cut short)" in English over half its text, and the resume notice is English."""
    path = tmp_path / "ponder.db"
    db = sqlite3.connect(path)
    db.executescript(f"BEGIN; {_MIGRATIONS[0]}; PRAGMA user_version=1; COMMIT;")
    db.execute("INSERT INTO chains (id, platform, question, mode, status, started_at, thread,"
               " asker, handles) VALUES ('dead', 'test', '二加二是多少？', 'chain', 'running', 0,"
               " 'T3', 'U1', ?)", (json.dumps([0, 1]),))
    db.execute("INSERT INTO steps VALUES ('dead', 1, '重述', '我们需要算 2+2。', 1.0)")
    db.commit()
    db.close()
    async with FakeOpenAI(auto_steps=3) as fake:
        ponder = Ponder(make_settings(fake.base_url, tmp_path))
        await ponder.start()
        try:
            surface = RecordingSurface()
            surface.shown.update({0: "**第 1 步 · 重述** ⏳\n我们需要",
                                  1: "**第 2 步** ⏳\n思考中…"})

            async def surface_for(record: object) -> RecordingSurface:
                return surface

            (handle,) = await ponder.recover("test", surface_for)
            await handle.wait()
            assert surface.edits(1)[:1] == ["**第 2 步**\n_（已中断）_"], surface.edits(1)
            assert surface.edits(0)[:1] == ["**第 1 步 · 重述** · 1.0 秒\n我们需要算 2+2。"], \
                surface.edits(0)
            assert "从第 2 步继续" in surface.text(), surface.text()
        finally:
            await ponder.close()


async def test_discord_a_follow_up_while_a_chain_is_being_recovered_waits_its_turn(
        tmp_path: Path, fake_discord: FakeDiscord, fake_llm: FakeOpenAI) -> None:
    """After a restart `DiscordBot.recover` runs in the background once READY arrives, and
    events are served meanwhile. `Ponder.recover` tidies every leftover thread first and
    holds a thread (`Gate.count_resumed`) only when it launches its chain, so a follow-up
    the asker sends in those seconds is admitted and then the resumed chain starts in the
    same thread too: two chains in one thread, steps interleaved — the rule "one chain at a
    time per thread" does not hold across a restart."""
    discord = fake_discord
    h1 = await start(tmp_path, discord, fake_llm)
    fake_llm.chunk_delay = 0.02
    fake_llm.script(Step("S1", "first " * 40, "continue"), Step("S2", "second " * 40, "continue"),
                    Step("S3", "third " * 40, "continue"), Step("S4", "fourth", "final_answer"),
                    Text("resumed answer"))
    interaction = await h1.ask("Survive a restart?")
    await discord.wait_for(lambda: discord.threads() and len(discord.channel_messages(
        int(discord.threads()[0]["id"]))) >= 2, 20)
    await h1.ponder.drain(0)
    await stop(h1)
    thread_id = h1.thread_of(interaction)
    fake_llm._queue.clear()
    fake_llm.chunk_delay = 0.03
    fake_llm.script(*[Step(f"F{n}", "slowly " * 40, "continue") for n in range(1, 6)],
                    Step("F4", "done", "final_answer"), Text("follow-up answer"))
    # Reading back the dead process's messages takes a moment (a busy Discord).
    answer = discord._answer

    async def slow_reads(request: web.Request, record: RecordedRequest,
                         *rest: Any) -> web.Response:
        if record.method == "GET" and "/messages/" in record.path:
            await asyncio.sleep(1.0)
        return await answer(request, record, *rest)

    discord._answer = slow_reads  # type: ignore[method-assign]
    h2 = await start(tmp_path, discord, fake_llm)
    try:
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                here = [c for c in h2.ponder.running.values()
                        if c.request.thread == str(thread_id)]
                most = max(most, len(here))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        await discord.user_message(thread_id, "And what about 3+3?")
        # Both the follow-up and the resumed chain end, one way or another.
        await discord.wait_for(lambda: any(t.startswith("↻") for t in h2.texts(thread_id)), 30)
        await discord.wait_for(lambda: not h2.ponder.running and not h2.ponder.pending, 40)
        watcher.cancel()
        assert most <= 1, f"{most} chains ran at once in thread {thread_id}"
    finally:
        await stop(h2)


async def test_slack_a_chinese_question_gets_its_failure_in_chinese(tmp_path: Path) -> None:
    """The model server is down. A Chinese question is told so in Chinese while it waits
    ("模型服务器没有响应…") and then fails with the model client's English-only text ("no model
    server answers at … — start one with `ponder model serve`…") under a Chinese "秒后放弃":
    the one message a person must read is the one not in `bot/wording.py`."""
    llm = await unreachable_model()
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, llm, model_wait=0.3, health_interval=0.1,
                                connect_timeout=0.2, retry_base_delay=0.01)
        try:
            question, body = h.ask("二加二等于多少？")
            assert await h.post(body) == 200
            await h.settle()
            said = [m.text for m in h.replies(question.ts) if m.is_bot]
            last = said[-1]
            assert "秒后放弃" in last, said
            assert "model server" not in last, last
        finally:
            await stop_harness(h)


async def test_slack_the_busy_refusal_does_not_point_at_a_stop_button_slack_lacks(
        tmp_path: Path) -> None:
    """One chain per thread is now enforced on Slack too, with Discord's wording: "press Stop
    or wait for its answer". Ponder's Slack messages have no Stop button (no action of any
    kind), so the refusal sends the asker looking for a control that does not exist."""
    async with FakeSlack(streaming=False, update_limit=None) as slack, \
            FakeOpenAI(chunk_delay=0.02, chunk_chars=4) as llm:
        llm.script(*three_steps())
        h = await start_harness(tmp_path, slack, llm)
        try:
            question, body = h.ask("What is 2+2?")
            assert await h.post(body) == 200
            await asyncio.sleep(0.3)
            _, follow = h.ask("And 3+3?", thread_ts=question.ts, mention=False)
            assert await h.post(follow) == 200
            await h.settle()
            refusals = [e.text for e in slack.ephemerals if "previous question" in e.text]
            assert refusals, [m.text for m in h.replies(question.ts)]
            assert "Stop" not in refusals[0], refusals[0]
        finally:
            await stop_harness(h)


async def test_discord_stop_on_a_finished_chinese_chain_answers_in_chinese(
        dh: Harness) -> None:
    """The Stop button of a Chinese chain is labelled 停止, but once the chain is over (or
    after a restart that did not resume it) `Ponder.language_of` knows only running and
    pending chains and falls back to English: the press is answered "This chain has already
    finished." The chain's language is in the store."""
    h = dh
    h.llm.script(Step("加法", "二加二等于四。", "final_answer"), Text("**四**"))
    interaction = await h.ask("二加二等于多少？")
    await h.discord.wait_for(lambda: interaction.original_id and h.opening(interaction)[
        "components"])
    button = h.opening(interaction)["components"]
    assert button[0]["components"][0]["label"] == "停止"
    await h.finished(interaction)
    # A client still showing the button (its last edit not yet seen, or one that failed).
    h.opening(interaction)["components"] = button
    custom_id = button[0]["components"][0]["custom_id"]
    pressed = await h.discord.click(int(h.opening(interaction)["id"]), custom_id)
    await h.discord.wait_for(lambda: pressed.response_type is not None)
    (answer,) = h.discord.requests_to("POST", rf"^/interactions/{pressed.id}/")
    assert answer.json["data"]["content"] == "这条推理已经结束。", answer.json["data"]["content"]


async def test_recovery_of_a_finished_step_longer_than_its_posted_messages_loses_nothing(
        tmp_path: Path) -> None:
    """A long step is shown in several messages; the process died after the store had the
    step as finished but while only its first message was posted. Recovery writes the
    first piece of the final text into that message and drops the rest
    (`final[n] if n < len(final)` in bot/recovery.py): the step silently ends mid-way, with
    no "(cut short)" and no continuation. The old code fell back to the cut-short marking when
    the final text did not fit one message."""
    async with FakeOpenAI(auto_steps=3) as fake:
        ponder = Ponder(make_settings(fake.base_url, tmp_path))
        await ponder.start()
        try:
            surface = RecordingSurface(max_chars=200)
            surface.shown[0] = "**Step 1 · Long** ⏳\nalpha alpha alpha"
            content = " ".join(["alpha"] * 40 + ["omega-tail"])
            await ponder.store.start_chain(ChainRecord(
                "dead", "test", "A long one?", "chain", thread="T4", asker="U1",
                handles={"step:1": [0]}))
            await ponder.store.add_step("dead", StepRecord(1, "Long", content, 2.0))

            async def surface_for(record: object) -> RecordingSurface:
                return surface

            (handle,) = await ponder.recover("test", surface_for)
            await handle.wait()
            first = surface.edits(0)[0]
            assert "omega-tail" in surface.text() or "cut short" in first, (first,
                                                                           surface.text())
        finally:
            await ponder.close()
