"""Self-consistency: K chains for one question, run at once, and the majority answer.

The first chain runs at the configured temperature and is the one a thread shows, step by
step, as a single chain is shown; the others are sampled (`VOTE_TEMPERATURE`) and run beside
it, each under its own chain id, so a session router keeps each on one replica (they share the
prompt's prefix: system prompt, history, question). When all have answered, the answers are
compared as `bot/answers.py` reads them (numbers, yes/no, weekdays, letters); answers that do
not read as one value of a kind are free text, and the model is asked once to group them.
The final answer is the majority's, and carries the count (`FinalAnswer.votes`), ties and
failed chains included, so every presenter shows the vote without code of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from bot.answers import plain, text_key, vote_key
from bot.engine import Engine
from bot.events import (
    AnswerDelta,
    ChainFailed,
    Event,
    FinalAnswer,
    Question,
    VoteCount,
    Votes,
)
from bot.llm import LLMClient, LLMError, Restart, TextDelta, temperature_override

log = logging.getLogger(__name__)

# The sampled chains' temperature (or PONDER_TEMPERATURE, when that is higher): self-consistency
# needs chains that can differ; 0.7 is the range the method was measured in.
VOTE_TEMPERATURE = 0.7
_NAME_CHARS = 48  # an answer named in a vote line is cut to this
_GROUP_ANSWER_CHARS = 1500  # each answer shown to the grouping request is cut to this
_GROUP_MAX_TOKENS = 256

_GROUP_PROMPT = """\
You compare answers that were given to the same question. Group together the answers that \
give the same final result, however they are worded; answers with different results go in \
different groups. Reply with one JSON object and nothing else, listing every answer number \
exactly once: {"groups": [[1, 3], [2]]}"""


def chains(engine: Engine, question: Question) -> AsyncIterator[Event]:
    """The events of `question` as the bots run it: one chain, or a vote of
    `question.votes` (else PONDER_VOTES) chains."""
    k = question.votes or engine.settings.votes
    return vote(engine, question, k) if k > 1 else engine.run(question)


async def vote(engine: Engine, question: Question, k: int) -> AsyncGenerator[Event, None]:
    """The first chain's events as they come, then one `FinalAnswer` with the vote of `k`
    chains. The first chain's answer is held back (it may not be the majority's): the
    thread shows the answer as pending until every chain is done. Cancelling the consumer
    stops every chain (`chain_failed: cancelled` once, then the cancellation goes on)."""
    if k <= 1:
        async for event in engine.run(question):
            yield event
        return
    began = time.monotonic()
    temperature = max(engine.settings.temperature, VOTE_TEMPERATURE)
    others = [asyncio.create_task(_answer_of(engine, _sibling(question, n), temperature),
                                  name=f"vote-{question.id}-{n}") for n in range(2, k + 1)]
    first: FinalAnswer | None = None
    ended = False  # a chain_failed went out already
    try:
        pending_shown = False
        async for event in engine.run(question):
            if isinstance(event, AnswerDelta):
                if not pending_shown:  # "Answer: thinking…" until the vote is in
                    pending_shown = True
                    yield AnswerDelta("")
                continue
            if isinstance(event, FinalAnswer):
                first = event
                continue
            if isinstance(event, ChainFailed):
                ended = True
            yield event
        if first is None:
            return  # the first chain failed: the thread says so, and the others are stopped
        answers = [first.text, *await asyncio.gather(*others)]
        tally = await count_votes(engine.llm, question, answers)
        yield FinalAnswer(tally.text, first.seconds, time.monotonic() - began, first.steps,
                          tally.votes)
    except asyncio.CancelledError:
        if not ended:
            yield ChainFailed("cancelled", "stopped", time.monotonic() - began)
        raise
    finally:
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def _sibling(question: Question, n: int) -> Question:
    # A fresh chain (a resumed first chain's steps are its own), under an id of its own.
    return Question(question.text, id=f"{question.id}-{n}", history=question.history,
                    mode=question.mode, votes=1)


async def _answer_of(engine: Engine, question: Question, temperature: float) -> str | None:
    """A sampled chain's final answer, or None when it failed."""
    temperature_override.set(temperature)  # this task's own context: the first chain keeps its
    try:
        async for event in engine.run(question):
            if isinstance(event, FinalAnswer):
                return event.text
            if isinstance(event, ChainFailed):
                log.info("a chain of the vote failed: %s", event.message)
                return None
    except Exception:
        log.exception("a chain of the vote crashed")
    return None


