"""Several Ponder processes, one PostgreSQL database: they behave as one bot.

Real `python -m bot slack --http` processes (as production runs them) against one fake Slack
and one real PostgreSQL (`tests/pg.py`; these tests are marked `pg`): an event delivered to
both starts one chain; a process killed with SIGKILL mid-chain has its chain resumed, once, by
the other; an asker's limit counts both, and its refusal is shown to the asker alone. Stop,
follow-ups, the rate limit, owed deliveries and lapsed leases are the service's: two services
on one database, as two processes would be. Leases are scaled down (1 s). On Discord the
processes split the gateway's shards (`DISCORD_SHARD_COUNT`/`_IDS`), and a chain taken over
from a process that died has its opening message brought up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bot.errors import Refused
from bot.events import Question
from bot.llm import LLMClient
from bot.service import ChainRequest, Ponder
from bot.store import ChainRecord, StoreFailed
from bot.surface import Owed
from bot.wording import say
from tests.conftest import make_settings, until
from tests.fakes.discord_server import FakeDiscord, scaled_rate_limits
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack, Message
from tests.slack_harness import CHANNEL, envelope, sign
from tests.surfaces import RecordingSurface
from tests.test_faults import SlackProcess, eventually, half_written

LEASE = {"PONDER_LEASE_SECONDS": "1", "PONDER_RECOVERY_INTERVAL": "0.3"}
SUMMARY_LINE = "Thought for"


@pytest.fixture
async def slow_llm() -> AsyncIterator[FakeOpenAI]:
    # About 0.5 s a step: time to act while a chain runs.
    async with FakeOpenAI(auto_steps=4, chunk_chars=4, chunk_delay=0.008) as fake:
        yield fake


async def rows(url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return list(await conn.fetch(sql, *args, timeout=10))
    finally:
        await conn.close()


async def deliver(ponder: SlackProcess, body: dict[str, Any]) -> None:
    """Slack delivering an event to one process (its HTTP endpoint, signed)."""
    raw = json.dumps(body)
    stamp = str(int(time.time()))
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{ponder.port}/slack/events", data=raw,
            timeout=aiohttp.ClientTimeout(total=10),
            headers={"Content-Type": "application/json", "X-Slack-Request-Timestamp": stamp,
                     "X-Slack-Signature": sign(raw, stamp)}) as resp:
        assert resp.status == 200


def mention(slack: FakeSlack, text: str, user: str = "UASKER") -> tuple[Message, dict[str, Any]]:
    question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> {text}", user=user)
    return question, envelope(slack, {
        "type": "app_mention", "user": user, "text": question.text, "ts": question.ts,
        "event_ts": question.ts, "channel": CHANNEL, "team": slack.team_id})


def two_processes(tmp_path: Path, slack: FakeSlack, llm: FakeOpenAI, url: str,
                  **env: str) -> tuple[SlackProcess, SlackProcess]:
    made = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        made.append(SlackProcess(folder, slack, llm, PONDER_DB=url, **LEASE, **env))
    return made[0], made[1]


def thread_texts(slack: FakeSlack, question: Message) -> list[str]:
    return [m.text for m in slack.thread(CHANNEL, question.ts)]


@pytest.mark.pg
async def test_an_event_delivered_to_two_processes_starts_one_chain(
        tmp_path: Path, fake_llm: FakeOpenAI, pg_url: str) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        a, b = two_processes(tmp_path, slack, fake_llm, pg_url)
        try:
            await asyncio.gather(a.start(), b.start())
            question, body = mention(slack, "What is 2+2?")
            await asyncio.gather(deliver(a, body), deliver(b, body))
            answered = "SELECT count(*) FROM chains WHERE status = 'answered'"
            await eventually(lambda: any("Thought for" in t
                                         for t in thread_texts(slack, question)), 30,
                             "the answer", explain=lambda: (a.log_tail(), b.log_tail()))
            assert (await rows(pg_url, answered))[0][0] == 1
            assert (await rows(pg_url, "SELECT count(*) FROM chains"))[0][0] == 1
            assert sum("Thought for" in t for t in thread_texts(slack, question)) == 1
        finally:
            await asyncio.gather(a.kill(), b.kill())


@pytest.mark.pg
async def test_a_process_killed_mid_chain_has_it_resumed_once_by_the_other(
        tmp_path: Path, slow_llm: FakeOpenAI, pg_url: str) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        a, b = two_processes(tmp_path, slack, slow_llm, pg_url)
        try:
            await asyncio.gather(a.start(), b.start())
            question, body = mention(slack, "What is 17 times 23?")
            await deliver(a, body)
            steps = "SELECT count(*) FROM steps"
            async def stored() -> int:
                return int((await rows(pg_url, steps))[0][0])
            deadline = time.monotonic() + 20
            while not (await stored() >= 1 and half_written(slack)):
                assert time.monotonic() < deadline, "no stored step while the next one ran"
                await asyncio.sleep(0.05)
            await a.kill()  # SIGKILL: its lease runs out, nobody says goodbye
            status = "SELECT status FROM chains"
            deadline = time.monotonic() + 20
            while (await rows(pg_url, status))[0][0] != "answered":
                assert time.monotonic() < deadline, f"not resumed:\n{b.log_tail()}"
                await asyncio.sleep(0.1)
            texts = await eventually(lambda: [t for t in thread_texts(slack, question)
                                              if "Thought for" in t], 10, "the answer")
            assert len(texts) == 1
            resumed = [t for t in thread_texts(slack, question) if "picking up again" in t]
            assert len(resumed) == 1, thread_texts(slack, question)
            assert await stored() == 4
            assert "resumed 1 chain(s) of a process that is gone" in b.log.read_text()
        finally:
            await asyncio.gather(a.kill(), b.kill())


@pytest.mark.pg
async def test_an_askers_limit_counts_the_chains_of_every_process(
        tmp_path: Path, slow_llm: FakeOpenAI, pg_url: str) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        a, b = two_processes(tmp_path, slack, slow_llm, pg_url, PONDER_USER_CONCURRENCY="1")
        try:
            await asyncio.gather(a.start(), b.start())
            first, body = mention(slack, "What is 17 times 23?")
            await deliver(a, body)
            running = "SELECT count(*) FROM chains WHERE status = 'running'"
            deadline = time.monotonic() + 20
            while (await rows(pg_url, running))[0][0] != 1:
                assert time.monotonic() < deadline, a.log_tail()
                await asyncio.sleep(0.05)
            second, body = mention(slack, "And 18 times 24?")
            await deliver(b, body)  # the same asker, through the other process
            # Shown to the asker alone, as any refusal is: nothing public in the thread.
            refused = await eventually(lambda: slack.ephemerals_to("UASKER"), 10,
                                       "the refusal", explain=lambda: b.log_tail())
            assert "1 question being answered" in refused[0].text
            assert refused[0].text.startswith("🙅")
            assert not [t for t in thread_texts(slack, second) if t.startswith("🙅")]
            assert (await rows(pg_url, "SELECT count(*) FROM chains"))[0][0] == 1
            await eventually(lambda: any("Thought for" in t
                                         for t in thread_texts(slack, first)), 20, "answer 1")
        finally:
            await asyncio.gather(a.kill(), b.kill())


@pytest.mark.pg
async def test_stop_and_follow_ups_reach_a_chain_running_in_another_process(
        tmp_path: Path, slow_llm: FakeOpenAI, pg_url: str) -> None:
    services = []
    for _ in range(2):
        settings = make_settings(slow_llm.base_url, db=pg_url, lease_seconds=1.0,
                                 recovery_interval=0.3, min_steps=4, max_steps=4)
        ponder = Ponder(settings, llm=LLMClient(settings, retry_base_delay=0.01))
        await ponder.start()
        services.append(ponder)
    a, b = services
    try:
        surface = RecordingSurface()
        request = ChainRequest("slack", Question("What is 17 times 23?"), "UASKER", "C1",
                               "C1:1.1")
        handle = a.submit(request, surface)
        await until(lambda: "Step 1" in surface.text(), 20)

        # A follow-up in its thread, through the other process: the thread is busy.
        follow = ChainRequest("slack", Question("and then?"), "UASKER", "C1", "C1:1.1")
        with pytest.raises(Refused) as busy:
            await b.follow_up(follow)
        assert "still on the previous question" in busy.value.message

        # Stop, pressed through the other process: someone else may not, the asker may.
        assert await b.stop_anywhere(handle.chain_id, "USTRANGER") == "not_allowed"
        assert not handle.stop_requested.is_set()
        assert await b.stop_anywhere(handle.chain_id, "UASKER") == "stopping"
        outcome = await asyncio.wait_for(handle.wait(), 10)
        assert outcome.status == "stopped"
        assert "⏹️" in surface.text()
        record = await b.store.chain(handle.chain_id)
        assert record is not None and record.status == "cancelled"
        assert await b.stop_anywhere(handle.chain_id, "UASKER") == "finished"
    finally:
        for ponder in services:
            await ponder.close()


async def test_a_discord_process_connects_only_the_shards_it_is_given(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    from tests.test_discord import start, stop

    async with FakeDiscord() as discord:
        ours = (discord.guild_id >> 22) % 2  # the shard Discord puts the guild on
        h = await start(tmp_path, discord, fake_llm, discord_shard_count=2,
                        discord_shard_ids=str(ours))
        try:
            identified = [f["d"]["shard"] for f in discord.gateway_frames if f.get("op") == 2]
            assert identified == [[ours, 2]]
            interaction = await h.ask("What is 2+2?")
            assert "Thought for" in await h.finished(interaction)
        finally:
            await stop(h)


@contextlib.asynccontextmanager
async def services(llm: FakeOpenAI, url: str, n: int = 2,
                   **overrides: Any) -> AsyncIterator[list[Ponder]]:
    """`n` services on one database, as `n` processes would be."""
    values: dict[str, Any] = {"lease_seconds": 1.0, "recovery_interval": 0.3,
                              "min_steps": 4, "max_steps": 4}
    values.update(overrides)
    made: list[Ponder] = []
    try:
        for _ in range(n):
            settings = make_settings(llm.base_url, db=url, **values)
            ponder = Ponder(settings, llm=LLMClient(settings, retry_base_delay=0.01))
            await ponder.start()
            made.append(ponder)
        yield made
    finally:
        for ponder in made:
            await ponder.close()


@pytest.mark.pg
async def test_an_askers_rate_counts_the_questions_of_every_process(
        fake_llm: FakeOpenAI, pg_url: str) -> None:
    async with services(fake_llm, pg_url, user_rate_per_minute=2,
                        user_concurrency=5) as (a, b):
        def ask(asker: str = "UASKER") -> ChainRequest:
            return ChainRequest("slack", Question("What is 2+2?"), asker, "C1")

        a.release(await a.enter(ask()))
        b.release(await b.enter(ask()))  # the second this minute, through the other one
        with pytest.raises(Refused) as refused:  # this process has seen one only
            await a.enter(ask())
        assert "faster than 2 a minute" in refused.value.message
        assert not a.pending and a.gate.per_user == {}
        assert len(a.gate.recent[("slack", "UASKER")]) == 1  # the refused one is not counted
        a.release(await a.enter(ask("UOTHER")))  # others are not held back


@pytest.mark.pg
async def test_owed_texts_are_delivered_once_when_two_processes_start_together(
        fake_llm: FakeOpenAI, pg_url: str) -> None:
    async with services(fake_llm, pg_url) as (a, b):
        owed = [Owed("answer", None, "The answer is 4.").as_json()]
        await a.store.start_chain(ChainRecord(id="late", platform="slack", question="2+2?",
                                              mode="chain", thread="C1:9.9", asker="U1"))
        await a.store.finish_chain("late", "answered", answer="The answer is 4.")
        await a.store.set_owed("late", owed)  # by a process that is gone

        surfaces = {a.owner: RecordingSurface(post_delay=0.05),
                    b.owner: RecordingSurface(post_delay=0.05)}

        def surface_for(ponder: Ponder) -> Any:
            async def reach(record: ChainRecord) -> RecordingSurface:
                return surfaces[ponder.owner]
            return reach

        await asyncio.gather(a.recover("slack", surface_for(a)),
                             b.recover("slack", surface_for(b)))
        await until(lambda: any(s.shown for s in surfaces.values()), 10)
        record = None
        for _ in range(200):
            record = await a.store.chain("late")
            if record is not None and record.delivery == "done":
                break
            await asyncio.sleep(0.02)
        assert record is not None and record.delivery == "done"
        posts = [text for s in surfaces.values() for text in s.shown.values()]
        assert len(posts) == 1 and posts[0].startswith("The answer is 4.")


@pytest.mark.pg
@pytest.mark.parametrize("fault", ["refused", "stalled"])
async def test_a_process_whose_leases_lapse_stops_writing_its_chains_quietly(
        slow_llm: FakeOpenAI, pg_url: str, caplog: pytest.LogCaptureFixture,
        fault: str) -> None:
    async with services(slow_llm, pg_url) as (a, b):
        surface = RecordingSurface()
        handle = a.submit(ChainRequest("slack", Question("What is 17 times 23?"), "UASKER",
                                       "C1", "C1:1.1"), surface)
        await until(lambda: "Step 1" in surface.text(), 20)
        gone = a.owner

        async def renew(owner: str, seconds: float) -> list[str]:
            # A fault: the database out of reach, or one that stops answering.
            if fault == "refused":
                raise StoreFailed("connection lost")
            await asyncio.Event().wait()
            return []

        a.store.renew = renew  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="bot.service"):
            outcome = await asyncio.wait_for(handle.wait(), 10)
        assert outcome.status == "resuming"  # cut off, to be resumed elsewhere
        text = surface.text()
        assert "Thought for" not in text and "⏹️" not in text
        assert say("restarting", "en") not in text  # nothing said: the next owner goes on
        assert "could not renew this process's leases" in caplog.text
        assert a.owner != gone  # none of its old rows is renewed again
        record = await b.store.chain(handle.chain_id)
        assert record is not None and record.status == "running"
        # The other process takes it over once the lease has run out.
        taken_over = RecordingSurface()

        async def reach(record: ChainRecord) -> RecordingSurface:
            return taken_over

        adopted = await b.recover("slack", reach, adopt=lambda h: adopted.append(h))
        await until(lambda: adopted, 20)
        assert [h.chain_id for h in adopted] == [handle.chain_id]
        assert (await asyncio.wait_for(adopted[0].wait(), 20)).status == "answered"
        assert "Thought for" in taken_over.text()


@pytest.mark.pg
async def test_a_discord_chain_taken_over_from_another_process_updates_its_opening(
        tmp_path: Path, slow_llm: FakeOpenAI, pg_url: str) -> None:
    from tests.test_discord import start, stop

    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as discord:
        shared = {"db": pg_url, "lease_seconds": 1.0, "recovery_interval": 0.3,
                  "min_steps": 4, "max_steps": 4}
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = await start(tmp_path / "a", discord, slow_llm, **shared)
        b = None
        alive = True
        try:
            interaction = await a.ask("What is 17 times 23?")
            deadline = time.monotonic() + 20
            while (await rows(pg_url, "SELECT count(*) FROM steps"))[0][0] < 1:
                assert time.monotonic() < deadline, "no step stored"
                await asyncio.sleep(0.05)
            b = await start(tmp_path / "b", discord, slow_llm, **shared)
            # The first process goes (a deploy): its chain stops where it is, left running in
            # the store, and its lease is let go; the other one's next pass takes it over.
            # (Its Discord client stays connected to the end: both bots share discord.py's
            # API address in one interpreter, which stopping one would restore.)
            await a.ponder.drain(0)
            alive = False
            await a.ponder.close()
            content = await b.finished(interaction, 30, marks=("✅",))
            assert SUMMARY_LINE in content
            history = discord.message_history(interaction.original_id or 0)
            # The dead process's last word, then the running line of the one that took over.
            lapsed = next(i for i, h in enumerate(history) if "↻" in h)
            assert any(say("running", "en").rstrip(" …") in h for h in history[lapsed:])
        finally:
            if b is not None:
                await stop(b)
            if alive:
                await stop(a)
            else:
                a.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await a.task
