"""Faults, end to end: every question gets an answer or a clear explanation, whatever breaks.

Through the fakes: model 5xx / 429 / hangs / streams cut at random points; Slack 429 storms and
5xx; a real `python -m bot slack` process killed with SIGKILL or stopped with SIGTERM mid-chain
and started again; per-user limits, allow-lists and hostile questions. After each: nothing
still says "thinking", and the store has no chain left running that nobody is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from bot.service import Ponder
from tests.fakes.openai_server import FAULT_KINDS, FakeOpenAI, Text
from tests.fakes.slack_server import FakeSlack, Message
from tests.slack_harness import (
    CHANNEL,
    SECRET,
    envelope,
    shows_what_was_thought,
    sign,
    start_harness,
    stop_harness,
    three_steps,
)

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

BUSY = ("⏳", "thinking…", "思考中…")


# --- what every fault test checks at the end ------------------------------------------------


def thread_end(slack: FakeSlack, question: Message) -> str:
    """How a question's thread ends for its reader: "answered", "failed", "refused" or what
    it shows instead (which fails the test that asked)."""
    replies = slack.thread(question.channel, question.ts)
    if not replies:
        return "silence"
    shown = "\n".join(r.text for r in replies)
    if "Thought for" in shown:
        return "answered"
    if "⚠️" in shown and "Gave up after" in shown:
        return "failed"
    if replies[-1].text.startswith("🙅 "):
        return "refused"
    return f"unclear: {replies[-1].text[:200]!r}"


def nothing_still_thinking(slack: FakeSlack) -> None:
    """No message, status or reaction anywhere still says Ponder is thinking."""
    for msg in slack.bot_messages():
        assert not any(mark in msg.text for mark in BUSY), msg.text
        assert msg.stream_state in (None, "stopped"), msg.text
        assert all(task.status != "in_progress" for task in msg.tasks.values()), msg.tasks
    last: dict[tuple[str, str], str] = {}
    for channel, thread_ts, status in slack.statuses:
        last[(channel, thread_ts)] = status
    assert all(status == "" for status in last.values()), last
    for msg in slack.messages.values():
        assert "hourglass_flowing_sand" not in msg.reactions, msg.text


async def store_settled(ponder: Ponder) -> list[Any]:
    """Every chain the store knows has finished; returns them all."""
    running = await ponder.store.chains_with_status("running")
    assert running == [], [(r.id, r.question[:40]) for r in running]
    return await ponder.store.chains_with_status(
        "answered", "failed", "cancelled", "interrupted")


# --- the fake model's random faults ---------------------------------------------------------


async def test_the_fake_model_fails_at_random_as_asked() -> None:
    async with FakeOpenAI(fault_rate=1.0, seed=3, hang_seconds=0.5) as fake, \
            aiohttp.ClientSession() as http:
        body = {"model": fake.model, "messages": [{"role": "user", "content": "hi"}],
                "stream": True}
        statuses: list[int] = []
        for _ in range(24):
            try:
                async with http.post(f"{fake.base_url}/chat/completions", json=body,
                                     timeout=aiohttp.ClientTimeout(sock_read=0.2)) as resp:
                    statuses.append(resp.status)
                    raw = await resp.read()
                    assert b"[DONE]" not in raw  # a cut stream never finishes
            except (TimeoutError, aiohttp.ClientPayloadError):
                statuses.append(0)  # hung, or cut mid-body
        assert set(fake.faults) == set(FAULT_KINDS) and sum(fake.faults.values()) == 24
        assert statuses.count(500) == fake.faults["500"]
        assert statuses.count(429) == fake.faults["429"]
        fake.fault_rate = 0.0
        fake.script(Text("scripted"))
        async with http.post(f"{fake.base_url}/chat/completions", json=body) as resp:
            assert resp.status == 200 and b"scripted" in await resp.read()


async def test_a_faulted_request_leaves_its_scripted_reply_for_the_retry() -> None:
    async with FakeOpenAI(fault_rate=1.0, seed=1, fault_kinds=("429",),
                          retry_after=0.25) as fake, aiohttp.ClientSession() as http:
        fake.script(Text("kept"))
        body = {"model": fake.model, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{fake.base_url}/chat/completions", json=body) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "0.25"
        assert fake.pending == 1
        fake.fault_rate = 0.0
        async with http.post(f"{fake.base_url}/chat/completions", json=body) as resp:
            answer = await resp.json()
        assert answer["choices"][0]["message"]["content"] == "kept"


def test_the_fake_model_cli_takes_a_fault_rate() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "tests.fakes.openai_server", "--fault-rate",
                          "2"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--fault-rate is a probability" in out.stderr


# --- model faults through Slack --------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["chat.update", "streaming"])
async def test_model_faults_end_every_chain_answered_or_visibly_failed(
        tmp_path: Path, streaming: bool) -> None:
    """30% of model calls fail (500, 429, hang past the client timeout, stream cut at a random
    point), across 10 chains at once: each ends answered or visibly failed in its thread."""
    async with FakeSlack(streaming=streaming, update_limit=None) as slack, \
            FakeOpenAI(fault_rate=0.3, seed=11, hang_seconds=5, retry_after=0.05,
                       chunk_chars=12, chunk_delay=0.002) as llm:
        h = await start_harness(tmp_path, slack, llm, streaming=streaming, retry_base_delay=0.01,
                                request_timeout=0.4, max_attempts=3, min_steps=3, max_steps=3)
        try:
            questions = []
            for n in range(10):
                question, body = h.ask(f"What is {n} squared?", user=f"U{n:03d}")
                questions.append(question)
                assert await h.post(body) == 200
            await h.settle(40)
            ends = {q.ts: thread_end(slack, q) for q in questions}
            assert set(ends.values()) <= {"answered", "failed"}, ends
            assert list(ends.values()).count("answered") >= 6, ends
            records = {r.thread.split(":")[1]: r for r in await store_settled(h.ponder)}
            for question in questions:
                record = records[question.ts]
                assert record.status == ends[question.ts], (record.status, record.reason)
                if record.status == "failed":
                    assert (record.reason or "").startswith("model_unavailable")
                elif not streaming:
                    await shows_what_was_thought(h, question)  # no half-step left behind
            nothing_still_thinking(slack)
            assert set(llm.faults) == set(FAULT_KINDS), llm.faults  # every kind was met
        finally:
            await stop_harness(h)


# --- Slack faults ---------------------------------------------------------------------------


async def test_a_slack_429_storm_and_5xx_still_land_every_answer(tmp_path: Path) -> None:
    async with FakeSlack(streaming=False, update_limit=None, assistant_status=False) as slack, \
            FakeOpenAI(chunk_delay=0.002) as llm:
        h = await start_harness(tmp_path, slack, llm, min_steps=3, max_steps=3)
        try:
            # A storm: every method that writes meets 429s, then 5xx, some longer than one
            # call's own retries last.
            slack.inject("chat.postMessage", status=429, retry_after=1, times=3)
            slack.inject("chat.postMessage", status=503, times=5)
            slack.inject("chat.update", status=429, retry_after=1, times=6)
            slack.inject("chat.update", status=502, times=5)
            slack.inject("reactions.add", status=500, times=2)
            questions = []
            for n in range(5):
                question, body = h.ask(f"What is {n} cubed?", user=f"U{n:03d}")
                questions.append(question)
                assert await h.post(body) == 200
            await h.settle(60)
            assert slack.count("chat.postMessage", 503) == 5 and slack.rate_limited == 9
            for question in questions:
                assert thread_end(slack, question) == "answered"
                await shows_what_was_thought(h, question)
            await store_settled(h.ponder)
            nothing_still_thinking(slack)
        finally:
            await stop_harness(h)


async def test_a_stream_that_breaks_late_loses_no_step(tmp_path: Path) -> None:
    """The first append fails only after the model has finished a step or two (a slow
    Slack): what the failed append carried is shown by the posts that take over."""
    async with FakeSlack(streaming=True, update_limit=None) as slack, \
            FakeOpenAI() as llm:
        h = await start_harness(tmp_path, slack, llm)
        try:
            def slow_down(call: Any) -> None:
                if call.method == "chat.startStream":
                    slack.latency = 0.3  # from the first append on

            slack.on_call(slow_down)
            slack.inject("chat.appendStream", error="fatal_error", times=100)
            llm.script(*three_steps())
            question, body = h.ask("What is 2+2?")
            await h.post(body)
            await h.settle()
            replies = h.replies(question.ts)
            assert replies[0].stream_state == "stopped"
            shown = "\n".join(r.text for r in replies)
            for part in ("We need 2+2.", "2+2 is 4.", "4-2 is 2", "Thought for"):
                assert part in shown, shown
            nothing_still_thinking(slack)
        finally:
            await stop_harness(h)


async def test_a_final_message_the_platform_refuses_is_posted_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure notice is the last thing a chain says: one refused post must not lose it."""
    from bot import presenter as presenter_module
    from bot.events import ChainFailed
    from bot.presenter import ThreadPresenter
    from tests.surfaces import RecordingSurface

    monkeypatch.setattr(presenter_module, "FINAL_POST_PAUSES", (0.01, 0.01))
    surface = RecordingSurface(fail_posts=2)
    presenter = ThreadPresenter(surface)

    async def events() -> AsyncIterator[Any]:
        yield ChainFailed("model_unavailable", "the model server kept failing", 1.0)

    outcome = await presenter.present(events())
    assert outcome.failure is not None
    assert "⚠️ the model server kept failing" in surface.text()
    # Three refusals in a row: given up, and the chain is not stuck on it.
    surface = RecordingSurface(fail_posts=3)
    await ThreadPresenter(surface).present(events())
    assert surface.text() == ""


