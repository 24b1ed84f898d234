"""The Ponder service: admission limits, Stop, shutdown, restart recovery, model outages."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from pathlib import Path

import pytest

from bot.admission import RATE_WINDOW, SWEEP_FLOOR, Gate
from bot.config import load_settings
from bot.events import Question
from bot.service import ChainHandle, ChainRequest, Ponder, Refused
from bot.store import ChainRecord, StepRecord
from bot.wording import say
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.surfaces import RecordingSurface


def request(text: str = "What is 6 times 7?", asker: str = "U1", thread: str = "T1",
            qid: str | None = None) -> ChainRequest:
    question = Question(text) if qid is None else Question(text, id=qid)
    return ChainRequest("test", question, asker, channel="C1", thread=thread)


def elsewhere(asker: str = "U1") -> ChainRequest:
    """A question in a thread of its own (one thread runs one chain at a time)."""
    return request(asker=asker, thread=uuid.uuid4().hex)


async def started(fake: FakeOpenAI, tmp_path: Path, **overrides: object) -> Ponder:
    ponder = Ponder(make_settings(fake.base_url, tmp_path, **overrides))
    await ponder.start()
    return ponder


async def shows_and_records_the_stop(ponder: Ponder, handle: ChainHandle,
                                     surface: RecordingSurface) -> None:
    outcome = await asyncio.wait_for(handle.wait(), 5)
    assert outcome.failure is not None and outcome.failure.reason == "cancelled"
    assert "⏹️ Stopped after" in surface.text()
    record = await ponder.store.chain(handle.chain_id)
    assert record is not None and record.status == "cancelled"


async def test_a_chain_is_shown_recorded_and_its_answer_becomes_history(tmp_path: Path) -> None:
    async with FakeOpenAI(auto_steps=3) as fake:
        ponder = await started(fake, tmp_path)
        surface = RecordingSurface()
        outcome = await ponder.submit(request(), surface).wait()
        assert outcome.answer == "The answer is 42." and outcome.steps == 3
        # The thread ends with the answer's total-time line.
        assert re.search(r"_Thought for \d+\.\d s · 3 steps_$", surface.text().rstrip())
        record = await ponder.store.chain(outcome_id := next(iter(
            [r.id for r in await ponder.store.chains_with_status("answered")])))
        assert record is not None and record.answer == "The answer is 42."
        assert len(await ponder.store.steps(outcome_id)) == 3
        history = await ponder.history("test", "T1")
        assert [t.answer for t in history] == ["The answer is 42."]
        await ponder.close()


async def test_events_are_logged_once_each_not_once_per_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAI(auto_steps=2, chunk_chars=2) as fake:
        ponder = await started(fake, tmp_path, min_steps=2)
        with caplog.at_level(logging.INFO, logger="bot.service"):
            await ponder.submit(request(), RecordingSurface()).wait()
        await ponder.close()
    events = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=")]
    assert events == ["event=chain_started", "event=step_started", "event=step_finished step=1",
                      "event=step_started", "event=step_finished step=2", "event=final_answer"]


async def test_per_user_concurrency_and_rate_limits_refuse_politely(tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.05) as fake:
        ponder = await started(fake, tmp_path, user_concurrency=2, user_rate_per_minute=3)
        first = ponder.submit(elsewhere(), RecordingSurface())
        ponder.submit(elsewhere(), RecordingSurface())
        with pytest.raises(Refused, match="already have 2 questions"):
            ponder.submit(elsewhere(), RecordingSurface())
        ponder.submit(elsewhere(asker="U2"), RecordingSurface())  # others are not held back
        first.cancel()
        await asyncio.gather(first.task, return_exceptions=True)
        ponder.submit(elsewhere(), RecordingSurface())  # a slot is free again: the 3rd this minute
        for handle in list(ponder.running.values()):
            handle.cancel()
        await asyncio.gather(*(h.task for h in ponder.running.values()), return_exceptions=True)
        with pytest.raises(Refused, match="faster than 3 a minute"):
            ponder.submit(elsewhere(), RecordingSurface())
        await ponder.close()


def test_per_asker_state_stays_small_over_100k_askers() -> None:
    """Each asker ever seen used to keep an entry for good (100k askers held ~100 MB): only
    askers with a chain open or a question inside the rate window are held now."""
    now = [0.0]
    gate = Gate(load_settings(user_rate_per_minute=2), clock=lambda: now[0])
    window = int(RATE_WINDOW / 0.01)  # askers inside the window at any time
    held = 0
    for n in range(100_000):
        now[0] += 0.01
        admission = gate.admit(ChainRequest("slack", Question("2+2?", id=str(n)),
                                            f"U{n}", thread=f"T{n}"), "en")
        if n % 2:
            admission.release()  # its thread could not be opened
        else:
            gate.finished("slack", f"U{n}", admission.take(), str(n))
        held = max(held, len(gate.recent))
    assert gate.per_user == {} and gate.threads == {}
    assert window <= held <= 2 * window + SWEEP_FLOOR
    # What is held still does its work: an asker of the last minute is still counted...
    again = ChainRequest("slack", Question("And 223?"), "U99999")
    gate.admit(again, "en")
    assert gate.refusal(again, "en") == say("too_fast", "en", n=2, s=61)
    # ...and one from long ago asks again as if new.
    assert gate.refusal(ChainRequest("slack", Question("Hi"), "U0"), "en") is None


async def test_an_admitted_question_holds_its_askers_slot_until_it_runs_or_is_released(
        tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.05) as fake:
        ponder = await started(fake, tmp_path, user_concurrency=1)
        admitted = ponder.admit(elsewhere())  # e.g. while a thread is being opened
        with pytest.raises(Refused, match="already have 1 question"):
            ponder.admit(elsewhere())
        admitted.release()
        admitted.release()  # twice is harmless
        again = ponder.admit(elsewhere())
        handle = ponder.submit(elsewhere(), RecordingSurface(), again)
        again.release()  # the slot is the chain's now: this gives nothing back
        with pytest.raises(Refused, match="already have 1 question"):
            ponder.submit(elsewhere(), RecordingSurface())
        handle.cancel()
        await asyncio.gather(handle.task, return_exceptions=True)
        late = ponder.admit(elsewhere())
        await ponder.drain(grace=0)
        with pytest.raises(Refused, match="restarting"):
            ponder.submit(elsewhere(), RecordingSurface(), late)
        assert ponder.refusal(elsewhere()) is not None and not late.open
        await ponder.close()


async def test_one_chain_at_a_time_in_a_thread_on_every_platform(tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.05) as fake:
        ponder = await started(fake, tmp_path, user_concurrency=5)
        first = ponder.submit(request(thread="T7"), RecordingSurface())
        for platform in ("test", "other"):
            busy = ChainRequest(platform, Question("And then?"), "U2", channel="C1",
                                thread="T7")
            if platform == "test":
                with pytest.raises(Refused, match="still on the previous question here"):
                    ponder.admit(busy)
            else:  # the same thread name on another platform is another thread
                ponder.release(ponder.admit(busy))
        held = ponder.admit(request(thread=""))  # a thread not opened yet holds nothing
        held.hold_thread("T8")  # ... until the platform has opened it
        with pytest.raises(Refused, match="still on the previous question"):
            ponder.admit(request(thread="T8"))
        ponder.release(held)
        ponder.release(ponder.admit(request(thread="T8")))
        first.cancel()
        await first.wait()
        ponder.release(ponder.admit(request(thread="T7")))  # free again once it ended
        await ponder.close()


async def test_only_the_asker_follows_up_in_a_ponder_thread(tmp_path: Path) -> None:
    async with FakeOpenAI(auto_steps=1) as fake:
        ponder = await started(fake, tmp_path, min_steps=1)
        await ponder.submit(request(thread="T5"), RecordingSurface()).wait()
        assert await ponder.follow_up(request(thread="T5", asker="U2")) is None
        assert await ponder.follow_up(request(thread="NOT-OURS")) is None
        admission = await ponder.follow_up(request(thread="T5"))
        assert admission is not None
        surface = RecordingSurface()
        outcome = await ponder.submit(request(thread="T5"), surface, admission).wait()
        assert outcome.status == "answered"
        first_request = fake.requests[-2].body["messages"]  # the follow-up knows the thread
        assert any("The answer is 42." in m["content"] for m in first_request)
        await ponder.close()


async def test_stop_cancels_the_chain_and_says_so(tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.03, chunk_chars=2) as fake:
        ponder = await started(fake, tmp_path)
        surface = RecordingSurface()
        handle = ponder.submit(request(), surface)
        await asyncio.sleep(0.5)
        handle.cancel()
        outcome = await handle.wait()
        assert outcome.failure is not None and outcome.failure.reason == "cancelled"
        assert "⏹️ Stopped after" in surface.text()
        assert "⏳" not in surface.text()
        record = await ponder.store.chain(handle.chain_id)
        assert record is not None and record.status == "cancelled"
        await ponder.close()


async def test_stop_pressed_as_thinking_starts_still_ends_the_chain(tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.03) as fake:
        ponder = await started(fake, tmp_path)
        surface = RecordingSurface()
        handle = ponder.submit(request(), surface)
        for _ in range(1000):  # until the engine's task exists, before it has run at all
            if handle.producer is not None:
                break
            await asyncio.sleep(0)
        handle.cancel()
        await shows_and_records_the_stop(ponder, handle, surface)
        await ponder.close()


async def test_shutdown_leaves_the_chain_resumable_and_says_so(tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.03, chunk_chars=2, auto_steps=5) as fake:
        ponder = await started(fake, tmp_path)
        surface = RecordingSurface()
        handle = ponder.submit(request(), surface)
        await asyncio.sleep(0.8)
        await ponder.drain(grace=0.1)
        await asyncio.gather(handle.task, return_exceptions=True)
        restarting = "⏸️ Ponder is restarting — this chain will pick up where it stopped."
        assert restarting in surface.text()
        refusal = ponder.refusal(request())
        assert refusal is not None and "restarting" in refusal
        record = await ponder.store.chain(handle.chain_id)
        assert record is not None and record.status == "running"
        await ponder.close()


async def test_a_chain_left_running_is_resumed_from_its_last_step(tmp_path: Path) -> None:
    async with FakeOpenAI(auto_steps=4) as fake:
        ponder = await started(fake, tmp_path)
        await ponder.store.start_chain(ChainRecord("dead1", "test", "Old question", "chain",
                                                   thread="T9", asker="U1"))
        await ponder.store.add_step("dead1", StepRecord(1, "Step 1", "Already thought.", 1.0))
        await ponder.store.start_chain(ChainRecord("dead2", "test", "Lost thread", "chain",
                                                   thread="GONE", asker="U1"))
        surfaces: dict[str, RecordingSurface] = {}

        async def surface_for(record: ChainRecord) -> RecordingSurface | None:
            if record.thread == "GONE":
                return None
            surfaces[record.id] = RecordingSurface()
            return surfaces[record.id]

        handles = await ponder.recover("test", surface_for)
        assert [h.chain_id for h in handles] == ["dead1"]
        outcome = await handles[0].wait()
        assert outcome.answer == "The answer is 42." and outcome.steps == 4
        shown = surfaces["dead1"].text()
        assert "picking up again at step 2" in shown and "**Step 2" in shown
        assert "**Step 1" not in shown  # the old message stays; nothing is repeated
        first_request = fake.requests[0].body["messages"]
        assert "Already thought." in first_request[2]["content"]
        assert (await ponder.store.chain("dead1")).status == "answered"  # type: ignore[union-attr]
        assert (await ponder.store.chain("dead2")).status == "interrupted"  # type: ignore[union-attr]
        await ponder.close()


async def test_recovery_tidies_by_slot_not_by_reading_rendered_text(tmp_path: Path) -> None:
    """What each message showed is known from its slot: a step the store has as finished gets
    its final text back (the last edit was lost), anything else still "thinking" says it was
    cut short — in the chain's language, whatever the text looks like."""
    async with FakeOpenAI(auto_steps=3) as fake:
        ponder = await started(fake, tmp_path)
        surface = RecordingSurface()
        shown = {0: "**第 1 步 · 重述** ⏳\n我们需要", 1: "**第 2 步** ⏳\n思考中…",
                 2: "⏳ 模型服务器没有响应；最多重试 120 秒。", 3: "某人的消息 ⏳"}
        surface.shown.update(shown)
        await ponder.store.start_chain(ChainRecord(
            "dead", "test", "二加二是多少？", "chain", thread="T3", asker="U1", language="zh",
            handles={"step:1": [0], "step:2": [1], "notice:model-wait": [2]}))
        await ponder.store.add_step("dead", StepRecord(1, "重述", "我们需要算 2+2。", 1.0))

        async def surface_for(record: ChainRecord) -> RecordingSurface:
            return surface

        (handle,) = await ponder.recover("test", surface_for)
        outcome = await handle.wait()
        assert outcome.status == "answered"
        assert surface.edits(0)[0] == "**第 1 步 · 重述** · 1.0 秒\n我们需要算 2+2。"
        assert surface.edits(1)[0] == "**第 2 步**\n_（已中断）_"
        assert surface.edits(2) == []  # a notice is final when posted: nothing to tidy
        assert surface.edits(3) == []  # not one of the chain's messages
        record = await ponder.store.chain("dead")
        assert record is not None
        assert record.handles["settled:step:1"] == [0] and "step:2" in record.handles
        await ponder.close()


