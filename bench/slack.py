"""Slack benchmark: 50 chains at once in one workspace, under Slack's shared budgets.

Run: `.venv/bin/python -m bench.slack [--chains 50] [--steps 3] [--scale 10] [--stream]`

Everything runs for real except Slack and the model: the bolt app receives signed Events API
requests, a `Ponder` service runs the chains, and `SlackBot` writes to the fake Slack Web API
(`tests/fakes/slack_server.py`), which enforces Tier 3 for `chat.update` — 50 calls per minute
for the whole workspace, answered 429 beyond that.

Time is compressed by `--scale` (default 10: Slack's 60-second window lasts 6 s here, model steps
are 10× faster, Ponder's budgets are scaled the same way), so the run takes about a minute
instead of ten. All figures below are converted back to Slack time:

- `chat.update` per minute: the most calls Slack accepted in any 60-second window (target ≤ 50),
  and the average over the run;
- 429s: every rate-limited answer from the fake Slack, of any method (target 0);
- last token -> final update: for every step and answer, the seconds from the model's last
  token (the engine's `step_finished` / `final_answer`) to the Slack call that wrote that
  message's final text (median, p90, max).

With `--stream` the workspace offers Slack's streaming methods; the figures then also count
`chat.appendStream` and streams opened.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from adapters.slack import SlackBot, SlackLimits
from adapters.slack.inbound import MemorySeenEvents
from bot.config import load_settings
from bot.events import ChainStarted, Event, FinalAnswer, Question, StepFinished
from bot.service import Ponder
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import Call, FakeSlack, Message

SECRET = "bench-signing-secret"
CHANNEL = "C0BENCH"
SLACK_MINUTE = 60.0


def scaled_limits(scale: float) -> SlackLimits:
    """Production limits with every window divided by `scale` (rates per Slack-minute kept)."""
    base = SlackLimits()
    return SlackLimits(
        update_rate=base.update_rate, update_per=base.update_per / scale,
        update_burst=base.update_burst,
        post_rate=base.post_rate, post_per=base.post_per / scale, post_burst=base.post_burst,
        edit_interval=base.edit_interval / scale,
        append_rate=base.append_rate, append_per=base.append_per / scale,
        append_burst=base.append_burst, append_interval=base.append_interval / scale,
        stream_starts=base.stream_starts, stream_per=base.stream_per / scale,
        stream_burst=base.stream_burst, stream_max_age=base.stream_max_age / scale,
        request_timeout=base.request_timeout,
    )


def sign(raw: str, stamp: str) -> str:
    digest = hmac.new(SECRET.encode(), f"v0:{stamp}:{raw}".encode(), hashlib.sha256)
    return "v0=" + digest.hexdigest()


class Clock:
    """When the engine saw each step's last token: (question, step index or 0) -> time."""

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


def final_write_delays(slack: FakeSlack, questions: dict[str, str], clock: Clock,
                       scale: float) -> list[float]:
    """Seconds (Slack time) from each step's last token to the call that wrote its last text."""
    delays: list[float] = []
    for text, thread_ts in questions.items():
        for message in slack.thread(CHANNEL, thread_ts):
            final = message.texts[-1] if message.texts else ""
            key: tuple[str, int] | None = None
            if message.stream_state is not None:
                key = (text, 0) if "Thought for" in final else None
            elif final.startswith("*Step "):
                number = final[len("*Step "):].split(" ", 1)[0].rstrip("*")
                key = (text, int(number)) if number.isdigit() else None
            elif final.startswith("*Answer*"):
                key = (text, 0)
            if key is None or key not in clock.finished:
                continue
            wrote = [c.at for c in slack.calls if c.ok and _wrote(c, message, final)]
            if wrote:
                delays.append(max(0.0, min(wrote) - clock.finished[key]) * scale)
    return delays


def _wrote(call: Call, message: Message, final: str) -> bool:
    """Is `call` the one that made `message` show `final`?"""
    body = call.body
    if body.get("channel") != message.channel:
        return False
    if message.stream_state is not None:
        return call.method == "chat.stopStream" and body.get("ts") == message.ts
    if call.method == "chat.update":
        return body.get("ts") == message.ts and body.get("text") == final
    if call.method == "chat.postMessage":
        return call.response.get("ts") == message.ts and body.get("text") == final
    return False


