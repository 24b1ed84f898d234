"""The reasoning engine: one question in, a stream of events out. Knows no platform."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bot import prompts
from bot.config import Mode, Settings
from bot.context import Fitted
from bot.events import (
    AnswerDelta,
    ChainFailed,
    ChainStarted,
    Event,
    FinalAnswer,
    Language,
    Question,
    StepDelta,
    StepFinished,
    StepStarted,
    TurnsLeftOut,
)
from bot.llm import ContextOverflow, LLMClient, LLMError, Restart, TextDelta, TextDone
from bot.steps import StepProgress, StepResult, answer_text

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
T = TypeVar("T")

_NO_STEP = "(the model returned no readable step)"
_NATIVE_MIN_STEP_CHARS = 240  # below this a paragraph break does not end a native step


@dataclass(slots=True)
class _Conversation:
    """What a chain sends: `head` (the system prompt) and `tail` (the question, then the chain
    so far) every time; between them as many of the thread's earlier `turns`, newest first,
    as the context window leaves room for (`LLMClient.fit`)."""

    head: Messages
    turns: list[tuple[dict[str, str], dict[str, str]]]
    tail: Messages = field(default_factory=list)
    told: bool = False  # TurnsLeftOut said already

    def told_of(self, fitted: Fitted) -> TurnsLeftOut | None:
        """The event for turns this request leaves out, the first time any are."""
        if self.told or not (fitted.left_out or fitted.cut):
            return None
        self.told = True
        return TurnsLeftOut(fitted.left_out, len(self.turns), fitted.cut)


class Engine:
    def __init__(self, llm: LLMClient, settings: Settings) -> None:
        self.llm = llm
        self.settings = settings

    async def run(self, question: Question) -> AsyncIterator[Event]:
        """Events of one chain. Cancelling the consumer ends it with `chain_failed: cancelled`
        (yielded once, then the cancellation goes on)."""
        started = time.monotonic()
        language = prompts.detect_language(question.text)
        mode = question.mode or self.settings.mode
        yield ChainStarted(question.id, question.text, str(mode), language)
        steps: AsyncGenerator[Event, None] = (
            self._native(question, language) if mode == Mode.NATIVE
            else self._chain(question, language)
        )
        try:
            async for event in steps:
                if isinstance(event, FinalAnswer):
                    event = FinalAnswer(event.text, event.seconds,
                                        time.monotonic() - started, event.steps)
                yield event
        except LLMError as exc:
            yield ChainFailed(exc.reason, exc.say(language), time.monotonic() - started)
        except asyncio.CancelledError:
            yield ChainFailed("cancelled", "stopped", time.monotonic() - started)
            raise
        finally:
            await steps.aclose()

    # --- chain mode: one JSON step per request ------------------------------------------

    async def _chain(
        self, question: Question, language: Language
    ) -> AsyncGenerator[Event, None]:
        s = self.settings
        chat = _Conversation(
            [{"role": "system", "content": prompts.system_prompt(language, s.min_steps,
                                                                 s.max_steps)}],
            _turns(question), [{"role": "user", "content": question.text}])
        last_content = ""
        count = len(question.done_steps)
        empty_in_a_row = repeats = 0
        for n, (title, content) in enumerate(question.done_steps, start=1):
            chat.tail.append(_step_message(title, content, "continue"))
            chat.tail.append({"role": "user", "content": prompts.next_step(language, n + 1)})
            last_content = content
        for index in range(count + 1, s.max_steps + 1):
            fitted = await self.llm.fit(chat.head, chat.turns, chat.tail, s.step_max_tokens)
            spare = fitted.spare
            if spare is not None and spare < s.step_max_tokens // 2 + s.answer_max_tokens // 4:
                break  # the context is nearly full: keep what is left for the answer
            if (told := chat.told_of(fitted)) is not None:
                yield told
            yield StepStarted(index)
            began = time.monotonic()
            result: StepResult | None = None

            def step(messages: Messages) -> AsyncIterator[StepProgress | StepResult | Restart]:
                return self.llm.stream_step(messages, chain_id=question.id)

            async for item in self._sent(chat, fitted, s.step_max_tokens, step):
                if isinstance(item, TurnsLeftOut):
                    yield item
                elif isinstance(item, Restart):
                    yield StepDelta(index, "", "")
                elif isinstance(item, StepProgress):
                    yield StepDelta(index, item.title, item.content)
                else:
                    result = item
            assert result is not None  # stream_step always ends with a result
            count = index
            content = result.content or _NO_STEP
            yield StepFinished(index, result.title, content, time.monotonic() - began)
            chat.tail.append(_step_message(result.title, content, result.next_action))
            if result.content:
                # A model that only repeats itself has nothing more to add: stop asking.
                repeats = repeats + 1 if _same(result.content, last_content) else 0
                last_content, empty_in_a_row = result.content, 0
                if repeats >= 2:
                    break
            else:
                empty_in_a_row += 1
                if empty_in_a_row >= 2:
                    break  # the model is not producing steps; ask for its answer instead
            if index == s.max_steps:
                break
            if result.next_action == "final_answer":
                if index >= s.min_steps:
                    break
                chat.tail.append({"role": "user", "content": prompts.not_yet(language,
                                                                            index + 1)})
            else:
                chat.tail.append({"role": "user", "content": prompts.next_step(language,
                                                                              index + 1)})
        chat.tail.append({"role": "user", "content": prompts.final_request(language)})
        async for event in self._answer(chat, question.id, count, last_content):
            yield event

    async def _sent(self, chat: _Conversation, fitted: Fitted, budget: int,
                    request: Callable[[Messages], AsyncIterator[T]]
                    ) -> AsyncIterator[T | TurnsLeftOut]:
        """`request` with the fitted messages. A request the server says is past its window
        (the counts were off: it says by how much) is fitted again, tighter, and sent once
        more; a second refusal ends the chain with a message the asker can act on."""
        try:
            async for item in request(fitted.messages):
                yield item
            return
        except ContextOverflow as exc:
            log.warning("the request was past the model's context (%s); fitting it again",
                        exc.detail)
        fitted = await self.llm.fit(chat.head, chat.turns, chat.tail, budget, tight=True)
        if (told := chat.told_of(fitted)) is not None:
            yield told
        async for item in request(fitted.messages):
            yield item

    async def _answer(self, chat: _Conversation, chain_id: str, steps: int,
                      fallback: str) -> AsyncIterator[Event]:
        began = time.monotonic()
        text = ""
        budget = self.settings.answer_max_tokens
        fitted = await self.llm.fit(chat.head, chat.turns, chat.tail, budget)
        if (told := chat.told_of(fitted)) is not None:
            yield told

        def answer(messages: Messages) -> AsyncIterator[TextDelta | TextDone | Restart]:
            return self.llm.stream_text(messages, chain_id=chain_id)

        async for item in self._sent(chat, fitted, budget, answer):
            if isinstance(item, TurnsLeftOut):
                yield item
            elif isinstance(item, Restart):
                text = ""
                yield AnswerDelta("")
            elif isinstance(item, TextDelta) and item.content:
                text += item.content
                yield AnswerDelta(answer_text(text, complete=False))
        yield FinalAnswer(answer_text(text, complete=True) or fallback or _NO_STEP,
                          time.monotonic() - began, 0.0, steps)

    # --- native mode: a reasoning model's own thinking, cut into steps --------------------

    async def _native(
        self, question: Question, language: Language
    ) -> AsyncGenerator[Event, None]:
        s = self.settings
        chat = _Conversation([], _turns(question), [{"role": "user", "content": question.text}])
        began = time.monotonic()
        index, thought, step_began = 0, "", began
        answer = ""
        budget = s.step_max_tokens * s.max_steps + s.answer_max_tokens
        # Earlier turns may take at most half the window: the thinking needs the rest.
        window = await self.llm.context_window()
        reserve = budget if window is None else min(budget, max(s.answer_max_tokens,
                                                                 window // 2))
        fitted = await self.llm.fit(chat.head, chat.turns, chat.tail, reserve)
        if (told := chat.told_of(fitted)) is not None:
            yield told

        def think(messages: Messages) -> AsyncIterator[TextDelta | TextDone | Restart]:
            return self.llm.stream_text(messages, chain_id=question.id, max_tokens=budget)

        async for item in self._sent(chat, fitted, reserve, think):
            if isinstance(item, TurnsLeftOut):
                yield item
                continue
            if isinstance(item, Restart):
                thought, answer = "", ""
                if index:
                    yield StepDelta(index, "", "")
                continue
            if not isinstance(item, TextDelta):
                continue
            if item.reasoning:
                if not index:
                    index, step_began = 1, time.monotonic()
                    yield StepStarted(index)
                thought += item.reasoning
                # One delta can carry several paragraphs (a network read's worth of tokens).
                while index < s.max_steps and (cut := _paragraph_cut(thought)) > 0:
                    done, thought = thought[:cut].strip(), thought[cut:].lstrip()
                    now = time.monotonic()
                    yield StepFinished(index, _title_of(done), done, now - step_began)
                    index, step_began = index + 1, now
                    yield StepStarted(index)
                yield StepDelta(index, _title_of(thought), thought)
            if item.content:
                if thought.strip():
                    yield StepFinished(index, _title_of(thought), thought.strip(),
                                       time.monotonic() - step_began)
                    thought = ""
                answer += item.content
                yield AnswerDelta(answer)
        if thought.strip():
            yield StepFinished(index, _title_of(thought), thought.strip(),
                               time.monotonic() - step_began)
        yield FinalAnswer(answer.strip() or _NO_STEP, time.monotonic() - began, 0.0, index)


def _step_message(title: str, content: str, next_action: str) -> dict[str, str]:
    step = {"title": title, "content": content, "next_action": next_action}
    return {"role": "assistant", "content": json.dumps(step, ensure_ascii=False)}


def _turns(question: Question) -> list[tuple[dict[str, str], dict[str, str]]]:
    return [({"role": "user", "content": turn.question},
             {"role": "assistant", "content": turn.answer}) for turn in question.history]


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _paragraph_cut(thought: str) -> int:
    """Where the first paragraph long enough to be a step ends, or -1."""
    at = thought.find("\n\n", _NATIVE_MIN_STEP_CHARS)
    return at + 2 if at >= 0 else -1


_MARKUP = re.compile(r"[*_`#>]+")


def _title_of(text: str) -> str:
    first = _MARKUP.sub("", text.strip().split("\n", 1)[0]).strip()
    sentence = re.split(r"(?<=[.!?。！？])\s*", first, maxsplit=1)[0]
    return sentence if len(sentence) <= 60 else sentence[:59].rstrip() + "…"
