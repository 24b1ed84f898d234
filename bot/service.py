"""Ponder as a service for the front doors: admit a question, run it, show it, record it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import unicodedata
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from bot.config import Settings
from bot.engine import Engine
from bot.events import (
    AnswerDelta,
    ChainFailed,
    Event,
    FinalAnswer,
    Question,
    StepDelta,
    StepFinished,
    Turn,
)
from bot.llm import LLMClient
from bot.logs import chain_id as chain_id_var
from bot.metrics import (
    CHAINS_FINISHED,
    CHAINS_RUNNING,
    CHAINS_STARTED,
    MODEL_UP,
    QUEUED,
    REFUSED,
    STEP_SECONDS,
    start_metrics_server,
)
from bot.presenter import Outcome, Surface, ThreadPresenter
from bot.store import ChainRecord, StepRecord, Store

log = logging.getLogger(__name__)


RESTARTING = "Ponder is restarting; this chain will pick up where it stopped."
RESUMING = "↻ Ponder restarted — picking up again at step {n}."
WAITING = "⏳ The model server is not answering; retrying for up to {s} s."
WAITED = "✓ The model server is answering again."
GAVE_UP_WAITING = "The model server did not answer for {s} s; trying once more."
WAITING_STOPPED = "The model server was not answering."
INTERNAL = "Ponder hit an internal error on this question; please ask again."
NOT_ACCEPTING = "Ponder is restarting; please ask again in a minute."


class Refused(Exception):
    """A question Ponder will not take; `message` is the short, polite reason to show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Admission:
    """A question admitted before its chain starts. It counts against its asker's limits from
    the moment it is admitted, because a platform may take seconds to open a thread and a
    second question in those seconds must be refused too. `submit` takes it over; `release`
    gives the slot back when the chain never starts."""

    def __init__(self, counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
        self._counts, self._key = counts, key
        self.open = True

    def take(self) -> None:
        """The chain has started: its slot is the chain's now."""
        self.open = False

    def release(self) -> None:
        if self.open:
            self.open = False
            self._counts[self._key] -= 1


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
        self.stop_requested = asyncio.Event()
        self.producer: asyncio.Task[None] | None = None

    def cancel(self, by: str = "user") -> None:
        """Stop the chain's thinking; its thread still gets a last word (stopped/restarting).
        The chain's own task is never cancelled, so that last word is always written."""
        if self.task.done() or self.stopped_by is not None:
            return
        self.stopped_by = by
        self.stop_requested.set()
        if self.producer is not None:
            # Deferred a turn: a task cancelled before its first step never runs its body, and
            # the engine must start to end with `chain_failed: cancelled`. The producer's first
            # step is already queued, so it always goes before this.
            asyncio.get_running_loop().call_soon(self.producer.cancel)

    def done(self) -> bool:
        return self.task.done()

    async def wait(self) -> Outcome:
        return await asyncio.shield(self.task)


class _Mailbox:
    """Engine events on their way to a presenter that may lag behind a platform's limits.

    The engine never waits for the platform: consecutive snapshots of the same message
    (`StepDelta` of one step, `AnswerDelta`) replace each other while unread, so a slow
    presenter skips straight to the latest text. Every other event is kept, in order.
    """

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, event: Event) -> None:
        if self._items and isinstance(event, StepDelta | AnswerDelta):
            last = self._items[-1]
            if type(last) is type(event) and getattr(last, "index", 0) == getattr(
                    event, "index", 0):
                self._items[-1] = event
                return
        self._items.append(event)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            while self._items:
                yield self._items.popleft()
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()


