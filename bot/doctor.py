"""`ponder doctor`: one line per check, ✓ or ✗, and for each ✗ the fix.

Every network call has its own timeout, so a dead server or a blocked network makes a ✗ line,
never a hang. Exit code 0 when every required check passed, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from bot.config import Mode, Settings, SettingsError, load_settings
from bot.llm import LLMClient, LLMError, StepResult, TextDelta
from bot.model import detect_gpu

Status = Literal["ok", "fail", "skip"]
MARKS: dict[Status, str] = {"ok": "✓", "fail": "✗", "skip": "–"}

_DISCORD_TOKEN = re.compile(r"^[A-Za-z0-9_-]{17,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}$")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def passed(self) -> bool:
        return self.status != "fail" or not self.required


def format_check(check: Check) -> str:
    line = f"{MARKS[check.status]} {check.name}: {check.detail}"
    if check.status == "fail" and check.fix:
        line += f" → fix: {check.fix}"
    if check.status == "fail" and not check.required:
        line += " (optional)"
    return line


@dataclass(frozen=True)
class Limits:
    """Seconds allowed per kind of call."""

    http: float = 5.0  # plain GETs and auth calls
    completion: float = 60.0  # a model request (a CPU server's first one is slow)


# Enough for one short step; a model that needs more to name 5 apples is rambling whitespace.
STEP_PROBE_TOKENS = 256


class _ModelProbe:
    """The model-server checks, asked through Ponder's own client as a chain would ask."""

    def __init__(self, settings: Settings, limits: Limits) -> None:
        self.base = settings.openai_base_url.rstrip("/")
        self.settings = settings
        # One try each; the client's probes wait twice connect_timeout, i.e. limits.http.
        self.llm = LLMClient(settings.model_copy(update={
            "connect_timeout": limits.http / 2, "request_timeout": limits.completion,
            "max_attempts": 1, "temperature": 0.0,
        }))

    async def close(self) -> None:
        await self.llm.close()

    async def models(self) -> tuple[Check, list[str] | None]:
        name = "model server"
        fix = ("start one with `ponder model serve` (CPU: `ponder model serve --demo`), "
               "or set OPENAI_BASE_URL to a running server")
        try:
            ids = await self.llm.served_models()
        except LLMError as exc:
            if exc.status in (401, 403):
                return Check(name, "fail", f"{self.base} refused the API key (HTTP "
                             f"{exc.status})", "set OPENAI_API_KEY to the server's key"), None
            if exc.status is None:
                return Check(name, "fail", f"no answer at {self.base} ({exc.detail})", fix), None
            what = f"HTTP {exc.status}" if exc.status >= 300 else exc.detail
            return Check(name, "fail", f"{self.base}/models answered {what}",
                         "check that OPENAI_BASE_URL ends in /v1"), None
        return Check(name, "ok", f"reachable at {self.base}"), ids

    def served(self, ids: list[str]) -> Check:
        want = self.settings.model
        if want in ids:
            return Check("model name", "ok", f"{want} is served")
        shown = ", ".join(ids) or "none"
        return Check("model name", "fail", f"{want} is not served (served: {shown})",
                     "set PONDER_MODEL to one of those, or serve it under this name "
                     "(`ponder model serve` uses PONDER_MODEL as --served-model-name)")

    async def structured(self) -> Check:
        name = "structured outputs"
        # Chain mode asks for every step with a JSON schema; native mode never does.
        required = self.settings.mode == Mode.CHAIN
        fix = ("serve with vLLM ≥ 0.12 and `--structured-outputs-config "
               "'{\"backend\":\"xgrammar\",\"disable_any_whitespace\":true}'` "
               "(`ponder model serve` does)")
        messages = [{"role": "user", "content":
                     "I have 2 apples and buy 3 more. How many apples do I have? Reply with "
                     "one short reasoning step in JSON: `title`, `content`, `next_action`."}]
        step: StepResult | None = None
        failure: LLMError | None = None
        try:
            # A chain's own step request: when this passes, chains get parseable steps.
            async for item in self.llm.stream_step(messages, chain_id="ponder-doctor",
                                                   max_tokens=STEP_PROBE_TOKENS):
                if isinstance(item, StepResult):
                    step = item
        except LLMError as exc:
            failure = exc
        fmt = self.llm.output_format
        if fmt != "json_schema":
            return Check(name, "fail", f"the server refused a json_schema request (chains fall "
                         f"back to {fmt}: steps may not parse)", fix, required=required)
        if failure is not None or step is None:
            why = failure.detail if failure is not None else "no step came back"
            return Check(name, "fail", f"a json_schema request failed ({why})", fix,
                         required=required)
        if step.salvaged and not step.content:
            return Check(name, "fail", "response_format was ignored: no JSON step in the reply",
                         fix, required=required)
        shown = json.dumps({"title": step.title, "content": step.content,
                            "next_action": step.next_action},
                           ensure_ascii=False, separators=(",", ":"))
        if step.salvaged:
            return Check(name, "fail", "the reply breaks the schema or ran to max_tokens "
                         f"(whitespace?): {shown[:60]}", fix, required=required)
        return Check(name, "ok", f"a json_schema request gave schema-valid JSON {shown[:60]}")

    async def reasoning(self) -> Check:
        name = "reasoning field"
        native = self.settings.mode == Mode.NATIVE
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        has = False
        try:
            async for item in self.llm.stream_text(messages, chain_id="ponder-doctor",
                                                   max_tokens=32):
                if isinstance(item, TextDelta) and item.reasoning:
                    has = True
        except LLMError as exc:
            return Check(name, "fail", f"a plain request failed ({exc.detail})",
                         "look at the model server's log", required=native)
        if has:
            return Check(name, "ok", "present: a reasoning model (PONDER_MODE=native can use it)")
        if native:
            return Check(name, "fail", "absent, but PONDER_MODE=native needs it",
                         "serve a reasoning model with --reasoning-parser (e.g. qwen3), "
                         "or set PONDER_MODE=chain")
        return Check(name, "ok", "absent (fine for PONDER_MODE=chain)")


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    text = str(exc) or type(exc).__name__
    return text[:160]


