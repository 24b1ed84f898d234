"""A chain as its front door holds it: wait for its outcome, or stop it."""

from __future__ import annotations

import asyncio

from bot.admission import ChainRequest
from bot.events import ChainFailed, Language
from bot.surface import Outcome
from bot.wording import say


class ChainHandle:
    """A running chain. `cancel()` is the Stop button: the thread shows it was stopped."""

    def __init__(self, request: ChainRequest, language: Language,
                 task: asyncio.Task[Outcome]) -> None:
        self.request = request
        self.chain_id = request.question.id
        self.language: Language = language
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
        """How the chain ended. Never raises: a crash (already logged) reads as a failure."""
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise  # the waiter is being cancelled, not the chain
            return Outcome(failure=ChainFailed("interrupted", say("restarting", self.language),
                                               0.0))
        except Exception:
            return Outcome(failure=ChainFailed("internal", say("internal", self.language), 0.0))
