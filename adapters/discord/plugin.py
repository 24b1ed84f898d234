"""Discord as a Ponder platform (entry point `ponder.platforms`: discord).

Cheap to import on purpose: every `ponder` command loads it; discord.py is imported only when
Discord is served.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from adapters.discord import doctor
from bot.config import Settings
from bot.platforms import Check, Limits, Services, SubParsers


class DiscordPlatform:
    name = "discord"
    fallback = False

    def add_commands(self, subparsers: SubParsers) -> None:
        command = subparsers.add_parser("discord", help="serve the Discord bot (/reason)")
        command.set_defaults(func=self._command)

    def configured(self, settings: Settings) -> bool:
        return settings.discord_token is not None

    async def serve(self, services: Services) -> None:
        from adapters.discord.app import run_discord

        await run_discord(await services.ponder(), services.settings)

    async def checks(self, settings: Settings, limits: Limits) -> Sequence[Check]:
        return [await doctor.check(settings, limits)]

    def _command(self, args: argparse.Namespace, settings: Settings) -> int:
        from bot.runner import serve

        return asyncio.run(serve(settings, [self]))


platform = DiscordPlatform()
