"""Router benchmark: chains through the real vllm-router (`--policy consistent_hash`) in front of
two fake replicas, with Ponder's real engine and model client.

Run: `make bench-router`, or `.venv/bin/python -m bench.scale router [--chains 200]
[--steps 5] [--chunk-delay 0.005] [--json]` once `make router-deps` has installed the router.

- steady: every chain at once; per chain, how many of its requests went to another replica
  than the request before (in the order the chain sent them: its prompt grows by a message a
  step), target 0; and how the chains spread over the two replicas.
- failover: the same, with one replica stopped once half the requests are served. Its chains
  must still answer, each changing replica once (PONDER_MAX_ATTEMPTS=4, as docs/deploy.md asks
  behind the router); the others must not change at all.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from bot.config import Settings, load_settings
from bot.engine import Engine
from bot.events import FinalAnswer, Question
from bot.llm import LLMClient
from tests.conftest import until
from tests.fakes.openai_server import FakeOpenAI
from tests.router_harness import Router, root_of, router_binary


@dataclass(slots=True)
class Result:
    run: str
    chains: int
    answered: int
    requests: int
    changes_mean: float  # requests per chain that changed replica
    changes_max: int
    chains_changed: int  # chains with at least one change
    chains_per_replica: list[int]  # by the replica each chain started on
    seconds: float


def _paths(replicas: list[FakeOpenAI], header: str) -> dict[str, list[int]]:
    """Each chain's replicas, request by request, in the order the chain sent them."""
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for n, fake in enumerate(replicas):
        for request in fake.requests:
            if request.path.endswith("/chat/completions"):
                messages = request.body.get("messages") or []
                seen[request.headers.get(header, "")].append((len(messages), n))
    return {chain: [n for _, n in sorted(hops)] for chain, hops in seen.items()}


async def _one_run(args: argparse.Namespace, binary: str, kill: bool) -> Result:
    replicas = [FakeOpenAI(auto_steps=args.steps, chunk_delay=args.chunk_delay)
                for _ in range(2)]
    for fake in replicas:
        await fake.start()
    with tempfile.TemporaryDirectory(prefix="ponder-bench-router-") as tmp:
        try:
            async with Router(binary, [root_of(fake) for fake in replicas],
                              Path(tmp) / "router.log") as router:
                settings = _settings(router.base_url, Path(tmp), kill)
                return await _chains(args, settings, replicas, kill)
        finally:
            for fake in replicas:
                await fake.stop()


def _settings(base_url: str, tmp: Path, kill: bool) -> Settings:
    return load_settings(openai_base_url=base_url, db=tmp / "ponder.db", min_steps=1,
                         request_timeout=30.0, max_attempts=4 if kill else 3)


async def _chains(args: argparse.Namespace, settings: Settings, replicas: list[FakeOpenAI],
                  kill: bool) -> Result:
    llm = LLMClient(settings, retry_base_delay=0.05)
    engine = Engine(llm, settings)
    questions = [Question(f"Question {n}: what is {n} + {n}?") for n in range(args.chains)]

    async def one(question: Question) -> bool:
        events = [event async for event in engine.run(question)]
        return isinstance(events[-1], FinalAnswer)

    async def killer() -> None:
        # One replica goes once half of all requests (steps and answers) are served.
        half = args.chains * (args.steps + 1) // 2
        await until(lambda: sum(len(fake.requests) for fake in replicas) >= half, 300.0,
                    interval=0.005)
        await replicas[0].stop()

    began = time.perf_counter()
    stopper = asyncio.create_task(killer()) if kill else None
    try:
        answered = await asyncio.gather(*(one(q) for q in questions))
    finally:
        if stopper is not None:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
        await llm.close()
    seconds = time.perf_counter() - began
    paths = _paths(replicas, settings.session_header)
    changes = [sum(a != b for a, b in itertools.pairwise(path))
               for path in (paths.get(q.id, []) for q in questions)]
    first = [paths[q.id][0] for q in questions if paths.get(q.id)]
    return Result("failover" if kill else "steady", args.chains, sum(answered),
                  sum(len(path) for path in paths.values()),
                  statistics.fmean(changes), max(changes), sum(1 for c in changes if c),
                  [first.count(n) for n in range(len(replicas))], seconds)


async def _run(args: argparse.Namespace) -> list[Result]:
    binary = router_binary()
    if binary is None:
        sys.exit("vllm-router is not installed: `make router-deps` installs it")
    return [await _one_run(args, binary, kill=False), await _one_run(args, binary, kill=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale router",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chains", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5, help="steps per chain (then an answer)")
    parser.add_argument("--chunk-delay", type=float, default=0.005,
                        help="seconds between the fake replicas' streamed pieces")
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args(argv)
    # Each retry of the failover run is a warning: hundreds of lines that the figures sum up.
    logging.getLogger("bot.llm").setLevel(logging.ERROR)
    for result in asyncio.run(_run(args)):
        if args.json:
            print(json.dumps(asdict(result)))
            continue
        a, b = result.chains_per_replica
        print(f"{result.run:>8}: {result.answered}/{result.chains} chains answered, "
              f"{result.requests} requests in {result.seconds:.1f} s; requests per chain that "
              f"changed replica: mean {result.changes_mean:.2f}, max {result.changes_max} "
              f"({result.chains_changed} chains changed); chains per replica {a} / {b} "
              f"({a / max(1, a + b):.0%} / {b / max(1, a + b):.0%})")


if __name__ == "__main__":
    main()
