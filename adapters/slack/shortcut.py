""""Reason about this", Slack's message shortcut (`slack-manifest.yml`, callback id
`reason_about_this`): a chain over a message's text, answered in that message's thread.

Slack sends a `message_action` payload: who ran it (`user`, with their own `team_id`), where
(`channel`, `team`), and the message (`text`, `ts`, `thread_ts` when it is a reply). The
question is the message's text made plain by the same `question_text` as a mention's (people
and channels as names, `<!channel>` and the like as words that cannot ping); its length and
every other rule are the service's. The shortcut is acknowledged at once (Slack wants it
within 3 s); the chain is then asked like a mention of Ponder on that message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CALLBACK_ID = "reason_about_this"


@dataclass(frozen=True, slots=True)
class ShortcutAsk:
    """What `SlackBot._ask` needs, read from a `message_action` payload."""

    team: str  # the workspace that received it (its budgets)
    asker_team: str  # the asker's own team (what the allow-lists check)
    channel: str
    user: str
    message_ts: str  # the message the chain is about
    thread_ts: str  # its thread: the message's own, or the thread it is a reply in
    text: str


def read_shortcut(body: dict[str, Any], default_team: str) -> ShortcutAsk | None:
    """The ask in a `message_action` payload, or None when it names no message or asker."""
    message = body.get("message")
    channel = body.get("channel")
    user = body.get("user")
    if not isinstance(message, dict) or not isinstance(channel, dict) or \
            not isinstance(user, dict) or not message.get("ts") or not user.get("id"):
        return None
    team_field = body.get("team")
    team = str((team_field.get("id") if isinstance(team_field, dict) else None)
               or default_team)
    ts = str(message["ts"])
    return ShortcutAsk(team=team, asker_team=str(user.get("team_id") or team),
                       channel=str(channel.get("id") or ""), user=str(user["id"]),
                       message_ts=ts, thread_ts=str(message.get("thread_ts") or ts),
                       text=str(message.get("text") or ""))
