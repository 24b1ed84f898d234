"""The Discord Surface: post and edit messages in one thread (or channel), paced and safe.

Discord keeps message writes in per-channel buckets (a thread is a channel), creates and edits
apart, each about 5 per 5 s. So every channel gets two `RateLimiter`s, shared by every chain
writing there: `budget` for edits and `post_budget` for new messages (the presenter takes the
latter for posts). discord.py retries 429s and 5xx itself; the `RestObserver` sees every
response on the way and pauses the matching limiter on a 429, so the other chains in that
channel wait too instead of piling into the same bucket.

Above the channels sits Discord's global limit, 50 requests a second per bot. discord.py only
learns of it from a 429 (and global 429s count toward the invalid-request ban), so every
request waits for the `RestObserver`'s bot-wide limiter before it leaves.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord

from adapters.discord.text import MAX_CONTENT, render
from bot.errors import SurfaceError
from bot.metrics import PLATFORM_429, PLATFORM_CALLS
from bot.ratelimit import RateLimiter
from bot.surface import BaseSurface, Handle, SurfaceLimits

log = logging.getLogger(__name__)

# Discord: about 5 creates and 5 edits per 5 s in one channel, counted in fixed windows. One
# a second with nothing saved up never puts a sixth into a window (a burst of 2 did: discord.py
# then sleeps inside the request until the window resets, ~2 s late; measured, bench/discord.py).
CHANNEL_RATE = (5.0, 5.0)
CHANNEL_BURST = 1
# 40 a second with 10 saved up puts at most 50 into any one-second window.
GLOBAL_RATE = 40.0
GLOBAL_BURST = 10
EDIT_INTERVAL = 1.0
# discord.py sleeps through a 429's Retry-After inside the call when it is at most this long
# (the client's max_ratelimit_timeout; 30 s is the least discord.py accepts), and raises
# RateLimited for a longer one.
MAX_RATELIMIT_WAIT = 30.0
# One REST call, discord.py's own 429/5xx retries included: room for a full Retry-After sleep
# plus the request itself, or our deadline would cut short a wait discord.py is entitled to.
REST_TIMEOUT = MAX_RATELIMIT_WAIT + 15
LONG_RATE_LIMIT = 120.0  # a longer Retry-After than this gives up instead of waiting

# Message writes in one channel: the bucket the limiters stand for (thread creation, reactions
# and others have buckets of their own and must not pause message writes).
_MESSAGE_WRITE = re.compile(r"/channels/(\d+)/messages(?:/\d+)?$")


class LimiterRegistry:
    """One RateLimiter per (channel id, "edit" | "post"), made on first use, shared by all.

    Held weakly: a limiter lives exactly as long as a surface, opening message or waiter holds
    it, however long a chain runs, so every writer to one Discord bucket shares one limiter. A
    bot sees many threads over its life; one nobody holds any more goes, and is made afresh
    when needed.
    """

    def __init__(self, rate: float = CHANNEL_RATE[0], per: float = CHANNEL_RATE[1],
                 burst: int = CHANNEL_BURST) -> None:
        self._rate, self._per, self._burst = rate, per, burst
        self._limiters: weakref.WeakValueDictionary[tuple[int, str], RateLimiter] = (
            weakref.WeakValueDictionary())

    def get(self, channel_id: int, kind: str = "edit") -> RateLimiter:
        """The limiter for edits (default) or posts (`kind="post"`) in a channel."""
        key = (channel_id, kind)
        limiter = self._limiters.get(key)
        if limiter is None:
            # Bound to a name first: the dictionary alone would not keep it alive.
            limiter = RateLimiter(self._rate, self._per, self._burst)
            self._limiters[key] = limiter
        return limiter

    def posts(self, channel_id: int) -> RateLimiter:
        return self.get(channel_id, "post")

    def pause(self, channel_id: int, kind: str, seconds: float) -> None:
        limiter = self._limiters.get((channel_id, kind))
        if limiter is not None:
            limiter.pause(seconds)


@dataclass
class RestObserver:
    """An aiohttp trace on discord.py's session: paces every request under the bot-wide
    limit, and feeds 429s to the limiters (and the metrics)."""

    limiters: LimiterRegistry
    bot: RateLimiter = field(default_factory=lambda: RateLimiter(GLOBAL_RATE, burst=GLOBAL_BURST))
    rate_limited: int = 0

    def trace_config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._on_start)
        trace.on_request_end.append(self._on_end)
        return trace

    async def _on_start(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                        params: aiohttp.TraceRequestStartParams) -> None:
        # Interaction callbacks are outside the global limit, and due within 3 s.
        if "/interactions/" not in params.url.path:
            await self.bot.acquire()

    async def _on_end(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                      params: aiohttp.TraceRequestEndParams) -> None:
        status = params.response.status
        PLATFORM_CALLS.labels("discord", params.method).inc()
        if status != 429:
            return
        self.rate_limited += 1
        PLATFORM_429.labels("discord").inc()
        headers = params.response.headers
        wait = _seconds(headers.get("X-RateLimit-Reset-After")) or _seconds(
            headers.get("Retry-After")) or 1.0
        if headers.get("X-RateLimit-Global") or headers.get("X-RateLimit-Scope") == "global":
            self.bot.pause(wait)
        match = _MESSAGE_WRITE.search(params.url.path)
        if match and params.method in ("POST", "PATCH"):
            kind = "post" if params.method == "POST" else "edit"
            self.limiters.pause(int(match.group(1)), kind, wait)
        log.warning("Discord rate limit on %s %s: waiting %.2f s", params.method,
                    params.url.path, wait)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class DiscordSurface(BaseSurface):
    """The Surface for one Discord channel or thread. A handle is
    `{"channel_id": …, "message_id": …}`: plain ids, as the store keeps them."""

    limits = SurfaceLimits(max_chars=MAX_CONTENT, edit_interval=EDIT_INTERVAL)

    def __init__(self, channel: discord.abc.Messageable, channel_id: int,
                 budget: RateLimiter, post_budget: RateLimiter) -> None:
        self.channel = channel
        self.channel_id = channel_id
        self.budget = budget  # edits
        self._post_budget = post_budget

    @property
    def post_budget(self) -> RateLimiter:
        return self._post_budget  # new messages: a bucket of their own on Discord

    def render(self, markdown: str) -> str:
        return render(markdown)

    async def post(self, text: str) -> Handle:
        message = await self._call(self.channel.send, content=text)
        return {"channel_id": self.channel_id, "message_id": message.id}

    async def edit(self, handle: Handle, text: str) -> None:
        message_id = self._mine(handle)
        if message_id is None:
            raise SurfaceError(f"not a message of this Discord channel: {handle!r}")
        partial = discord.PartialMessage(channel=self._partial_parent(), id=message_id)
        await self._call(partial.edit, content=text)

    async def read(self, handle: Handle) -> str | None:
        message_id = self._mine(handle)
        if message_id is None:
            return None
        message = await self._call(lambda: self.channel.fetch_message(message_id))
        return str(message.content)

    def _mine(self, handle: Handle) -> int | None:
        """The message id of a handle of this channel (None for any other)."""
        if not isinstance(handle, dict):
            return None
        try:
            channel_id, message_id = int(handle["channel_id"]), int(handle["message_id"])
        except (KeyError, TypeError, ValueError):
            return None
        return message_id if channel_id == self.channel_id else None

    def _partial_parent(self) -> Any:
        # discord.py types PartialMessage's channel as a union of concrete channel classes;
        # every Messageable that has an id works in practice (threads, partial messageables).
        return self.channel

    async def _call(self, method: Any, **kwargs: Any) -> Any:
        """One write, with discord.py's retries, a deadline, and one wait on a long 429."""
        for attempt in range(2):
            try:
                async with asyncio.timeout(REST_TIMEOUT):
                    return await method(**kwargs)
            except discord.RateLimited as exc:
                # Longer than the client's max_ratelimit_timeout: wait once, in the open.
                limiter = self.post_budget if method == self.channel.send else self.budget
                limiter.pause(exc.retry_after)
                if attempt or exc.retry_after > LONG_RATE_LIMIT:
                    raise SurfaceError(
                        f"Discord asked to wait {exc.retry_after:.0f} s before writing here"
                    ) from exc
                log.warning("Discord asks %s to wait %.1f s", self.channel_id, exc.retry_after)
                await asyncio.sleep(exc.retry_after)
            except discord.HTTPException as exc:
                raise SurfaceError(f"Discord refused the message: {exc.status} {exc.text}",
                                   gone=exc.status == 404) from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise SurfaceError(f"Discord did not answer: {exc!r}") from exc
        raise SurfaceError("unreachable")