class Ponder:
    def __init__(self, settings: Settings, *, llm: LLMClient | None = None,
                 store: Store | None = None) -> None:
        self.settings = settings
        self.llm = llm or LLMClient(settings)
        self.engine = Engine(self.llm, settings)
        self.store = store or Store(settings.db)
        self.running: dict[str, ChainHandle] = {}
        self.accepting = True
        self.model_up = asyncio.Event()
        self.model_up.set()  # optimistic until the first check says otherwise
        self._watcher: asyncio.Task[None] | None = None
        self._metrics: web.AppRunner | None = None
        self._per_user: dict[tuple[str, str], int] = defaultdict(int)
        self._recent: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    async def start(self) -> None:
        await self.store.open()
        self._watcher = asyncio.create_task(self._watch_model(), name="model-health")
        if self.settings.metrics_port:
            self._metrics = await start_metrics_server(self.settings.metrics_port,
                                                       lambda: self.model_up.is_set())

    async def close(self) -> None:
        for handle in list(self.running.values()):
            handle.cancel(by="shutdown")
        await asyncio.gather(*(h.task for h in list(self.running.values())),
                             return_exceptions=True)
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._metrics is not None:
            await self._metrics.cleanup()
        await self.llm.close()
        await self.store.close()

    async def _watch_model(self) -> None:
        """Keep `model_up` current, so new questions wait (visibly) instead of failing."""
        while True:
            try:
                up = await self.llm.ping()
            except Exception:
                log.exception("model health check failed")
                up = False
            if up != self.model_up.is_set():
                log.log(logging.INFO if up else logging.WARNING, "model server %s",
                        "answers again" if up else "is not answering")
            MODEL_UP.set(1 if up else 0)
            if up:
                self.model_up.set()
            else:
                self.model_up.clear()
            await asyncio.sleep(self.settings.health_interval if up else 2.0)

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

    async def thread_asker(self, platform: str, thread: str) -> str | None:
        """Who started Ponder's chains in `thread` (None: not a Ponder thread)."""
        return await self.store.thread_asker(platform, thread)

    # --- admission -------------------------------------------------------------------------

    def refusal(self, request: ChainRequest) -> str | None:
        """Why this question is not taken now, or None. Checked before anything is posted."""
        s = self.settings
        text = request.question.text.strip()
        if not self.accepting:
            return NOT_ACCEPTING
        if not _visible(text):
            return "Please include a question — for example: Is 221 prime?"
        if len(text) > s.max_question_chars:
            return (f"That question is {len(text):,} characters long; the limit is "
                    f"{s.max_question_chars:,}. Please shorten it.")
        if s.allowed_users and request.asker not in s.allowed_users:
            return "Sorry, you are not on the list of people who may use Ponder here."
        if s.allowed_channels and request.channel not in s.allowed_channels:
            return "Sorry, Ponder does not answer in this channel."
        if s.allowed_teams and request.workspace not in s.allowed_teams:
            return "Sorry, Ponder is not enabled for this server or workspace."
        key = (request.platform, request.asker)
        if self._per_user[key] >= s.user_concurrency:
            n = self._per_user[key]
            return (f"You already have {n} question{'' if n == 1 else 's'} being answered; "
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

    def admit(self, request: ChainRequest) -> Admission:
        """Count the question against its asker's limits now, or raise `Refused`."""
        reason = self.refusal(request)
        if reason is not None:
            REFUSED.labels(request.platform).inc()
            log.info("refused a question from %s: %s", request.asker, reason)
            raise Refused(reason)
        key = (request.platform, request.asker)
        self._recent[key].append(time.monotonic())
        self._per_user[key] += 1
        return Admission(self._per_user, key)

    def submit(self, request: ChainRequest, surface: Surface,
               admission: Admission | None = None) -> ChainHandle:
        """Start the chain as an owned task. Raises `Refused` with a reason to show."""
        if admission is None or not admission.open:
            admission = self.admit(request)
        elif not self.accepting:
            admission.release()
            raise Refused(NOT_ACCEPTING)
        admission.take()
        return self._launch(request, surface)

    def _launch(self, request: ChainRequest, surface: Surface, resumed: bool = False,
                earlier: Sequence[object] = ()) -> ChainHandle:
        """Start the chain; its asker's slot is already counted (by `admit`, or `recover`)."""
        key = (request.platform, request.asker)
        CHAINS_STARTED.labels(request.platform).inc()
        CHAINS_RUNNING.inc()
        task = asyncio.create_task(self._run(request, surface, resumed, earlier),
                                   name=f"chain-{request.question.id}")
        handle = ChainHandle(request, task)
        self.running[handle.chain_id] = handle
        task.add_done_callback(lambda t: self._finished(handle, key, t))
        return handle

    def _finished(self, handle: ChainHandle, key: tuple[str, str], task: asyncio.Task[Outcome]
                  ) -> None:
        self.running.pop(handle.chain_id, None)
        self._per_user[key] -= 1
        CHAINS_RUNNING.dec()
        if not task.cancelled() and task.exception() is not None:
            log.error("chain %s crashed", handle.chain_id, exc_info=task.exception())

    # --- one chain -------------------------------------------------------------------------

    async def _run(self, request: ChainRequest, surface: Surface, resumed: bool,
                   earlier: Sequence[object] = ()) -> Outcome:
        q = request.question
        handle = self.running[q.id]
        began = time.monotonic()
        chain_id_var.set(q.id)  # this task's context: every log line names the chain
        log.info("chain started on %s by %s (%d chars)", request.platform, request.asker,
                 len(q.text))
        if not resumed:
            await self.store.start_chain(ChainRecord(
                id=q.id, platform=request.platform, question=q.text,
                mode=str(q.mode or self.settings.mode), workspace=request.workspace,
                channel=request.channel, thread=request.thread, asker=request.asker,
                history=list(q.history)))
        # A surface may bring its own presenter (Slack's native streaming); else the shared one.
        make = getattr(surface, "presenter", None)
        presenter: ThreadPresenter = make() if callable(make) else ThreadPresenter(surface)
        handles = _Handles(self.store, q.id, presenter, earlier)
        if resumed:
            await presenter.notice(RESUMING.format(n=len(q.done_steps) + 1))
        if not self.model_up.is_set() and not handle.stop_requested.is_set():
            await self._wait_for_model(presenter, handle.stop_requested)
        if handle.stop_requested.is_set():  # stopped before thinking began
            stopped = ChainFailed("cancelled", "stopped", time.monotonic() - began)
            async for event in self._recorded(q.id, _once(stopped)):
                await presenter.handle(event)
            await presenter.finish()
            await handles.save()
            return presenter.outcome
        mailbox = _Mailbox()
        handle.producer = asyncio.create_task(self._produce(q, mailbox),
                                              name=f"engine-{q.id}")
        # However the producer ends, the presenter must not wait for more.
        handle.producer.add_done_callback(lambda _: mailbox.close())
        try:
            return await presenter.present(handles.saved_along(aiter(mailbox)))
        except asyncio.CancelledError:
            handle.producer.cancel()
            raise
        finally:
            await asyncio.gather(handle.producer, return_exceptions=True)
            await handles.save()

    async def _produce(self, question: Question, mailbox: _Mailbox) -> None:
        began = time.monotonic()
        try:
            async for event in self._recorded(question.id, self.engine.run(question)):
                mailbox.put(event)
        except Exception:
            # A bug must not leave a thread saying "thinking…" forever.
            log.exception("chain crashed")
            failure = ChainFailed("internal", INTERNAL, time.monotonic() - began)
            async for event in self._recorded(question.id, _once(failure)):
                mailbox.put(event)

    async def _wait_for_model(self, presenter: ThreadPresenter, stop: asyncio.Event) -> None:
        wait = self.settings.model_wait
        await presenter.notice(WAITING.format(s=int(wait)), key="model-wait")
        QUEUED.inc()
        up = asyncio.create_task(self.model_up.wait())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait((up, stopped), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            stopped.cancel()
            QUEUED.dec()
        if self.model_up.is_set():
            await presenter.notice(WAITED, key="model-wait")
        elif not stop.is_set():
            # It stays down: the engine's own attempts end with a readable message.
            log.warning("model server still down after %.0f s; trying anyway", wait)
            await presenter.notice(GAVE_UP_WAITING.format(s=int(wait)), key="model-wait")
        else:
            await presenter.notice(WAITING_STOPPED, key="model-wait")

    async def _recorded(self, chain_id: str, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        platform = ""
        handle = self.running.get(chain_id)
        if handle is not None:
            platform = handle.request.platform
        async for event in events:
            if not isinstance(event, StepDelta | AnswerDelta):  # not a line per token
                log.info("event=%s%s", event.name,
                         f" step={event.index}" if isinstance(event, StepFinished) else "")
            match event:
                case StepFinished(index=i, title=title, content=content, seconds=secs):
                    STEP_SECONDS.observe(secs)
                    await self.store.add_step(chain_id, StepRecord(i, title, content, secs))
                case FinalAnswer(text=text, total_seconds=total):
                    CHAINS_FINISHED.labels(platform, "answered").inc()
                    await self.store.finish_chain(chain_id, "answered", answer=text,
                                                  total_seconds=total)
                case ChainFailed(reason="cancelled", total_seconds=total) if self._stopped_by(
                        chain_id) == "shutdown":
                    # Left "running" in the store on purpose: the next start resumes it.
                    event = ChainFailed("interrupted", RESTARTING, total)
                case ChainFailed(reason=reason, message=message, total_seconds=total):
                    CHAINS_FINISHED.labels(platform, reason).inc()
                    status = "cancelled" if reason == "cancelled" else "failed"
                    await self.store.finish_chain(chain_id, status, answer=None,
                                                  reason=f"{reason}: {message}",
                                                  total_seconds=total)
            yield event

    def _stopped_by(self, chain_id: str) -> str | None:
        handle = self.running.get(chain_id)
        return handle.stopped_by if handle is not None else None

    # --- restart recovery ------------------------------------------------------------------

    async def recover(self, platform: str,
                      surface_for: Callable[[ChainRecord], Awaitable[Surface | None]]
                      ) -> list[ChainHandle]:
        """Chains of `platform` left running by a dead process: resumed from their last stored
        step where the thread can still be written, else closed with a visible message there.

        All of them are tidied first (`settle_leftovers`, where the surface has it), then all
        resumed: while a surface tidies, nothing of this process writes to its thread yet."""
        ready: list[tuple[ChainRecord, Surface, list[StepRecord]]] = []
        for record in await self.store.chains_with_status("running"):
            if record.platform != platform or record.id in self.running:
                continue
            try:
                surface = await surface_for(record)
            except Exception:
                log.exception("chain %s: its thread cannot be reached", record.id)
                surface = None
            if surface is None:
                await self.store.finish_chain(record.id, "interrupted",
                                              reason="interrupted: thread unreachable")
                continue
            steps = await self.store.steps(record.id)
            settle = getattr(surface, "settle_leftovers", None)
            if callable(settle):
                # What the dead process left half-written must stop saying "thinking".
                try:
                    await settle(record, steps)
                except Exception:
                    log.exception("chain %s: could not tidy its earlier messages", record.id)
            ready.append((record, surface, steps))
        handles = []
        for record, surface, steps in ready:
            question = Question(record.question, id=record.id, history=tuple(record.history),
                                mode=record.mode,
                                done_steps=tuple((s.title, s.content) for s in steps))
            request = ChainRequest(platform, question, record.asker, record.channel,
                                   record.thread, record.workspace)
            self._per_user[(platform, record.asker)] += 1  # resumed: not admitted again
            handles.append(self._launch(request, surface, resumed=True,
                                        earlier=record.handles))
        return handles


class _Handles:
    """The platform handles of a chain's messages, written to the store as they are posted, so
    a start after a crash can find (and tidy) what the dead process left half-written."""

    def __init__(self, store: Store, chain_id: str, presenter: object,
                 earlier: Sequence[object]) -> None:
        self.store, self.chain_id, self.presenter = store, chain_id, presenter
        self.earlier = [_plain(h) for h in earlier]  # a resumed chain's, from before
        self.saved: list[object] = list(self.earlier)

    async def save(self) -> None:
        outcome = getattr(self.presenter, "outcome", None)
        handles = [*self.earlier, *(_plain(h) for h in getattr(outcome, "handles", []))]
        if handles == self.saved:
            return
        try:
            await self.store.set_handles(self.chain_id, handles)
            self.saved = handles
        except Exception:
            log.exception("could not record the chain's message handles")

    async def saved_along(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            yield event
            # The presenter asks for the next event once this one is shown (posted).
            await self.save()


def _visible(text: str) -> str:
    """What is left of `text` to read: without control and invisible formatting characters
    (zero-width spaces and joiners, direction marks, BOMs), which alone make no question."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf")).strip()


async def _once(event: Event) -> AsyncIterator[Event]:
    yield event


def _plain(handle: object) -> object:
    """A platform handle as the store can keep it (JSON)."""
    if dataclasses.is_dataclass(handle) and not isinstance(handle, type):
        return dataclasses.asdict(handle)
    return handle if isinstance(handle, str | int | float | list | dict) else str(handle)
