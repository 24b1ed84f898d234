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
import re
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

from adapters.slack.app import LAST_WORDS
from bot.service import Ponder
from tests.fakes.discord_server import MESSAGE_FLAG_EPHEMERAL, FakeDiscord
from tests.fakes.openai_server import FAULT_KINDS, FakeOpenAI, Step, Text
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
from tests.test_discord import SUMMARY, assert_no_pings
from tests.test_discord import start as discord_start
from tests.test_discord import still_running as discord_still_running
from tests.test_discord import stop as discord_stop

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

BUSY = ("⏳", "thinking…", "思考中…")


# --- what every fault test checks at the end ------------------------------------------------


def thread_end(slack: FakeSlack, question: Message) -> str:
    """How a question's thread ends for its reader: "answered", "failed", "refused" or what
    it shows instead (which fails the test that asked)."""
    replies = slack.thread(question.channel, question.ts)
    if not replies:
        # A refusal is shown to the asker alone (ephemeral), never in the thread.
        private = [e.text for e in slack.ephemerals_to(question.user or "")
                   if e.channel == question.channel]
        return "refused" if private and private[-1].startswith("🙅 ") else "silence"
    shown = "\n".join(r.text for r in replies)
    if "Thought for" in shown:
        return "answered"
    if "⚠️" in shown and "Gave up after" in shown:
        return "failed"
    if replies[-1].text.startswith("🙅 "):
        return "refused"
    return f"unclear: {replies[-1].text[:200]!r}"


def still_thinking(slack: FakeSlack) -> list[str]:
    """Whatever still says Ponder is thinking: a message, a streamed card, a status, an ⏳."""
    busy = []
    for msg in slack.bot_messages():
        if any(mark in msg.text for mark in BUSY) or msg.stream_state == "streaming" or any(
                task.status == "in_progress" for task in msg.tasks.values()):
            busy.append(f"message {msg.ts}: {msg.text[-200:]!r} {msg.stream_state} {msg.tasks}")
    last: dict[tuple[str, str], str] = {}
    for channel, thread_ts, status in slack.statuses:
        last[(channel, thread_ts)] = status
    busy += [f"status of {where}: {status!r}" for where, status in last.items() if status]
    busy += [f"⏳ on {msg.ts}" for msg in slack.messages.values()
             if "hourglass_flowing_sand" in msg.reactions]
    return busy


