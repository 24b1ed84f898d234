"""discord.py's client with Ponder's `/reason` command; every event goes to a `Handlers`."""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

import discord
from discord import app_commands

from adapters.discord.calls import rest
from bot.config import MAX_VOTES, Settings
from bot.store import Vote
from bot.wording import say

log = logging.getLogger(__name__)

ModeChoice = Literal["chain", "native"]


class Handlers(Protocol):
    """What the client hands its events to (the front door, `DiscordBot`)."""

    async def sync(self, client: PonderClient) -> None: ...

    def on_ready(self) -> None: ...

    async def on_message(self, message: discord.Message) -> None: ...

    async def on_reason(self, interaction: discord.Interaction[Any], question: str,
                        mode: str | None, votes: int | None = None) -> None: ...

    async def on_reason_about(self, interaction: discord.Interaction[Any],
                              message: discord.Message) -> None: ...

    async def on_stop(self, interaction: discord.Interaction[Any], key: str) -> None: ...

    async def on_feedback(self, interaction: discord.Interaction[Any], key: str,
                          vote: Vote) -> None: ...


class PonderClient(discord.Client):
    def __init__(self, handlers: Handlers, intents: discord.Intents,
                 dynamic_items: tuple[type[discord.ui.DynamicItem[Any]], ...] = (),
                 **options: Any) -> None:
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(),
                         **options)
        self.handlers = handlers
        self.dynamic_items = dynamic_items
        self.tree = app_commands.CommandTree(self)
        self.tree.error(self._on_tree_error)
        _add_commands(self.tree, handlers)

    async def setup_hook(self) -> None:
        # Dynamic: buttons still answer after a restart, when no view object exists any more.
        self.add_dynamic_items(*self.dynamic_items)
        await self.handlers.sync(self)

    async def on_ready(self) -> None:
        log.info("Discord: logged in as %s (%s guilds)", self.user, len(self.guilds))
        self.handlers.on_ready()

    async def on_message(self, message: discord.Message) -> None:
        await self.handlers.on_message(message)

    async def on_ponder_feedback(self, interaction: discord.Interaction[Any], key: str,
                                 vote: Vote) -> None:
        """A 👍 / 👎 press (`feedback.py` dispatches it as this custom event)."""
        await self.handlers.on_feedback(interaction, key, vote)

    async def _on_tree_error(self, interaction: discord.Interaction[Any],
                             error: app_commands.AppCommandError) -> None:
        log.error("command failed", exc_info=error)
        message = say("went_wrong")
        try:
            if interaction.response.is_done():
                await rest(interaction.edit_original_response(content=message, view=None))
            else:
                await rest(interaction.response.send_message(message, ephemeral=True))
        except (discord.HTTPException, TimeoutError) as exc:
            log.warning("could not tell the user the command failed: %s", exc)


class ShardedPonderClient(PonderClient, discord.AutoShardedClient):
    """Ponder over several gateway shards: `DISCORD_SHARD_COUNT` in all, this process's
    `DISCORD_SHARD_IDS` (several processes with one shared store split them)."""


def make_client(settings: Settings, handlers: Handlers, intents: discord.Intents,
                dynamic_items: tuple[type[discord.ui.DynamicItem[Any]], ...] = (),
                **options: Any) -> PonderClient:
    """The client the settings ask for: one connection, or the shards they name."""
    if settings.discord_shard_count is None:
        return PonderClient(handlers, intents, dynamic_items, **options)
    shard_ids = [int(i) for i in settings.discord_shard_ids] or None
    return ShardedPonderClient(handlers, intents, dynamic_items,
                               shard_count=settings.discord_shard_count, shard_ids=shard_ids,
                               **options)


REASON_ABOUT = "Reason about this"


def _add_commands(tree: app_commands.CommandTree[Any], handlers: Handlers) -> None:
    # Both installs (a server's, and a person's own account: usable in any server, in DMs and
    # group DMs) and every context. Discord honours both only for global commands; where
    # Ponder cannot write in the channel, the chain is written through the interaction.
    @tree.command(name="reason", description="Think a question through step by step, "
                                             "one message per step, in a thread")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    @app_commands.describe(
        question="What should Ponder think about?",
        mode="chain: one JSON step at a time (default) · native: the model's own reasoning",
        votes=f"run this many chains and give the majority answer (1–{MAX_VOTES}; "
              "default: the server's PONDER_VOTES)",
    )
    async def reason(interaction: discord.Interaction[Any], question: str,
                     mode: ModeChoice | None = None,
                     votes: app_commands.Range[int, 1, MAX_VOTES] | None = None) -> None:
        await handlers.on_reason(interaction, question, mode, votes)

    @tree.context_menu(name=REASON_ABOUT)
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def reason_about(interaction: discord.Interaction[Any],
                           message: discord.Message) -> None:
        await handlers.on_reason_about(interaction, message)
