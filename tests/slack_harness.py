"""The Slack front door's test harness: the real bolt `AsyncApp` served over HTTP (signed
Events API requests to `/slack/events`), a real `Ponder` service, the fake Slack Web API and the
fake model server. Shared by `test_slack.py`, `test_faults.py` and `bench/faults.py`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from adapters.slack import SlackBot, SlackLimits
from adapters.slack.mrkdwn import to_mrkdwn
from bot.llm import LLMClient
from bot.service import Ponder
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack, Message

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0GENERAL"
ASKER = "UASKER"

# Fast limits: the same code paths as production, with windows short enough for tests.
FAST = SlackLimits(
    update_calls=50, update_window=1, post_calls=50, post_window=1,
    edit_interval=0.05,
    append_calls=120, append_window=1, append_interval=0.05,
    start_calls=120, stop_calls=120, stream_window=1,
    ephemeral_rate=100, ephemeral_per=1, ephemeral_burst=20,
    request_timeout=5,
    connection_retries=1,  # each retry waits slack_sdk's backoff: outage tests would idle
)

_ids = itertools.count(1)


@dataclass
class Harness:
    slack: FakeSlack
    llm: FakeOpenAI
    ponder: Ponder
    bot: SlackBot
    http: aiohttp.ClientSession
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.bot.http_port}/slack/events"

    def ask(self, text: str, *, channel: str = CHANNEL, user: str = ASKER,
            thread_ts: str | None = None, mention: bool = True,
            **fields: Any) -> tuple[Message, dict[str, Any]]:
        """A person writes `text` in Slack; returns the message and the Events API body
        (`fields` are added to the event: a `subtype`, `files`, `user_team`...)."""
        full = f"<@{self.slack.bot_user_id}> {text}" if mention else text
        msg = self.slack.add_user_message(channel, full, user=user, thread_ts=thread_ts)
        event: dict[str, Any] = {
            "type": "app_mention" if mention and not channel.startswith("D") else "message",
            "user": user, "text": full, "ts": msg.ts, "event_ts": msg.ts, "channel": channel,
            "team": self.slack.team_id,
        }
        if channel.startswith("D"):
            event["channel_type"] = "im"
        elif event["type"] == "message":
            event["channel_type"] = "channel"
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        event.update(fields)
        return msg, envelope(self.slack, event)

    async def post(self, body: dict[str, Any], *, retry_num: int | None = None,
                   signature: str | None = None, timestamp: int | None = None) -> int:
        raw = json.dumps(body)
        stamp = str(timestamp if timestamp is not None else int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature or sign(raw, stamp),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        async with self.http.post(self.url, data=raw, headers=headers) as resp:
            await resp.read()
            self.sent.append(body)
            return resp.status

    async def settle(self, seconds: float = 30.0) -> None:
        async with asyncio.timeout(seconds):
            await self.bot.idle()

    def replies(self, thread_ts: str, channel: str = CHANNEL) -> list[Message]:
        return self.slack.thread(channel, thread_ts)


def sign(raw: str, stamp: str, secret: str = SECRET) -> str:
    base = f"v0:{stamp}:{raw}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def envelope(slack: FakeSlack, event: dict[str, Any], event_id: str | None = None
             ) -> dict[str, Any]:
    return {
        "token": "legacy-verification-token",
        "team_id": slack.team_id,
        "api_app_id": "APONDER",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_ids):08d}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": slack.team_id, "user_id": slack.bot_user_id,
                            "is_bot": True, "is_enterprise_install": False}],
    }


async def start_harness(tmp_path: Path, slack: FakeSlack, llm: FakeOpenAI, *,
                        limits: SlackLimits = FAST, streaming: bool = True,
                        retry_base_delay: float | None = None, **settings: Any) -> Harness:
    values: dict[str, Any] = {"min_steps": 3, "max_steps": 6, "max_attempts": 2,
                              "user_rate_per_minute": 100, "user_concurrency": 50}
    values.update(settings)
    cfg = make_settings(
        llm.base_url, tmp_path,
        slack_bot_token=slack.token, slack_signing_secret=SECRET,
        slack_api_url=slack.base_url, **values,
    )
    llm_client = None if retry_base_delay is None else LLMClient(
        cfg, retry_base_delay=retry_base_delay)
    ponder = Ponder(cfg, llm=llm_client)
    await ponder.start()
    # Event ids are remembered in Ponder's store (the production default).
    bot = SlackBot(ponder, cfg, limits=limits, streaming=streaming)
    await bot.start()
    await bot.serve_http(port=0, host="127.0.0.1")
    return Harness(slack, llm, ponder, bot, aiohttp.ClientSession())


async def stop_harness(h: Harness) -> None:
    await h.http.close()
    await h.ponder.drain(0)
    await h.bot.close(grace=5)
    await h.ponder.close()


async def unreachable_model() -> FakeOpenAI:
    """A model server that was there and is gone: its address refuses connections. Never
    started itself; the harness only reads its `base_url`."""
    gone = FakeOpenAI()
    await gone.start()
    base_url = gone.base_url
    await gone.stop()
    llm = FakeOpenAI()
    llm.base_url = base_url
    return llm


def three_steps() -> list[Any]:
    return [Step("Restate", "We need 2+2.", "continue"),
            Step("Add", "2+2 is 4.", "continue"),
            Step("Check", "4-2 is 2, so 4 is right.", "final_answer"),
            Text("**4**")]


def texts_sent(slack: FakeSlack) -> list[str]:
    return [str(c.body.get("text", "")) for c in slack.calls
            if c.method in ("chat.postMessage", "chat.update")]



async def shows_what_was_thought(h: Harness, question: Message) -> None:
    """The thread's replies show exactly the steps and answer the store recorded."""
    key = f"{question.channel}:{question.ts}"
    records = [r for r in await h.ponder.store.chains_with_status("answered") if r.thread == key]
    assert len(records) == 1, f"{len(records)} answered chains in {key}"
    steps = await h.ponder.store.steps(records[0].id)
    replies = h.replies(question.ts, channel=question.channel)
    # A reply per step or, when the channel's posts run short, later steps joining the reply
    # before: every step shown whole, in order, and the answer in a reply of its own.
    assert len(replies) <= len(steps) + 1, [r.text for r in replies]
    shown, at = "\n\n".join(r.text for r in replies[:-1]), 0
    for step in steps:
        heading = f"*Step {step.index} · {to_mrkdwn(step.title)}* · "
        assert shown.startswith(heading, at), (heading, shown[at:])
        end = shown.find("\n\n*Step ", at + 1)
        at = len(shown) if end < 0 else end + 2
        assert shown[:at].rstrip().endswith(to_mrkdwn(step.content)), shown
    assert at == len(shown), shown
    assert replies[-1].text.startswith("*Answer*\n" + to_mrkdwn(records[0].answer or "?"))
    assert "_Thought for " in replies[-1].text
    assert all("⏳" not in r.text for r in replies)
