"""The one place that talks to the model server (vLLM's OpenAI-compatible API).

Every request streams. Failures that may pass (connection errors, timeouts, 429, 5xx, a stream
cut mid-way) are retried with backoff and jitter; a consumer learns that an attempt was thrown
away through a `Restart` marker and starts its partial text over. Reading a step out of the
streamed text is `bot.steps`'s part; this module only carries the text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import httpx2
import jiter
import openai
from openai import AsyncOpenAI

from bot.config import Settings
from bot.context import (
    Exchange,
    Fitted,
    NoTokenizer,
    TokenCounter,
    TokenizeFailed,
    fit,
    margin,
)
from bot.errors import PonderError
from bot.events import Language
from bot.metrics import MODEL_CALL_SECONDS
from bot.steps import STEP_SCHEMA, StepProgress, StepReader, StepResult
from bot.wire import (
    NO_SERVER,
    TIMED_OUT,
    error_text,
    message_of,
    retry_after,
    sse_batches,
    unreachable,
)
from bot.wording import say

log = logging.getLogger(__name__)

# Asks the SDK for the undecoded, unread response (its `with_streaming_response` marker).
RAW_STREAM = ("X-Stainless-Raw-Response", "stream")


OutputFormat = Literal["json_schema", "json_object", "text"]
_FORMATS: tuple[OutputFormat, ...] = ("json_schema", "json_object", "text")


class LLMError(PonderError):
    """The model server could not give an answer.

    `reason` is a ChainFailed reason and `message` its text, fix included; `detail` is the bare
    cause (`timed out`, `HTTP 503: …`) for callers that word their own advice, and `status` the
    HTTP status when the server answered at all.
    """

    def __init__(self, reason: Literal["model_unavailable", "model_error"], message: str, *,
                 detail: str = "", status: int | None = None,
                 wording: tuple[str, dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail or message
        self.status = status
        self.wording = wording  # (key, values) in bot/wording.py: the message in any language

    def say(self, language: Language) -> str:
        """The message in `language` (an asker's), as `message` is in English."""
        if self.wording is None:
            return self.message
        key, values = self.wording
        return say(key, language, **values)


@dataclass(slots=True)
class TokenMeter:
    """What the server reported (`usage`) for the requests made while this meter was set."""

    completion_tokens: int = 0
    prompt_tokens: int = 0
    reports: int = 0  # requests whose usage the server reported

    def add(self, usage: dict[str, Any]) -> None:
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.reports += 1


# Set by a caller that wants to know what its requests cost (`ponder eval`, per question): its
# requests then ask the server for `usage`, added up here. Tasks it starts share the meter.
token_meter: ContextVar[TokenMeter | None] = ContextVar("token_meter", default=None)
# A sampled chain of a vote (`bot/votes.py`) sets its own temperature; unset, every request
# uses PONDER_TEMPERATURE.
temperature_override: ContextVar[float | None] = ContextVar("temperature_override",
                                                            default=None)


class ContextOverflow(LLMError):
    """The request did not fit the model's context window (vLLM's 400). Never a reason to
    change the output format: the caller sends less and tries again."""

    def __init__(self, detail: str, *, window: int | None, prompt: int | None) -> None:
        super().__init__("model_error", say("llm_too_long", "en"), detail=detail, status=400,
                         wording=("llm_too_long", {}))
        self.window = window  # the server's max_model_len, when it said
        self.prompt = prompt  # the prompt tokens it counted, when it said


# A 400/422 that is about the context window, and one that is about the output format.
_OVERFLOW = re.compile(r"maximum context length|context[ _]length[ _]exceeded|"
                       r"exceeds? the (?:model'?s? )?(?:maximum )?context", re.IGNORECASE)
_FORMAT = re.compile(r"response_format|json_schema|json_object|guided|structured[ _-]?output|"
                     r"grammar|xgrammar|outlines", re.IGNORECASE)
_WINDOW = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_PROMPT = re.compile(r"(\d+) input tokens|\((\d+) in the messages", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Restart:
    """The attempt so far is void (it failed mid-way); what follows starts from nothing."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    reasoning: str
    content: str


@dataclass(frozen=True, slots=True)
class TextDone:
    finish_reason: str | None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None,
                 status: int | None = None, text: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        self.text = text  # the server's own words; kept out of chat, where proxies send HTML


class _FormatRejected(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Chunk:
    reasoning: str
    content: str
    finish_reason: str | None


class LLMClient:
    def __init__(self, settings: Settings, *, retry_base_delay: float = 0.5) -> None:
        self.settings = settings
        self.base_url = settings.openai_base_url  # without any user:password (config.py)
        self._retry_base = retry_base_delay
        self._format: OutputFormat = "json_schema"
        self._context: int | None = None
        self._context_probed = False
        # Probes (model list, /health) ask "are you there?": a slower answer is as good as none.
        self._probe_timeout = settings.connect_timeout * 2
        timeout = openai.Timeout(settings.request_timeout, connect=settings.connect_timeout)
        # A proxy's basic auth replaces the SDK's `Bearer` header (config.py refuses both):
        # aiohttp refuses credentials in a URL beside an Authorization header.
        headers: dict[str, str] = {}
        if settings.openai_basic_auth is not None:
            user, password = settings.openai_basic_auth
            pair = f"{user}:{password.get_secret_value()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        # Retries are ours: the SDK's would hide a cut stream and could not restart a step.
        self._client = AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key.get_secret_value(),
            timeout=timeout,
            max_retries=0,
            default_headers=headers,
            # aiohttp's C parser reads SSE at a fraction of the default transport's cost.
            http_client=openai.DefaultAioHttpClient(timeout=timeout),
        )
        # /tokenize, /health sit at the server's root, beside /v1, not under it.
        self._root = self.base_url.rstrip("/").removesuffix("/v1")
        self.counter = TokenCounter(settings.model, self._tokenize)

    @property
    def output_format(self) -> OutputFormat:
        return self._format

    async def close(self) -> None:
        await self._client.close()

    async def served_models(self) -> list[str]:
        """The model ids the server lists (/v1/models). Raises LLMError when it cannot say."""
        return [str(entry.get("id")) for entry in await self._model_list()]

    async def model_root(self) -> str | None:
        """What the server really runs under the configured name (vLLM's `root`: a path or a
        hub id; it differs when a model is served under another name, like the CPU demo
        under the default's), or None when it does not say. Raises LLMError."""
        for entry in await self._model_list():
            if entry.get("id") == self.settings.model and entry.get("root"):
                return str(entry["root"])
        return None

    async def context_window(self) -> int | None:
        """The served model's `max_model_len` (vLLM lists it in /v1/models), asked once; else
        what /tokenize or a context-length error said."""
        if not self._context_probed:
            self._context_probed = True
            try:
                entries = await self._model_list()
            except LLMError:
                self._context_probed = False  # ask again next time
                return self._context or self.counter.max_model_len
            for entry in entries:
                if entry.get("id") == self.settings.model:
                    size = entry.get("max_model_len")
                    if isinstance(size, int) and size > 0:
                        self._context = size
        return self._context or self.counter.max_model_len

    async def fit(self, head: Sequence[dict[str, str]], turns: Sequence[Exchange],
                  tail: Sequence[dict[str, str]], budget: int, *,
                  tight: bool = False) -> Fitted:
        """The request `head + earlier turns + tail` as it fits the context window with
        `budget` tokens left for the reply (`bot/context.py`). `tight`: after the server said
        it did not fit, keep a tenth of the window free besides."""
        window = await self.context_window()
        extra = window // 10 if tight and window else 0
        return await fit(self.counter, window, head=head, turns=turns, tail=tail,
                         budget=budget, extra=extra)

    async def _clamp(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[int, int]:
        """`max_tokens` as the window leaves room for it (vLLM refuses a budget past the
        window rather than answering shorter), and the prompt's tokens as counted."""
        window = await self.context_window()
        prompt = await self.counter.count(messages)
        if window is None:
            return max_tokens, prompt
        room = window - margin(window) - prompt
        # The floor keeps a nearly full window answering; it never raises a smaller ask.
        return min(max_tokens, max(32, room)), prompt

    async def _tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """The server's own tokenizer (vLLM's /tokenize), for `TokenCounter`."""
        try:
            response = await self._client.post(
                self._root + "/tokenize", cast_to=httpx2.Response,
                content=json.dumps(body, ensure_ascii=False).encode(),
                options={"timeout": self._probe_timeout,
                         "headers": {"Content-Type": "application/json"}})
        except openai.APIStatusError as exc:
            if exc.status_code in (404, 405, 501):
                raise NoTokenizer from None
            raise TokenizeFailed(f"HTTP {exc.status_code}") from None
        except openai.APIConnectionError as exc:
            raise TokenizeFailed(unreachable(exc)) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise NoTokenizer  # something else answers there: not vLLM's tokenizer
        return answer

    async def ping(self) -> bool:
        """Whether the server answers with its model list, within the probe timeout."""
        try:
            await self._model_list()
        except LLMError:
            return False
        return True

    async def healthy(self) -> bool:
        """Whether the server's /health says it is up (vLLM: 503 or silence while it loads)."""
        url = self._root + "/health"
        try:
            await self._client.get(url, cast_to=httpx2.Response,
                                   options={"timeout": self._probe_timeout})
        except openai.APIError:
            return False
        return True

    async def _model_list(self) -> list[dict[str, Any]]:
        # Raw, like the chat path: vLLM's extra fields (max_model_len) stay plain JSON, and a
        # non-OpenAI answer is an LLMError, not an SDK parsing error.
        try:
            response = await self._client.get("/models", cast_to=httpx2.Response,
                                              options={"timeout": self._probe_timeout})
        except openai.APIStatusError as exc:
            raise self._final(self._classify(exc)) from None
        except openai.APIConnectionError as exc:
            raise self._final(_Retryable(unreachable(exc))) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            detail = "something other than a model list"
            log.warning("%s/models answered %s", self.base_url, detail)
            raise LLMError("model_error", say("llm_not_openai", "en"), detail=detail,
                           status=response.status_code, wording=("llm_not_openai", {}))
        return [entry for entry in data if isinstance(entry, dict)]

    # --- public streams ------------------------------------------------------------------

    async def stream_step(
        self, messages: list[dict[str, str]], *, chain_id: str, max_tokens: int | None = None
    ) -> AsyncIterator[StepProgress | StepResult | Restart]:
        """One reasoning step as JSON: progress while it streams, then exactly one result."""
        budget = max_tokens or self.settings.step_max_tokens
        grew_budget = False
        while True:
            reader = StepReader()
            finish: str | None = None
            async for item in self._retrying(messages, chain_id, budget, structured=True):
                if isinstance(item, Restart):
                    reader.restart()
                    yield item
                    continue
                if isinstance(item, TextDone):
                    finish = item.finish_reason
                    break
                progress = reader.feed(item.content)
                if progress is not None:
                    yield progress
            result = reader.result(finish)
            if result is not None:
                yield result
                return
            if not grew_budget:
                # Nothing usable: often runaway whitespace or a reply cut at max_tokens.
                log.warning("unusable step (finish=%s); retrying with a larger budget", finish)
                grew_budget, budget = True, budget * 2
                yield Restart()
                continue
            yield reader.unusable(plain_text=self._format == "text")
            return

    async def stream_text(
        self, messages: list[dict[str, str]], *, chain_id: str, max_tokens: int | None = None
    ) -> AsyncIterator[TextDelta | TextDone | Restart]:
        """Free text (a final answer, or a reasoning model's thinking then answer)."""
        budget = max_tokens or self.settings.answer_max_tokens
        async for item in self._retrying(messages, chain_id, budget, structured=False):
            yield item

    # --- attempts and retries ------------------------------------------------------------

    async def _retrying(
        self, messages: list[dict[str, str]], chain_id: str, max_tokens: int, *, structured: bool
    ) -> AsyncIterator[TextDelta | TextDone | Restart]:
        attempts = self.settings.max_attempts
        attempt = 0
        while True:
            attempt += 1
            started = False
            clock = time.monotonic()
            outcome = "error"
            try:
                async for chunk in self._attempt(messages, chain_id, max_tokens, structured):
                    if chunk.reasoning or chunk.content:
                        started = True
                        yield TextDelta(chunk.reasoning, chunk.content)
                    if chunk.finish_reason is not None:
                        outcome = "ok"
                        yield TextDone(chunk.finish_reason)
                        return
                raise _Retryable("the model server ended the stream without finishing")
            except _FormatRejected:
                attempt -= 1  # a downgrade is not a failed attempt
                if started:
                    yield Restart()
                continue
            except _Retryable as exc:
                if attempt >= attempts:
                    failure = self._final(exc)
                    # Where the server is, and what it said, is for the log, not the chat.
                    log.warning("the model server at %s failed for good: %s", self.base_url,
                                failure.detail)
                    raise failure from None
                delay = self._backoff(attempt, exc.retry_after)
                log.warning("model call failed (%s); attempt %d/%d in %.1fs",
                            exc, attempt + 1, attempts, delay)
                if started:
                    yield Restart()
                await asyncio.sleep(delay)
            finally:
                MODEL_CALL_SECONDS.labels(outcome).observe(time.monotonic() - clock)

    async def _attempt(
        self, messages: list[dict[str, str]], chain_id: str, max_tokens: int, structured: bool
    ) -> AsyncIterator[_Chunk]:
        fmt = self._format if structured else "text"
        max_tokens, counted = await self._clamp(messages, max_tokens)
        temperature = temperature_override.get()
        meter = token_meter.get()
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "stream": True,
            "temperature": self.settings.temperature if temperature is None else temperature,
            "max_tokens": max_tokens,
        }
        if fmt == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reasoning_step", "schema": STEP_SCHEMA, "strict": True},
            }
        elif fmt == "json_object":
            body["response_format"] = {"type": "json_object"}
        if meter is not None:
            body["stream_options"] = {"include_usage": True}
        try:
            # The SDK's documented raw path (`client.post`): same auth, timeouts and error
            # mapping as `chat.completions.create`, without building a pydantic object per
            # token, which at hundreds of concurrent chains costs more than everything else.
            response = await self._client.post(
                "/chat/completions",
                # Serialised here: the SDK's own body handling copies and walks the whole
                # growing conversation on every request.
                content=json.dumps(body, ensure_ascii=False).encode(),
                cast_to=httpx2.Response,
                options={"headers": {RAW_STREAM[0]: RAW_STREAM[1],
                                     "Content-Type": "application/json",
                                     self.settings.session_header: chain_id}},
            )
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            # The format is the server's, decided once; a request too long for the window, or
            # refused for any other reason, fails that request alone.
            why = error_text(exc)
            if _OVERFLOW.search(why):
                raise self._overflow(why, counted) from None
            if fmt != "text" and (_FORMAT.search(why) or getattr(exc, "param", None) in (
                    "response_format", "structured_outputs")):
                if self._format == fmt:
                    self._downgrade(fmt, exc)
                raise _FormatRejected from None  # again, in the format now current
            raise self._refusal(exc) from None
        except openai.APIStatusError as exc:
            raise self._classify(exc) from None
        except openai.APIConnectionError as exc:
            raise _Retryable(unreachable(exc)) from None
        # With a meter, the usage report comes after the finish, in an event of its own: the
        # finished chunk waits for it (or the stream's end) so the caller stops reading later.
        held: _Chunk | None = None
        metered = False
        try:
            # One chunk per network read, not per SSE event: under load a read carries several
            # events, and every layer above pays per item.
            async for batch in sse_batches(response):
                reasoning: list[str] = []
                content: list[str] = []
                finish: str | None = None
                done = False
                for data in batch:
                    if data == b"[DONE]":
                        done = True
                        break
                    event = jiter.from_json(data)
                    if not isinstance(event, dict):
                        continue
                    if "error" in event:
                        raise _Retryable(f"server error mid-stream: {message_of(event)}")
                    usage = event.get("usage")
                    if meter is not None and isinstance(usage, dict):
                        meter.add(usage)
                        metered = True
                    choices = event.get("choices")
                    if not choices:
                        continue
                    choice = choices[0]
                    delta = choice.get("delta") or {}
                    # vLLM's reasoning parsers name it `reasoning` (older: reasoning_content).
                    reasoning.append(delta.get("reasoning") or delta.get("reasoning_content")
                                     or "")
                    content.append(delta.get("content") or "")
                    finish = finish or choice.get("finish_reason")
                chunk = _Chunk("".join(reasoning), "".join(content), finish)
                if held is None and (chunk.reasoning or chunk.content or finish is not None):
                    if finish is not None and meter is not None and not (metered or done):
                        held = chunk
                    else:
                        yield chunk
                if done or (held is not None and metered):
                    break
            if held is not None:
                yield held
        except (httpx2.HTTPError, aiohttp.ClientError, ValueError) as exc:
            raise _Retryable(f"stream broke: {type(exc).__name__}") from None
        finally:
            await response.aclose()

    def _overflow(self, why: str, counted: int) -> ContextOverflow:
        window = _WINDOW.search(why)
        prompt = _PROMPT.search(why)
        size = int(window.group(1)) if window else None
        tokens = int(next(g for g in prompt.groups() if g)) if prompt else None
        log.warning("the request did not fit the model's context (%s); counted %d prompt "
                    "tokens", why, counted)
        if size is not None and size != self._context:
            self._context = size  # the server's own word beats what was listed, or nothing
        if tokens is not None:
            self.counter.learn(counted, tokens)
        return ContextOverflow(f"HTTP 400: {why}", window=size, prompt=tokens)

    def _downgrade(self, fmt: OutputFormat, exc: openai.APIStatusError) -> None:
        nxt = _FORMATS[_FORMATS.index(fmt) + 1]
        log.warning("the model server refused %s output (%s); using %s from now on",
                    fmt, error_text(exc), nxt)
        self._format = nxt

    def _classify(self, exc: openai.APIStatusError) -> _Retryable | LLMError:
        status = exc.status_code
        if status == 429 or status >= 500 or status == 408:
            return _Retryable(f"HTTP {status}", retry_after(exc), status, error_text(exc))
        return self._refusal(exc)

    def _refusal(self, exc: openai.APIStatusError) -> LLMError:
        detail = f"HTTP {exc.status_code}: {error_text(exc)}"
        log.warning("the model server at %s refused a request: %s", self.base_url, detail)
        return LLMError("model_error", self._refused(exc), status=exc.status_code,
                        detail=detail, wording=self._refused_wording(exc))

    def _final(self, failure: _Retryable | LLMError) -> LLMError:
        """The error to raise once `failure` may not be retried any more."""
        if isinstance(failure, LLMError):
            return failure
        detail = f"{failure}: {failure.text}" if failure.text else str(failure)
        return LLMError("model_unavailable", self._unavailable(str(failure)), detail=detail,
                        status=failure.status, wording=self._unavailable_wording(str(failure)))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 60.0)
        base = self._retry_base * 2 ** (attempt - 1)
        return min(base + random.uniform(0, base / 2), 20.0)

    def _unavailable(self, detail: str) -> str:
        key, values = self._unavailable_wording(detail)
        return say(key, "en", **values)

    def _unavailable_wording(self, detail: str) -> tuple[str, dict[str, object]]:
        if detail == NO_SERVER:
            return "llm_no_server", {}
        if detail == TIMED_OUT:
            # It accepted the connection: it is there, but too slow or overloaded.
            return "llm_timed_out", {"s": f"{self.settings.request_timeout:g}"}
        return "llm_failing", {"detail": self._scrubbed(detail)}

    def _refused(self, exc: openai.APIStatusError) -> str:
        key, values = self._refused_wording(exc)
        return say(key, "en", **values)

    def _refused_wording(self, exc: openai.APIStatusError) -> tuple[str, dict[str, object]]:
        key = "llm_refused_model" if exc.status_code == 404 else "llm_refused"
        return key, {"status": exc.status_code, "why": self._scrubbed(error_text(exc))}

    def _scrubbed(self, text: str) -> str:
        """`text` (the server's own words) without where the server is: chat never shows it."""
        host = urlsplit(self.base_url).netloc
        for where in (self.base_url, self._root, host):
            if where:
                text = text.replace(where, "the model server")
        return text
