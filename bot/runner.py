"""Long-running processes: the platform bots side by side, stopped cleanly on SIGTERM/Ctrl-C.

The runner knows platforms only through `bot.platforms.Platform`; which ones exist is up to
the installed plugins.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Sequence

from bot import errors
from bot.config import Settings, SettingsError
from bot.platforms import Platform, Services, configured, discover
from bot.signals import exit_at_once, on_stop_signals

log = logging.getLogger(__name__)

# Exit codes, as for every `ponder` command: the work failed, a usage or settings error.
FAILED, BAD_SETTINGS = 1, 2
# Once running chains have had the shutdown grace, how long the front doors get to stop (their
# chains' last words, closing connections) whatever the network does; past it the process
# leaves anyway. A platform library may retry a vanished server for minutes, or lose a cancel
# in its reconnect loop: nothing may keep a stopped process alive.
STOP_DEADLINE = 12.0


def configured_platforms(settings: Settings,
                         platforms: Sequence[Platform] | None = None) -> list[str]:
    """The names of the platforms whose credentials are set."""
    found = discover() if platforms is None else platforms
    return [p.name for p in configured(settings, found)]


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


def report(platform: str, exc: BaseException) -> int:
    """Show why a platform stopped, and the exit code that goes with it.

    Ponder's own errors carry a line meant for a person: it is shown as it is. Anything else
    is a bug: logged with its traceback."""
    if isinstance(exc, SettingsError):
        sys.stderr.write(f"ponder: {exc}\n")
        return BAD_SETTINGS
    if isinstance(exc, errors.PonderError):
        sys.stderr.write(f"ponder: {exc.message}\n")
        return FAILED
    log.error("%s stopped on an unexpected error", platform, exc_info=exc)
    return FAILED


async def serve(settings: Settings, platforms: Sequence[Platform]) -> int:
    """Run the platforms until one stops or a stop signal arrives (then 0: stopping is not
    a failure)."""
    tune_gc()
    services = Services(settings)
    stop = asyncio.Event()
    on_stop_signals(stop.set, again=lambda: exit_at_once("second stop signal"))
    tasks = {asyncio.create_task(p.serve(services), name=f"platform-{p.name}"): p
             for p in platforms}
    stopper = asyncio.create_task(stop.wait(), name="stop-signal")
    reported: set[asyncio.Task[None]] = set()  # failures already shown, not to repeat
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task, platform in tasks.items():
            exc = task.exception() if task in done and not task.cancelled() else None
            if exc is not None:
                code = max(code, report(platform.name, exc))
                reported.add(task)
        if stop.is_set():
            log.info("stop signal: finishing running chains (up to %.0f s)",
                     settings.shutdown_grace)
        return code
    finally:
        await services.drain(settings.shutdown_grace)
        stopper.cancel()
        try:
            # One deadline for all that is left, whatever the network does meanwhile.
            async with asyncio.timeout(STOP_DEADLINE):
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks)
                for task, platform in tasks.items():
                    result = None if task.cancelled() else task.exception()
                    # A platform that fails while it is being stopped still says so (once).
                    if result is not None and task not in reported:
                        log.error("%s failed while stopping: %s", platform.name, result,
                                  exc_info=result)
                await services.close()
        except TimeoutError:
            stuck = ", ".join(p.name for t, p in tasks.items() if not t.done()) or "the service"
            exit_at_once(f"{stuck} did not stop within {STOP_DEADLINE:.0f} s")


async def serve_alone(settings: Settings, platform: Platform) -> int:
    """A foreground front door (the console) on its own. Ctrl-C stays the terminal's own:
    it interrupts at once rather than asking running chains to finish."""
    services = Services(settings)
    try:
        await platform.serve(services)
    except errors.PonderError as exc:
        return report(platform.name, exc)
    finally:
        await services.close()
    return 0


async def serve_all(settings: Settings, platforms: Sequence[Platform] | None = None) -> int:
    """`ponder run`: a model server if none answers, then every configured platform, else
    the fallback (the terminal)."""
    from bot.model import ModelError, managed_server

    found = discover() if platforms is None else platforms
    try:
        async with managed_server(settings) as base_url:
            return await _serve_with(settings, base_url, found)
    except ModelError as exc:
        log.error("%s", exc)
        sys.stderr.write(f"ponder: {exc}\n")
        return FAILED


async def _serve_with(settings: Settings, base_url: str | None,
                      found: Sequence[Platform]) -> int:
    if base_url is not None:
        settings = settings.model_copy(update={"openai_base_url": base_url})
    chosen = configured(settings, found)
    if chosen:
        return await serve(settings, chosen)
    fallback = next((p for p in found if p.fallback), None)
    if fallback is None:
        names = ", ".join(p.name for p in found) or "none installed"
        sys.stderr.write(f"ponder: no platform has its credentials set ({names}); see "
                         ".env.example\n")
        return BAD_SETTINGS
    others = " or ".join(p.name for p in found if p is not fallback) or "platform"
    log.info("no %s credentials: starting the %s", others, fallback.name)
    return await serve_alone(settings, fallback)
