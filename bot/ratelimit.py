"""The one rate limiter: a token bucket shared by every chain that writes to one place."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class RateLimiter:
    """`rate` tokens every `per` seconds, at most `burst` saved up.

    Waiters are served in order, urgent ones first: the last write of a message (what the
    user keeps seeing) must not queue behind interim edits that a later edit will replace.
    """

    def __init__(self, rate: float, per: float = 1.0, burst: int | None = None) -> None:
        if rate <= 0 or per <= 0:
            raise ValueError("rate and per must be positive")
        self._interval = per / rate
        self._burst = max(1, burst if burst is not None else int(rate))
        self._tokens = float(self._burst)
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._pump: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for *_, fut in self._waiters if not fut.done())

    def pause(self, seconds: float) -> None:
        """Hand out nothing for `seconds` (a platform's Retry-After); the bucket is emptied too."""
        self._paused_until = max(self._paused_until, time.monotonic() + max(0.0, seconds))
        self._tokens = 0.0

    def try_acquire(self) -> bool:
        """Take a token now if one is free, else say no at once (never waits).

        For callers that have something else to do when the budget is spent (a Slack chain
        posts instead of opening a stream). Nobody waiting is jumped.
        """
        return self.waiting == 0 and self._take()

    async def acquire(self, urgent: bool = False) -> None:
        if not self._waiters and self._take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (0 if urgent else 1, next(self._order), fut))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._serve())
        try:
            await fut
        except asyncio.CancelledError:
            # A cancelled waiter that was already granted returns its token.
            if fut.done() and not fut.cancelled():
                self._tokens = min(self._burst, self._tokens + 1)
            raise

    def _refill(self, now: float) -> None:
        if now < self._paused_until:
            self._stamp = now
            return
        start = max(self._stamp, self._paused_until)
        self._tokens = min(self._burst, self._tokens + (now - start) / self._interval)
        self._stamp = now

    def _take(self) -> bool:
        now = time.monotonic()
        self._refill(now)
        if now >= self._paused_until and self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _delay(self) -> float:
        now = time.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        return max(0.0, (1 - self._tokens) * self._interval)

    async def _serve(self) -> None:
        while self._waiters:
            _, _, fut = self._waiters[0]
            if fut.done():
                heapq.heappop(self._waiters)
                continue
            if self._take():
                heapq.heappop(self._waiters)
                fut.set_result(None)
                continue
            await asyncio.sleep(self._delay())