# --- a real process, killed and stopped -------------------------------------------------------


async def eventually(check: Callable[[], T | None], seconds: float, what: str,
                     interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy, or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def db_rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the store the way an operator would, beside the running process (WAL)."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []


class PonderProcess:
    """`python -m bot slack --http --port P` as a separate process, as it runs in production."""

    def __init__(self, tmp_path: Path, slack: FakeSlack, llm: FakeOpenAI, **env: str) -> None:
        self.port = free_port()
        self.db = tmp_path / "data" / "ponder.db"
        self.tmp_path = tmp_path
        self.env = {
            "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "SLACK_BOT_TOKEN": slack.token, "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.base_url, "OPENAI_BASE_URL": llm.base_url,
            "PONDER_DB": str(self.db), "PONDER_MIN_STEPS": "4", "PONDER_MAX_STEPS": "4",
            "PONDER_REQUEST_TIMEOUT": "10", "PONDER_LOG_LEVEL": "INFO", **env,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0

    @property
    def log(self) -> Path:
        return self.tmp_path / f"ponder-{self.runs}.log"

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    async def start(self) -> None:
        self.runs += 1
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "slack", "--http", "--port", str(self.port),
                cwd=self.tmp_path, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT)
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(f"ponder exited {self.proc.returncode}:\n"
                                         f"{self.log_tail()}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        return resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            deadline = time.monotonic() + 20
            while not await ready():
                if time.monotonic() > deadline:
                    raise AssertionError(f"ponder never served /healthz:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    async def ask(self, slack: FakeSlack, text: str, user: str = "UASKER") -> Message:
        question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> {text}", user=user)
        body = envelope(slack, {"type": "app_mention", "user": user, "text": question.text,
                                "ts": question.ts, "event_ts": question.ts, "channel": CHANNEL,
                                "team": slack.team_id})
        raw = json.dumps(body)
        stamp = str(int(time.time()))
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{self.port}/slack/events", data=raw,
                timeout=aiohttp.ClientTimeout(total=10),
                headers={"Content-Type": "application/json", "X-Slack-Request-Timestamp": stamp,
                         "X-Slack-Signature": sign(raw, stamp)}) as resp:
            assert resp.status == 200
        return question

    def steps_stored(self) -> int:
        rows = db_rows(self.db, "SELECT COUNT(*) FROM steps")
        return int(rows[0][0]) if rows else 0

    def status(self) -> str | None:
        rows = db_rows(self.db, "SELECT status FROM chains")
        assert len(rows) <= 1, rows
        return rows[0][0] if rows else None

    async def wait(self, seconds: float) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), seconds)
        except TimeoutError:
            raise AssertionError(f"ponder still running after {seconds:g} s:\n"
                                 f"{self.log_tail()}") from None

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def slow_llm() -> AsyncIterator[FakeOpenAI]:
    # About 0.5 s a step: time to kill a chain half-way through.
    async with FakeOpenAI(auto_steps=4, chunk_chars=4, chunk_delay=0.008) as fake:
        yield fake


