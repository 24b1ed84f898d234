"""The Discord front door: `/reason` opens a thread where each step is a message edited in place.

Only what is Discord's lives here: the client, the command, where a chain is shown (a thread
from the opening message, a forum post, or inline where threads are impossible), the Stop
button, follow-ups in a Ponder thread, and the opening message's summary. Pacing, splitting and
wording of the steps are the presenter's (`bot/presenter.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import aiohttp
import discord
from discord import app_commands

from adapters.discord import text
from adapters.discord.seams import point_discord_at
from adapters.discord.surface import (
    MAX_RATELIMIT_WAIT,
    REST_TIMEOUT,
    DiscordSurface,
    LimiterRegistry,
    RestObserver,
)
from adapters.discord.sync import sync_commands
from bot.config import Settings
from bot.events import Language, Question
from bot.presenter import Outcome
from bot.prompts import detect_language
from bot.ratelimit import RateLimiter
from bot.service import Admission, ChainHandle, ChainRequest, Ponder, Refused
from bot.store import ChainRecord

log = logging.getLogger(__name__)

BUSY = "I am still on the previous question here; press Stop or wait for its answer."
T = TypeVar("T")

PLATFORM = "discord"
TOKEN_LIFETIME = 14 * 60.0  # an interaction token lasts 15 min; stop using it a bit before
SETTLE_SECONDS = 15.0  # on shutdown, how long running chains get to write their last state
SYNC_TIMEOUT = 60.0
STOP_PREFIX = "ponder:stop:"

ModeChoice = Literal["chain", "native"]


class DiscordError(Exception):
    """The Discord front door cannot run (bad token, unreachable Discord); one readable line."""


# --- the Stop button -----------------------------------------------------------------------


class StopButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                 template=re.escape(STOP_PREFIX) + r"(?P<key>[0-9a-f]{1,64})"):
    """Stop on a running chain. Dynamic: it still answers after a restart (chain is gone)."""

    def __init__(self, key: str) -> None:
        super().__init__(discord.ui.Button(
            label="Stop", emoji="⏹️", style=discord.ButtonStyle.danger,
            custom_id=f"{STOP_PREFIX}{key}"))
        self.key = key

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any],
                             item: discord.ui.Item[Any], match: re.Match[str], /) -> StopButton:
        return cls(match["key"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client = interaction.client
        if isinstance(client, PonderClient):
            await client.bot.on_stop(interaction, self.key)


def stop_view(key: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(StopButton(key))
    return view


# --- one chain as Discord shows it ---------------------------------------------------------


@dataclass(eq=False)
class Opening:
    """The message a chain hangs from: the question, who asked, Stop, and at the end a summary.

    Edited through the interaction's webhook while its token is valid, else through the
    channel (the bot wrote the message, so it may edit it).
    """

    text: str
    channel: discord.abc.Messageable | None = None
    message_id: int | None = None
    interaction: discord.Interaction[Any] | None = None
    received: float = field(default_factory=time.monotonic)
    limiter: RateLimiter | None = None

    def token_valid(self) -> bool:
        return (self.interaction is not None
                and time.monotonic() - self.received < TOKEN_LIFETIME)

    async def show(self, line: str, *, view: discord.ui.View | None = None) -> None:
        content = text.with_status(self.text, line)
        if self.token_valid() and self.interaction is not None:
            try:
                await _rest(self.interaction.edit_original_response(content=content, view=view))
                return
            except discord.HTTPException as exc:
                if self.channel is None or self.message_id is None:
                    raise
                log.info("interaction token refused (%s); editing through the channel", exc)
        if self.channel is None or self.message_id is None:
            return
        if self.limiter is not None:
            await self.limiter.acquire(urgent=True)
        message = discord.PartialMessage(channel=self.channel, id=self.message_id)  # type: ignore[arg-type]
        await _rest(message.edit(content=content, view=view))


@dataclass(eq=False)
class Run:
    key: str
    asker_id: int
    place_id: int
    where: str | None  # a mention of the thread or post, for summary lines
    opening: Opening
    language: Language
    handle: ChainHandle | None = None
    stop_requested: bool = False  # Stop pressed before the chain was submitted
    admission: Admission | None = None  # the asker's slot, held while the thread opens

    def release(self) -> None:
        """Give the asker's slot back if the chain never started (a no-op once it has)."""
        if self.admission is not None:
            self.admission.release()


