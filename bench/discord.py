"""Benchmark: many /reason chains at once on Discord, against the fakes, under both ways a
Discord bucket can count.

    .venv/bin/python -m bench.discord [--chains 20] [--steps 5] [--chunk-delay 0.05]

discord.py's real client talks to the fake Discord (REST and gateway) and the real Ponder
service to the fake model server. Each asker has a thread of their own (one /reason each, all
at once, in one channel), and the same run is made twice: with Discord's buckets as Discord
documents them (`window`: `Limit` requests per window that opens with its first request,
`Remaining` back only when it ends) and as a token bucket (`bucket`: `Limit` saved up and
refilled evenly, which forgives a steady pace a window refuses). Then 2 chains alone, under
windows. Printed, per run:
- REST calls, and calls per step shown (every call after start-up);
- 429s received (target 0), and writes discord.py had to hold back itself because Ponder
  handed it more than the window had left (target 0: held there, a final edit waits behind
  interim ones);
- time from a step's last token (the engine's StepFinished) to the write that shows it
  finished in Discord (target: median <= 1.2 s), and the same for final answers.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.discord import DiscordBot
from bot.config import load_settings
from bot.events import Event, FinalAnswer, Question, StepFinished
from bot.llm import LLMClient
from bot.service import Ponder
from tests.fakes.discord_server import RATE_MODELS, ClientHolds, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI

TARGET_LAG = 1.2  # seconds, median, last token -> the write that shows the step finished


class TimedEngine:
    """The real engine, with the moment each step's last token arrived written down."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.finished: dict[tuple[str, int], float] = {}  # (chain, step) -> monotonic
        self.answered: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)  # settings, llm: whatever the service reads

    async def run(self, question: Question, *args: Any, **kwargs: Any) -> AsyncIterator[Event]:
        async for event in self.engine.run(question, *args, **kwargs):
            if isinstance(event, StepFinished):
                self.finished[(question.id, event.index)] = time.monotonic()
            elif isinstance(event, FinalAnswer):
                self.answered[question.id] = time.monotonic()
            yield event


@dataclass
class Run:
    model: str
    chains: int
    wall: float = 0.0
    unanswered: int = 0
    calls: int = 0
    steps: int = 0
    rate_limited: int = 0
    held: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    lags: list[float] = field(default_factory=list)
    answer_lags: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.unanswered or (self.model == "window" and (self.rate_limited or self.held)):
            return False
        return self.model != "window" or not self.lags or statistics.median(
            self.lags) <= TARGET_LAG


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def bench(model: str, chains: int, steps: int, chunk_delay: float,
                latency: float) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        return await _bench(Path(tmp), model, chains, steps, chunk_delay, latency)


async def _bench(tmp: Path, model: str, chains: int, steps: int, chunk_delay: float,
                 latency: float) -> Run:
    run = Run(model, chains)
    async with FakeDiscord(latency=latency, rate_model=model) as discord, FakeOpenAI(
            auto_steps=steps, chunk_delay=chunk_delay) as llm:
        settings = load_settings(
            openai_base_url=llm.base_url, db=tmp / "ponder.db", min_steps=1,
            max_steps=steps, discord_token=discord.token, discord_api_url=discord.api_url,
            discord_gateway_url=discord.gateway_url, discord_guild_ids=str(discord.guild_id))
        ponder = Ponder(settings, llm=LLMClient(settings))
        timed = TimedEngine(ponder.engine)
        ponder.engine = timed  # type: ignore[assignment]
        await ponder.start()
        bot = DiscordBot(ponder, settings, client_options={"guild_ready_timeout": 0.05})
        users = [discord.add_user(f"asker{n:02d}") for n in range(chains)]
        task = asyncio.create_task(bot.run())
        try:
            with ClientHolds() as holds:
                await asyncio.wait_for(bot.ready.wait(), 30)
                first_request = len(discord.requests)
                began = time.monotonic()
                asked = await asyncio.gather(*(
                    discord.slash("reason", question=f"Q{n:02d}: how do tides work?", user=user)
                    for n, user in enumerate(users)))

                def all_done() -> bool:
                    return all(i.original_id and discord.messages[i.original_id]["content"]
                               .rsplit("\n", 1)[-1].startswith(("✅", "⚠️", "⏹️"))
                               for i in asked)

                await discord.wait_for(all_done, 60 + chains * steps * 5)
                run.wall = time.monotonic() - began
                run.held = holds.count
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        calls = discord.requests[first_request:]
        run.lags, run.answer_lags = await _lags(ponder, discord, timed)
        await ponder.close()
    run.calls, run.steps = len(calls), len(timed.finished)
    run.routes = Counter(r.route or r.path for r in calls)
    run.rate_limited = sum(1 for r in calls if r.status == 429)
    run.unanswered = sum(1 for i in asked
                         if "✅" not in discord.messages[i.original_id or 0]["content"])
    return run


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


def report(run: Run) -> None:
    print(f"{run.chains} chains at once, a thread each, Discord buckets as {run.model}s:")
    print(f"  wall time                     {run.wall:.1f} s "
          f"({run.unanswered} chain(s) not answered)")
    print(f"  REST calls                    {run.calls} for {run.steps} steps "
          f"= {run.calls / max(1, run.steps):.2f} per step")
    for route, count in run.routes.most_common(6):
        print(f"      {count:5d}  {route}")
    print(f"  429s received                 {run.rate_limited} (target 0)")
    print(f"  held back inside discord.py   {run.held} (target 0)")
    if run.lags:
        lags = run.lags
        print(f"  last token -> final edit      median {statistics.median(lags):.2f} s, "
              f"p95 {percentile(lags, 0.95):.2f} s, max {max(lags):.2f} s "
              f"(target: median <= {TARGET_LAG:.1f} s)")
    if run.answer_lags:
        lags = run.answer_lags
        print(f"  answer done -> final edit     median {statistics.median(lags):.2f} s, "
              f"p95 {percentile(lags, 0.95):.2f} s, max {max(lags):.2f} s")


async def main_async(args: argparse.Namespace) -> int:
    print(f"Ponder on Discord: fake model at "
          f"{8 / args.chunk_delay if args.chunk_delay else float('inf'):.0f} chars/s per "
          f"stream, {args.steps} steps a chain, fake Discord latency {args.latency * 1000:.0f} "
          f"ms; message writes paced by the windows Discord's answers describe")
    runs = [await bench(model, args.chains, args.steps, args.chunk_delay, args.latency)
            for model in RATE_MODELS]
    runs.append(await bench("window", 2, args.steps, args.chunk_delay, args.latency))
    for run in runs:
        report(run)
    return 0 if all(run.ok for run in runs) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--chunk-delay", type=float, default=0.05,
                        help="seconds between 8-character chunks of one stream")
    parser.add_argument("--latency", type=float, default=0.03,
                        help="the fake Discord's answer time per REST call (seconds)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
