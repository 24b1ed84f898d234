"""Running an eval: every item in every mode, at once up to `concurrency` (so vLLM batches
them), each judged on the final answer text a user would see.

- `plain`: the question alone, answered directly (no system prompt, no steps);
- `chain`: one chain, as the bots run a question (`PONDER_VOTES=1`);
- `vote`: K chains and their majority (`bot/votes.py`), as `PONDER_VOTES=K` runs it.

A request that fails (after the client's own retries) makes its item wrong, with the reason
kept for the report; nothing an item does stops the others. Completion tokens are what the
server reported (`usage`) for every request of the item, vote chains and grouping included.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal

from bot.config import Settings
from bot.engine import Engine
from bot.evaluate.judge import judge
from bot.evaluate.sets import Item
from bot.events import ChainFailed, FinalAnswer, Question, StepFinished, Votes
from bot.llm import LLMClient, LLMError, Restart, TextDelta, TokenMeter, token_meter
from bot.steps import answer_text
from bot.votes import vote

log = logging.getLogger(__name__)

EvalMode = Literal["plain", "chain", "vote"]
MODES: tuple[EvalMode, ...] = ("plain", "chain", "vote")


@dataclass(frozen=True, slots=True)
class Result:
    index: int  # the item's place in the set
    mode: EvalMode
    item: Item
    answer: str  # the final answer as shown ("" when the item failed)
    correct: bool
    steps: int  # steps of the chain shown (a vote: its first chain's); 0 for plain
    seconds: float
    tokens: int | None  # completion tokens reported by the server; None: it reported none
    error: str | None = None  # why the item failed (it counts as wrong)
    votes: Votes | None = None


class _Failed(Exception):
    def __init__(self, reason: str, steps: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.steps = steps


class Runner:
    def __init__(self, llm: LLMClient, settings: Settings, *, votes: int = 5,
                 concurrency: int = 8) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.llm = llm
        self.engine = Engine(llm, settings)
        self.votes = votes
        self.concurrency = concurrency

    async def run(self, items: Sequence[Item], modes: Sequence[EvalMode],
                  on_result: Callable[[Result], None] | None = None) -> list[Result]:
        """Every item in every mode; results in item order, modes in the order given.
        `on_result` hears of each result as it comes (a progress bar), exactly once."""
        gate = asyncio.Semaphore(self.concurrency)

        async def job(index: int, mode: EvalMode) -> Result:
            async with gate:
                result = await self._one(index, items[index], mode)
            if on_result is not None:
                on_result(result)
            return result

        # Item by item, every mode of an item side by side: a run cut short still compares
        # the modes on the same questions.
        return list(await asyncio.gather(*(job(i, mode) for i in range(len(items))
                                           for mode in modes)))

    async def _one(self, index: int, item: Item, mode: EvalMode) -> Result:
        meter = TokenMeter()
        token_meter.set(meter)  # this job's task only: its requests, and the chains it starts
        began = time.monotonic()
        votes: Votes | None = None
        error: str | None = None
        try:
            if mode == "plain":
                answer, steps = await self._plain(item), 0
            else:
                answer, steps, votes = await self._chain(item, self.votes if mode == "vote"
                                                         else 1)
        except _Failed as failed:
            answer, steps, error = "", failed.steps, failed.reason
        except Exception as exc:
            # A bug must cost one item, not the run; the report names it.
            log.exception("eval item %d (%s) crashed", index + 1, mode)
            answer, steps, error = "", 0, f"internal error: {type(exc).__name__}: {exc}"
        seconds = time.monotonic() - began
        correct = error is None and judge(answer, item.answer)
        tokens = meter.completion_tokens if meter.reports else None
        return Result(index, mode, item, answer, correct, steps, seconds, tokens, error, votes)

    async def _plain(self, item: Item) -> str:
        text = ""
        try:
            async for part in self.llm.stream_text([{"role": "user", "content": item.question}],
                                                   chain_id=f"eval-{uuid.uuid4().hex}"):
                if isinstance(part, Restart):
                    text = ""
                elif isinstance(part, TextDelta):
                    text += part.content
        except LLMError as exc:
            raise _Failed(exc.message) from None
        return answer_text(text, complete=True)

    async def _chain(self, item: Item, k: int) -> tuple[str, int, Votes | None]:
        steps = 0
        async with aclosing(vote(self.engine, Question(item.question, votes=k), k)) as events:
            async for event in events:
                if isinstance(event, StepFinished):
                    steps = max(steps, event.index)
                elif isinstance(event, FinalAnswer):
                    return event.text, event.steps, event.votes
                elif isinstance(event, ChainFailed):
                    raise _Failed(event.message, steps)
        raise _Failed("the chain ended without an answer", steps)
