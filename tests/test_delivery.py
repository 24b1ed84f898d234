"""An answer is done only when the platform has it: final texts a platform did not take are
owed, kept in the store, and delivered when it answers again — by the same process, or by the
next one after a restart — or, past PONDER_DELIVERY_HOURS, logged and counted, never dropped
in silence. (Through the real Discord and Slack fakes: tests/test_delivery_platforms.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot import delivery, presenter
from bot.events import Question
from bot.metrics import REGISTRY
from bot.service import ChainRequest, Ponder
from bot.store import ChainRecord
from tests.conftest import make_settings, until
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.surfaces import RecordingSurface


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    # The presenter's own retries and the delivery backoff, scaled down; the same paths.
    monkeypatch.setattr(presenter, "FINAL_POST_PAUSES", (0.05, 0.05))
    monkeypatch.setattr(delivery, "FIRST_WAIT", 0.05)


def script(llm: FakeOpenAI) -> None:
    llm.script(Step("Add", "2+2 is 4.", "continue"), Step("Check", "4-2 is 2.", "final_answer"),
               Text("The answer is **4**."))


@asynccontextmanager
async def started(tmp_path: Path, **settings: Any) -> AsyncIterator[Ponder]:
    """A started Ponder (closed after) over a fake model scripted with `script`."""
    async with FakeOpenAI() as llm:
        script(llm)
        ponder = Ponder(make_settings(llm.base_url, tmp_path, min_steps=2, **settings))
        await ponder.start()
        try:
            yield ponder
        finally:
            await ponder.close()


def request() -> ChainRequest:
    return ChainRequest("test", Question("What is 2+2?"), "U1", channel="C1", thread="T1")


def goes_down_before_the_answer(surface: RecordingSurface) -> None:
    """The platform vanishes as the answer is about to be posted, after every step."""
    real_post = surface.post
    gone = False

    async def post(text: str) -> object:
        nonlocal gone
        if text.startswith("**Answer**") and not gone:
            gone = surface.down = True  # once: it is up again when the test says so
        return await real_post(text)

    surface.post = post  # type: ignore[method-assign,assignment]


def undelivered(platform: str) -> float:
    return REGISTRY.get_sample_value("ponder_undelivered_total", {"platform": platform}) or 0.0


async def test_an_answer_owed_through_an_outage_lands_when_the_platform_is_back(
        tmp_path: Path) -> None:
    async with started(tmp_path) as ponder:
        surface = RecordingSurface()
        goes_down_before_the_answer(surface)
        handle = ponder.submit(request(), surface)
        outcome = await handle.wait()
        assert outcome.answer == "The answer is **4**." and outcome.owed
        assert "The answer is" not in surface.text()  # nothing of it got through
        record = await ponder.store.chain(handle.chain_id)
        assert record is not None and record.status == "answered"
        assert record.delivery == "owed" and record.owed
        # The asker is not held while the answer waits for the platform.
        assert ponder.gate.per_user[("test", "U1")] == 0
        surface.down = False
        await until(lambda: "_Thought for" in surface.text())
        assert "The answer is **4**." in surface.text()
        assert "delayed" in surface.text()  # posted late, and says so
        await until(lambda: not ponder.deliveries.owing(handle.chain_id))
        record = await ponder.store.chain(handle.chain_id)
        assert record is not None and record.delivery == "done" and record.owed == []


async def test_a_restart_during_the_outage_delivers_through_the_new_process(
        tmp_path: Path) -> None:
    async with FakeOpenAI() as llm:
        script(llm)
        first = Ponder(make_settings(llm.base_url, tmp_path, min_steps=2))
        await first.start()
        surface = RecordingSurface()
        goes_down_before_the_answer(surface)
        handle = first.submit(request(), surface)
        await handle.wait()
        await first.close()  # SIGTERM during the outage: what is owed stays in the store
        second = Ponder(make_settings(llm.base_url, tmp_path, min_steps=2))
        await second.start()
        surface.down = False

        async def surface_for(record: ChainRecord) -> RecordingSurface:
            return surface

        assert await second.recover("test", surface_for) == []  # nothing left to think about
        await until(lambda: "_Thought for" in surface.text())
        await until(lambda: not second.deliveries.owing(handle.chain_id))
        record = await second.store.chain(handle.chain_id)
        assert record is not None and record.delivery == "done"
        await second.close()


async def test_an_answer_owed_past_the_bound_is_logged_and_counted_not_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAI() as llm:
        script(llm)
        ponder = Ponder(make_settings(llm.base_url, tmp_path, min_steps=2,
                                      delivery_hours=0.3 / 3600))
        await ponder.start()
        surface = RecordingSurface()
        goes_down_before_the_answer(surface)
        before = undelivered("test")
        with caplog.at_level(logging.ERROR, logger="bot.delivery"):
            handle = ponder.submit(request(), surface)
            await handle.wait()
            await until(lambda: not ponder.deliveries.owing(handle.chain_id))
        assert undelivered("test") == before + 1
        assert any("given up" in r.getMessage() for r in caplog.records)
        record = await ponder.store.chain(handle.chain_id)
        assert record is not None and record.delivery == "expired"
        assert any("The answer is **4**." in o["text"] for o in record.owed)  # still kept
        await ponder.close()


async def test_a_surface_gone_for_good_is_given_up_at_once_not_for_hours(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with started(tmp_path, delivery_hours=24) as ponder:
        surface = RecordingSurface()
        surface.for_good = True
        goes_down_before_the_answer(surface)
        before = undelivered("test")
        with caplog.at_level(logging.ERROR, logger="bot.delivery"):
            handle = ponder.submit(request(), surface)
            await handle.wait()
            await until(lambda: not ponder.deliveries.owing(handle.chain_id))
        assert undelivered("test") == before + 1
        record = await ponder.store.chain(handle.chain_id)
        assert record is not None and record.delivery == "expired"
        assert any("The answer is **4**." in o["text"] for o in record.owed)  # still kept


async def test_a_chain_cut_off_while_its_answer_is_posted_keeps_the_answer_owed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown cuts a chain off after its last words' grace; if its answer (already in the
    store) was still being posted, the next process must find it owed, not delivered."""
    from bot import service
    monkeypatch.setattr(service, "LAST_WORDS", 0.3)
    async with started(tmp_path) as ponder:
        surface = RecordingSurface()
        real_post = surface.post
        answering = asyncio.Event()

        async def post(text: str) -> object:
            if text.startswith("**Answer**"):
                answering.set()
                await asyncio.sleep(3600)  # the platform never answers this one
            return await real_post(text)

        surface.post = post  # type: ignore[method-assign,assignment]
        handle = ponder.submit(request(), surface)
        await asyncio.wait_for(answering.wait(), 30)
        # The engine is done (every event recorded: the store has the answer).
        await until(lambda: handle.producer is not None and handle.producer.done())
        await ponder.drain(0)
        record = await ponder.store.chain(handle.chain_id)
        assert record is not None and record.status == "answered"
        assert record.delivery == "owed", record.delivery
        assert any("The answer is **4**." in o["text"] for o in record.owed)


