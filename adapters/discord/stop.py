"""The Stop button under a running chain's opening message."""

from __future__ import annotations

import re
from typing import Any

import discord

from adapters.discord.client import PonderClient
from bot.events import Language
from bot.wording import say

STOP_PREFIX = "ponder:stop:"


class StopButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                 template=re.escape(STOP_PREFIX) + r"(?P<key>[0-9a-f]{1,64})"):
    """Stop on a running chain. Dynamic: it still answers after a restart (chain is gone)."""

    def __init__(self, key: str, language: Language = "en") -> None:
        super().__init__(discord.ui.Button(
            label=say("stop", language), emoji="⏹️", style=discord.ButtonStyle.danger,
            custom_id=f"{STOP_PREFIX}{key}"))
        self.key = key

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any],
                             item: discord.ui.Item[Any], match: re.Match[str], /) -> StopButton:
        return cls(match["key"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client = interaction.client
        if isinstance(client, PonderClient):
            await client.handlers.on_stop(interaction, self.key)


def stop_view(key: str, language: Language = "en") -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(StopButton(key, language))
    return view
