"""`ponder` — the command line. Exit codes: 0 done, 1 the work failed, 2 usage or settings.

The front doors' own commands (`ask`, `discord`, `slack`, …) come from the installed platform
plugins (`bot.platforms`); the core adds `run`, `forget`, `model` and `doctor`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from bot.config import Settings, SettingsError, load_settings
from bot.logs import setup_logging
from bot.platforms import Platform, discover

log = logging.getLogger("ponder")

# Core modules that add their own sub-commands (each has `register_commands(subparsers)`).
T = TypeVar("T")

_PLUGGED = ("bot.model", "bot.doctor", "bot.evaluate", "bot.stats")


def build_parser(platforms: Sequence[Platform] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder", description="Step-by-step reasoning in Discord, Slack and the terminal."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for platform in discover() if platforms is None else platforms:
        platform.add_commands(sub)

    run = sub.add_parser("run", help="every platform with credentials (the console if none), "
                                     "with a model server started when none answers")
    run.set_defaults(func=_run)

    forget = sub.add_parser("forget", help="delete everything stored of one user: chains, "
                                           "steps, answers, follow-ups")
    forget.add_argument("--user", required=True, metavar="ID",
                        help="the user id as the platform gives it (Discord or Slack user id)")
    forget.add_argument("--platform", metavar="P",
                        help="only on this platform (discord, slack, …); default: every one")
    forget.add_argument("--force", action="store_true",
                        help="also delete chains still marked running")
    forget.set_defaults(func=_forget)

    for name in _PLUGGED:
        importlib.import_module(name).register_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = load_settings()
    except SettingsError as exc:
        if args.command == "doctor":
            return int(args.func(args, None))  # doctor reports the bad setting with its fix
        sys.stderr.write(f"ponder: {exc}\n")
        return 2
    try:
        setup_logging(settings.log_level)
    except SettingsError as exc:
        sys.stderr.write(f"ponder: {exc}\n")
        return 2
    try:
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        return 130


def offline(work: Coroutine[Any, Any, T]) -> T:
    """An operator command's work on the store, run to its end: a bad setting or a store that
    refuses is one line and exit 2 or 1, never a traceback."""
    from bot.store import StoreFailed

    try:
        return asyncio.run(work)
    except SettingsError as exc:
        sys.stderr.write(f"ponder: {exc}\n")
        raise SystemExit(2) from None
    except StoreFailed as exc:
        sys.stderr.write(f"ponder: {exc.message}\n")
        raise SystemExit(1) from None


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runner import serve_all

    return asyncio.run(serve_all(settings))


def _forget(args: argparse.Namespace, settings: Settings) -> int:
    """`ponder forget --user ID`: works on the database, beside a live Ponder or without one.

    A chain of the user still marked running may be one a live process is answering: nothing
    is removed unless `--force`. Forced, that chain's next write finds no row to write to: it
    ends in its thread with the could-not-save message, and nothing more of it is kept."""
    from bot.store import Removed, stored
    from bot.wording import say

    async def forget() -> Removed:
        async with stored(settings) as store:
            if store is None:
                return Removed()
            return await store.forget(args.user, args.platform, force=args.force)

    removed = offline(forget())
    if removed.running and not args.force:
        sys.stderr.write(f"ponder: {say('forget_running', user=args.user, n=removed.running)}\n")
        return 1
    where = say("forget_on", platform=args.platform) if args.platform else ""
    print(say("forgot", user=args.user, where=where, chains=removed.chains,
              steps=removed.steps, rewritten=removed.rewritten))
    return 0