def nothing_still_thinking(slack: FakeSlack) -> None:
    """No message, status or reaction anywhere still says Ponder is thinking."""
    assert still_thinking(slack) == []


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
            slack.inject("chat.postMessage", status=429, retry_after=1, times=2)
            slack.inject("chat.postMessage", status=503, times=5)
            slack.inject("chat.update", status=429, retry_after=1, times=4)
            slack.inject("chat.update", status=502, times=5)
            slack.inject("reactions.add", status=500, times=2)
            questions = []
            for n in range(5):
                question, body = h.ask(f"What is {n} cubed?", user=f"U{n:03d}")
                questions.append(question)
                assert await h.post(body) == 200
            await h.settle(60)
            assert slack.count("chat.postMessage", 503) == 5 and slack.rate_limited == 6
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
                     interval: float = 0.05, explain: Callable[[], object] | None = None) -> T:
    """Poll `check` until it returns something truthy, or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f": {explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}{seen}")
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
    """`python -m bot …` as a separate process, as it runs in production."""

    argv: tuple[str, ...] = ()

    def __init__(self, tmp_path: Path, llm: FakeOpenAI, **env: str) -> None:
        self.db = tmp_path / "data" / "ponder.db"
        self.tmp_path = tmp_path
        self.env = {
            "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT), "OPENAI_BASE_URL": llm.base_url,
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
                sys.executable, "-m", "bot", *self.argv, cwd=self.tmp_path, env=self.env,
                stdout=out, stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not await self.ready():
            if self.proc.returncode is not None:
                raise AssertionError(f"ponder exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"ponder did not get ready:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def ready(self) -> bool:
        raise NotImplementedError

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


class SlackProcess(PonderProcess):
    """`python -m bot slack --http --port P` against the fake Slack."""

    def __init__(self, tmp_path: Path, slack: FakeSlack, llm: FakeOpenAI, **env: str) -> None:
        super().__init__(tmp_path, llm, SLACK_BOT_TOKEN=slack.token,
                         SLACK_SIGNING_SECRET=SECRET, SLACK_API_URL=slack.base_url, **env)
        self.port = free_port()
        self.argv = ("slack", "--http", "--port", str(self.port))

    async def ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{self.port}/healthz",
                    timeout=aiohttp.ClientTimeout(total=1)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

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

@pytest.fixture
async def slow_llm() -> AsyncIterator[FakeOpenAI]:
    # About 0.5 s a step: time to kill a chain half-way through.
    async with FakeOpenAI(auto_steps=4, chunk_chars=4, chunk_delay=0.008) as fake:
        yield fake


def half_written(slack: FakeSlack) -> bool:
    """A step is on screen, still in progress (a message with ⏳, or a card spinning)."""
    return any("⏳" in m.text or any(t.status == "in_progress" for t in m.tasks.values())
               for m in slack.bot_messages())


@pytest.mark.exits  # real processes killed and restarted: make test-exits
@pytest.mark.parametrize("mode", ["reactions", "streaming"])
async def test_a_process_killed_mid_chain_resumes_it_after_a_restart(
        tmp_path: Path, slow_llm: FakeOpenAI, mode: str) -> None:
    # "reactions": post + chat.update, and an ⏳ reaction on the question (the assistant
    # status is cleared in the SIGTERM test below).
    async with FakeSlack(streaming=mode == "streaming", update_limit=None,
                         assistant_status=mode != "reactions") as slack:
        ponder = SlackProcess(tmp_path, slack, slow_llm)
        try:
            await ponder.start()
            question = await ponder.ask(slack, "What is 17 times 23?")
            await eventually(lambda: ponder.steps_stored() >= 1 and half_written(slack), 20,
                             "a stored step and the next one half-written")
            await ponder.kill()  # SIGKILL: no goodbye, no cleanup
            assert ponder.status() == "running"
            died_at = len(slack.thread(CHANNEL, question.ts))
            left_busy = [m for m in slack.thread(CHANNEL, question.ts) if "⏳" in m.text]
            await ponder.start()
            await eventually(lambda: ponder.status() == "answered", 30, "the resumed answer")
            await eventually(lambda: "Thought for" in slack.thread(CHANNEL, question.ts)[-1].text
                             and not still_thinking(slack), 10, "the answer, and nothing busy",
                             explain=lambda: (still_thinking(slack), [
                                 r.text[:60] for r in slack.thread(CHANNEL, question.ts)]))
            replies = slack.thread(CHANNEL, question.ts)
            before, after = replies[:died_at], replies[died_at:]
            assert after[0].text.startswith("↻ Ponder restarted — picking up again at step ")
            assert ponder.steps_stored() == 4
            if mode == "streaming":  # the dead process's stream was stopped, its card closed
                assert before[0].stream_state == "stopped"
                assert "continued below" in before[0].text
            else:  # what it left half-written shows its stored step, or says it was cut short
                assert left_busy
                for msg in left_busy:
                    assert msg.text.endswith("_(cut short)_") or re.match(
                        r"\*Step \d+ · [^*]+\* · \d+\.\d s\n", msg.text), msg.text
            nothing_still_thinking(slack)
            if mode == "reactions":  # the ✅ follows the answer's last write
                await eventually(lambda: set(question.reactions) == {"white_check_mark"}, 5,
                                 "✅ alone on the question", explain=lambda: question.reactions)
        finally:
            await ponder.kill()


@pytest.mark.exits  # real processes killed and restarted: make test-exits
async def test_sigterm_mid_chain_exits_in_time_and_the_restart_resumes_it(
        tmp_path: Path, slow_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        ponder = SlackProcess(tmp_path, slack, slow_llm, PONDER_SHUTDOWN_GRACE="0.3")
        try:
            await ponder.start()
            question = await ponder.ask(slack, "What is 17 times 23?")
            await eventually(lambda: ponder.steps_stored() >= 1, 20, "a first stored step")
            assert ponder.proc is not None
            ponder.proc.send_signal(signal.SIGTERM)
            began = time.monotonic()
            assert await ponder.wait(8) == 0, ponder.log_tail()
            # In time: the grace, then a few seconds at most for the last words.
            assert time.monotonic() - began < 0.3 + LAST_WORDS
            assert ponder.status() == "running"  # left for the next start to resume
            replies = slack.thread(CHANNEL, question.ts)
            assert "this chain will pick up where it stopped" in replies[-1].text, [
                r.text for r in replies]
            nothing_still_thinking(slack)
            await ponder.start()
            await eventually(lambda: ponder.status() == "answered", 30, "the resumed answer")
            await eventually(lambda: "Thought for" in slack.thread(CHANNEL, question.ts)[-1].text
                             and not still_thinking(slack), 10, "the answer, and nothing busy")
            shown = "\n".join(r.text for r in slack.thread(CHANNEL, question.ts))
            assert "picking up again at step" in shown
            nothing_still_thinking(slack)
        finally:
            await ponder.kill()


# --- limits ------------------------------------------------------------------------------------


async def test_questions_over_the_per_user_limit_get_a_polite_reply_in_thread(
        tmp_path: Path, slow_llm: FakeOpenAI) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, slow_llm, user_concurrency=2, min_steps=2,
                                max_steps=2)
        try:
            asked = []
            for n in range(3):
                question, body = h.ask(f"Question {n}?")
                asked.append(question)
                assert await h.post(body) == 200
            other, body = h.ask("Someone else's question?", user="UOTHER")
            assert await h.post(body) == 200
            await h.settle(30)
            ends = [thread_end(slack, q) for q in [*asked, other]]
            assert ends == ["answered", "answered", "refused", "answered"], ends
            assert h.replies(asked[2].ts) == []
            assert [e.text for e in slack.ephemerals] == [
                "🙅 You already have 2 questions being answered; please wait for one to finish."]
            records = await store_settled(h.ponder)
            assert len(records) == 3 and {r.status for r in records} == {"answered"}
            assert not any(r.thread.endswith(asked[2].ts) for r in records)
            nothing_still_thinking(slack)
            # Once those finished, the same person may ask again.
            again, body = h.ask("Question 3?")
            await h.post(body)
            await h.settle(30)
            assert thread_end(slack, again) == "answered"
        finally:
            await stop_harness(h)


@pytest.mark.parametrize(("setting", "who", "said"), [
    ({"allowed_users": ("UFRIEND",)}, {"user": "USTRANGER"},
     "you are not on the list of people who may use Ponder here"),
    ({"allowed_channels": ("C0ALLOWED",)}, {"channel": "C0ELSEWHERE"},
     "Ponder does not answer in this channel"),
    ({"allowed_teams": ("T0SOMEOTHER",)}, {}, "Ponder is not enabled for this server or workspace"),
], ids=["user", "channel", "team"])
async def test_allow_lists_refuse_with_one_clear_reply(
        tmp_path: Path, fake_llm: FakeOpenAI, setting: dict[str, Any], who: dict[str, str],
        said: str) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm, **setting)
        try:
            question, body = h.ask("What is 2+2?", **who)
            assert await h.post(body) == 200
            await h.settle()
            assert h.replies(question.ts, channel=question.channel) == []
            assert [e.text for e in slack.ephemerals] == [f"🙅 Sorry, {said}."]
            assert fake_llm.requests == []
            assert await store_settled(h.ponder) == []
            nothing_still_thinking(slack)
            if "allowed_teams" not in setting:  # the allowed ones are answered
                fake_llm.script(*three_steps())
                allowed = {k: str(v[0]) for k, v in setting.items()}
                ok, body = h.ask("What is 2+2?", channel=allowed.get("allowed_channels", CHANNEL),
                                 user=allowed.get("allowed_users", "UASKER"))
                await h.post(body)
                await h.settle()
                assert thread_end(slack, ok) == "answered"
        finally:
            await stop_harness(h)


# --- hostile questions -------------------------------------------------------------------------

FENCE_BREAKER = "```python\nprint('never closed')\n~~~\n`` ` ```` **bold _italic"
HOSTILE = {
    # name: (what the person writes after the mention, how it should end)
    "empty": ("", "refused"),
    "only-zero-width": ("\u200b\u200c\u200d\ufeff\u2060", "refused"),
    "50kB": ("Why? " * 10_000, "refused"),
    "control-characters": ("What is 2+2?\x00\x01\x07\x08\x1b[31mred\x1b[0m\x7f\x9b\r\n\t!",
                           "answered"),
    "zero-width-and-rtl": ("\u202eWhat is 2+2?\u202c \u200bab\u200dc \u2066\u05e9\u05dc\u05d5"
                           "\u05dd\u2069 \u200f\u061c", "answered"),
    "code-fences": (FENCE_BREAKER, "answered"),
    "mass-mentions": ("@everyone @here <!channel> <!here> <!everyone> <!subteam^S0TEAM> "
                      "<@U0BOSS> <#C0OTHER> hello all", "answered"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_question_gets_a_clear_reply_and_pings_nobody(
        tmp_path: Path, fake_llm: FakeOpenAI, name: str) -> None:
    text, expected = HOSTILE[name]
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            # A model that repeats the question back (as models do), in every step and answer.
            echo = text[:2000]
            fake_llm.script(Step(echo[:50], echo, "continue"), Step("Again", echo, "continue"),
                            Step("Done", f"{echo}\n{echo}", "final_answer"), Text(echo))
            question, body = h.ask(text)
            assert await h.post(body) == 200
            await h.settle()
            assert thread_end(slack, question) == expected
            replies = h.replies(question.ts)
            if expected == "refused":
                assert replies == [] and fake_llm.requests == []
                (note,) = slack.ephemerals
                assert "/reason" not in note.text  # a Slack reply speaks Slack
            else:
                assert len(fake_llm.requests) == 4
                assert len(replies) == 4 and "Thought for" in replies[-1].text
            for call in slack.calls:
                if call.method not in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
                    continue
                sent = str(call.body.get("text", ""))
                assert call.ok, (call.error, sent[:200])
                for ping in ("<!", "<@", "<#"):  # Slack's mention syntax, unescaped
                    assert ping not in sent, sent
                assert not call.body.get("link_names"), call.body
                assert len(sent) <= 4000
                assert sent.count("```") % 2 == 0, sent  # every message renders on its own
            records = await store_settled(h.ponder)
            assert [r.status for r in records] == (["answered"] if expected == "answered"
                                                   else [])
            nothing_still_thinking(slack)
        finally:
            await stop_harness(h)


async def test_a_fence_the_model_leaves_open_is_closed_before_the_summary() -> None:
    from bot.events import FinalAnswer
    from bot.presenter import ThreadPresenter
    from tests.surfaces import RecordingSurface

    surface = RecordingSurface()

    async def events() -> AsyncIterator[Any]:
        yield FinalAnswer("Run this:\n```python\nprint(1)", 1.0, 2.0, 3)

    await ThreadPresenter(surface).present(events())
    shown = surface.text()
    assert shown.count("```") == 2
    assert shown.index("print(1)") < shown.rindex("```") < shown.index("_Thought for 2.0 s")


# --- Discord ---------------------------------------------------------------------------------


class DiscordProcess(PonderProcess):
    """`python -m bot discord` against the fake Discord (REST and gateway)."""

    argv = ("discord",)

    def __init__(self, tmp_path: Path, discord: FakeDiscord, llm: FakeOpenAI,
                 **env: str) -> None:
        super().__init__(tmp_path, llm, DISCORD_TOKEN=discord.token,
                         DISCORD_API_URL=discord.api_url,
                         DISCORD_GATEWAY_URL=discord.gateway_url,
                         DISCORD_GUILD_IDS=str(discord.guild_id), **env)

    async def ready(self) -> bool:
        return self.log.exists() and "Discord: logged in as" in self.log.read_text(
            errors="replace")


def discord_texts(discord: FakeDiscord, thread_id: int) -> list[str]:
    return [m["content"] for m in discord.channel_messages(thread_id)]


def discord_busy(discord: FakeDiscord) -> list[str]:
    """Messages that still show a step or answer in progress, anywhere."""
    return [m["content"] for m in discord.messages.values()
            if discord_still_running(m["content"])]


class StillThinking(AssertionError):
    """Messages still say Ponder is thinking about a chain that has ended."""


@pytest.mark.exits  # real processes killed and restarted: make test-exits
async def test_a_discord_process_killed_mid_chain_resumes_it_after_a_restart(
        tmp_path: Path, slow_llm: FakeOpenAI) -> None:
    async with FakeDiscord() as discord:
        ponder = DiscordProcess(tmp_path, discord, slow_llm, PONDER_MIN_STEPS="3",
                                PONDER_MAX_STEPS="3")
        try:
            await ponder.start()
            interaction = await discord.slash("reason", question="What is 17 times 23?")
            await discord.wait_for(lambda: ponder.steps_stored() >= 1 and discord_busy(discord)
                                   and discord.threads(), 20)
            await ponder.kill()
            assert ponder.status() == "running"
            thread_id = int(discord.threads()[0]["id"])
            died_at = len(discord_texts(discord, thread_id))
            await ponder.start()
            await discord.wait_for(lambda: ponder.status() == "answered", 30)
            opening = await discord.wait_for(
                lambda: (c := discord.messages[interaction.original_id or 0]["content"])
                and c.rsplit("\n", 1)[-1].startswith("✅") and c, 15)
            texts = discord_texts(discord, thread_id)
            assert texts[died_at].startswith("↻ Ponder restarted — picking up again at step")
            assert texts[-1].startswith("**Answer**") and SUMMARY.search(texts[-1])
            assert f"<#{thread_id}>" in opening
            if discord_busy(discord):
                raise StillThinking(discord_busy(discord))
        finally:
            await ponder.kill()


async def test_model_faults_on_discord_end_every_chain_answered_or_visibly_failed(
        tmp_path: Path) -> None:
    async with FakeDiscord() as discord, \
            FakeOpenAI(fault_rate=0.3, seed=5, hang_seconds=5, retry_after=0.05,
                       chunk_chars=24) as llm:
        h = await discord_start(tmp_path, discord, llm, request_timeout=0.4, max_attempts=3,
                                min_steps=2, max_steps=2, user_concurrency=10,
                                user_rate_per_minute=100)
        try:
            # One channel each: Discord's thread-creation budget is per channel.
            interactions = [await h.ask(f"What is {n} squared?",
                                        channel_id=discord.add_text_channel(f"c{n}"))
                            for n in range(6)]
            ends = []
            for interaction in interactions:
                opening = await h.finished(interaction, 40)
                ends.append(opening.rsplit("\n", 1)[-1][:1])
                texts = h.texts(h.thread_of(interaction))
                assert not any(map(discord_still_running, texts)), texts
                if ends[-1] == "⚠":
                    assert texts[-1].startswith("⚠️ ") and "Gave up after" in texts[-1]
                else:
                    assert texts[-1].startswith("**Answer**") and SUMMARY.search(texts[-1])
            assert set(ends) <= {"✅", "⚠"}, ends
            assert ends.count("✅") >= 3, ends
            records = await store_settled(h.ponder)
            assert len(records) == 6
            assert sum(llm.faults.values()) >= 3, llm.faults
            assert_no_pings(discord)
        finally:
            await discord_stop(h)


def ephemeral_answer(discord: FakeDiscord, interaction: Any) -> str:
    (answer,) = discord.requests_to("POST", rf"^/interactions/{interaction.id}/")
    assert answer.json["type"] == 4
    assert answer.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
    return str(answer.json["data"]["content"])


async def test_discord_refusals_are_ephemeral_and_start_nothing(
        tmp_path: Path, slow_llm: FakeOpenAI) -> None:
    async with FakeDiscord() as discord:
        other_channel = discord.add_text_channel("elsewhere")
        h = await discord_start(tmp_path, discord, slow_llm, user_concurrency=1,
                                allowed_users=(str(discord.alice["id"]),
                                               str(discord.mod["id"])),
                                allowed_channels=(str(discord.text_channel_id),),
                                max_question_chars=4000)
        try:
            running = await h.ask("What is 17 times 23?")
            await discord.wait_for(lambda: h.ponder.running, 10)
            refused = {
                "concurrency": (await h.ask("And another?"),
                                "You already have 1 question being answered"),
                "user": (await discord.slash("reason", question="Me too?", user=discord.bob),
                         "you are not on the list of people who may use Ponder here"),
                "channel": (await discord.slash("reason", question="Here?", user=discord.mod,
                                                channel_id=other_channel),
                            "Ponder does not answer in this channel"),
                "empty": (await discord.slash("reason", question=" \u200b\u200f ",
                                              user=discord.mod),
                          "Please include a question — for example: Is 221 prime?"),
                "50kB": (await discord.slash("reason", question="Why? " * 10_000,
                                             user=discord.mod),
                         "characters long; the limit is 4,000"),
            }
            for name, (interaction, said) in refused.items():
                await discord.wait_for(lambda i=interaction: i.response_type is not None, 10)
                assert said in ephemeral_answer(discord, interaction), name
            assert len(discord.threads()) == 1 and len(await h.ponder.store.chains_with_status(
                "running")) == 1
            assert running.response_type == 5  # the one that runs was deferred, not refused
        finally:
            await h.ponder.drain(0)
            await discord_stop(h)


async def test_discord_teams_allow_list_is_the_guild(tmp_path: Path,
                                                     fake_llm: FakeOpenAI) -> None:
    async with FakeDiscord() as discord:
        h = await discord_start(tmp_path, discord, fake_llm, allowed_teams=("1234",))
        try:
            interaction = await h.ask("Allowed here?")
            await discord.wait_for(lambda: interaction.response_type is not None, 10)
            assert "not enabled for this server" in ephemeral_answer(discord, interaction)
            assert fake_llm.requests == [] and not discord.threads()
        finally:
            await discord_stop(h)


async def test_hostile_questions_on_discord_get_a_clear_reply_and_ping_nobody(
        tmp_path: Path) -> None:
    async with FakeDiscord() as discord, FakeOpenAI(echo=True) as echo_llm:
        h = await discord_start(tmp_path, discord, echo_llm, min_steps=1, max_steps=2,
                                user_concurrency=10)
        try:
            asked = {}
            for name in ("control-characters", "zero-width-and-rtl", "code-fences",
                         "mass-mentions"):
                text = HOSTILE[name][0].replace("<!channel>", "@everyone").replace(
                    "<!here>", "@here")
                asked[name] = await h.ask(text, channel_id=discord.add_text_channel(name))
            for name, interaction in asked.items():
                opening = await h.finished(interaction, 20)
                assert opening.rsplit("\n", 1)[-1].startswith("✅"), (name, opening)
                for shown in [opening, *h.texts(h.thread_of(interaction))]:
                    assert "@everyone" not in shown and "@here" not in shown, shown
                    assert shown.count("```") % 2 == 0, (name, shown)
                    assert len(shown) <= 2000
            assert_no_pings(discord)
            records = await store_settled(h.ponder)
            assert [r.status for r in records] == ["answered"] * 4
            assert any("The question was: " in m["content"] for m in discord.messages.values())
        finally:
            await discord_stop(h)


async def test_a_resumed_chain_asked_inside_a_thread_clears_its_own_question(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    """The ⏳ a dead process left is on the question, not on the thread's first message:
    where the question was is the chain's anchor in the store, and a restart finds it there."""
    from bot.store import ChainRecord

    async with FakeSlack(streaming=False, update_limit=None, assistant_status=False) as slack:
        parent = slack.add_user_message(CHANNEL, "Let's talk numbers", user="UOTHER")
        question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> What is 2+2?",
                                          thread_ts=parent.ts)
        question.reactions["hourglass_flowing_sand"] = {slack.bot_user_id}  # left by the dead
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            await h.ponder.store.start_chain(ChainRecord(
                id="c1", platform="slack", question="What is 2+2?", mode="chain",
                workspace=slack.team_id, channel=CHANNEL, thread=f"{CHANNEL}:{parent.ts}",
                asker="UASKER", anchor={"message_ts": question.ts}))
            fake_llm.script(*three_steps())
            (handle,) = await h.bot.recover()
            await h.settle()
            assert (await handle.wait()).answer == "**4**"
            assert set(question.reactions) == {"white_check_mark"}
            assert parent.reactions == {}
            nothing_still_thinking(slack)
        finally:
            await stop_harness(h)


