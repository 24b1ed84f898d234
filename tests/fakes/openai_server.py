"""A local stand-in for vLLM's OpenAI-compatible server (aiohttp).

Streams Server-Sent Events exactly like the real API, answers scripted replies in order (steps,
text, reasoning, faults, cut streams, hangs) and, with an empty script, auto-answers a chain of
`auto_steps` steps statelessly so hundreds of chains can run at once. Every chat request is
recorded. A `Cut` reply aborts the connection mid-stream: the openai client then raises from its
stream iterator (a transport error), which Ponder's client must treat as a failed attempt.

Standalone: `python -m tests.fakes.openai_server --port 8000 --auto-steps 5 --chunk-delay 0.02`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web


@dataclass(frozen=True)
class Step:
    title: str
    content: str
    next_action: str = "continue"


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Reasoning:
    reasoning: str
    content: str
    field: Literal["reasoning", "reasoning_content"] = "reasoning"


@dataclass(frozen=True)
class Raw:
    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Fault:
    status: int = 500
    retry_after: float | None = None
    message: str = "internal server error"


@dataclass(frozen=True)
class Cut:
    text: str
    after_chars: int


@dataclass(frozen=True)
class Hang:
    seconds: float


Reply = Step | Text | Reasoning | Raw | Fault | Cut | Hang


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Stats:
    calls: int = 0
    model_seconds: float = 0.0  # time spent streaming answers, summed over requests
    prefix_queries: int = 0
    prefix_hits: int = 0


@dataclass
class FakeOpenAI:
    model: str = "Qwen2.5-7B-Instruct"
    chunk_chars: int = 8
    chunk_delay: float = 0.0
    auto_steps: int = 3
    reject_json_schema: bool = False
    reject_json_object: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    record: bool = True
    max_model_len: int = 32768
    requests: list[RecordedRequest] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self._queue: deque[Reply] = deque()
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self._last_prompt: dict[str, str] = {}
        self.base_url = ""

    def script(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        self.base_url = f"http://{self.host}:{self.port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- endpoints ---------------------------------------------------------------------------

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm",
             "max_model_len": self.max_model_len}]})

    async def _metrics(self, _: web.Request) -> web.Response:
        lines = [
            "# TYPE vllm:prefix_cache_queries_total counter",
            f'vllm:prefix_cache_queries_total{{model_name="{self.model}"}} '
            f"{float(self.stats.prefix_queries)}",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f'vllm:prefix_cache_hits_total{{model_name="{self.model}"}} '
            f"{float(self.stats.prefix_hits)}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        if self.record:
            self.requests.append(RecordedRequest(
                request.path, body, {k.lower(): v for k, v in request.headers.items()}))
        self.stats.calls += 1
        problem = self._validate(body)
        if problem is not None:
            return problem
        self._count_prefix(body)
        reply = self._queue.popleft() if self._queue else self._auto(body)
        if isinstance(reply, Fault):
            headers = {"Retry-After": f"{reply.retry_after:g}"} if reply.retry_after else {}
            return _error(reply.status, reply.message, headers)
        if isinstance(reply, Hang):
            await asyncio.sleep(reply.seconds)
            reply = Text("late")
        pieces = _pieces(reply, self.chunk_chars)
        finish = reply.finish_reason if isinstance(reply, Raw) else "stop"
        if not body.get("stream"):
            return self._whole(body, pieces, finish)
        return await self._stream(request, body, pieces, finish, reply)

    def _validate(self, body: dict[str, Any]) -> web.Response | None:
        if body.get("model") != self.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.",
                          kind="NotFoundError")
        if not body.get("messages"):
            return _error(400, "messages must be a non-empty list")
        fmt = (body.get("response_format") or {}).get("type")
        if fmt and body.get("structured_outputs"):
            return _error(400, "response_format and structured_outputs are mutually exclusive")
        if fmt == "json_schema" and self.reject_json_schema:
            return _error(400, "json_schema response_format is not supported")
        if fmt == "json_object" and self.reject_json_object:
            return _error(400, "json_object response_format is not supported")
        return None

    def _count_prefix(self, body: dict[str, Any]) -> None:
        # A rough prefix-cache model: the previous prompt of this chain is a cached prefix.
        key = body["messages"][0].get("content", "")[:64] + str(len(body["messages"]) > 1)
        prompt = json.dumps(body["messages"])
        previous = self._last_prompt.get(key, "")
        shared = len(previous) if prompt.startswith(previous[:-1]) else 0
        self.stats.prefix_queries += len(prompt)
        self.stats.prefix_hits += shared
        self._last_prompt[key] = prompt

    def _auto(self, body: dict[str, Any]) -> Reply:
        if not body.get("response_format"):
            return Text("The answer is 42.")
        done = 0
        for message in body["messages"]:
            if message.get("role") == "assistant":
                try:
                    done += "title" in json.loads(message.get("content", ""))
                except (ValueError, TypeError):
                    pass
        n = done + 1
        action = "final_answer" if n >= self.auto_steps else "continue"
        content = (f"Thinking about part {n} of the problem. " * 5).strip()
        return Step(f"Step {n}", content, action)

    def _whole(self, body: dict[str, Any], pieces: list[tuple[str, str]],
               finish: str) -> web.Response:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(
            text for kind, text in pieces if kind == "content") or None}
        reasoning = "".join(text for kind, text in pieces if kind != "content")
        if reasoning:
            message[pieces[0][0]] = reasoning
        return web.json_response({
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(pieces),
                      "total_tokens": 10 + len(pieces)}})

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      pieces: list[tuple[str, str]], finish: str,
                      reply: Reply) -> web.StreamResponse:
        began = time.perf_counter()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        ident = f"chatcmpl-{next(self._ids)}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None,
                  usage: dict[str, int] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": ident, "object": "chat.completion.chunk", "created": created,
                "model": self.model,
                "choices": [] if usage else [{"index": 0, "delta": delta, "logprobs": None,
                                               "finish_reason": finish_reason}]}
            if usage:
                obj["usage"] = usage
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        try:
            await response.write(chunk({"role": "assistant", "content": ""}))
            sent = 0
            cut_at = reply.after_chars if isinstance(reply, Cut) else None
            for n, (kind, text) in enumerate(pieces):
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if cut_at is not None and sent + len(text) > cut_at:
                    await response.write(chunk({"content": text[: cut_at - sent]}))
                    # Drop the connection mid-body: the client sees a broken stream.
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                sent += len(text)
                delta = {"content": text} if kind == "content" else {kind: text, "content": None}
                last = n == len(pieces) - 1
                await response.write(chunk(delta, finish if last else None))
            if not pieces:
                await response.write(chunk({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(chunk({}, usage={
                    "prompt_tokens": 10, "completion_tokens": len(pieces),
                    "total_tokens": 10 + len(pieces)}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        finally:
            self.stats.model_seconds += time.perf_counter() - began
        return response


def _pieces(reply: Reply, size: int) -> list[tuple[str, str]]:
    """(delta field, text) pairs to stream, `size` characters at a time."""
    def cut(kind: str, text: str) -> list[tuple[str, str]]:
        return [(kind, text[i:i + size]) for i in range(0, len(text), size)]

    match reply:
        case Step(title=title, content=content, next_action=action):
            return cut("content", json.dumps(
                {"title": title, "content": content, "next_action": action}, ensure_ascii=False))
        case Text(text=text) | Raw(text=text) | Cut(text=text):
            return cut("content", text)
        case Reasoning(reasoning=reasoning, content=content, field=name):
            return cut(name, reasoning) + cut("content", content)
    return []


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           kind: str = "BadRequestError") -> web.Response:
    if status == 429:
        kind = "RateLimitError"
    elif status >= 500:
        kind = "InternalServerError"
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.Response(status=status, text=json.dumps(body), headers=headers,
                        content_type="application/json")


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeOpenAI(model=args.model, chunk_chars=args.chunk_chars,
                      chunk_delay=args.chunk_delay, auto_steps=args.auto_steps,
                      host=args.host, port=args.port, record=False)
    await fake.start()
    print(f"fake vLLM at {fake.base_url} (model {fake.model})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake vLLM OpenAI-compatible server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="Qwen2.5-7B-Instruct")
    parser.add_argument("--auto-steps", type=int, default=3)
    parser.add_argument("--chunk-chars", type=int, default=8)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
