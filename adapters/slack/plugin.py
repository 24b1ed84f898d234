"""Slack as a Ponder platform (entry point `ponder.platforms`: slack).

Cheap to import on purpose: every `ponder` command loads it; slack-bolt is imported only when
Slack is served.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from adapters.slack import doctor
from bot.config import Settings
from bot.platforms import Check, Limits, Services, SubParsers


class SlackPlatform:
    name = "slack"
    fallback = False

    def __init__(self, *, http: bool = False, port: int = 3000) -> None:
        # Socket Mode unless asked for HTTP; without an app token only HTTP mode can work.
        self.http = http
        self.port = port

    def add_commands(self, subparsers: SubParsers) -> None:
        command = subparsers.add_parser("slack", help="serve the Slack bot (mentions and DMs)")
        command.add_argument("--http", action="store_true",
                             help="serve the Events API over HTTP instead of Socket Mode")
        command.add_argument("--port", type=int, default=3000, help="HTTP port (with --http)")
        command.set_defaults(func=self._command)

    def configured(self, settings: Settings) -> bool:
        if settings.slack_oauth:  # installs in many workspaces: HTTP, signed requests
            return settings.slack_signing_secret is not None
        return settings.slack_bot_token is not None and (
            settings.slack_app_token is not None or settings.slack_signing_secret is not None
        )

    async def serve(self, services: Services) -> None:
        from adapters.slack.app import run_slack

        settings = services.settings
        await run_slack(await services.ponder(), settings,
                        http=self.http or settings.slack_app_token is None
                        or settings.slack_oauth, port=self.port)

    async def checks(self, settings: Settings, limits: Limits) -> Sequence[Check]:
        return [await doctor.check(settings, limits)]

    def _command(self, args: argparse.Namespace, settings: Settings) -> int:
        from bot.runner import serve

        return asyncio.run(serve(settings, [SlackPlatform(http=args.http, port=args.port)]))


platform = SlackPlatform()
