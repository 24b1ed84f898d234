"""The seams between the core and a platform: what a thread must do (`Surface`), and what shows
a chain in it (`Presenter`).

A platform subclasses `BaseSurface`, which gives every optional capability a default, so the
service calls each one directly: nothing is looked up by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bot.events import ChainFailed, Event, Language
from bot.ratelimit import RateLimiter
from bot.store import StepRecord

# A message as the platform names it, kept in the store as JSON: a Discord message id, a
# Slack `ts`, or a dict for kinds of message that are not plain posts (a Slack stream).
Handle = str | int | dict[str, Any]

Status = Literal["answered", "failed", "stopped", "resuming"]

# Buttons a message of a chain may carry: Stop on its first reply while it runs, 👍/👎 under
# its final answer. The presenter decides which message carries which; a platform draws the
# ones it `offers` and routes presses back to the service (`Ponder.stop`, `bot/feedback.py`).
Control = Literal["stop", "feedback"]


@dataclass(frozen=True, slots=True)
class Controls:
    chain_id: str
    kinds: frozenset[Control] = frozenset()
    language: Language = "en"


@dataclass(frozen=True, slots=True)
class SurfaceLimits:
    max_chars: int  # longest message the platform accepts, after render()
    edit_interval: float  # min seconds between two edits of one message


@dataclass(frozen=True, slots=True)
class Owed:
    """A final text the platform did not take: to be written later into `handle` (the message
    that shows an earlier state of it), or posted anew where there is none."""

    slot: str
    handle: Handle | None
    text: str

    def as_json(self) -> dict[str, object]:
        return {"slot": self.slot, "handle": self.handle, "text": self.text}


@dataclass
class Outcome:
    """How a chain ended as shown in its thread. `handles` are its messages keyed by what they
    show (`step:3`, `answer`, `failure`, `notice:model-wait`, `stream`), in posting order."""

    answer: str | None = None
    failure: ChainFailed | None = None
    steps: int = 0
    total_seconds: float = 0.0
    handles: dict[str, list[Handle]] = field(default_factory=dict)
    owed: list[Owed] = field(default_factory=list)  # final texts still to be delivered

    @property
    def status(self) -> Status:
        """The one reading of an outcome that every front door renders."""
        if self.failure is not None:
            if self.failure.reason == "interrupted":
                return "resuming"
            return "stopped" if self.failure.reason == "cancelled" else "failed"
        return "answered" if self.answer is not None else "failed"

    def add(self, slot: str, handle: Handle) -> None:
        self.handles.setdefault(slot, []).append(handle)

    def merge(self, other: Outcome) -> None:
        """Take over what another presenter showed (a stream that fell back to posts)."""
        for slot, handles in other.handles.items():
            mine = self.handles.setdefault(slot, [])
            mine.extend(h for h in handles if h not in mine)
        self.owed.extend(o for o in other.owed if o not in self.owed)
        self.answer = other.answer or self.answer
        self.failure = other.failure or self.failure
        self.steps = max(self.steps, other.steps)
        self.total_seconds = other.total_seconds or self.total_seconds


class Presenter(Protocol):
    """Shows one chain on one surface; the service calls nothing else."""

    outcome: Outcome

    async def notice(self, markdown: str, key: str | None = None) -> None:
        """A message of its own (model server down, chain resumed); the same `key` again
        edits it."""

    async def present(self, events: AsyncIterator[Event]) -> Outcome:
        """Show the events; return once the final text of every message is written."""
        ...


class Surface(Protocol):
    """One thread (or channel) on one platform. `post`/`edit` retry the platform's 429/5xx
    themselves and raise `SurfaceError` when they give up."""

    limits: SurfaceLimits
    budget: RateLimiter  # edits: shared by every chain writing to the same channel/workspace
    offers: frozenset[Control]
    chain_id: str

    @property
    def post_budget(self) -> RateLimiter: ...

    def render(self, markdown: str) -> str: ...

    async def post(self, text: str) -> Handle: ...

    async def edit(self, handle: Handle, text: str) -> None: ...

    async def post_with(self, text: str, controls: Controls) -> Handle: ...

    async def edit_with(self, handle: Handle, text: str, controls: Controls) -> None: ...

    def presenter(self, language: Language) -> Presenter | None: ...

    async def read(self, handle: Handle) -> str | None: ...

    async def strays(self, known: Sequence[Handle]) -> list[tuple[Handle, str]]: ...

    async def close_leftover(self, handle: Handle, steps: Sequence[StepRecord],
                             language: Language) -> bool: ...


class BaseSurface(ABC):
    """A surface with the defaults for every optional capability."""

    limits: SurfaceLimits
    budget: RateLimiter
    # The buttons this platform draws on a chain's messages (`Controls`); none by default.
    offers: frozenset[Control] = frozenset()
    # The chain it shows, what its buttons act on: set by the service when the chain starts
    # on it (a front door makes a surface per chain).
    chain_id: str = ""

    @property
    def post_budget(self) -> RateLimiter:
        """The budget new messages wait for: the edit budget, unless the platform limits posts
        apart from edits (Slack: about one a second per channel)."""
        return self.budget

    @abstractmethod
    def render(self, markdown: str) -> str:
        """Presenter Markdown → platform text, made safe (no mass mentions)."""

    @abstractmethod
    async def post(self, text: str) -> Handle:
        """A new message in the thread."""

    @abstractmethod
    async def edit(self, handle: Handle, text: str) -> None:
        """Replace a message's text."""

    async def post_with(self, text: str, controls: Controls) -> Handle:
        """`post`, the message carrying `controls` (only kinds this surface `offers`)."""
        return await self.post(text)

    async def edit_with(self, handle: Handle, text: str, controls: Controls) -> None:
        """`edit`, the message carrying exactly `controls` afterwards (none: removed)."""
        await self.edit(handle, text)

    def presenter(self, language: Language) -> Presenter | None:
        """A presenter of the platform's own (Slack's streaming), or None for the shared one."""
        return None

    async def read(self, handle: Handle) -> str | None:
        """What a message shows now, or None when it cannot be read (gone, not readable).
        Recovery reads what a dead process left half-written; a surface that cannot read
        leaves such messages as they are."""
        return None

    async def strays(self, known: Sequence[Handle]) -> list[tuple[Handle, str]]:
        """The bot's messages in the thread after the first of `known` that are not among
        them, with their text: posts a dead process made but could not record."""
        return []

    async def close_leftover(self, handle: Handle, steps: Sequence[StepRecord],
                             language: Language) -> bool:
        """Settle a handle of a kind that is not a plain message (an open Slack stream);
        True when it was one. `steps` are the chain's finished, stored steps."""
        return False
