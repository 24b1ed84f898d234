"""The terminal as a Ponder platform (entry point `ponder.platforms`: console): `ponder ask`,
and the prompt `ponder run` opens when no other platform has credentials."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bot.config import MAX_VOTES, Mode, Settings
from bot.platforms import Check, Limits, Services, SubParsers

USAGE = 'usage: ponder ask "QUESTION" [--json] [--mode chain|native] [--votes K]\n'


class ConsolePlatform:
    name = "console"
    fallback = True

    def add_commands(self, subparsers: SubParsers) -> None:
        ask = subparsers.add_parser("ask", help="run one reasoning chain in the terminal")
        ask.add_argument("question", nargs="*", help="the question (quote it)")
        ask.add_argument("--json", action="store_true", help="print one JSON event per line")
        ask.add_argument("--mode", choices=[m.value for m in Mode], help="override PONDER_MODE")
        ask.add_argument("--votes", type=_votes, metavar="K",
                         help=f"run K chains (1–{MAX_VOTES}) and give the majority answer "
                              "(override PONDER_VOTES)")
        ask.set_defaults(func=_ask)

    def configured(self, settings: Settings) -> bool:
        return False  # no credentials to set: `ponder run` falls back to it instead

    async def serve(self, services: Services) -> None:
        from adapters.console.live import repl
        from bot.engine import Engine
        from bot.llm import LLMClient

        llm = LLMClient(services.settings)
        try:
            await repl(Engine(llm, services.settings))
        finally:
            await llm.close()

    async def checks(self, settings: Settings, limits: Limits) -> Sequence[Check]:
        return []  # the terminal needs nothing beyond the model server the core checks


def _ask(args: argparse.Namespace, settings: Settings) -> int:
    from adapters.console import live as console
    from bot.engine import Engine
    from bot.events import Question
    from bot.llm import LLMClient
    from bot.text import clean_text

    # Undecodable bytes in an argument or on stdin: the question is still asked (U+FFFD).
    text = clean_text(" ".join(args.question)).strip()
    if text == "-":
        text = sys.stdin.buffer.read().decode("utf-8", "replace").strip()
    if not text:
        sys.stderr.write(USAGE + "ponder: the question is empty\n")
        return 2
    if len(text) > settings.max_question_chars:
        sys.stderr.write(f"ponder: the question is {len(text):,} characters; the limit is "
                         f"{settings.max_question_chars:,} (PONDER_MAX_QUESTION_CHARS)\n")
        return 2

    async def go() -> int:
        llm = LLMClient(settings)
        try:
            engine = Engine(llm, settings)
            question = Question(text, mode=args.mode, votes=args.votes)
            if args.json:
                return await console.ask_json(engine, question)
            return await console.ask_live(engine, question)
        finally:
            await llm.close()

    return asyncio.run(go())


def _votes(value: str) -> int:
    try:
        k = int(value)
    except ValueError:
        k = 0
    if not 1 <= k <= MAX_VOTES:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_VOTES}, got {value!r}")
    return k


platform = ConsolePlatform()
