"""Slack under load: many chains sharing one channel's post budget and the workspace's
`chat.update` and streaming windows. Final texts are posted final and go first, later steps
share a reply when posts run short, every chain that Slack will stream is streamed, and the
fake Slack applies Slack's published limits the way Slack counts them (in windows), so none of
this is measured against a kinder Slack than the real one. Windows are scaled down; the code
paths are production's (`bench/slack.py` runs the same at full size)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.events import (
    ChainStarted,
    Event,
    FinalAnswer,
    Language,
    StepDelta,
    StepFinished,
    StepStarted,
)
from bot.presenter import ThreadPresenter
from bot.ratelimit import SlidingWindowLimiter
from bot.recovery import settle_leftovers
from bot.store import ChainRecord, StepRecord
from bot.surface import Handle
from tests.conftest import until
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack, Message
from tests.slack_harness import FAST, Harness, start_harness, stop_harness
from tests.surfaces import RecordingSurface

# --- the fake applies Slack's published limits ----------------------------------------------


async def _call(http: aiohttp.ClientSession, slack: FakeSlack, method: str,
                **body: Any) -> tuple[int, dict[str, Any], str | None]:
    async with http.post(slack.base_url + method, json=body,
                         headers={"Authorization": f"Bearer {slack.token}"}) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def test_the_fake_applies_slacks_published_limits_per_method_in_windows() -> None:
    # A Slack minute of 10 s here (posts: 3 in any 0.5 s): long enough to fill each window.
    async with FakeSlack(update_limit=None) as slack, aiohttp.ClientSession() as http:
        slack.published_limits(scale=6)
        parents = {ch: slack.add_user_message(ch, "question").ts for ch in ("C1", "C2")}
        posted = [await _call(http, slack, "chat.postMessage", channel="C1",
                              thread_ts=parents["C1"], text=f"reply {n}") for n in range(4)]
        # chat.postMessage: per channel, a short burst and then a 429 with when to come back.
        assert [status for status, *_ in posted] == [200, 200, 200, 429]
        assert 0 < float(posted[3][2] or 0) <= 1
        assert (await _call(http, slack, "chat.postMessage", channel="C2",
                            thread_ts=parents["C2"], text="elsewhere"))[0] == 200
        ts = posted[0][1]["ts"]
        await asyncio.sleep(float(posted[3][2] or 0))  # as long as Slack said: the window slid
        assert (await _call(http, slack, "chat.postMessage", channel="C1",
                            thread_ts=parents["C1"], text="later"))[0] == 200

        # chat.update: 50 for the whole workspace, whichever channel.
        updates = [(await _call(http, slack, "chat.update", channel="C1", ts=ts,
                                text=f"edit {n}"))[0] for n in range(51)]
        assert updates.count(200) == 50 and updates[-1] == 429
        # The streaming methods: Tier 2 for start and stop (20), Tier 4 for appends (100).
        starts = [await _call(http, slack, "chat.startStream", channel="C2",
                              thread_ts=parents["C2"], recipient_user_id="U1",
                              recipient_team_id=slack.team_id) for _ in range(21)]
        assert [s for s, *_ in starts].count(200) == 20 and starts[-1][0] == 429
        stream = starts[0][1]["ts"]
        chunk = [{"type": "markdown_text", "text": "x"}]
        appends = [(await _call(http, slack, "chat.appendStream", channel="C2", ts=stream,
                                chunks=chunk))[0] for _ in range(101)]
        assert appends.count(200) == 100 and appends[-1] == 429
        stops = [(await _call(http, slack, "chat.stopStream", channel="C2", ts=s[1]["ts"]))[0]
                 for s in starts[:20]] + [(await _call(http, slack, "chat.stopStream",
                                                       channel="C2", ts=stream))[0]]
        assert stops.count(200) == 20 and stops[-1] == 429


# --- the limiter: windows, not buckets --------------------------------------------------------


async def test_a_window_is_handed_out_whole_and_never_overrun() -> None:
    window = SlidingWindowLimiter((3, 0.3))
    for _ in range(3):  # a free window at once: a burst of final texts goes out together
        await asyncio.wait_for(window.acquire(), 0.1)
    assert window.room() == 0 and not window.try_acquire()
    late = asyncio.create_task(window.acquire())
    for _ in range(3):
        window.settled()  # answered: counted from now on, for the whole window
    await asyncio.sleep(0.1)
    assert not late.done()  # their window has not passed yet
    await asyncio.wait_for(late, 2)
    assert window.room() == 2


async def test_interim_writes_leave_room_for_the_final_ones_claimed() -> None:
    window = SlidingWindowLimiter((4, 5.0), reserve=0.25)  # one call kept for urgent writes
    window.claim()  # a message shown unfinished: its final text will come
    assert window.try_acquire() and window.try_acquire()  # 4 - 2 = 2 = reserve + claim
    assert not window.try_acquire()  # interim writes stop here...
    await asyncio.wait_for(window.acquire(urgent=True), 0.1)  # ...final texts do not
    reserved = asyncio.create_task(window.reserve())  # another interim post would need room
    await asyncio.sleep(0.05)
    assert not reserved.done()
    reserved.cancel()


async def test_between_chains_the_one_that_began_first_goes_first() -> None:
    window = SlidingWindowLimiter((1, 0.05))
    await window.acquire()
    order: list[str] = []

    async def wait(name: str, rank: float, urgent: bool = False) -> None:
        await window.acquire(urgent=urgent, rank=rank)
        order.append(name)
        window.settled()

    tasks = [asyncio.create_task(wait("late chain", 3.0)),
             asyncio.create_task(wait("early chain", 1.0)),
             asyncio.create_task(wait("last word", 5.0, urgent=True))]
    await asyncio.sleep(0.01)
    window.settled()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["last word", "early chain", "late chain"]


# --- final texts first, across chains ---------------------------------------------------------


class ChannelThread(RecordingSurface):
    """One thread of a channel: its posts share the channel's budget, its edits another; every
    post lands in the channel's one log, in the order the channel saw them."""

    def __init__(self, name: str, posts: SlidingWindowLimiter, edits: SlidingWindowLimiter,
                 log: list[tuple[str, str]]) -> None:
        super().__init__(budget=edits, edit_interval=0.0)
        self.name, self.posts, self.edit_budget, self.log = name, posts, edits, log

    @property
    def post_budget(self) -> SlidingWindowLimiter:
        return self.posts

    async def post(self, text: str) -> Handle:
        try:
            handle = await super().post(text)
        finally:
            self.posts.settled()
        self.log.append((self.name, text.split("\n", 1)[0]))
        return handle

    async def edit(self, handle: Handle, text: str) -> None:
        try:
            await super().edit(handle, text)
        finally:
            self.edit_budget.settled()


