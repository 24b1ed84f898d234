"""Store benchmark: 500 chains through one process on SQLite versus two processes sharing
PostgreSQL (250 each), every chain through the real service (`Ponder.submit`: admission,
engine, presenter, store, leases).

Run: `make bench-scale-store`, or `.venv/bin/python -m bench.scale store [--chains 500]
[--steps 3] [--chunk-delay 0.01] [--json]` (it starts a throw-away PostgreSQL as `tests/pg.py`
does: as root, the server runs as the `ponderpg` user).

- wall time of each run and chains per second; the ratio SQLite one process ÷ PostgreSQL two.
- store overhead per chain on PostgreSQL: the time a chain's own store calls took (start,
  steps, handles, finish), median and p95 over the chains (target: median ≤ 5 ms).
The model is the fake vLLM in a subprocess of its own; each Ponder process is a subprocess too
(`python -m bench.scale_store worker …`), so both runs measure real processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.config import load_settings
from bot.events import Question
from bot.llm import LLMClient
from bot.service import ChainRequest, Ponder
from bot.store import ChainRecord, Claim, StepRecord, Store, backend_for
from tests import pg
from tests.surfaces import RecordingSurface

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("start_chain", "add_step", "finish_chain", "set_handles", "set_owed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(store: Store, spent: dict[str, float]) -> None:
    """Add each chain's time in the store's chain writes to `spent[chain_id]`."""
    for name in TIMED:
        call: Callable[..., Awaitable[Any]] = getattr(store, name)

        async def wrapper(*args: Any, _call: Callable[..., Awaitable[Any]] = call,
                          **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await _call(*args, **kwargs)
            finally:
                first = args[0]
                key = first.id if hasattr(first, "id") else str(first)
                spent[key] += time.perf_counter() - began

        setattr(store, name, wrapper)


async def worker(args: argparse.Namespace) -> None:
    """One Ponder process: `--chains` chains at once, each its own asker and thread."""
    settings = load_settings(openai_base_url=args.llm, db=args.db, min_steps=args.steps,
                             max_steps=args.steps, request_timeout=300,
                             user_concurrency=10, retention_days=0, health_interval=60)
    ponder = Ponder(settings, llm=LLMClient(settings))
    spent: dict[str, float] = defaultdict(float)
    timed(ponder.store, spent)
    await ponder.start()
    try:
        surfaces = [RecordingSurface(edit_interval=0.2) for _ in range(args.chains)]
        print("ready", flush=True)
        sys.stdin.readline()  # go: both processes start together
        began = time.perf_counter()
        handles = [ponder.submit(ChainRequest(
            "bench", Question(f"Question {n}: what is {n} squared?"), f"U{args.tag}-{n}",
            "C", f"C:{args.tag}-{n}"), surfaces[n]) for n in range(args.chains)]
        outcomes = await asyncio.gather(*(h.wait() for h in handles))
        wall = time.perf_counter() - began
        answered = sum(o.status == "answered" for o in outcomes)
        print(json.dumps({"wall": wall, "answered": answered,
                          "store_ms": [1000 * spent[h.chain_id] for h in handles]}), flush=True)
    finally:
        await ponder.close()


async def run_processes(db: str, chains: list[int], llm: str,
                        args: argparse.Namespace) -> tuple[float, int, list[float]]:
    """Start one worker per entry of `chains`, start them together; the wall time from the
    go to the last answer, chains answered, and each chain's store milliseconds."""
    procs = []
    for tag, n in enumerate(chains):
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.scale_store", "worker", "--db", db, "--chains", str(n),
            "--llm", llm, "--steps", str(args.steps), "--tag", str(tag),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "PONDER_LOG_LEVEL": "WARNING"},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"a worker did not start: {line!r}")
        began = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(await asyncio.wait_for(proc.stdout.readline(), 600)))
        wall = time.perf_counter() - began
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 60)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return (wall, sum(r["answered"] for r in results),
            [ms for r in results for ms in r["store_ms"]])


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    model = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.openai_server", "--port", str(port),
        "--auto-steps", str(args.steps), "--chunk-delay", str(args.chunk_delay),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    server = pg.start()
    try:
        llm = f"http://127.0.0.1:{port}/v1"
        await _wait_ready(port)
        with tempfile.TemporaryDirectory(prefix="ponder-bench-") as tmp:
            sqlite_wall, sqlite_ok, sqlite_ms = await run_processes(
                str(Path(tmp) / "bench.db"), [args.chains], llm, args)
            sqlite_alone = await alone(str(Path(tmp) / "alone.db"), args.alone, args.steps)
        half = args.chains // 2
        pg_wall, pg_ok, pg_ms = await run_processes(
            server.fresh_database(), [half, args.chains - half], llm, args)
        pg_alone = await alone(server.fresh_database(), args.alone, args.steps)
    finally:
        server.stop()
        model.kill()
        await model.wait()
    return {
        "chains": args.chains,
        "sqlite_one_process": {"wall_s": sqlite_wall, "answered": sqlite_ok,
                               "chains_per_s": args.chains / sqlite_wall,
                               "store_ms_median": statistics.median(sqlite_ms),
                               "store_ms_alone_median": statistics.median(sqlite_alone)},
        "postgres_two_processes": {"wall_s": pg_wall, "answered": pg_ok,
                                   "chains_per_s": args.chains / pg_wall,
                                   "store_ms_median": statistics.median(pg_ms),
                                   "store_ms_p95": _p95(pg_ms),
                                   "store_ms_alone_median": statistics.median(pg_alone),
                                   "store_ms_alone_p95": _p95(pg_alone)},
        "wall_ratio_sqlite_over_postgres": sqlite_wall / pg_wall,
    }


