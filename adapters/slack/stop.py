"""Stop on Slack: the button on a running chain's first reply (and on its streamed reply), and
what a press does.

Who may stop is the service's rule (`Ponder.stop_anywhere`): the asker, or someone who may
manage the place — on Slack a workspace admin or owner (`users.info`, asked only when someone
else than the asker presses). Anyone else gets a private note; so does a press on a chain that
has ended. A stopped chain says so in its thread (the presenter), and takes the button off.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk.models.messages.chunk import BlocksChunk, Chunk
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.controls import Press, actions, button, note
from adapters.slack.web import SlackCallError, Workspace, call
from bot.events import Language
from bot.service import Ponder
from bot.wording import say

log = logging.getLogger(__name__)

STOP_ACTION = "ponder_stop"


def stop_button(chain_id: str, language: Language) -> dict[str, Any]:
    return button(STOP_ACTION, f"⏹️ {say('stop', language)}", chain_id, style="danger")


def stop_chunks(chain_id: str, language: Language) -> list[Chunk]:
    """The button as a streamed reply's first chunk (`chat.startStream`); none without a
    chain to stop."""
    if not chain_id:
        return []
    return [BlocksChunk(blocks=[actions([stop_button(chain_id, language)])])]


async def is_admin(client: AsyncWebClient, user: str) -> bool:
    """Whether `user` administers the workspace (admins and owners may stop any chain)."""
    try:
        info = await call("users.info", client.users_info(user=user))
    except SlackCallError as exc:
        log.warning("could not tell whether %s is a workspace admin: %s", user, exc)
        return False
    person = info.get("user") or {}
    return any(bool(person.get(flag)) for flag in ("is_admin", "is_owner", "is_primary_owner"))


async def press_stop(ponder: Ponder, client: AsyncWebClient, ws: Workspace,
                     press: Press) -> str:
    """A press of Stop; returns what the service answered (`stopping`, `finished`,
    `not_allowed`), after telling the presser privately when it was not `stopping`."""
    chain_id = press.value
    result = await ponder.stop_anywhere(chain_id, press.user)
    if result == "not_allowed" and await is_admin(client, press.user):
        result = await ponder.stop_anywhere(chain_id, press.user, may_manage=True)
    if result != "stopping":
        language = await ponder.language_of(chain_id)
        key = "already_finished" if result == "finished" else "only_asker_or_admin_stops"
        await note(client, ws, press, say(key, language))
    log.info("Stop on %s by %s: %s", chain_id, press.user, result)
    return result