class Feed:
    """Events handed to a presenter one at a time, as a test says."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def send(self, *events: Event) -> None:
        for event in events:
            self.queue.put_nowait(event)

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self.queue.get()) is not None:
            yield event


async def test_a_final_answer_goes_ahead_of_other_chains_waiting_posts() -> None:
    posts = SlidingWindowLimiter((1, 0.3))  # a channel's posts, one at a time
    edits = SlidingWindowLimiter((100, 1.0))
    log: list[tuple[str, str]] = []
    feeds = {name: Feed() for name in "ABC"}
    chains = [asyncio.create_task(ThreadPresenter(
        ChannelThread(name, posts, edits, log), rank=rank).present(feeds[name].events()))
        for rank, name in enumerate("ABC")]
    for feed in feeds.values():
        feed.send(ChainStarted("c", "q", "chain", "en"), StepStarted(1))
    feeds["A"].send(StepDelta(1, "Read", "Reading"))
    await until(lambda: log)  # A's first step is out; the window is spent
    feeds["B"].send(StepDelta(1, "Read", "Reading"))
    await until(lambda: posts.waiting == 1)  # B waits for the channel, thinking on
    # C (began last) is done: its step and answer are final texts, B's step is not.
    feeds["C"].send(StepDelta(1, "Add", "1+1"), StepFinished(1, "Add", "1+1 is 2.", 0.1),
                    FinalAnswer("2", 0.1, 0.3, 1))
    await until(lambda: any(name == "C" and head.startswith("**Answer") for name, head in log),
                seconds=10)
    assert [name for name, _ in log[:3]] == ["A", "C", "C"], log
    assert ("B", "**Step 1 · Read** ⏳") not in log[:3]
    for feed in feeds.values():
        feed.close()
    await asyncio.wait_for(asyncio.gather(*chains), 10)


# --- posted final; fewer replies under load ---------------------------------------------------


def _steps(n: int) -> list[Any]:
    return [Step(f"Part {i}", f"Thinking about part {i}.",
                 "final_answer" if i == n else "continue") for i in range(1, n + 1)]


async def _asked(h: Harness, n: int, text: str = "What is {n} squared?") -> Message:
    question, body = h.ask(text.format(n=n), user=f"U{n:04d}")
    assert await h.post(body) == 200
    return question


def _shown_whole(replies: list[Message], steps: int) -> bool:
    """Every step's title and text shown finished (however many replies carry them), the
    answer in a reply of its own, and nothing left saying ⏳."""
    shown = "\n".join(m.text for m in replies)
    return "⏳" not in shown and replies[-1].text.startswith("*Answer*") \
        and "*Step" not in replies[-1].text and all(
            f"*Step {i} · Part {i}* · " in shown and f"Thinking about part {i}." in shown
            for i in range(1, steps + 1))


async def test_a_text_already_final_when_its_turn_comes_is_posted_final(
        tmp_path: Path) -> None:
    # One post at a time in the channel: each reply waits its turn while the model finishes.
    limits = dataclasses.replace(FAST, post_calls=1, post_window=0.3)
    async with FakeSlack(streaming=False, update_limit=None) as slack, FakeOpenAI() as llm:
        slack.limit("chat.postMessage", 1, 0.3)
        h = await start_harness(tmp_path, slack, llm, limits=limits, streaming=False)
        try:
            llm.script(*_steps(3), Text("It is **4**."))
            question = await _asked(h, 2)
            await h.settle()
            replies = h.replies(question.ts)
            answer = replies[-1]
            # Posted once, whole, with its summary line: no ⏳, no closing edit.
            assert answer.texts == [answer.text]
            assert answer.text.startswith("*Answer*\nIt is *4*.") and "Thought for" in answer.text
            assert not [c for c in slack.calls_to("chat.update") if c.body["ts"] == answer.ts]
            unfinished = [c for c in slack.calls_to("chat.postMessage")
                          if "⏳" in str(c.body.get("text"))]
            assert len(unfinished) <= 1  # only the first step can be out before it is done
            assert _shown_whole(replies, 3) and slack.rate_limited == 0
        finally:
            await stop_harness(h)


async def test_under_load_later_steps_share_a_reply_and_every_step_is_shown(
        tmp_path: Path) -> None:
    chains, steps = 6, 3
    limits = dataclasses.replace(FAST, post_calls=1, post_window=0.1)
    async with FakeSlack(streaming=False, update_limit=None) as slack, \
            FakeOpenAI(chunk_chars=8, chunk_delay=0.004, auto_steps=steps) as llm:
        slack.limit("chat.postMessage", 1, 0.1)
        h = await start_harness(tmp_path, slack, llm, limits=limits, streaming=False,
                                min_steps=steps, max_steps=steps)
        try:
            llm.answer("What is", Text("The square."))
            questions = await asyncio.gather(*(_asked(h, n) for n in range(chains)))
            await h.settle()
            threads = [h.replies(q.ts) for q in questions]
            # The channel could not take a reply per step: steps were written into fewer.
            assert sum(len(t) for t in threads) < chains * (steps + 1)
            assert any(len(t) < steps + 1 for t in threads)
            for thread in threads:
                assert _auto_shown_whole(thread, steps), [m.text for m in thread]
            assert slack.rate_limited == 0
        finally:
            await stop_harness(h)


def _auto_shown_whole(replies: list[Message], steps: int) -> bool:
    """`_shown_whole` for the fake model's own steps ("Step 2", "Thinking about part 2 …")."""
    shown = "\n".join(m.text for m in replies)
    return "⏳" not in shown and replies[-1].text.startswith("*Answer*") \
        and "*Step" not in replies[-1].text and all(
            f"*Step {i} · Step {i}* · " in shown and f"Thinking about part {i} of" in shown
            for i in range(1, steps + 1))


