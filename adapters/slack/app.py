"""The Slack front door: slack-bolt's `AsyncApp`, its triggers, and the process around them.

Triggers:
- `app_mention` in a channel -> a chain answered in the mention's thread (its `thread_ts`, or
  its own `ts` when it starts one); in an existing thread it carries the thread's history.
- a DM to the bot (`message`, `channel_type: im`) -> answered in a thread under that DM.
- a later message by the asker in a Ponder thread, no mention needed -> a follow-up with the
  thread's earlier questions and answers as history.
The bot's own messages, edits (`message_changed` and other subtypes) and other bots are ignored;
events Slack delivers again (`X-Slack-Retry-Num`) are recognised by `event_id` and dropped.

`run_slack` serves it over Socket Mode (`SLACK_APP_TOKEN`) or HTTP (`/slack/events`, signatures
verified by bolt: a bad or stale signature gets 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.surface import (
    PLATFORM,
    SlackCallError,
    SlackLimits,
    SlackSurface,
    Workspace,
    call,
    make_client,
    new_session,
)
from bot.config import Settings, SettingsError
from bot.events import Question, Turn
from bot.service import ChainHandle, ChainRequest, Ponder, Refused
from bot.store import ChainRecord

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
THINKING_STATUS = "is thinking…"
THINKING, DONE, FAILED = "hourglass_flowing_sand", "white_check_mark", "x"
INTERNAL_ERROR = ("⚠️ Something went wrong on Ponder's side while answering this. "
                  "Please try again in a moment.")
DEDUP_SECONDS = 3600.0  # Slack retries for minutes; keep ids well beyond that
LAST_WORDS = 5.0  # seconds a stopped chain gets, at shutdown, to write its last state


# --- de-duplication ------------------------------------------------------------------------


class SeenEvents(Protocol):
    """Remembers event ids; `first_sight` is True only for an id not seen before."""

    async def first_sight(self, event_id: str) -> bool: ...


class StoreSeenEvents:
    """Event ids kept in Ponder's store, so a redelivery is recognised across a restart."""

    def __init__(self, ponder: Ponder, keep_seconds: float = DEDUP_SECONDS) -> None:
        self.ponder = ponder
        self.keep_seconds = keep_seconds

    async def first_sight(self, event_id: str) -> bool:
        return await self.ponder.store.first_sight(f"slack:{event_id}", self.keep_seconds)


class MemorySeenEvents:
    """Event ids kept in memory (tests, or a store that cannot be reached)."""

    def __init__(self, keep_seconds: float = DEDUP_SECONDS) -> None:
        self.keep_seconds = keep_seconds
        self._seen: dict[str, float] = {}

    async def first_sight(self, event_id: str) -> bool:
        now = time.monotonic()
        if len(self._seen) > 10_000:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.keep_seconds}
        seen = self._seen.get(event_id)
        if seen is not None and now - seen < self.keep_seconds:
            return False
        self._seen[event_id] = now
        return True


# --- question text -------------------------------------------------------------------------

_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_LINK = re.compile(r"<((?:https?://|mailto:)[^>|]+)(?:\|([^>]*))?>")


def question_text(text: str, bot_user_id: str) -> str:
    """What the person asked, as plain text: the bot's mention removed, Slack markup undone."""
    text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text) if bot_user_id else text
    text = _MENTION.sub(r"@\1", text)
    text = _CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _SPECIAL.sub(r"@\1", text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]+", " ", text).strip()


def thread_key(channel: str, thread_ts: str) -> str:
    """How a Slack thread is named in the store (a `ts` is unique within its channel)."""
    return f"{channel}:{thread_ts}"


# --- the bot -------------------------------------------------------------------------------


