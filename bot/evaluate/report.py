"""An eval's figures: per mode and per kind, as one JSON object or as tables (rich)."""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.evaluate.runner import EvalMode, Result
from bot.evaluate.stats import wilson

_FAILURES_SHOWN = 10


def figures(results: Sequence[Result]) -> dict[str, Any]:
    """Accuracy (with its 95% Wilson interval), counts and means over `results`."""
    total = len(results)
    correct = sum(r.correct for r in results)
    low, high = wilson(correct, total)
    tokens = [r.tokens for r in results if r.tokens is not None]
    return {
        "accuracy": correct / total if total else 0.0,
        "low": low,
        "high": high,
        "correct": correct,
        "total": total,
        "failed": sum(r.error is not None for r in results),
        "mean_steps": statistics.fmean(r.steps for r in results) if total else 0.0,
        "mean_seconds": statistics.fmean(r.seconds for r in results) if total else 0.0,
        # Only what the server reported: a server that sends no `usage` gets null, not 0.
        "mean_tokens": statistics.fmean(tokens) if tokens else None,
    }


def summarise(results: Sequence[Result], modes: Sequence[EvalMode],
              about: dict[str, Any] | None = None) -> dict[str, Any]:
    """The eval as one JSON-ready object: `{"modes": {mode: {...figures, "by_kind": {kind:
    figures}}}, "failures": [...]}` plus `about` (the set, seed, model…)."""
    out: dict[str, Any] = dict(about or {})
    out["modes"] = {}
    for mode in modes:
        mine = [r for r in results if r.mode == mode]
        kinds = sorted({r.item.kind for r in mine}, key=_kind_order(mine))
        out["modes"][mode] = {**figures(mine), "by_kind": {
            kind: figures([r for r in mine if r.item.kind == kind]) for kind in kinds}}
    out["failures"] = [
        {"mode": r.mode, "item": r.index + 1, "kind": r.item.kind, "question": r.item.question,
         "error": r.error} for r in results if r.error is not None]
    return out


def _kind_order(results: Sequence[Result]) -> Any:
    first: dict[str, int] = {}
    for r in results:
        first.setdefault(r.item.kind, r.index)
    return lambda kind: first[kind]


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _mean(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_tables(summary: dict[str, Any], console: Console) -> None:
    """The summary as people read it: one row per mode, then accuracy per kind and mode,
    then the failed items."""
    modes: dict[str, dict[str, Any]] = summary["modes"]
    table = Table(title=_title(summary), title_justify="left")
    for name in ("mode", "accuracy", "95% CI", "correct", "failed", "mean steps", "mean s",
                 "mean tokens"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for mode, f in modes.items():
        table.add_row(mode, _pct(f["accuracy"]), f"{_pct(f['low'])}–{_pct(f['high'])}",
                      f"{f['correct']}/{f['total']}", str(f["failed"]),
                      _mean(f["mean_steps"]), _mean(f["mean_seconds"], 2),
                      _mean(f["mean_tokens"], 0))
    console.print(table)
    kinds: list[str] = []
    for f in modes.values():
        kinds.extend(k for k in f["by_kind"] if k not in kinds)
    if kinds:
        by_kind = Table(title="by kind (correct/total, accuracy, 95% CI)", title_justify="left")
        by_kind.add_column("kind")
        for mode in modes:
            by_kind.add_column(mode, justify="right")
        for kind in kinds:
            cells = []
            for f in modes.values():
                k = f["by_kind"].get(kind)
                cells.append("—" if k is None else (
                    f"{k['correct']}/{k['total']} {_pct(k['accuracy'])} "
                    f"({_pct(k['low'])}–{_pct(k['high'])})"))
            by_kind.add_row(kind, *cells)
        console.print(by_kind)
    failures: list[dict[str, Any]] = summary.get("failures", [])
    if failures:
        console.print(f"[bold red]{len(failures)} failed (counted as wrong):[/bold red]")
        for failure in failures[:_FAILURES_SHOWN]:
            question = failure["question"]
            short = question if len(question) <= 60 else question[:59] + "…"
            console.print(f"  {failure['mode']} #{failure['item']} ({failure['kind']}) "
                          f"{short!r}: {failure['error']}", markup=False)
        if len(failures) > _FAILURES_SHOWN:
            console.print(f"  … and {len(failures) - _FAILURES_SHOWN} more (see --json)")


def _title(summary: dict[str, Any]) -> str:
    parts = [f"ponder eval · {summary.get('set', '')}"]
    if summary.get("model"):
        parts.append(str(summary["model"]))
    if summary.get("votes") and "vote" in summary["modes"]:
        parts.append(f"votes {summary['votes']}")
    return " · ".join(parts)


@contextmanager
def progress(total: int, console: Console) -> Iterator[Any]:
    """A progress bar on a terminal (nothing elsewhere): call the yielded function once per
    result, failed or not."""
    bar = Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[wrong]} wrong · {task.fields[failed]} failed"),
                   TimeElapsedColumn(), console=console, transient=True,
                   disable=not console.is_terminal)
    task = bar.add_task("eval", total=total, wrong=0, failed=0)
    counts = {"wrong": 0, "failed": 0}

    def advance(result: Result) -> None:
        counts["wrong"] += not result.correct
        counts["failed"] += result.error is not None
        bar.update(task, advance=1, wrong=counts["wrong"], failed=counts["failed"])

    with bar:
        yield advance
