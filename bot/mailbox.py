"""Engine events on their way to a presenter that may lag behind a platform's limits."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from bot.events import AnswerDelta, Event, StepDelta


class Mailbox:
    """Engine events on their way to a presenter that may lag behind a platform's limits.

    The engine never waits for the platform: consecutive snapshots of the same message
    (`StepDelta` of one step, `AnswerDelta`) replace each other while unread, so a slow
    presenter skips straight to the latest text. Every other event is kept, in order.
    """

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, event: Event) -> None:
        if self._items and isinstance(event, StepDelta | AnswerDelta):
            last = self._items[-1]
            if type(last) is type(event) and getattr(last, "index", 0) == getattr(
                    event, "index", 0):
                self._items[-1] = event
                return
        self._items.append(event)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            while self._items:
                yield self._items.popleft()
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()
