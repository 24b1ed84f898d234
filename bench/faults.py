"""Fault benchmark: does every question still get an answer, or a clear explanation, when the
model server fails a fifth of its calls and each platform has a 429 storm?

    .venv/bin/python -m bench.faults [--chains 50] [--fault-rate 0.2] [--seed 7]

Everything runs for real except the platforms and the model: Slack's bolt app gets signed
Events API requests and writes to the fake Slack Web API; discord.py's client talks to the fake
Discord (REST and gateway); a real `Ponder` service runs the chains against the fake vLLM.

The same workload runs twice, side by side in one process: `--chains` questions on Slack and as
many on Discord at once, first with faults — `--fault-rate` of model calls fail at random
(seeded): a 500, a 429 with a short Retry-After, a hang past the client timeout, or a stream cut
at a random point; plus one 429 storm per platform while the chains run — then clean.

Printed per platform and in total: answers delivered (the answer and its summary line are in
the thread), chains visibly failed (the thread says it gave up, and why), chains lost (anything
else: silence, a thread still "thinking", a chain still "running" in the store; target 0), and
what the faults cost: p95 time from question to delivered answer, faulty minus clean, and their
ratio.

Time on Slack is compressed like `bench/slack.py` (`--scale`, default 10: Slack's budgets
and windows are 10× shorter); Discord runs at its real pacing (the adapter's own budgets), its
questions spread over channels as users would ask them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.discord import DiscordBot
from bench.slack import scaled_limits
from bot.config import load_settings
from bot.llm import LLMClient
from bot.service import Ponder
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import Call, FakeSlack
from tests.slack_harness import start_harness, stop_harness

SUMMARY = re.compile(r"Thought for \d+\.\d+ s · \d+ steps?")
BUSY = ("⏳", "thinking…")


@dataclass
class Result:
    """One platform, one run."""

    platform: str
    chains: int
    delivered: int = 0
    failed: int = 0
    lost: int = 0
    latencies: list[float] = field(default_factory=list)  # question -> answer shown, delivered
    lost_why: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)  # model faults injected
    platform_429: int = 0
    rate_limited_routes: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0

    def add(self, end: str, latency: float | None, why: str = "") -> None:
        if end == "delivered" and latency is not None:
            self.delivered += 1
            self.latencies.append(latency)
        elif end == "failed":
            self.failed += 1
        else:
            self.lost += 1
            self.lost_why.append(why)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


def fake_model(args: argparse.Namespace, faulty: bool, seed: int) -> FakeOpenAI:
    # A 7B model on a GPU streams ~160 characters a second; here ten times faster.
    return FakeOpenAI(auto_steps=args.steps, chunk_chars=16, chunk_delay=0.01,
                      fault_rate=args.fault_rate if faulty else 0.0, seed=seed,
                      hang_seconds=args.request_timeout * 10, retry_after=0.2)


def settings_for(args: argparse.Namespace, llm: FakeOpenAI, tmp: Path,
                 **platform: Any) -> dict[str, Any]:
    return dict(
        openai_base_url=llm.base_url, db=tmp / "ponder.db", min_steps=args.steps,
        max_steps=args.steps, request_timeout=args.request_timeout, max_attempts=args.attempts,
        user_concurrency=args.chains, user_rate_per_minute=args.chains * 10, **platform)


# --- Slack ---------------------------------------------------------------------------------


async def slack_run(args: argparse.Namespace, faulty: bool) -> Result:
    result = Result("Slack", args.chains)
    window = 60.0 / args.scale
    async with FakeSlack(streaming=False, update_limit=(50, window),
                         assistant_status=False) as slack, \
            fake_model(args, faulty, args.seed) as llm:
        with tempfile.TemporaryDirectory() as tmp:
            h = await start_harness(Path(tmp), slack, llm, limits=scaled_limits(args.scale),
                                    **_slack_values(args))
            answered_at: dict[str, float] = {}
            updates = 0

            def watch(call: Call) -> None:
                nonlocal updates
                if call.method == "chat.update":
                    updates += 1
                    if faulty and updates == args.chains:  # the chains are well under way
                        slack.inject("chat.update", status=429, retry_after=1, times=8)
                        slack.inject("chat.postMessage", status=429, retry_after=1, times=4)
                text = str(call.body.get("text", ""))
                if call.ok and SUMMARY.search(text):
                    ts = str(call.response.get("ts") or call.body.get("ts"))
                    msg = slack.messages.get((str(call.body.get("channel")), ts))
                    if msg is not None and msg.thread_ts:
                        answered_at.setdefault(msg.thread_ts, time.monotonic())

            slack.on_call(watch)
            asked: dict[str, float] = {}
            began = time.monotonic()
            try:
                for n in range(args.chains):
                    question, body = h.ask(f"Question {n}: what is {n} squared?",
                                           user=f"U{n:05d}")
                    asked[question.ts] = time.monotonic()
                    if await h.post(body) != 200:
                        raise RuntimeError(f"Slack event {n} was refused")
                with contextlib.suppress(TimeoutError):
                    await h.settle(args.timeout)
                result.wall = time.monotonic() - began
                running = {r.thread.split(":", 1)[1] for r in
                           await h.ponder.store.chains_with_status("running")}
            finally:
                await stop_harness(h)
            for thread_ts, at in asked.items():
                replies = slack.thread("C0GENERAL", thread_ts)
                shown = "\n".join(r.text for r in replies)
                busy = any(mark in r.text for r in replies for mark in BUSY)
                if thread_ts in running or busy:
                    result.add("lost", None, f"slack {thread_ts}: still thinking")
                elif SUMMARY.search(shown) and thread_ts in answered_at:
                    result.add("delivered", answered_at[thread_ts] - at)
                elif "⚠️" in shown and "Gave up after" in shown:
                    result.add("failed", None)
                else:
                    result.add("lost", None, f"slack {thread_ts}: {shown[-120:]!r}")
            result.faults = Counter(llm.faults)
            result.platform_429 = slack.rate_limited
    return result


def _slack_values(args: argparse.Namespace) -> dict[str, Any]:
    return {"min_steps": args.steps, "max_steps": args.steps,
            "request_timeout": args.request_timeout, "max_attempts": args.attempts,
            "user_concurrency": args.chains, "user_rate_per_minute": args.chains * 10}


# --- Discord -------------------------------------------------------------------------------


async def discord_run(args: argparse.Namespace, faulty: bool) -> Result:
    result = Result("Discord", args.chains)
    async with FakeDiscord() as discord, fake_model(args, faulty, args.seed + 1) as llm:
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(**settings_for(
                args, llm, Path(tmp), discord_token=discord.token,
                discord_api_url=discord.api_url, discord_gateway_url=discord.gateway_url,
                discord_guild_ids=str(discord.guild_id)))
            ponder = Ponder(settings, llm=LLMClient(settings))
            await ponder.start()
            bot = DiscordBot(ponder, settings, client_options={"guild_ready_timeout": 0.05})
            task = asyncio.create_task(bot.run())
            storm: asyncio.Task[None] | None = None
            try:
                await asyncio.wait_for(bot.ready.wait(), 30)
                # People ask in their own channels: Discord's budgets are per channel.
                channels = [discord.add_text_channel(f"room-{n}") for n in range(
                    max(1, args.chains // 5))]
                users = [discord.alice, discord.bob, discord.mod]
                if faulty:
                    storm = asyncio.create_task(_discord_storm(discord, args.chains))
                began = time.monotonic()
                asked = [await discord.slash("reason", question=f"Q{n}: what is {n} squared?",
                                             user=users[n % 3],
                                             channel_id=channels[n % len(channels)])
                         for n in range(args.chains)]

                def over() -> bool:
                    return all(_discord_end(discord, i) != "running" for i in asked)

                with contextlib.suppress(TimeoutError):
                    await discord.wait_for(over, args.timeout)
                result.wall = time.monotonic() - began
                running = {r.thread for r in await ponder.store.chains_with_status("running")}
            finally:
                if storm is not None:
                    storm.cancel()
                await ponder.drain(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await ponder.close()
            answers = _discord_answers(discord)
            for interaction in asked:
                end = _discord_end(discord, interaction)
                opening = discord.messages.get(interaction.original_id or 0) or {}
                thread = str((opening.get("thread") or {}).get("id", ""))
                texts = [m["content"] for m in discord.channel_messages(int(thread or 0))]
                busy = any(mark in t for t in texts for mark in BUSY)
                if thread in running or busy:
                    result.add("lost", None, f"discord {thread}: still thinking")
                elif end == "✅" and thread in answers:
                    result.add("delivered", answers[thread] - interaction.created)
                elif end == "⚠️" and texts and "Gave up after" in texts[-1]:
                    result.add("failed", None)
                else:
                    result.add("lost", None, f"discord {thread}: {end} {texts[-1:]!r}")
            result.faults = Counter(llm.faults)
            result.platform_429 = discord.count(429)
            result.rate_limited_routes = Counter(f"{r.route} ({r.scope})" for r in
                                                 discord.requests if r.status == 429)
    return result


async def _discord_storm(discord: FakeDiscord, after: int) -> None:
    """A 429 storm on message edits and posts once the chains are well under way."""
    await discord.wait_for(lambda: len(discord.requests_to("PATCH", r"/messages/")) >= after,
                           300)
    discord.fail_next(10, 429, method="PATCH", path=r"^/channels/\d+/messages/\d+$",
                      retry_after=1.0)
    discord.fail_next(5, 429, method="POST", path=r"^/channels/\d+/messages$", retry_after=1.0)


def _discord_end(discord: FakeDiscord, interaction: Any) -> str:
    """✅, ⚠️ or ⏹️ once the opening message has its closing line, else "running"."""
    if interaction.original_id is None:
        return "running"
    content = discord.messages[interaction.original_id]["content"]
    last = content.rsplit("\n", 1)[-1]
    for mark in ("✅", "⚠️", "⏹️"):
        if last.startswith(mark):
            return mark
    return "running"


def _discord_answers(discord: FakeDiscord) -> dict[str, float]:
    """Thread id -> when the answer with its summary line was first written there."""
    shown: dict[str, float] = {}
    for r in discord.requests:
        match = re.match(r"^/channels/(\d+)/messages", r.path)
        if match and r.method in ("POST", "PATCH") and r.status == 200:
            content = str(r.json.get("content") or "")
            if content.startswith("**Answer**") and SUMMARY.search(content):
                shown.setdefault(match.group(1), r.at)
    return shown


# --- the two runs, side by side ------------------------------------------------------------


async def workload(args: argparse.Namespace, faulty: bool) -> list[Result]:
    runs = [slack_run(args, faulty)]
    if not args.slack_only:
        runs.append(discord_run(args, faulty))
    return list(await asyncio.gather(*runs))


def combined(results: list[Result]) -> Result:
    total = Result("Total", sum(r.chains for r in results))
    for r in results:
        total.delivered += r.delivered
        total.failed += r.failed
        total.lost += r.lost
        total.latencies += r.latencies
        total.lost_why += r.lost_why
        total.faults += r.faults
        total.platform_429 += r.platform_429
        total.wall = max(total.wall, r.wall)
    return total


def report(faulty: list[Result], clean: list[Result], args: argparse.Namespace) -> dict[str, Any]:
    rows = list(zip([*faulty, combined(faulty)], [*clean, combined(clean)], strict=True))
    print(f"{args.chains} chains on each of {len(faulty)} platform(s), {args.steps} steps each; "
          f"faulty run: {args.fault_rate:.0%} of model calls fail (seed {args.seed}), "
          f"one 429 storm per platform; model request timeout {args.request_timeout:g} s, "
          f"{args.attempts} attempts a call")
    print(f"{'':9} {'delivered':>10} {'failed':>7} {'lost':>5}  {'p95 faulty':>10} "
          f"{'p95 clean':>9} {'extra':>7} {'ratio':>6}  faults injected / platform 429s")
    out: dict[str, Any] = {}
    for bad, good in rows:
        extra = p95(bad.latencies) - p95(good.latencies)
        ratio = p95(bad.latencies) / p95(good.latencies) if good.latencies else float("nan")
        faults = ", ".join(f"{k} {v}" for k, v in sorted(bad.faults.items())) or "none"
        print(f"{bad.platform:9} {bad.delivered:>4}/{bad.chains:<5} {bad.failed:>7} "
              f"{bad.lost:>5}  {p95(bad.latencies):>9.2f}s {p95(good.latencies):>8.2f}s "
              f"{extra:>+6.2f}s {ratio:>5.2f}×  {faults} / {bad.platform_429}")
        print(f"{'  clean':9} {good.delivered:>4}/{good.chains:<5} {good.failed:>7} "
              f"{good.lost:>5}  {'':>10} {'':>9} {'':>7} {'':>6}  none / {good.platform_429}")
        out[bad.platform.lower()] = {
            "faulty": {"delivered": bad.delivered, "failed": bad.failed, "lost": bad.lost,
                       "p95_s": round(p95(bad.latencies), 3), "wall_s": round(bad.wall, 1),
                       "model_faults": dict(bad.faults), "platform_429": bad.platform_429},
            "clean": {"delivered": good.delivered, "failed": good.failed, "lost": good.lost,
                      "p95_s": round(p95(good.latencies), 3), "wall_s": round(good.wall, 1),
                      "platform_429": good.platform_429},
            "p95_extra_s": round(extra, 3), "p95_ratio": round(ratio, 2),
        }
    for result in [*faulty, *clean]:
        if result.rate_limited_routes:
            routes = ", ".join(f"{route} {n}" for route, n in
                               result.rate_limited_routes.most_common())
            print(f"  {result.platform} 429s by route: {routes}")
    total_bad = combined(faulty)
    for why in total_bad.lost_why[:10]:
        print(f"  lost: {why}")
    if args.slack_only:
        print("(Slack only: --slack-only)")
    target = total_bad.lost == 0 and total_bad.delivered >= 0.95 * total_bad.chains
    print(f"target (0 lost, ≥ 95% delivered): {'met' if target else 'NOT met'}")
    out["target_met"] = target
    return out


async def main_async(args: argparse.Namespace) -> int:
    faulty = await workload(args, faulty=True)
    clean = await workload(args, faulty=False)
    out = report(faulty, clean, args)
    print(json.dumps(out))
    return 0 if out["target_met"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=50, help="questions per platform")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--request-timeout", type=float, default=2.0,
                        help="PONDER_REQUEST_TIMEOUT: how long a hung model call is waited for")
    parser.add_argument("--attempts", type=int, default=load_settings().max_attempts,
                        help="PONDER_MAX_ATTEMPTS (default: Ponder's)")
    parser.add_argument("--scale", type=float, default=10.0,
                        help="Slack time compression (as bench/slack.py)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a run may take before what is left counts as lost")
    parser.add_argument("--slack-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
