"""`ponder stats [--days 7] [--json]`: how Ponder has been doing, per day (local time) for the
last days: answers, failures, stops, feedback 👍 / 👎, and the median steps and thinking time
of the answers. Counted from the store (`Store.tallies`), each chain on the day it started,
with the votes its answer has now; works beside a running Ponder or without one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from bot.config import Settings
from bot.store import ChainTally, stored
from bot.wording import say

FAILED = frozenset({"failed", "interrupted"})


@dataclass(frozen=True, slots=True)
class DayStats:
    day: str  # ISO date, or "total"
    answers: int = 0
    failures: int = 0
    stopped: int = 0
    up: int = 0
    down: int = 0
    median_steps: float | None = None
    median_seconds: float | None = None  # thinking time of an answer


def summarise(tallies: Sequence[ChainTally], days: list[date]) -> list[DayStats]:
    """One row per day of `days` (a day without chains included), then the total."""
    by_day: dict[str, list[ChainTally]] = {d.isoformat(): [] for d in days}
    for tally in tallies:
        key = datetime.fromtimestamp(tally.started_at).date().isoformat()
        if key in by_day:
            by_day[key].append(tally)
    rows = [_row(day, chains) for day, chains in by_day.items()]
    rows.append(_row("total", [t for chains in by_day.values() for t in chains]))
    return rows


def _row(day: str, chains: list[ChainTally]) -> DayStats:
    answered = [t for t in chains if t.status == "answered"]
    seconds = [t.total_seconds for t in answered if t.total_seconds is not None]
    return DayStats(
        day=day, answers=len(answered),
        failures=sum(1 for t in chains if t.status in FAILED),
        stopped=sum(1 for t in chains if t.status == "cancelled"),
        up=sum(t.up for t in chains), down=sum(t.down for t in chains),
        median_steps=statistics.median(t.steps for t in answered) if answered else None,
        median_seconds=round(statistics.median(seconds), 1) if seconds else None)


def last_days(n: int, now: float | None = None) -> list[date]:
    today = datetime.fromtimestamp(time.time() if now is None else now).date()
    return [today - timedelta(days=back) for back in range(n - 1, -1, -1)]


async def gather(settings: Settings, n: int, now: float | None = None) -> list[DayStats]:
    days = last_days(n, now)
    async with stored(settings) as store:
        if store is None:
            return summarise([], days)
        since = datetime.combine(days[0], datetime.min.time()).timestamp()
        return summarise(await store.tallies(since), days)


def render(rows: Sequence[DayStats], n: int) -> str:
    def num(value: float | None, unit: str = "") -> str:
        return "–" if value is None else f"{value:g}{unit}"
    head = (say("stats_day"), say("stats_answers"), say("stats_failures"), say("stats_stopped"),
            "👍", "👎", say("stats_steps"), say("stats_thinking"))
    lines = [(r.day if r.day != "total" else say("stats_total"), str(r.answers),
              str(r.failures), str(r.stopped), str(r.up), str(r.down), num(r.median_steps),
              num(r.median_seconds, " s")) for r in rows]
    widths = [max(len(row[i]) for row in (head, *lines)) for i in range(len(head))]
    out = [say("stats_title", n=n)]
    for row in (head, *lines):
        out.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(out)


def as_json(rows: Sequence[DayStats]) -> dict[str, Any]:
    return {"days": [asdict(r) for r in rows[:-1]], "total": asdict(rows[-1])}


def register_commands(sub: Any) -> None:
    stats = sub.add_parser("stats", help="answers, failures, feedback, median steps and "
                                         "thinking time, per day")
    stats.add_argument("--days", type=int, default=7, metavar="N",
                       help="how many days back, today included (default 7)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=_stats)


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    if args.days < 1:
        sys.stderr.write("ponder: --days must be 1 or more\n")
        return 2
    from bot.cli import offline

    rows = offline(gather(settings, args.days))
    if args.json:
        print(json.dumps(as_json(rows), ensure_ascii=False))
    else:
        print(render(rows, args.days))
    return 0
