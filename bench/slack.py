"""Slack benchmark: many chains at once in one workspace, under Slack's published limits.

Run: `.venv/bin/python -m bench.slack [--only NAME] [--scale 10] [--steps 3]
[--answer-chars 2000] [--json]`

Everything runs for real except Slack and the model: the bolt app receives signed Events API
requests, a `Ponder` service runs the chains, and `SlackBot` writes to the fake Slack Web API
(`tests/fakes/slack_server.py`) with Slack's published limits applied per method, in sliding
windows: `chat.update` 50 a minute for the whole workspace, `chat.postMessage` about one a
second per channel (at most 3 in any 3 s), `chat.startStream` / `chat.stopStream` 20 a minute
and `chat.appendStream` 100 a minute for the workspace. Beyond them it answers 429.

The scenarios (`--only` picks some, by name):

- `alone`: one chain, nothing else in the workspace;
- `one-channel`: 20 mentions at once in one channel;
- `five-channels`: 50 mentions at once, spread over five channels;

each without streaming (post + `chat.update`) and with Slack's streaming methods offered
(`…-stream`). Each chain has `--steps` steps and a final answer of about `--answer-chars`
characters, streamed by the model at about 40 tokens a second.

Time is compressed by `--scale` (default 10: Slack's 60-second window lasts 6 s here, the
model is 10× faster, Ponder's own limits are scaled the same way). Every figure is in Slack
time:

- answers complete: the answer's message shows the whole answer and its summary line; every
  step shown: each step's title and text, finished, however many replies carry them;
- 429s: every rate-limited answer from the fake Slack, of any method (target 0);
- answer visible: from the model's last token of the answer (the engine's `final_answer`) to the
  Slack call after which the whole answer was on screen (median, p90, max);
- step final: the same for each step's final text (its time, no ⏳);
- `chat.update` busiest minute, posts, streams opened (and chains that posted instead).

Targets (the exit status says whether they were met): every answer complete, every step
shown and 0 429s everywhere; in one channel, answers visible within 10 s median and 30 s at
most, with and without streaming; one chain alone within 1.2 s without streaming.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from adapters.slack import SlackBot, SlackLimits
from adapters.slack.inbound import MemorySeenEvents
from adapters.slack.mrkdwn import escape, to_mrkdwn
from bot.config import load_settings
from bot.events import ChainStarted, Event, FinalAnswer, Question, StepFinished
from bot.service import Ponder
from tests.fakes.openai_server import FakeOpenAI, Text
from tests.fakes.slack_server import FakeSlack, Message

SECRET = "bench-signing-secret"
_STEP_HEAD = re.compile(r"^(\*Step (\d+) · [^\n]*\* · )", re.MULTILINE)
SLACK_MINUTE = 60.0


@dataclass(frozen=True)
class Scenario:
    name: str
    chains: int
    channels: int
    stream: bool
    # Targets for the answers' delay (Slack seconds); None: only completeness and 429s count.
    median_target: float | None = None
    max_target: float | None = None


SCENARIOS = (
    Scenario("alone", 1, 1, False, max_target=1.2),
    Scenario("alone-stream", 1, 1, True),
    Scenario("one-channel", 20, 1, False, median_target=10.0, max_target=30.0),
    Scenario("one-channel-stream", 20, 1, True, median_target=10.0, max_target=30.0),
    Scenario("five-channels", 50, 5, False),
    Scenario("five-channels-stream", 50, 5, True),
)


def scaled_limits(scale: float) -> SlackLimits:
    """Production limits with every span of time divided by `scale` (counts kept)."""
    base = SlackLimits()
    spans = {f.name: getattr(base, f.name) / scale for f in dataclasses.fields(base)
             if f.name.endswith(("_window", "_per", "_interval", "_max_age", "_wait"))}
    return dataclasses.replace(base, **spans)


def answer_text(chars: int) -> str:
    """A long final answer in plain prose (shown the same in mrkdwn and in a stream)."""
    sentences = [f"Point {n}: the square of a number is that number times itself, and the "
                 f"check by division gives the number back." for n in range(1, 200)]
    out, size = [], 0
    for n, sentence in enumerate(sentences):
        if size >= chars:
            break
        out.append(sentence + ("\n\n" if n % 4 == 3 else " "))
        size += len(out[-1])
    return "".join(out).strip()


def sign(raw: str, stamp: str) -> str:
    digest = hmac.new(SECRET.encode(), f"v0:{stamp}:{raw}".encode(), hashlib.sha256)
    return "v0=" + digest.hexdigest()


class Clock:
    """When the engine saw each step's and each answer's last token: (question, step index,
    or 0 for the answer) -> time."""

    def __init__(self) -> None:
        self.finished: dict[tuple[str, int], float] = {}

    def wrap(self, ponder: Ponder) -> None:
        run = ponder.engine.run

        async def timed(question: Question) -> AsyncIterator[Event]:
            text = question.text
            async for event in run(question):
                now = time.monotonic()
                match event:
                    case ChainStarted(question=q):
                        text = q
                    case StepFinished(index=i):
                        self.finished[(text, i)] = now
                    case FinalAnswer():
                        self.finished[(text, 0)] = now
                yield event

        ponder.engine.run = timed  # type: ignore[method-assign]


def visible_at(slack: FakeSlack, message: Message, wanted: list[str]) -> float | None:
    """When the call that first made `message` show every string of `wanted` was answered."""
    shown = ""
    for call in slack.calls:
        if not call.ok or call.body.get("channel") != message.channel:
            continue
        if call.method in ("chat.postMessage", "chat.startStream"):
            if call.response.get("ts") != message.ts:
                continue
        elif call.method in ("chat.update", "chat.appendStream", "chat.stopStream"):
            if call.body.get("ts") != message.ts:
                continue
        else:
            continue
        if call.method in ("chat.postMessage", "chat.update"):
            shown = str(call.body.get("text") or "")
        else:  # a stream's text grows by each call's markdown
            shown += "".join(str(c.get("text", "")) for c in call.body.get("chunks") or []
                             if isinstance(c, dict) and c.get("type") == "markdown_text")
            shown += str(call.body.get("markdown_text") or "")
        if all(w in shown for w in wanted):
            return call.at
    return None


@dataclass
class Delays:
    answers: list[float]
    steps: list[float]
    complete: int  # answers shown whole, with their summary line
    steps_shown: int  # chains whose every step is shown finished, title and text


def delays(slack: FakeSlack, questions: dict[str, tuple[str, str]], clock: Clock,
           answer: str, steps_asked: int, scale: float) -> Delays:
    """Seconds (Slack time) from each last token to the text being on screen."""
    answers: list[float] = []
    steps: list[float] = []
    complete = steps_shown = 0
    for text, (channel, thread_ts) in questions.items():
        replies = slack.thread(channel, thread_ts)
        done = clock.finished.get((text, 0))
        steps_shown += all_steps_shown(replies, steps_asked)
        for message in replies:
            streamed = message.stream_state is not None
            body = escape(answer) if streamed else to_mrkdwn(answer)
            if body in message.text and "Thought for" in message.text:
                complete += 1
                at = visible_at(slack, message, [body, "Thought for"])
                if at is not None and done is not None:
                    answers.append(max(0.0, at - done) * scale)
            if streamed:
                continue  # a stream's steps are cards in the same message
            # A reply may carry several steps (under load): each one's last token counts. A
            # finished step's heading ends with its time, a running one's with ⏳.
            for head in _STEP_HEAD.findall(message.text):
                key = (text, int(head[1]))
                at = visible_at(slack, message, [head[0]])
                if at is not None and key in clock.finished:
                    steps.append(max(0.0, at - clock.finished[key]) * scale)
    return Delays(answers, steps, complete, steps_shown)


def all_steps_shown(replies: list[Message], steps: int) -> bool:
    """Every step's title and text on screen, finished (however many replies carry them),
    and nothing left saying ⏳."""
    shown = "\n".join(m.text for m in replies)
    cards = {id_: task.status for m in replies for id_, task in m.tasks.items()}
    return "⏳" not in shown and all(
        f"Thinking about part {i} of the problem." in shown
        and (f"*Step {i} · Step {i}* · " in shown or cards.get(f"step-{i}") == "complete")
        for i in range(1, steps + 1))


def busiest_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "p90": None, "max": None}
    ordered = sorted(values)
    return {"n": len(values), "median": round(statistics.median(values), 1),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
            "max": round(ordered[-1], 1)}


async def run(scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    scale = args.scale
    limits = scaled_limits(scale)
    # A 7B model on a GPU: ~40 tokens (~160 characters) a second per chain.
    chunk_delay = 0.1 / scale
    answer = answer_text(args.answer_chars)
    channels = [f"C0BENCH{n}" for n in range(scenario.channels)]
    async with FakeSlack(streaming=scenario.stream, update_limit=None) as slack, \
            FakeOpenAI(auto_steps=args.steps, chunk_chars=16, chunk_delay=chunk_delay,
                       record=False) as llm:
        slack.published_limits(scale)
        llm.answer("Question", Text(answer))
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(
                openai_base_url=llm.base_url, db=Path(tmp) / "bench.db",
                min_steps=args.steps, max_steps=args.steps,
                user_concurrency=2, user_rate_per_minute=100,
                slack_bot_token=slack.token, slack_signing_secret=SECRET,
                slack_api_url=slack.base_url,
            )
            ponder = Ponder(settings)
            await ponder.start()
            clock = Clock()
            clock.wrap(ponder)
            bot = SlackBot(ponder, settings, limits=limits, streaming=scenario.stream,
                           seen=MemorySeenEvents())
            await bot.start()
            await bot.serve_http(port=0, host="127.0.0.1")
            url = f"http://127.0.0.1:{bot.http_port}/slack/events"
            questions: dict[str, tuple[str, str]] = {}
            try:
                async with aiohttp.ClientSession() as http:
                    began = time.monotonic()
                    await asyncio.gather(*(
                        mention(http, url, slack, n, channels[n % len(channels)], questions)
                        for n in range(scenario.chains)))
                    async with asyncio.timeout(args.timeout):
                        await bot.idle()
                    took = time.monotonic() - began
            finally:
                await ponder.drain(0)
                await bot.close(grace=5)
                await ponder.close()

    updates = [c.at for c in slack.calls if c.method == "chat.update" and c.ok]
    measured = delays(slack, questions, clock, answer, args.steps, scale)
    streams = slack.count("chat.startStream", 200)
    return {
        "scenario": scenario.name,
        "chains": scenario.chains,
        "channels": scenario.channels,
        "streaming": scenario.stream,
        "answers_complete": measured.complete,
        "steps_shown": measured.steps_shown,
        "slack_minutes": round(took * scale / SLACK_MINUTE, 2),
        "rate_limited_429": slack.rate_limited,
        "answer_visible_s": summary(measured.answers),
        "step_final_s": summary(measured.steps),
        "chat_update_calls": len(updates),
        "chat_update_busiest_minute": busiest_window(updates, SLACK_MINUTE / scale),
        "chat_postMessage_calls": slack.count("chat.postMessage", 200),
        "streams_opened": streams,
        "chat_appendStream_calls": slack.count("chat.appendStream", 200),
    }


async def mention(http: aiohttp.ClientSession, url: str, slack: FakeSlack, n: int,
                  channel: str, questions: dict[str, tuple[str, str]]) -> None:
    text = f"Question {n}: what is {n} squared?"
    msg = slack.add_user_message(channel, f"<@{slack.bot_user_id}> {text}", user=f"U{n:05d}")
    questions[text] = (channel, msg.ts)
    body = {
        "team_id": slack.team_id, "api_app_id": "APONDER", "type": "event_callback",
        "event_id": f"EvBench{n:05d}", "event_time": int(time.time()),
        "event": {"type": "app_mention", "user": f"U{n:05d}", "text": msg.text, "ts": msg.ts,
                  "event_ts": msg.ts, "channel": channel, "team": slack.team_id},
    }
    raw = json.dumps(body)
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": stamp,
               "X-Slack-Signature": sign(raw, stamp)}
    async with http.post(url, data=raw, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"event {n} answered HTTP {resp.status}")


def met(scenario: Scenario, result: dict[str, Any]) -> list[str]:
    """What a result misses of the targets (empty: all met)."""
    misses = []
    if result["answers_complete"] != scenario.chains:
        misses.append(f"{result['answers_complete']}/{scenario.chains} answers complete")
    if result["steps_shown"] != scenario.chains:
        misses.append(f"{result['steps_shown']}/{scenario.chains} chains show every step")
    if result["rate_limited_429"]:
        misses.append(f"{result['rate_limited_429']} 429s")
    d = result["answer_visible_s"]
    if scenario.median_target is not None and (d["median"] is None
                                               or d["median"] > scenario.median_target):
        misses.append(f"median {d['median']} s > {scenario.median_target:g} s")
    if scenario.max_target is not None and (d["max"] is None
                                            or d["max"] > scenario.max_target):
        misses.append(f"max {d['max']} s > {scenario.max_target:g} s")
    return misses


def report(scenario: Scenario, result: dict[str, Any], misses: list[str]) -> str:
    a, s = result["answer_visible_s"], result["step_final_s"]
    how = "streaming offered" if scenario.stream else "post + chat.update"
    lines = [
        f"{scenario.name}: {scenario.chains} chains in {scenario.channels} channel(s), {how};"
        f" {result['answers_complete']} answers complete, {result['steps_shown']} with every"
        f" step shown, in {result['slack_minutes']} Slack-minutes",
        f"  answer visible after last token: median {a['median']} s, p90 {a['p90']} s,"
        f" max {a['max']} s (n={a['n']}) · step final: median {s['median']} s,"
        f" max {s['max']} s (n={s['n']})",
        f"  429s: {result['rate_limited_429']} · chat.update {result['chat_update_calls']}"
        f" (busiest minute {result['chat_update_busiest_minute']}) · posts"
        f" {result['chat_postMessage_calls']}"
        + (f" · streams opened {result['streams_opened']}, appends"
           f" {result['chat_appendStream_calls']}" if scenario.stream else ""),
        "  targets: " + ("met" if not misses else "MISSED: " + "; ".join(misses)),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        choices=[s.name for s in SCENARIOS],
                        help="run only this scenario (may be repeated)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--answer-chars", type=int, default=2000)
    parser.add_argument("--scale", type=float, default=10.0,
                        help="time compression (Slack seconds per bench second)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", action="store_true", help="one JSON line per scenario")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    ok = True
    print(f"time scale {args.scale:g}×; {args.steps} steps and a ~{args.answer_chars}-character"
          " answer per chain; Slack's published limits, 429 beyond them", flush=True)
    for scenario in chosen:
        result = asyncio.run(run(scenario, args))
        misses = met(scenario, result)
        ok = ok and not misses
        print(json.dumps(result) if args.json else report(scenario, result, misses),
              flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
