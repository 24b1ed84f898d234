"""The real vLLM router (`vllm-router`, a Rust binary from PyPI) in front of fake replicas,
for `tests/test_router.py` and `bench/scale_router.py`.

The router runs as the deployment runs it (`docs/deploy.md`): `--policy consistent_hash` over
`--worker-urls`, its Prometheus port a free one (it must be > 0). The replicas are
`FakeOpenAI` instances in this process, so which replica served a request is read off each
one's recorded requests, and a replica dies the way a server does when `stop()` closes its
socket and cuts its open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import aiohttp

from bot.config import Settings
from tests.fakes.openai_server import FakeOpenAI

REPO = Path(__file__).resolve().parent.parent
_STARTUP_SECONDS = 30.0


def router_binary() -> str | None:
    """`PONDER_ROUTER_BIN` (set by `make test-router`), the repository's `.venv-router`, or
    `vllm-router` on PATH."""
    named = os.environ.get("PONDER_ROUTER_BIN")
    if named:
        return named if Path(named).is_file() else None
    local = REPO / ".venv-router" / "bin" / "vllm-router"
    if local.is_file():
        return str(local)
    return shutil.which("vllm-router")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def root_of(fake: FakeOpenAI) -> str:
    """A replica's address as the router takes it (the server's root, not /v1)."""
    return fake.base_url.removesuffix("/v1")


def router_command(binary: str, workers: Sequence[str], port: int, metrics_port: int,
                   *extra: str) -> list[str]:
    """The command `docs/deploy.md` gives, on loopback."""
    return [binary, "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *workers, "--policy", "consistent_hash",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--log-level", "warning", *extra]


class Router:
    """One `vllm-router` process: `async with Router(binary, [a, b], log) as router:`."""

    def __init__(self, binary: str, workers: Sequence[str], log: Path, *extra: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.command = router_command(binary, workers, self.port, self.metrics_port, *extra)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self._log_file: IO[bytes] | None = None
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._log_file = self.log.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.DEVNULL, stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT)
        # Ready once it answers for the model list: it has found every worker healthy.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            async with asyncio.timeout(_STARTUP_SECONDS):
                while True:
                    if self._process.returncode is not None:
                        raise RuntimeError(f"vllm-router exited ({self._process.returncode}): "
                                           f"{self.tail()}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(f"{self.base_url}/models") as answer:
                            if answer.status == 200:
                                return
                    await asyncio.sleep(0.1)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def __aenter__(self) -> Router:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def chat_sessions(fake: FakeOpenAI, header: str) -> dict[str, int]:
    """Chat requests this replica served, counted by their session header's value."""
    served: dict[str, int] = defaultdict(int)
    for request in fake.requests:
        if request.path.endswith("/chat/completions"):
            served[request.headers.get(header, "")] += 1
    return dict(served)


def placement(replicas: Sequence[FakeOpenAI], settings: Settings) -> dict[str, list[int]]:
    """Each chain id: how many of its chat requests each replica served."""
    where: dict[str, list[int]] = defaultdict(lambda: [0] * len(replicas))
    for n, fake in enumerate(replicas):
        for session, count in chat_sessions(fake, settings.session_header).items():
            where[session][n] += count
    return dict(where)