async def _discord(settings: Settings, http: aiohttp.ClientSession, limits: Limits) -> Check:
    name = "Discord"
    if settings.discord_token is None:
        return Check(name, "skip", "DISCORD_TOKEN not set (Discord stays off)", required=False)
    token = settings.discord_token.get_secret_value().strip()
    if token.lower().startswith("bot "):
        return Check(name, "fail", "DISCORD_TOKEN starts with 'Bot '",
                     "set the token alone; Ponder adds the 'Bot ' prefix")
    bot_id = _discord_bot_id(token)
    if bot_id is None:
        return Check(name, "fail", "DISCORD_TOKEN does not look like a bot token",
                     "copy it from the Developer Portal: your app → Bot → Reset Token")
    url = f"{settings.discord_api_url.rstrip('/')}/users/@me"
    try:
        async with http.get(url, headers={"Authorization": f"Bot {token}"},
                            timeout=aiohttp.ClientTimeout(total=limits.http)) as resp:
            if resp.status == 401:
                return Check(name, "fail", f"the token for bot {bot_id} was rejected (401)",
                             "reset the token in the Developer Portal and update DISCORD_TOKEN")
            if resp.status != 200:
                return Check(name, "fail", f"{url} answered HTTP {resp.status}",
                             "try again later; check DISCORD_API_URL", required=False)
            me = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check(name, "ok", f"token format ok (bot {bot_id}); Discord unreachable, "
                     f"login not checked ({_why(exc)})", required=False)
    return Check(name, "ok", f"logged in as {me.get('username', '?')} ({me.get('id', bot_id)})")


def _discord_bot_id(token: str) -> str | None:
    """The bot's user id, which a real token carries base64-encoded in its first part."""
    if not _DISCORD_TOKEN.match(token):
        return None
    head = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded if decoded.isdigit() else None


async def _slack(settings: Settings, http: aiohttp.ClientSession, limits: Limits) -> Check:
    name = "Slack"
    bot, app = settings.slack_bot_token, settings.slack_app_token
    if bot is None and app is None:
        return Check(name, "skip", "SLACK_BOT_TOKEN not set (Slack stays off)", required=False)
    if bot is None:
        return Check(name, "fail", "SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is not",
                     "set SLACK_BOT_TOKEN (xoxb-…, from OAuth & Permissions)")
    token = bot.get_secret_value().strip()
    if not token.startswith("xoxb-"):
        return Check(name, "fail", "SLACK_BOT_TOKEN does not start with xoxb-",
                     "use the Bot User OAuth Token (OAuth & Permissions), not a user token")
    if app is not None and not app.get_secret_value().strip().startswith("xapp-"):
        return Check(name, "fail", "SLACK_APP_TOKEN does not start with xapp-",
                     "create an app-level token with connections:write (Basic Information)")
    if app is None and settings.slack_signing_secret is None:
        return Check(name, "fail", "neither SLACK_APP_TOKEN (Socket Mode) nor "
                     "SLACK_SIGNING_SECRET (HTTP mode) is set",
                     "set SLACK_APP_TOKEN (xapp-…) for Socket Mode")
    mode = "Socket Mode" if app is not None else "HTTP mode"
    url = f"{settings.slack_api_url.rstrip('/')}/auth.test"
    try:
        async with http.post(url, headers={"Authorization": f"Bearer {token}"},
                             timeout=aiohttp.ClientTimeout(total=limits.http)) as resp:
            if resp.status != 200:
                return Check(name, "fail", f"auth.test answered HTTP {resp.status}",
                             "try again later; check SLACK_API_URL", required=False)
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check(name, "ok", f"token format ok ({mode}); Slack unreachable, auth not "
                     f"checked ({_why(exc)})", required=False)
    if not body.get("ok"):
        error = body.get("error", "unknown error")
        return Check(name, "fail", f"auth.test refused the bot token ({error})",
                     "reinstall the app to the workspace and copy the new xoxb- token")
    return Check(name, "ok", f"authenticated as {body.get('user', '?')} in "
                 f"{body.get('team', '?')} ({mode})")


async def _gpu(limits: Limits) -> Check:
    gpu = await detect_gpu(limits.http)
    if gpu:
        return Check("GPU", "ok", gpu, required=False)
    return Check("GPU", "skip", "none found: a server started here runs the CPU demo model",
                 required=False)


async def run_checks(
    settings: Settings | None,
    *,
    limits: Limits | None = None,
    emit: Callable[[Check], None] | None = None,
    gpu_check: Callable[[Limits], Awaitable[Check]] | None = None,
) -> list[Check]:
    """Run every check; `emit` sees each one as soon as it is decided, in a fixed order."""
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

    async with aiohttp.ClientSession() as http:
        # Platform and GPU checks do not depend on the model server: run them meanwhile.
        side = asyncio.gather(
            _discord(settings, http, limits),
            _slack(settings, http, limits),
            (gpu_check or _gpu)(limits),
        )
        probe = _ModelProbe(settings, limits)
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
            for check in await side:
                add(check)
    return checks


def _cmd_doctor(args: argparse.Namespace, settings: Settings | None) -> int:
    limits = Limits(http=args.timeout, completion=max(args.timeout, args.completion_timeout))

    def emit(check: Check) -> None:
        print(format_check(check), flush=True)

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
