"""A chain written through the interaction itself, where Ponder cannot write in the channel.

Installed to a person's account, `/reason` (and "Reason about this") can be used in a guild
the bot is not in, in a DM between people and in a group DM; a guild install can still lack
the permission to post. There the only way to write is the interaction's webhook: its response
message (the opening: the question, who asked, Stop, and at the end the summary) and follow-up
messages, one per step, each edited in place (`PATCH /webhooks/{app}/{token}/messages/{id}`),
shown by the same presenter, at the same pace as in a thread.

The webhook answers to the interaction's token, which Discord honours for 15 minutes. So the
token's life is a deadline: the chain is stopped `wrap_up` before it ends, and its last words
(the step cut short, a note that says how to go on, the opening's last line) are written
while the token still works; nothing is sent through it in its last `margin`, so nothing
fails silently there. Follow-up questions cannot reach such a chain (Ponder sees no messages
there): the opening says so.

Webhook writes have windows of their own, per token and per route (`WebhookLimiters`, fed by
the answers' `X-RateLimit-*` headers, as the channel windows are).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import discord

from adapters.discord import text
from adapters.discord.calls import rest
from adapters.discord.opening import Opening
from adapters.discord.stop import stop_view
from adapters.discord.surface import EDIT_INTERVAL, REST_TIMEOUT, RETRIED
from adapters.discord.text import MAX_CONTENT
from bot.errors import SurfaceError
from bot.events import ChainFailed, Event, Language, Question
from bot.handle import ChainHandle
from bot.presenter import ThreadPresenter
from bot.ratelimit import LimiterMap, WindowLimiter
from bot.surface import BaseSurface, Handle, Outcome, Presenter, SurfaceLimits
from bot.wording import say

log = logging.getLogger(__name__)

N = TypeVar("N", int, float)

VIA = "interaction"  # the anchor of a chain written through its interaction: {"via": VIA}


@dataclass(frozen=True, slots=True)
class TokenTimes:
    """How long an interaction token works, and how a chain written through it ends in time."""

    ttl: float = 15 * 60.0  # Discord honours a token this long after the interaction
    wrap_up: float = 60.0  # the chain is stopped this long before: room for its last words
    margin: float = 10.0  # nothing is sent through the token this close to its end

    def stop_at(self, received: float) -> float:
        return received + self.ttl - self.wrap_up

    def usable_until(self, received: float) -> float:
        return received + self.ttl - self.margin


def through_interaction(client: discord.Client,
                        interaction: discord.Interaction[Any]) -> bool:
    """True where Ponder cannot write in the interaction's channel: a DM between people or a
    group DM (the app was installed to the user's account), a guild the bot is not a member
    of, or a channel where it may not send messages. The bot's own DM, and a channel where
    it may post but not open threads, are written to directly as before."""
    context = interaction.context
    if context.private_channel:
        return True
    if context.dm_channel or interaction.guild_id is None:
        return False
    member = interaction.is_guild_integration() or client.get_guild(interaction.guild_id)
    if not member:
        return True
    perms = interaction.app_permissions
    if isinstance(interaction.channel, discord.Thread):
        return not perms.send_messages_in_threads
    return not perms.send_messages


# --- pacing ----------------------------------------------------------------------------------

# A follow-up (POST /webhooks/{app}/{token}) and an edit of one (PATCH …/messages/{id}); the
# opening's edits (`@original`) count in the same window, which `SPARE` leaves them room in.
_WEBHOOK = re.compile(r"/webhooks/\d+/([^/]+)(?:/messages/(\d+))?$")
SPARE = 1
# What interim edits leave of each window to final texts, as in channels (`surface.py`).
URGENT_SHARE = 0.2


class WebhookLimiters:
    """One `WindowLimiter` per interaction token and kind of write ("post", "edit"), shared by
    everything written through that token, fed by the answers of every webhook request
    (`watch` adds the hooks to the trace the client's session already has)."""

    def __init__(self, *, margin: float = 0.05, stale_after: float = 10.0,
                 keep: int = 64) -> None:
        def make(share: float) -> Callable[[], WindowLimiter]:
            return lambda: WindowLimiter(spare=SPARE, urgent_share=share, margin=margin,
                                         stale_after=stale_after)

        self._limiters = {"post": LimiterMap[str, WindowLimiter](make(0.0), keep),
                          "edit": LimiterMap[str, WindowLimiter](make(URGENT_SHARE), keep)}

    def posts(self, token: str) -> WindowLimiter:
        return self._limiters["post"].get(token)

    def edits(self, token: str) -> WindowLimiter:
        return self._limiters["edit"].get(token)

    def watch(self, trace: aiohttp.TraceConfig) -> aiohttp.TraceConfig:
        trace.on_request_end.append(self._on_end)
        trace.on_request_exception.append(self._on_exception)
        return trace

    def _find(self, method: str, path: str) -> WindowLimiter | None:
        match = _WEBHOOK.search(path)
        if match is None:
            return None
        token, message = match.groups()
        if method == "POST" and message is None:
            return self._limiters["post"].find(token)
        if method == "PATCH" and message is not None:
            return self._limiters["edit"].find(token)
        return None

    async def _on_end(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                      params: aiohttp.TraceRequestEndParams) -> None:
        limiter = self._find(params.method, params.url.path)
        if limiter is None:
            return
        status, headers = params.response.status, params.response.headers
        limiter.answered(_number(headers, "X-RateLimit-Limit", int),
                         _number(headers, "X-RateLimit-Remaining", int),
                         _number(headers, "X-RateLimit-Reset-After", float),
                         done=status not in RETRIED)
        if status == 429:
            limiter.pause(_number(headers, "X-RateLimit-Reset-After", float)
                          or _number(headers, "Retry-After", float) or 1.0)

    async def _on_exception(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                            params: aiohttp.TraceRequestExceptionParams) -> None:
        limiter = self._find(params.method, params.url.path)
        if limiter is not None:
            limiter.failed()


def _number(headers: Mapping[str, str], name: str, kind: Callable[[str], N]) -> N | None:
    try:
        value = headers.get(name)
        return kind(value) if value is not None else None
    except ValueError:
        return None


# --- the surface -----------------------------------------------------------------------------


class InteractionSurface(BaseSurface):
    """Follow-up messages of one interaction. A handle is `{"interaction": …, "message_id":
    …}`. Past its token's usable time every write fails at once (a `SurfaceError`), without
    a request Discord would refuse."""

    limits = SurfaceLimits(max_chars=MAX_CONTENT, edit_interval=EDIT_INTERVAL)

    def __init__(self, interaction: discord.Interaction[Any], limiters: WebhookLimiters,
                 usable_until: float) -> None:
        self.interaction = interaction
        self.budget = limiters.edits(interaction.token)
        self._post_budget = limiters.posts(interaction.token)
        self.usable_until = usable_until
        self.ran_out = False  # stopped because the token was about to expire

    @property
    def post_budget(self) -> WindowLimiter:
        return self._post_budget

    def render(self, markdown: str) -> str:
        return text.render(markdown)

    def presenter(self, language: Language) -> Presenter:
        return TokenPresenter(ThreadPresenter(self, language), self, language)

    async def post(self, text: str) -> Handle:
        message = await self._call(lambda: self.interaction.followup.send(content=text,
                                                                          wait=True))
        return {"interaction": self.interaction.id, "message_id": message.id}

    async def edit(self, handle: Handle, text: str) -> None:
        message_id = self._mine(handle)
        if message_id is None:
            raise SurfaceError(f"not a message of this interaction: {handle!r}")
        await self._call(lambda: self.interaction.followup.edit_message(message_id,
                                                                        content=text))

    async def stop_in_time(self, handle: ChainHandle, at: float) -> None:
        """Stop the chain at `at` if it still runs, so that it ends while its token works."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        if not handle.done():
            log.info("chain %s: its interaction token is about to expire; stopping it",
                     handle.chain_id)
            self.ran_out = True
            handle.cancel(by="token")

    def _mine(self, handle: Handle) -> int | None:
        if not isinstance(handle, dict):
            return None
        try:
            if int(handle["interaction"]) != self.interaction.id:
                return None
            return int(handle["message_id"])
        except (KeyError, TypeError, ValueError):
            return None

    async def _call(self, request: Callable[[], Awaitable[Any]]) -> Any:
        left = self.usable_until - time.monotonic()
        if left <= 0:
            raise SurfaceError("the interaction's token has expired", never=True)
        try:
            async with asyncio.timeout(min(REST_TIMEOUT, left)):
                return await request()
        except discord.HTTPException as exc:
            raise SurfaceError(f"Discord refused the message: {exc.status} {exc.text}",
                               gone=exc.status == 404) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SurfaceError(f"Discord did not answer: {exc!r}") from exc


class TokenPresenter:
    """The thread presenter, with one difference: a chain stopped because its token was
    about to expire ends with a note that says so and how to go on, not as "stopped"."""

    def __init__(self, inner: ThreadPresenter, surface: InteractionSurface,
                 language: Language) -> None:
        self.inner = inner
        self.surface = surface
        self.language: Language = language
        self.outcome: Outcome = inner.outcome

    async def notice(self, markdown: str, key: str | None = None) -> None:
        await self.inner.notice(markdown, key)

    async def present(self, events: AsyncIterator[Event]) -> Outcome:
        return await self.inner.present(self._told(events))

    async def _told(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            if (isinstance(event, ChainFailed) and event.reason == "cancelled"
                    and self.surface.ran_out):
                event = ChainFailed("time_limit", say("token_ran_out", self.language),
                                    event.total_seconds)
            yield event


# --- the opening -----------------------------------------------------------------------------


async def open_through_interaction(interaction: discord.Interaction[Any], q: Question,
                                   opening: Opening, language: Language,
                                   times: TokenTimes) -> None:
    """The deferred response becomes the chain's opening message: the question, who asked,
    that it is answered here (follow-ups cannot be), and Stop. It is edited only through the
    token, while the token works."""
    opening.text = text.opening(q.text, interaction.user.mention,
                                say("via_interaction", language), language)
    opening.lifetime = times.ttl - times.margin
    message = await rest(interaction.edit_original_response(
        content=text.with_status(opening.text, text.running_line(None, language)),
        view=stop_view(q.id, language)))
    opening.message_id = message.id