# --- streaming for every chain Slack will stream ----------------------------------------------


async def test_every_chain_streams_when_it_may_wait_briefly_for_a_start(
        tmp_path: Path) -> None:
    # Slack lets 2 streams start per 0.5 s here; 5 chains at once all stream, none posts.
    limits = dataclasses.replace(FAST, start_calls=2, stop_calls=2, stream_window=0.5,
                                 stream_wait=5.0)
    async with FakeSlack(streaming=True, update_limit=None) as slack, FakeOpenAI() as llm:
        slack.limit("chat.startStream", 2, 0.5)
        slack.limit("chat.stopStream", 2, 0.5)
        h = await start_harness(tmp_path, slack, llm, limits=limits, min_steps=2, max_steps=2)
        try:
            llm.answer("What is", Text("The square."))
            questions = await asyncio.gather(*(_asked(h, n) for n in range(5)))
            await h.settle()
            assert slack.count("chat.startStream", 200) == 5
            assert slack.count("chat.postMessage") == 0 and slack.rate_limited == 0
            for question in questions:
                (reply,) = h.replies(question.ts)
                assert reply.stream_state == "stopped" and "Thought for" in reply.text
                assert {t.status for t in reply.tasks.values()} == {"complete"}
        finally:
            await stop_harness(h)


