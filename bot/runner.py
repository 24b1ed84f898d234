"""Long-running processes: the platform bots side by side, stopped cleanly on SIGTERM/Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from bot.config import Settings
from bot.service import Ponder

log = logging.getLogger(__name__)

PlatformRunner = Callable[[Ponder, Settings], Awaitable[None]]


def configured_platforms(settings: Settings) -> list[str]:
    """The platforms whose credentials are set."""
    found = []
    if settings.discord_token is not None:
        found.append("discord")
    if settings.slack_bot_token is not None and (
        settings.slack_app_token is not None or settings.slack_signing_secret is not None
    ):
        found.append("slack")
    return found


def _runner(name: str, *, http: bool, port: int) -> PlatformRunner:
    if name == "discord":
        from adapters.discord import run_discord

        return run_discord
    from adapters.slack import run_slack

    async def slack(ponder: Ponder, settings: Settings) -> None:
        await run_slack(ponder, settings, http=http or settings.slack_app_token is None,
                        port=port)

    return slack


def tune_gc() -> None:
    """Collector settings for a process holding hundreds of live chains.

    Every streamed token allocates a few short-lived objects; with CPython's default young
    generation (700 objects) 500 chains trigger well over a hundred collections a second, and
    the older generations they promote into are rescanned again and again. bench/engine.py
    measured that as a few per cent of wall time at 500 chains; a larger young generation,
    and freezing what start-up built, takes it back.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(settings: Settings, platforms: Sequence[str], *, http: bool = False,
                port: int = 3000) -> int:
    """Run the named platform bots until one fails or a stop signal arrives."""
    tune_gc()
    ponder = Ponder(settings)
    await ponder.start()
    stop = asyncio.Event()
    _on_signals(stop.set)
    tasks = [asyncio.create_task(_runner(name, http=http, port=port)(ponder, settings),
                                 name=f"platform-{name}") for name in platforms]
    stopper = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and not t.cancelled() and t.exception()]
        for task in failed:
            log.error("%s stopped: %s", task.get_name(), task.exception())
        if stop.is_set():
            log.info("stop signal: finishing running chains (up to %.0f s)",
                     settings.shutdown_grace)
        return 1 if failed else 0
    finally:
        await ponder.drain(settings.shutdown_grace)
        for task in [*tasks, stopper]:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await ponder.close()


async def serve_all(settings: Settings) -> int:
    """`ponder run`: a model server if none answers, then every configured platform, else
    the terminal."""
    from bot.model import ModelError, managed_server

    try:
        async with managed_server(settings) as base_url:
            return await _serve_with(settings, base_url)
    except ModelError as exc:
        log.error("%s", exc)
        sys.stderr.write(f"ponder: {exc}\n")
        return 1


async def _serve_with(settings: Settings, base_url: str | None) -> int:
    if base_url is not None:
        settings = settings.model_copy(update={"openai_base_url": base_url})
    platforms = configured_platforms(settings)
    if platforms:
        return await serve(settings, platforms)
    from adapters.console import repl
    from bot.engine import Engine
    from bot.llm import LLMClient

    log.info("no Discord or Slack credentials: asking in the terminal")
    llm = LLMClient(settings)
    try:
        return await repl(Engine(llm, settings))
    finally:
        await llm.close()


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, callback)