async def test_owed_messages_land_in_order_an_answer_never_above_its_steps(
        tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.01) as llm:
        script(llm)
        ponder = Ponder(make_settings(llm.base_url, tmp_path, min_steps=2))
        await ponder.start()
        surface = RecordingSurface()
        real_post = surface.post
        finals = 0

        async def post(text: str) -> object:
            # Step 2 never gets through (its final text is owed), and the platform is back
            # the moment the presenter gives up on it: before the answer is written.
            nonlocal finals
            tries = len(presenter.FINAL_POST_PAUSES) + 1
            if text.startswith("**Step 2") and finals < tries:
                surface.down = True
                finals += "⏳" not in text
            try:
                return await real_post(text)
            finally:
                if finals == tries:
                    surface.down = False

        surface.post = post  # type: ignore[method-assign,assignment]
        handle = ponder.submit(request(), surface)
        await handle.wait()
        await until(lambda: not ponder.deliveries.owing(handle.chain_id))
        order = [text.split("\n", 1)[0] for text in surface.shown.values()]
        steps = [n for n, head in enumerate(order) if head.startswith("**Step")]
        answer = [n for n, head in enumerate(order) if head.startswith("**Answer")]
        assert len(steps) == 2 and answer and max(steps) < min(answer), order
        await ponder.close()
