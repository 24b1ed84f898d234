"""Ponder as a service for the front doors: admit a question, run it, show it, record it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Literal

from aiohttp import web

from bot.admission import RATE_WINDOW, Admission, ChainRequest, Gate, shared_refusal
from bot.config import Settings
from bot.delivery import Deliveries, owed_of
from bot.engine import Engine
from bot.errors import Refused
from bot.events import (
    AnswerDelta,
    ChainFailed,
    Event,
    FinalAnswer,
    Language,
    Question,
    StepDelta,
    StepFinished,
    Turn,
    TurnsLeftOut,
)
from bot.handle import ChainHandle
from bot.health import ModelHealth
from bot.llm import LLMClient
from bot.logs import chain_id as chain_id_var
from bot.mailbox import Mailbox
from bot.memory import Memory
from bot.metrics import (
    CHAINS_FINISHED,
    CHAINS_RUNNING,
    CHAINS_STARTED,
    REFUSED,
    STEP_SECONDS,
    start_metrics_server,
)
from bot.presenter import ThreadPresenter
from bot.prompts import detect_language
from bot.recovery import HandleLog, settle_leftovers, settled
from bot.store import (
    ChainRecord,
    Claim,
    Hold,
    StepRecord,
    Store,
    StoreFailed,
    Taken,
    keep_pruned,
    open_store,
)
from bot.surface import Handle, Outcome, Owed, Presenter, Surface
from bot.tasks import Tasks
from bot.votes import chains
from bot.wording import say

log = logging.getLogger(__name__)

__all__ = ["Admission", "ChainHandle", "ChainRequest", "Ponder", "Refused", "StopResult"]

LAST_WORDS = 5.0  # seconds stopped chains get, on close, to write their last state
RECOVERY_WAIT = 30.0  # at most this long a follow-up waits for a platform's recovery to start
PRUNE_EVERY = 3600.0  # seconds between two prunes of what PONDER_RETENTION_DAYS lets go
# Seconds admission waits for a shared store's count: within Discord's 3 s to answer.
SHARED_ADMISSION_WAIT = 2.0

StopResult = Literal["stopping", "finished", "not_allowed"]
SurfaceFor = Callable[[ChainRecord], Awaitable[Surface | None]]


class Ponder:
    """The one service every front door talks to: it admits questions (`bot/admission.py`),
    runs each chain as an owned task (engine → presenter → store), stops, drains, recovers."""

    def __init__(self, settings: Settings, *, llm: LLMClient | None = None,
                 store: Store | None = None) -> None:
        self.settings = settings
        self.llm = llm or LLMClient(settings)
        self.engine = Engine(self.llm, settings)
        self.store = store or open_store(settings)
        # This process, as a shared store names the holder of a chain's lease.
        self.owner = _process_name()
        self._recovering: set[str] = set()  # platforms whose periodic recovery pass runs
        self.memory = Memory(self.store)
        self.running: dict[str, ChainHandle] = {}
        self.gate = Gate(settings)
        self.pending: dict[str, Admission] = {}  # admitted, not started yet (thread opening)
        self._claimed: dict[str, asyncio.Event] = {}  # per platform: resumed chains held
        self.health = ModelHealth(self.llm, settings)
        self.deliveries = Deliveries(self.store, settings.delivery_hours, self._lease)
        self.housekeeping = Tasks("housekeeping")
        self._metrics: web.AppRunner | None = None

    @property
    def accepting(self) -> bool:
        return self.gate.accepting

    @property
    def model_up(self) -> asyncio.Event:
        """Set while the model server answers (checked every `PONDER_HEALTH_INTERVAL`)."""
        return self.health.up

    async def start(self) -> None:
        await self.store.open()
        if self.store.shared:
            # Several processes: a Stop pressed in another reaches a chain running here.
            await self.store.listen_stops(self._stop_heard)
            self.housekeeping.spawn(self._keep_leases(), name="leases")
        if self.settings.retention_days:
            self.housekeeping.spawn(keep_pruned(self.store, self.settings.retention_days,
                                                PRUNE_EVERY), name="retention")
        self.health.start()
        if self.settings.metrics_port:
            self._metrics = await start_metrics_server(self.settings.metrics_port,
                                                       lambda: self.model_up.is_set(),
                                                       host=self.settings.metrics_host)

    async def close(self) -> None:
        await self._stop_all()
        await self.deliveries.close()
        await self.housekeeping.close(0)
        if self.store.shared:
            # What this process leaves running is free for another one to resume at once.
            try:
                await self.store.release(self.owner)
            except Exception:
                log.warning("could not release this process's chains; other processes "
                            "resume them when their leases run out", exc_info=True)
        await self.health.close()
        if self._metrics is not None:
            await self._metrics.cleanup()
        await self.llm.close()
        await self.store.close()

    async def drain(self, grace: float) -> None:
        """Stop taking questions; give running chains `grace` seconds, then stop the rest, which
        get `LAST_WORDS` seconds to say so in their threads before they are cut off (the
        platform may be gone: nothing may hold the process). A chain stopped here stays
        "running" in the store, and the next start resumes it."""
        self.gate.accepting = False
        pending = [h.task for h in self.running.values()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        await self._stop_all()

    async def _stop_all(self) -> None:
        for handle in list(self.running.values()):
            handle.cancel(by="shutdown")
        chains = [h.task for h in self.running.values()]
        if chains:
            _, left = await asyncio.wait(chains, timeout=LAST_WORDS)
            for task in left:
                log.warning("chain %s: its last words took too long; cut off",
                            task.get_name().removeprefix("chain-"))
                task.cancel()
            await asyncio.gather(*chains, return_exceptions=True)

    async def history(self, platform: str, thread: str) -> tuple[Turn, ...]:
        return await self.store.history(platform, thread)

    async def first_sight(self, event_id: str, keep_seconds: float) -> bool:
        """True the first time a platform delivers this event id: a redelivery (a platform
        retrying, or another process of this bot) must not start a second chain."""
        return await self.store.first_sight(event_id, keep_seconds)

    # --- admission -------------------------------------------------------------------------

    def refusal(self, request: ChainRequest) -> str | None:
        """Why this question would not be taken now, or None."""
        return self.gate.refusal(request, detect_language(request.question.text))

    async def enter(self, request: ChainRequest) -> Admission:
        """`admit`, counted over every process when the store is shared: what every front
        door awaits before it answers, so a refusal is shown the same way whichever process
        found it."""
        return await self._held(self.admit(request))

    def admit(self, request: ChainRequest) -> Admission:
        """Count the question against its asker's limits (and hold its thread) now, or raise
        `Refused` with the reason to show, in the asker's language. (This process's counts;
        `enter` adds every process's.)"""
        language = detect_language(request.question.text)
        try:
            admission = self.gate.admit(request, language)
        except Refused as refusal:
            REFUSED.labels(request.platform).inc()
            log.info("refused a question from %s: %s", request.asker, refusal.message)
            raise
        self.pending[request.question.id] = admission
        return admission

    def expect_recovery(self, platform: str) -> None:
        """A front door that will call `recover` once connected says so before it takes
        events: follow-ups wait (a little) until the chains to resume hold their threads."""
        self._recovery_claimed(platform)

    def _recovery_claimed(self, platform: str) -> asyncio.Event:
        return self._claimed.setdefault(platform, asyncio.Event())

    async def follow_up(self, request: ChainRequest) -> Admission | None:
        """A message in a thread: admitted as a follow-up when the thread is Ponder's and its
        asker wrote it; None when it is not one (talk among people, or not a Ponder thread).
        Raises `Refused` (a chain is still running there, limits)."""
        claimed = self._claimed.get(request.platform)
        if claimed is not None and not claimed.is_set():
            try:
                async with asyncio.timeout(RECOVERY_WAIT):
                    await claimed.wait()
            except TimeoutError:
                log.warning("%s recovery has not started; taking the follow-up anyway",
                            request.platform)
        asker = await self.store.thread_asker(request.platform, request.thread)
        if asker is None or asker != request.asker:
            return None
        # A chain in this thread run by another process is found by the shared count.
        return await self._held(self.admit(request))

    async def _held(self, admission: Admission) -> Admission:
        """A shared store: the admission counted over every process (`Store.hold`, one round
        trip), or withdrawn and refused as the Gate would have. A store that does not answer
        in time lets it through: the chain's start counts again, and a store that refuses
        writes ends the chain saying so."""
        if not self.store.shared:
            return admission
        request = admission.request
        try:
            async with asyncio.timeout(SHARED_ADMISSION_WAIT):
                await self.store.hold(Hold(
                    request.question.id, request.platform, request.asker, request.thread,
                    self.owner, self.settings.lease_seconds, self.settings.user_concurrency,
                    self.settings.user_rate_per_minute, RATE_WINDOW))
        except Taken as taken:
            admission.withdraw()
            self.pending.pop(request.question.id, None)
            REFUSED.labels(request.platform).inc()
            log.info("refused a question from %s: %s", request.asker, taken)
            raise Refused(shared_refusal(taken, admission.language)) from None
        except (StoreFailed, TimeoutError) as exc:
            log.warning("could not count a question over every process (%s); the chain's "
                        "start counts it", exc or "timed out")
        else:
            admission.held = True
        return admission

    def submit(self, request: ChainRequest, surface: Surface,
               admission: Admission | None = None) -> ChainHandle:
        """Start the chain as an owned task. Raises `Refused` with a reason to show.

        `request` may name the thread the platform opened since `admission` was granted.
        A Stop pressed meanwhile (`stop`) stops the chain at once: it is still started, so
        the thread says it was stopped, in the chain's language, and the chain is recorded."""
        if admission is None or not admission.open:
            admission = self.admit(request)
        elif not self.accepting:
            self.release(admission)
            raise Refused(say("not_accepting", admission.language))
        admission.hold_thread(request.thread)
        self.pending.pop(request.question.id, None)
        thread = admission.take()
        handle = self._launch(request, surface, admission.language, thread)
        if admission.stop_requested:
            handle.cancel(by="user")
        return handle

    def release(self, admission: Admission) -> None:
        """Give an admission's slot and thread back when its chain will never start (its
        thread could not be opened); a no-op once the chain has started."""
        if admission.open and admission.held:
            admission.held = False
            self.housekeeping.spawn(self._unhold(admission.request.question.id),
                                    name=f"unhold-{admission.request.question.id}")
        admission.release()
        self.pending.pop(admission.request.question.id, None)

    async def _unhold(self, chain_id: str) -> None:
        try:
            await self.store.unhold(chain_id)
        except StoreFailed:
            pass  # the store has said why; the hold ends with its lease
        except Exception as exc:  # the store closing on shutdown: `release` lets go of all
            log.info("could not let go of question %s (%s); its hold ends with its lease",
                     chain_id, exc)

    def stop(self, chain_id: str, user: str, *, may_manage: bool = False) -> StopResult:
        """The Stop button: the asker, or someone who may manage the place, stops a chain."""
        handle = self.running.get(chain_id)
        pending = self.pending.get(chain_id)
        request = handle.request if handle is not None else (
            pending.request if pending is not None else None)
        if request is None or (handle is not None and handle.done()):
            return "finished"
        if user != request.asker and not may_manage:
            return "not_allowed"
        if handle is not None:
            handle.cancel(by="user")
        elif pending is not None:
            pending.stop_requested = True
        return "stopping"

    async def stop_anywhere(self, chain_id: str, user: str, *,
                            may_manage: bool = False) -> StopResult:
        """`stop`, for a chain this process or, with a shared store, another one runs: the
        stop is written to the database and heard by the process that runs it."""
        result = self.stop(chain_id, user, may_manage=may_manage)
        if result != "finished" or not self.store.shared or chain_id in self.running:
            return result
        record = await self.store.chain(chain_id)
        if record is None or record.status != "running":
            return "finished"
        if user != record.asker and not may_manage:
            return "not_allowed"
        return "stopping" if await self.store.request_stop(chain_id) else "finished"

    def _stop_heard(self, chain_id: str) -> None:
        """A Stop pressed in another process (its checks done there) for a chain run here."""
        handle = self.running.get(chain_id)
        if handle is not None:
            log.info("chain %s: stopped from another process", chain_id)
            handle.cancel(by="user")

    def _lease(self) -> tuple[str, float] | None:
        """What this process holds a shared store's rows by: its name and the lease."""
        return (self.owner, self.settings.lease_seconds) if self.store.shared else None

    async def _keep_leases(self) -> None:
        """A shared store: keep the leases of the chains this process runs (a process that
        dies loses them, and another one resumes its chains), and catch any Stop whose
        notice did not arrive. Renewals that fail until the lease has run out mean another
        process may resume those chains now: this one stops writing them (`_lease_lapsed`)."""
        lease = self.settings.lease_seconds
        renewed = time.monotonic()  # the leases run at least until `renewed + lease`
        while True:
            await asyncio.sleep(max(0.0, min(lease / 3, renewed + lease - time.monotonic())))
            sent = time.monotonic()
            try:
                # Not past the lease: a store that stalls must not hold this beyond it.
                async with asyncio.timeout(max(0.001, renewed + lease - sent)):
                    stops = await self.store.renew(self.owner, lease)
            except (StoreFailed, TimeoutError):
                pass  # the store has said why (or not answered); the next round tries again
            except Exception:
                log.exception("could not renew this process's chains")
            else:
                renewed = sent
                for chain_id in stops:
                    self._stop_heard(chain_id)
                continue
            if time.monotonic() >= renewed + lease:
                await self._lease_lapsed()
                renewed = time.monotonic()  # the new name's leases start now

    async def _lease_lapsed(self) -> None:
        """This process's leases ran out unrenewed: another process may claim its chains and
        owed deliveries now, so it stops writing them at once — cut off quietly, as a crash
        would (no "stopped": the new owner continues the chain), and left "running" in the
        store — and takes a new name, so that none of its old rows is renewed again."""
        chains = [h for h in self.running.values() if not h.done()]
        self.owner = _process_name()
        if not chains and not self.deliveries.owing_now():
            return  # nothing written here that another process could take over
        log.error("could not renew this process's leases for %g s (PONDER_LEASE_SECONDS): "
                  "its %d chain(s) and %d owed delivery(ies) are stopped here for another "
                  "process to take over", self.settings.lease_seconds, len(chains),
                  len(self.deliveries.owing_now()))
        for handle in chains:
            handle.stopped_by = "lease"  # not a Stop: nothing of it is marked over
            handle.task.cancel()
        await self.deliveries.stop()
        if chains:
            await asyncio.wait([h.task for h in chains], timeout=LAST_WORDS)

    async def language_of(self, chain_id: str) -> Language:
        """The language a chain speaks: running, about to run, or long over (the store)."""
        handle, pending = self.running.get(chain_id), self.pending.get(chain_id)
        if handle is not None:
            return handle.language
        if pending is not None:
            return pending.language
        record = await self.store.chain(chain_id)
        return record.language if record is not None else "en"

    def _launch(self, request: ChainRequest, surface: Surface, language: Language,
                thread: tuple[str, str] | None, resumed: bool = False,
                earlier: dict[str, list[Handle]] | None = None) -> ChainHandle:
        """Start the chain; its asker's slot is already counted (by `admit`, or `recover`)."""
        CHAINS_STARTED.labels(request.platform).inc()
        CHAINS_RUNNING.inc()
        task = asyncio.create_task(self._run(request, surface, language, resumed, earlier),
                                   name=f"chain-{request.question.id}")
        handle = ChainHandle(request, language, task)
        self.running[handle.chain_id] = handle
        task.add_done_callback(lambda t: self._finished(handle, thread, t))
        return handle

    def _finished(self, handle: ChainHandle, thread: tuple[str, str] | None,
                  task: asyncio.Task[Outcome]) -> None:
        self.running.pop(handle.chain_id, None)
        self.gate.finished(handle.request.platform, handle.request.asker, thread,
                           handle.chain_id)
        CHAINS_RUNNING.dec()
        if not task.cancelled() and task.exception() is not None:
            log.error("chain %s crashed", handle.chain_id, exc_info=task.exception())

    # --- one chain -------------------------------------------------------------------------

    async def _run(self, request: ChainRequest, surface: Surface, language: Language,
                   resumed: bool, earlier: dict[str, list[Handle]] | None) -> Outcome:
        q = request.question
        handle = self.running[q.id]
        began = time.monotonic()
        chain_id_var.set(q.id)  # this task's context: every log line names the chain
        log.info("chain started on %s by %s (%d chars)", request.platform, request.asker,
                 len(q.text))
        surface.chain_id = q.id  # what its buttons act on (a surface shows one chain)
        presenter: Presenter = surface.presenter(language) or ThreadPresenter(surface, language)
        try:
            if not resumed:
                if request.thread and not q.history:
                    q = _with_history(q, await self.store.history(request.platform,
                                                                  request.thread))
                claim = Claim(self.owner, self.settings.lease_seconds,
                              self.settings.user_concurrency) if self.store.shared else None
                await self.store.start_chain(ChainRecord(
                    id=q.id, platform=request.platform, question=q.text,
                    mode=str(q.mode or self.settings.mode), workspace=request.workspace,
                    channel=request.channel, thread=request.thread, asker=request.asker,
                    history=list(q.history), language=language, anchor=dict(request.anchor)),
                    claim)
            try:
                outcome = await self._show(q, handle, presenter, language, resumed, earlier,
                                           began)
            except asyncio.CancelledError:
                await self._keep_owed(q.id, presenter.outcome.owed)
                raise
            if outcome.owed:
                await self.deliveries.owe(q.id, request.platform, surface, outcome.owed,
                                          language)
            return outcome
        except Taken as taken:
            # Busy in another process (a shared store): refused as this process would have.
            REFUSED.labels(request.platform).inc()
            log.info("refused a question from %s: %s", request.asker, taken)
            refusal = ChainFailed("rejected", shared_refusal(taken, language), 0.0)
            try:
                await presenter.notice(f"🙅 {refusal.message}", key="refused")
            except Exception:
                log.exception("could not say so in the thread")
            return Outcome(failure=refusal, handles=dict(presenter.outcome.handles))
        except StoreFailed as exc:  # the chain's first write: nothing of it could be kept
            failure = await self._unsaved(q.id, request.platform, language, exc,
                                          time.monotonic() - began)
            try:
                return await presenter.present(_once(failure))
            except Exception:
                log.exception("could not say so in the thread")
                return Outcome(failure=failure)
        except Exception:
            # A bug or a failing store (not the engine, whose failures become a failure
            # event) must still leave the thread with a last word.
            log.exception("chain crashed")
            try:
                await presenter.notice(say("internal", language), key="internal")
            except Exception:
                log.exception("could not say so in the thread")
            return Outcome(failure=ChainFailed("internal", say("internal", language),
                                               time.monotonic() - began))

    async def _keep_owed(self, chain_id: str, owed: list[Owed]) -> None:
        """A chain cut off (its last words took too long) keeps what the platform has not
        taken as owed in the store, for the next process to deliver; otherwise the store,
        which already has the answer, would call it delivered."""
        if not owed:
            return
        try:
            async with asyncio.timeout(LAST_WORDS):
                await self.store.set_owed(chain_id, [o.as_json() for o in owed])
            log.warning("cut off with %d final text(s) not shown: kept as owed", len(owed))
        except (StoreFailed, TimeoutError) as exc:
            log.error("cut off with %d final text(s) not shown, and the store refused them: %s",
                      len(owed), exc)

    async def _show(self, q: Question, handle: ChainHandle, presenter: Presenter,
                    language: Language, resumed: bool, earlier: dict[str, list[Handle]] | None,
                    began: float) -> Outcome:
        handles = HandleLog(self.store, q.id, presenter, earlier or {})
        if resumed:
            await presenter.notice(say("resuming", language, n=len(q.done_steps) + 1))
        if not self.model_up.is_set() and not handle.stop_requested.is_set():
            await self.health.wait_visibly(presenter, language, handle.stop_requested)
        if handle.stop_requested.is_set():  # stopped before thinking began
            stopped = ChainFailed("cancelled", "stopped", time.monotonic() - began)
            try:
                return await presenter.present(self._recorded(q.id, _once(stopped)))
            finally:
                await handles.save()
        mailbox = Mailbox()
        handle.producer = asyncio.create_task(self._produce(q, language, mailbox),
                                              name=f"engine-{q.id}")
        # However the producer ends, the presenter must not wait for more.
        handle.producer.add_done_callback(lambda _: mailbox.close())
        try:
            return await presenter.present(handles.saved_along(
                self._turns_told(handle.request, presenter, language, aiter(mailbox))))
        except asyncio.CancelledError:
            handle.producer.cancel()
            raise
        finally:
            await asyncio.gather(handle.producer, return_exceptions=True)
            await handles.save()

    async def _turns_told(self, request: ChainRequest, presenter: Presenter,
                          language: Language, events: AsyncIterator[Event]
                          ) -> AsyncIterator[Event]:
        """Earlier turns left out to fit the model's context are said in the thread once, the
        first time, as a notice (the thread remembers it in the store), not on every
        follow-up that leaves them out again."""
        async for event in events:
            if not isinstance(event, TurnsLeftOut):
                yield event
                continue
            key = f"turns-left-out:{request.platform}:{request.thread}"
            try:
                told = bool(request.thread) and await self.store.get(key) is not None
                if not told:
                    await presenter.notice(say("turns_left_out", language), key="turns-left-out")
                    if request.thread:
                        await self.store.put(key, "1")
            except StoreFailed as exc:
                # The notice is a courtesy: a store that refuses it is said by the chain's own
                # next write, not here.
                log.warning("could not remember that earlier turns were left out: %s", exc.cause)
            except Exception:
                log.exception("could not say that earlier turns were left out")

    async def _produce(self, question: Question, language: Language,
                       mailbox: Mailbox) -> None:
        began = time.monotonic()
        try:
            # One chain, or a vote of several (PONDER_VOTES, or the question's own).
            async for event in self._recorded(question.id, chains(self.engine, question)):
                mailbox.put(event)
        except Exception:
            # A bug must not leave a thread saying "thinking…" forever.
            log.exception("chain crashed")
            failure = ChainFailed("internal", say("internal", language),
                                  time.monotonic() - began)
            async for event in self._recorded(question.id, _once(failure)):
                mailbox.put(event)

    async def _recorded(self, chain_id: str, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        handle = self.running.get(chain_id)
        platform = handle.request.platform if handle is not None else ""
        language: Language = handle.language if handle is not None else "en"
        began = time.monotonic()
        async for event in events:
            if not isinstance(event, StepDelta | AnswerDelta):  # not a line per token
                log.info("event=%s%s", event.name,
                         f" step={event.index}" if isinstance(event, StepFinished) else "")
            try:
                match event:
                    case StepFinished(index=i, title=title, content=content, seconds=secs):
                        STEP_SECONDS.observe(secs)
                        await self.store.add_step(chain_id, StepRecord(i, title, content, secs))
                    case FinalAnswer(text=text, total_seconds=total):
                        CHAINS_FINISHED.labels(platform, "answered").inc()
                        await self.store.finish_chain(chain_id, "answered", answer=text,
                                                      total_seconds=total)
                    case ChainFailed(reason="cancelled", total_seconds=total) if (
                            handle is not None and handle.stopped_by in ("shutdown", "lease")):
                        # Left "running" in the store on purpose: the next start (or the
                        # process that takes its lease over) resumes it.
                        event = ChainFailed("interrupted", say("restarting", language), total)
                    case ChainFailed(reason=reason, message=message, total_seconds=total):
                        CHAINS_FINISHED.labels(platform, reason).inc()
                        status = "cancelled" if reason == "cancelled" else "failed"
                        await self.store.finish_chain(chain_id, status, answer=None,
                                                      reason=f"{reason}: {message}",
                                                      total_seconds=total)
            except StoreFailed as exc:
                # Nothing more of this chain can be kept: it ends here, saying so, after what
                # the engine gave last (a step, the answer), and is never resumed.
                if isinstance(events, AsyncGenerator):
                    await events.aclose()
                if not isinstance(event, ChainFailed):
                    yield event
                yield await self._unsaved(chain_id, platform, language, exc,
                                          time.monotonic() - began)
                return
            yield event

    async def _unsaved(self, chain_id: str, platform: str, language: Language,
                       exc: StoreFailed, total: float) -> ChainFailed:
        """The failure a chain the store refused ends with; marked (`Store.abandon`) so that
        no later start resumes it. The store logs the cause, once per outage."""
        CHAINS_FINISHED.labels(platform, "storage").inc()
        log.warning("chain ends here: the store refused it, so it will not be resumed")
        await self.store.abandon(chain_id, exc.cause)
        return ChainFailed("storage", say("store_failed", language), total)

    # --- restart recovery ------------------------------------------------------------------

    async def recover(self, platform: str, surface_for: SurfaceFor,
                      adopt: Callable[[ChainHandle], object] | None = None
                      ) -> list[ChainHandle]:
        """Chains of `platform` left running by a dead process: resumed from their last stored
        step where the thread can still be written, else closed with a visible message there.

        All of them are tidied first (`bot/recovery.py`), then all resumed: while a thread is
        tidied, nothing of this process writes to it yet.

        With a shared store each chain is claimed first (its lease), so exactly one process
        resumes it, and the pass is repeated every `PONDER_RECOVERY_INTERVAL`: the chains of a
        process that dies later (its leases run out) are resumed here; `adopt` is handed each
        of those, for the front door's part of a resumed chain."""
        handles = await self._resume(platform, surface_for, first=True)
        if self.store.shared and platform not in self._recovering:
            self._recovering.add(platform)
            self.housekeeping.spawn(self._keep_recovering(platform, surface_for, adopt),
                                    name=f"recovery-{platform}")
        return handles

    async def _keep_recovering(self, platform: str, surface_for: SurfaceFor,
                               adopt: Callable[[ChainHandle], object] | None) -> None:
        while self.accepting:
            await asyncio.sleep(self.settings.recovery_interval)
            if not self.accepting:
                return
            try:
                handles = await self._resume(platform, surface_for)
            except StoreFailed:
                continue  # the store has said why; the next pass tries again
            except Exception:
                log.exception("%s: the recovery pass failed; trying again in %g s", platform,
                              self.settings.recovery_interval)
                continue
            if handles:
                log.info("%s: resumed %d chain(s) of a process that is gone", platform,
                         len(handles))
            for handle in handles:
                if adopt is not None:
                    try:
                        adopt(handle)
                    except Exception:
                        log.exception("chain %s: its front door could not take it over",
                                      handle.chain_id)

    async def _resume(self, platform: str, surface_for: SurfaceFor,
                      first: bool = False) -> list[ChainHandle]:
        try:
            records = await self.store.claim_interrupted(platform, self.owner,
                                                         self.settings.lease_seconds,
                                                         skip=frozenset(self.running))
            # Held at once, before anything is awaited: a follow-up in one of these threads
            # while they are tidied waits for its chain instead of running beside it.
            for record in records:
                self.gate.count_resumed(platform, record.asker, record.thread, record.id)
        finally:
            if first:
                self._recovery_claimed(platform).set()
        ready: list[tuple[ChainRecord, Surface, list[StepRecord]]] = []
        for record in records:
            surface = await _reach(surface_for, record)
            if surface is None:
                self.gate.finished(platform, record.asker, _thread_key(platform, record.thread),
                                   record.id)
                await self.store.finish_chain(record.id, "interrupted",
                                              reason="interrupted: thread unreachable")
                continue
            steps = await self.store.steps(record.id)
            try:
                await settle_leftovers(surface, record, steps)
            except Exception:
                log.exception("chain %s: could not tidy its earlier messages", record.id)
            ready.append((record, surface, steps))
        if first or self.store.shared:  # a process that died later may owe some too
            await self._deliver_owed(platform, surface_for)
        handles = []
        for record, surface, steps in ready:
            question = Question(record.question, id=record.id, history=tuple(record.history),
                                mode=record.mode,
                                done_steps=tuple((s.title, s.content) for s in steps))
            request = ChainRequest(platform, question, record.asker, record.channel,
                                   record.thread, record.workspace, anchor=record.anchor)
            handles.append(self._launch(request, surface, record.language,
                                        _thread_key(platform, record.thread),
                                        resumed=True, earlier=settled(record.handles)))
        return handles

    async def _deliver_owed(self, platform: str, surface_for: SurfaceFor) -> None:
        """Final texts an earlier process could not deliver: delivered by this one (each
        chain's by one process, on a shared store: those whose lease it claims)."""
        records = await self.store.claim_owed(platform, self.owner, self.settings.lease_seconds,
                                              skip=frozenset(self.deliveries.owing_now()))
        for record in records:
            if self.deliveries.owing(record.id):
                continue
            surface = await _reach(surface_for, record)
            if surface is None:
                continue  # still owed: the next start tries again (until the bound)
            await self.deliveries.owe(record.id, platform, surface, owed_of(record.owed),
                                      record.language,
                                      since=record.finished_at or record.started_at)


def _process_name() -> str:
    """A name for this process (and, after its leases lapsed, its next one) in a shared
    store's leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _reach(surface_for: Callable[[ChainRecord], Awaitable[Surface | None]],
                 record: ChainRecord) -> Surface | None:
    """The thread of a chain from an earlier process, or None where it cannot be written."""
    try:
        return await surface_for(record)
    except Exception:
        log.exception("chain %s: its thread cannot be reached", record.id)
        return None


def _thread_key(platform: str, thread: str) -> tuple[str, str] | None:
    return (platform, thread) if thread else None


def _with_history(question: Question, history: tuple[Turn, ...]) -> Question:
    return Question(question.text, id=question.id, history=history, mode=question.mode,
                    done_steps=question.done_steps, votes=question.votes)


async def _once(event: Event) -> AsyncIterator[Event]:
    yield event
