"""`ponder` — the command line. Exit codes: 0 done, 1 the work failed, 2 usage or settings.

The front doors' own commands (`ask`, `discord`, `slack`, …) come from the installed platform
plugins (`bot.platforms`); the core adds `run`, `model` and `doctor`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence

from bot.config import Settings, SettingsError, load_settings
from bot.logs import setup_logging
from bot.platforms import Platform, discover

log = logging.getLogger("ponder")

# Core modules that add their own sub-commands (each has `register_commands(subparsers)`).
_PLUGGED = ("bot.model", "bot.doctor")


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


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runner import serve_all

    return asyncio.run(serve_all(settings))
