"""Application command sync: instant in the listed guilds, global only when the set changed.

Global sync is rate-limited by Discord and takes a while to reach clients, so it runs only
when the hash of what would be sent differs from the last successful sync (kept in the store's
key/value table, per application).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Protocol

import discord
from discord import app_commands

log = logging.getLogger(__name__)


class KeyValue(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, value: str) -> None: ...


def commands_hash(tree: app_commands.CommandTree[Any]) -> str:
    """A stable digest of the global command set, as it would be sent to Discord."""
    payload = sorted((c.to_dict(tree) for c in tree.get_commands()), key=lambda c: c["name"])
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


async def sync_commands(tree: app_commands.CommandTree[Any], application_id: int,
                        guild_ids: tuple[str, ...], kv: KeyValue) -> str:
    """Sync as configured; returns what was done: "guilds", "global" or "unchanged"."""
    if guild_ids:
        for gid in guild_ids:
            guild = discord.Object(int(gid))
            tree.copy_global_to(guild=guild)
            synced = await tree.sync(guild=guild)
            log.info("synced %d command(s) to guild %s", len(synced), gid)
        return "guilds"
    key = f"discord:commands:{application_id}"
    digest = commands_hash(tree)
    if await kv.get(key) == digest:
        log.info("global commands unchanged since the last sync; not syncing")
        return "unchanged"
    synced = await tree.sync()
    await kv.put(key, digest)
    log.info("synced %d global command(s); Discord may take a while to show changes",
             len(synced))
    return "global"
