"""Ponder on Discord (discord.py): `/reason` in a thread, one message per step.

Modules: `app` (client, command, threads, Stop, follow-ups), `surface` (the Surface and the
per-channel limiters), `text` (names and lines Ponder writes), `sync` (command sync),
`seams` (pointing discord.py at a Discord).
"""

from adapters.discord.app import DiscordBot, DiscordError, run_discord

__all__ = ["DiscordBot", "DiscordError", "run_discord"]
