"""`ponder eval`: how often the served model is right answering directly, in a chain, and by
a vote of chains — on a built-in set of exactly checkable questions, or on a JSONL file.

`sets.py` (the questions), `judge.py` (is an answer right), `stats.py` (Wilson interval),
`runner.py` (items run concurrently in each mode), `report.py` (tables, JSON).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bot.config import MAX_VOTES, Settings

_MODES = ("plain", "chain", "vote")
_DEFAULT_VOTES = 5


def register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `eval` to the `ponder` command line."""
    ev = subparsers.add_parser(
        "eval", help="measure accuracy: direct answers, chains and votes, with 95%% intervals")
    ev.add_argument("--set", default="builtin", metavar="builtin|PATH.jsonl",
                    help="the built-in generated set (default), or a JSONL file of "
                         '{"question", "answer", "kind"} lines')
    ev.add_argument("--n", type=_positive, default=None,
                    help="how many questions (built-in default 30; a file: all of it)")
    ev.add_argument("--modes", type=_modes, default=_MODES, metavar="plain,chain,vote",
                    help="which to run (default: all three)")
    ev.add_argument("--votes", type=_votes, default=_DEFAULT_VOTES, metavar="K",
                    help=f"chains per question in vote mode (2–{MAX_VOTES}, default "
                         f"{_DEFAULT_VOTES})")
    ev.add_argument("--concurrency", type=_positive, default=8, metavar="C",
                    help="questions in flight at once (default 8; a vote runs K chains each)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the built-in set (default 0)")
    ev.add_argument("--json", action="store_true", help="print one JSON object, no tables")
    ev.set_defaults(func=_cmd_eval)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {value!r}")
    return number


def _votes(value: str) -> int:
    try:
        k = int(value)
    except ValueError:
        k = 0
    if not 2 <= k <= MAX_VOTES:
        raise argparse.ArgumentTypeError(f"a whole number from 2 to {MAX_VOTES}, got {value!r}")
    return k


def _modes(value: str) -> tuple[str, ...]:
    modes: list[str] = []
    for part in value.split(","):
        mode = part.strip()
        if mode not in _MODES:
            raise argparse.ArgumentTypeError(
                f"modes are some of {','.join(_MODES)}, got {mode or value!r}")
        if mode not in modes:
            modes.append(mode)
    return tuple(modes)


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from bot.evaluate.command import run_eval
    from bot.evaluate.sets import SetError

    try:
        return asyncio.run(run_eval(settings, set_name=args.set, n=args.n, modes=args.modes,
                                    votes=args.votes, concurrency=args.concurrency,
                                    seed=args.seed, as_json=args.json))
    except SetError as exc:
        sys.stderr.write(f"ponder: {exc.message}\n")
        return 2