@pytest.mark.parametrize("assistant_status", [True, False], ids=["status", "reactions"])
async def test_a_process_killed_mid_chain_resumes_it_after_a_restart(
        tmp_path: Path, slow_llm: FakeOpenAI, assistant_status: bool) -> None:
    async with FakeSlack(streaming=False, update_limit=None,
                         assistant_status=assistant_status) as slack:
        ponder = PonderProcess(tmp_path, slack, slow_llm)
        try:
            await ponder.start()
            question = await ponder.ask(slack, "What is 17 times 23?")
            await eventually(lambda: ponder.steps_stored() >= 1, 20, "a first stored step")
            await ponder.kill()  # SIGKILL: no goodbye, no cleanup
            assert ponder.status() == "running"
            died_at = len(slack.thread(CHANNEL, question.ts))
            await ponder.start()
            await eventually(lambda: ponder.status() == "answered", 30, "the resumed answer")
            await eventually(lambda: not any(
                mark in m.text for m in slack.bot_messages() for mark in BUSY) and not any(
                "hourglass_flowing_sand" in m.reactions for m in slack.messages.values()),
                10, "nothing left thinking")
            replies = slack.thread(CHANNEL, question.ts)
            later = "\n".join(r.text for r in replies[died_at:])
            resumed_at = ponder.steps_stored()
            assert "Ponder restarted — picking up again at step" in later, later
            assert "Thought for" in replies[-1].text
            assert resumed_at == 4
            nothing_still_thinking(slack)
            if not assistant_status:
                assert set(question.reactions) == {"white_check_mark"}
        finally:
            await ponder.kill()


