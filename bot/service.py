"""Ponder as a service for the front doors: admit a question, run it, show it, record it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.config import Settings
from bot.engine import Engine
from bot.events import ChainFailed, Event, FinalAnswer, Question, StepFinished, Turn
from bot.llm import LLMClient
from bot.presenter import Outcome, Surface, ThreadPresenter
from bot.store import ChainRecord, StepRecord, Store

log = logging.getLogger(__name__)


class Refused(Exception):
    """A question Ponder will not take; `message` is the short, polite reason to show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ChainRequest:
    platform: str
    question: Question
    asker: str
    channel: str = ""
    thread: str = ""
    workspace: str = ""


class ChainHandle:
    """A running chain. `cancel()` is the Stop button: the thread shows it was stopped."""

    def __init__(self, request: ChainRequest, task: asyncio.Task[Outcome]) -> None:
        self.request = request
        self.chain_id = request.question.id
        self.task = task
        self.stopped_by: str | None = None

    def cancel(self, by: str = "user") -> None:
        if not self.task.done():
            self.stopped_by = by
            self.task.cancel()

    def done(self) -> bool:
        return self.task.done()

    async def wait(self) -> Outcome:
        return await asyncio.shield(self.task)


class Ponder:
    def __init__(self, settings: Settings, *, llm: LLMClient | None = None,
                 store: Store | None = None) -> None:
        self.settings = settings
        self.llm = llm or LLMClient(settings)
        self.engine = Engine(self.llm, settings)
        self.store = store or Store(settings.db)
        self.running: dict[str, ChainHandle] = {}
        self.accepting = True
        self._per_user: dict[tuple[str, str], int] = defaultdict(int)
        self._recent: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    async def start(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        for handle in list(self.running.values()):
            handle.cancel(by="shutdown")
        await asyncio.gather(*(h.task for h in list(self.running.values())),
                             return_exceptions=True)
        await self.llm.close()
        await self.store.close()

    async def drain(self, grace: float) -> None:
        """Stop taking questions; give running chains `grace` seconds, then stop the rest."""
        self.accepting = False
        pending = [h.task for h in self.running.values()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for handle in list(self.running.values()):
            handle.cancel(by="shutdown")

    async def history(self, platform: str, thread: str) -> tuple[Turn, ...]:
        return await self.store.history(platform, thread)

    # --- admission -------------------------------------------------------------------------

    def refusal(self, request: ChainRequest) -> str | None:
        """Why this question is not taken now, or None. Checked before anything is posted."""
        s = self.settings
        text = request.question.text.strip()
        if not self.accepting:
            return "Ponder is restarting; please ask again in a minute."
        if not text:
            return "Please include a question — for example `/reason question: Is 221 prime?`"
        if len(text) > s.max_question_chars:
            return (f"That question is {len(text):,} characters long; the limit is "
                    f"{s.max_question_chars:,}. Please shorten it.")
        if s.allowed_users and request.asker not in s.allowed_users:
            return "Sorry, you are not on the list of people who may use Ponder here."
        allowed_places = s.allowed_channels
        if allowed_places and request.channel not in allowed_places:
            return "Sorry, Ponder does not answer in this channel."
        if s.allowed_teams and request.workspace not in s.allowed_teams:
            return "Sorry, Ponder is not enabled for this server or workspace."
        key = (request.platform, request.asker)
        if self._per_user[key] >= s.user_concurrency:
            return (f"You already have {self._per_user[key]} questions being answered; "
                    "please wait for one to finish.")
        recent = self._recent[key]
        now = time.monotonic()
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= s.user_rate_per_minute:
            wait = int(60 - (now - recent[0])) + 1
            return f"You are asking faster than {s.user_rate_per_minute} a minute; " \
                   f"please try again in {wait} s."
        return None

    def submit(self, request: ChainRequest, surface: Surface) -> ChainHandle:
        """Start the chain as an owned task. Raises `Refused` with a reason to show."""
        reason = self.refusal(request)
        if reason is not None:
            raise Refused(reason)
        key = (request.platform, request.asker)
        self._per_user[key] += 1
        self._recent[key].append(time.monotonic())
        task = asyncio.create_task(self._run(request, surface), name=f"chain-{request.question.id}")
        handle = ChainHandle(request, task)
        self.running[handle.chain_id] = handle
        task.add_done_callback(lambda t: self._finished(handle, key, t))
        return handle

    def _finished(self, handle: ChainHandle, key: tuple[str, str], task: asyncio.Task[Outcome]
                  ) -> None:
        self.running.pop(handle.chain_id, None)
        self._per_user[key] -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("chain %s crashed", handle.chain_id, exc_info=task.exception())

    # --- one chain -------------------------------------------------------------------------

    async def _run(self, request: ChainRequest, surface: Surface) -> Outcome:
        q = request.question
        await self.store.start_chain(ChainRecord(
            id=q.id, platform=request.platform, question=q.text,
            mode=str(q.mode or self.settings.mode), workspace=request.workspace,
            channel=request.channel, thread=request.thread, asker=request.asker,
            history=list(q.history)))
        presenter = ThreadPresenter(surface)
        try:
            outcome = await presenter.present(self._recorded(q.id, self.engine.run(q)))
        except asyncio.CancelledError:
            outcome = presenter.outcome
            handle = self.running.get(q.id)
            if handle is None or handle.stopped_by != "user":
                raise
            # A Stop button press ends this chain, not the task that awaits it.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            with contextlib.suppress(Exception):
                await self.store.set_handles(q.id, [_plain(h) for h in presenter.outcome.handles])
        return outcome

    async def _recorded(self, chain_id: str, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            match event:
                case StepFinished(index=i, title=title, content=content, seconds=secs):
                    await self.store.add_step(chain_id, StepRecord(i, title, content, secs))
                case FinalAnswer(text=text, total_seconds=total):
                    await self.store.finish_chain(chain_id, "answered", answer=text,
                                                  total_seconds=total)
                case ChainFailed(reason=reason, message=message, total_seconds=total):
                    status = "cancelled" if reason == "cancelled" else "failed"
                    await self.store.finish_chain(chain_id, status, answer=None,
                                                  reason=f"{reason}: {message}",
                                                  total_seconds=total)
            yield event


def _plain(handle: object) -> object:
    return handle if isinstance(handle, str | int | float | list | dict) else str(handle)