async def test_a_restart_tidies_a_message_posted_just_before_the_crash(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    """A process killed between posting a message and recording its handle: the message is
    still found (the bot's, in the thread, after the chain's first one) and tidied."""
    from bot.store import ChainRecord, StepRecord

    async with FakeSlack(streaming=False, update_limit=None) as slack:
        question = slack.add_user_message(CHANNEL, f"<@{slack.bot_user_id}> What is 2+2?")
        # A long thread, read a reply at a time: the tidy-up starts at the chain's first
        # message and pages through the rest.
        slack.replies_page = 1
        for n in range(3):
            slack.add_user_message(CHANNEL, f"Earlier talk {n}", user="UOTHER",
                                   thread_ts=question.ts)
        mine = []
        for text in ("*Step 1 · Restate* ⏳\nWe need", "*Step 2* ⏳\nthinking…"):
            msg = Message(CHANNEL, slack.next_ts(), question.ts, text, bot_id=slack.bot_id,
                          texts=[text])
            slack.messages[(CHANNEL, msg.ts)] = msg
            mine.append(msg)
        other = slack.add_user_message(CHANNEL, "I am waiting ⏳", user="UOTHER",
                                       thread_ts=question.ts)
        h = await start_harness(tmp_path, slack, fake_llm)
        try:
            store = h.ponder.store
            await store.start_chain(ChainRecord(
                id="c1", platform="slack", question="What is 2+2?", mode="chain",
                workspace=slack.team_id, channel=CHANNEL, thread=f"{CHANNEL}:{question.ts}",
                asker="UASKER", handles={"step:1": [mine[0].ts]}))  # the 2nd never recorded
            await store.add_step("c1", StepRecord(1, "Restate", "We need 2+2.", 1.0))
            fake_llm.script(Step("Add", "2+2 is 4.", "continue"),
                            Step("Check", "4-2 is 2.", "final_answer"), Text("4"))
            (handle,) = await h.bot.recover()
            await h.settle()
            assert (await handle.wait()).answer == "4"
            # Step 1 was stored: its message gets its whole text; step 2 was cut short.
            assert mine[0].text == "*Step 1 · Restate* · 1.0 s\nWe need 2+2."
            assert mine[1].text == "*Step 2*\n_(cut short)_"
            assert other.text == "I am waiting ⏳"  # a person's message is not Ponder's to edit
            nothing_still_thinking(slack)
            record = await store.chain("c1")
            assert record is not None and record.status == "answered"
            # The old handles are kept, marked as tidied, beside the resumed run's own.
            assert record.handles["settled:step:1"] == [mine[0].ts]
            assert "step:2" in record.handles and "answer" in record.handles
        finally:
            await stop_harness(h)
