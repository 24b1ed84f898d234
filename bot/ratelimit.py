"""The one rate limiter module: what every chain writing to one place shares.

- `RateLimiter`: a token bucket, for budgets a platform does not describe as it goes (Slack's
  tiers, Discord's bot-wide limit).
- `WindowLimiter` (over a `Window`): for a platform that tells, with every answer, how much of
  a fixed window is left (Discord's `X-RateLimit-Limit`, `-Remaining`, `-Reset-After`): it
  hands out no more than the window has left. A token bucket cannot do that: with a burst
  saved up plus its refill it puts more requests into one window than the window holds.
- `SlidingWindowLimiter`: for limits a platform publishes as "so many a minute" without
  telling how much is left (Slack's tiers): no more than a window holds, all of it at once.
- `LimiterMap`: limiters by place (a channel), bounded.

Both serve waiters in order, urgent ones first: the last write of a message (what the user
keeps seeing) must not queue behind interim edits that a later edit will replace.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
L = TypeVar("L", bound="RateLimiter")


class RateLimiter:
    """`rate` tokens every `per` seconds, at most `burst` saved up."""

    def __init__(self, rate: float, per: float = 1.0, burst: int | None = None) -> None:
        if rate <= 0 or per <= 0:
            raise ValueError("rate and per must be positive")
        self._interval = per / rate
        self._burst = max(1, burst if burst is not None else int(rate))
        self._tokens = float(self._burst)
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        # (0 if urgent else 1, (rank, order), future): urgent first, then by rank.
        self._waiters: list[tuple[int, tuple[float, int], asyncio.Future[None]]] = []
        self._claims = 0
        self._order = itertools.count()
        self._pump: asyncio.Task[None] | None = None
        self._nudge: asyncio.Future[None] | None = None

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
        return self.waiting == 0 and self._take(False)

    def claim(self) -> None:
        """Say that one urgent write will come (a message shown with an interim text will need
        its final one). Only a limiter that holds room back for urgent writes
        (`SlidingWindowLimiter`) counts claims; to the others they change nothing."""
        self._claims += 1

    def release(self) -> None:
        """A claimed write was made (or will never be): it needs no room kept any more."""
        self._claims = max(0, self._claims - 1)
        self._poke()

    async def reserve(self) -> None:
        """Claim, once there is room to keep for it: before showing something unfinished
        that will need a final write, rather than after (then it may wait to be shown
        finished instead). Here at once."""
        self.claim()

    async def acquire(self, urgent: bool = False, *, rank: float | None = None) -> None:
        """Wait for a turn: urgent ones first, then by `rank` (lowest first; by default the
        time of asking, so first come, first served). A rank shared by every write of one
        chain (when it began) finishes the chains that began first before the others when
        the budget is short, instead of leaving every chain half-shown."""
        if not self._waiters and self._take(urgent):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        order = (time.monotonic() if rank is None else rank, next(self._order))
        heapq.heappush(self._waiters, (0 if urgent else 1, order, fut))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._serve())
        else:
            self._poke()  # it may be free for this one (urgent) though not for those waiting
        try:
            await fut
        except asyncio.CancelledError:
            # A cancelled waiter that was already granted gives its turn back.
            if fut.done() and not fut.cancelled():
                self._give_back()
            raise

    def _give_back(self) -> None:
        self._tokens = min(self._burst, self._tokens + 1)

    def _refill(self, now: float) -> None:
        if now < self._paused_until:
            self._stamp = now
            return
        start = max(self._stamp, self._paused_until)
        self._tokens = min(self._burst, self._tokens + (now - start) / self._interval)
        self._stamp = now

    def _take(self, urgent: bool) -> bool:
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

    def _poke(self) -> None:
        """Something changed (the platform said more is free): look at the waiters now."""
        if self._nudge is not None and not self._nudge.done():
            self._nudge.set_result(None)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            rank, _, fut = self._waiters[0]
            if fut.done():
                heapq.heappop(self._waiters)
                continue
            if self._take(rank == 0):
                heapq.heappop(self._waiters)
                fut.set_result(None)
                continue
            self._nudge = nudge = loop.create_future()
            timer = loop.call_later(self._delay(), _settle, nudge)
            try:
                await nudge
            finally:
                timer.cancel()
                self._nudge = None


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Window:
    """What is known of one fixed window, from the answers: no asyncio, no waiting.

    A window holds `Limit` requests; it opens with the first request after the last one
    ended and lasts `Reset-After` seconds from then; `Remaining` counts down and comes back only
    when the window ends. So: hand out at most what the window has left, counting what is in
    flight (granted, not yet answered: the platform may not have counted it yet), and more
    only once the window is over. Until the first answer says anything, `first` at a time.
    `spare` of each window is never handed out; requests that are not urgent also leave
    `urgent_share` of it to those that are. With `latest`, each answer replaces what was
    known, however it compares (how a client library may keep one count for two windows).
    """

    def __init__(self, *, first: int = 1, spare: int = 0, urgent_share: float = 0.0,
                 margin: float = 0.05, stale_after: float = 10.0,
                 latest: bool = False) -> None:
        self.limit: int | None = None  # the window's size, once an answer has said
        self.remaining = 0  # what may still be handed out in the current window
        self.reset_at: float | None = None  # when the current window has surely ended
        self.period = 0.0  # the longest window seen, to tell one window's answers from the next
        self._first = max(1, first)
        self._spare = spare  # what of each window is kept back (another client counts on it)
        # Interim requests (replaced by the next anyway) leave this share of every window to
        # urgent ones: a final text never finds the window spent on what it replaces.
        self._urgent_share = urgent_share
        # Every answer is read a little late (it travelled); the client library under us may
        # read the same headers a moment after we do and must find its window over too.
        self._margin = margin
        # A grant whose request never got an answer (cancelled before it was sent, the
        # connection lost) stops counting as in flight after this long.
        self._stale_after = stale_after
        # Each answer replaces what was known, as discord.py keeps a window (its one count
        # for routes that share a bucket name: whichever answered last).
        self._latest = latest
        self._in_flight: deque[float] = deque()  # when each unanswered grant was made

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def allows(self, now: float, urgent: bool) -> bool:
        """Whether one more may go now (nothing is taken)."""
        self._forget_stale(now)
        if self.limit is None:
            return len(self._in_flight) < self._first
        if self.reset_at is not None and now >= self.reset_at:
            # That window is over. The next opens with our next request; whatever is still
            # in flight may land in it.
            self.reset_at = None
            self.remaining = self.limit - len(self._in_flight)
        elif self.reset_at is None and not self._in_flight:
            self.remaining = self.limit  # nothing in flight, nothing heard of: a new window
        keep = self._spare + (0 if urgent else int(self.limit * self._urgent_share))
        return self.remaining > min(keep, self.limit - 1)

    def take(self, now: float) -> None:
        if self.limit is not None:
            self.remaining -= 1
        self._in_flight.append(now)

    def give_back(self) -> None:
        if self._in_flight:
            self._in_flight.pop()
            if self.limit is not None:
                self.remaining += 1

    def answered(self, now: float, limit: int | None, remaining: int | None,
                 reset_after: float | None, done: bool) -> None:
        if done and self._in_flight:
            self._in_flight.popleft()
        if limit is not None and remaining is not None and reset_after is not None:
            self._learn(now, limit, remaining, reset_after)

    def failed(self) -> None:
        if self._in_flight:
            self._in_flight.popleft()

    def pause(self, until: float) -> None:
        self.remaining = 0
        if self.reset_at is None or self.reset_at < until:
            self.reset_at = until

    def wait(self, now: float) -> float:
        """How long until this window may change by itself (its end, a stale grant)."""
        waits = [self._stale_after]
        if self.reset_at is not None and self.reset_at > now:
            waits.append(self.reset_at - now)
        if self._in_flight:
            waits.append(self._in_flight[0] + self._stale_after - now)
        return min(waits)

    def _learn(self, now: float, limit: int, remaining: int, reset_after: float) -> None:
        self.limit = max(1, limit)
        self.period = max(self.period, reset_after)
        end = now + reset_after + self._margin
        # What is still in flight may not have been counted yet: assume it was not.
        left = max(0, remaining - len(self._in_flight))
        slack = self.period / 2  # answers of one window end within a round trip of each other
        if self._latest or self.reset_at is None or end > self.reset_at + slack:
            self.reset_at, self.remaining = end, left  # a window newer than the one we knew
        elif end >= self.reset_at - slack:
            # The same window; answers can arrive out of order, the lowest count is the latest.
            self.reset_at = max(self.reset_at, end)
            self.remaining = min(self.remaining, left)
        # else: a late answer from a window already over: nothing to learn from it.

    def _forget_stale(self, now: float) -> None:
        while self._in_flight and now - self._in_flight[0] > self._stale_after:
            self._in_flight.popleft()


class WindowLimiter(RateLimiter):
    """Paced by what the platform says of a fixed window after every request (`Window`):
    hands out no more than the window has left, urgent requests first.

    `also`: windows shared with other limiters, that every grant must fit as well (and that
    every answer feeds): where a client library under us counts two of the platform's
    windows as one, what it believes must have room too, or it holds the request back.
    Every grant counts as in flight until `answered(...)` (fed each answer, with the window's
    figures when it carried them) or `failed()` (no answer) says otherwise.
    """

    def __init__(self, *, first: int = 1, spare: int = 0, urgent_share: float = 0.0,
                 margin: float = 0.05, stale_after: float = 10.0,
                 also: tuple[SharedWindow, ...] = ()) -> None:
        super().__init__(1.0)
        self.window = Window(first=first, spare=spare, urgent_share=urgent_share,
                             margin=margin, stale_after=stale_after)
        self._also = also
        for shared in also:
            shared.members.add(self)

    # The own window's figures, for those who look.
    @property
    def limit(self) -> int | None:
        return self.window.limit

    @property
    def remaining(self) -> int:
        return self.window.remaining

    @property
    def reset_at(self) -> float | None:
        return self.window.reset_at

    @property
    def in_flight(self) -> int:
        return self.window.in_flight

    def answered(self, limit: int | None = None, remaining: int | None = None,
                 reset_after: float | None = None, *, done: bool = True) -> None:
        """An answer came. `done=False` when the client will send the same request again
        (a 429 or a 5xx it retries): that grant is still in flight."""
        now = time.monotonic()
        self.window.answered(now, limit, remaining, reset_after, done)
        for shared in self._also:
            shared.window.answered(now, limit, remaining, reset_after, done)
            shared.poke()
        self._poke()

    def failed(self) -> None:
        """A request ended without an answer: it no longer counts as in flight."""
        self.window.failed()
        for shared in self._also:
            shared.window.failed()
            shared.poke()
        self._poke()

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        self.window.pause(self._paused_until)

    def _take(self, urgent: bool) -> bool:
        now = time.monotonic()
        if now < self._paused_until:
            return False
        windows = (self.window, *(shared.window for shared in self._also))
        # Each looked at (no short cut): a window whose end has passed starts the next.
        if not all([window.allows(now, urgent) for window in windows]):
            return False
        for window in windows:
            window.take(now)
        return True

    def _give_back(self) -> None:
        self.window.give_back()
        for shared in self._also:
            shared.window.give_back()

    def _delay(self) -> float:
        now = time.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        # An answer pokes the waiters; without one, a window's end or a stale grant will.
        waits = [self.window.wait(now), *(shared.window.wait(now) for shared in self._also)]
        return max(0.001, min(waits))


class SharedWindow:
    """A `Window` that several `WindowLimiter`s must all fit (see `WindowLimiter.also`)."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.members: weakref.WeakSet[WindowLimiter] = weakref.WeakSet()

    def poke(self) -> None:
        for member in list(self.members):
            member._poke()