async def test_a_chain_that_finds_no_stream_start_in_time_posts_instead(
        tmp_path: Path) -> None:
    limits = dataclasses.replace(FAST, start_calls=1, stream_window=30.0, stream_wait=0.2)
    async with FakeSlack(streaming=True, update_limit=None) as slack, FakeOpenAI() as llm:
        h = await start_harness(tmp_path, slack, llm, limits=limits, min_steps=2, max_steps=2)
        try:
            llm.answer("What is", Text("The square."))
            first, second = await asyncio.gather(*(_asked(h, n) for n in range(2)))
            await h.settle()
            assert slack.count("chat.startStream") == 1  # the window had one start
            streamed, posted = sorted((h.replies(first.ts), h.replies(second.ts)), key=len)
            assert streamed[0].stream_state == "stopped" and "Thought for" in streamed[0].text
            assert _auto_shown_whole(posted, 2)
            assert h.bot.workspaces and all(ws.streaming for ws in h.bot.workspaces.values())
        finally:
            await stop_harness(h)


# --- the whole thing under Slack's published limits ------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
async def test_many_chains_in_one_channel_under_slacks_limits_meet_no_429(
        tmp_path: Path, streaming: bool) -> None:
    scale = 30.0  # a Slack minute lasts 2 s; posts: 3 in any 0.1 s
    limits = dataclasses.replace(
        FAST, update_calls=50, update_window=60 / scale, post_calls=3, post_window=3 / scale,
        append_calls=100, append_window=60 / scale, start_calls=20, stop_calls=20,
        stream_window=60 / scale, stream_wait=10 / scale)
    async with FakeSlack(streaming=streaming, update_limit=None) as slack, \
            FakeOpenAI(chunk_chars=16, chunk_delay=0.003, auto_steps=2) as llm:
        slack.published_limits(scale)
        h = await start_harness(tmp_path, slack, llm, limits=limits, streaming=streaming,
                                min_steps=2, max_steps=2)
        try:
            llm.answer("What is", Text("The square, " * 40))
            questions = await asyncio.gather(*(_asked(h, n) for n in range(12)))
            await h.settle()
            assert slack.rate_limited == 0
            for question in questions:
                replies = h.replies(question.ts)
                shown = "\n".join(m.text for m in replies)
                assert "Thought for" in shown and "⏳" not in shown
                assert shown.count("The square,") >= 40
        finally:
            await stop_harness(h)


# --- recovery of steps that shared a reply ----------------------------------------------------


@pytest.mark.parametrize("finished", [2, 1])
async def test_a_restart_finishes_the_steps_a_shared_reply_showed(finished: int) -> None:
    surface = RecordingSurface()
    language: Language = "en"
    shown = ("**Step 1 · Read** · 0.5 s\nReading it.\n\n**Step 2 · Add** ⏳\n1 and")
    handle = await surface.post(shown)
    assert isinstance(handle, int)
    steps = [StepRecord(1, "Read", "Reading it.", 0.5), StepRecord(2, "Add", "1 and 1.", 0.7)]
    record = ChainRecord("c1", "test", "q", "chain", handles={"step:1-2": [handle]},
                         language=language)
    await settle_leftovers(surface, record, steps[:finished])
    text = surface.shown[handle]
    assert "⏳" not in text and text.startswith("**Step 1 · Read** · 0.5 s\nReading it.")
    if finished == 2:  # both finished: their final text, nothing cut short
        assert text.endswith("**Step 2 · Add** · 0.7 s\n1 and 1.") and "cut short" not in text
    else:  # the second was still thinking: it says it was cut short
        assert text.endswith("**Step 2**\n_(cut short)_")