# --- the client ----------------------------------------------------------------------------


class PonderClient(discord.Client):
    """discord.py's client with Ponder's command tree; events go to `DiscordBot`."""

    def __init__(self, bot: DiscordBot, intents: discord.Intents, **options: Any) -> None:
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(),
                         **options)
        self.bot = bot
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = self._on_tree_error  # type: ignore[method-assign]
        _add_commands(self.tree, bot)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(StopButton)
        await self.bot.sync(self)

    async def on_ready(self) -> None:
        log.info("Discord: logged in as %s (%s guilds)", self.user, len(self.guilds))
        self.bot.on_ready()

    async def on_message(self, message: discord.Message) -> None:
        await self.bot.on_message(message)

    async def _on_tree_error(self, interaction: discord.Interaction[Any],
                             error: app_commands.AppCommandError) -> None:
        log.error("command failed", exc_info=error)
        with contextlib.suppress(discord.HTTPException, TimeoutError):
            message = "⚠️ Something went wrong on Ponder's side; please try again."
            if interaction.response.is_done():
                await _rest(interaction.edit_original_response(content=message, view=None))
            else:
                await _rest(interaction.response.send_message(message, ephemeral=True))


def _add_commands(tree: app_commands.CommandTree[Any], bot: DiscordBot) -> None:
    @tree.command(name="reason", description="Think a question through step by step, "
                                             "one message per step, in a thread")
    @app_commands.describe(
        question="What should Ponder think about?",
        mode="chain: one JSON step at a time (default) · native: the model's own reasoning",
    )
    async def reason(interaction: discord.Interaction[Any], question: str,
                     mode: ModeChoice | None = None) -> None:
        await bot.on_reason(interaction, question, mode)


# --- the front door ------------------------------------------------------------------------


