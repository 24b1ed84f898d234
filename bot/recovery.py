"""After a crash: the messages a dead process left half-written stop saying "thinking".

The store keeps each chain's message handles keyed by what they show (`step:3`, `answer`,
`notice:model-wait`, ...), so nothing is parsed back out of rendered text: a step the store has
as finished gets its final text (its last edit was lost), anything else still marked as
running says it was cut short. Surfaces only read and write; this is the same for every
platform.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import AsyncIterator, Sequence

from bot.errors import SurfaceError
from bot.events import Event, Language
from bot.presenter import interrupted_text, render_pieces, step_markdown, still_running
from bot.store import ChainRecord, StepRecord, Store, StoreFailed
from bot.surface import Handle, Presenter, Surface

log = logging.getLogger(__name__)

# Slots of an earlier run of a resumed chain: settled when it was resumed.
SETTLED = "settled:"
# The one slot of a chain stored before handles had slots: what each of its messages showed
# is read back from the message itself (the step heading it begins with).
LEGACY = ""
_LEGACY_STEP = re.compile(r"^\*{1,2}(?:Step (\d+)|第 (\d+) 步)")


async def settle_leftovers(surface: Surface, record: ChainRecord,
                           steps: Sequence[StepRecord]) -> None:
    language = record.language
    finished = {s.index: s for s in steps}
    known = [h for handles in record.handles.values() for h in handles]
    try:
        # First, so a surface can read the whole thread once and answer `read` from that.
        strays = await surface.strays(known)
    except SurfaceError as exc:
        log.warning("could not look for unrecorded messages: %s", exc)
        strays = []
    for slot, handles in record.handles.items():
        if slot.startswith(SETTLED):
            continue
        final: list[str] | None = None
        if (shows := _steps_shown(slot)) is not None:
            final = _final_pieces(surface, [finished.get(i) for i in shows], shows[-1],
                                  language, len(handles))
        for n, handle in enumerate(handles):
            try:
                if await surface.close_leftover(handle, steps, language):
                    continue
                shown = await surface.read(handle)
                if shown is not None and not still_running(shown):
                    continue
                own, piece = final, n
                if slot == LEGACY and shown is not None:  # each message its own step
                    index = _legacy_step(shown) or 0
                    own, piece = _final_pieces(surface, [finished.get(index)], index,
                                               language, 1), 0
                if own is not None:
                    await _write(surface, handle, own[piece] if piece < len(own) else "…")
                elif shown is not None:
                    await _write(surface, handle, interrupted_text(shown, language))
            except SurfaceError as exc:
                log.warning("could not tidy a message (%s) left by the previous process: %s",
                            slot, exc)
    for handle, shown in strays:
        if still_running(shown):
            try:
                await _write(surface, handle, interrupted_text(shown, language))
            except SurfaceError as exc:
                log.warning("could not tidy an unrecorded message: %s", exc)


def _steps_shown(slot: str) -> list[int] | None:
    """The steps a slot's messages show: `step:3`, or `step:2-4` for steps that shared a
    reply (under load)."""
    first, _, last = slot.removeprefix("step:").partition("-")
    if not slot.startswith("step:") or not first.isdigit() or not (last or first).isdigit():
        return None
    return list(range(int(first), int(last or first) + 1))


def _final_pieces(surface: Surface, steps: list[StepRecord | None], last: int,
                  language: Language, room: int) -> list[str] | None:
    """The final text of the steps a slot showed, as the messages that showed it: the steps
    the store has as finished, and the one after them (up to `last`) said to be cut short.
    None when none of them finished or the text no longer fits the `room` messages posted for
    it (then they say they were cut short instead of showing a part as if it were whole)."""
    done = [s for s in itertools.takewhile(lambda s: s is not None, steps) if s is not None]
    if not done:
        return None
    parts = [step_markdown(s.index, s.title, s.content, language, s.seconds) for s in done]
    if done[-1].index < last:
        parts.append(interrupted_text(step_markdown(done[-1].index + 1, "", "", language),
                                      language))
    pieces = render_pieces(surface, "\n\n".join(parts))
    return pieces if len(pieces) <= room else None


def _legacy_step(shown: str) -> int | None:
    match = _LEGACY_STEP.match(shown)
    return int(match.group(1) or match.group(2)) if match else None


def settled(handles: dict[str, list[Handle]]) -> dict[str, list[Handle]]:
    """A resumed chain's earlier handles, marked as tidied already (a second crash must not
    write a step's final text over the message that says it was cut short)."""
    return {slot if slot.startswith(SETTLED) else SETTLED + slot: list(hs)
            for slot, hs in handles.items()}


async def _write(surface: Surface, handle: Handle, text: str) -> None:
    await surface.budget.acquire(urgent=True)
    await surface.edit(handle, text)


class HandleLog:
    """The platform handles of a chain's messages, written to the store as they are posted, so
    a start after a crash can find (and tidy) what the dead process left half-written."""

    def __init__(self, store: Store, chain_id: str, presenter: Presenter,
                 earlier: dict[str, list[Handle]]) -> None:
        self.store, self.chain_id, self.presenter = store, chain_id, presenter
        self.earlier = earlier  # a resumed chain's, from before
        self.saved: dict[str, list[Handle]] = dict(earlier)

    async def save(self) -> None:
        handles = {**self.earlier, **{k: list(v) for k, v in
                                      self.presenter.outcome.handles.items()}}
        if handles == self.saved:
            return
        try:
            await self.store.set_handles(self.chain_id, handles)
            self.saved = handles
        except StoreFailed:
            pass  # the store has logged why; the chain's next record ends it, saying so
        except Exception:
            log.exception("could not record the chain's message handles")

    async def saved_along(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            yield event
            # The presenter asks for the next event once this one is shown (posted).
            await self.save()
