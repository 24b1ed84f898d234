"""The model side past one replica: the real vLLM router (`vllm-router --policy
consistent_hash`) in front of two fake replicas, with Ponder's real engine and model client.

Every request of a chain carries the chain id in PONDER_SESSION_HEADER, which the router
hashes: a chain stays on the replica that holds its prompt's prefix, different chains spread,
and when a replica dies its chains finish on the other (the router retries, answers 500, and
its circuit breaker drops the dead worker; Ponder retries the 500s and the cut stream).

Marker `router` (`make test-router`, which installs the router and sets
PONDER_REQUIRE_ROUTER=1 so a missing binary fails instead of skipping). The settings check at
the end needs no router and runs in `make test`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.config import ROUTER_SESSION_HEADERS, SettingsError, load_settings
from bot.engine import Engine
from bot.events import ChainFailed, Event, FinalAnswer, Question, StepFinished
from bot.votes import chains
from tests.conftest import make_engine, make_settings, until
from tests.fakes.openai_server import FakeOpenAI
from tests.router_harness import Router, chat_sessions, placement, root_of, router_binary

CHAINS = 16  # chains spread over two replicas: all on one by chance is 2 in 65,536
KEYS = 24  # session keys per header in the header check: all on one by chance, 1 in 8 million


@pytest.fixture
def binary() -> str:
    found = router_binary()
    if found is None:
        why = "vllm-router is not installed (make test-router installs it)"
        if os.environ.get("PONDER_REQUIRE_ROUTER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.fixture
async def replicas() -> AsyncIterator[list[FakeOpenAI]]:
    # A step streams in ~20 pieces 5 ms apart: long enough to kill a replica mid-stream.
    fakes = [FakeOpenAI(auto_steps=4, chunk_delay=0.005), FakeOpenAI(auto_steps=4,
                                                                    chunk_delay=0.005)]
    for fake in fakes:
        await fake.start()
    try:
        yield fakes
    finally:
        for fake in fakes:
            await fake.stop()


@pytest.fixture
async def router(binary: str, replicas: list[FakeOpenAI], tmp_path: Path
                 ) -> AsyncIterator[Router]:
    async with Router(binary, [root_of(fake) for fake in replicas],
                      tmp_path / "router.log") as running:
        yield running


async def run(engine: Engine, question: Question) -> list[Event]:
    return [event async for event in chains(engine, question)]


@pytest.mark.router
async def test_each_chain_stays_on_one_replica_and_chains_spread(
        router: Router, replicas: list[FakeOpenAI], tmp_path: Path) -> None:
    settings = make_settings(router.base_url, tmp_path, min_steps=1)
    engine, llm = make_engine(settings)
    # Two of them are votes of three: each sampled chain under an id of its own.
    questions = [Question(f"Question {n}: what is {n} + {n}?", votes=3 if n < 2 else None)
                 for n in range(CHAINS)]
    try:
        results = await asyncio.gather(*(run(engine, q) for q in questions))
    finally:
        await llm.close()
    for events in results:
        assert isinstance(events[-1], FinalAnswer), events[-1]
    where = placement(replicas, settings)
    ids = {q.id for q in questions} | {f"{q.id}-{n}" for q in questions[:2] for n in (2, 3)}
    assert set(where) == ids, "a request without its chain's id"
    for chain, counts in where.items():
        # 4 steps and an answer: every one of them on the same replica.
        assert sum(counts) >= 5, (chain, counts)
        assert sorted(counts) == [0, sum(counts)], f"chain {chain} changed replica: {counts}"
    used = [sum(1 for counts in where.values() if counts[n]) for n in range(2)]
    assert all(used), f"one replica took every chain: {used}"


@pytest.mark.router
async def test_a_replica_killed_mid_chain_and_the_chain_still_answers(
        router: Router, replicas: list[FakeOpenAI], tmp_path: Path) -> None:
    # Ponder's defaults (3 attempts) against the router's (5 tries per request, the circuit
    # opening after 10 failures): the stream cut by the kill is one attempt, the next two are
    # the router's 500s that open the circuit, and the fourth reaches the other replica.
    # PONDER_MAX_ATTEMPTS=4 is what docs/deploy.md asks for behind the router.
    settings = make_settings(router.base_url, tmp_path, min_steps=1, max_attempts=4)
    engine, llm = make_engine(settings)
    question = Question("Which replica answers this?")
    try:
        task = asyncio.create_task(run(engine, question))

        def streaming_second_step() -> FakeOpenAI | None:
            for fake in replicas:
                if chat_sessions(fake, settings.session_header).get(question.id, 0) >= 2 \
                        and fake.stats.active:
                    return fake
            return None

        await until(lambda: streaming_second_step() is not None or task.done(), 30.0,
                    interval=0.001)
        doomed = streaming_second_step()
        assert doomed is not None, "the chain ended before its second step could be cut"
        served_before = chat_sessions(doomed, settings.session_header)[question.id]
        await doomed.stop()  # its socket closed and its open stream cut, as a dead server's
        events = await asyncio.wait_for(task, 60.0)
    finally:
        await llm.close()
    assert not [e for e in events if isinstance(e, ChainFailed)], events[-1]
    assert isinstance(events[-1], FinalAnswer)
    assert len([e for e in events if isinstance(e, StepFinished)]) == 4
    survivor = next(fake for fake in replicas if fake is not doomed)
    assert chat_sessions(doomed, settings.session_header)[question.id] == served_before
    # The rest of the chain, the cut step again and the final answer, on the other replica.
    finished_there = [r for r in survivor.requests if r.path.endswith("/chat/completions")
                      and r.headers.get(settings.session_header) == question.id]
    assert len(finished_there) >= 2
    assert "response_format" not in finished_there[-1].body  # the final answer


@pytest.mark.router
async def test_the_router_hashes_every_header_ponder_accepts_and_no_other(
        router: Router, replicas: list[FakeOpenAI]) -> None:
    body = {"model": replicas[0].model, "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "max_tokens": 16}

    async def spread(header: str) -> list[int]:
        async def one(http: aiohttp.ClientSession, key: str) -> None:
            async with http.post(f"{router.base_url}/chat/completions", json=body,
                                 headers={header: key}) as answer:
                assert answer.status == 200, await answer.text()
                await answer.read()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await asyncio.gather(*(one(http, f"chain-{header}-{n}") for n in range(KEYS)))
        counts = [sum(1 for key in chat_sessions(fake, header) if key.startswith("chain-"))
                  for fake in replicas]
        for fake in replicas:
            fake.requests.clear()
        return counts

    for header in ROUTER_SESSION_HEADERS:
        counts = await spread(header)
        assert sum(counts) == KEYS and all(counts), f"{header} did not spread: {counts}"
    # A header the router does not read: every key on one replica, what the settings refuse.
    counts = await spread("x-ponder-chain")
    assert sorted(counts) == [0, KEYS], counts


def test_a_session_header_the_router_does_not_read_is_refused_at_start_up() -> None:
    assert load_settings(session_header="X-Session-Id").session_header == "x-session-id"
    assert load_settings(session_header="x-request-id").session_header == "x-request-id"
    with pytest.raises(SettingsError) as refused:
        load_settings(session_header="x-ponder-chain")
    message = str(refused.value)
    assert message.startswith("setting PONDER_SESSION_HEADER:")
    assert "x-session-id" in message and "'x-ponder-chain'" in message
    assert "\n" not in message
