"""👍 / 👎 on Slack: the buttons under a chain's final answer (its last message, or its streamed
reply's end), and what a press does. The rule — one vote per person per answer, a second press
changes it — is `bot/feedback.py`'s; the presser gets a private note of what it did."""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.controls import Press, actions, button, note
from adapters.slack.web import PLATFORM, Workspace
from bot.events import Language
from bot.feedback import as_vote, cast
from bot.service import Ponder
from bot.store import StoreFailed
from bot.wording import say

log = logging.getLogger(__name__)

FEEDBACK_PREFIX = "ponder_feedback_"
FEEDBACK_ACTIONS = re.compile(rf"^{FEEDBACK_PREFIX}(up|down)$")
EMOJI = {"up": "👍", "down": "👎"}


def feedback_buttons(chain_id: str) -> list[dict[str, Any]]:
    return [button(f"{FEEDBACK_PREFIX}{vote}", emoji, chain_id) for vote, emoji in EMOJI.items()]


def feedback_blocks(chain_id: str) -> list[dict[str, Any]]:
    """The buttons as blocks of their own (the end of a streamed reply, `chat.stopStream`)."""
    return [actions(feedback_buttons(chain_id))]


async def press_feedback(ponder: Ponder, client: AsyncWebClient, ws: Workspace,
                         press: Press) -> str | None:
    """A press of 👍 or 👎: recorded, and said privately. Returns what the vote did."""
    vote = as_vote(press.action_id.removeprefix(FEEDBACK_PREFIX))
    if vote is None or not press.value:
        return None
    language: Language = await ponder.language_of(press.value)
    try:
        voted = await cast(ponder.store, press.value, PLATFORM, press.user, vote)
    except StoreFailed:
        await note(client, ws, press, say("feedback_failed", language))
        return None
    await note(client, ws, press, say(f"feedback_{voted}", language, vote=EMOJI[vote]))
    return voted
