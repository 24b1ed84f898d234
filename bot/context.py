"""How many tokens a request takes, and fitting a thread's earlier turns into the model's context.

Counts come from the model server's own tokenizer (vLLM's `/tokenize`), one message at a time
and cached by content, so a long thread is not tokenized again on every step; what the chat
template adds around the messages is measured once. A server without `/tokenize` gets an
estimate on the safe side, which knows that Han, kana and hangul cost about a token each, not
the third of one that English letters do. Either count grows when the server says it counted
more (a context-length error names both numbers), so a wrong guess is paid for once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Message = dict[str, str]
Exchange = tuple[Message, Message]  # an earlier question and the answer it got
# Posts a JSON body to the server's /tokenize and returns its JSON answer.
Tokenize = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class NoTokenizer(Exception):
    """The server has no /tokenize (404): the estimate from now on."""


class TokenizeFailed(Exception):
    """/tokenize did not answer this time (timeout, 5xx, a strange body): the estimate, once."""


# The estimate's share of the chat template: markers around each message, and once per request
# the generation prompt and the default system prompt some templates add (Qwen's is ~20).
_EST_PER_MESSAGE = 8
_EST_FIXED = 32
# A message counted alone can merge differently with its neighbours: a token per message.
_EDGE = 1
_CACHE_SIZE = 8192  # messages whose counts are kept (a few hundred long threads)
_CONCURRENT = 8  # /tokenize requests in flight for one count (a thread seen the first time)
_MIN_CUT = 96  # fewer tokens than this left for the newest earlier turn: leave it out instead
_PAUSE = 30.0  # seconds /tokenize is not asked again after it failed (a server down or slow)
_CUT_MARK = " […]"

_WIDE = re.compile("[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
                   "\ufe30-\ufe4f\uff00-\uffef]")  # Han, kana, hangul, CJK punctuation
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")  # emoji, rare Han: several byte tokens
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_PUNCT = re.compile(r"[!-/:-@\[-`{-~]")


def estimate(text: str) -> int:
    """Tokens `text` may take, without the model's tokenizer: on the high side for the
    tokenizers vLLM serves. Han, kana and hangul a token each (Qwen spends less, byte-level
    tokenizers without them more: a context error then teaches the counter); emoji two; other
    non-ASCII letters one; digits and ASCII punctuation one (numbers are split digit by digit);
    ASCII letters and spaces a third."""
    wide = len(_WIDE.findall(text))
    astral = len(_ASTRAL.findall(text))
    other = len(_NON_ASCII.findall(text)) - wide - astral
    digits = sum(map(text.count, "0123456789"))
    punct = len(_PUNCT.findall(text))
    plain = len(text) - wide - astral - other - digits - punct
    return wide + 2 * astral + other + digits + punct + math.ceil(plain / 3)


def margin(window: int) -> int:
    """Tokens kept free in a window of `window`, whatever the counts say."""
    return 16 + window // 64


class TokenCounter:
    """Prompt tokens of chat messages, as the model server counts them (or a safe estimate)."""

    def __init__(self, model: str, tokenize: Tokenize | None) -> None:
        self.model = model
        self._tokenize = tokenize
        self.measured: bool | None = None if tokenize is not None else False  # None: not yet
        self.max_model_len: int | None = None  # as /tokenize reports it
        self._sizes: OrderedDict[bytes, int] = OrderedDict()
        self._template: tuple[int, int] | None = None  # (once per request, per message)
        self._template_lock = asyncio.Lock()
        self._extra = 0  # tokens the server counted beyond the measured counts
        self._scale = 1.0  # how far the server's counts were above the estimate
        self._paused_until = 0.0

    async def count(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of `messages` sent as one chat request (template included)."""
        fixed, sizes = await self.measure(messages)
        return fixed + sum(sizes)

    async def measure(self, messages: Sequence[Message]) -> tuple[int, list[int]]:
        """A request's own cost (generation prompt and the like), and each message's tokens
        with its share of the template."""
        if self.measured is not False and time.monotonic() >= self._paused_until:
            try:
                found = await self._measured(messages)
            except NoTokenizer:
                self.measured = False
                log.info("the model server has no /tokenize; estimating token counts")
            except TokenizeFailed as exc:
                # Not again at once: a server that is down would cost every request a wait.
                self._paused_until = time.monotonic() + _PAUSE
                log.warning("could not count tokens with the model server (%s); estimating "
                            "for %.0f s", exc, _PAUSE)
            else:
                self.measured = True
                return found
        return self._estimated(messages)

    def learn(self, counted: int, actual: int) -> None:
        """The server counted `actual` prompt tokens where this counter said `counted`: count
        more from now on."""
        if actual <= counted or counted <= 0:
            return
        if self.measured:
            self._extra += actual - counted + 8
        else:
            self._scale *= actual / counted * 1.05
        log.warning("the model server counted %d prompt tokens where %d were expected; "
                    "counting more from now on", actual, counted)

    # --- the server's tokenizer ------------------------------------------------------------

    async def _measured(self, messages: Sequence[Message]) -> tuple[int, list[int]]:
        fixed, per = await self._template_cost()
        slots = asyncio.Semaphore(_CONCURRENT)
        found = await asyncio.gather(*(self._content(m.get("content") or "", slots)
                                       for m in messages), return_exceptions=True)
        sizes: list[int] = []
        for size in found:
            if isinstance(size, BaseException):
                raise size
            sizes.append(size + per + _EDGE)
        return fixed + self._extra, sizes

    async def _content(self, text: str, slots: asyncio.Semaphore) -> int:
        key = b"t" + _digest(text)
        size = self._cached(key)
        if size is None:
            async with slots:
                size = self._read(await self._ask({"model": self.model, "prompt": text,
                                                   "add_special_tokens": False}))
            self._keep(key, size)
        return size

    async def _template_cost(self) -> tuple[int, int]:
        """What the chat template adds: once per request (generation prompt, any default
        system prompt) and per message, measured on empty messages."""
        if self._template is None:
            async with self._template_lock:
                if self._template is None:
                    roles = ("system", "user", "assistant")
                    one, two, three = [
                        self._read(await self._ask({
                            "model": self.model, "add_generation_prompt": True,
                            "messages": [{"role": role, "content": ""} for role in chosen]}))
                        for chosen in (roles[1:2], roles[:2], roles)]
                    per = max(1, three - two)
                    # A template that adds its own system prompt when there is none: the
                    # request's own cost is the larger of the two readings.
                    self._template = (max(0, one - per, two - 2 * per), per)
        return self._template

    async def _ask(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self._tokenize is not None
        return await self._tokenize(body)

    def _read(self, answer: dict[str, Any]) -> int:
        count = answer.get("count")
        tokens = answer.get("tokens")
        if not isinstance(count, int):
            if not isinstance(tokens, list):
                raise TokenizeFailed("/tokenize answered without a count")
            count = len(tokens)
        window = answer.get("max_model_len")
        if isinstance(window, int) and window > 0:
            self.max_model_len = window
        return count

    # --- the estimate ----------------------------------------------------------------------

    def _estimated(self, messages: Sequence[Message]) -> tuple[int, list[int]]:
        sizes = []
        for message in messages:
            text = message.get("content") or ""
            key = b"e" + _digest(text)
            size = self._cached(key)
            if size is None:
                size = estimate(text)
                self._keep(key, size)
            sizes.append(math.ceil((size + _EST_PER_MESSAGE) * self._scale))
        return math.ceil(_EST_FIXED * self._scale), sizes

    def _cached(self, key: bytes) -> int | None:
        size = self._sizes.get(key)
        if size is not None:
            self._sizes.move_to_end(key)
        return size

    def _keep(self, key: bytes, size: int) -> None:
        self._sizes[key] = size
        if len(self._sizes) > _CACHE_SIZE:
            self._sizes.popitem(last=False)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# --- fitting a request into the window ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fitted:
    """A request's messages as they fit the window, and what was left out to make them fit."""

    messages: list[Message]
    prompt: int  # tokens of `messages`, as counted
    left_out: int  # earlier turns not sent
    cut: bool  # the newest earlier turn sent was shortened
    room: int | None  # tokens left for the reply (None: the window is unknown)
    spare: int | None  # tokens there would be for the reply with no earlier turn at all


async def fit(counter: TokenCounter, window: int | None, *, head: Sequence[Message],
              turns: Sequence[Exchange], tail: Sequence[Message], budget: int,
              extra: int = 0) -> Fitted:
    """`head` (the system prompt), then as many of the newest `turns` as leave `budget` tokens
    for the reply, then `tail` (the question and the chain so far), which are always sent.
    Turns go whole, oldest first; when not even the newest fits whole, it is shortened."""
    every = [m for turn in turns for m in turn]
    if window is None:
        messages = [*head, *every, *tail]
        return Fitted(messages, await counter.count(messages), 0, False, None, None)
    fixed, sizes = await counter.measure([*head, *tail])
    required = fixed + sum(sizes)
    spare = window - margin(window) - extra - required
    left = spare - budget
    kept: list[Exchange] = []
    used = 0
    cut = False
    if turns:
        _, turn_sizes = await counter.measure(every)
        for n in range(len(turns) - 1, -1, -1):
            size = turn_sizes[2 * n] + turn_sizes[2 * n + 1]
            if size > left - used:
                break
            kept.insert(0, turns[n])
            used += size
        if not kept and left >= _MIN_CUT:
            shortened = await _shortened(counter, turns[-1], turn_sizes[-2:], left)
            if shortened is not None:
                kept, used, cut = [shortened[0]], shortened[1], True
    messages = [*head, *(m for turn in kept for m in turn), *tail]
    prompt = required + used
    return Fitted(messages, prompt, len(turns) - len(kept), cut,
                  window - margin(window) - extra - prompt, spare)


async def _shortened(counter: TokenCounter, turn: Exchange, sizes: list[int],
                     room: int) -> tuple[Exchange, int] | None:
    """The turn cut to fit `room` tokens (each side keeps its beginning: an answer leads with
    its point), with its size; None when even a sliver does not fit."""
    whole = sum(sizes)
    for share in (0.9, 0.6, 0.3):
        ratio = room * share / whole
        shorter = tuple({**m, "content": _cut(m.get("content") or "", ratio)} for m in turn)
        _, now = await counter.measure(shorter)
        if sum(now) <= room:
            return (shorter[0], shorter[1]), sum(now)
    return None


def _cut(text: str, ratio: float) -> str:
    keep = int(len(text) * ratio)
    return text if keep >= len(text) else text[:keep].rstrip() + _CUT_MARK
