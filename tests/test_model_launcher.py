"""The vLLM launcher and `ponder doctor`, against fake servers (no vLLM, no network).

The fake model server is a real child process (a small aiohttp app) so readiness, signal
forwarding and process-group clean-up are exercised exactly as with vLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot import demo_model, doctor, model
from bot.config import Settings, load_settings
from bot.llm import LLMClient, LLMError
from bot.model import commands, serving
from bot.steps import STEP_SCHEMA

REPO = Path(__file__).resolve().parent.parent

FAKE_SERVER = r'''
import argparse, asyncio, json, os, signal, subprocess, sys, time
from aiohttp import web

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--served-model-name", nargs="+", default=["fake"])
args, _ = parser.parse_known_args()
state = os.environ["FAKE_STATE"]
born = time.monotonic()
delay = float(os.environ.get("FAKE_DELAY", "0"))
child = None
if os.environ.get("FAKE_CHILD"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
if os.environ.get("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(state, "w") as fh:
    json.dump({"pid": os.getpid(), "child": child.pid if child else None, "argv": sys.argv,
               "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "HF_"))}},
              fh)
print("fake server starting", flush=True)
if os.environ.get("FAKE_EXIT"):
    print("boom: the fake gave up", flush=True)
    sys.exit(int(os.environ["FAKE_EXIT"]))

def record(kind, body=None):
    with open(state + ".requests", "a") as fh:
        fh.write(json.dumps({"kind": kind, "body": body}) + "\n")

async def health(request):
    if time.monotonic() - born < delay:
        return web.Response(status=503)
    record("health")
    return web.Response(text="")

async def models(request):
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model"} for name in args.served_model_name]})

async def chat(request):
    body = await request.json()
    record("chat", body)
    status = int(os.environ.get("FAKE_COMPLETION_STATUS", "200"))
    if status != 200:
        return web.json_response({"error": {"message": "fake failure"}}, status=status)
    if not body.get("stream"):
        return web.json_response({"error": {"message": "this fake only streams"}}, status=400)
    reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await reply.prepare(request)
    chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}]}
    await reply.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
    await reply.write_eof()
    return reply

async def main():
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    await asyncio.Event().wait()

asyncio.run(main())
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no port, memory or GPU)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


async def wait_until(predicate: Any, limit: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


class Fake:
    """Paths and helpers for one fake model server process."""

    def __init__(self, tmp: Path) -> None:
        self.script = tmp / "fake_server.py"
        self.script.write_text(FAKE_SERVER)
        self.state = tmp / "fake_state.json"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        # Stands in for the vLLM venv's python: drops `-m vllm.entrypoints.openai.api_server`.
        self.python = tmp / "fake-python"
        self.python.write_text(
            f'#!/bin/sh\nshift 2\nexec "{sys.executable}" "{self.script}" "$@"\n'
        )
        self.python.chmod(0o755)

    def argv(self, name: str = "fake") -> list[str]:
        return [sys.executable, str(self.script), "--port", str(self.port),
                "--served-model-name", name]

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "FAKE_STATE": str(self.state), **extra}

    def info(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())  # type: ignore[no-any-return]

    def requests(self) -> list[dict[str, Any]]:
        path = Path(f"{self.state}.requests")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def server(self, tmp: Path, **extra: str) -> model.ServerProcess:
        return model.ServerProcess(
            self.argv(), base_url=self.base_url, served_name="fake",
            env=self.env(**extra), log_path=tmp / "logs" / "server.log",
        )


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path)


# --- argument building -------------------------------------------------------------------------


def test_server_args_carry_the_flags_ponder_relies_on() -> None:
    spec = model.ServerSpec(
        model="/models/Qwen2.5-7B-Instruct", served_names=("Qwen2.5-7B-Instruct",), port=8123,
        max_model_len=16384, gpu_memory_utilization=0.85, reasoning_parser="qwen3",
        tensor_parallel_size=2, data_parallel_size=2, extra_args=("--seed", "7"),
    )
    args = model.build_server_args(spec, "/venv/bin/python")
    assert args[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value("--model") == "/models/Qwen2.5-7B-Instruct"
    assert value("--served-model-name") == "Qwen2.5-7B-Instruct"
    assert value("--port") == "8123"
    assert value("--host") == "127.0.0.1"
    assert "--enable-prefix-caching" in args
    assert json.loads(value("--structured-outputs-config")) == {
        "backend": "xgrammar", "disable_any_whitespace": True}
    assert value("--max-model-len") == "16384"
    assert value("--gpu-memory-utilization") == "0.85"
    assert value("--reasoning-parser") == "qwen3"
    assert value("--tensor-parallel-size") == "2"
    assert value("--data-parallel-size") == "2"
    assert args[-2:] == ["--seed", "7"]
    # GPU: vLLM picks dtype and may capture graphs.
    assert "--dtype" not in args and "--enforce-eager" not in args
    assert spec.base_url == "http://127.0.0.1:8123/v1"


def test_optional_flags_are_left_out() -> None:
    args = model.build_server_args(model.ServerSpec(model="m", served_names=("m",)), "py")
    for flag in ("--reasoning-parser", "--max-model-len", "--gpu-memory-utilization",
                 "--tensor-parallel-size", "--data-parallel-size"):
        assert flag not in args


def pretend_prepared(folder: Path) -> None:
    """What `bot.demo_model` leaves behind, without converting anything."""
    (folder / demo_model.STAMP).write_text("prepared\n")
    (folder / "config.json").write_text("{}\n")


async def test_demo_spec_is_the_cpu_demo_model(tmp_path: Path) -> None:
    folder = model.demo_model_dir(tmp_path)
    folder.mkdir(parents=True)
    pretend_prepared(folder)
    settings = load_settings(model="Qwen2.5-7B-Instruct")
    spec = await model.server_spec(
        settings, cache=tmp_path, python="py", port=8001, host="0.0.0.0", demo=True,
        model=model.DEFAULT_MODEL_ID, max_model_len=None, gpu_memory_utilization=None,
        reasoning_parser=None, gpu=None, out=lambda line: None,
    )
    # Ponder asks for PONDER_MODEL; /v1/models also tells the truth.
    assert spec.served_names == ("Qwen2.5-7B-Instruct", model.DEMO_MODEL_NAME)
    args = model.build_server_args(spec, "py")
    assert args[args.index("--model") + 1] == str(folder.resolve())
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert "--enforce-eager" in args
    assert spec.base_url == "http://127.0.0.1:8001/v1"  # 0.0.0.0 is not an address to call

    env = model.server_env(spec, tmp_path, base={"PATH": "/bin"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CACHE_ROOT"] == str((tmp_path / "vllm").resolve())
    assert env["PATH"] == "/bin"


def test_the_key_reaches_vllm_through_its_environment_not_its_command_line(
        tmp_path: Path) -> None:
    spec = model.ServerSpec(model=str(tmp_path), served_names=("m",), host="0.0.0.0")
    env = model.server_env(spec, tmp_path, base={"PATH": "/bin"}, api_key="s3cret")
    assert env["VLLM_API_KEY"] == "s3cret"  # vLLM reads it as it reads --api-key
    args = model.build_server_args(spec, "py")
    assert "s3cret" not in args and "--api-key" not in args  # `ps` shows argv to everyone
    # No key: none from the shell either, or the server would refuse Ponder's own calls.
    for key in ("EMPTY", None):
        env = model.server_env(spec, tmp_path, base={"VLLM_API_KEY": "stale"}, api_key=key)
        assert "VLLM_API_KEY" not in env


def test_env_keeps_what_the_user_set(tmp_path: Path) -> None:
    spec = model.ServerSpec(model=str(tmp_path), served_names=("m",), cpu=True)
    env = model.server_env(spec, tmp_path, base={"VLLM_CPU_KVCACHE_SPACE": "4",
                                                 "VLLM_CACHE_ROOT": "/elsewhere"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert env["VLLM_CACHE_ROOT"] == "/elsewhere"


def test_only_local_urls_get_a_managed_server() -> None:
    assert serving.is_local("http://localhost:8000/v1")
    assert serving.is_local("http://127.0.0.1:9000/v1")
    assert not serving.is_local("https://models.example.com/v1")
    assert serving.port_of("http://localhost:8123/v1") == 8123
    assert serving.port_of("http://localhost/v1") == 80


# --- readiness ---------------------------------------------------------------------------------


async def test_wait_ready_waits_for_health_then_one_completion(
    fake: Fake, tmp_path: Path
) -> None:
    async with fake.server(tmp_path, FAKE_DELAY="1.5") as server:
        seconds = await server.wait_ready(limit=30, poll=0.1)
        assert seconds >= 1.5
        kinds = [r["kind"] for r in fake.requests()]
        assert kinds[0] == "health" and "chat" in kinds
        chat = next(r["body"] for r in fake.requests() if r["kind"] == "chat")
        assert chat["model"] == "fake" and chat["max_tokens"] == 1 and chat["stream"]


async def test_wait_ready_reports_an_early_exit_with_the_log(fake: Fake, tmp_path: Path) -> None:
    async with fake.server(tmp_path, FAKE_EXIT="3") as server:
        started = time.monotonic()
        with pytest.raises(model.ModelError) as caught:
            await server.wait_ready(limit=60, poll=0.1)
        assert time.monotonic() - started < 20  # not the full limit
    assert "exited with code 3" in str(caught.value)
    assert "boom: the fake gave up" in str(caught.value)


async def test_wait_ready_gives_up_after_its_limit(fake: Fake, tmp_path: Path) -> None:
    async with fake.server(tmp_path, FAKE_DELAY="60") as server:
        started = time.monotonic()
        with pytest.raises(model.ModelError, match="did not answer"):
            await server.wait_ready(limit=2, poll=0.1)
        assert time.monotonic() - started < 10


async def test_wait_ready_fails_when_the_test_completion_fails(
    fake: Fake, tmp_path: Path
) -> None:
    async with fake.server(tmp_path, FAKE_COMPLETION_STATUS="500") as server:
        started = time.monotonic()
        with pytest.raises(model.ModelError,
                           match=r"test completion failed \(HTTP 500: fake failure\)"):
            await server.wait_ready(limit=30, poll=0.1)
        assert time.monotonic() - started < 10  # one try, no retries with backoff
        assert [r["kind"] for r in fake.requests()].count("chat") == 1


async def test_missing_interpreter_is_a_readable_error(tmp_path: Path) -> None:
    server = model.ServerProcess([str(tmp_path / "no-such-python")], base_url="http://x/v1",
                                 served_name="m")
    with pytest.raises(model.ModelError, match="could not start the model server"):
        await server.start()


# --- shutdown ----------------------------------------------------------------------------------


async def test_stop_takes_the_whole_process_group(fake: Fake, tmp_path: Path) -> None:
    server = fake.server(tmp_path, FAKE_CHILD="1")
    await server.start()
    try:
        await server.wait_ready(limit=30, poll=0.1)
        info = fake.info()
        assert pid_alive(info["pid"]) and pid_alive(info["child"])
    finally:
        await server.stop(grace=10)
    assert not pid_alive(info["pid"])
    assert not pid_alive(info["child"])  # the engine-core stand-in went too


async def test_stop_kills_a_server_that_ignores_sigterm(fake: Fake, tmp_path: Path) -> None:
    server = fake.server(tmp_path, FAKE_IGNORE_TERM="1", FAKE_CHILD="1")
    await server.start()
    await server.wait_ready(limit=30, poll=0.1)
    info = fake.info()
    started = time.monotonic()
    await server.stop(grace=1.0)
    assert time.monotonic() - started < 8
    assert not pid_alive(info["pid"]) and not pid_alive(info["child"])
    assert server.returncode == -signal.SIGKILL


SERVER_KEY = "k3y-for-the-fake"


async def _start_serve_command(fake: Fake, tmp_path: Path) -> asyncio.subprocess.Process:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    env = fake.env(PONDER_VLLM_PYTHON=str(fake.python), PYTHONPATH=str(REPO),
                   PONDER_MODEL="Qwen2.5-7B-Instruct", OPENAI_API_KEY=SERVER_KEY)
    # Output to a file, not a pipe: an orphaned server would hold a pipe open and make
    # proc.wait() hang instead of letting the test fail.
    with (tmp_path / "serve.out").open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "model", "serve", "--model", str(model_dir),
            "--port", str(fake.port), "--cache-dir", str(tmp_path / "cache"),
            env=env, cwd=tmp_path, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )


async def _read_until(proc: asyncio.subprocess.Process, tmp_path: Path, marker: str,
                      limit: float) -> str:
    path = tmp_path / "serve.out"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        seen = path.read_text(errors="replace")
        if marker in seen:
            return seen
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {marker!r}; output:\n{path.read_text(errors='replace')}")


@pytest.mark.exits  # real processes signalled and killed: make test-exits
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_command_forwards_signals_and_leaves_no_orphan(
    fake: Fake, tmp_path: Path, sig: signal.Signals
) -> None:
    proc = await _start_serve_command(fake, tmp_path)
    try:
        seen = await _read_until(proc, tmp_path, "OPENAI_BASE_URL=", 60)
        assert f"OPENAI_BASE_URL={fake.base_url}" in seen
        info = fake.info()
        assert "Qwen2.5-7B-Instruct" in info["argv"]  # served under PONDER_MODEL
        assert "--enable-prefix-caching" in info["argv"]
        assert info["env"]["HF_HUB_OFFLINE"] == "1"
        assert info["env"]["VLLM_API_KEY"] == SERVER_KEY and SERVER_KEY not in info["argv"]
        assert pid_alive(info["pid"])
        proc.send_signal(sig)
        async with asyncio.timeout(30):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    assert not pid_alive(info["pid"])


@pytest.mark.exits  # real processes signalled and killed: make test-exits
async def test_serve_command_killed_outright_leaves_no_orphan(
    fake: Fake, tmp_path: Path
) -> None:
    proc = await _start_serve_command(fake, tmp_path)
    try:
        await _read_until(proc, tmp_path, "OPENAI_BASE_URL=", 60)
        pid = fake.info()["pid"]
    finally:
        proc.kill()  # no chance to forward anything: the parent-death signal must do it
        await proc.wait()
    try:
        assert await wait_until(lambda: not pid_alive(pid), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # when the test failed: leave no orphan behind


# --- managed_server (ponder run) ---------------------------------------------------------------


async def test_managed_server_uses_an_answering_server(fake: Fake, tmp_path: Path) -> None:
    async with fake.server(tmp_path) as server:
        await server.wait_ready(limit=30, poll=0.1)
        settings = load_settings(openai_base_url=fake.base_url)

        async def no_gpu_probe() -> str | None:
            raise AssertionError("nothing should be started, so no GPU probe either")

        async with model.managed_server(settings, gpu_probe=no_gpu_probe) as url:
            assert url is None


async def test_managed_server_starts_the_demo_model_without_a_gpu(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    demo = model.demo_model_dir(cache)
    demo.mkdir(parents=True)
    pretend_prepared(demo)
    monkeypatch.setenv("PONDER_CACHE_DIR", str(cache))
    monkeypatch.setenv("PONDER_VLLM_PYTHON", str(fake.python))
    monkeypatch.setenv("FAKE_STATE", str(fake.state))
    settings = load_settings(openai_base_url=f"http://localhost:{fake.port}/v1")
    lines: list[str] = []

    async def no_gpu() -> str | None:
        return None

    async with model.managed_server(settings, out=lines.append, gpu_probe=no_gpu) as url:
        assert url == fake.base_url
        info = fake.info()
        assert pid_alive(info["pid"])
        assert info["argv"][info["argv"].index("--model") + 1] == str(demo.resolve())
        assert await model.server_answers(url)
    assert not pid_alive(info["pid"])
    assert any("135M" in line and "reasons poorly" in line for line in lines)
    assert (cache / "logs" / f"vllm-{fake.port}.log").exists()


# --- ModelScope download -----------------------------------------------------------------------


async def test_download_happens_once(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def fake_snapshot_download(model_id: str, *, local_dir: str) -> str:
        calls.append((model_id, local_dir))
        Path(local_dir, "config.json").write_text("{}")
        return local_dir

    first = await model.download_model("qwen/Qwen2.5-7B-Instruct", tmp_path,
                                       snapshot_download=fake_snapshot_download,
                                       out=lambda line: None)
    second = await model.download_model("qwen/Qwen2.5-7B-Instruct", tmp_path,
                                        snapshot_download=fake_snapshot_download,
                                        out=lambda line: None)
    assert first == second == tmp_path / "models" / "qwen--Qwen2.5-7B-Instruct"
    assert calls == [("qwen/Qwen2.5-7B-Instruct", str(first))]
    assert (first / "config.json").exists()


async def test_unreachable_modelscope_is_a_clear_error_and_is_retried(tmp_path: Path) -> None:
    attempts = 0

    def flaky(model_id: str, *, local_dir: str) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("Failed to resolve 'modelscope.cn'")
        return local_dir

    with pytest.raises(model.ModelError, match="ModelScope is unreachable") as caught:
        await model.download_model("qwen/Qwen2.5-7B-Instruct", tmp_path,
                                   snapshot_download=flaky, out=lambda line: None)
    assert "modelscope.cn" in str(caught.value)
    # A failed download is not marked done: the next call tries again.
    await model.download_model("qwen/Qwen2.5-7B-Instruct", tmp_path,
                               snapshot_download=flaky, out=lambda line: None)
    assert attempts == 2


async def test_missing_modelscope_says_how_to_install_it(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("modelscope") is not None:
        pytest.skip("modelscope is installed here; this checks the message without it")
    with pytest.raises(model.ModelError, match=r"pip install 'ponder\[serve\]'"):
        await model.download_model("qwen/Qwen2.5-7B-Instruct", tmp_path, out=lambda line: None)


# --- doctor ------------------------------------------------------------------------------------

DISCORD_TOKEN = (
    base64.urlsafe_b64encode(b"123456789012345678").decode().rstrip("=")
    + ".GAbCdE." + "x" * 38
)


class FakeApis:
    """One aiohttp app that plays the model server, Discord's REST API and Slack's Web API."""

    STEP = '{"title":"Adding","content":"2 + 3 = 5 apples.","next_action":"final_answer"}'

    def __init__(self) -> None:
        self.served = ["Qwen2.5-7B-Instruct"]
        self.honour_schema = True
        self.reject_schema = False  # a server without structured outputs: 400 on json_schema
        self.reasoning: str | None = None
        self.models_delay = 0.0
        self.models_status = 200
        self.healthy = True
        self.chats: list[dict[str, Any]] = []
        self.discord_token = DISCORD_TOKEN
        self.slack_token = "xoxb-good"
        self.seen: list[str] = []
        self.port = 0
        self.release = asyncio.Event()  # ends a held /v1/models answer early at teardown

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/health", self.health)
        app.router.add_get("/discord/users/@me", self.discord_me)
        app.router.add_post("/slack/auth.test", self.slack_auth)
        return app

    async def models(self, request: web.Request) -> web.Response:
        self.seen.append("models")
        if self.models_delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.models_delay)
        if self.models_status != 200:
            return web.json_response({"error": {"message": "no"}}, status=self.models_status)
        return web.json_response({"data": [{"id": name} for name in self.served]})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append("chat")
        self.chats.append({"body": body, "headers": dict(request.headers)})
        kind = (body.get("response_format") or {}).get("type")
        if kind == "json_schema" and self.reject_schema:
            return web.json_response(
                {"error": {"message": "json_schema response_format is not supported"}},
                status=400)
        content = self.STEP if kind and self.honour_schema else "You have five apples."
        # Streamed as vLLM streams: reasoning deltas (a reasoning parser's), then the content.
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if self.reasoning:
            deltas.append({"reasoning": self.reasoning, "content": None})
        deltas += [{"content": content[i:i + 16]} for i in range(0, len(content), 16)]
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        for n, delta in enumerate(deltas):
            finish = "stop" if n == len(deltas) - 1 else None
            chunk = {"object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await reply.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await reply.write(b"data: [DONE]\n\n")
        await reply.write_eof()
        return reply

    async def discord_me(self, request: web.Request) -> web.Response:
        self.seen.append("discord")
        if request.headers.get("Authorization") != f"Bot {self.discord_token}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        return web.json_response({"id": "123456789012345678", "username": "ponder"})

    async def slack_auth(self, request: web.Request) -> web.Response:
        self.seen.append("slack")
        if request.headers.get("Authorization") != f"Bearer {self.slack_token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        return web.json_response({"ok": True, "team": "Acme", "user": "ponder"})

    def settings(self, **overrides: Any) -> Settings:
        base = f"http://127.0.0.1:{self.port}"
        values: dict[str, Any] = {
            "openai_base_url": f"{base}/v1", "model": "Qwen2.5-7B-Instruct",
            "discord_token": DISCORD_TOKEN, "discord_api_url": f"{base}/discord",
            "slack_bot_token": "xoxb-good", "slack_app_token": "xapp-1-good",
            "slack_api_url": f"{base}/slack/",
        }
        values.update(overrides)
        return load_settings(**values)


@pytest.fixture
async def apis() -> AsyncIterator[FakeApis]:
    fake = FakeApis()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


async def no_gpu(limits: doctor.Limits) -> doctor.Check:
    return doctor.Check("GPU", "skip", "none found", required=False)


async def run_doctor(settings: Settings | None, **limits: float) -> list[str]:
    checks = await doctor.run_checks(settings, limits=doctor.Limits(**limits), gpu_check=no_gpu)
    return [doctor.format_check(c) for c in checks]


async def test_doctor_all_green(apis: FakeApis) -> None:
    lines = await run_doctor(apis.settings())
    assert lines == [
        "✓ settings: valid (model Qwen2.5-7B-Instruct, mode chain)",
        f"✓ model server: reachable at http://127.0.0.1:{apis.port}/v1",
        "✓ model name: Qwen2.5-7B-Instruct is served",
        "✓ structured outputs: a json_schema request gave schema-valid JSON "
        + FakeApis.STEP[:60],
        "✓ reasoning field: absent (fine for PONDER_MODE=chain)",
        "✓ Discord: logged in as ponder (123456789012345678)",
        "✓ Slack: authenticated as ponder in Acme (Socket Mode)",
        "– GPU: none found",
    ]
    # Both model requests went through Ponder's client: streamed, at temperature 0, and the
    # structured one is exactly a chain's step request (the step schema, a session id).
    step, plain = (chat["body"] for chat in apis.chats)
    assert step["stream"] and plain["stream"]
    assert step["temperature"] == plain["temperature"] == 0
    assert step["response_format"]["json_schema"]["schema"] == STEP_SCHEMA
    assert "response_format" not in plain
    assert apis.chats[0]["headers"].get("x-session-id") == "ponder-doctor"


async def test_doctor_fails_a_server_that_refuses_json_schema(apis: FakeApis) -> None:
    # Ponder would fall back to json_object and go on; the doctor must still say it.
    apis.reject_schema = True
    checks = await doctor.run_checks(apis.settings(), gpu_check=no_gpu)
    structured = next(c for c in checks if c.name == "structured outputs")
    assert doctor.format_check(structured).startswith(
        "✗ structured outputs: the server refused a json_schema request (chains fall back to "
        "json_object")
    assert not all(c.passed for c in checks)
    # In native mode no step is ever asked for a schema: optional there.
    checks = await doctor.run_checks(apis.settings(mode="native"), gpu_check=no_gpu)
    structured = next(c for c in checks if c.name == "structured outputs")
    assert structured.status == "fail" and not structured.required


async def test_doctor_tells_a_refused_key_from_a_wrong_url(apis: FakeApis) -> None:
    url = f"http://127.0.0.1:{apis.port}/v1"
    apis.models_status = 401
    lines = await run_doctor(apis.settings())
    assert lines[1] == (f"✗ model server: {url} refused the API key (HTTP 401) → fix: "
                        "set OPENAI_API_KEY to the server's key")
    apis.models_status = 404
    lines = await run_doctor(apis.settings())
    assert lines[1] == (f"✗ model server: {url}/models answered HTTP 404 → fix: "
                        "check that OPENAI_BASE_URL ends in /v1")
    lines = await run_doctor(apis.settings(openai_base_url=f"http://127.0.0.1:{apis.port}"))
    assert lines[1].startswith(f"✗ model server: http://127.0.0.1:{apis.port}/models answered")
    lines = await run_doctor(apis.settings(openai_base_url=f"http://127.0.0.1:{free_port()}/v1"))
    assert lines[1].startswith("✗ model server: no answer at ") and "(cannot connect)" in lines[1]


async def test_client_probes_health_and_the_model_list(apis: FakeApis) -> None:
    llm = LLMClient(apis.settings(connect_timeout=0.5))
    try:
        assert await llm.served_models() == ["Qwen2.5-7B-Instruct"]
        assert await llm.healthy() and await llm.ping()
        apis.healthy = False  # vLLM answers 503 while it loads
        assert not await llm.healthy()
        apis.models_status = 401
        with pytest.raises(LLMError) as caught:
            await llm.served_models()
        assert caught.value.status == 401 and caught.value.detail.startswith("HTTP 401")
        assert not await llm.ping()
        # Refused, but there: a managed server must not be started on top of it.
        assert await model.server_answers(llm.base_url)
    finally:
        await llm.close()
    assert not await model.server_answers(f"http://127.0.0.1:{free_port()}/v1", limit=1)


async def test_doctor_names_each_failure_and_its_fix(apis: FakeApis) -> None:
    apis.honour_schema = False
    apis.discord_token = "another"
    apis.slack_token = "xoxb-other"
    checks = await doctor.run_checks(apis.settings(), limits=doctor.Limits(), gpu_check=no_gpu)
    by_name = {c.name: c for c in checks}
    structured = doctor.format_check(by_name["structured outputs"])
    assert structured.startswith("✗ structured outputs: response_format was ignored")
    assert "--structured-outputs-config" in structured
    assert doctor.format_check(by_name["Discord"]).startswith(
        "✗ Discord: the token for bot 123456789012345678 was rejected (401) → fix: reset")
    assert doctor.format_check(by_name["Slack"]).startswith(
        "✗ Slack: auth.test refused the bot token (invalid_auth) → fix:")
    assert not all(c.passed for c in checks)


async def test_doctor_wrong_model_name_lists_what_is_served(apis: FakeApis) -> None:
    lines = await run_doctor(apis.settings(model="Qwen3-8B"))
    assert lines[2].startswith(
        "✗ model name: Qwen3-8B is not served (served: Qwen2.5-7B-Instruct) → fix:")
    assert lines[3] == "– structured outputs: not checked: model not served"


async def test_doctor_native_mode_needs_a_reasoning_field(apis: FakeApis) -> None:
    checks = await doctor.run_checks(apis.settings(mode="native"), gpu_check=no_gpu)
    reasoning = next(c for c in checks if c.name == "reasoning field")
    assert reasoning.status == "fail" and reasoning.required
    apis.reasoning = "Two plus two is four."
    checks = await doctor.run_checks(apis.settings(mode="native"), gpu_check=no_gpu)
    reasoning = next(c for c in checks if c.name == "reasoning field")
    assert reasoning.status == "ok"
    assert all(c.passed for c in checks)


async def test_doctor_checks_token_formats_without_calling_out(apis: FakeApis) -> None:
    lines = await run_doctor(apis.settings(discord_token="Bot " + DISCORD_TOKEN,
                                           slack_bot_token="xoxp-user-token"))
    assert "✗ Discord: DISCORD_TOKEN starts with 'Bot ' → fix: set the token alone; " \
           "Ponder adds the 'Bot ' prefix" in lines
    assert any(line.startswith("✗ Slack: SLACK_BOT_TOKEN does not start with xoxb-")
               for line in lines)
    assert "discord" not in apis.seen and "slack" not in apis.seen


async def test_doctor_times_out_instead_of_hanging(apis: FakeApis) -> None:
    apis.models_delay = 10
    started = time.monotonic()
    lines = await run_doctor(apis.settings(), http=0.5)
    assert time.monotonic() - started < 5
    assert lines[1] == (
        f"✗ model server: no answer at http://127.0.0.1:{apis.port}/v1 (timed out) → fix: "
        "start one with `ponder model serve` (CPU: `ponder model serve --demo`), "
        "or set OPENAI_BASE_URL to a running server")
    assert lines[2:5] == [
        "– model name: not checked: no model server",
        "– structured outputs: not checked: no model server",
        "– reasoning field: not checked: no model server",
    ]


async def test_doctor_reports_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://nowhere")
    lines = await run_doctor(None)
    assert len(lines) == 1
    assert lines[0].startswith("✗ settings: setting OPENAI_BASE_URL: must be an http(s) URL")


@pytest.mark.process
async def test_doctor_command_exit_codes(apis: FakeApis, tmp_path: Path) -> None:
    async def doctor_cli(**env: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "doctor", "--timeout", "3",
            env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    good = {"OPENAI_BASE_URL": f"http://127.0.0.1:{apis.port}/v1",
            "PONDER_MODEL": "Qwen2.5-7B-Instruct"}
    code, out = await doctor_cli(**good)
    assert code == 0, out
    assert "✓ structured outputs" in out
    code, out = await doctor_cli(**{**good, "PONDER_MODEL": "absent-model"})
    assert code == 1
    assert "✗ model name: absent-model is not served" in out


def test_doctor_and_model_register_their_commands() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    model.register_commands(sub)
    doctor.register_commands(sub)
    args = parser.parse_args(["model", "serve", "--demo", "--port", "9001",
                              "--reasoning-parser", "qwen3"])
    assert args.func is commands._cmd_serve and args.demo and args.port == 9001
    args = parser.parse_args(["model", "download", "--cache-dir", "/tmp/x"])
    assert args.func is commands._cmd_download and args.model == model.DEFAULT_MODEL_ID
    args = parser.parse_args(["doctor"])
    assert args.func is doctor._cmd_doctor