class DiscordBot:
    """Everything Ponder does on Discord. `await run()` serves until cancelled."""

    def __init__(self, ponder: Ponder, settings: Settings, *,
                 client_options: dict[str, Any] | None = None,
                 limiters: LimiterRegistry | None = None) -> None:
        self.ponder = ponder
        self.settings = settings
        self.client_options = client_options or {}
        self.limiters = limiters if limiters is not None else LimiterRegistry()
        self.observer = RestObserver(self.limiters)
        self.runs: dict[str, Run] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self.synced: str | None = None  # "guilds", "global", "unchanged", "failed"
        self.client: PonderClient | None = None
        self.message_content = True
        self._explained: set[int] = set()
        self._recovered = False

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        token = self.settings.discord_token
        if token is None or not token.get_secret_value().strip():
            raise DiscordError("DISCORD_TOKEN is not set")
        restore = point_discord_at(self.settings.discord_api_url,
                                   self.settings.discord_gateway_url)
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
            raise DiscordError(f"Discord refused DISCORD_TOKEN: {exc}") from exc
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise DiscordError(
                f"cannot reach Discord at {self.settings.discord_api_url}: {exc!r}") from exc
        finally:
            restore()

    async def _serve(self, token: str, intents: discord.Intents) -> None:
        options = {"max_ratelimit_timeout": MAX_RATELIMIT_WAIT, "max_messages": None,
                   "http_trace": self.observer.trace_config(), **self.client_options}
        client = self.client = PonderClient(self, intents, **options)
        async with client:  # closes the client's session and gateway on the way out
            try:
                # login() also runs setup_hook, which syncs the commands under SYNC_TIMEOUT.
                async with asyncio.timeout(REST_TIMEOUT + SYNC_TIMEOUT):
                    await client.login(token)
                await client.connect(reconnect=True)
            finally:
                await self._settle()

    async def _settle(self) -> None:
        """Let running chains write their last state while the client is still open."""
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            _, pending_set = await asyncio.wait(pending, timeout=SETTLE_SECONDS)
            for task in pending_set:
                task.cancel()
            await asyncio.gather(*pending_set, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Discord task %s failed", task.get_name(), exc_info=task.exception())

    def on_ready(self) -> None:
        if not self._recovered:  # READY comes again after a reconnect; recover once
            self._recovered = True
            self._spawn(self.recover(), name="discord-recover")
        self.ready.set()

    async def sync(self, client: PonderClient) -> None:
        assert client.application_id is not None
        try:
            async with asyncio.timeout(SYNC_TIMEOUT):
                self.synced = await sync_commands(client.tree, client.application_id,
                                                  self.settings.discord_guild_ids,
                                                  self.ponder.store)
        except (discord.HTTPException, TimeoutError) as exc:
            # The commands Discord already has keep working; say so and carry on.
            self.synced = "failed"
            log.error("could not sync /reason with Discord (%s); serving what is registered",
                      exc)

    # --- /reason --------------------------------------------------------------------------

    async def on_reason(self, interaction: discord.Interaction[Any], question: str,
                        mode: str | None) -> None:
        received = time.monotonic()
        user = interaction.user
        q = Question(question.strip(), mode=mode)
        probe = ChainRequest(PLATFORM, q, str(user.id), channel=str(_parent_id(interaction)),
                             workspace=str(interaction.guild_id or ""))
        if isinstance(interaction.channel, discord.Thread) and self._busy(interaction.channel.id):
            # /reason inside a thread answers right there: one chain at a time, as follow-ups.
            await _rest(interaction.response.send_message(BUSY, ephemeral=True))
            return
        try:
            # Counted now: a second /reason while this one's thread opens is refused privately.
            admission = self.ponder.admit(probe)
        except Refused as exc:
            await _rest(interaction.response.send_message(f"⚠️ {exc.message}", ephemeral=True))
            return
        try:
            # Within 3 s of the interaction: everything after this may take its time.
            await _rest(interaction.response.defer(thinking=True))
        except BaseException:
            admission.release()
            raise
        opening = Opening(text.opening(q.text, user.mention), interaction=interaction,
                          received=received)
        # Registered before the Stop button is shown, so an early press is not lost.
        run = self.runs[q.id] = Run(q.id, user.id, 0, None, opening, detect_language(q.text),
                                    admission=admission)
        self._spawn(self._start(interaction, q, run), name=f"discord-reason-{q.id}")

    async def _start(self, interaction: discord.Interaction[Any], q: Question,
                     run: Run) -> None:
        try:
            try:
                surface, request = await self._place(interaction, q, run)
            except Exception as exc:
                self.runs.pop(q.id, None)
                log.exception("could not start a chain for /reason")
                with contextlib.suppress(Exception):
                    await run.opening.show(f"⚠️ Could not start: {_describe(exc)}")
                return
            await self._run(run, surface, request)
        finally:
            run.release()

    async def _place(self, interaction: discord.Interaction[Any], q: Question,
                     run: Run) -> tuple[DiscordSurface, ChainRequest]:
        """Decide where the steps go (thread, forum post, inline) and open it."""
        opening = run.opening
        channel = interaction.channel
        if channel is None:
            channel = self._client().get_partial_messageable(
                interaction.channel_id or 0, guild_id=interaction.guild_id)
        perms = interaction.app_permissions
        can_thread = perms.create_public_threads and perms.send_messages_in_threads
        history: tuple[Any, ...] = ()
        thread: discord.Thread | None = None
        note: str | None = None

        if isinstance(channel, discord.ForumChannel) and can_thread:
            post = await self._forum_post(channel, q, opening)
            thread = post
        elif isinstance(channel, discord.TextChannel) and can_thread:
            message = await _rest(interaction.edit_original_response(
                content=text.with_status(opening.text, text.running_line(None)),
                view=stop_view(q.id)))
            opening.message_id, opening.channel = message.id, channel
            opening.limiter = self.limiters.get(channel.id)
            try:
                thread = await _rest(message.create_thread(
                    name=text.thread_name(q.text), auto_archive_duration=1440))
            except (discord.HTTPException, discord.RateLimited) as exc:
                # Thread creation has tight, sometimes minutes-long limits of its own.
                note = f"I could not start a thread here ({_describe(exc)}), so I answer here."
        elif isinstance(channel, discord.Thread):
            note = "We are in a thread already, so I answer right here."
            history = await self.ponder.history(PLATFORM, str(channel.id))
        elif isinstance(channel, discord.TextChannel | discord.ForumChannel):
            note = ("I may not start threads in this channel (Create Public Threads and Send "
                    "Messages in Threads), so I answer right here.")
        else:
            note = "Threads are not available here, so I answer right here."

        if thread is not None:
            place: discord.abc.Messageable = thread
            place_id, where = thread.id, thread.mention
            if opening.channel is not None and not isinstance(channel, discord.ForumChannel):
                await opening.show(text.running_line(where), view=stop_view(q.id))
        else:
            place, place_id, where = channel, channel.id, None  # type: ignore[assignment]
            if note is not None and await self._first_explanation(place_id):
                opening.text = text.opening(q.text, interaction.user.mention, note)
            message = await _rest(interaction.edit_original_response(
                content=text.with_status(opening.text, text.running_line(None)),
                view=stop_view(q.id)))
            opening.message_id, opening.channel = message.id, place
            opening.limiter = self.limiters.get(place_id)

        q = Question(q.text, id=q.id, history=history, mode=q.mode)
        request = ChainRequest(PLATFORM, q, str(interaction.user.id),
                               channel=str(_parent_id(interaction)), thread=str(place_id),
                               workspace=str(interaction.guild_id or ""))
        run.place_id, run.where = place_id, where
        surface = self._surface(place, place_id)
        return surface, request

    async def _forum_post(self, forum: discord.ForumChannel, q: Question,
                          opening: Opening) -> discord.Thread:
        created = await _rest(forum.create_thread(
            name=text.thread_name(q.text), auto_archive_duration=1440,
            content=text.with_status(opening.text, text.running_line(None)),
            view=stop_view(q.id)))
        post, first = created.thread, created.message
        # The deferred answer points at the post; the post's first message is the opening.
        interaction = opening.interaction
        if interaction is not None:
            await _rest(interaction.edit_original_response(content=f"🧵 {post.mention}"))
        opening.interaction = None
        opening.channel, opening.message_id = post, first.id
        opening.limiter = self.limiters.get(post.id)
        return post

    async def _first_explanation(self, place_id: int) -> bool:
        """True the first time inline answering is explained in a place (remembered)."""
        if place_id in self._explained:
            return False
        self._explained.add(place_id)
        key = f"discord:explained:{place_id}"
        with contextlib.suppress(Exception):
            if await self.ponder.store.get(key):
                return False
            await self.ponder.store.put(key, "1")
        return True

    # --- running and finishing ------------------------------------------------------------

    async def _run(self, run: Run, surface: DiscordSurface, request: ChainRequest) -> None:
        try:
            run.handle = self.ponder.submit(request, surface, run.admission)
        except Refused as exc:
            self.runs.pop(run.key, None)
            await self._quietly(run.opening.show(f"⚠️ {exc.message}"))
            return
        if run.stop_requested:
            # Pressed while the thread was opening. Submitted all the same: the service then
            # says "stopped" in the chain's language and records the chain, which makes the
            # thread Ponder's, so the asker can still follow up in it.
            run.handle.cancel(by="user")
        await self._remember_opening(run)
        await self._watch(run)

    async def _watch(self, run: Run) -> None:
        """Wait for the chain; then the opening message gets its one-line summary."""
        assert run.handle is not None
        self.runs[run.key] = run
        outcome: Outcome | None = None
        error: str | None = None
        try:
            outcome = await run.handle.wait()
        except Exception as exc:
            log.exception("chain %s crashed", run.key)
            error = f"Something went wrong while thinking: {_describe(exc)}"
        finally:
            self.runs.pop(run.key, None)
        if outcome is not None and outcome.failure is not None and (
                outcome.failure.reason == "interrupted"):
            # Stopped by a shutdown: the service resumes it when Ponder is back.
            await self._quietly(run.opening.show(text.interrupted_line(run.where)))
            return
        line = text.outcome_line(outcome, error, run.language, run.where)
        await self._quietly(run.opening.show(line))
        with contextlib.suppress(Exception):
            await self.ponder.store.delete(_opening_key(run.key))  # only a resume needs it

    async def _remember_opening(self, run: Run) -> None:
        """Where the opening message is, so a chain resumed after a restart can update it."""
        opening = run.opening
        channel_id = getattr(opening.channel, "id", None)
        if channel_id is None or opening.message_id is None:
            return
        record = {"channel": channel_id, "message": opening.message_id, "text": opening.text,
                  "where": run.where, "place": run.place_id}
        with contextlib.suppress(Exception):
            await self.ponder.store.put(_opening_key(run.key), json.dumps(record))

    # --- restart recovery -----------------------------------------------------------------

    async def recover(self) -> None:
        """Resume the chains a previous process left running (the service does the resuming;
        this finds their threads and opening messages again)."""
        handles = await self.ponder.recover(PLATFORM, self._surface_for)
        for handle in handles:
            request = handle.request
            place_id = int(request.thread or 0)
            opening, where = await self._stored_opening(handle.chain_id)
            run = Run(handle.chain_id, int(request.asker or 0), place_id, where, opening,
                      detect_language(request.question.text), handle)
            if opening.text:
                await self._quietly(opening.show(text.running_line(where),
                                                 view=stop_view(run.key)))
            self._spawn(self._watch(run), name=f"discord-resumed-{handle.chain_id}")
        if handles:
            log.info("resumed %d chain(s) left running by the previous process", len(handles))

    async def _stored_opening(self, chain_id: str) -> tuple[Opening, str | None]:
        """A resumed chain's opening message and thread mention, as `_remember_opening` kept
        them; an empty Opening where there is none or it cannot be read."""
        try:
            stored = await self.ponder.store.get(_opening_key(chain_id))
            if not stored:
                return Opening(""), None
            record = json.loads(stored)
            channel_id = int(record["channel"])
            opening = Opening(record["text"], message_id=int(record["message"]),
                              channel=self._messageable(channel_id),
                              limiter=self.limiters.get(channel_id))
            return opening, record.get("where")
        except Exception:
            # One unreadable record must not leave the other resumed chains unwatched: this
            # chain still runs and answers in its thread, only its opening stays as it was.
            log.exception("chain %s: its opening message cannot be found again", chain_id)
            return Opening(""), None

    async def _surface_for(self, record: ChainRecord) -> DiscordSurface | None:
        channel_id = int(record.thread or record.channel or 0)
        if not channel_id:
            return None
        channel = self._client().get_channel(channel_id)
        if channel is None:
            try:
                channel = await _rest(self._client().fetch_channel(channel_id))
            except (discord.NotFound, discord.Forbidden):
                return None
        if not isinstance(channel, discord.abc.Messageable):
            return None
        return self._surface(channel, channel_id)

    def _messageable(self, channel_id: int) -> discord.abc.Messageable:
        channel = self._client().get_channel(channel_id)
        if isinstance(channel, discord.abc.Messageable):
            return channel
        return self._client().get_partial_messageable(channel_id)

    async def _quietly(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except (discord.HTTPException, TimeoutError, aiohttp.ClientError) as exc:
            log.warning("could not update an opening message: %s", exc)

    # --- Stop -----------------------------------------------------------------------------

    async def on_stop(self, interaction: discord.Interaction[Any], key: str) -> None:
        run = self.runs.get(key)
        if run is None or (run.handle is not None and run.handle.done()):
            await _rest(interaction.response.send_message(
                "This chain has already finished.", ephemeral=True))
            return
        permissions = interaction.permissions
        if interaction.user.id != run.asker_id and not permissions.manage_messages:
            await _rest(interaction.response.send_message(
                "Only the person who asked, or someone who may manage messages, can stop this.",
                ephemeral=True))
            return
        if run.handle is None:
            run.stop_requested = True  # still opening its thread: stopped once submitted
        else:
            run.handle.cancel(by="user")
        # The chain's end edits the opening message (and removes the button).
        await _rest(interaction.response.defer())

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
        asker = await self.ponder.thread_asker(PLATFORM, str(thread.id))
        if asker != str(message.author.id):
            return
        question = re.sub(rf"<@!?{client.user.id}>", "", message.content).strip()
        if not question:
            if not self.message_content:
                log.warning("a follow-up arrived without content (no Message Content intent)")
            return
        if self._busy(thread.id):
            await self._reply(message, thread, BUSY)
            return
        q = Question(question)
        probe = ChainRequest(PLATFORM, q, str(message.author.id),
                             channel=str(thread.parent_id or thread.id), thread=str(thread.id),
                             workspace=str(message.guild.id if message.guild else ""))
        try:
            # Before anything public is posted, as /reason does: a refusal is one reply.
            admission = self.ponder.admit(probe)
        except Refused as exc:
            await self._reply(message, thread, f"⚠️ {exc.message}")
            return
        # Registered before anything is awaited: a second message finds this one busy.
        opening = Opening(f"↪️ Follow-up from {message.author.mention}", channel=thread,
                          limiter=self.limiters.get(thread.id))
        run = self.runs[q.id] = Run(q.id, message.author.id, thread.id, None, opening,
                                    detect_language(q.text), admission=admission)
        self._spawn(self._follow_up(message, thread, run, probe),
                    name=f"discord-followup-{q.id}")

    async def _follow_up(self, message: discord.Message, thread: discord.Thread, run: Run,
                         probe: ChainRequest) -> None:
        opening = run.opening
        q = probe.question
        try:
            try:
                history = await self.ponder.history(PLATFORM, str(thread.id))
            except Exception:
                self.runs.pop(q.id, None)
                raise
            await self.limiters.posts(thread.id).acquire(urgent=True)
            try:
                control = await _rest(message.reply(
                    content=text.with_status(opening.text, text.running_line(None)),
                    view=stop_view(q.id), mention_author=False))
            except (discord.HTTPException, TimeoutError) as exc:
                self.runs.pop(q.id, None)
                log.warning("could not answer a follow-up in %s: %s", thread.id, exc)
                return
            opening.message_id = control.id
            request = replace(probe, question=Question(q.text, id=q.id, history=history))
            await self._run(run, self._surface(thread, thread.id), request)
        finally:
            run.release()

    def _busy(self, place_id: int) -> bool:
        """Whether a chain is answering in this thread or channel now."""
        return bool(place_id) and any(r.place_id == place_id for r in self.runs.values())

    async def _reply(self, message: discord.Message, thread: discord.Thread,
                     content: str) -> None:
        """A short answer to a message in a thread, paced with the thread's other posts."""
        await self.limiters.posts(thread.id).acquire(urgent=True)
        await self._quietly(_rest(message.reply(content, mention_author=False)))

    # --- helpers --------------------------------------------------------------------------

    def _surface(self, channel: discord.abc.Messageable, channel_id: int) -> DiscordSurface:
        return DiscordSurface(channel, channel_id, self.limiters.get(channel_id),
                              self.limiters.posts(channel_id))

    def _client(self) -> PonderClient:
        if self.client is None:
            raise DiscordError("the Discord client is not running")
        return self.client


def _opening_key(chain_id: str) -> str:
    return f"discord:opening:{chain_id}"


def _parent_id(interaction: discord.Interaction[Any]) -> int:
    channel = interaction.channel
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return channel.parent_id
    return interaction.channel_id or 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, discord.RateLimited):
        return f"Discord asks to wait {exc.retry_after:.0f} s"
    if isinstance(exc, discord.Forbidden):
        return "missing permission"
    if isinstance(exc, discord.HTTPException):
        return f"Discord said {exc.status}: {exc.text or exc.response.reason}"
    if isinstance(exc, TimeoutError):
        return "Discord did not answer in time"
    return str(exc) or type(exc).__name__


async def _rest(awaitable: Awaitable[T], seconds: float = REST_TIMEOUT) -> T:
    """One REST call with a deadline (discord.py's own retries happen inside it)."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def run_discord(ponder: Ponder, settings: Settings) -> None:
    """`ponder discord`: serve /reason until cancelled (the caller owns `ponder`)."""
    await DiscordBot(ponder, settings).run()


__all__ = ["DiscordBot", "DiscordError", "PonderClient", "StopButton", "run_discord"]
