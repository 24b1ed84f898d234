"""Discord's rate limits are fixed windows, and Ponder paces by what Discord's answers say of
them: the fake applies windows as Discord documents them (and as Discord behaves), Ponder's
`WindowLimiter` hands out no more than a window has left, many chains at once meet neither a
429 nor discord.py holding a write back, and /reason in a thread Ponder has just opened finds
it busy."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.discord.surface import GLOBAL_BURST, GLOBAL_RATE, LimiterRegistry
from bot.ratelimit import LimiterMap, RateLimiter, SharedWindow, Window, WindowLimiter
from tests.conftest import until
from tests.fakes.discord_server import (
    DEFAULT_GLOBAL_LIMIT,
    MESSAGE_FLAG_EPHEMERAL,
    ClientHolds,
    FakeDiscord,
    scaled_rate_limits,
)
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.test_discord import Harness, start, stop

POST = "POST /channels/{channel_id}/messages"
EDIT = "PATCH /channels/{channel_id}/messages/{id}"
WINDOW = 0.4  # seconds: the fake's windows in the tests of the fake
GLOBAL = 4 * DEFAULT_GLOBAL_LIMIT


# --- the fake: windows and headers as Discord documents them ---------------------------------


class Rest:
    """Plain HTTP to the fake, as any client would send it."""

    def __init__(self, fake: FakeDiscord, session: aiohttp.ClientSession) -> None:
        self.fake, self.session = fake, session
        self.headers = {"Authorization": f"Bot {fake.token}"}

    async def call(self, method: str, path: str,
                   body: dict[str, Any] | None = None) -> tuple[int, Any, Any]:
        async with self.session.request(method, self.fake.api_url + path, json=body,
                                        headers=self.headers) as response:
            return response.status, await response.json(), response.headers

    async def post(self, channel: int) -> tuple[int, Any, Any]:
        return await self.call("POST", f"/channels/{channel}/messages", {"content": "hi"})


@pytest.fixture
async def rest() -> AsyncIterator[Rest]:
    limits = {POST: (3, WINDOW), EDIT: (3, WINDOW)}
    async with FakeDiscord(rate_limits=limits, global_limit=None) as fake, \
            aiohttp.ClientSession() as session:
        yield Rest(fake, session)


async def test_the_fake_counts_fixed_windows_and_says_so_on_every_answer(rest: Rest) -> None:
    channel = rest.fake.text_channel_id
    # Every route answers with the headers, not only the limited ones.
    status, _, headers = await rest.call("GET", "/users/@me")
    assert status == 200 and {"X-RateLimit-Limit", "X-RateLimit-Remaining",
                              "X-RateLimit-Reset-After", "X-RateLimit-Bucket"} <= set(headers)

    # The window opens with the first request: Remaining counts down, Reset-After runs out.
    seen = [await rest.post(channel) for _ in range(3)]
    assert [s for s, _, _ in seen] == [200, 200, 200]
    assert [h["X-RateLimit-Limit"] for _, _, h in seen] == ["3", "3", "3"]
    assert [h["X-RateLimit-Remaining"] for _, _, h in seen] == ["2", "1", "0"]
    first_after = float(seen[0][2]["X-RateLimit-Reset-After"])
    assert 0 < first_after <= WINDOW
    assert float(seen[2][2]["X-RateLimit-Reset-After"]) <= first_after
    assert abs(float(seen[0][2]["X-RateLimit-Reset"]) - time.time() - first_after) < 0.2

    # One more in the same window: a 429, and the window stays spent (no refill inside it).
    status, body, headers = await rest.post(channel)
    assert status == 429 and body["global"] is False
    assert 0 < body["retry_after"] <= first_after
    assert headers["X-RateLimit-Scope"] == "user" and headers["X-RateLimit-Remaining"] == "0"
    assert "Retry-After" in headers and "Via" in headers
    await asyncio.sleep(body["retry_after"] / 2)
    assert (await rest.post(channel))[0] == 429

    # Another channel has a window of its own.
    other = rest.fake.add_text_channel("other")
    assert (await rest.post(other))[2]["X-RateLimit-Remaining"] == "2"

    # Once the window has ended, the next request opens a full one.
    await asyncio.sleep(float(headers["X-RateLimit-Reset-After"]) + 0.01)
    status, _, headers = await rest.post(channel)
    assert status == 200 and headers["X-RateLimit-Remaining"] == "2"
    assert float(headers["X-RateLimit-Reset-After"]) > WINDOW * 0.8


async def test_message_posts_and_edits_share_a_bucket_name_but_are_counted_apart(
        rest: Rest) -> None:
    # As Discord does (discord/discord-api-docs#8073): one X-RateLimit-Bucket, two counts.
    channel = rest.fake.text_channel_id
    _, message, posted = await rest.post(channel)
    status, _, edited = await rest.call("PATCH", f"/channels/{channel}/messages/{message['id']}",
                                        {"content": "edited"})
    assert status == 200
    assert posted["X-RateLimit-Bucket"] == edited["X-RateLimit-Bucket"]
    assert (posted["X-RateLimit-Remaining"], edited["X-RateLimit-Remaining"]) == ("2", "2")


async def test_the_fake_shares_a_bucket_when_told_and_can_be_a_token_bucket() -> None:
    limits = {POST: (3, WINDOW), EDIT: (3, WINDOW)}
    async with aiohttp.ClientSession() as session:
        async with FakeDiscord(rate_limits=limits, global_limit=None,
                               shared_buckets={EDIT: POST}) as fake:
            rest = Rest(fake, session)
            _, message, _ = await rest.post(fake.text_channel_id)
            path = f"/channels/{fake.text_channel_id}/messages/{message['id']}"
            _, _, edited = await rest.call("PATCH", path, {"content": "edited"})
            assert edited["X-RateLimit-Remaining"] == "1"  # one count for both
        async with FakeDiscord(rate_limits=limits, global_limit=None,
                               rate_model="bucket") as fake:
            rest = Rest(fake, session)
            answers = [await rest.post(fake.text_channel_id) for _ in range(4)]
            assert [s for s, _, _ in answers] == [200, 200, 200, 429]
            # A token comes back after a third of the window, long before the window's end.
            assert answers[3][1]["retry_after"] <= WINDOW / 3 + 0.01
            await asyncio.sleep(answers[3][1]["retry_after"] + 0.01)
            assert (await rest.post(fake.text_channel_id))[0] == 200


async def test_the_fakes_global_limit_is_one_second_windows() -> None:
    async with FakeDiscord(global_limit=3) as fake, aiohttp.ClientSession() as session:
        rest = Rest(fake, session)
        answers = [await rest.call("GET", "/users/@me") for _ in range(4)]
        assert [s for s, _, _ in answers] == [200, 200, 200, 429]
        _, body, headers = answers[3]
        assert body["global"] is True and 0 < body["retry_after"] <= 1.0
        assert headers["X-RateLimit-Scope"] == "global"
        assert headers["X-RateLimit-Global"] == "true"


# --- the limiter ---------------------------------------------------------------------------


async def granted(limiter: WindowLimiter, urgent: bool = False) -> bool:
    """Whether an acquire is granted at once (a waiter is left waiting, then cancelled)."""
    task = asyncio.ensure_future(limiter.acquire(urgent))
    for _ in range(5):  # the limiter's own task runs in between: no clock involved
        await asyncio.sleep(0)
    if task.done():
        return True
    task.cancel()
    return False


async def test_a_window_limiter_hands_out_what_the_window_has_left_and_no_more() -> None:
    limiter = WindowLimiter(margin=0.0)
    # Nothing known yet: one at a time until an answer tells.
    assert await granted(limiter) and not await granted(limiter)
    limiter.answered(5, 2, 0.3)  # this window holds 5, 2 left, for 0.3 s more
    assert await granted(limiter) and await granted(limiter)
    assert not await granted(limiter, urgent=True)  # spent, however urgent
    # Both still in flight: an answer saying 1 left (counted before the other landed)
    # leaves nothing, for the other may not have been counted yet.
    limiter.answered(5, 1, 0.28)
    assert not await granted(limiter, urgent=True)
    limiter.answered(5, 0, 0.27)
    # The window ends: the next one holds 5, whatever the clock says about refills.
    ends = limiter.reset_at
    assert ends is not None
    await asyncio.wait_for(limiter.acquire(), 2)
    assert time.monotonic() >= ends
    for _ in range(4):
        assert await granted(limiter)
    assert not await granted(limiter, urgent=True)


async def test_urgent_writes_go_first_and_interim_ones_leave_them_room() -> None:
    limiter = WindowLimiter(margin=0.0, urgent_share=0.4, spare=1)
    assert await granted(limiter)
    limiter.answered(5, 4, 0.3)
    assert await granted(limiter)  # 3 left
    assert not await granted(limiter)  # interim: 1 spare + 2 for urgent ones
    assert await granted(limiter, urgent=True)  # 2 left
    assert await granted(limiter, urgent=True)  # 1 left: the spare, never handed out
    assert not await granted(limiter, urgent=True)
    # Waiting when the window ends (3 still in flight), the urgent one goes; the interim one
    # finds no more than the urgent share left, and waits on.
    waiters = [asyncio.ensure_future(limiter.acquire(urgent)) for urgent in (False, True)]
    done, _ = await asyncio.wait(waiters, timeout=2, return_when=asyncio.FIRST_COMPLETED)
    assert done == {waiters[1]} and limiter.remaining == 1
    waiters[0].cancel()


async def test_limiters_that_share_a_window_both_fit_it_and_both_feed_it() -> None:
    # Posts and edits of one channel: counted apart by Discord, as one by discord.py.
    shared = SharedWindow(Window(margin=0.0, latest=True))
    posts = WindowLimiter(margin=0.0, also=(shared,))
    edits = WindowLimiter(margin=0.0, also=(shared,))
    assert await granted(posts)
    assert not await granted(edits)  # the shared count knows nothing yet: one at a time
    posts.answered(5, 4, 1.0)
    assert await granted(edits)
    edits.answered(5, 1, 1.0)  # the edits' own window nearly spent: the shared count too
    assert await granted(posts)
    assert not await granted(posts)  # room in the posts' window, none in the shared count
    posts.answered(5, 3, 1.0)  # whichever answered last is what the shared count believes
    assert await granted(posts) and await granted(edits)
    assert not await granted(edits)  # its own window is spent


async def test_a_grant_that_never_got_an_answer_stops_counting() -> None:
    limiter = WindowLimiter(margin=0.0, stale_after=0.2)
    assert await granted(limiter)  # its request is lost: no answer, no failure seen
    await asyncio.wait_for(limiter.acquire(), 2)
    limiter.failed()  # this one's connection broke: nothing in flight any more
    assert limiter.in_flight == 0 and await granted(limiter)


# --- bounded ---------------------------------------------------------------------------------


def test_limiters_of_idle_channels_are_dropped_the_map_stays_bounded() -> None:
    registry = LimiterRegistry(keep=8)
    held = registry.get(1)  # a chain writing there for an hour
    held.answered(5, 3, 5.0)
    idle = weakref.ref(registry.get(2))
    gc.collect()
    # Used a moment ago: what it learnt of its window is kept.
    assert registry.get(2) is idle()
    for channel in range(100, 10_100):
        registry.get(channel)
        registry.posts(channel)
        registry.answered(channel, "edit", 200, {"X-RateLimit-Limit": "5"})
    gc.collect()
    assert idle() is None
    assert len(registry) <= 3 * 8 + 1
    assert registry.get(1) is held and held.remaining == 3

    limiters: LimiterMap[str, WindowLimiter] = LimiterMap(WindowLimiter, keep=2)
    for n in range(1000):
        limiters.get(f"place {n}")
    gc.collect()
    assert len(limiters) == 2 and limiters.find("place 0") is None


# --- many chains at once -------------------------------------------------------------------


async def many_at_once(tmp_path: Path, discord: FakeDiscord, llm: FakeOpenAI,
                       chains: int) -> None:
    """`chains` askers ask at once: every answer lands, with no 429 and no write held back
    inside discord.py (where threads may be opened, each in a thread of its own)."""
    llm.chunk_delay = 0.004  # steps stream, so there are edits as well as posts
    askers = [discord.add_user(f"asker{n}") for n in range(chains)]
    threads = discord.text_channel_id not in discord.deny_threads
    h = await start(tmp_path, discord, llm)
    assert h.bot is not None
    # The bot-wide limit four times Discord's, as the fake's (`GLOBAL`): the windows of each
    # channel are what this is about, and 20 chains make 200 calls.
    h.bot.observer.bot = RateLimiter(4 * GLOBAL_RATE, burst=4 * GLOBAL_BURST)
    try:
        with ClientHolds(slack=0.05) as holds:
            asked = await asyncio.gather(*(h.ask(f"Question {n}?", user=user)
                                           for n, user in enumerate(askers)))
            for interaction in asked:
                assert (await h.finished(interaction, 60)).rsplit("\n", 1)[-1].startswith("✅")
        answers = [t for t in h.texts(discord.text_channel_id) if t.startswith("**Answer**")]
        for interaction in asked if threads else []:
            answers += h.texts(h.thread_of(interaction))[-1:]
        assert len(answers) == chains and len(discord.threads()) == (chains if threads else 0)
        assert [(r.method, r.route, r.scope) for r in discord.requests if r.status == 429] == []
        assert holds.count == 0
    finally:
        await stop(h)


@pytest.mark.parametrize("model", ["window", "bucket"])
async def test_twenty_chains_at_once_meet_no_429_and_nothing_held_back(
        tmp_path: Path, fake_llm: FakeOpenAI, model: str) -> None:
    async with FakeDiscord(rate_limits=scaled_rate_limits(20), rate_model=model,
                           global_limit=GLOBAL) as discord:
        await many_at_once(tmp_path, discord, fake_llm, 20)


@pytest.mark.parametrize("counted", ["apart", "together"])
async def test_chains_answering_in_one_channel_meet_no_429_and_nothing_held_back(
        tmp_path: Path, fake_llm: FakeOpenAI, counted: str) -> None:
    # No threads here: ten chains post and edit in one channel at once. Its posts and edits
    # counted apart, as Discord does, or together, as its documentation reads.
    async with FakeDiscord(rate_limits=scaled_rate_limits(20), global_limit=GLOBAL,
                           shared_buckets={EDIT: POST} if counted == "together" else None,
                           ) as discord:
        discord.deny_threads.add(discord.text_channel_id)
        await many_at_once(tmp_path, discord, fake_llm, 10)


# --- one chain per thread, from the moment the thread exists -------------------------------


@pytest.fixture
async def h(tmp_path: Path, fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as discord:
        harness = await start(tmp_path, discord, fake_llm)
        try:
            yield harness
        finally:
            await stop(harness)


async def test_reason_in_a_thread_ponder_is_still_opening_is_refused_privately(
        h: Harness) -> None:
    h.llm.script(Step("Add", "2+2 is 4.", "final_answer"), Text("**4**"))
    # The opening message's edit after the thread is made fails once: discord.py tries
    # again a second later, and all that second the thread exists with no chain in it yet.
    h.discord.fail_next(1, 500, method="PATCH", path=r"^/webhooks/", skip=1)
    first = await h.ask("What is 2+2?")
    await h.discord.wait_for(lambda: h.discord.requests_to("PATCH", "^/webhooks/", 500))
    (thread,) = h.discord.threads()
    second = await h.ask("And 3+3?", channel_id=int(thread["id"]), user=h.discord.bob)
    await h.discord.wait_for(lambda: second.response_type is not None)
    (refusal,) = h.discord.requests_to("POST", rf"^/interactions/{second.id}/")
    assert refusal.json["type"] == 4
    assert refusal.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
    assert "still on the previous question here" in refusal.json["data"]["content"]
    assert (await h.finished(first)).rsplit("\n", 1)[-1].startswith("✅")
    assert len(h.llm.requests) == 2  # one chain: its step and its answer

    # Two at once in that thread, once the first is done: one chain, one private refusal.
    h.llm.chunk_delay = 0.01
    h.llm.script(Step("Six", "3+3 is 6, " * 10, "final_answer"), Text("**6**"))
    a, b = await asyncio.gather(h.ask("And 3+3?", channel_id=int(thread["id"])),
                                h.ask("And 4+4?", channel_id=int(thread["id"]),
                                      user=h.discord.bob))
    await h.discord.wait_for(lambda: a.response_type and b.response_type)
    assert sorted([a.response_type, b.response_type]) == [4, 5]
    ran = a if a.response_type == 5 else b
    await until(lambda: len(h.llm.requests) >= 4)
    assert (await h.finished(ran)).rsplit("\n", 1)[-1].startswith("✅")
    assert len(h.llm.requests) == 4
