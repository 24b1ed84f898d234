"""The model server as a child process in its own process group, stopped as a whole.

Stopping the group stops vLLM's engine-core and worker processes too, so Ponder never leaves an
orphan server holding the port or the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bot.errors import ModelError
from bot.model import readiness

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@functools.cache
def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM if Ponder itself is killed outright, or
    None where Linux's prctl cannot be reached.

    libc is looked up here, in the parent: between fork and exec the child may not log (a lock
    another thread held at the fork would never be released).
    """
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        log.warning("no prctl(PR_SET_PDEATHSIG) here: a model server may outlive a Ponder that "
                    "is killed outright", exc_info=True)
        return None

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_parent_death_signal


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies hold nothing)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited between the listing and the read
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class ServerProcess:
    """A model server child process in its own process group, with readiness and clean stop."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        base_url: str,
        served_name: str,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        api_key: str = "EMPTY",
    ) -> None:
        self.argv = list(argv)
        self.base_url = base_url.rstrip("/")
        self.served_name = served_name
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.api_key = api_key
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        log_file = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = self.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT if log_file else None,
                # Own group: Ctrl-C at the terminal reaches Ponder only, which then stops the
                # whole group (vLLM's engine core and workers included) in order.
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        except OSError as exc:
            raise ModelError(f"could not start the model server ({self.argv[0]}): {exc}") from None
        finally:
            if log_file is not None:
                log_file.close()  # the child holds its own copy

    async def wait(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return await self._proc.wait()

    async def _log_tail(self, limit: int = 2000) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""

        def read() -> str:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
                return fh.read().decode(errors="replace")

        tail = await asyncio.to_thread(read)
        return f"; last log lines ({path}):\n{tail}" if tail else ""

    async def wait_ready(self, limit: float = 900.0, poll: float = 0.5) -> float:
        """Wait for /health, then for one tiny completion; return the seconds since called."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("not started")
        return await readiness.wait_ready(
            self.base_url, api_key=self.api_key, served_name=self.served_name,
            exit_code=lambda: proc.returncode, log_tail=self._log_tail, limit=limit, poll=poll,
        )

    async def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole group, SIGKILL after `grace` seconds; return once nothing is left."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid

        def signal_group(sig: signal.Signals) -> None:
            # Gone already, or nothing left that is ours to signal: nothing to stop.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)

        if proc.returncode is None:
            signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                signal_group(signal.SIGKILL)
                await proc.wait()
        # Engine-core and worker processes may outlive the leader for a moment.
        loop = asyncio.get_running_loop()
        sweep_deadline = loop.time() + min(grace, 10.0)
        while await asyncio.to_thread(group_alive, pgid):
            if loop.time() >= sweep_deadline:
                signal_group(signal.SIGKILL)
                sweep_deadline = loop.time() + 5.0
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.stop())
