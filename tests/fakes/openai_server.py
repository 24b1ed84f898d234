"""A local stand-in for vLLM's OpenAI-compatible server (aiohttp).

Streams Server-Sent Events exactly like the real API, answers scripted replies in order (steps,
text, reasoning, faults, cut streams, hangs) and, with an empty script, auto-answers a chain of
`auto_steps` steps statelessly so hundreds of chains can run at once. `answer(question, …)`
gives final answers by question instead of by arrival order (right and wrong answers for an
eval, differing chains of a vote). Every chat request is recorded (`fake.requests`) and timed
(`fake.stats.model_seconds`).

What a client sees for each reply:

- `Step` / `Text` / `Raw`: a 200 `text/event-stream`; a first chunk with `delta.role`, content in
  `chunk_chars` pieces `chunk_delay` s apart, the finish reason on the last content chunk, an
  optional usage chunk (`stream_options.include_usage`), then `data: [DONE]`.
- `Reasoning`: `delta.reasoning` (or `delta.reasoning_content`) chunks with `content: null`, then
  content chunks, as vLLM's reasoning parsers do.
- `Fault`: that HTTP status with vLLM's JSON error body (and `Retry-After` when given).
- `Cut`: a 200 stream whose connection is aborted after `after_chars` characters of content: no
  finish reason, no `[DONE]`, an incomplete chunked body. The openai client (httpx2 transport and
  `DefaultAioHttpClient` alike) raises `openai.APIConnectionError` from the stream iterator after
  yielding the chunks that arrived; its `__cause__` is `httpx2.RemoteProtocolError` ("incomplete
  chunked read") or, with aiohttp, `httpx2.ReadError` (`TransferEncodingError`). Reading the raw
  response (`client.post(..., cast_to=httpx2.Response)`) raises those httpx2 errors directly.
  Ponder's client must treat it as a failed attempt.
- `Hang`: nothing for `seconds`, then the auto reply (the script is not consumed), for timeouts.
  A client that gives up cancels the handler, as vLLM aborts a request whose client left;
  `stop()` cancels hanging and streaming handlers at once.

Random faults: with `fault_rate` > 0 each chat request, with that probability (drawn from
`random.Random(seed)`), fails in one of `fault_kinds` instead of being answered: `"500"` (a
500), `"429"` (a 429 with `Retry-After: retry_after`), `"hang"` (silence for `hang_seconds`,
past any sane client timeout, then the reply) or `"cut"` (the reply it would have given, cut at
a random point of its stream). A faulted request never consumes a scripted reply: the retry gets
it. `fake.faults` counts the faults by kind.

The context window is vLLM's: `max_model_len` (listed in /v1/models) is enforced on every chat
request with vLLM's own 400s ("This model's maximum context length is …"), counting the prompt
with the fake's tokenizer, which `POST /tokenize` (at the server's root, like vLLM's) also
answers: one token per Han/kana/hangul character (`wide_tokens`), one per four other
characters (a run at a time), and a chat template of `TEMPLATE_PER_MESSAGE` tokens a message plus
`TEMPLATE_GENERATION` for the generation prompt. `tokenize=False` takes /tokenize away (404,
as on servers that lack it); `stats.tokenize_calls` counts its uses. With `basic_auth=(user,
password)` every endpoint wants that HTTP basic auth and answers 401 (an HTML page, as a proxy
does) without it.

Standalone: `python -m tests.fakes.openai_server --port 8000 --auto-steps 5 --chunk-delay 0.02`
(`--fault-rate 0.2 --seed 1` for a flaky server).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import random
import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Step:
    """One reasoning step, streamed as `json.dumps({"title", "content", "next_action"})`."""

    title: str
    content: str
    next_action: str = "continue"


@dataclass(frozen=True, slots=True)
class Text:
    """Plain streamed content (a final answer)."""

    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A reasoning model: `delta.<field>` chunks first, then `delta.content` chunks."""

    reasoning: str
    content: str
    field: Literal["reasoning", "reasoning_content"] = "reasoning"


