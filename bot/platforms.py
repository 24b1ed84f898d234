"""The seam between the core and its front doors (Discord, Slack, the console, any other).

A front door is a plugin, found the way pytest finds its plugins: through the package entry
points of the group `ponder.platforms`, each naming an object that follows `Platform`:

    [project.entry-points."ponder.platforms"]
    discord = "adapters.discord.plugin:platform"

So the core names no platform: `ponder` takes each one's sub-commands from it, `ponder run`
asks each whether it is configured and serves those (`bot.runner`), `ponder doctor` runs each
one's checks. A plugin module should stay cheap to import (every `ponder` command loads them
all): the platform's library belongs inside `serve`, not at the top of the plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

import aiohttp

from bot.config import Settings

if TYPE_CHECKING:
    from bot.service import Ponder

log = logging.getLogger(__name__)

GROUP = "ponder.platforms"

# A sub-command's handler: the parsed arguments and the settings in, the exit code out.
Command = Callable[[argparse.Namespace, Settings], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# --- what `ponder doctor` shows ----------------------------------------------------------------

Status = Literal["ok", "fail", "skip"]
MARKS: dict[Status, str] = {"ok": "✓", "fail": "✗", "skip": "–"}


@dataclass(frozen=True)
class Check:
    """One line of `ponder doctor`."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def passed(self) -> bool:
        return self.status != "fail" or not self.required


def format_check(check: Check) -> str:
    line = f"{MARKS[check.status]} {check.name}: {check.detail}"
    if check.status == "fail" and check.fix:
        line += f" → fix: {check.fix}"
    if check.status == "fail" and not check.required:
        line += " (optional)"
    return line


@dataclass(frozen=True)
class Limits:
    """Seconds allowed per kind of call."""

    http: float = 5.0  # plain GETs and auth calls
    completion: float = 60.0  # a model request (a CPU server's first one is slow)


def unreachable_reason(exc: BaseException) -> str:
    """Why a check's network call got no answer, short enough for one checklist line."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    text = str(exc) or type(exc).__name__
    return text[:160]


# --- what a running platform gets --------------------------------------------------------------


class Services:
    """What the runner shares among the platforms it serves side by side.

    The `Ponder` service (store, model watcher, metrics) is started by the first platform that
    asks for it: the console answers from its own engine and must not open a store or watch
    the model server while it waits at its prompt.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ponder: Ponder | None = None
        self._failed: Exception | None = None
        self._lock = asyncio.Lock()

    async def ponder(self) -> Ponder:
        """The one started `Ponder`; the runner drains and closes it."""
        async with self._lock:
            if self._failed is not None:
                raise self._failed  # every platform waiting on it hears why, not only the first
            if self._ponder is None:
                from bot.service import Ponder

                ponder = Ponder(self.settings)
                try:
                    await ponder.start()
                except BaseException as exc:
                    await ponder.close()  # a half-started service leaves no store or task open
                    if isinstance(exc, Exception):
                        self._failed = exc
                    raise
                self._ponder = ponder
            return self._ponder

    async def drain(self, grace: float) -> None:
        if self._ponder is not None:
            await self._ponder.drain(grace)

    async def close(self) -> None:
        if self._ponder is not None:
            ponder, self._ponder = self._ponder, None
            await ponder.close()


# --- the plugin protocol -----------------------------------------------------------------------


@runtime_checkable
class Platform(Protocol):
    """One front door, as the core sees it."""

    name: str
    """Short and lowercase (`discord`): in task names, log lines and `ponder run`'s choice."""

    fallback: bool
    """True for a front door that needs no credentials (the console): `ponder run` serves it,
    alone and in the foreground, when no other platform is configured."""

    def add_commands(self, subparsers: SubParsers) -> None:
        """Add the platform's sub-commands to `ponder`; each sets `func` to a `Command`."""

    def configured(self, settings: Settings) -> bool:
        """Whether its credentials are set, so that `ponder run` starts it."""

    async def serve(self, services: Services) -> None:
        """Serve until cancelled (or, in the foreground, until the user is done).

        A platform that cannot start raises `PlatformError` (or `SettingsError` for a missing
        or wrong setting): the runner shows its message as one line."""

    async def checks(self, settings: Settings, limits: Limits) -> Sequence[Check]:
        """`ponder doctor`'s lines for this platform (none is fine); every network call
        bounded by `limits`, so an unreachable platform is a line, never a hang."""


def discover(found: Iterable[EntryPoint] | None = None) -> list[Platform]:
    """The installed platforms, by name. One that fails to load is left out with a warning:
    a broken Slack install must not take `ponder ask` down with it."""
    platforms: dict[str, Platform] = {}
    for entry in entry_points(group=GROUP) if found is None else found:
        try:
            loaded: Any = entry.load()
        except Exception:
            log.warning("platform plugin %s (%s) failed to load; leaving it out",
                        entry.name, entry.value, exc_info=True)
            continue
        if not isinstance(loaded, Platform):
            log.warning("platform plugin %s (%s) is not a Platform; leaving it out",
                        entry.name, entry.value)
            continue
        if loaded.name in platforms:
            log.warning("two platform plugins are named %s; keeping the first", loaded.name)
            continue
        platforms[loaded.name] = loaded
    return [platforms[name] for name in sorted(platforms)]


def configured(settings: Settings, platforms: Iterable[Platform]) -> list[Platform]:
    return [p for p in platforms if p.configured(settings)]