# --- counting --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tally:
    text: str  # the answer to show: the majority's (on a tie, the first chain's if tied)
    votes: Votes


async def count_votes(llm: LLMClient, question: Question, answers: list[str | None]) -> Tally:
    """The majority of `answers` (None: a chain that failed; the first is the shown chain's).

    Groups are formed on what the answers say (`bot/answers.py`); when some do not read as a
    value, the model groups them (one request); when that fails too, equal texts group."""
    given = [(i, text) for i, text in enumerate(answers) if text is not None]
    failed = len(answers) - len(given)
    if not given:
        return Tally("", Votes(0, len(answers), (), failed=failed))
    groups, names, grouped = await _groups(llm, question, [text for _, text in given])
    # Most chains first; among equals, the group holding the earliest chain (the shown one).
    ordered = sorted(groups, key=lambda g: (-len(g), g[0]))
    best = ordered[0]
    tie = len(ordered) > 1 and len(ordered[1]) == len(best)
    counts = tuple(VoteCount(names[g[0]], len(g)) for g in ordered)
    votes = Votes(agree=len(best), total=len(answers), answers=counts, tie=tie,
                  grouped=grouped, failed=failed)
    return Tally(given[best[0]][1], votes)


async def _groups(llm: LLMClient, question: Question, texts: list[str]
                  ) -> tuple[list[list[int]], list[str], bool]:
    """Groups of indices into `texts` (each in order), a short name per text, and whether
    the model did the grouping."""
    keys = [vote_key(text) for text in texts]
    read = [key for key in keys if key is not None]
    if len(read) == len(texts) and len({shape for shape, _ in read}) == 1:
        return _by_key([found.key for _, found in read]), [found.shown for _, found in read], False
    names = [_short(text) for text in texts]
    plain_keys = [text_key(text) for text in texts]
    if len(set(plain_keys)) > 1:
        groups = await _model_groups(llm, question, texts)
        if groups is not None:
            return groups, names, True
    return _by_key(plain_keys), names, False


def _by_key(keys: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _short(text: str) -> str:
    first = plain(text.strip().split("\n", 1)[0]) or plain(text)
    return first if len(first) <= _NAME_CHARS else first[: _NAME_CHARS - 1].rstrip() + "…"


async def _model_groups(llm: LLMClient, question: Question, texts: list[str]
                        ) -> list[list[int]] | None:
    """The model's grouping of free-text answers (indices into `texts`), or None."""
    shown = "\n\n".join(f"Answer {n}:\n{text[:_GROUP_ANSWER_CHARS]}"
                        for n, text in enumerate(texts, start=1))
    messages = [{"role": "system", "content": _GROUP_PROMPT},
                {"role": "user", "content": f"Question:\n{question.text}\n\n{shown}"}]
    reply = ""
    try:
        async for item in llm.stream_text(messages, chain_id=question.id,
                                          max_tokens=_GROUP_MAX_TOKENS):
            if isinstance(item, Restart):
                reply = ""
            elif isinstance(item, TextDelta):
                reply += item.content
    except LLMError as exc:
        log.warning("could not have the vote's answers grouped: %s", exc.detail)
        return None
    groups = _parse_groups(reply, len(texts))
    if groups is None:
        log.warning("the model's grouping of the vote's answers was unusable: %.200r", reply)
    return groups


def _parse_groups(reply: str, n: int) -> list[list[int]] | None:
    start = reply.find("{")
    if start == -1:
        return None
    try:
        value, _ = json.JSONDecoder(strict=False).raw_decode(reply[start:])
    except ValueError:
        return None
    raw = value.get("groups") if isinstance(value, dict) else None
    if not isinstance(raw, list):
        return None
    seen: set[int] = set()
    groups: list[list[int]] = []
    for group in raw:
        if not isinstance(group, list):
            return None
        members = sorted({m - 1 for m in group if isinstance(m, int) and 1 <= m <= n} - seen)
        seen.update(members)
        if members:
            groups.append(members)
    # An answer the model left out stands alone: it agreed with nobody it named.
    groups.extend([i] for i in range(n) if i not in seen)
    return groups


