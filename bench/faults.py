"""Fault benchmark: does every question still get an answer, or a clear explanation, when the
model server fails a fifth of its calls, each platform has a 429 storm, and each platform is
unreachable for a while?

    .venv/bin/python -m bench.faults [--chains 50] [--fault-rate 0.2] [--seed 7] [--no-outages]

Everything runs for real except the platforms and the model: Slack's bolt app gets signed
Events API requests and writes to the fake Slack Web API; discord.py's client talks to the fake
Discord (REST and gateway); a real `Ponder` service runs the chains against the fake vLLM.

The same workload runs twice, side by side in one process: `--chains` questions on Slack and as
many on Discord at once, first with faults — `--fault-rate` of model calls fail at random
(seeded): a 500, a 429 with a short Retry-After, a hang past the client timeout, or a stream cut
at a random point; plus one 429 storm per platform while the chains run; plus (`--outages`, on
by default) platform outages — then clean.

Outages: each platform becomes unreachable (connections refused, open ones and the gateway or
socket reset; `tests/fakes/outage.py`) for each of `--outage-seconds` (10 s and 60 s), one of
them right after a final answer lands while the others are being written, the others at a
random moment of the run (seeded, never overlapping). They last their real length, unlike
Slack's budgets below: what decides whether an answer survives them runs on real time (the
presenter's final-write retries after 1 s and 3 s, Ponder's delivery backoff, slack_sdk's and
discord.py's own retries and reconnects). After the last one the run waits up to
`--delivery-wait` seconds for what is owed to land. Reported per platform: answers (chains the
store has `answered`), owed at some point (handed to Ponder's deliveries), delivered (the thread
ends with the complete answer and its "Thought for" line), misplaced (the answer is in the
thread, but something was written after it) and lost (the thread never got it; target 0).
Then a restart during an outage: `--restart-chains` questions, an outage of `--restart-outage`
seconds right after a final answer lands, Ponder and the bot stopped in the middle of it, and a
new Ponder and bot on the same store started once the platform is back; reported: answers owed
at the stop, delivered by the new process, lost (target 0).

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
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from adapters.discord import DiscordBot
from adapters.discord.text import render as discord_render
from adapters.slack.mrkdwn import to_mrkdwn
from bench.slack import scaled_limits
from bot.config import Settings, load_settings
from bot.llm import LLMClient
from bot.presenter import FINAL_POST_PAUSES
from bot.service import Ponder
from bot.store import ChainRecord, Store
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import Call, FakeSlack
from tests.slack_harness import CHANNEL, Harness, start_harness, stop_harness

SUMMARY = re.compile(r"Thought for \d+\.\d+ s · \d+ steps?")
BUSY = ("⏳", "thinking…")
# Into an outage, how long before Ponder is stopped in the restart case: past the presenter's
# own retries of a final write, so what failed there is owed by then, not still being tried.
STOP_INTO_OUTAGE = sum(FINAL_POST_PAUSES) + 2.0


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
    delivery: Delivery | None = None  # with outages: the model's answers versus the threads

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


@dataclass
class Outage:
    seconds: float
    kind: str  # "final": right after a final answer lands; "random": at a random moment
    random_at: float = 0.0  # "random": seconds after the first question (seeded)
    after_answers: int = 0  # "final": the how-many-th answer shown it follows (seeded)
    at: float | None = None  # when it began, seconds after the first question
    moment: str = "not triggered"


@dataclass
class Delivery:
    """The model's answers against what reached the threads, in a run with outages."""

    answered: int = 0  # chains the store has `answered`
    owed: int | None = None  # answered chains handed to Ponder's deliveries (None: no such)
    delivered: int = 0  # their thread ends with the complete answer and its summary line
    out_of_order: int = 0  # the answer is in the thread, but something came after it
    lost: int = 0  # the answer never reached the thread
    expired: int = 0  # given up on by Ponder (its delivery bound)
    others: Counter[str] = field(default_factory=Counter)  # chains not answered: status (why)
    outages: list[Outage] = field(default_factory=list)
    lost_why: list[str] = field(default_factory=list)  # and out of order
    # Seconds from the end of the last outage to the last answer shown in full (0: all were
    # shown before it ended; None: not all were ever shown).
    landed: float | None = None


