"""The message a chain hangs from: the question, who asked, Stop, and at the end a summary."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import discord

from adapters.discord import text
from adapters.discord.calls import rest
from bot.ratelimit import RateLimiter

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 14 * 60.0  # an interaction token lasts 15 min; stop using it a bit before


@dataclass(eq=False)
class Opening:
    """Edited through the interaction's webhook while its token is valid, else through the
    channel (the bot wrote the message, so it may edit it)."""

    text: str
    channel: discord.abc.Messageable | None = None
    message_id: int | None = None
    interaction: discord.Interaction[Any] | None = None
    received: float = field(default_factory=time.monotonic)
    limiter: RateLimiter | None = None
    # The thread (or forum post) opened for the chain, once there is one: opening it again
    # after a failure half-way (Discord unreachable) must not open a second.
    thread: discord.Thread | None = None
    # How long the token is used. A chain written through its interaction (no channel to
    # fall back on) uses it to the end, within `TokenTimes.margin`.
    lifetime: float = TOKEN_LIFETIME
    # "Reason about this": the message the chain is about, whose thread it runs in.
    target: discord.Message | None = None

    def token_valid(self) -> bool:
        return (self.interaction is not None
                and time.monotonic() - self.received < self.lifetime)

    def anchor(self, where: str | None) -> dict[str, Any]:
        """What the store keeps of it, so a chain resumed after a restart can update it."""
        channel_id = getattr(self.channel, "id", None)
        if channel_id is None or self.message_id is None:
            return {}
        return {"channel": channel_id, "message": self.message_id, "text": self.text,
                "where": where}

    async def show(self, line: str, *, view: discord.ui.View | None = None) -> None:
        content = text.with_status(self.text, line)
        if self.token_valid() and self.interaction is not None:
            try:
                await rest(self.interaction.edit_original_response(content=content, view=view))
                return
            except discord.HTTPException as exc:
                if self.channel is None or self.message_id is None:
                    raise
                log.info("interaction token refused (%s); editing through the channel", exc)
        if self.channel is None or self.message_id is None:
            return
        if self.limiter is not None:
            await self.limiter.acquire(urgent=True)
        parent: Any = self.channel  # any Messageable with an id (discord.py's union is narrower)
        await rest(discord.PartialMessage(channel=parent, id=self.message_id).edit(
            content=content, view=view))
