"""Whether the model server answers, checked in the background, so that a question asked
while it is down waits visibly (a notice in the thread) instead of failing at once."""

from __future__ import annotations

import asyncio
import logging

from bot.config import Settings
from bot.events import Language
from bot.llm import LLMClient
from bot.metrics import MODEL_UP, QUEUED
from bot.surface import Presenter
from bot.wording import say

log = logging.getLogger(__name__)

DOWN_INTERVAL = 2.0  # while it is down, look again this often: waiting chains go on at once


class ModelHealth:
    def __init__(self, llm: LLMClient, settings: Settings) -> None:
        self.llm = llm
        self.settings = settings
        self.up = asyncio.Event()
        self.up.set()  # optimistic until the first check says otherwise
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="model-health")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            try:
                up = await self.llm.ping()
            except Exception:
                log.exception("model health check failed")
                up = False
            if up != self.up.is_set():
                log.log(logging.INFO if up else logging.WARNING, "model server %s",
                        "answers again" if up else "is not answering")
            MODEL_UP.set(1 if up else 0)
            if up:
                self.up.set()
            else:
                self.up.clear()
            await asyncio.sleep(self.settings.health_interval if up else DOWN_INTERVAL)

    async def wait_visibly(self, presenter: Presenter, language: Language,
                           stop: asyncio.Event) -> None:
        """Wait (up to `PONDER_MODEL_WAIT`) for the server to answer again, saying so in the
        thread, or until the chain is stopped."""
        wait = self.settings.model_wait
        await presenter.notice(say("waiting", language, s=int(wait)), key="model-wait")
        QUEUED.inc()
        up = asyncio.create_task(self.up.wait())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait((up, stopped), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            stopped.cancel()
            QUEUED.dec()
        if self.up.is_set():
            await presenter.notice(say("waited", language), key="model-wait")
        elif not stop.is_set():
            # It stays down: the engine's own attempts end with a readable message.
            log.warning("model server still down after %.0f s; trying anyway", wait)
            await presenter.notice(say("gave_up_waiting", language, s=int(wait)),
                                   key="model-wait")
        else:
            await presenter.notice(say("waiting_stopped", language), key="model-wait")