@dataclass(frozen=True, slots=True)
class Raw:
    """Arbitrary content (broken JSON, raw control characters); `finish_reason="length"` too."""

    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True, slots=True)
class Fault:
    """An HTTP error with vLLM's error body; 429 + `retry_after` is rate limiting."""

    status: int = 500
    retry_after: float | None = None
    message: str = "internal server error"


@dataclass(frozen=True, slots=True)
class Cut:
    """A stream whose connection drops after `after_chars` characters of `text`."""

    text: str
    after_chars: int


@dataclass(frozen=True, slots=True)
class Hang:
    """Accept the request, then say nothing for `seconds`."""

    seconds: float


Reply = Step | Text | Reasoning | Raw | Fault | Cut | Hang


@dataclass(frozen=True, slots=True)
class _Answers:
    question: str  # the start of the first user message
    replies: deque[Reply]  # final answers, in turn
    direct: Reply | None  # the reply to the question asked with no system prompt


def _reply(value: str | Reply) -> Reply:
    return Text(value) if isinstance(value, str) else value


@dataclass(slots=True)
class RecordedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]  # lower-case names


@dataclass(slots=True)
class Stats:
    calls: int = 0  # chat requests received (valid or not)
    streams: int = 0  # streams that ended with [DONE]
    errors: int = 0  # error responses (validation failures and Faults)
    model_seconds: float = 0.0  # time spent generating/streaming answers, summed over requests
    active: int = 0  # answers being generated right now
    peak_active: int = 0
    prefix_queries: int = 0  # "tokens" looked up in the prefix cache (for /metrics)
    prefix_hits: int = 0
    tokenize_calls: int = 0  # POST /tokenize answered
    unauthorized: int = 0  # requests refused for want of the configured basic auth


_DEFAULT_MODEL = "Qwen2.5-7B-Instruct"
SESSION_HEADER = "x-session-id"  # PONDER_SESSION_HEADER's default: the chain id
_STEP_FORMATS = ("json_schema", "json_object")
FAULT_KINDS = ("500", "429", "hang", "cut")
TEMPLATE_PER_MESSAGE = 5  # `<|im_start|>role\n … <|im_end|>\n`
TEMPLATE_GENERATION = 3  # `<|im_start|>assistant\n`
_WIDE = re.compile("[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
                   "\ufe30-\ufe4f\uff00-\uffef]")
_NOT_WIDE = re.compile("[^\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
                       "\ufe30-\ufe4f\uff00-\uffef]+")


