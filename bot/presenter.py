"""Turns engine events into messages on a Surface: posted once, then edited in place.

Platform-neutral. A surface only knows how to post, edit and render; everything about pacing
(coalescing edits to a budget), length (splitting) and wording lives here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.errors import SurfaceError
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
from bot.surface import Handle, Outcome, Owed, Surface
from bot.wording import every, say

log = logging.getLogger(__name__)

__all__ = [
    "FINAL_POST_PAUSES", "Outcome", "ThreadPresenter", "answer_markdown", "failure_markdown",
    "interrupted_text", "render_pieces", "seconds_text", "split_text", "step_markdown",
    "still_running", "summary_line",
]

# --- wording of a chain's messages ---------------------------------------------------------

_RUNNING = " ⏳"
# A final message the platform refused (after its own retries) is tried again after these.
FINAL_POST_PAUSES = (1.0, 3.0)


def seconds_text(seconds: float) -> str:
    return f"{seconds:.1f}"


def summary_line(total_seconds: float, steps: int, language: Language = "en") -> str:
    """`Thought for 12.4 s · 6 steps` (or its Chinese form)."""
    key = "summary_one" if steps == 1 else "summary"
    return say(key, language, s=seconds_text(total_seconds), n=steps)


def step_title(index: int, title: str, language: Language = "en",
               seconds: float | None = None) -> str:
    """`Step 2 · Check the units · 1.4 s` as plain text (a Slack task card's title)."""
    head = say("step", language, i=index)
    if title.strip():
        head = f"{head} · {title.strip()}"
    return head if seconds is None else f"{head} · {say('took', language, s=seconds_text(seconds))}"


def step_markdown(index: int, title: str, content: str, language: Language = "en",
                  seconds: float | None = None) -> str:
    head = say("step", language, i=index)
    if title.strip():
        head = f"{head} · {title.strip()}"
    tail = _RUNNING if seconds is None else f" · {say('took', language, s=seconds_text(seconds))}"
    body = content.strip() or (say("thinking", language) if seconds is None else "")
    return f"**{head}**{tail}\n{body}".rstrip()


def answer_markdown(text: str, language: Language = "en", summary: str | None = None) -> str:
    head = f"**{say('answer', language)}**" + (_RUNNING if summary is None else "")
    body = _fences_closed(text.strip()) or (say("thinking", language) if summary is None else "")
    out = f"{head}\n{body}".rstrip()
    return f"{out}\n\n_{summary}_" if summary is not None else out


def failure_markdown(failure: ChainFailed, language: Language = "en") -> str:
    if failure.reason == "cancelled":
        return f"⏹️ {say('stopped', language, s=seconds_text(failure.total_seconds))}"
    if failure.reason == "interrupted":
        return f"⏸️ {failure.message}"
    after = say("failed", language, s=seconds_text(failure.total_seconds))
    return f"⚠️ {failure.message}\n_{after}_"


def still_running(shown: str) -> bool:
    """Does a message as a platform shows it still say that Ponder is working on it?"""
    return _RUNNING in shown or any(
        shown.rstrip().endswith("\n" + thinking) for thinking in every("thinking"))


def interrupted_text(shown: str, language: Language = "en") -> str:
    """A half-written message (its Markdown, or as a platform shows it after a dead process
    left it) made to say it was cut short instead of "thinking…". Plain `_italic_` reads the
    same in Markdown and on every platform Ponder writes to."""
    text = shown.replace(_RUNNING, "", 1).rstrip()
    for thinking in every("thinking"):
        if text.endswith("\n" + thinking):
            text = text[: -len(thinking) - 1]
    return f"{text}\n_{say('cut_short', language)}_"


def render_pieces(surface: Surface, markdown: str) -> list[str]:
    """`markdown` as the platform's text, cut into messages that each fit its limit."""
    limit = surface.limits.max_chars
    budget = limit
    while True:
        pieces = [_fences_closed(surface.render(p)) for p in split_text(markdown, budget)]
        longest = max(len(p) for p in pieces)
        if longest <= limit:
            return pieces
        # Rendering grew the text (escaping): split the source finer and try again.
        budget = max(16, int(budget * limit / longest) - 8)


# --- splitting -----------------------------------------------------------------------------

_BREAKS = ("\n\n", "\n", "。", ". ", "! ", "? ", "；", "; ", ", ", " ")
_FENCE = "```"


def split_text(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` chars, at the gentlest boundary available.

    A code fence left open by a cut is closed at the end of the piece and reopened in the next,
    so each message renders on its own.
    """
    if limit < 16:
        raise ValueError("limit too small to split into readable pieces")
    pieces: list[str] = []
    rest = text
    reopen = ""
    while rest:
        rest = reopen + rest
        reopen = ""
        if len(rest) <= limit:
            pieces.append(rest)
            break
        budget = limit - len(_FENCE) - 1  # room to close a fence the cut leaves open
        cut = _cut_point(rest, budget)
        piece, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n")
        if piece.count(_FENCE) % 2 == 1:
            piece += "\n" + _FENCE
            reopen = _FENCE + "\n"
        pieces.append(piece)
    return [p for p in pieces if p.strip()] or [""]


def _fences_closed(shown: str) -> str:
    """A message whose text leaves a code fence open (a model's unbalanced ```, or a code
    block still streaming) gets it closed, so nothing after it is swallowed into code."""
    return f"{shown}\n{_FENCE}" if shown.count(_FENCE) % 2 == 1 else shown


def _cut_point(text: str, budget: int) -> int:
    floor = budget // 3  # never make a piece absurdly short just to cut at a paragraph
    for mark in _BREAKS:
        at = text.rfind(mark, floor, budget)
        if at != -1:
            return at + len(mark)
    return budget


# --- message slots -------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    """One platform message: what it shows, what it should show, and its pending writer."""

    key: str
    handle: Handle
    written: str
    wanted: str
    last_write: float
    final: bool = False
    retried: bool = False  # a final text the platform refused once is tried once more
    writer: asyncio.Task[None] | None = None


class ThreadPresenter:
    """Shows one chain on one surface. `await present(events)` returns when all is written."""

    def __init__(self, surface: Surface, language: Language = "en") -> None:
        self.surface = surface
        self.language: Language = language
        self.outcome = Outcome()
        self._blocks: dict[str, list[_Slot]] = {}
        self._texts: dict[str, str] = {}
        self._writers: set[asyncio.Task[None]] = set()
        self._abandoned = False

    async def present(self, events: AsyncIterator[Event]) -> Outcome:
        try:
            async for event in events:
                await self.handle(event)
        except asyncio.CancelledError:
            # Cut off (its last words took too long: the platform may be gone): no more
            # writes. Stop, by contrast, ends the events with `chain_failed` and gets here
            # by the normal way, final texts written.
            self.abandon()
            raise
        finally:
            if not self._abandoned:
                await self.finish()
        return self.outcome

    def abandon(self) -> None:
        """Give up every pending write at once."""
        self._abandoned = True
        for writer in list(self._writers):
            writer.cancel()

    async def handle(self, event: Event) -> None:
        match event:
            case ChainStarted(language=language):
                self.language = language
            case StepStarted():
                # Nothing to post yet: the message appears with the step's first words, and a
                # step that finishes before then is posted once, already final (no edit spent).
                pass
            case StepDelta(index=i, title=title, content=content):
                await self._show(f"step:{i}", step_markdown(i, title, content, self.language))
            case StepFinished(index=i, title=title, content=content, seconds=seconds):
                self.outcome.steps = max(self.outcome.steps, i)
                text = step_markdown(i, title, content, self.language, seconds)
                await self._show(f"step:{i}", text, final=True)
            case AnswerDelta(text=text):
                await self._show("answer", answer_markdown(text, self.language))
            case FinalAnswer(text=text, total_seconds=total, steps=steps):
                self.outcome.answer, self.outcome.total_seconds = text, total
                self.outcome.steps = steps
                line = summary_line(total, steps, self.language)
                await self._show("answer", answer_markdown(text, self.language, line), final=True)
            case ChainFailed(total_seconds=total):
                self.outcome.failure, self.outcome.total_seconds = event, total
                await self._settle_open_blocks()
                await self._show("failure", failure_markdown(event, self.language), final=True)

    async def notice(self, markdown: str, key: str | None = None) -> None:
        """A message of its own in the thread (a chain resumed, the model server is down).
        Showing a notice again under the same `key` edits it instead of posting anew."""
        name = key if key is not None else str(len(self._blocks))
        await self._show(f"notice:{name}", markdown, final=True)

    async def finish(self) -> None:
        """Write the last text of every message; a cancelled chain still gets its final state."""
        await self._settle_open_blocks()
        while self._writers:
            await asyncio.gather(*list(self._writers), return_exceptions=True)

    async def _settle_open_blocks(self) -> None:
        # Nothing may keep showing "thinking…" once the chain is over.
        for key, slots in list(self._blocks.items()):
            if slots and not slots[-1].final:
                await self._show(key, interrupted_text(self._texts[key], self.language),
                                 final=True)

    async def _show(self, key: str, markdown: str, final: bool = False) -> None:
        self._texts[key] = markdown
        pieces = render_pieces(self.surface, markdown)
        slots = self._blocks.setdefault(key, [])
        for n, piece in enumerate(pieces):
            if n < len(slots):
                self._want(slots[n], piece, final)
                continue
            # New messages are posted at once and in order, so a thread reads top to bottom.
            if any(o.handle is None for o in self.outcome.owed):
                # An earlier final text is owed as a new message: nothing may be posted before
                # it lands, or the thread would read out of order (an answer above its steps).
                if final:
                    self.outcome.owed.extend(Owed(key, None, p) for p in pieces[n:])
                return
            handle = await self._post(piece, final)
            if handle is None:
                if final:  # nothing comes after a final text: it is owed, in order
                    self.outcome.owed.extend(Owed(key, None, p) for p in pieces[n:])
                return
            slot = _Slot(key, handle, piece, piece, time.monotonic(), final)
            slots.append(slot)
            self.outcome.add(key, handle)
        for slot in slots[len(pieces):]:
            self._want(slot, "…", final)  # content shrank (a retried step): blank the leftovers

    async def _post(self, piece: str, final: bool) -> Handle | None:
        """Post one message; None when the platform would not take it. Text that is not final
        is shown again by the next event, so one failure is enough; a final text (a finished
        step, the answer, a failure) has nothing after it and is tried again a little later."""
        budget = self.surface.post_budget
        pauses = list(FINAL_POST_PAUSES) if final else []
        while True:
            await budget.acquire(urgent=True)
            try:
                return await self.surface.post(piece)
            except SurfaceError as exc:
                if not pauses:
                    if final:
                        log.warning("could not post a final message (%s): it is owed", exc)
                    else:
                        log.warning("could not post a message (%s); the chain goes on", exc)
                    return None
                pause = pauses.pop(0)
                log.warning("could not post a final message; trying again in %.0f s", pause)
                await asyncio.sleep(pause)

    def _want(self, slot: _Slot, text: str, final: bool) -> None:
        slot.wanted = text
        slot.final = slot.final or final
        if slot.wanted != slot.written and (slot.writer is None or slot.writer.done()):
            slot.writer = asyncio.create_task(self._write(slot))
            self._writers.add(slot.writer)
            slot.writer.add_done_callback(self._writers.discard)

    async def _write(self, slot: _Slot) -> None:
        interval = self.surface.limits.edit_interval
        while slot.wanted != slot.written:
            wait = slot.last_write + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.surface.budget.acquire(urgent=slot.final)
            text = slot.wanted  # the latest text wins; the ones in between are never sent
            try:
                await self.surface.edit(slot.handle, text)
            except SurfaceError as exc:
                log.warning("could not edit a message: %s", exc)
                if not slot.final:
                    return  # the next text will be tried anyway
                if slot.retried or exc.gone:
                    # Nothing comes after a final text: it is owed, for a later delivery.
                    self.outcome.owed.append(Owed(slot.key, slot.handle, text))
                    return
                slot.retried = True
                slot.last_write = time.monotonic()
                continue
            slot.written = text
            slot.last_write = time.monotonic()