class SlidingWindowLimiter(RateLimiter):
    """At most `calls` grants in any `window` seconds, for each `(calls, window)` given: a
    platform's published limits counted the way it counts them (Slack: 50 `chat.update` a
    minute per workspace; about one post a second per channel with short bursts). A token bucket
    under such a limit either wastes it (a small burst) or overruns it (a burst saved up plus
    its refill); this hands out a whole free window at once, which is what a burst of final
    texts needs, and never more.

    The platform counts a call when it arrives, which may be well after it was granted here
    (a busy connection pool, a slow network). So a grant counts as in flight, in every window,
    until its caller says the call was answered (`settled()`), and from that moment on, which
    is never earlier than the platform counted it. A grant never settled (its caller was cut
    off before the call went out) stops counting after `stale_after` seconds.

    What interim writes may take is bounded, because what one takes now stays spent for a whole
    window: they leave `reserve` of the smallest window's calls, plus one for every open
    `claim()`, to urgent ones.
    """

    def __init__(self, *windows: tuple[int, float], reserve: float = 0.0,
                 margin: float = 0.0, stale_after: float = 60.0) -> None:
        super().__init__(1.0)
        if not windows or any(calls < 1 or span <= 0 for calls, span in windows):
            raise ValueError("every window needs at least one call and a positive length")
        self.windows = tuple((int(calls), float(span) + margin) for calls, span in windows)
        self._held = int(min(calls for calls, _ in self.windows) * reserve)
        self._span = max(span for _, span in self.windows)
        self._stale_after = stale_after
        self._counted: list[float] = []  # when each call was answered, oldest first
        self._in_flight: deque[float] = deque()  # when each unanswered grant was made
        self._changed = asyncio.Event()  # room may have come back (for `reserve`)

    @property
    def claims(self) -> int:
        return self._claims

    def settled(self) -> None:
        """A call was answered (or failed after it went out): the platform has counted it. A
        call made without a grant (a delivery retried later) is counted too."""
        if self._in_flight:
            self._in_flight.popleft()
        bisect.insort(self._counted, time.monotonic())
        self._poke()

    async def reserve(self) -> None:
        """Claim once the window has room for it beyond what interim writes leave to urgent
        ones: the final writes already claimed, and `reserve`."""
        while self.room() <= self._held + self._claims:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._delay()):
                    await self._changed.wait()
        self.claim()

    def _poke(self) -> None:
        super()._poke()
        self._changed.set()

    def room(self) -> int:
        """Calls that may be made now without overrunning any window (pauses aside)."""
        now = time.monotonic()
        self._forget(now)
        flying = len(self._in_flight)
        return min(calls - flying - (len(self._counted)
                                     - bisect.bisect_right(self._counted, now - span))
                   for calls, span in self.windows)

    def _forget(self, now: float) -> None:
        drop = bisect.bisect_right(self._counted, now - self._span)
        if drop:
            del self._counted[:drop]
        while self._in_flight and self._in_flight[0] <= now - self._stale_after:
            self._in_flight.popleft()

    def _take(self, urgent: bool) -> bool:
        now = time.monotonic()
        if now < self._paused_until:
            return False
        room = self.room()
        if room <= (0 if urgent else self._held + self._claims):
            return False
        self._in_flight.append(now)
        return True

    def _give_back(self) -> None:
        if self._in_flight:
            self._in_flight.pop()

    def _delay(self) -> float:
        now = time.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        # Room comes back as calls leave their windows; a settled call or a release pokes.
        leaving = [at + span - now for _, span in self.windows
                   for at in self._counted if at > now - span]
        if self._in_flight:
            leaving.append(self._in_flight[0] + self._stale_after - now)
        return max(0.001, min(leaving, default=self._span))


