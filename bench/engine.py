"""Engine benchmark: what Ponder adds on top of the model's own time, alone and at scale.

Run: `.venv/bin/python -m bench.engine [--chains 500] [--steps 5] [--chunk-delay 0.025]
[--vote-questions 100] [--votes 5]`

- overhead: one chain's wall time ÷ the time its model calls took (server side, same run).
- scale: N chains at once in this process ÷ one chain alone, and peak RSS.
- votes: Q questions with K-chain self-consistency votes at once (Q × K chains, `bot/votes.py`)
  ÷ one chain alone: what a vote costs in wall time when the server runs its chains side by side.
The model server is the fake vLLM (`tests/fakes/openai_server.py`), streaming `--chunk-chars`
characters every `--chunk-delay` seconds — about 40 tokens/s, a 7B model's pace on a GPU. For
the scale run it lives in a subprocess, so the figures measure Ponder's process only, with the
collector tuned as the long-running commands tune it (`bot.runner.tune_gc`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path

from bot.config import load_settings
from bot.engine import Engine
from bot.events import FinalAnswer, Question
from bot.llm import LLMClient
from bot.runner import tune_gc
from bot.votes import vote
from tests.fakes.openai_server import FakeOpenAI

# The fake model server's subprocess imports `tests` from here, whatever the caller's cwd.
ROOT = Path(__file__).resolve().parents[1]


async def one_chain(engine: Engine, n: int) -> float:
    began = time.perf_counter()
    answered = False
    async for event in engine.run(Question(f"Question {n}: what is {n} squared?")):
        answered = answered or isinstance(event, FinalAnswer)
    if not answered:
        raise RuntimeError(f"chain {n} did not answer")
    return time.perf_counter() - began


async def one_vote(engine: Engine, n: int, k: int) -> float:
    began = time.perf_counter()
    final: FinalAnswer | None = None
    async for event in vote(engine, Question(f"Question {n}: what is {n} squared?"), k):
        final = event if isinstance(event, FinalAnswer) else final
    if final is None or final.votes is None or final.votes.total != k:
        raise RuntimeError(f"vote {n} did not answer with {k} chains")
    return time.perf_counter() - began


async def overhead(args: argparse.Namespace) -> float:
    async with FakeOpenAI(auto_steps=args.steps, chunk_chars=args.chunk_chars,
                          chunk_delay=args.chunk_delay) as fake:
        settings = load_settings(openai_base_url=fake.base_url, max_steps=args.steps + 2,
                                 min_steps=1)
        llm = LLMClient(settings)
        engine = Engine(llm, settings)
        await one_chain(engine, 0)  # warm the connection pool and imports
        fake.stats.model_seconds = 0.0
        wall = await one_chain(engine, 1)
        model = fake.stats.model_seconds
        await llm.close()
    ratio = wall / model
    print(f"overhead: chain wall {wall:.3f} s / model calls {model:.3f} s = {ratio:.4f}"
          f"  (target ≤ 1.01)")
    return ratio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scale(args: argparse.Namespace) -> tuple[float, float, float]:
    port = _free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.openai_server", "--port", str(port),
        "--auto-steps", str(args.steps), "--chunk-delay", str(args.chunk_delay),
        "--chunk-chars", str(args.chunk_chars),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        await _wait_ready(port)
        settings = load_settings(openai_base_url=base, max_steps=args.steps + 2, min_steps=1,
                                 request_timeout=300)
        llm = LLMClient(settings)
        engine = Engine(llm, settings)
        tune_gc()  # as `ponder run`, `ponder discord` and `ponder slack` do at start
        await one_chain(engine, 0)
        single = await one_chain(engine, 1)
        began = time.perf_counter()
        walls = await asyncio.gather(*(one_chain(engine, n) for n in range(args.chains)))
        total = time.perf_counter() - began
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ratio = total / single
        print(f"scale: {args.chains} chains at once {total:.2f} s / one chain {single:.2f} s = "
              f"{ratio:.3f}  (target ≤ 1.1); slowest chain {max(walls):.2f} s")
        print(f"peak RSS: {rss_mb:.0f} MB  (target ≤ 300 MB)")
        single = await one_chain(engine, 2)
        began = time.perf_counter()
        await asyncio.gather(*(one_vote(engine, n, args.votes)
                               for n in range(args.vote_questions)))
        voted = time.perf_counter() - began
        vote_ratio = voted / single
        print(f"votes: {args.vote_questions} questions × {args.votes} chains at once "
              f"{voted:.2f} s / one chain {single:.2f} s = {vote_ratio:.3f}  (target ≤ 1.2)")
        if args.vote_questions * args.votes == args.chains:
            # Where the server (or the machine) is what is slow, it is slow for both alike.
            print(f"votes ÷ as many single chains at once (above): {voted / total:.3f}")
        await llm.close()
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)
    return ratio, rss_mb, vote_ratio


async def _wait_ready(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("fake model server did not start")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--chunk-chars", type=int, default=4)
    parser.add_argument("--chunk-delay", type=float, default=0.025)
    parser.add_argument("--vote-questions", type=int, default=100)
    parser.add_argument("--votes", type=int, default=5, help="chains per question in a vote")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    ratio = await overhead(args)
    scale_ratio, rss, vote_ratio = await scale(args)
    if args.json:
        print(json.dumps({"overhead": ratio, "scale": scale_ratio, "rss_mb": rss,
                          "votes": vote_ratio}))


if __name__ == "__main__":
    asyncio.run(main())
