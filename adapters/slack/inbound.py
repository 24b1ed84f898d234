"""What arrives from Slack, made ready for the service: event ids remembered (Slack delivers
an event again when it thinks the first delivery failed), and message text made plain."""

from __future__ import annotations

import re
import time
from typing import Protocol

from bot.service import Ponder

DEDUP_SECONDS = 3600.0  # Slack retries for minutes; keep ids well beyond that


# --- de-duplication ------------------------------------------------------------------------


class SeenEvents(Protocol):
    """Remembers event ids; `first_sight` is True only for an id not seen before."""

    async def first_sight(self, event_id: str) -> bool: ...


class StoreSeenEvents:
    """Event ids kept in Ponder's store, so a redelivery is recognised across a restart."""

    def __init__(self, ponder: Ponder, keep_seconds: float = DEDUP_SECONDS) -> None:
        self.ponder = ponder
        self.keep_seconds = keep_seconds

    async def first_sight(self, event_id: str) -> bool:
        return await self.ponder.first_sight(f"slack:{event_id}", self.keep_seconds)


class MemorySeenEvents:
    """Event ids kept in memory (tests, or a store that cannot be reached)."""

    def __init__(self, keep_seconds: float = DEDUP_SECONDS) -> None:
        self.keep_seconds = keep_seconds
        self._seen: dict[str, float] = {}

    async def first_sight(self, event_id: str) -> bool:
        now = time.monotonic()
        if len(self._seen) > 10_000:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.keep_seconds}
        seen = self._seen.get(event_id)
        if seen is not None and now - seen < self.keep_seconds:
            return False
        self._seen[event_id] = now
        return True


# --- question text -------------------------------------------------------------------------

_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_LINK = re.compile(r"<((?:https?://|mailto:)[^>|]+)(?:\|([^>]*))?>")


def question_text(text: str, bot_user_id: str) -> str:
    """What the person asked, as plain text: the bot's mention removed, Slack markup undone."""
    text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text) if bot_user_id else text
    text = _MENTION.sub(r"@\1", text)
    text = _CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _SPECIAL.sub(r"@\1", text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]+", " ", text).strip()


def thread_key(channel: str, thread_ts: str) -> str:
    """How a Slack thread is named in the store (a `ts` is unique within its channel)."""
    return f"{channel}:{thread_ts}"
