"""What the engine tells its listeners. Plain data: no platform knows more than this."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

Language = Literal["en", "zh"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier exchange in a thread: what was asked and what Ponder finally answered."""

    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    history: tuple[Turn, ...] = ()
    mode: str | None = None  # None: the configured mode
    # Steps already taken (title, content) when a chain resumes after a restart.
    done_steps: tuple[tuple[str, str], ...] = ()
    votes: int | None = None  # chains to run and vote over (None: PONDER_VOTES)


@dataclass(frozen=True, slots=True)
class ChainStarted:
    chain_id: str
    question: str
    mode: str
    language: Language
    name = "chain_started"


@dataclass(frozen=True, slots=True)
class StepStarted:
    index: int
    name = "step_started"


@dataclass(frozen=True, slots=True)
class StepDelta:
    """The step so far (whole title and content, not a diff), so a listener can redraw."""

    index: int
    title: str
    content: str
    name = "step_delta"


@dataclass(frozen=True, slots=True)
class StepFinished:
    index: int
    title: str
    content: str
    seconds: float
    name = "step_finished"


@dataclass(frozen=True, slots=True)
class TurnsLeftOut:
    """Earlier turns of the thread were not sent to the model: the request would not have fit
    its context window otherwise. Said at most once per chain, before the step it concerns;
    `cut`: the newest turn that was sent had to be shortened."""

    left_out: int
    of: int
    cut: bool = False
    name = "turns_left_out"


@dataclass(frozen=True, slots=True)
class AnswerDelta:
    """The final answer so far while it streams."""

    text: str
    name = "answer_delta"


@dataclass(frozen=True, slots=True)
class VoteCount:
    """One answer the chains of a vote gave (as short as it can be named), and how many did."""

    answer: str
    count: int


@dataclass(frozen=True, slots=True)
class Votes:
    """How the chains of a self-consistency vote answered (`bot/votes.py`): `agree` of `total`
    gave the answer shown; `answers` names every answer given, the one shown first."""

    agree: int
    total: int
    answers: tuple[VoteCount, ...]
    tie: bool = False  # another answer had as many chains: no majority
    grouped: bool = False  # free-text answers the model grouped (one extra request)
    failed: int = 0  # chains that ended without an answer


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    text: str
    seconds: float
    total_seconds: float
    steps: int
    votes: Votes | None = None  # several chains voted on this answer
    name = "final_answer"


FailureReason = Literal[
    "model_unavailable",  # no server answers, or it kept failing after retries
    "model_error",  # the server refused the request (4xx other than 429)
    "cancelled",  # stopped by a user or by shutdown
    "interrupted",  # the process died mid-chain
    "rejected",  # the question was refused before it started
    "internal",  # a bug in Ponder; logged with its traceback
    "storage",  # the store refused a write (disk full, read-only): never resumed
    "time_limit",  # the platform's time to answer ran out (a Discord interaction's token)
]


@dataclass(frozen=True, slots=True)
class ChainFailed:
    reason: FailureReason
    message: str
    total_seconds: float
    name = "chain_failed"


Event = (
    ChainStarted | StepStarted | StepDelta | StepFinished | AnswerDelta | FinalAnswer | ChainFailed
    | TurnsLeftOut
)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The event as one JSON-ready object: `{"event": name, ...fields}`."""
    fields = dataclasses.asdict(event)
    if isinstance(event, FinalAnswer) and event.votes is None:
        del fields["votes"]  # one chain: the event reads as it always has
    return {"event": event.name, **fields}
