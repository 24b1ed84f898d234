"""A model server for as long as Ponder needs one: beside `ponder run`, or in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.config import Settings
from bot.model.command import (
    ServerSpec,
    build_server_args,
    find_vllm_python,
    has_key,
    server_env,
    server_spec,
)
from bot.model.gpu import detect_gpu
from bot.model.process import ServerProcess
from bot.model.readiness import server_answers
from bot.model.weights import DEFAULT_MODEL_ID, Out, cache_root, stderr_line
from bot.signals import on_stop_signals

DEMO_WARNING = (
    "warning: no GPU found, so Ponder serves the 135M-parameter demo model on CPU; "
    "it reasons poorly (set OPENAI_BASE_URL to a real server for real answers)"
)
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def is_local(base_url: str) -> bool:
    return (urlsplit(base_url).hostname or "") in _LOCAL_HOSTS


def port_of(base_url: str) -> int:
    parts = urlsplit(base_url)
    return parts.port or (443 if parts.scheme == "https" else 80)


@contextlib.asynccontextmanager
async def managed_server(
    settings: Settings,
    *,
    out: Out = stderr_line,
    ready_timeout: float = 900.0,
    gpu_probe: Callable[[], Awaitable[str | None]] = detect_gpu,
) -> AsyncIterator[str | None]:
    """For `ponder run`: use the configured server, or start one for the life of the block.

    Yields None when a server already answers at OPENAI_BASE_URL (or the URL is not on this
    machine, so starting one here would not help); else the base URL of the server it started
    (a GPU: the real model; no GPU: the demo model, with a warning). Stops it on exit.
    Raises ModelError (one line, with the fix) when it cannot start one.
    """
    base_url = settings.openai_base_url
    api_key = settings.openai_api_key.get_secret_value()
    if await server_answers(base_url, api_key):
        yield None
        return
    if not is_local(base_url):
        out(f"warning: no model server answers at {base_url}; chains will fail until one does")
        yield None
        return
    cache = cache_root(settings)
    python = find_vllm_python(settings)
    gpu = await gpu_probe()
    if gpu is None:
        out(DEMO_WARNING)
    port = port_of(base_url)
    spec = await server_spec(
        settings, cache=cache, python=python, port=port, host="127.0.0.1", demo=gpu is None,
        model=DEFAULT_MODEL_ID, max_model_len=None, gpu_memory_utilization=None,
        reasoning_parser=None, gpu=gpu, out=out,
    )
    log_path = cache / "logs" / f"vllm-{port}.log"
    server = ServerProcess(
        build_server_args(spec, python), base_url=spec.base_url, served_name=settings.model,
        env=server_env(spec, cache, api_key=api_key), log_path=log_path, api_key=api_key,
    )
    out(f"starting vLLM with {Path(spec.model).name} on port {port} (log: {log_path}) …")
    async with server:
        seconds = await server.wait_ready(limit=ready_timeout)
        out(f"model server ready in {seconds:.0f} s at {spec.base_url}")
        yield spec.base_url


async def serve(
    spec: ServerSpec,
    python: str,
    cache: Path,
    *,
    served_name: str,
    api_key: str = "EMPTY",
    ready_timeout: float = 900.0,
    out: Out = print,
) -> int:
    """Run vLLM in the foreground until it exits or Ponder gets SIGINT/SIGTERM.

    The stop handlers stay installed until the loop closes: `ponder model serve` ends its loop
    right after this returns.
    """
    stopping = asyncio.Event()
    on_stop_signals(stopping.set)
    server = ServerProcess(
        build_server_args(spec, python), base_url=spec.base_url, served_name=served_name,
        env=server_env(spec, cache, api_key=api_key), api_key=api_key,
    )
    tasks: list[asyncio.Task[Any]] = []
    try:
        await server.start()
        stopper = asyncio.create_task(stopping.wait())
        ready = asyncio.create_task(server.wait_ready(limit=ready_timeout))
        tasks += [stopper, ready]
        await asyncio.wait({stopper, ready}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            out("stopping the model server …")
            return 0
        seconds = ready.result()  # raises ModelError when it never became ready
        out(f"model server ready in {seconds:.1f} s: {Path(spec.model).name} "
            f"served as {served_name}")
        out(f"OPENAI_BASE_URL={spec.base_url}")
        if has_key(api_key):
            out("the server requires this OPENAI_API_KEY: give clients the same one")
        exited = asyncio.create_task(server.wait())
        tasks.append(exited)
        await asyncio.wait({stopper, exited}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            out("stopping the model server …")
            return 0
        out(f"the model server exited with code {exited.result()}")
        return 1
    finally:
        for task in tasks:
            task.cancel()
        await server.stop()
