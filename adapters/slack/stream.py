"""Slack's streaming methods for one chain, with post + `chat.update` as the fallback.

Where a workspace offers `chat.startStream` / `appendStream` / `stopStream`, a chain is one
streamed reply: each step is a task card ("Step 2 · Check the units", in progress, then
complete with its time) followed by the step's text as it is generated, then the answer and
the total-time line; the stream is stopped at the end, whatever happened. Appends are coalesced
(`append_interval` per stream, a shared per-workspace budget for `appendStream`).

When the workspace says streaming is not available (unknown method, missing scope, channel
type not supported, ...), the chain is shown with `ThreadPresenter` over the same surface, and
the workspace (or that kind of channel) is remembered as not streaming. A stream that breaks
half-way hands the rest of the chain to `ThreadPresenter` too; one that Slack ended (streams
live about five minutes) is continued in a fresh streamed reply.

Under load the streams of a workspace share Slack's windows for the streaming methods: appends
are spread so that every open stream gets its share of `chat.appendStream`'s window instead of
the first few spending it, and the end of a stream (`chat.stopStream`, which carries the
answer's last words) waits for nothing but its own window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from adapters.slack.chunks import (
    card,
    card_title,
    continued,
    task,
    text_delta,
    text_size,
    to_chunks,
)
from adapters.slack.feedback import feedback_blocks
from adapters.slack.mrkdwn import escape
from adapters.slack.stop import stop_chunks
from adapters.slack.web import SlackCallError, SlackThread, call
from bot.events import (
    AnswerDelta,
    ChainFailed,
    ChainStarted,
    Event,
    FinalAnswer,
    Language,
    StepDelta,
    StepFinished,
    StepStarted,
)
from bot.links import honest_markdown, honest_so_far
from bot.presenter import (
    ThreadPresenter,
    failure_markdown,
    final_summary,
    step_title,
)
from bot.surface import Outcome, Surface
from bot.wording import say

log = logging.getLogger(__name__)

# Errors that mean "this workspace (or token, or app) has no streaming": remembered.
WORKSPACE_REFUSALS = frozenset({
    "unknown_method", "method_not_supported", "not_allowed_token_type", "missing_scope",
    "feature_not_enabled", "team_not_enabled", "not_enabled", "invalid_chunks",
    "missing_recipient_user_id", "missing_recipient_team_id", "no_permission",
})
# Errors that mean "not in this kind of channel": remembered for the channel kind only.
CHANNEL_REFUSALS = frozenset({
    "channel_type_not_supported", "method_not_supported_for_channel_type",
})
EXPIRED = frozenset({"message_not_in_streaming_state"})



class StreamRefused(SlackCallError):
    """Slack said this workspace or channel has no streaming."""


class Stream:
    """One chain shown as a streamed reply (rolled over into a new one when needed)."""

    def __init__(self, thread: SlackThread, surface: Surface, language: Language,
                 rank: float | None = None) -> None:
        self.thread = thread
        self.rank = time.monotonic() if rank is None else rank
        self.surface = surface  # post + edit, once the stream breaks
        self.client = thread.client
        self.ws = thread.workspace
        self.lim = thread.workspace.limits
        self.language: Language = language
        self.outcome = Outcome()
        self.ts: str | None = None
        self.opened_at = 0.0
        self.chars = 0  # text in the current streamed message
        self.pending: list[dict[str, Any]] = []
        self.any_text = False
        self.step_sent: dict[int, str] = {}
        # The model's own titles (not the cards' "Step 2 · Add"): posts that take over a
        # broken stream title the steps themselves.
        self.step_titles: dict[int, str] = {}
        # Finished steps (title, content, seconds), and those Slack has taken as complete: a
        # stream that breaks hands the others to the posts that take over.
        self.finished: dict[int, tuple[str, str, float]] = {}
        self.delivered: set[int] = set()
        self.task_state: dict[int, tuple[str, str]] = {}
        # Cards as the current streamed message shows them: id -> (title, status).
        self.stream_tasks: dict[str, tuple[str, str]] = {}
        self.open_step: int | None = None
        self.answer_sent: str | None = None  # None until the answer has begun
        self.last_flush = 0.0
        self.closing = False
        self.appending = False
        self.stopped = False
        self.broken: SlackCallError | None = None
        self.flusher: asyncio.Task[None] | None = None
        self.fallback: ThreadPresenter | None = None

    # --- the stream's calls ----------------------------------------------------------------

    async def open(self, chunks: list[dict[str, Any]] | None = None) -> None:
        """Open a streamed reply (its turn of `chat.startStream`'s window already taken)."""
        try:
            response = await call("chat.startStream", self.client.chat_startStream(
                channel=self.thread.channel,
                thread_ts=self.thread.thread_ts,
                recipient_user_id=self.thread.asker or None,
                recipient_team_id=self.thread.asker_team or self.ws.team_id or None,
                task_display_mode="timeline",
                # Stop sits on the streamed reply while the chain runs (`stop.py`).
                chunks=[*stop_chunks(self.surface.chain_id, self.language),
                        *to_chunks(chunks or [], self.lim.markdown_chunk)] or None,
            ))
        except SlackCallError as exc:
            if exc.error in WORKSPACE_REFUSALS or exc.error in CHANNEL_REFUSALS:
                raise StreamRefused(exc.method, exc.error) from exc
            raise
        finally:
            self.ws.stream_starts.settled()
        self.ts = str(response["ts"])
        self.opened_at = time.monotonic()
        self.chars = text_size(chunks or [])
        self.stream_tasks = {}
        self._shown(chunks or [])
        self.outcome.add("stream", {"stream": self.ts})  # told apart from posted messages

    def _shown(self, chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks:
            if chunk["type"] == "task_update":
                self.stream_tasks[chunk["id"]] = (chunk["title"], chunk["status"])
                number = str(chunk["id"]).removeprefix("step-")
                if chunk["status"] == "complete" and number.isdigit():
                    # A call carries a step's text before its card completes: both landed.
                    self.delivered.add(int(number))

    async def _append(self, chunks: list[dict[str, Any]]) -> None:
        if self._needs_rollover(chunks):
            await self._rollover()
        try:
            await self._send_append(chunks)
        except SlackCallError as exc:
            if exc.error not in EXPIRED:
                raise
            await self._rollover(stop_old=False)
            await self._send_append(chunks)

    async def _send_append(self, chunks: list[dict[str, Any]]) -> None:
        assert self.ts is not None
        try:
            await call("chat.appendStream", self.client.chat_appendStream(
                channel=self.thread.channel, ts=self.ts,
                chunks=to_chunks(chunks, self.lim.markdown_chunk),
            ))
        finally:
            self.ws.append_budget.settled()
        self.chars += text_size(chunks)
        self._shown(chunks)

    async def _stop(self, chunks: list[dict[str, Any]],
                    blocks: list[dict[str, Any]] | None = None) -> None:
        if self._needs_rollover(chunks):
            await self._rollover()
        assert self.ts is not None
        try:
            await self._send_stop(chunks, blocks)
        except SlackCallError as exc:
            if exc.error not in EXPIRED:
                raise
            await self._rollover(stop_old=False)
            await self._send_stop(chunks, blocks)
        self.stopped = True

    async def _send_stop(self, chunks: list[dict[str, Any]],
                         blocks: list[dict[str, Any]] | None = None) -> None:
        assert self.ts is not None
        await self.ws.stream_stops.acquire(urgent=True, rank=self.rank)
        try:
            await call("chat.stopStream", self.client.chat_stopStream(
                channel=self.thread.channel, ts=self.ts,
                chunks=to_chunks(chunks, self.lim.markdown_chunk) or None,
                blocks=blocks,  # under the finished reply: 👍 / 👎 on an answer
            ))
        finally:
            self.ws.stream_stops.settled()
        self._shown(chunks)

    def _needs_rollover(self, chunks: list[dict[str, Any]]) -> bool:
        too_old = time.monotonic() - self.opened_at > self.lim.stream_max_age
        too_long = self.chars + text_size(chunks) > self.lim.stream_max_chars
        return too_old or (too_long and self.chars > 0)

    async def _rollover(self, stop_old: bool = True) -> None:
        """Close this streamed reply and go on in a fresh one, where the cards that were still
        in progress are declared again (their text goes on there)."""
        carry = [card(id_, title, status) for id_, (title, status) in self.stream_tasks.items()
                 if status == "in_progress"]
        if stop_old:
            try:
                await self._send_stop(self._handing_over())
            except SlackCallError as exc:  # it expires by itself; the chain goes on below
                log.info("could not stop a stream before rolling over: %s", exc.error)
        await self.ws.stream_starts.acquire(urgent=True, rank=self.rank)
        await self.open(carry)

    def _handing_over(self) -> list[dict[str, Any]]:
        """The last words of a streamed reply whose chain goes on below it."""
        # Cards still in progress here stop spinning: their steps go on below.
        closing = [card(id_, title, "complete") for id_, (title, status)
                   in self.stream_tasks.items() if status == "in_progress"]
        closing.append({"type": "markdown_text", "text": continued(self.language)})
        return closing

    # --- events ----------------------------------------------------------------------------

    async def present(self, events: AsyncIterator[Event]) -> Outcome:
        self.ws.open_streams += 1
        try:
            return await self._present(events)
        finally:
            self.ws.open_streams -= 1

    async def _present(self, events: AsyncIterator[Event]) -> Outcome:
        final: Event | None = None
        try:
            async for event in events:
                if isinstance(event, FinalAnswer | ChainFailed):
                    final = event
                await self.handle(event)
        except asyncio.CancelledError:
            # Cut off: no more calls (the stream expires by itself; a restart stops it).
            if self.flusher is not None:
                self.flusher.cancel()
            if self.fallback is not None:
                self.fallback.abandon()
            raise
        except Exception:
            await self._finish(final)  # whatever went wrong, the stream is closed
            raise
        await self._finish(final)
        return self.outcome

    async def handle(self, event: Event) -> None:
        if self.broken is not None and self.fallback is None:
            await self._fall_back(self.broken)
        if self.fallback is not None:
            await self.fallback.handle(event)
            return
        match event:
            case ChainStarted(language=language):
                self.language = language
            case StepStarted(index=i):
                self.open_step = i
                self.step_sent[i] = ""
                self._set_task(i, self._title(i, ""), "in_progress")
            case StepDelta(index=i, title=title, content=content):
                self.step_titles[i] = title
                self._set_task(i, self._title(i, title), "in_progress")
                self._step_text(i, content)
            case StepFinished(index=i, title=title, content=content, seconds=seconds):
                self.finished[i] = (title, content, seconds)
                self.step_titles[i] = title
                self._step_text(i, content)
                self._set_task(i, self._title(i, title, seconds), "complete")
                self.open_step = None
                self.outcome.steps = max(self.outcome.steps, i)
            case AnswerDelta(text=text):
                self._answer_text(text, final=False)
            case FinalAnswer(text=text, total_seconds=total, steps=steps):
                self.outcome.answer, self.outcome.total_seconds = text, total
                self.outcome.steps = steps
                self._answer_text(text, final=True)
                line = final_summary(event, self.language)
                self._queue_text(f"\n\n_{escape(line)}_")
            case ChainFailed(total_seconds=total):
                self.outcome.failure, self.outcome.total_seconds = event, total
                if self.open_step is not None:
                    i = self.open_step
                    self._set_task(i, self._title(i, self.step_titles.get(i, "")), "error")
                    self.open_step = None
                self._queue_text("\n\n" + escape(failure_markdown(event, self.language)))
        if not (isinstance(event, FinalAnswer | ChainFailed)):
            self._schedule()

    def _title(self, i: int, title: str, seconds: float | None = None) -> str:
        return card_title(step_title(i, title, self.language, seconds))

    def _set_task(self, i: int, title: str, status: str) -> None:
        if self.task_state.get(i) == (title, status):
            return  # nothing new to say about the card
        self.task_state[i] = (title, status)
        chunk = task(i, title, status)
        for queued in self.pending:
            if queued["type"] == "task_update" and queued["id"] == chunk["id"]:
                queued.update(chunk)  # a card is updated in place: its first position stays
                return
        self.pending.append(chunk)

    def _step_text(self, i: int, content: str) -> None:
        sent = self.step_sent.get(i, "")
        new = content.strip()
        delta, restarted = text_delta(sent, new)
        if restarted:
            self._queue_text("\n\n↻")  # the model's attempt was retried: it starts over
            sent = ""
        if delta:
            lead = "\n\n" if (not sent and self.any_text) else ""
            self._queue_text(lead + escape(delta))
        self.step_sent[i] = new

    def _answer_text(self, text: str, final: bool) -> None:
        # Streamed Markdown is Slack's to render, links too: they go out honest, and a link
        # still being written waits until its target is known.
        clean = (honest_markdown if final else honest_so_far)(text.lstrip())
        if not clean and not final:
            return  # nothing of the answer yet (the engine holds back a JSON wrapper)
        if self.answer_sent is None:
            header = f"**{say('answer', self.language)}**"
            self._queue_text(("\n\n" if self.any_text else "") + header + "\n")
            self.answer_sent = ""
        delta, restarted = text_delta(self.answer_sent, clean)
        if restarted:
            self._queue_text("\n\n↻\n")
        self._queue_text(escape(delta))
        self.answer_sent = clean.rstrip()

    def _queue_text(self, text: str) -> None:
        if not text:
            return
        self.any_text = True
        if self.pending and self.pending[-1]["type"] == "markdown_text":
            self.pending[-1]["text"] += text
        else:
            self.pending.append({"type": "markdown_text", "text": text})

    # --- pacing ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self.pending and (self.flusher is None or self.flusher.done()):
            self.flusher = asyncio.create_task(self._flush_soon(), name="slack-stream-flush")

    def _append_interval(self) -> float:
        """How often this stream may append: its share of `chat.appendStream`'s window among
        the workspace's open streams, so that none goes without while others spend it."""
        lim = self.lim
        share = self.ws.open_streams * lim.append_window / lim.append_calls
        return max(lim.append_interval, share)

    async def _flush_soon(self) -> None:
        while self.pending and not self.closing and self.broken is None:
            wait = self.last_flush + self._append_interval() - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.ws.append_budget.acquire(rank=self.rank)
            if self.closing:
                return  # the stop carries what is pending
            chunks, self.pending = self.pending, []
            self.appending = True
            try:
                await self._append(chunks)
            except SlackCallError as exc:
                log.warning("stream append failed (%s): the rest of the chain is posted", exc)
                self.pending = chunks + self.pending
                self.broken = exc
                return
            finally:
                self.appending = False
                self.last_flush = time.monotonic()

    async def _finish(self, final: Event | None) -> None:
        """Stop the stream with everything still pending, whatever happened before."""
        self.closing = True
        if self.flusher is not None:
            if not self.appending:
                self.flusher.cancel()  # only waiting for its turn: the stop carries it all
            # An append already on its way lands first, so the text stays in order.
            await asyncio.gather(self.flusher, return_exceptions=True)
        if self.fallback is None and self.broken is None and not self.stopped:
            if final is None:
                # Ended without a final event (the task was cancelled): close what is open.
                if self.open_step is not None:
                    i = self.open_step
                    self._set_task(i, self._title(i, self.step_titles.get(i, "")), "error")
                    self.open_step = None
            answered = isinstance(final, FinalAnswer) and self.surface.chain_id
            try:
                await self._stop(self.pending,
                                 feedback_blocks(self.surface.chain_id) if answered else None)
                self.pending = []
                return
            except SlackCallError as exc:
                log.warning("could not stop the stream (%s): posting the end instead", exc)
                self.broken = exc
        if self.fallback is None and self.broken is not None:
            await self._fall_back(self.broken, final)
        if self.fallback is not None:
            await self.fallback.finish()
            self._merge()

    async def _fall_back(self, exc: SlackCallError, final: Event | None = None) -> None:
        """Hand the rest of the chain to post + edit, re-showing what is open right now."""
        if self.ts is not None and not self.stopped:
            try:
                await self._send_stop(self._handing_over())
            except SlackCallError as stop_error:  # it expires by itself within minutes
                log.info("could not stop the broken stream: %s", stop_error.error)
            self.stopped = True
        self.pending = []
        presenter = ThreadPresenter(self.surface, self.language, rank=self.rank)
        self.fallback = presenter
        for i in sorted(set(self.finished) - self.delivered):
            # Finished while the stream was failing: never shown, so posted now.
            title, content, seconds = self.finished[i]
            await presenter.handle(StepFinished(i, title, content, seconds))
        if self.open_step is not None:
            i = self.open_step
            await presenter.handle(StepStarted(i))
            await presenter.handle(StepDelta(i, self.step_titles.get(i, ""), self.step_sent[i]))
        elif self.answer_sent is not None and final is None:
            await presenter.handle(AnswerDelta(self.answer_sent))
        if final is not None:
            await presenter.handle(final)

    def _merge(self) -> None:
        assert self.fallback is not None
        self.outcome.merge(self.fallback.outcome)
