"""`ponder doctor`: one line per check, ✓ or ✗, and for each ✗ the fix.

Every network call has its own timeout, so a dead server or a blocked network makes a ✗ line,
never a hang. Exit code 0 when every required check passed, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bot.config import Settings, SettingsError, load_settings
from bot.logs import held_logs
from bot.platforms import Check, Limits, Platform, discover, format_check

# Check, Limits and format_check live with the platform seam; tests and callers know them here.
__all__ = ["Check", "Limits", "format_check", "register_commands", "run_checks"]

log = logging.getLogger(__name__)


async def _platform_checks(platform: Platform, settings: Settings,
                           limits: Limits) -> Sequence[Check]:
    try:
        return await platform.checks(settings, limits)
    except Exception as exc:
        # A plugin's own bug: the other lines still come, this one says where to look.
        log.exception("the %s checks failed", platform.name)
        return [Check(platform.name, "fail", f"its check failed: {exc!r}",
                      "see the log above; report it to the plugin's authors")]


async def run_checks(
    settings: Settings | None,
    *,
    limits: Limits | None = None,
    emit: Callable[[Check], None] | None = None,
    gpu_check: Callable[[Limits], Awaitable[Check]] | None = None,
    platforms: Sequence[Platform] | None = None,
) -> list[Check]:
    """Run every check; `emit` sees each one as soon as it is decided, in a fixed order:
    settings, the model server, each installed platform's (`bot.platforms`), the GPU."""
    # The model client (openai) only when checking: `ponder --help` stays quick.
    from bot.model.probe import ModelProbe
    from bot.model.probe import gpu_check as default_gpu_check

    limits = limits or Limits()
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        if emit is not None:
            emit(check)

    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            add(Check("settings", "fail", str(exc), "fix that value in the environment or .env"))
            return checks
    add(Check("settings", "ok", f"valid (model {settings.model}, mode {settings.mode.value})"))

    found = discover() if platforms is None else platforms
    # Platform and GPU checks do not depend on the model server: run them meanwhile.
    side = asyncio.gather(
        asyncio.gather(*(_platform_checks(p, settings, limits) for p in found)),
        (gpu_check or default_gpu_check)(limits),
    )
    probe = ModelProbe(settings, limits)
    try:
        reach, ids = await probe.models()
        add(reach)
        if ids is None:
            for name in ("model name", "structured outputs", "reasoning field"):
                add(Check(name, "skip", "not checked: no model server", required=False))
        else:
            add(probe.served(ids))
            if checks[-1].status == "ok":
                add(await probe.structured())
                add(await probe.reasoning())
            else:
                for name in ("structured outputs", "reasoning field"):
                    add(Check(name, "skip", "not checked: model not served", required=False))
    finally:
        await probe.close()
        per_platform, gpu = await side
        for platform_checks in per_platform:
            for check in platform_checks:
                add(check)
        add(gpu)
    return checks


def _cmd_doctor(args: argparse.Namespace, settings: Settings | None) -> int:
    limits = Limits(http=args.timeout, completion=max(args.timeout, args.completion_timeout))

    def emit(check: Check) -> None:
        print(format_check(check), flush=True)

    # Log lines (a retry, PONDER_LOG_LEVEL=DEBUG's requests) come after the checklist, whole.
    with held_logs():
        checks = asyncio.run(run_checks(settings, limits=limits, emit=emit))
    failed = [c for c in checks if not c.passed]
    if failed:
        print(f"{len(failed)} required check(s) failed", file=sys.stderr)
        return 1
    return 0


def register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `doctor` to the `ponder` command line."""
    doctor = subparsers.add_parser(
        "doctor", help="check settings, the model server, tokens and the GPU",
    )
    doctor.add_argument("--timeout", type=float, default=5.0,
                        help="seconds for each plain network call (default 5)")
    doctor.add_argument("--completion-timeout", type=float, default=60.0,
                        help="seconds for each test request to the model (default 60)")
    doctor.set_defaults(func=_cmd_doctor)