class SlackBot:
    """One Slack app (one bot token, one workspace) in front of a `Ponder` service."""

    def __init__(
        self,
        ponder: Ponder,
        settings: Settings,
        *,
        limits: SlackLimits | None = None,
        streaming: bool = True,
        seen: SeenEvents | None = None,
    ) -> None:
        if settings.slack_bot_token is None:
            raise SettingsError("setting SLACK_BOT_TOKEN: needed for Slack (xoxb-…)")
        self.ponder = ponder
        self.settings = settings
        self.limits = limits or SlackLimits()
        self.streaming = streaming
        self.seen: SeenEvents = seen or StoreSeenEvents(ponder)
        self.client: AsyncWebClient = make_client(
            settings.slack_bot_token.get_secret_value(), settings.slack_api_url, self.limits,
            self._rate_limited,
        )
        secret = settings.slack_signing_secret
        self.app = AsyncApp(
            name="ponder",
            client=self.client,  # carries the bot token
            signing_secret=secret.get_secret_value() if secret is not None else "",
            request_verification_enabled=secret is not None,
            process_before_response=False,
        )
        self.app.middleware(self._deduplicate)
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.team_id = ""
        self.bot_user_id = ""
        self.workspaces: dict[str, Workspace] = {}
        self.chains: dict[str, ChainHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self.http_port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool and learn who the bot is (fails fast on a bad token)."""
        self._session = new_session(self.limits)
        self.client.session = self._session
        try:
            auth = await call("auth.test", self.client.auth_test())
        except SlackCallError as exc:
            await self._close_session()
            raise SettingsError(
                f"setting SLACK_BOT_TOKEN: Slack refused it ({exc.error})"
                if exc.error in ("invalid_auth", "not_authed", "account_inactive",
                                 "token_revoked")
                else f"Slack could not be reached at {self.settings.slack_api_url} ({exc.error})"
            ) from exc
        self.team_id = str(auth.get("team_id") or "")
        self.bot_user_id = str(auth.get("user_id") or "")
        self.workspace(self.team_id)
        log.info("Slack: signed in as %s in %s (%s)", auth.get("user"), auth.get("team"),
                 self.team_id)

    async def recover(self) -> list[ChainHandle]:
        """Resume the Slack chains a dead process left running (the service asks for each
        thread's surface; a thread that cannot be named any more is closed in the store)."""
        handles = await self.ponder.recover(PLATFORM, self._surface_for)
        for handle in handles:
            self._track(handle)
            self.spawn(self._resumed(handle), name=f"slack-resumed-{handle.chain_id}")
        if handles:
            log.info("Slack: resumed %d interrupted chain(s)", len(handles))
        return handles

    async def _surface_for(self, record: ChainRecord) -> SlackSurface | None:
        channel, _, thread_ts = record.thread.partition(":")
        if not channel or not thread_ts:
            return None
        return SlackSurface(self.client, self.workspace(record.workspace or self.team_id),
                            channel, thread_ts, asker=record.asker)

    async def _resumed(self, handle: ChainHandle) -> None:
        """A resumed chain shows "thinking" on its question again, and clears it at the end
        (the dead process could not)."""
        request = handle.request
        channel, _, thread_ts = request.thread.partition(":")
        message_ts = thread_ts
        with contextlib.suppress(Exception):
            message_ts = await self.ponder.store.get(_question_key(handle.chain_id)) or thread_ts
        status = _Status(self.client, self.workspace(request.workspace or self.team_id),
                         channel, thread_ts, message_ts)
        await status.begin()
        await self._until_done(handle, status, channel, thread_ts)

    def _track(self, handle: ChainHandle) -> None:
        self.chains[handle.chain_id] = handle
        handle.task.add_done_callback(lambda _: self.chains.pop(handle.chain_id, None))

    async def serve_http(self, port: int = 3000, host: str = "0.0.0.0") -> None:
        """Serve the Events API at `/slack/events` until cancelled."""
        if self.settings.slack_signing_secret is None:
            raise SettingsError("setting SLACK_SIGNING_SECRET: needed to serve Slack over HTTP")
        web_app = self.app.web_app(path=EVENTS_PATH, port=port)
        web_app.router.add_get("/healthz", _healthz)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses = self._runner.addresses  # port=0 binds a free port: this says which
        self.http_port = int(addresses[0][1]) if addresses else port
        log.info("Slack events served at http://%s:%s%s", host, self.http_port, EVENTS_PATH)

    async def serve_socket(self) -> None:
        """Connect over Socket Mode (no public URL needed)."""
        token = self.settings.slack_app_token
        if token is None:
            raise SettingsError("setting SLACK_APP_TOKEN: needed for Socket Mode (xapp-…)")
        self._socket = AsyncSocketModeHandler(self.app, token.get_secret_value(),
                                              web_client=self.client)
        await self._socket.connect_async()
        log.info("Slack: connected over Socket Mode")

    async def close(self, grace: float = 10.0) -> None:
        """Stop taking events, let running chains write their last words, release it all."""
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close_async()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # A chain still running (cancelled by the service on shutdown) needs the client to
        # show that it stopped, and its question's status cleared; give it a moment before
        # the connections go. However short the grace, these last words get LAST_WORDS s:
        # an edit may have to wait out the platform's edit interval.
        last_words = max(grace, LAST_WORDS)
        running = [h.task for h in self.chains.values() if not h.done()]
        if running:
            await asyncio.wait(running, timeout=last_words)
        trackers = [t for t in self._tasks if not t.done()]
        if trackers:
            await asyncio.wait(trackers, timeout=LAST_WORDS)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_session()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self.client.session = None

    async def idle(self) -> None:
        """Wait until every event handled so far has finished (tests and benchmarks bound it
        with `asyncio.timeout`)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task this bot owns (awaited or cancelled on close)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Slack task %s failed", task.get_name(), exc_info=task.exception())

    def workspace(self, team_id: str) -> Workspace:
        ws = self.workspaces.get(team_id)
        if ws is None:
            ws = self.workspaces[team_id] = Workspace(team_id, self.limits,
                                                      streaming=self.streaming)
        return ws

    def _rate_limited(self, method: str, seconds: float, channel: str | None) -> None:
        self.workspace(self.team_id).rate_limited(method, seconds, channel)

    # --- bolt listeners --------------------------------------------------------------------

    async def _deduplicate(self, body: dict[str, Any], resp: BoltResponse,
                           next: Callable[[], Awaitable[None]]) -> BoltResponse:
        event_id = body.get("event_id")
        if body.get("type") == "event_callback" and isinstance(event_id, str):
            try:
                first = await self.seen.first_sight(event_id)
            except Exception:  # the store is down: better a rare double than a lost question
                log.exception("could not check event %s for a redelivery", event_id)
                first = True
            if not first:
                log.info("Slack delivered event %s again: ignored", event_id)
                return BoltResponse(status=200, body="")
        await next()
        return resp

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        if _from_a_bot(event) or event.get("user") in (None, self.bot_user_id):
            return
        channel, ts = str(event["channel"]), str(event["ts"])
        thread_ts = str(event.get("thread_ts") or ts)
        self.spawn(self._ask(
            team=str(body.get("team_id") or event.get("team") or self.team_id),
            channel=channel, user=str(event["user"]), message_ts=ts, thread_ts=thread_ts,
            text=str(event.get("text") or ""), in_thread="thread_ts" in event,
        ), name=f"slack-mention-{ts}")

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("subtype") is not None or _from_a_bot(event):
            return  # edits, deletions, joins, bots (ourselves included)
        user = event.get("user")
        if user is None or user == self.bot_user_id:
            return
        text = str(event.get("text") or "")
        if self.bot_user_id and f"<@{self.bot_user_id}" in text and \
                event.get("channel_type") != "im":
            return  # a mention: `app_mention` answers it
        channel, ts = str(event["channel"]), str(event["ts"])
        team = str(body.get("team_id") or event.get("team") or self.team_id)
        if event.get("channel_type") == "im":
            thread_ts = str(event.get("thread_ts") or ts)
            self.spawn(self._ask(team=team, channel=channel, user=str(user), message_ts=ts,
                                 thread_ts=thread_ts, text=text,
                                 in_thread="thread_ts" in event),
                       name=f"slack-dm-{ts}")
        elif event.get("thread_ts"):
            self.spawn(self._follow_up(team=team, channel=channel, user=str(user),
                                       message_ts=ts, thread_ts=str(event["thread_ts"]),
                                       text=text),
                       name=f"slack-followup-{ts}")

    # --- chains ----------------------------------------------------------------------------

    async def _follow_up(self, *, team: str, channel: str, user: str, message_ts: str,
                         thread_ts: str, text: str) -> None:
        """A reply in a thread: a follow-up only in a Ponder thread, and only by its asker."""
        asker = await self.ponder.thread_asker(PLATFORM, thread_key(channel, thread_ts))
        if asker is None or asker != user:
            return
        await self._ask(team=team, channel=channel, user=user, message_ts=message_ts,
                        thread_ts=thread_ts, text=text, in_thread=True)

    async def _ask(self, *, team: str, channel: str, user: str, message_ts: str,
                   thread_ts: str, text: str, in_thread: bool) -> None:
        ws = self.workspace(team)
        key = thread_key(channel, thread_ts)
        history: tuple[Turn, ...] = ()
        if in_thread:
            history = await self.ponder.history(PLATFORM, key)
        question = Question(question_text(text, self.bot_user_id), history=history)
        request = ChainRequest(PLATFORM, question, asker=user, channel=channel, thread=key,
                               workspace=team)
        surface = SlackSurface(self.client, ws, channel, thread_ts, asker=user)
        try:
            handle = self.ponder.submit(request, surface)
        except Refused as refusal:
            await self._say(channel, thread_ts, f"🙅 {refusal.message}")
            return
        self._track(handle)
        if message_ts != thread_ts:
            # A restart finds the question's status and reaction by this (else: thread_ts).
            try:
                await self.ponder.store.put(_question_key(handle.chain_id), message_ts)
            except Exception:
                log.exception("could not record where the question is")
        status = _Status(self.client, ws, channel, thread_ts, message_ts)
        await status.begin()
        await self._until_done(handle, status, channel, thread_ts)

    async def _until_done(self, handle: ChainHandle, status: _Status, channel: str,
                          thread_ts: str) -> None:
        ok: bool | None = False
        try:
            outcome = await handle.wait()
            ok = outcome.answer is not None and outcome.failure is None
            if handle.stopped_by == "shutdown" or (
                    outcome.failure is not None and outcome.failure.reason == "interrupted"):
                ok = None  # neither done nor failed: the next start picks it up again
        except asyncio.CancelledError:
            if not handle.task.cancelled():
                raise  # this tracker is being stopped, not the chain
            if handle.stopped_by == "shutdown":
                ok = None
        except Exception:
            log.exception("chain %s crashed", handle.chain_id)
            await self._say(channel, thread_ts, INTERNAL_ERROR)
        if handle.done():
            await status.end(ok)
            if ok is not None and status.message_ts != thread_ts:
                # Over for good: where its question was is not needed by any restart.
                with contextlib.suppress(Exception):
                    await self.ponder.store.delete(_question_key(handle.chain_id))

    async def _say(self, channel: str, thread_ts: str, text: str) -> None:
        """One plain reply in the thread (refusals, errors); failures are only logged."""
        try:
            await call("chat.postMessage", self.client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=text,
                unfurl_links=False, unfurl_media=False,
            ))
        except SlackCallError as exc:
            log.warning("could not reply in %s/%s: %s", channel, thread_ts, exc)


class _Status:
    """"Thinking" on the question while a chain runs: the assistant status where the workspace
    allows it, else an ⏳ reaction replaced by ✅ or ❌ at the end."""

    def __init__(self, client: AsyncWebClient, ws: Workspace, channel: str, thread_ts: str,
                 message_ts: str) -> None:
        self.client, self.ws = client, ws
        self.channel, self.thread_ts, self.message_ts = channel, thread_ts, message_ts
        self.mode: str | None = None

    async def begin(self) -> None:
        """Show "thinking" (again, after a restart: an ⏳ already there is taken over)."""
        if self.ws.status_mode == "assistant":
            try:
                await call("assistant.threads.setStatus", self.client.assistant_threads_setStatus(
                    channel_id=self.channel, thread_ts=self.thread_ts, status=THINKING_STATUS,
                ))
                self.mode = "assistant"
                return
            except SlackCallError as exc:
                log.info("assistant status not available in %s (%s): using reactions",
                         self.ws.team_id, exc.error)
                self.ws.status_mode = "reactions"
        if await self._react("reactions.add", THINKING) in (None, "already_reacted"):
            self.mode = "reactions"

    async def end(self, ok: bool | None) -> None:
        """✅ or ❌ for a chain that ended; `None` (stopped for a restart) only clears it."""
        if self.mode == "assistant":
            with contextlib.suppress(SlackCallError):
                await call("assistant.threads.setStatus", self.client.assistant_threads_setStatus(
                    channel_id=self.channel, thread_ts=self.thread_ts, status="",
                ))
        elif self.mode == "reactions":
            await self._react("reactions.remove", THINKING)
            if ok is not None:
                await self._react("reactions.add", DONE if ok else FAILED)

    async def _react(self, method: str, name: str) -> str | None:
        """None when done, else Slack's error code."""
        fn = self.client.reactions_add if method == "reactions.add" else \
            self.client.reactions_remove
        try:
            await call(method, fn(channel=self.channel, timestamp=self.message_ts, name=name))
            return None
        except SlackCallError as exc:
            if exc.error not in ("already_reacted", "no_reaction"):
                log.info("%s %s failed: %s", method, name, exc.error)
            return exc.error


def _question_key(chain_id: str) -> str:
    """Where the store keeps a chain's question message ts (when it is not the thread's)."""
    return f"slack:question:{chain_id}"


def _from_a_bot(event: dict[str, Any]) -> bool:
    return bool(event.get("bot_id")) or event.get("subtype") == "bot_message" or bool(
        event.get("bot_profile")
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


# --- entry point ---------------------------------------------------------------------------


async def run_slack(ponder: Ponder, settings: Settings, *, http: bool = False,
                    port: int = 3000) -> None:
    """`ponder slack`: serve until cancelled (Socket Mode, or HTTP with `http=True`)."""
    bot = SlackBot(ponder, settings)
    await bot.start()
    try:
        await bot.recover()
        if http:
            await bot.serve_http(port)
        else:
            await bot.serve_socket()
        await asyncio.Event().wait()  # until the runner cancels this task
    finally:
        await bot.close(grace=min(settings.shutdown_grace, 30.0))