async def test_while_the_model_is_down_a_question_waits_visibly(tmp_path: Path) -> None:
    async with FakeOpenAI() as fake:
        port = fake.port
        ponder = await started(fake, tmp_path, model_wait=10, health_interval=0.2)
    # The server is gone now: the health check notices.
    for _ in range(50):
        if not ponder.model_up.is_set():
            break
        await asyncio.sleep(0.1)
    assert not ponder.model_up.is_set()
    surface = RecordingSurface()
    handle = ponder.submit(request(), surface)
    await asyncio.sleep(0.3)
    assert "not answering; retrying for up to 10 s" in surface.text()
    async with FakeOpenAI(port=port) as back:
        back.script(Step("A", "b", "continue"), Step("C", "d", "continue"),
                    Step("E", "f", "final_answer"), Text("Back online."))
        outcome = await asyncio.wait_for(handle.wait(), 20)
    assert outcome.answer == "Back online."
    assert "⏳" not in surface.text() and "answering again" in surface.text()
    await ponder.close()


async def test_model_outage_that_lasts_fails_with_a_readable_message(tmp_path: Path) -> None:
    ponder = Ponder(make_settings("http://127.0.0.1:9/v1", tmp_path, model_wait=0.2,
                                  max_attempts=1, health_interval=0.1))
    await ponder.start()
    await asyncio.sleep(0.3)
    surface = RecordingSurface()
    outcome = await ponder.submit(request(), surface).wait()
    assert outcome.failure is not None and outcome.failure.reason == "model_unavailable"
    assert "no model server answers" in surface.text()
    assert "127.0.0.1:9" not in surface.text()
    record = await ponder.store.chain(request().question.id)
    assert record is None or record.status != "running"
    await ponder.close()


