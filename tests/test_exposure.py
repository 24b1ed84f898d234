"""What Ponder exposes beyond this machine: the model server only with a key, `/metrics` only
where PONDER_METRICS_HOST says."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot import model
from bot.model.command import check_exposure, reachable_from_outside
from bot.service import Ponder
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("host", "outside"), [
    ("127.0.0.1", False), ("127.0.0.2", False), ("::1", False), ("[::1]", False),
    ("localhost", False), ("LOCALHOST.", False),
    ("0.0.0.0", True), ("::", True), ("", True), ("192.168.1.20", True), ("10.0.0.5", True),
    ("gpu-host-1.lan", True),  # a name may resolve to anything
])
def test_which_hosts_other_machines_can_reach(host: str, outside: bool) -> None:
    assert reachable_from_outside(host) is outside


def test_no_key_beyond_this_machine_is_refused_unless_insecure_then_said_once() -> None:
    lines: list[str] = []
    for key in ("EMPTY", "", None):
        with pytest.raises(model.ModelError, match=r"--host 0\.0\.0\.0 .*--insecure"):
            check_exposure("0.0.0.0", key, insecure=False, out=lines.append)
    check_exposure("0.0.0.0", "EMPTY", insecure=True, out=lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning: serving on --host 0.0.0.0 without")
    # With a key, or on loopback, there is nothing to say.
    check_exposure("0.0.0.0", "s3cret", insecure=False, out=lines.append)
    check_exposure("127.0.0.1", "EMPTY", insecure=False, out=lines.append)
    assert len(lines) == 1


@pytest.mark.process
async def test_serve_refuses_to_listen_beyond_this_machine_without_a_key(
        tmp_path: Path) -> None:
    started = tmp_path / "vllm-started"
    vllm = tmp_path / "fake-python"  # would leave a trace if anything were started
    vllm.write_text(f'#!/bin/sh\ntouch "{started}"\nsleep 30\n')
    vllm.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PONDER_VLLM_PYTHON": str(vllm)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "model", "serve", "--host", "0.0.0.0",
        "--model", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (out, err)
    assert lines[0].startswith("error: --host 0.0.0.0 lets anyone who can reach this machine")
    assert "OPENAI_API_KEY" in lines[0] and "--insecure" in lines[0]
    assert not started.exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def answers(host: str, port: int) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"http://{host}:{port}/metrics") as resp:
                return resp.status == 200
    except aiohttp.ClientConnectorError:
        return False


@pytest.mark.parametrize(("configured", "other"), [(None, "127.0.0.2"),
                                                   ("127.0.0.2", "127.0.0.1")])
async def test_metrics_listen_only_where_told(tmp_path: Path, configured: str | None,
                                              other: str) -> None:
    # Every 127.x address reaches a server bound to all interfaces; one bound to a single
    # address answers there alone.
    port = free_port()
    overrides: dict[str, Any] = {"metrics_port": port}
    if configured is not None:
        overrides["metrics_host"] = configured
    async with FakeOpenAI() as fake:
        ponder = Ponder(make_settings(fake.base_url, tmp_path, **overrides))
        await ponder.start()
        try:
            assert await answers(configured or "127.0.0.1", port)
            assert not await answers(other, port)
        finally:
            await ponder.close()
