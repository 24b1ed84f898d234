"""The Discord Surface: post and edit messages in one thread (or channel), paced and safe.

Discord counts requests in fixed windows, per route and channel (a thread is a channel): each
answer says how many the window holds (`X-RateLimit-Limit`, about 5 for message posts, 5 for
edits), how many are left (`-Remaining`) and when it ends (`-Reset-After`, about 5 s after its
first request). So every channel gets a `WindowLimiter` per route Ponder uses there (posts,
edits, thread creation), shared by every chain writing there and fed by every answer the
`RestObserver` sees: it hands out only what the window has left, urgent writes first (a
message's final text before interim edits, which are merged), and interim edits leave part of
each window to final texts.

The routes are told apart by method and path, not by `X-RateLimit-Bucket`: Discord answers
posts and edits with one bucket name yet counts them apart (discord/discord-api-docs#8073).
discord.py takes the name at its word and keeps one count for both, whichever answered last;
so a grant must fit that count too (`LimiterRegistry`). Handed more than a window has,
discord.py holds the request back inside the call, behind whatever it already holds, urgent
or not, or, misled by the other route's count, sends it into a spent window (a 429).
Ponder's pacing is what keeps the order and the final edits on time.

Above the channels sits Discord's global limit, 50 requests a second per bot. Its answers
carry no figures (only a 429 tells), and global 429s count toward the invalid-request ban, so
every request waits for the `RestObserver`'s bot-wide token bucket before it leaves.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord

from adapters.discord.feedback import controls_view
from adapters.discord.text import MAX_CONTENT, render
from bot.errors import SurfaceError
from bot.metrics import PLATFORM_429, PLATFORM_CALLS
from bot.ratelimit import LimiterMap, RateLimiter, SharedWindow, Window, WindowLimiter
from bot.surface import BaseSurface, Control, Controls, Handle, SurfaceLimits

log = logging.getLogger(__name__)

# 40 a second with 10 saved up puts at most 50 into any one-second window.
GLOBAL_RATE = 40.0
GLOBAL_BURST = 10
EDIT_INTERVAL = 1.0
# Of each window of a channel's message edits, what interim edits (replaced by the next
# anyway) leave to final texts (1 of Discord's 5), so a step's final text does not find the
# window spent on the edits it replaces. Measured (bench/discord.py, 20 chains): with 0.4,
# interim edits were kept back so long that a step finishing meanwhile waited a whole window
# (its writer was already queued as interim): p95 3.3 s; with 0.2, p95 0.9 s.
URGENT_SHARE = 0.2
# discord.py sleeps through a 429's Retry-After inside the call when it is at most this long
# (the client's max_ratelimit_timeout; 30 s is the least discord.py accepts), and raises
# RateLimited for a longer one.
MAX_RATELIMIT_WAIT = 30.0
# One REST call, discord.py's own 429/5xx retries included: room for a full Retry-After sleep
# plus the request itself, or our deadline would cut short a wait discord.py is entitled to.
REST_TIMEOUT = MAX_RATELIMIT_WAIT + 15
LONG_RATE_LIMIT = 120.0  # a longer Retry-After than this gives up instead of waiting
# discord.py sends the same request again after these (and a 429): still one write in flight.
RETRIED = frozenset({429, 500, 502, 504, 524})

# The windows Ponder paces, by what a request does in a channel: posting a message, editing
# one, opening a thread (from a message, or a forum post). Reactions and others have windows of
# their own and must not hold these back.
_MESSAGES = re.compile(r"/channels/(\d+)/messages(?:/\d+)?$")
_THREADS = re.compile(r"/channels/(\d+)/(?:messages/\d+/)?threads$")
KINDS = ("post", "edit", "thread")


class LimiterRegistry:
    """One `WindowLimiter` per channel and kind of request ("post", "edit", "thread"), made on
    first use, shared by every chain, opening message and reply writing there, and bounded
    (`LimiterMap`: those held, and the most recent few). A new one knows nothing of its
    window: it lets one request go at a time until Discord's first answer tells it.

    A channel's posts and edits answer with one bucket name, so discord.py counts them in one
    window, whichever answered last, whatever Discord does: both limiters also fit that
    window (a `SharedWindow` fed by the answers of both), or discord.py would hold back what
    Discord would take. Measured (bench/discord.py, 20 chains): without it, discord.py held
    20 writes back; keeping instead the last of each window unspent, none, but final texts
    waited longer (p95 1.5 s against 0.9 s)."""

    def __init__(self, *, urgent_share: float = URGENT_SHARE, margin: float = 0.05,
                 stale_after: float = 10.0, keep: int = 64) -> None:
        self._urgent_share, self._margin, self._stale_after = urgent_share, margin, stale_after
        self._limiters = {kind: LimiterMap[int, WindowLimiter](self._maker(kind), keep)
                          for kind in KINDS}
        # Held by the post and edit limiters of the channel, as long as either lives.
        self._named: weakref.WeakValueDictionary[int, SharedWindow] = (
            weakref.WeakValueDictionary())

    def _maker(self, kind: str, shared: SharedWindow | None = None
               ) -> Callable[[], WindowLimiter]:
        share = self._urgent_share if kind == "edit" else 0.0
        also = (shared,) if shared is not None else ()
        return lambda: WindowLimiter(urgent_share=share, margin=self._margin,
                                     stale_after=self._stale_after, also=also)

    def _message_limiter(self, kind: str, channel_id: int) -> WindowLimiter:
        limiters = self._limiters[kind]
        limiter = limiters.find(channel_id)
        if limiter is None:
            shared = self._named.get(channel_id)
            if shared is None:
                shared = self._named[channel_id] = SharedWindow(Window(
                    margin=self._margin, stale_after=self._stale_after, latest=True))
            return limiters.get(channel_id, self._maker(kind, shared))
        return limiters.get(channel_id)

    def __len__(self) -> int:
        return sum(len(limiters) for limiters in self._limiters.values())

    def get(self, channel_id: int) -> WindowLimiter:
        """The limiter for message edits in a channel."""
        return self._message_limiter("edit", channel_id)

    def posts(self, channel_id: int) -> WindowLimiter:
        """The limiter for new messages in a channel."""
        return self._message_limiter("post", channel_id)

    def threads(self, channel_id: int) -> WindowLimiter:
        """The limiter for opening threads (and forum posts) in a channel."""
        return self._limiters["thread"].get(channel_id)

    def answered(self, channel_id: int, kind: str, status: int,
                 headers: Mapping[str, str]) -> None:
        """Discord answered a request of `kind` in the channel: what its window has left."""
        limiter = self._limiters[kind].find(channel_id)
        if limiter is not None:  # else nobody writes there any more
            limiter.answered(_count(headers.get("X-RateLimit-Limit")),
                             _count(headers.get("X-RateLimit-Remaining")),
                             _seconds(headers.get("X-RateLimit-Reset-After")),
                             done=status not in RETRIED)

    def failed(self, channel_id: int, kind: str) -> None:
        limiter = self._limiters[kind].find(channel_id)
        if limiter is not None:
            limiter.failed()

    def pause(self, channel_id: int, kind: str, seconds: float) -> None:
        limiter = self._limiters[kind].find(channel_id)
        if limiter is not None:
            limiter.pause(seconds)


@dataclass
class RestObserver:
    """An aiohttp trace on discord.py's session: paces every request under the bot-wide
    limit, feeds every answer to a request Ponder paces to its channel's limiter, and 429s to
    the metrics."""

    limiters: LimiterRegistry
    bot: RateLimiter = field(default_factory=lambda: RateLimiter(GLOBAL_RATE, burst=GLOBAL_BURST))
    rate_limited: int = 0

    def trace_config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._on_start)
        trace.on_request_end.append(self._on_end)
        trace.on_request_exception.append(self._on_exception)
        return trace

    async def _on_start(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                        params: aiohttp.TraceRequestStartParams) -> None:
        # Interaction callbacks are outside the global limit, and due within 3 s.
        if "/interactions/" not in params.url.path:
            await self.bot.acquire()

    async def _on_end(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                      params: aiohttp.TraceRequestEndParams) -> None:
        status = params.response.status
        headers = params.response.headers
        PLATFORM_CALLS.labels("discord", params.method).inc()
        paced = self._paced(params.method, params.url.path)
        if paced is not None:
            self.limiters.answered(*paced, status, headers)
        if status != 429:
            return
        self.rate_limited += 1
        PLATFORM_429.labels("discord").inc()
        wait = _seconds(headers.get("X-RateLimit-Reset-After")) or _seconds(
            headers.get("Retry-After")) or 1.0
        if headers.get("X-RateLimit-Global") or headers.get("X-RateLimit-Scope") == "global":
            self.bot.pause(wait)
        elif paced is not None:
            self.limiters.pause(*paced, wait)
        log.warning("Discord rate limit on %s %s: waiting %.2f s", params.method,
                    params.url.path, wait)

    async def _on_exception(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                            params: aiohttp.TraceRequestExceptionParams) -> None:
        paced = self._paced(params.method, params.url.path)
        if paced is not None:
            self.limiters.failed(*paced)

    @staticmethod
    def _paced(method: str, path: str) -> tuple[int, str] | None:
        """(channel id, kind) for a request Ponder paces, else None."""
        if method in ("POST", "PATCH") and (match := _MESSAGES.search(path)):
            return int(match.group(1)), "post" if method == "POST" else "edit"
        if method == "POST" and (match := _THREADS.search(path)):
            return int(match.group(1)), "thread"
        return None


def _count(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class DiscordSurface(BaseSurface):
    """The Surface for one Discord channel or thread. A handle is
    `{"channel_id": …, "message_id": …}`: plain ids, as the store keeps them."""

    limits = SurfaceLimits(max_chars=MAX_CONTENT, edit_interval=EDIT_INTERVAL)
    # 👍 / 👎 under an answer (`feedback.py`); Stop is on the opening message (`stop.py`).
    offers: frozenset[Control] = frozenset({"feedback"})

    def __init__(self, channel: discord.abc.Messageable, channel_id: int,
                 budget: RateLimiter, post_budget: RateLimiter) -> None:
        self.channel = channel
        self.channel_id = channel_id
        self.budget = budget  # edits
        self._post_budget = post_budget

    @property
    def post_budget(self) -> RateLimiter:
        return self._post_budget  # new messages: counted apart from edits by Discord

    def render(self, markdown: str) -> str:
        return render(markdown)

    async def post(self, text: str) -> Handle:
        message = await self._call(self.channel.send, content=text)
        return {"channel_id": self.channel_id, "message_id": message.id}

    async def post_with(self, text: str, controls: Controls) -> Handle:
        view = controls_view(controls)
        message = await self._call(self.channel.send, content=text,
                                   **({"view": view} if view is not None else {}))
        return {"channel_id": self.channel_id, "message_id": message.id}

    async def edit(self, handle: Handle, text: str) -> None:
        await self._edit(handle, content=text)

    async def edit_with(self, handle: Handle, text: str, controls: Controls) -> None:
        await self._edit(handle, content=text, view=controls_view(controls))

    async def _edit(self, handle: Handle, **fields: Any) -> None:
        message_id = self._mine(handle)
        if message_id is None:
            raise SurfaceError(f"not a message of this Discord channel: {handle!r}")
        partial = discord.PartialMessage(channel=self._partial_parent(), id=message_id)
        await self._call(partial.edit, **fields)

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