@dataclass
class Restart:
    """A restart during an outage: what the stopped process owed, and what the new one did."""

    platform: str
    chains: int
    outage: float
    answered: int = 0  # by the end, across both processes
    owed_at_stop: int = 0  # answered before the stop, not in the thread at the stop
    delivered_by_new: int = 0  # of those, in the thread at the end
    resumed: int = 0  # running at the stop, answered and delivered by the new process
    out_of_order: int = 0  # answered, in the thread at the end, but not last
    lost: int = 0  # answered, not in the thread at the end
    lost_why: list[str] = field(default_factory=list)
    others: Counter[str] = field(default_factory=Counter)  # chains not answered by the end
    note: str = ""


async def until(predicate: Callable[[], Any], every: float = 0.05) -> None:
    # Polled: what is waited for (threads in the fakes, the store) signals nothing.
    while not predicate():  # noqa: ASYNC110
        await asyncio.sleep(every)


class Outages:
    """The outages of one platform in one run: one right after a final answer lands (while the
    others are being written), the rest at random moments; never two at once."""

    def __init__(self, fake: FakeSlack | FakeDiscord, lengths: list[float], rng: random.Random,
                 answers: Callable[[], int], chains: int) -> None:
        self.fake = fake
        self.answers = answers  # how many chains' answers the thread shows so far
        order = list(lengths)
        rng.shuffle(order)
        # Drawn up front, in one order, so the plan depends on the seed alone.
        self.plan = [Outage(order[0], "final", after_answers=rng.randint(1, max(1, chains // 5)))]
        # Questions are all asked in the first moments, and an interaction must be answered
        # within 3 s: from then on to well inside the chains' run.
        self.plan += [Outage(n, "random", random_at=rng.uniform(3.0, 12.0)) for n in order[1:]]
        self.gaps = [rng.uniform(2.0, 5.0) for _ in self.plan]
        self.began = 0.0
        self.last_back = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.began = time.monotonic()
        self._tasks = [asyncio.create_task(self._at_final(o)) if o.kind == "final"
                       else asyncio.create_task(self._at_random(o, gap))
                       for o, gap in zip(self.plan, self.gaps, strict=True)]

    async def _at_final(self, outage: Outage) -> None:
        target = outage.after_answers
        while True:
            await until(partial(self._shown_at_least, target))
            if not self.fake.is_down:
                break
            # Another outage holds the platform down: take the next answer shown after it.
            await until(lambda: not self.fake.is_down)
            target = self.answers() + 1
        await self._go(outage, f"right after answer {self.answers()} was shown")

    def _shown_at_least(self, count: int) -> bool:
        return self.answers() >= count

    async def _at_random(self, outage: Outage, gap: float) -> None:
        await asyncio.sleep(max(0.0, self.began + outage.random_at - time.monotonic()))
        while self.fake.is_down:
            await until(lambda: not self.fake.is_down)
            await asyncio.sleep(gap)
        await self._go(outage, "at a random moment")

    async def _go(self, outage: Outage, moment: str) -> None:
        outage.at, outage.moment = time.monotonic() - self.began, moment
        await self.fake.outage(outage.seconds)
        self.last_back = time.monotonic()

    async def finish(self, grace: float) -> None:
        """Wait until every outage is over; one whose moment has not come `grace` s from now
        (no answer is shown any more) is called off."""
        deadline = time.monotonic() + grace
        while any(not t.done() for t in self._tasks):
            if time.monotonic() > deadline:
                for task, outage in zip(self._tasks, self.plan, strict=True):
                    if outage.at is None:
                        task.cancel()
            await asyncio.sleep(0.1)
        for task in self._tasks:
            if not task.cancelled():
                task.result()


def track_owed(ponder: Ponder) -> set[str] | None:
    """Chains whose final texts Ponder hands to its deliveries (None: this Ponder has none)."""
    deliveries = getattr(ponder, "deliveries", None)
    if deliveries is None:
        return None
    owed: set[str] = set()
    owe = deliveries.owe

    async def noted(chain_id: str, *args: Any, **kwargs: Any) -> None:
        owed.add(chain_id)
        await owe(chain_id, *args, **kwargs)

    deliveries.owe = noted
    return owed


def ends_with_answer(text: str, answer: str) -> bool:
    """The complete answer, then the summary line (a late delivery may add a note after it)."""
    summary = SUMMARY.search(text)
    at = text.find(answer)
    return summary is not None and 0 <= at < summary.start()


# Where a chain's answer is: "delivered" (the thread ends with it), "out of order" (it is in
# the thread, but something was written after it), or "lost" (the thread never got it).
Place = Callable[[ChainRecord], str]


def place(texts: list[str], answer: str) -> str:
    if texts and ends_with_answer(texts[-1], answer):
        return "delivered"
    return "out of order" if any(ends_with_answer(t, answer) for t in texts) else "lost"


def slack_place(slack: FakeSlack) -> Place:
    def where(record: ChainRecord) -> str:
        channel, _, thread_ts = record.thread.partition(":")
        return place([m.text for m in slack.thread(channel or CHANNEL, thread_ts)],
                     to_mrkdwn((record.answer or "").strip()))
    return where


def discord_place(discord: FakeDiscord) -> Place:
    def where(record: ChainRecord) -> str:
        if not record.thread.isdigit():
            return "lost"
        return place([m["content"] for m in discord.channel_messages(int(record.thread))],
                     discord_render((record.answer or "").strip()))
    return where


async def answered(store: Store) -> list[ChainRecord]:
    return await store.chains_with_status("answered")


async def wait_delivered(store: Store, where: Place, seconds: float,
                         also: Callable[[], bool] = lambda: True) -> None:
    """Until no chain runs, every answer ends its thread and `also()` holds, or `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if also() and not await store.chains_with_status("running") and all(
                where(r) == "delivered" for r in await answered(store)):
            return
        await asyncio.sleep(0.5)


async def chains_done(store: Store, over: Callable[[], bool], seconds: float) -> None:
    """Until `over()` or no chain runs any more (an outage may keep the platform from ever
    showing the end: that is for the delivery wait to see, not this one)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if over() or not await store.chains_with_status("running"):
            return
        await asyncio.sleep(0.25)


async def not_answered(store: Store, count: int) -> Counter[str]:
    """The `count` chains asked but not answered: by status (and why), or never started."""
    others = await store.chains_with_status("running", "failed", "cancelled", "interrupted")
    found = Counter(f"{r.status} ({(r.reason or '?').split(':', 1)[0]})" for r in others)
    # Asked, yet no chain in the store: it never started (its thread could not be opened).
    if count > len(others):
        found["never started"] = count - len(others)
    return found


async def delivery_figures(platform: str, asked: int, store: Store, where: Place,
                           shown_at: Callable[[ChainRecord], float | None],
                           owed: set[str] | None, outages: Outages) -> Delivery:
    records = await answered(store)
    figures = Delivery(answered=len(records), outages=outages.plan)
    figures.others = await not_answered(store, asked - len(records))
    if owed is not None:
        figures.owed = sum(1 for r in records if r.id in owed)
    for record in records:
        found = where(record)
        if found == "delivered":
            figures.delivered += 1
            continue
        if found == "lost":
            figures.lost += 1
        else:
            figures.out_of_order += 1
        figures.lost_why.append(f"{platform} {record.thread}: answer {found} "
                                f"(delivery {getattr(record, 'delivery', 'n/a')})")
        figures.expired += getattr(record, "delivery", "") == "expired"
    times = [shown_at(r) for r in records]
    if figures.delivered == len(records) and None not in times and outages.last_back:
        figures.landed = max(0.0, max((t for t in times if t is not None), default=0.0)
                             - outages.last_back)
    return figures


async def after_outages(outages: Outages, store: Store, where: Place,
                        args: argparse.Namespace,
                        also: Callable[[], bool] = lambda: True) -> None:
    """Let every outage run its course, then wait (bounded) for what is owed to land."""
    await outages.finish(args.delivery_wait)
    await wait_delivered(store, where, args.delivery_wait, also)


def outage_lengths(args: argparse.Namespace) -> list[float]:
    return [float(n) for n in args.outage_seconds.split(",") if n.strip()]


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
            owed = track_owed(h.ponder)
            outages = Outages(slack, outage_lengths(args), random.Random(f"{args.seed}-slack"),
                              lambda: len(answered_at), args.chains
                              ) if faulty and args.outages else None
            began = time.monotonic()
            try:
                if outages is not None:
                    outages.start()
                for n in range(args.chains):
                    question, body = h.ask(f"Question {n}: what is {n} squared?",
                                           user=f"U{n:05d}")
                    asked[question.ts] = time.monotonic()
                    if await h.post(body) != 200:
                        raise RuntimeError(f"Slack event {n} was refused")
                with contextlib.suppress(TimeoutError):
                    await h.settle(args.timeout)
                if outages is not None:
                    in_thread = slack_place(slack)
                    await after_outages(outages, h.ponder.store, in_thread, args)
                    result.delivery = await delivery_figures(
                        "slack", args.chains, h.ponder.store, in_thread,
                        lambda r: answered_at.get(r.thread.partition(":")[2]), owed, outages)
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
            settings = discord_settings(args, llm, Path(tmp), discord)
            ponder, task = await discord_up(settings)
            storm: asyncio.Task[None] | None = None
            outages = Outages(discord, outage_lengths(args),
                              random.Random(f"{args.seed}-discord"),
                              lambda: len(_discord_answers(discord)), args.chains
                              ) if faulty and args.outages else None
            owed = track_owed(ponder)
            try:
                # People ask in their own channels: Discord's budgets are per channel.
                channels = [discord.add_text_channel(f"room-{n}") for n in range(
                    max(1, args.chains // 5))]
                users = [discord.alice, discord.bob, discord.mod]
                if faulty:
                    storm = asyncio.create_task(_discord_storm(discord, args.chains))
                began = time.monotonic()
                if outages is not None:
                    outages.start()
                asked = [await discord.slash("reason", question=f"Q{n}: what is {n} squared?",
                                             user=users[n % 3],
                                             channel_id=channels[n % len(channels)])
                         for n in range(args.chains)]

                def over() -> bool:
                    return all(_discord_end(discord, i) != "running" for i in asked)

                if outages is None:
                    with contextlib.suppress(TimeoutError):
                        await discord.wait_for(over, args.timeout)
                else:
                    await chains_done(ponder.store, over, args.timeout)
                    in_thread = discord_place(discord)
                    await after_outages(outages, ponder.store, in_thread, args, also=over)
                    result.delivery = await delivery_figures(
                        "discord", args.chains, ponder.store, in_thread,
                        lambda r: _discord_answers(discord).get(r.thread), owed, outages)
                result.wall = time.monotonic() - began
                running = {r.thread for r in await ponder.store.chains_with_status("running")}
            finally:
                if storm is not None:
                    storm.cancel()
                await discord_down(ponder, task)
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
                elif end == "running":
                    result.add("lost", None, f"discord {thread}: the opening message never got "
                                             f"its closing line; the thread ends {texts[-1:]!r}")
                else:
                    result.add("lost", None, f"discord {thread}: {end} {texts[-1:]!r}")
            result.faults = Counter(llm.faults)
            result.platform_429 = discord.count(429)
            result.rate_limited_routes = Counter(f"{r.route} ({r.scope})" for r in
                                                 discord.requests if r.status == 429)
    return result


def discord_settings(args: argparse.Namespace, llm: FakeOpenAI, tmp: Path,
                     discord: FakeDiscord) -> Settings:
    return load_settings(**settings_for(
        args, llm, tmp, discord_token=discord.token, discord_api_url=discord.api_url,
        discord_gateway_url=discord.gateway_url, discord_guild_ids=str(discord.guild_id)))


async def discord_up(settings: Settings) -> tuple[Ponder, asyncio.Task[None]]:
    """A started Ponder and its Discord bot, logged in and ready."""
    ponder = Ponder(settings, llm=LLMClient(settings))
    await ponder.start()
    bot = DiscordBot(ponder, settings, client_options={"guild_ready_timeout": 0.05})
    task = asyncio.create_task(bot.run())
    try:
        await asyncio.wait_for(bot.ready.wait(), 30)
    except BaseException:
        await discord_down(ponder, task)
        raise
    return ponder, task


async def discord_down(ponder: Ponder, task: asyncio.Task[None]) -> None:
    await ponder.drain(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ponder.close()


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


# --- a restart during an outage -----------------------------------------------------------

Stop = Callable[[], Any]


async def restart_case(result: Restart, fake: FakeSlack | FakeDiscord,
                       start: Callable[[], Any], ask: Callable[[], Any],
                       answers: Callable[[], int], where: Place,
                       args: argparse.Namespace) -> None:
    """Questions on a first process; an outage right after an answer lands; the process is
    stopped in the middle of it; a second one on the same store starts once it is over."""
    store, stop = await start()
    stopped = False
    try:
        await ask()
        async with asyncio.timeout(args.timeout):
            await until(lambda: answers() >= max(1, result.chains // 5))
        back = fake.outage(result.outage)
        await asyncio.sleep(min(STOP_INTO_OUTAGE, result.outage / 2))
        before = await answered(store)
        running = {r.id for r in await store.chains_with_status("running")}
        stopped = True
        await stop()
        # Read once the first process is gone: what it delivered while stopping is not owed.
        owed = {r.id for r in before if where(r) != "delivered"}
        if not fake.is_down:
            result.note = "the outage was over before the first process had stopped"
        await back
    finally:
        if not stopped:
            await stop()
    store, stop = await start()
    try:
        await wait_delivered(store, where, args.delivery_wait)
        end = await answered(store)
        result.others = await not_answered(store, result.chains - len(end))
    finally:
        await stop()
    found = {r.id: where(r) for r in end}
    delivered = {chain for chain, at in found.items() if at == "delivered"}
    result.answered = len(end)
    result.owed_at_stop = len(owed)
    result.delivered_by_new = len(owed & delivered)
    result.resumed = len(running & delivered)
    result.lost = sum(at == "lost" for at in found.values())
    result.out_of_order = sum(at == "out of order" for at in found.values())
    result.lost_why = [f"{result.platform.lower()} {r.thread}: answer {found[r.id]} "
                       f"(delivery {getattr(r, 'delivery', 'n/a')})"
                       for r in end if r.id not in delivered]


async def slack_restart(args: argparse.Namespace) -> Restart:
    result = Restart("Slack", args.restart_chains, args.restart_outage)
    async with FakeSlack(streaming=False, update_limit=(50, 60.0 / args.scale),
                         assistant_status=False) as slack, \
            fake_model(args, False, args.seed + 2) as llm:
        with tempfile.TemporaryDirectory() as tmp:
            harness: list[Harness] = []
            asked: list[str] = []

            async def start() -> tuple[Store, Stop]:
                h = await start_harness(Path(tmp), slack, llm, limits=scaled_limits(args.scale),
                                        **_slack_values(args))
                await h.bot.recover()  # as `ponder slack` does on start (the harness does not)
                harness.append(h)
                return h.ponder.store, lambda: stop_harness(h)

            async def ask() -> None:
                for n in range(result.chains):
                    question, body = harness[-1].ask(f"Question {n}: what is {n} cubed?",
                                                     user=f"U{n:05d}")
                    asked.append(question.ts)
                    if await harness[-1].post(body) != 200:
                        raise RuntimeError(f"Slack event {n} was refused")

            def answers() -> int:
                return sum(any(SUMMARY.search(m.text) for m in slack.thread(CHANNEL, ts))
                           for ts in asked)

            await restart_case(result, slack, start, ask, answers, slack_place(slack), args)
    return result


async def discord_restart(args: argparse.Namespace) -> Restart:
    result = Restart("Discord", args.restart_chains, args.restart_outage)
    async with FakeDiscord() as discord, fake_model(args, False, args.seed + 3) as llm:
        with tempfile.TemporaryDirectory() as tmp:
            settings = discord_settings(args, llm, Path(tmp), discord)

            async def start() -> tuple[Store, Stop]:
                ponder, task = await discord_up(settings)
                return ponder.store, lambda: discord_down(ponder, task)

            async def ask() -> None:
                channels = [discord.add_text_channel(f"again-{n}") for n in range(
                    max(1, result.chains // 5))]
                for n in range(result.chains):
                    await discord.slash("reason", question=f"Q{n}: what is {n} cubed?",
                                        channel_id=channels[n % len(channels)])

            await restart_case(result, discord, start, ask,
                               lambda: len(_discord_answers(discord)), discord_place(discord),
                               args)
    return result


# --- the two runs, side by side ------------------------------------------------------------


async def workload(args: argparse.Namespace, faulty: bool) -> list[Result]:
    runs = [slack_run(args, faulty)]
    if not args.slack_only:
        runs.append(discord_run(args, faulty))
    return list(await asyncio.gather(*runs))


async def restarts(args: argparse.Namespace) -> list[Restart]:
    runs = [slack_restart(args)]
    if not args.slack_only:
        runs.append(discord_restart(args))
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


def report(faulty: list[Result], clean: list[Result], restarted: list[Restart],
           args: argparse.Namespace) -> dict[str, Any]:
    rows = list(zip([*faulty, combined(faulty)], [*clean, combined(clean)], strict=True))
    outages = (f", outages of {' and '.join(f'{n:g} s' for n in outage_lengths(args))} "
               "per platform" if args.outages else "")
    print(f"{args.chains} chains on each of {len(faulty)} platform(s), {args.steps} steps each; "
          f"faulty run: {args.fault_rate:.0%} of model calls fail (seed {args.seed}), "
          f"one 429 storm per platform{outages}; model request timeout "
          f"{args.request_timeout:g} s, {args.attempts} attempts a call")
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
    answers_lost = 0
    if args.outages:
        answers_lost += report_outages(faulty, out)
        answers_lost += report_restarts(restarted, out)
    target = (total_bad.lost == 0 and total_bad.delivered >= 0.95 * total_bad.chains
              and answers_lost == 0)
    outage_target = ", 0 answers lost to outages" if args.outages else ""
    print(f"target (0 lost, ≥ 95% delivered{outage_target}): {'met' if target else 'NOT met'}")
    out["target_met"] = target
    return out


def report_outages(faulty: list[Result], out: dict[str, Any]) -> int:
    """The outage figures of the faulty run; returns the answers lost."""
    print("Outages in the faulty run (real seconds, not compressed by --scale: the presenter's "
          f"retries after {' s and '.join(f'{p:g}' for p in FINAL_POST_PAUSES)} s, Ponder's "
          "delivery backoff and slack_sdk's / discord.py's retries run on real time):")
    print(f"{'':9} {'answers':>7} {'owed':>5} {'delivered':>9} {'misplaced':>9} {'lost':>5} "
          f"{'expired':>7} {'landed':>7}  outages (began, s after the first question)")
    lost = 0
    for result in faulty:
        d = result.delivery
        if d is None:
            continue
        lost += d.lost
        owed = "n/a" if d.owed is None else str(d.owed)
        landed = ("-" if d.landed is None else f"{d.landed:.0f}s"
                  ) if d.delivered == d.answered else "never"
        plan = "; ".join(
            f"{o.seconds:g} s {o.moment}" + (f" at {o.at:.1f}" if o.at is not None else "")
            for o in d.outages)
        print(f"{result.platform:9} {d.answered:>7} {owed:>5} {d.delivered:>9} "
              f"{d.out_of_order:>9} {d.lost:>5} {d.expired:>7} {landed:>7}  {plan}")
        if d.others:
            print(f"  not answered: {', '.join(f'{k} {n}' for k, n in d.others.most_common())}")
        for why in d.lost_why[:5]:
            print(f"  {why}")
        out.setdefault(result.platform.lower(), {})["outages"] = {
            "answered": d.answered, "owed": d.owed, "delivered": d.delivered,
            "out_of_order": d.out_of_order, "lost": d.lost,
            "expired": d.expired, "not_answered": dict(d.others),
            "landed_s_after_last_outage": None if d.landed is None else round(d.landed, 1),
            "outages": [{"seconds": o.seconds, "kind": o.kind, "moment": o.moment,
                         "at_s": None if o.at is None else round(o.at, 1)} for o in d.outages],
        }
    print("  (misplaced: the answer is in the thread, but something was written after it; "
          "landed: seconds from the end of the last outage to the last answer shown)")
    return lost


def report_restarts(restarted: list[Restart], out: dict[str, Any]) -> int:
    """The restart-during-an-outage figures; returns the answers lost."""
    if not restarted:
        return 0
    print(f"Restart during an outage ({restarted[0].chains} chains per platform, an outage of "
          f"{restarted[0].outage:g} s right after an answer lands, Ponder stopped "
          f"{min(STOP_INTO_OUTAGE, restarted[0].outage / 2):g} s into it, a new one started "
          "when it is over):")
    print(f"{'':9} {'answers':>7} {'owed at stop':>12} {'delivered by new':>16} "
          f"{'resumed':>7} {'misplaced':>9} {'lost':>5}")
    lost = 0
    for r in restarted:
        lost += r.lost
        print(f"{r.platform:9} {r.answered:>7} {r.owed_at_stop:>12} "
              f"{r.delivered_by_new:>11}/{r.owed_at_stop:<4} {r.resumed:>7} "
              f"{r.out_of_order:>9} {r.lost:>5}" + (f"  ({r.note})" if r.note else ""))
        if r.others:
            print(f"  not answered: {', '.join(f'{k} {n}' for k, n in r.others.most_common())}")
        for why in r.lost_why[:5]:
            print(f"  {why}")
        out.setdefault(r.platform.lower(), {})["restart"] = {
            "chains": r.chains, "outage_s": r.outage, "answered": r.answered,
            "owed_at_stop": r.owed_at_stop, "delivered_by_new": r.delivered_by_new,
            "resumed": r.resumed, "out_of_order": r.out_of_order, "lost": r.lost,
            "not_answered": dict(r.others)}
    print("  (resumed: running at the stop, answered and shown by the new process)")
    return lost


async def main_async(args: argparse.Namespace) -> int:
    faulty = await workload(args, faulty=True)
    clean = await workload(args, faulty=False)
    restarted = await restarts(args) if args.outages else []
    out = report(faulty, clean, restarted, args)
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
    parser.add_argument("--outages", action=argparse.BooleanOptionalAction, default=True,
                        help="platform outages in the faulty run, and the restart case")
    parser.add_argument("--outage-seconds", default="10,60",
                        help="outage lengths per platform, real seconds, comma-separated")
    parser.add_argument("--delivery-wait", type=float, default=120.0,
                        help="seconds after the last outage for owed answers to land")
    parser.add_argument("--restart-chains", type=int, default=10)
    parser.add_argument("--restart-outage", type=float, default=20.0,
                        help="seconds the platform is down around the restart")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
