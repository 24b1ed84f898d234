"""Background tasks a component owns: each one named, its failure logged, all of them
cancelled (after a grace) when the owner closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Tasks:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task %s failed", self.owner, task.get_name(),
                      exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def idle(self) -> None:
        """Until every task spawned so far (and any they spawn) has finished."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self, grace: float) -> None:
        """Give running tasks `grace` seconds to finish, then cancel the rest and give them as
        long again to go: a task that keeps awaiting a dead network after its cancel is left
        behind (logged), not waited for."""
        pending = [t for t in self._tasks if not t.done()]
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
        cancelled = list(self._tasks)
        for task in cancelled:
            task.cancel()
        if cancelled:
            _, stuck = await asyncio.wait(cancelled, timeout=max(grace, 0.1))
            for task in stuck:
                log.warning("%s task %s did not stop when cancelled", self.owner,
                            task.get_name())