async def alone(db: str, chains: int, steps: int) -> list[float]:
    """The store's own cost of a chain: its writes (start with its claim, each step with the
    handles saved after it, the answer's handles, the finish) one chain after another, with
    nothing else running: milliseconds per chain."""
    store = backend_for(db)(db)
    await store.open()
    spent = []
    try:
        for n in range(chains):
            chain_id = f"alone-{n}"
            began = time.perf_counter()
            claim = Claim("bench", 30.0, 10) if store.shared else None
            await store.start_chain(ChainRecord(chain_id, "bench", f"Question {n}", "chain",
                                                asker=f"A{n}", thread=f"C:a{n}"), claim)
            handles: dict[str, list[Any]] = {}
            for index in range(1, steps + 1):
                await store.add_step(chain_id, StepRecord(index, "title", "content " * 40, 0.5))
                handles[f"step:{index}"] = [f"1.{index}"]
                await store.set_handles(chain_id, handles)
            handles["answer"] = ["1.9"]
            await store.set_handles(chain_id, handles)
            await store.finish_chain(chain_id, "answered", answer="42", total_seconds=1.0)
            spent.append(1000 * (time.perf_counter() - began))
    finally:
        await store.close()
    return spent


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


async def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake model server did not start") from None
            await asyncio.sleep(0.1)


def main(argv: list[str]) -> None:
    if argv[:1] == ["worker"]:
        parser = argparse.ArgumentParser(prog="bench.scale_store worker")
        parser.add_argument("--db", required=True)
        parser.add_argument("--chains", type=int, required=True)
        parser.add_argument("--llm", required=True)
        parser.add_argument("--steps", type=int, default=3)
        parser.add_argument("--tag", default="0")
        asyncio.run(worker(parser.parse_args(argv[1:])))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.scale store",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=500)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--chunk-delay", type=float, default=0.01)
    parser.add_argument("--alone", type=int, default=200,
                        help="chains whose store writes are timed with nothing else running")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    one, two = figures["sqlite_one_process"], figures["postgres_two_processes"]
    print(f"store: {args.chains} chains at once, {args.steps} steps each")
    print(f"  SQLite, one process:        {one['wall_s']:6.2f} s  "
          f"{one['chains_per_s']:6.1f} chains/s  answered {one['answered']}")
    print(f"  PostgreSQL, two processes:  {two['wall_s']:6.2f} s  "
          f"{two['chains_per_s']:6.1f} chains/s  answered {two['answered']}")
    print(f"  wall time, SQLite one ÷ PostgreSQL two: "
          f"{figures['wall_ratio_sqlite_over_postgres']:.2f}")
    print(f"store per chain, its writes alone ({args.alone} chains, one after another):")
    print(f"  SQLite {one['store_ms_alone_median']:.2f} ms  ·  PostgreSQL "
          f"{two['store_ms_alone_median']:.2f} ms median (p95 {two['store_ms_alone_p95']:.2f})"
          "  (target PostgreSQL median ≤ 5 ms)")
    print(f"store per chain under the load above (awaited, so it includes the event loop's "
          f"queue): SQLite {one['store_ms_median']:.1f} ms  ·  PostgreSQL "
          f"{two['store_ms_median']:.1f} ms median")


if __name__ == "__main__":
    main(sys.argv[1:])
