"""`ponder` — the command line. Exit codes: 0 done, 1 the work failed, 2 usage or settings."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from bot.config import Mode, Settings, SettingsError, load_settings
from bot.logs import setup_logging

log = logging.getLogger("ponder")

Command = Callable[[argparse.Namespace, Settings], int]

# Modules that add their own sub-commands (each has `register_commands(subparsers)`).
_PLUGGED = ("bot.model", "bot.doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder", description="Step-by-step reasoning in Discord, Slack and the terminal."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ask = sub.add_parser("ask", help="run one reasoning chain in the terminal")
    ask.add_argument("question", nargs="*", help="the question (quote it)")
    ask.add_argument("--json", action="store_true", help="print one JSON event per line")
    ask.add_argument("--mode", choices=[m.value for m in Mode], help="override PONDER_MODE")
    ask.set_defaults(func=_ask)

    discord = sub.add_parser("discord", help="serve the Discord bot (/reason)")
    discord.set_defaults(func=_platforms, platforms=("discord",), http=False, port=3000)

    slack = sub.add_parser("slack", help="serve the Slack bot (mentions and DMs)")
    slack.add_argument("--http", action="store_true",
                       help="serve the Events API over HTTP instead of Socket Mode")
    slack.add_argument("--port", type=int, default=3000, help="HTTP port (with --http)")
    slack.set_defaults(func=_platforms, platforms=("slack",))

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
    # `ask` draws on the terminal; only warnings (retries) belong beside it.
    setup_logging(settings.log_level.upper() if args.command != "ask" else logging.WARNING)
    try:
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        return 130


def _ask(args: argparse.Namespace, settings: Settings) -> int:
    from adapters import console
    from bot.engine import Engine
    from bot.events import Question
    from bot.llm import LLMClient

    text = " ".join(args.question).strip()
    if text == "-":
        text = sys.stdin.read().strip()
    if not text:
        sys.stderr.write('usage: ponder ask "QUESTION" [--json] [--mode chain|native]\n'
                         "ponder: the question is empty\n")
        return 2
    if len(text) > settings.max_question_chars:
        sys.stderr.write(f"ponder: the question is {len(text):,} characters; the limit is "
                         f"{settings.max_question_chars:,} (PONDER_MAX_QUESTION_CHARS)\n")
        return 2

    async def go() -> int:
        llm = LLMClient(settings)
        try:
            engine = Engine(llm, settings)
            question = Question(text, mode=args.mode)
            if args.json:
                return await console.ask_json(engine, question)
            return await console.ask_live(engine, question)
        finally:
            await llm.close()

    return asyncio.run(go())


def _platforms(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runner import serve

    return asyncio.run(serve(settings, args.platforms, http=args.http, port=args.port))


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.runner import serve_all

    return asyncio.run(serve_all(settings))