async def test_sigterm_mid_chain_exits_in_time_and_the_restart_resumes_it(
        tmp_path: Path, slow_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        ponder = PonderProcess(tmp_path, slack, slow_llm, PONDER_SHUTDOWN_GRACE="0.3")
        try:
            await ponder.start()
            question = await ponder.ask(slack, "What is 17 times 23?")
            await eventually(lambda: ponder.steps_stored() >= 1, 20, "a first stored step")
            assert ponder.proc is not None
            ponder.proc.send_signal(signal.SIGTERM)
            assert await ponder.wait(8) == 0, ponder.log_tail()
            assert ponder.status() == "running"  # left for the next start to resume
            replies = slack.thread(CHANNEL, question.ts)
            assert "Ponder is restarting" in replies[-1].text, [r.text for r in replies]
            nothing_still_thinking(slack)
            await ponder.start()
            await eventually(lambda: ponder.status() == "answered", 30, "the resumed answer")
            await eventually(lambda: "Thought for" in slack.thread(CHANNEL, question.ts)[-1].text,
                             10, "the answer in the thread")
            shown = "\n".join(r.text for r in slack.thread(CHANNEL, question.ts))
            assert "picking up again at step" in shown
            nothing_still_thinking(slack)
        finally:
            await ponder.kill()
