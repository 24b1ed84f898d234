"""Turns engine events into messages on a Surface: posted once, then edited in place.

Platform-neutral. A surface only knows how to post, edit and render; everything about pacing
(coalescing edits to a budget), length (splitting) and wording lives here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

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
    Votes,
)
from bot.surface import Control, Controls, Handle, Outcome, Owed, Surface
from bot.wording import every, say

log = logging.getLogger(__name__)

__all__ = [
    "FINAL_POST_PAUSES", "Outcome", "ThreadPresenter", "answer_markdown", "failure_markdown",
    "final_summary", "interrupted_text", "render_pieces", "seconds_text", "split_text",
    "step_markdown", "still_running", "summary_line", "vote_line",
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


_MARKS = re.compile(r"[*_`~|]+")


def vote_line(votes: Votes, language: Language = "en") -> str:
    """`3 of 5 lines of reasoning agree · others said 41 (1), 40 (1)` (or its Chinese form)."""
    parts = [say("votes_tie" if votes.tie else "votes_agree", language, a=votes.agree,
                 k=votes.total)]
    # The answers are the model's words inside an italic line: no marks that would end it.
    others = [say("votes_count", language, answer=_MARKS.sub("", c.answer).strip(), n=c.count)
              for c in votes.answers[1:]]
    if others:
        parts.append(say("votes_others", language, others=say("votes_sep", language).join(others)))
    if votes.failed:
        parts.append(say("votes_failed", language, n=votes.failed))
    if votes.grouped:
        parts.append(say("votes_grouped", language))
    return " · ".join(parts)


def final_summary(answer: FinalAnswer, language: Language = "en") -> str:
    """The line under a final answer, as every presenter shows it: the summary, and for a
    voted answer the vote first and how many chains ran last (what the answer cost)."""
    line = summary_line(answer.total_seconds, answer.steps, language)
    if answer.votes is None:
        return line
    chains = say("summary_chains", language, n=answer.votes.total)
    return f"{vote_line(answer.votes, language)} · {line} · {chains}"


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

# The blocks whose final text is the chain's last word: they go ahead of every other post.
_LAST_WORDS = frozenset({"answer", "failure"})


@dataclass(eq=False)
class _Slot:
    """One platform message: what it shows, what it should show, and its pending writer."""

    key: str
    wanted: str
    final: bool = False
    handle: Handle | None = None  # None until it is posted
    written: str = ""  # what the platform shows
    last_write: float = 0.0
    retried: bool = False  # a final text the platform refused once is tried once more
    claimed: bool = False  # holds a claim on the edit budget until its final text is written
    drawn: frozenset[Control] = frozenset()  # the buttons the platform shows on it
    writer: asyncio.Task[None] | None = None
    # Set when its writes should go at a higher priority than it waits at (its text became
    # final, or its chain's last word came): whoever waits for a turn asks again.
    moved: asyncio.Event = field(default_factory=asyncio.Event)

    def set_final(self, final: bool) -> None:
        if final and not self.final:
            self.moved.set()
        self.final = final


class ThreadPresenter:
    """Shows one chain on one surface. `await present(events)` returns when all is written.

    When the surface's budgets are shared with other chains and run short, what matters is
    written first:

    - A new message is posted when the post budget gives it a turn, with what it should show by
      then: a step or an answer that finished while it waited is posted final, once, with
      nothing left to edit.
    - Final texts first. The chain's last word (its answer, or why it failed) goes ahead of
      every other post, with the replies it must follow in the thread; every final text goes
      ahead of interim ones, and interim writes may not use the edit room held for the final
      texts still to come (`RateLimiter.claim`). Between chains, the one that began first
      (`rank`) goes first, so under a short budget chains finish one after another instead of
      all showing half.
    - Fewer replies. While others wait for the post budget, a new step joins the reply of the
      step before (one reply, edited in place, carries the steps that follow; each still shows
      its title and text); the answer keeps its own reply.

    Buttons (`Controls`, where the surface offers them): Stop on the chain's first reply while
    it runs (taken off with the chain's last word), 👍/👎 on the last message of its final
    answer. `chain_id` names the chain they act on (default: the surface's).
    """

    def __init__(self, surface: Surface, language: Language = "en",
                 rank: float | None = None, chain_id: str | None = None) -> None:
        self.surface = surface
        self.chain_id = surface.chain_id if chain_id is None else chain_id
        self._first: _Slot | None = None  # the chain's first reply: where Stop is
        self.language: Language = language
        self.outcome = Outcome()
        self.rank = time.monotonic() if rank is None else rank
        self._blocks: dict[str, list[_Slot]] = {}
        self._texts: dict[str, str] = {}
        self._writers: set[asyncio.Task[None]] = set()
        self._unposted: deque[_Slot] = deque()  # in thread order
        self._poster: asyncio.Task[None] | None = None
        self._abandoned = False
        self._ending = False  # the chain's last word came: whatever it waits behind is urgent
        # Steps as shown: each one's Markdown and whether it finished; the groups of
        # consecutive steps that share one reply (its block key `step:2` or `step:2-4`).
        self._steps: dict[int, tuple[str, bool]] = {}
        self._groups: dict[str, list[int]] = {}
        self._group_of: dict[int, str] = {}
        self._last: str | None = None  # the block opened last: only it may take a new step

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
                try:
                    await self.finish()
                except asyncio.CancelledError:
                    self.abandon()  # cut off while the last texts were being written
                    raise
        return self.outcome

    def abandon(self) -> None:
        """Give up every pending write at once. The final texts the platform has not shown yet
        become owed (the next process delivers them): the store already calls the chain
        answered, so a cut-off must not let its answer vanish."""
        self._abandoned = True
        for writer in list(self._writers):
            writer.cancel()
        if self._poster is not None:
            self._poster.cancel()
        owed = {(o.slot, repr(o.handle)) for o in self.outcome.owed}
        for slots in self._blocks.values():
            for slot in slots:
                if slot.final and slot.wanted != slot.written \
                        and (slot.key, repr(slot.handle)) not in owed:
                    self.outcome.owed.append(Owed(slot.key, slot.handle, slot.wanted))
        self._release_all()

    async def handle(self, event: Event) -> None:
        match event:
            case ChainStarted(language=language):
                self.language = language
            case StepStarted():
                # Nothing to post yet: the message appears with the step's first words, and a
                # step that finishes before then is posted once, already final (no edit spent).
                pass
            case StepDelta(index=i, title=title, content=content):
                self._step(i, step_markdown(i, title, content, self.language), done=False)
            case StepFinished(index=i, title=title, content=content, seconds=seconds):
                self.outcome.steps = max(self.outcome.steps, i)
                self._step(i, step_markdown(i, title, content, self.language, seconds),
                           done=True)
            case AnswerDelta(text=text):
                self._close_steps()
                self._show("answer", answer_markdown(text, self.language))
            case FinalAnswer(text=text, total_seconds=total, steps=steps):
                self.outcome.answer, self.outcome.total_seconds = text, total
                self.outcome.steps = steps
                line = final_summary(event, self.language)
                self._ending_now()
                self._close_steps()
                self._show("answer", answer_markdown(text, self.language, line), final=True)
            case ChainFailed(total_seconds=total):
                self.outcome.failure, self.outcome.total_seconds = event, total
                self._ending_now()
                self._settle_open_blocks()
                self._show("failure", failure_markdown(event, self.language), final=True)

    async def notice(self, markdown: str, key: str | None = None) -> None:
        """A message of its own in the thread (a chain resumed, the model server is down),
        posted before this returns. Showing a notice again under the same `key` edits it
        instead of posting anew."""
        name = key if key is not None else str(len(self._blocks))
        self._close_steps()
        self._show(f"notice:{name}", markdown, final=True)
        if self._posting():
            assert self._poster is not None
            await asyncio.wait({self._poster})  # its own wait: a caller cut off leaves it be

    async def finish(self) -> None:
        """Write the last text of every message; a cancelled chain still gets its final state."""
        self._settle_open_blocks()
        while self._writers or self._posting():
            pending = [*self._writers, *([self._poster] if self._poster is not None else [])]
            await asyncio.gather(*pending, return_exceptions=True)
        self._release_all()

    def _ending_now(self) -> None:
        """The chain's last word came: the replies not posted yet stand before it in the
        thread, so they are as urgent as it is. Nothing is left to stop."""
        self._ending = True
        for slot in self._unposted:
            slot.moved.set()
        first = self._first
        if first is not None and first.drawn:
            self._want(first, first.wanted, first.final)

    def _controls(self, slot: _Slot) -> frozenset[Control]:
        """The buttons `slot` should carry now (only those the surface offers)."""
        offers = self.surface.offers
        if not offers or not self.chain_id:
            return frozenset()
        kinds: set[Control] = set()
        if slot is self._first and not self._ending:
            kinds.add("stop")
        if slot.final and slot.key == "answer" and self._blocks.get("answer", [])[-1:] == [slot]:
            kinds.add("feedback")
        return frozenset(kinds) & offers

    def _stale(self, slot: _Slot) -> bool:
        """The platform shows something else than `slot` should: its text or its buttons."""
        return slot.wanted != slot.written or self._controls(slot) != slot.drawn

    async def _send(self, slot: _Slot, text: str) -> Handle:
        """Post or edit `slot` with `text` and the buttons it should carry."""
        kinds = self._controls(slot)
        if slot.handle is None:
            if kinds:
                handle = await self.surface.post_with(text, self._with(kinds))
            else:
                handle = await self.surface.post(text)
        else:
            handle = slot.handle
            if kinds or slot.drawn:
                await self.surface.edit_with(handle, text, self._with(kinds))
            else:
                await self.surface.edit(handle, text)
        slot.drawn = kinds
        return handle

    def _with(self, kinds: frozenset[Control]) -> Controls:
        return Controls(self.chain_id, kinds, self.language)

    # --- steps, one reply each or several to a reply -----------------------------------------

    def _step(self, i: int, markdown: str, done: bool) -> None:
        self._steps[i] = (markdown, done)
        key = self._group_of.get(i) or self._place(i)
        steps = self._groups[key]
        text = "\n\n".join(self._steps[j][0] for j in steps)
        finished = all(self._steps[j][1] for j in steps)
        # A finished reply stays open while the channel is busy: the next step may join it.
        self._show(key, text, final=finished and not self._busy(), exact=True)

    def _place(self, i: int) -> str:
        """The reply step `i` is shown in: the previous step's when the channel is busy (and
        nothing came after it), else a new one."""
        last = self._last
        if last is not None and last in self._groups and self._busy():
            return self._join(last, i)
        self._close_steps()
        key = f"step:{i}"
        self._groups[key], self._group_of[i] = [i], key
        return key

    def _join(self, key: str, i: int) -> str:
        steps = [*self._groups.pop(key), i]
        new = f"step:{steps[0]}-{i}"  # the slot says which steps it shows (for recovery)
        self._groups[new] = steps
        for j in steps:
            self._group_of[j] = new
        slots = self._blocks[new] = self._blocks.pop(key, [])
        for slot in slots:
            slot.key = new
        self._texts[new] = self._texts.pop(key, "")
        if key in self.outcome.handles:
            self.outcome.handles[new] = self.outcome.handles.pop(key)
        self._last = new
        return new

    def _busy(self) -> bool:
        """Others (or this chain) wait for the post budget: a new reply would wait too."""
        return self.surface.post_budget.waiting > 0

    def _close_steps(self) -> None:
        """No step joins the last reply any more (something else comes after it)."""
        key = self._last
        steps = self._groups.get(key or "")
        if key is None or not steps or not all(self._steps[j][1] for j in steps):
            return
        slots = self._blocks.get(key)
        if slots and not slots[-1].final:
            self._show(key, self._texts[key], final=True)

    def _settle_open_blocks(self) -> None:
        # Nothing may keep showing "thinking…" once the chain is over.
        for key, slots in list(self._blocks.items()):
            if not slots or slots[-1].final:
                continue
            steps = self._groups.get(key)
            if steps and all(self._steps[j][1] for j in steps):
                self._show(key, self._texts[key], final=True)  # left open for a next step
            else:
                self._show(key, interrupted_text(self._texts[key], self.language), final=True)

    # --- messages ----------------------------------------------------------------------------

    def _show(self, key: str, markdown: str, final: bool = False, exact: bool = False) -> None:
        """`key`'s block should show `markdown`: its messages are posted (in thread order) or
        edited in the background. `exact`: a final block may be opened again (a step joins)."""
        if key not in self._blocks:
            self._last = key
        self._texts[key] = markdown
        pieces = render_pieces(self.surface, markdown)
        slots = self._blocks.setdefault(key, [])
        for n, piece in enumerate(pieces):
            if n < len(slots):
                self._want(slots[n], piece, final, exact)
                continue
            slot = _Slot(key, piece)
            slot.set_final(final)
            slots.append(slot)
            self._unposted.append(slot)
        for slot in slots[len(pieces):]:
            self._want(slot, "…", final, exact)  # content shrank (a retried step): blank them
        if self._unposted and not self._posting() and not self._abandoned:
            self._poster = asyncio.create_task(self._post_all(), name="presenter-posts")

    def _posting(self) -> bool:
        return self._poster is not None and not self._poster.done()

    async def _post_all(self) -> None:
        """Post the new messages one by one, in thread order."""
        while self._unposted:
            slot = self._unposted[0]
            if slot not in self._blocks.get(slot.key, ()):
                self._unposted.popleft()  # given up on (its block will post anew)
                continue
            posted = None
            if not any(o.handle is None for o in self.outcome.owed):
                posted = await self._post(slot)
            # else an earlier final text is owed as a new message: nothing may be posted before
            # it lands, or the thread would read out of order (an answer above its steps).
            self._unposted.popleft()
            if posted is None:
                if slot is self._first:
                    self._first = None  # the next reply is the first one there is
                self._release(slot)
                self._drop(slot)
                if slot.final:  # nothing comes after a final text: it is owed, in order
                    self.outcome.owed.append(Owed(slot.key, None, slot.wanted))
                continue
            slot.handle, slot.written = posted
            slot.last_write = time.monotonic()
            self.outcome.add(slot.key, slot.handle)
            self._want(slot, slot.wanted, slot.final)  # what changed while it was posted

    def _drop(self, slot: _Slot) -> None:
        slots = self._blocks.get(slot.key, [])
        if slot in slots:
            slots.remove(slot)

    async def _post(self, slot: _Slot) -> tuple[Handle, str] | None:
        """Post one message with the text it should show when its turn comes; None when the
        platform would not take it. Text that is not final is shown again by the next event,
        so one failure is enough; a final text (a finished step, the answer, a failure) has
        nothing after it and is tried again a little later."""
        pauses = list(FINAL_POST_PAUSES)
        while True:
            await self._post_turn(slot)
            text = slot.wanted
            if self._first is None:
                self._first = slot
            try:
                return await self._send(slot, text), text
            except SurfaceError as exc:
                if not slot.final:
                    log.warning("could not post a message (%s); the chain goes on", exc)
                    return None
                if not pauses:
                    log.warning("could not post a final message (%s): it is owed", exc)
                    return None
                pause = pauses.pop(0)
                log.warning("could not post a final message; trying again in %.0f s", pause)
                await asyncio.sleep(pause)

    async def _post_turn(self, slot: _Slot) -> None:
        """Wait for a turn to post the slot. Urgent: the chain's last word, and once it came,
        the final texts still to be posted before it. The other final texts keep their chain's
        turn (so chains finish in order), ahead of interim ones. An unfinished text first holds
        room in the edit budget for the final edit it will need: when edits run short, it
        waits to be posted finished instead."""
        budget = self.surface.post_budget
        while True:
            slot.moved.clear()
            if slot.final and (self._ending or slot.key in _LAST_WORDS):
                await budget.acquire(urgent=True, rank=self.rank)
                return
            if not slot.final and not slot.claimed:
                if not await self._unless_moved(slot, self.surface.budget.reserve()):
                    continue
                slot.claimed = True
            if await self._unless_moved(slot, budget.acquire(rank=self.rank)):
                return
            if slot.final:
                self._release(slot)  # finished while it waited: posted final, never edited

    async def _edit_turn(self, slot: _Slot) -> None:
        """Wait for a turn to edit the slot: urgent once its text is final (also when it
        becomes final while it waits as an interim edit)."""
        budget = self.surface.budget
        while True:
            slot.moved.clear()
            if slot.final:
                await budget.acquire(urgent=True, rank=self.rank)
                return
            if await self._unless_moved(slot, budget.acquire(rank=self.rank)):
                return

    @staticmethod
    async def _unless_moved(slot: _Slot, wait: Awaitable[None]) -> bool:
        """Await `wait`, unless the slot moves up first (`wait` is then given up and False
        returned)."""
        task = asyncio.ensure_future(wait)
        moved = asyncio.ensure_future(slot.moved.wait())
        try:
            await asyncio.wait({task, moved}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()
            if not task.done():
                task.cancel()  # what it was granted meanwhile is given back
        await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            return False
        task.result()
        return True

    def _want(self, slot: _Slot, text: str, final: bool, exact: bool = False) -> None:
        slot.wanted = text
        slot.set_final(final if exact else slot.final or final)
        if slot.handle is None:
            return  # its post takes whatever it should show by then
        if not slot.final or "stop" in slot.drawn:
            # Shown unfinished (its final text will come), or carrying Stop (taken off with the
            # chain's last word): the room for that edit is held, not spent on interim edits.
            self._claim(slot)
        elif not self._stale(slot):
            self._release(slot)
        if self._stale(slot) and (slot.writer is None or slot.writer.done()):
            slot.writer = asyncio.create_task(self._write(slot))
            self._writers.add(slot.writer)
            slot.writer.add_done_callback(self._writers.discard)

    async def _write(self, slot: _Slot) -> None:
        assert slot.handle is not None
        interval = self.surface.limits.edit_interval
        while self._stale(slot):
            wait = slot.last_write + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._edit_turn(slot)
            text = slot.wanted  # the latest text wins; the ones in between are never sent
            try:
                await self._send(slot, text)
            except SurfaceError as exc:
                log.warning("could not edit a message: %s", exc)
                if not slot.final:
                    return  # the next text will be tried anyway
                if slot.retried or exc.gone:
                    # Nothing comes after a final text: it is owed, for a later delivery.
                    self.outcome.owed.append(Owed(slot.key, slot.handle, text))
                    self._release(slot)
                    return
                slot.retried = True
                slot.last_write = time.monotonic()
                continue
            slot.written = text
            slot.last_write = time.monotonic()
            if slot.final and not self._stale(slot) and "stop" not in slot.drawn:
                self._release(slot)

    def _claim(self, slot: _Slot) -> None:
        if not slot.claimed:
            self.surface.budget.claim()
            slot.claimed = True

    def _release(self, slot: _Slot) -> None:
        if slot.claimed:
            self.surface.budget.release()
            slot.claimed = False

    def _release_all(self) -> None:
        for slots in self._blocks.values():
            for slot in slots:
                self._release(slot)
