"""👍 / 👎 on Discord: the buttons under a chain's final answer, and what a press does.

Dynamic items, like Stop (`stop.py`): their `custom_id` carries the vote and the chain, so a
press still counts after a restart, when no view object exists any more. The rule — one vote
per person per answer, a second press changes it — is `bot/feedback.py`'s; the presser gets an
ephemeral note of what it did (`votes.py`).
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.feedback import as_vote
from bot.store import Vote
from bot.surface import Controls

VOTE_PREFIX = "ponder:vote:"
_VOTE_KEY = r"(?P<vote>up|down):(?P<key>[0-9a-f]{1,64})"
EMOJI: dict[Vote, str] = {"up": "👍", "down": "👎"}


class FeedbackButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                     template=re.escape(VOTE_PREFIX) + _VOTE_KEY):
    def __init__(self, vote: Vote, key: str) -> None:
        super().__init__(discord.ui.Button(
            emoji=EMOJI[vote], style=discord.ButtonStyle.secondary,
            custom_id=f"{VOTE_PREFIX}{vote}:{key}"))
        self.vote: Vote = vote
        self.key = key

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any],
                             item: discord.ui.Item[Any], match: re.Match[str],
                             /) -> FeedbackButton:
        return cls(as_vote(match["vote"]) or "up", match["key"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        # discord.py's own custom event (`PonderClient.on_ponder_feedback`): the surface,
        # which draws these buttons, stays apart from the client that routes them.
        interaction.client.dispatch("ponder_feedback", interaction, self.key, self.vote)


def controls_view(controls: Controls) -> discord.ui.View | None:
    """The components of a message carrying `controls` (None: no components)."""
    if "feedback" not in controls.kinds or not controls.chain_id:
        return None
    view = discord.ui.View(timeout=None)
    for vote in EMOJI:
        view.add_item(FeedbackButton(vote, controls.chain_id))
    return view
