"""What a press of 👍 / 👎 (`feedback.py`) does on Discord: the vote recorded by the one rule
(`bot/feedback.py`), and a note only the presser sees."""

from __future__ import annotations

from typing import Any

import discord

from adapters.discord.calls import rest
from adapters.discord.feedback import EMOJI
from bot.feedback import cast
from bot.service import Ponder
from bot.store import StoreFailed, Vote
from bot.wording import say

PLATFORM = "discord"


async def press_feedback(ponder: Ponder, interaction: discord.Interaction[Any], key: str,
                         vote: Vote) -> None:
    """A press: recorded, and answered with a note only the presser sees."""
    language = await ponder.language_of(key)
    try:
        voted = await cast(ponder.store, key, PLATFORM, str(interaction.user.id), vote)
    except StoreFailed:
        text = say("feedback_failed", language)
    else:
        text = say(f"feedback_{voted}", language, vote=EMOJI[vote])
    await rest(interaction.response.send_message(text, ephemeral=True))