def text_tokens(text: str, wide: int = 1) -> int:
    """The fake tokenizer: `wide` tokens per CJK character (a byte-level tokenizer without
    them spends 2-3), one per four other characters."""
    return (wide * len(_WIDE.findall(text))
            + sum(-(-len(run) // 4) for run in _NOT_WIDE.findall(text)))


def chat_tokens(messages: list[Any], generation: bool = True, wide: int = 1) -> int:
    """Prompt tokens of a chat request, template included."""
    total = TEMPLATE_GENERATION if generation else 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += TEMPLATE_PER_MESSAGE + (text_tokens(content, wide) if isinstance(content, str)
                                         else 0)
    return total


class FakeOpenAI:
    """vLLM's OpenAI-compatible server, in-process. Use `async with FakeOpenAI() as fake:`."""

    def __init__(self, *, model: str = _DEFAULT_MODEL, chunk_chars: int = 8,
                 chunk_delay: float = 0.0, auto_steps: int = 3,
                 reject_json_schema: bool = False, reject_json_object: bool = False,
                 host: str = "127.0.0.1", port: int = 0, max_model_len: int = 32768,
                 record: bool = True, fault_rate: float = 0.0, seed: int | None = None,
                 fault_kinds: tuple[str, ...] = FAULT_KINDS, hang_seconds: float = 30.0,
                 retry_after: float = 0.1, echo: bool = False, tokenize: bool = True,
                 list_max_model_len: bool = True, wide_tokens: int = 1,
                 basic_auth: tuple[str, str] | None = None) -> None:
        if chunk_chars < 1:
            raise ValueError("chunk_chars must be at least 1")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate is a probability, between 0 and 1")
        unknown = set(fault_kinds) - set(FAULT_KINDS)
        if unknown or not fault_kinds:
            raise ValueError(f"fault_kinds must be some of {FAULT_KINDS}, got {fault_kinds}")
        self.model = model
        self.chunk_chars = chunk_chars
        self.chunk_delay = chunk_delay
        self.auto_steps = auto_steps
        self.reject_json_schema = reject_json_schema
        self.reject_json_object = reject_json_object
        self.host = host
        self.port = port
        self.max_model_len = max_model_len
        self.tokenize = tokenize  # POST /tokenize offered (else 404, as where it is missing)
        self.list_max_model_len = list_max_model_len  # max_model_len shown in /v1/models
        self.root: str | None = None  # what it "really" serves under `model` (vLLM's `root`)
        self.wide_tokens = wide_tokens  # tokens per CJK character
        self.basic_auth = basic_auth
        self.record = record  # off for long standalone runs
        self.fault_rate = fault_rate  # may be changed while it runs
        self.fault_kinds = tuple(fault_kinds)
        self.hang_seconds = hang_seconds
        self.retry_after = retry_after
        self.faults: Counter[str] = Counter()  # random faults injected, by kind
        self.echo = echo  # auto answers repeat the question (as models do, hostile or not)
        self._random = random.Random(seed)
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.stats = Stats()
        self._queue: deque[Reply] = deque()
        self._answers: list[_Answers] = []
        self._sessions: dict[str, deque[Reply]] = {}
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)

    def script(self, *replies: Reply) -> None:
        """Queue replies; each chat request takes the next one (auto answers once empty)."""
        self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        return len(self._queue)

    def answer(self, question: str, *replies: str | Reply,
               direct: str | Reply | None = None) -> None:
        """Answer a question by what it asks, not by arrival order (many at once, in any
        order): every request whose first user message starts with `question` gets auto steps
        and, for its final answer, the next of `replies` in turn (a `str` is a `Text`); asked
        directly (no system prompt: `ponder eval`'s plain mode) it gets `direct`, if given.
        These come before the script, which keeps serving every other request."""
        if not replies:
            raise ValueError("give at least one reply")
        self._answers.append(_Answers(question, deque(_reply(r) for r in replies),
                                      None if direct is None else _reply(direct)))

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._auth])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        # handler_cancellation: a client that disconnects aborts its request, as in vLLM.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.base_url = f"http://{self.host}:{self.port}/v1"

    async def stop(self) -> None:
        if self._runner is None:
            return
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=1.0)
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- endpoints ---------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.basic_auth is not None:
            user, password = self.basic_auth
            wanted = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("Authorization") != wanted:
                self.stats.unauthorized += 1
                return web.Response(
                    status=401, content_type="text/html",
                    headers={"WWW-Authenticate": 'Basic realm="model"'},
                    text="<html><head><title>401 Authorization Required</title></head><body>"
                         "<center><h1>401 Authorization Required</h1></center><hr><center>"
                         "nginx</center></body></html>")
        response: web.StreamResponse = await handler(request)
        return response

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self.tokenize:
            return web.json_response({"detail": "Not Found"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, "The request body is not a JSON object.")
        if isinstance(body.get("messages"), list):
            count = chat_tokens(body["messages"], bool(body.get("add_generation_prompt", True)),
                                self.wide_tokens)
        elif isinstance(body.get("prompt"), str):
            count = text_tokens(body["prompt"], self.wide_tokens)
        else:
            return self._error(400, "prompt or messages: Field required")
        self.stats.tokenize_calls += 1
        return web.json_response({"count": count, "max_model_len": self.max_model_len,
                                  "tokens": list(range(count)), "token_strs": None})

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model, "object": "model", "created": 0, "owned_by": "vllm",
            "root": self.root or self.model, "parent": None,
            **({"max_model_len": self.max_model_len} if self.list_max_model_len else {})}]})

    async def _metrics(self, _: web.Request) -> web.Response:
        labels = f'{{engine="0",model_name="{self.model}"}}'
        s = self.stats
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(s.active)}\n"
            "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of tokens.\n"
            "# TYPE vllm:prefix_cache_queries_total counter\n"
            f"vllm:prefix_cache_queries_total{labels} {float(s.prefix_queries)}\n"
            "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of tokens.\n"
            "# TYPE vllm:prefix_cache_hits_total counter\n"
            f"vllm:prefix_cache_hits_total{labels} {float(s.prefix_hits)}\n"
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            return await self._answer(request)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.stats.calls += 1
        try:
            body = await request.json()
        except ValueError:
            body = None
        if self.record:
            self.requests.append(RecordedRequest(
                request.path, body if isinstance(body, dict) else {},
                {k.lower(): v for k, v in request.headers.items()}))
        if not isinstance(body, dict):
            return self._error(400, "The request body is not a JSON object.")
        problem = self._validate(body)
        if problem is not None:
            return problem
        # A plausible prefix cache: everything before the newest message was seen before.
        tokens = chat_tokens(body["messages"], wide=self.wide_tokens)
        self.stats.prefix_queries += tokens
        self.stats.prefix_hits += max(0, tokens - chat_tokens(body["messages"][-1:],
                                                             wide=self.wide_tokens))
        fault = self._draw_fault()
        if fault == "500":
            return self._error(500, "internal server error (injected fault)")
        if fault == "429":
            return self._error(429, "too many requests (injected fault)",
                               {"Retry-After": f"{self.retry_after:g}"})
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)  # a client that gives up cancels this
        if fault == "cut":
            # The reply it would have given, cut short; the script keeps it for the retry.
            reply = self._queue[0] if self._queue else self._auto(body)
            if isinstance(reply, Fault | Hang):
                return self._error(500, "internal server error (injected fault)")
        else:
            own = self._sessions.get(request.headers.get(SESSION_HEADER, ""))
            reply = (own.popleft() if own else None) or self._answered(body) or (
                self._queue.popleft() if self._queue else self._auto(body))
        if isinstance(reply, Fault):
            headers = {} if reply.retry_after is None else {"Retry-After": f"{reply.retry_after:g}"}
            return self._error(reply.status, reply.message, headers)
        if isinstance(reply, Hang):
            await asyncio.sleep(reply.seconds)
            reply = self._auto(body)
        pieces = _pieces(reply, self.chunk_chars)
        finish = reply.finish_reason if isinstance(reply, Raw) else "stop"
        cut_at = reply.after_chars if isinstance(reply, Cut) else None
        if fault == "cut":
            cut_at = self._random.randrange(max(1, sum(len(text) for _, text in pieces)))
        self.stats.active += 1
        self.stats.peak_active = max(self.stats.peak_active, self.stats.active)
        began = time.perf_counter()
        try:
            if body.get("stream"):
                return await self._stream(request, body, pieces, finish, cut_at)
            return await self._whole(request, pieces, finish, cut_at)
        finally:
            self.stats.active -= 1
            self.stats.model_seconds += time.perf_counter() - began

    def _draw_fault(self) -> str | None:
        """The random fault this request meets, if any (counted in `faults`)."""
        if self.fault_rate <= 0.0 or self._random.random() >= self.fault_rate:
            return None
        kind = self._random.choice(self.fault_kinds)
        self.faults[kind] += 1
        return kind

    def _validate(self, body: dict[str, Any]) -> web.Response | None:
        model = body.get("model")
        if model is not None and model != self.model:
            return self._error(404, f"The model `{model}` does not exist.", kind="NotFoundError",
                               param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "messages: Field required (a non-empty list)",
                               param="messages")
        fmt = (body.get("response_format") or {}).get("type")
        if fmt in _STEP_FORMATS and body.get("structured_outputs"):
            return self._error(400, "You can only use one kind of structured outputs constraint "
                               "but multiple are specified (response_format and "
                               "structured_outputs).")
        if fmt == "json_schema" and self.reject_json_schema:
            return self._error(400, "json_schema response_format is not supported",
                               param="response_format")
        if fmt == "json_object" and self.reject_json_object:
            return self._error(400, "json_object response_format is not supported",
                               param="response_format")
        # vLLM's checks and wording (0.11+): the prompt alone, then prompt + completion.
        tokens = chat_tokens(messages, wide=self.wide_tokens)
        limit = self.max_model_len
        if tokens >= limit:
            return self._error(400, f"This model's maximum context length is {limit} tokens. "
                               f"However, your request has {tokens} input tokens. Please reduce "
                               "the length of the input messages.")
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(wanted, int) and wanted > limit - tokens:
            return self._error(400, f"'max_tokens' or 'max_completion_tokens' is too large: "
                               f"{wanted}. This model's maximum context length is {limit} "
                               f"tokens and your request has {tokens} input tokens ({wanted} > "
                               f"{limit} - {tokens}).")
        return None

    def script_for(self, session: str, *replies: Reply) -> None:
        """Replies for one chain only (its session header, Ponder's chain id), before anything
        else: one chain of several at once fails or hangs on purpose."""
        self._sessions.setdefault(session, deque()).extend(replies)

    def _answered(self, body: dict[str, Any]) -> Reply | None:
        """The reply `answer()` set for this request's question, if any."""
        if not self._answers:
            return None
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        question = next((m.get("content") for m in messages if m.get("role") == "user"
                         and isinstance(m.get("content"), str)), "")
        match = next((a for a in self._answers if question.startswith(a.question)), None)
        if match is None:
            return None
        fmt = (body.get("response_format") or {}).get("type")
        if fmt in _STEP_FORMATS or body.get("structured_outputs"):
            return self._auto(body)
        if match.direct is not None and not any(m.get("role") == "system" for m in messages):
            return match.direct
        reply = match.replies[0]
        match.replies.rotate(-1)
        return reply

    def _auto(self, body: dict[str, Any]) -> Reply:
        fmt = (body.get("response_format") or {}).get("type")
        question = next((m.get("content") for m in body["messages"] if isinstance(m, dict)
                         and m.get("role") == "user" and isinstance(m.get("content"), str)), "")
        if fmt not in _STEP_FORMATS and not body.get("structured_outputs"):
            return Text(f"The answer to {question}" if self.echo else "The answer is 42.")
        done = 0
        for message in body["messages"]:
            if not isinstance(message, dict) or message.get("role") != "assistant":
                continue
            content = message.get("content")
            if isinstance(content, str) and content.lstrip().startswith("{"):
                try:
                    value = json.loads(content, strict=False)
                except ValueError:
                    continue
                done += isinstance(value, dict) and "title" in value
        n = done + 1
        action = "final_answer" if n >= self.auto_steps else "continue"
        content = (f"Thinking about part {n} of the problem. " * 5).strip()  # ~190 characters
        if self.echo:
            return Step(f"Step {n}: {question[:40]}", f"The question was: {question}", action)
        return Step(f"Step {n}", content, action)

    # --- answers -----------------------------------------------------------------------------

    async def _whole(self, request: web.Request, pieces: list[tuple[str, str]], finish: str,
                     cut_at: int | None) -> web.StreamResponse:
        if self.chunk_delay:  # as long as the same answer would take to stream
            await asyncio.sleep(self.chunk_delay * len(pieces))
        if cut_at is not None:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=200)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(
            text for kind, text in pieces if kind == "content") or None}
        reasoning = "".join(text for kind, text in pieces if kind != "content")
        if reasoning:
            message[pieces[0][0]] = reasoning
        return web.json_response({
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish}],
            "usage": _usage(pieces)},
            dumps=_dumps)

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      pieces: list[tuple[str, str]], finish: str,
                      cut_at: int | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        head = (f'data: {{"id":"chatcmpl-{next(self._ids)}","object":"chat.completion.chunk",'
                f'"created":{int(time.time())},"model":{_dumps(self.model)},').encode()
        choice = head + b'"choices":[{"index":0,"delta":'

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            reason = b"null" if finish_reason is None else _dumps(finish_reason).encode()
            return (choice + _dumps(delta).encode() + b',"logprobs":null,"finish_reason":'
                    + reason + b"}]}\n\n")

        try:
            await response.write(chunk({"role": "assistant", "content": ""}))
            sent = 0
            # Paced against a deadline, like a GPU's decode steps: this server's own event-loop
            # lag under hundreds of streams must not slow the "model" down.
            loop = asyncio.get_running_loop()
            due = loop.time()
            for n, (kind, text) in enumerate(pieces):
                if self.chunk_delay:
                    due += self.chunk_delay
                    await asyncio.sleep(max(0.0, due - loop.time()))
                if cut_at is not None and sent + len(text) > cut_at:
                    if cut_at > sent:
                        await response.write(chunk({"content": text[: cut_at - sent]}))
                    # Drop the connection mid-body: the chunked response never completes.
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                sent += len(text)
                delta = {"content": text} if kind == "content" else {kind: text, "content": None}
                await response.write(chunk(delta, finish if n == len(pieces) - 1 else None))
            if cut_at is not None:  # cut at or past the end: still no finish, no [DONE]
                if request.transport is not None:
                    request.transport.abort()
                return response
            if not pieces:
                await response.write(chunk({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(head + b'"choices":[],"usage":'
                                     + _dumps(_usage(pieces)).encode() + b"}\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.stats.streams += 1
        except ConnectionError:
            pass  # the client went away mid-stream
        return response

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None,
               kind: str | None = None, param: str | None = None) -> web.Response:
        self.stats.errors += 1
        if kind is None:
            kind = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}.get(
                status, "InternalServerError" if status >= 500 else "BadRequestError")
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return web.Response(status=status, text=_dumps(body), headers=headers,
                            content_type="application/json")


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _usage(pieces: list[tuple[str, str]]) -> dict[str, int]:
    completion = sum(len(text) for _, text in pieces) // 4 + 1
    return {"prompt_tokens": 32, "total_tokens": 32 + completion,
            "completion_tokens": completion}


def _pieces(reply: Reply, size: int) -> list[tuple[str, str]]:
    """(delta field, text) pairs to stream, `size` characters at a time."""
    def split(kind: str, text: str) -> list[tuple[str, str]]:
        return [(kind, text[i:i + size]) for i in range(0, len(text), size)]

    match reply:
        case Step(title=title, content=content, next_action=action):
            return split("content", json.dumps(
                {"title": title, "content": content, "next_action": action}, ensure_ascii=False))
        case Text(text=text) | Raw(text=text) | Cut(text=text):
            return split("content", text)
        case Reasoning(reasoning=reasoning, content=content, field=name):
            return split(name, reasoning) + split("content", content)
    return []


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeOpenAI(model=args.model, chunk_chars=args.chunk_chars,
                      chunk_delay=args.chunk_delay, auto_steps=args.auto_steps,
                      host=args.host, port=args.port, record=False,
                      fault_rate=args.fault_rate, seed=args.seed,
                      hang_seconds=args.hang_seconds, max_model_len=args.max_model_len,
                      tokenize=not args.no_tokenize)
    await fake.start()
    faults = f", {args.fault_rate:.0%} of requests fail" if args.fault_rate else ""
    print(f"fake vLLM at {fake.base_url} (model {fake.model}{faults})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake vLLM OpenAI-compatible server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=_DEFAULT_MODEL)
    parser.add_argument("--auto-steps", type=int, default=3)
    parser.add_argument("--chunk-chars", type=int, default=8)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="probability that a chat request fails (500, 429, hang or cut)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the random faults")
    parser.add_argument("--hang-seconds", type=float, default=30.0,
                        help="how long a hanging request says nothing")
    parser.add_argument("--max-model-len", type=int, default=32768,
                        help="the context window, enforced as vLLM does")
    parser.add_argument("--no-tokenize", action="store_true",
                        help="answer /tokenize with 404, as servers without it do")
    args = parser.parse_args()
    if not 0.0 <= args.fault_rate <= 1.0:
        parser.error("--fault-rate is a probability, between 0 and 1")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