async def test_a_slow_platform_does_not_slow_the_thinking(tmp_path: Path) -> None:
    async with FakeOpenAI(auto_steps=4, chunk_delay=0.005) as fake:
        ponder = await started(fake, tmp_path)
        surface = RecordingSurface(post_delay=0.4)
        handle = ponder.submit(request(), surface)
        outcome = await handle.wait()
        steps = await ponder.store.steps(handle.chain_id)
        await ponder.close()
    assert outcome.answer == "The answer is 42." and outcome.steps == 4
    # Each step took the model's time, not the 0.4 s a post of its message took.
    assert all(step.seconds < 0.35 for step in steps), [s.seconds for s in steps]
    assert "Thought for" in surface.text() and "⏳" not in surface.text()


async def test_stop_while_the_platform_is_slow_still_says_stopped(tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.02) as fake:
        ponder = await started(fake, tmp_path)
        surface = RecordingSurface(post_delay=0.5)
        handle = ponder.submit(request(), surface)
        await asyncio.sleep(0.3)  # the first post is in flight
        handle.cancel()
        outcome = await handle.wait()
        await ponder.close()
    assert outcome.failure is not None and outcome.failure.reason == "cancelled"
    assert "⏹️ Stopped after" in surface.text()


async def test_stop_before_thinking_began_is_shown_and_recorded(tmp_path: Path) -> None:
    ponder = Ponder(make_settings("http://127.0.0.1:9/v1", tmp_path, model_wait=30,
                                  health_interval=0.1))
    await ponder.start()
    for _ in range(50):
        if not ponder.model_up.is_set():
            break
        await asyncio.sleep(0.05)
    surface = RecordingSurface()
    handle = ponder.submit(request(), surface)
    handle.cancel()  # before its task even ran
    await shows_and_records_the_stop(ponder, handle, surface)
    await ponder.close()


async def test_metrics_and_health_are_served(tmp_path: Path) -> None:
    import socket

    import aiohttp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with FakeOpenAI(auto_steps=2) as fake:
        ponder = await started(fake, tmp_path, metrics_port=port)
        await ponder.submit(request(), RecordingSurface()).wait()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                body = await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                health = (resp.status, await resp.json())
        await ponder.close()
    assert 'ponder_chains_finished_total{outcome="answered",platform="test"}' in body
    assert "ponder_step_seconds_bucket" in body and "ponder_model_call_seconds_count" in body
    assert "ponder_chains_running 0.0" in body
    assert health == (200, {"ok": True})