def busiest_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = args.scale
    limits = scaled_limits(scale)
    window = SLACK_MINUTE / scale
    # A 7B model on a GPU: ~40 tokens/s, a step of ~60 tokens in ~1.5 s (then scaled).
    chunk_delay = 0.1 / scale
    async with FakeSlack(streaming=args.stream, update_limit=(50, window)) as slack, \
            FakeOpenAI(auto_steps=args.steps, chunk_chars=16, chunk_delay=chunk_delay) as llm:
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
            bot = SlackBot(ponder, settings, limits=limits, streaming=args.stream,
                           seen=MemorySeenEvents())
            await bot.start()
            await bot.serve_http(port=0, host="127.0.0.1")
            url = f"http://127.0.0.1:{bot.http_port}/slack/events"
            questions: dict[str, str] = {}
            try:
                async with aiohttp.ClientSession() as http:
                    began = time.monotonic()
                    await asyncio.gather(*(
                        mention(http, url, slack, n, questions) for n in range(args.chains)
                    ))
                    async with asyncio.timeout(args.timeout):
                        await bot.idle()
                    took = time.monotonic() - began
            finally:
                await ponder.drain(0)
                await bot.close(grace=5)
                await ponder.close()

    updates = [c.at for c in slack.calls if c.method == "chat.update" and c.ok]
    answered = sum(
        1 for ts in questions.values()
        if any("Thought for" in m.text for m in slack.thread(CHANNEL, ts))
    )
    delays = final_write_delays(slack, questions, clock, scale)
    slack_minutes = took * scale / SLACK_MINUTE
    result = {
        "chains": args.chains,
        "answered": answered,
        "slack_minutes": round(slack_minutes, 2),
        "chat_update_busiest_minute": busiest_window(updates, window),
        "chat_update_per_minute_avg": round(len(updates) / slack_minutes, 1),
        "chat_update_calls": len(updates),
        "chat_postMessage_calls": slack.count("chat.postMessage"),
        "rate_limited_429": slack.rate_limited,
        "streams_opened": slack.count("chat.startStream", 200),
        "chat_appendStream_calls": slack.count("chat.appendStream"),
        "final_write_delay_s": {
            "n": len(delays),
            "median": round(statistics.median(delays), 1) if delays else None,
            "p90": round(_quantile(delays, 0.9), 1) if delays else None,
            "max": round(max(delays), 1) if delays else None,
        },
    }
    return result


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def mention(http: aiohttp.ClientSession, url: str, slack: FakeSlack, n: int,
                  questions: dict[str, str]) -> None:
    text = f"Question {n}: what is {n} squared?"
    msg = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> {text}", user=f"U{n:05d}")
    questions[text] = msg.ts
    body = {
        "team_id": slack.team_id, "api_app_id": "APONDER", "type": "event_callback",
        "event_id": f"EvBench{n:05d}", "event_time": int(time.time()),
        "event": {"type": "app_mention", "user": f"U{n:05d}", "text": msg.text, "ts": msg.ts,
                  "event_ts": msg.ts, "channel": CHANNEL, "team": slack.team_id},
    }
    raw = json.dumps(body)
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": stamp,
               "X-Slack-Signature": sign(raw, stamp)}
    async with http.post(url, data=raw, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"event {n} answered HTTP {resp.status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--scale", type=float, default=10.0,
                        help="time compression (Slack seconds per bench second)")
    parser.add_argument("--stream", action="store_true",
                        help="the workspace offers chat.startStream/appendStream/stopStream")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    d = result["final_write_delay_s"]
    how = "streaming" if args.stream else "chat.update"
    print(f"{result['chains']} chains in one workspace ({how}),"
          f" {result['answered']} answered in {result['slack_minutes']} Slack-minutes"
          f" (time scale {args.scale:g}×)")
    print(f"chat.update per minute: busiest {result['chat_update_busiest_minute']}"
          f" (target ≤ 50), average {result['chat_update_per_minute_avg']}"
          f" · {result['chat_update_calls']} updates, {result['chat_postMessage_calls']} posts")
    print(f"429s: {result['rate_limited_429']} (target 0)")
    if args.stream:
        print(f"streams opened: {result['streams_opened']},"
              f" appendStream calls: {result['chat_appendStream_calls']}")
    print(f"last token -> final update: median {d['median']} s, p90 {d['p90']} s,"
          f" max {d['max']} s over {d['n']} messages (Slack time)")
    print(json.dumps(result))
    ok = (result["answered"] == result["chains"] and result["rate_limited_429"] == 0
          and result["chat_update_busiest_minute"] <= 50)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
