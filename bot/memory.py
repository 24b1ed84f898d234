"""Small state a front door keeps between runs, in the service's store."""

from __future__ import annotations

from bot.store import Store


class Memory:
    """Small state a front door keeps between runs (a command set's hash, places where
    something was explained once), in the service's store under the front door's keys."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, key: str) -> str | None:
        return await self._store.get(key)

    async def put(self, key: str, value: str) -> None:
        await self._store.put(key, value)

    async def once(self, key: str) -> bool:
        """True the first time `key` is asked about, False ever after."""
        if await self._store.get(key):
            return False
        await self._store.put(key, "1")
        return True
