"""Ponder's buttons on Slack: what a press (`block_actions`) says, the blocks of a message that
carries buttons, and the private note a press may get back.

A message with blocks shows its blocks, not its `text` (which stays the notification and
fallback text): so a message carrying buttons also carries its text as `section` blocks (at most
3,000 characters each, Slack's limit), then one `actions` block. Bolt routes a press to its
listener by `action_id` alike over Socket Mode and over HTTP (signed, `payload=` form posts to
the events URL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.mrkdwn import escape
from adapters.slack.web import SlackCallError, Workspace, call

log = logging.getLogger(__name__)

SECTION_CHARS = 3000  # a section block's text, at most
CONTROLS_BLOCK = "ponder_controls"


@dataclass(frozen=True, slots=True)
class Press:
    """One button press, read from a `block_actions` payload."""

    action_id: str
    value: str  # the chain's id
    user: str
    team: str  # the workspace the message is in (its budgets)
    channel: str
    thread_ts: str | None  # the thread the pressed message is in, for a note in that thread


def read_press(body: dict[str, Any], default_team: str) -> Press | None:
    """The press in a `block_actions` payload, or None when it names no button or person."""
    actions = body.get("actions")
    user = body.get("user")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict) or \
            not isinstance(user, dict) or not user.get("id"):
        return None
    action = actions[0]
    channel, container = _part(body, "channel"), _part(body, "container")
    message, team = _part(body, "message"), _part(body, "team")
    thread_ts = message.get("thread_ts") or container.get("thread_ts")
    return Press(action_id=str(action.get("action_id") or ""),
                 value=str(action.get("value") or ""), user=str(user["id"]),
                 team=str(team.get("id") or user.get("team_id") or default_team),
                 channel=str(channel.get("id") or container.get("channel_id") or ""),
                 thread_ts=str(thread_ts) if thread_ts else None)


def _part(body: dict[str, Any], name: str) -> dict[str, Any]:
    part = body.get(name)
    return part if isinstance(part, dict) else {}


def button(action_id: str, label: str, value: str, style: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "button", "action_id": action_id, "value": value,
                               "text": {"type": "plain_text", "text": label, "emoji": True}}
    if style is not None:
        element["style"] = style
    return element


def actions(elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "actions", "block_id": CONTROLS_BLOCK, "elements": elements}


def sections(text: str) -> list[dict[str, Any]]:
    """`text` (mrkdwn) as section blocks, cut at line ends where it is too long for one."""
    blocks: list[dict[str, Any]] = []
    while text:
        piece = text[:SECTION_CHARS]
        if len(text) > SECTION_CHARS:
            cut = piece.rfind("\n")
            piece = piece[:cut + 1] if cut > 0 else piece
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": piece}})
        text = text[len(piece):]
    return blocks


async def note(client: AsyncWebClient, ws: Workspace, press: Press, text: str) -> bool:
    """Tell the presser alone (`chat.postEphemeral`), paced like the channel's posts and
    within the workspace's ephemeral budget (dropped, and logged, when it is spent)."""
    if not press.channel:
        return False
    if not ws.ephemeral_budget.try_acquire():
        log.warning("a note to %s in %s dropped: the ephemeral budget is spent (%s)",
                    press.user, press.channel, text)
        return False
    await ws.post_budget(press.channel).acquire()
    try:
        await call("chat.postEphemeral", client.chat_postEphemeral(
            channel=press.channel, user=press.user, text=escape(text),
            thread_ts=press.thread_ts))
    except SlackCallError as exc:
        log.warning("could not show a note to %s in %s: %s", press.user, press.channel, exc)
        return False
    return True
