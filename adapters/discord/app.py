"""The Discord front door: `/reason` opens a thread where each step is a message edited in place.

It translates Discord's events into service calls and the service's results into Discord
calls, nothing more: who may ask, one chain per thread, who may follow up or stop, and what an
outcome means are the service's (`bot/service.py`, `bot/admission.py`); where a chain is shown
is `placement.py`, its opening message `opening.py`, the Stop button `stop.py`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import replace
from typing import Any

import aiohttp
import discord

from adapters.discord import text
from adapters.discord.calls import describe, rest
from adapters.discord.client import PonderClient, make_client
from adapters.discord.feedback import FeedbackButton
from adapters.discord.interaction import (
    VIA,
    InteractionSurface,
    TokenTimes,
    WebhookLimiters,
    open_through_interaction,
    through_interaction,
)
from adapters.discord.message_command import question_from
from adapters.discord.opening import TOKEN_LIFETIME, Opening
from adapters.discord.placement import Place, place
from adapters.discord.seams import point_discord_at
from adapters.discord.stop import StopButton, stop_view
from adapters.discord.surface import (
    MAX_RATELIMIT_WAIT,
    REST_TIMEOUT,
    DiscordSurface,
    LimiterRegistry,
    RestObserver,
)
from adapters.discord.sync import sync_commands
from adapters.discord.votes import press_feedback
from bot.admission import Admission
from bot.config import Settings
from bot.errors import PlatformError, Refused, SettingsError
from bot.events import Question
from bot.service import ChainHandle, ChainRequest, Ponder
from bot.store import ChainRecord, Vote
from bot.tasks import Tasks
from bot.wording import say

log = logging.getLogger(__name__)

PLATFORM = "discord"
SETTLE_SECONDS = 5.0  # after the drain, how long stopped chains get to write their last state
SYNC_TIMEOUT = 60.0


class DiscordBot:
    """Everything Ponder does on Discord. `await run()` serves until cancelled."""

    def __init__(self, ponder: Ponder, settings: Settings, *,
                 client_options: dict[str, Any] | None = None,
                 limiters: LimiterRegistry | None = None,
                 token_times: TokenTimes | None = None) -> None:
        self.ponder = ponder
        self.settings = settings
        self.client_options = client_options or {}
        self.limiters = limiters if limiters is not None else LimiterRegistry()
        self.observer = RestObserver(self.limiters)
        self.webhooks = WebhookLimiters()  # writes through interactions, per token
        self.token_times = token_times or TokenTimes()
        self.tasks = Tasks("Discord")
        self.ready = asyncio.Event()
        self.synced: str | None = None  # "guilds", "global", "unchanged", "failed"
        self.client: PonderClient | None = None
        self.message_content = True
        self._recovered = False

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        token = self.settings.discord_token
        if token is None or not token.get_secret_value().strip():
            raise SettingsError("setting DISCORD_TOKEN: needed for Discord")
        restore = point_discord_at(self.settings.discord_api_url,
                                   self.settings.discord_gateway_url)
        # Chains to resume are found once connected (READY); follow-ups wait for that.
        self.ponder.expect_recovery(PLATFORM)
        try:
            while True:
                intents = discord.Intents.default()
                intents.message_content = self.message_content  # follow-ups read messages
                try:
                    await self._serve(token.get_secret_value(), intents)
                    return
                except discord.PrivilegedIntentsRequired:
                    if not self.message_content:
                        raise
                    log.warning("the Message Content intent is not enabled for this bot (Discord"
                                " developer portal → Bot); follow-ups in threads need it")
                    self.message_content = False
                    self.ready.clear()
        except discord.LoginFailure as exc:
            raise PlatformError(PLATFORM, f"Discord refused DISCORD_TOKEN: {exc}") from exc
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise PlatformError(
                PLATFORM,
                f"cannot reach Discord at {self.settings.discord_api_url}: {exc!r}") from exc
        finally:
            restore()

    async def _serve(self, token: str, intents: discord.Intents) -> None:
        options = {"max_ratelimit_timeout": MAX_RATELIMIT_WAIT, "max_messages": None,
                   "http_trace": self.webhooks.watch(self.observer.trace_config()),
                   **self.client_options}
        client = self.client = make_client(self.settings, self, intents,
                                           (StopButton, FeedbackButton),
                                           **options)
        async with client:  # closes the client's session and gateway on the way out
            try:
                # login() also runs setup_hook, which syncs the commands under SYNC_TIMEOUT.
                async with asyncio.timeout(REST_TIMEOUT + SYNC_TIMEOUT):
                    await client.login(token)
                await client.connect(reconnect=True)
            finally:
                # Running chains write their last state while the client is still open.
                await self.tasks.close(SETTLE_SECONDS)

    def on_ready(self) -> None:
        if not self._recovered:  # READY comes again after a reconnect; recover once
            self._recovered = True
            self.tasks.spawn(self.recover(), name="discord-recover")
        self.ready.set()

    async def sync(self, client: PonderClient) -> None:
        assert client.application_id is not None
        try:
            async with asyncio.timeout(SYNC_TIMEOUT):
                self.synced = await sync_commands(client.tree, client.application_id,
                                                  self.settings.discord_guild_ids,
                                                  self.ponder.memory)
        except (discord.HTTPException, TimeoutError) as exc:
            # The commands Discord already has keep working; say so and carry on.
            self.synced = "failed"
            log.error("could not sync /reason with Discord (%s); serving what is registered",
                      exc)

    # --- /reason --------------------------------------------------------------------------

    async def on_reason_about(self, interaction: discord.Interaction[Any],
                              message: discord.Message) -> None:
        """"Reason about this" on a message: `/reason` with that message's text, in a thread
        started from the message where one can be."""
        me = self._client().user
        await self.on_reason(interaction, question_from(message, me.id if me else None), None,
                             target=message)

    async def on_reason(self, interaction: discord.Interaction[Any], question: str,
                        mode: str | None, votes: int | None = None, *,
                        target: discord.Message | None = None) -> None:
        received = time.monotonic()
        user = interaction.user
        channel = interaction.channel
        request = ChainRequest(
            PLATFORM, Question(question.strip(), mode=mode, votes=votes), str(user.id),
            channel=str(_parent_id(interaction)),
            # /reason inside a thread answers right there: that thread's one chain at a time.
            thread=str(channel.id) if isinstance(channel, discord.Thread) else "",
            workspace=str(interaction.guild_id or ""))
        try:
            # Counted now (over every process, with a shared store): a second /reason while
            # this one's thread opens is refused privately.
            admission = await self.ponder.enter(request)
        except Refused as exc:
            await rest(interaction.response.send_message(f"⚠️ {exc.message}", ephemeral=True))
            return
        try:
            # Within 3 s of the interaction: everything after this may take its time.
            await rest(interaction.response.defer(thinking=True))
        except BaseException:
            self.ponder.release(admission)
            raise
        opening = Opening(text.opening(request.question.text, user.mention,
                                       language=admission.language),
                          interaction=interaction, received=received, target=target)
        self.tasks.spawn(self._start(interaction, request, admission, opening),
                         name=f"discord-reason-{request.question.id}")

    async def _start(self, interaction: discord.Interaction[Any], request: ChainRequest,
                     admission: Admission, opening: Opening) -> None:
        try:
            if through_interaction(self._client(), interaction):
                await self._through_interaction(interaction, request, admission, opening)
                return
            try:
                where = await self._place(interaction, request, admission, opening)
            except Exception as exc:
                log.exception("could not start a chain for /reason")
                await self._quietly(opening.show(say(
                    "could_not_start", admission.language,
                    why=describe(exc, admission.language))))
                return
            # Only a thread is a conversation of its own: inline in a channel or a DM, the
            # chain has no thread, so no one else's earlier questions become its history.
            thread = str(where.id) if isinstance(where.channel, discord.Thread) else ""
            request = replace(request, thread=thread, anchor=opening.anchor(where.where))
            await self._run(request, self._surface(where.channel, where.id), admission,
                            opening, where.where)
        finally:
            # However it ended before the chain started (a dropped connection included), the
            # asker's slot and the thread are given back; once started, this is a no-op.
            self.ponder.release(admission)

    async def _through_interaction(self, interaction: discord.Interaction[Any],
                                   request: ChainRequest, admission: Admission,
                                   opening: Opening) -> None:
        """Where Ponder cannot write in the channel, the chain is written through the
        interaction's webhook (`interaction.py`) and ends while the token still works."""
        times = self.token_times
        try:
            await open_through_interaction(interaction, request.question, opening,
                                           admission.language, times)
        except Exception as exc:
            log.exception("could not start a chain through its interaction")
            await self._quietly(opening.show(say("could_not_start", admission.language,
                                                 why=describe(exc, admission.language))))
            return
        surface = InteractionSurface(interaction, self.webhooks,
                                     times.usable_until(opening.received))
        # No thread: no earlier questions are its history. Nothing of it can be resumed after
        # a restart either (the token is not kept), which its anchor tells recovery.
        request = replace(request, thread="", anchor={"via": VIA})
        try:
            handle = self.ponder.submit(request, surface, admission)
        except Refused as exc:
            await self._quietly(opening.show(f"⚠️ {exc.message}"))
            return
        deadline = self.tasks.spawn(surface.stop_in_time(handle, times.stop_at(opening.received)),
                                    name=f"discord-token-{handle.chain_id}")
        try:
            await self._watch(handle, opening, None)
        finally:
            deadline.cancel()

    async def _place(self, interaction: discord.Interaction[Any], request: ChainRequest,
                     admission: Admission, opening: Opening) -> Place:
        """Open where the chain is shown. Discord unreachable (a blip, an incident) is waited
        out while the interaction token lives: the question is answered late, not dropped."""
        wait = 1.0
        while True:
            try:
                return await place(self._client(), interaction, request.question, opening,
                                   admission.language, self.limiters, self.ponder.memory,
                                   admission.hold_thread)
            except (aiohttp.ClientError, OSError, TimeoutError, discord.DiscordServerError) as exc:
                if time.monotonic() - opening.received + wait > TOKEN_LIFETIME:
                    raise
                log.info("Discord unreachable while opening a thread (%s); again in %.0f s",
                         exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 10.0)

    async def _run(self, request: ChainRequest, surface: DiscordSurface, admission: Admission,
                   opening: Opening, where: str | None) -> None:
        try:
            handle = self.ponder.submit(request, surface, admission)
        except Refused as exc:
            await self._quietly(opening.show(f"⚠️ {exc.message}"))
            return
        await self._watch(handle, opening, where)

    async def _watch(self, handle: ChainHandle, opening: Opening, where: str | None) -> None:
        """Wait for the chain; then the opening message gets its one-line summary, however
        long Discord takes to be reachable again (within PONDER_DELIVERY_HOURS)."""
        outcome = await handle.wait()
        line = text.outcome_line(outcome, handle.language, where)
        deadline = time.monotonic() + self.settings.delivery_hours * 3600
        wait = 1.0
        while True:
            try:
                await opening.show(line)
                return
            except (discord.NotFound, discord.Forbidden) as exc:
                log.warning("chain %s: its opening message is gone (%s)", handle.chain_id, exc)
                return
            except (discord.HTTPException, TimeoutError, aiohttp.ClientError, OSError) as exc:
                if time.monotonic() > deadline:
                    log.error("chain %s: its opening message never took its summary: %s",
                              handle.chain_id, exc)
                    return
                log.info("chain %s: opening message not updated (%s); again in %.0f s",
                         handle.chain_id, exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 10.0)

    # --- restart recovery -----------------------------------------------------------------

    async def recover(self) -> None:
        """Resume the chains a previous process left running (the service does the resuming;
        this finds their opening messages again, from the anchor stored with each chain)."""
        handles = await self.ponder.recover(PLATFORM, self._surface_for, adopt=self._adopt)
        for handle in handles:
            self._adopt(handle)
        if handles:
            log.info("resumed %d chain(s) left running by the previous process", len(handles))

    def _adopt(self, handle: ChainHandle) -> None:
        """A resumed chain (at start, or later: one of another process that died)."""
        self.tasks.spawn(self._resumed(handle), name=f"discord-resumed-{handle.chain_id}")

    async def _resumed(self, handle: ChainHandle) -> None:
        """Its opening message says it runs again (with its Stop button), then takes its
        summary at the end, as the dead process's would have."""
        anchor = handle.request.anchor
        opening, where = Opening(""), None
        try:
            if anchor:
                channel_id = int(anchor["channel"])
                opening = Opening(str(anchor["text"]), message_id=int(anchor["message"]),
                                  channel=self._messageable(channel_id),
                                  limiter=self.limiters.get(channel_id))
                where = anchor.get("where")
        except (KeyError, TypeError, ValueError):
            # This chain still runs and answers in its thread; only its opening message
            # stays as it was.
            log.exception("chain %s: its opening message cannot be found again",
                          handle.chain_id)
        if opening.text:
            await self._quietly(opening.show(text.running_line(where, handle.language),
                                             view=stop_view(handle.chain_id, handle.language)))
        await self._watch(handle, opening, where)

    async def _surface_for(self, record: ChainRecord) -> DiscordSurface | None:
        if record.anchor.get("via") == VIA:
            return None  # written through an interaction whose token is gone with its process
        channel_id = int(record.thread or record.channel or 0)
        if not channel_id:
            return None
        channel = self._client().get_channel(channel_id)
        if channel is None:
            try:
                channel = await rest(self._client().fetch_channel(channel_id))
            except (discord.NotFound, discord.Forbidden):
                return None
        if not isinstance(channel, discord.abc.Messageable):
            return None
        return self._surface(channel, channel_id)

    # --- Stop -----------------------------------------------------------------------------

    async def on_stop(self, interaction: discord.Interaction[Any], key: str) -> None:
        result = await self.ponder.stop_anywhere(
            key, str(interaction.user.id), may_manage=interaction.permissions.manage_messages)
        language = await self.ponder.language_of(key)
        if result == "finished":
            await rest(interaction.response.send_message(
                say("already_finished", language), ephemeral=True))
        elif result == "not_allowed":
            await rest(interaction.response.send_message(
                say("only_asker_stops", language), ephemeral=True))
        else:
            # The chain's end edits the opening message (and removes the button).
            await rest(interaction.response.defer())

    async def on_feedback(self, interaction: discord.Interaction[Any], key: str,
                          vote: Vote) -> None:
        await press_feedback(self.ponder, interaction, key, vote)

    # --- follow-ups -----------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        client = self._client()
        thread = message.channel
        if message.author.bot or message.webhook_id is not None:
            return
        if not isinstance(thread, discord.Thread) or client.user is None:
            return
        if thread.owner_id != client.user.id:
            return  # only threads Ponder started
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        question = re.sub(rf"<@!?{client.user.id}>", "", message.content).strip()
        if not question:
            if not self.message_content:
                log.warning("a follow-up arrived without content (no Message Content intent)")
            return
        request = ChainRequest(PLATFORM, Question(question), str(message.author.id),
                               channel=str(thread.parent_id or thread.id), thread=str(thread.id),
                               workspace=str(message.guild.id if message.guild else ""))
        try:
            # Before anything public is posted, as /reason does: a refusal is one reply.
            admission = await self.ponder.follow_up(request)
        except Refused as exc:
            await self._reply(message, thread, f"⚠️ {exc.message}")
            return
        if admission is not None:
            self.tasks.spawn(self._follow_up(message, thread, request, admission),
                             name=f"discord-followup-{request.question.id}")

    async def _follow_up(self, message: discord.Message, thread: discord.Thread,
                         request: ChainRequest, admission: Admission) -> None:
        opening = Opening(say("follow_up_from", admission.language, who=message.author.mention),
                          channel=thread, limiter=self.limiters.get(thread.id))
        try:
            await self.limiters.posts(thread.id).acquire(urgent=True)
            try:
                control = await rest(message.reply(
                    content=text.with_status(opening.text,
                                             text.running_line(None, admission.language)),
                    view=stop_view(request.question.id, admission.language),
                    mention_author=False))
            except (discord.HTTPException, TimeoutError, aiohttp.ClientError) as exc:
                log.warning("could not answer a follow-up in %s: %s", thread.id, exc)
                return
            opening.message_id = control.id
            request = replace(request, anchor=opening.anchor(None))
            await self._run(request, self._surface(thread, thread.id), admission, opening,
                            None)
        finally:
            self.ponder.release(admission)  # a no-op once the chain has started

    async def _reply(self, message: discord.Message, thread: discord.Thread,
                     content: str) -> None:
        """A short answer to a message in a thread, paced with the thread's other posts."""
        await self.limiters.posts(thread.id).acquire(urgent=True)
        await self._quietly(rest(message.reply(content, mention_author=False)))

    # --- helpers --------------------------------------------------------------------------

    def _surface(self, channel: discord.abc.Messageable, channel_id: int) -> DiscordSurface:
        return DiscordSurface(channel, channel_id, self.limiters.get(channel_id),
                              self.limiters.posts(channel_id))

    def _messageable(self, channel_id: int) -> discord.abc.Messageable:
        channel = self._client().get_channel(channel_id)
        if isinstance(channel, discord.abc.Messageable):
            return channel
        return self._client().get_partial_messageable(channel_id)

    def _client(self) -> PonderClient:
        if self.client is None:
            raise RuntimeError("the Discord client is not running")
        return self.client

    async def _quietly(self, awaitable: Any) -> None:
        """A write whose failure must not end the chain's bookkeeping: logged, not raised."""
        try:
            await awaitable
        except (discord.HTTPException, TimeoutError, aiohttp.ClientError) as exc:
            log.warning("could not update an opening message: %s", exc)


def _parent_id(interaction: discord.Interaction[Any]) -> int:
    channel = interaction.channel
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return channel.parent_id
    return interaction.channel_id or 0


async def run_discord(ponder: Ponder, settings: Settings) -> None:
    """`ponder discord`: serve /reason until cancelled (the caller owns `ponder`)."""
    await DiscordBot(ponder, settings).run()


__all__ = ["DiscordBot", "PonderClient", "StopButton", "run_discord"]
