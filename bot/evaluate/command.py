"""`ponder eval` once its arguments are read: load the set, run it, print the figures."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from rich.console import Console

from bot.config import Settings
from bot.evaluate.report import print_tables, progress, summarise
from bot.evaluate.runner import EvalMode, Runner
from bot.evaluate.sets import DEFAULT_N, builtin, load_jsonl
from bot.llm import LLMClient, LLMError


async def run_eval(settings: Settings, *, set_name: str, n: int | None,
                   modes: Sequence[str], votes: int, concurrency: int, seed: int,
                   as_json: bool) -> int:
    """Exit code: 0 with figures, 1 when every request failed (no figures worth a look)."""
    if set_name == "builtin":
        items = builtin(n or DEFAULT_N, seed)
    else:
        items = load_jsonl(Path(set_name), n)
    chosen = cast(Sequence[EvalMode], modes)
    llm = LLMClient(settings)
    try:
        runner = Runner(llm, settings, votes=votes, concurrency=concurrency)
        # Progress on stderr: stdout holds only the figures (`--json` pipes cleanly).
        with progress(len(items) * len(chosen), Console(stderr=True)) as advance:
            results = await runner.run(items, chosen, advance)
        model = await _model_name(llm, settings.model)
    finally:
        await llm.close()
    about = {"set": set_name, "seed": seed if set_name == "builtin" else None,
             "n": len(items), "model": model, "votes": votes if "vote" in chosen
             else None}
    summary = summarise(results, chosen, about)
    if as_json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
    else:
        print_tables(summary, Console())
    if results and all(r.error is not None for r in results):
        sys.stderr.write(f"ponder: every request failed; the first said: {results[0].error}\n")
        return 1
    return 0


async def _model_name(llm: LLMClient, configured: str) -> str:
    """The figures belong to the model the server runs, which a name alone may hide (the CPU
    demo is served under the default's name)."""
    try:
        root = await llm.model_root()
    except LLMError:
        return configured
    if root is None or root == configured:
        return configured
    return f"{configured} (serving {Path(root).name if Path(root).is_absolute() else root})"
