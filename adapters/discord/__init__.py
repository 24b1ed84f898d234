"""Ponder on Discord (discord.py): `/reason` in a thread, one message per step.

Modules: `app` (client, command, threads, Stop, follow-ups), `surface` (the Surface and the
per-channel limiters), `text` (names and lines Ponder writes), `sync` (command sync),
`seams` (pointing discord.py at a Discord), `plugin` and `doctor` (the platform as the core
sees it: `ponder discord`, `ponder run`, `ponder doctor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.discord.app import DiscordBot, run_discord

__all__ = ["DiscordBot", "run_discord"]


def __getattr__(name: str) -> Any:
    # Every `ponder` command imports this package for its plugin; discord.py (slow to import)
    # is loaded only when something of the app is used.
    if name in __all__:
        from adapters.discord import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
