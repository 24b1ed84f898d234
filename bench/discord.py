"""Benchmark: N concurrent /reason chains in one Discord channel, against the fakes.

    .venv/bin/python -m bench.discord [--chains 20] [--steps 5] [--chunk-delay 0.05]

discord.py's real client talks to the fake Discord (REST with Discord's per-route buckets and
headers, gateway) and the real Ponder service talks to the fake model server. Printed, from
one run:
- REST calls per step (every call the bot made after start-up, over the steps shown);
- 429s received (target 0);
- time from a step's last token (the engine's StepFinished) to the write that shows that step
  finished in Discord (target <= edit interval + 0.2 s), and the same for final answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from adapters.discord import DiscordBot
from adapters.discord.surface import (
    CHANNEL_BURST,
    CHANNEL_RATE,
    EDIT_INTERVAL,
    LimiterRegistry,
)
from bot.config import load_settings
from bot.events import Event, FinalAnswer, Question, StepFinished
from bot.llm import LLMClient
from bot.service import Ponder
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI


class TimedEngine:
    """The real engine, with the moment each step's last token arrived written down."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.finished: dict[tuple[str, int], float] = {}  # (chain, step) -> monotonic
        self.answered: dict[str, float] = {}

    async def run(self, question: Question) -> AsyncIterator[Event]:
        async for event in self.engine.run(question):
            if isinstance(event, StepFinished):
                self.finished[(question.id, event.index)] = time.monotonic()
            elif isinstance(event, FinalAnswer):
                self.answered[question.id] = time.monotonic()
            yield event


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def bench(chains: int, steps: int, chunk_delay: float, latency: float,
                budget: tuple[float, float, int]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return await _bench(Path(tmp), chains, steps, chunk_delay, latency, budget)


async def _bench(tmp: Path, chains: int, steps: int, chunk_delay: float, latency: float,
                 budget: tuple[float, float, int]) -> int:
    async with FakeDiscord(latency=latency) as discord, FakeOpenAI(
            auto_steps=steps, chunk_delay=chunk_delay) as llm:
        settings = load_settings(
            openai_base_url=llm.base_url, db=tmp / "ponder.db", min_steps=1,
            max_steps=steps, discord_token=discord.token, discord_api_url=discord.api_url,
            discord_gateway_url=discord.gateway_url, discord_guild_ids=str(discord.guild_id),
            user_concurrency=chains, user_rate_per_minute=chains * 2)
        ponder = Ponder(settings, llm=LLMClient(settings))
        timed = TimedEngine(ponder.engine)
        ponder.engine = timed  # type: ignore[assignment]
        await ponder.start()
        bot = DiscordBot(ponder, settings, client_options={"guild_ready_timeout": 0.05},
                         limiters=LimiterRegistry(*budget))
        task = asyncio.create_task(bot.run())
        try:
            await asyncio.wait_for(bot.ready.wait(), 30)
            first_request = len(discord.requests)
            began = time.monotonic()
            users = [discord.alice, discord.bob, discord.mod]
            asked = [await discord.slash("reason", question=f"Q{n:02d}: how do tides work?",
                                         user=users[n % len(users)]) for n in range(chains)]

            def all_done() -> bool:
                return all(i.original_id and discord.messages[i.original_id]["content"]
                           .rsplit("\n", 1)[-1].startswith(("✅", "⚠️", "⏹️")) for i in asked)

            await discord.wait_for(all_done, 60 + chains * steps * 5)
            wall = time.monotonic() - began
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        calls = discord.requests[first_request:]
        lags, answer_lags = await _lags(ponder, discord, timed)
        await ponder.close()

    shown_steps = len(timed.finished)
    routes = Counter(r.route or r.path for r in calls)
    failed = [i for i in asked if "✅" not in discord.messages[i.original_id or 0]["content"]]
    target = EDIT_INTERVAL + 0.2
    print(f"Ponder on Discord: {chains} concurrent chains in one channel, {steps} steps each, "
          f"fake model at {8 / chunk_delay if chunk_delay else float('inf'):.0f} chars/s per "
          f"stream, fake Discord latency {latency * 1000:.0f} ms, per-channel budget "
          f"{budget[0]:g} writes per {budget[1]:g} s (burst {budget[2]})")
    print(f"  wall time                     {wall:.1f} s ({len(failed)} chain(s) not answered)")
    print(f"  REST calls                    {len(calls)} for {shown_steps} steps "
          f"= {len(calls) / max(1, shown_steps):.2f} per step")
    for route, count in routes.most_common(8):
        print(f"      {count:5d}  {route}")
    print(f"  429s received                 {discord.count(429)} (target 0); "
          f"seen by the bot: {bot.observer.rate_limited}")
    if lags:
        print(f"  last token -> final edit      median {statistics.median(lags):.2f} s, "
              f"p95 {percentile(lags, 0.95):.2f} s, max {max(lags):.2f} s "
              f"(target <= {target:.1f} s; {sum(x <= target for x in lags)}/{len(lags)} met)")
    if answer_lags:
        print(f"  answer done -> final edit     median {statistics.median(answer_lags):.2f} s, "
              f"p95 {percentile(answer_lags, 0.95):.2f} s, max {max(answer_lags):.2f} s")
    return 0 if not failed and discord.count(429) == 0 else 1


async def _lags(ponder: Ponder, discord: FakeDiscord,
                timed: TimedEngine) -> tuple[list[float], list[float]]:
    """For each finished step: when Discord first received a write showing it finished."""
    writes_by_channel: dict[str, list[tuple[float, str]]] = {}
    for r in discord.requests:
        match = re.match(r"^/channels/(\d+)/messages", r.path)
        if match and r.method in ("POST", "PATCH") and r.status == 200:
            content = r.json.get("content") or ""
            writes_by_channel.setdefault(match.group(1), []).append((r.at, content))
    lags: list[float] = []
    for (chain_id, index), finished in timed.finished.items():
        record = await ponder.store.chain(chain_id)
        if record is None:
            continue
        done = re.compile(rf"^\*\*Step {index}(?: · [^\n]*)?\*\* · \d+\.\d")
        shown = [at for at, content in writes_by_channel.get(record.thread, [])
                 if done.match(content) and at >= finished]
        if shown:
            lags.append(shown[0] - finished)
    answer_lags: list[float] = []
    for chain_id, finished in timed.answered.items():
        record = await ponder.store.chain(chain_id)
        if record is None:
            continue
        shown = [at for at, content in writes_by_channel.get(record.thread, [])
                 if content.startswith("**Answer**") and "Thought for" in content
                 and at >= finished]
        if shown:
            answer_lags.append(shown[0] - finished)
    return lags, answer_lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--chunk-delay", type=float, default=0.05,
                        help="seconds between 8-character chunks of one stream")
    parser.add_argument("--latency", type=float, default=0.03,
                        help="the fake Discord's answer time per REST call (seconds)")
    parser.add_argument("--budget", type=float, nargs=3, metavar=("RATE", "PER", "BURST"),
                        default=(*CHANNEL_RATE, CHANNEL_BURST),
                        help="the per-channel write budget to try (default: the adapter's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    budget = (args.budget[0], args.budget[1], int(args.budget[2]))
    sys.exit(asyncio.run(bench(args.chains, args.steps, args.chunk_delay, args.latency,
                               budget)))


if __name__ == "__main__":
    main()
