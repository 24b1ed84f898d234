"""Several Ponder processes, one PostgreSQL database: they behave as one bot.

Real `python -m bot slack --http` processes (as production runs them) against one fake Slack
and one real PostgreSQL (`tests/pg.py`; these tests are marked `pg`): an event delivered to
both starts one chain; a process killed with SIGKILL mid-chain has its chain resumed, once, by
the other; an asker's limit counts both. Stop and follow-ups are the service's (Slack has no
Stop button): two services on one database, as two processes would be. Leases are scaled
down (1 s). On Discord the processes split the gateway's shards (`DISCORD_SHARD_COUNT`/`_IDS`).
"""

from __future__ import annotations

import asyncio
import json
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
from tests.conftest import make_settings, until
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack, Message
from tests.slack_harness import CHANNEL, envelope, sign
from tests.surfaces import RecordingSurface
from tests.test_faults import SlackProcess, eventually, half_written

LEASE = {"PONDER_LEASE_SECONDS": "1", "PONDER_RECOVERY_INTERVAL": "0.3"}


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
            refused = await eventually(lambda: [t for t in thread_texts(slack, second)
                                                if t.startswith("🙅")], 10, "the refusal")
            assert "1 question being answered" in refused[0]
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