class LimiterMap(Generic[K, L]):
    """Limiters by key (a channel, a channel and a route), made on first use, shared by all.

    Bounded: a limiter stays while anyone holds it (a surface, a waiter), however long a chain
    runs, and the `keep` most recently used stay besides, so what a limiter learnt of its
    place outlives a short pause; any other is dropped (a bot sees many channels over its
    life) and made afresh when next needed.
    """

    def __init__(self, make: Callable[[], L], keep: int = 64) -> None:
        self._make = make
        self._held: weakref.WeakValueDictionary[K, L] = weakref.WeakValueDictionary()
        self._recent: OrderedDict[K, L] = OrderedDict()
        self._keep = keep

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: K, make: Callable[[], L] | None = None) -> L:
        """The limiter for `key`, made (by `make`, else the map's own) if there is none."""
        limiter = self._held.get(key)
        if limiter is None:
            # Bound to a name first: the weak dictionary alone would not keep it alive.
            limiter = self._held[key] = (make or self._make)()
        self._recent[key] = limiter
        self._recent.move_to_end(key)
        while len(self._recent) > self._keep:
            self._recent.popitem(last=False)
        return limiter

    def find(self, key: K) -> L | None:
        """The limiter for `key` if one exists (never makes one)."""
        return self._held.get(key)
