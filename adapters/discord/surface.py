"""The Discord Surface: post and edit messages in one thread (or channel), paced and safe.

One `RateLimiter` per Discord channel (a thread is a channel: it has its own message bucket)
is shared by every chain writing there. discord.py retries 429s and 5xx itself; the
`RestObserver` sees every response on the way and pauses the channel's limiter on a 429, so
the other chains in that channel wait too instead of piling into the same bucket.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord

from adapters.discord.text import MAX_CONTENT, render
from bot.presenter import SurfaceError, SurfaceLimits
from bot.ratelimit import RateLimiter

log = logging.getLogger(__name__)

# Discord: about 5 message writes per 5 s in one channel. One write a second, two saved up
# (a step's last edit and the next step's first post land together).
CHANNEL_RATE = (5.0, 5.0)
CHANNEL_BURST = 2
EDIT_INTERVAL = 1.0
REST_TIMEOUT = 30.0  # one REST call, discord.py's own 429/5xx retries included
LONG_RATE_LIMIT = 120.0  # a longer Retry-After than this gives up instead of waiting

# Message writes in one channel: the bucket the limiters stand for (thread creation, reactions
# and others have buckets of their own and must not pause message writes).
_MESSAGE_WRITE = re.compile(r"/channels/(\d+)/messages(?:/\d+)?$")


class LimiterRegistry:
    """One RateLimiter per channel id, created on first use, shared by all chains.

    Limiters of channels nobody wrote to for `idle_after` seconds are dropped (a bot sees
    many threads over its life); a dropped one is simply created afresh when needed.
    """

    def __init__(self, rate: float = CHANNEL_RATE[0], per: float = CHANNEL_RATE[1],
                 burst: int = CHANNEL_BURST, idle_after: float = 600.0) -> None:
        self._rate, self._per, self._burst = rate, per, burst
        self._idle_after = idle_after
        self._limiters: dict[int, RateLimiter] = {}
        self._used: dict[int, float] = {}
        self._next_prune = time.monotonic() + idle_after

    def get(self, channel_id: int) -> RateLimiter:
        now = time.monotonic()
        if now >= self._next_prune:
            self._prune(now)
        limiter = self._limiters.get(channel_id)
        if limiter is None:
            limiter = self._limiters[channel_id] = RateLimiter(self._rate, self._per, self._burst)
        self._used[channel_id] = now
        return limiter

    def _prune(self, now: float) -> None:
        self._next_prune = now + self._idle_after
        for channel_id, used in list(self._used.items()):
            if now - used > self._idle_after and not self._limiters[channel_id].waiting:
                del self._limiters[channel_id], self._used[channel_id]

    def pause(self, channel_id: int, seconds: float) -> None:
        limiter = self._limiters.get(channel_id)
        if limiter is not None:
            limiter.pause(seconds)

    def __len__(self) -> int:
        return len(self._limiters)


@dataclass
class RestObserver:
    """An aiohttp trace on discord.py's session: counts calls and feeds 429s to the limiters."""

    limiters: LimiterRegistry
    calls: Counter[str] = field(default_factory=Counter)  # "METHOD status" -> count
    rate_limited: int = 0
    errors: int = 0

    def trace_config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._on_end)
        trace.on_request_exception.append(self._on_exception)
        return trace

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def _on_end(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                      params: aiohttp.TraceRequestEndParams) -> None:
        status = params.response.status
        self.calls[f"{params.method} {status}"] += 1
        if status != 429:
            return
        self.rate_limited += 1
        headers = params.response.headers
        wait = _seconds(headers.get("X-RateLimit-Reset-After")) or _seconds(
            headers.get("Retry-After")) or 1.0
        match = _MESSAGE_WRITE.search(params.url.path)
        if match and params.method in ("POST", "PATCH"):
            self.limiters.pause(int(match.group(1)), wait)
        log.warning("Discord rate limit on %s %s: waiting %.2f s", params.method,
                    params.url.path, wait)

    async def _on_exception(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                            params: aiohttp.TraceRequestExceptionParams) -> None:
        self.errors += 1


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class MessageRef:
    """What the presenter holds for a posted message: plain ids (the store keeps them)."""

    channel_id: int
    message_id: int


class DiscordSurface:
    """The Surface protocol for one Discord channel or thread."""

    limits = SurfaceLimits(max_chars=MAX_CONTENT, edit_interval=EDIT_INTERVAL)

    def __init__(self, channel: discord.abc.Messageable, channel_id: int,
                 budget: RateLimiter, *, rest_timeout: float = REST_TIMEOUT) -> None:
        self.channel = channel
        self.channel_id = channel_id
        self.budget = budget
        self.rest_timeout = rest_timeout
        self.posted: list[MessageRef] = []

    def render(self, markdown: str) -> str:
        return render(markdown)

    async def post(self, text: str) -> object:
        message = await self._call(self.channel.send, content=text)
        ref = MessageRef(self.channel_id, message.id)
        self.posted.append(ref)
        return ref

    async def edit(self, handle: object, text: str) -> None:
        if not isinstance(handle, MessageRef):
            raise SurfaceError(f"not a Discord message handle: {handle!r}")
        partial = discord.PartialMessage(channel=self.channel, id=handle.message_id)  # type: ignore[arg-type]
        await self._call(partial.edit, content=text)

    async def _call(self, method: Any, **kwargs: Any) -> Any:
        """One write, with discord.py's retries, a deadline, and one wait on a long 429."""
        for attempt in range(2):
            try:
                async with asyncio.timeout(self.rest_timeout):
                    return await method(**kwargs)
            except discord.RateLimited as exc:
                # Longer than the client's max_ratelimit_timeout: wait once, in the open.
                self.budget.pause(exc.retry_after)
                if attempt or exc.retry_after > LONG_RATE_LIMIT:
                    raise SurfaceError(
                        f"Discord asked to wait {exc.retry_after:.0f} s before writing here"
                    ) from exc
                log.warning("Discord asks %s to wait %.1f s", self.channel_id, exc.retry_after)
                await asyncio.sleep(exc.retry_after)
            except discord.HTTPException as exc:
                raise SurfaceError(f"Discord refused the message: {exc.status} {exc.text}") \
                    from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise SurfaceError(f"Discord did not answer: {exc!r}") from exc
        raise SurfaceError("unreachable")
