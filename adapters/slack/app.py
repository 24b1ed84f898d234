"""The Slack front door: slack-bolt's `AsyncApp`, its triggers, and the process around them.

Triggers:
- `app_mention` in a channel -> a chain answered in the mention's thread (its `thread_ts`, or
  its own `ts` when it starts one); in an existing thread it carries the thread's history.
- a DM to the bot (`message`, `channel_type: im`) -> answered in a thread under that DM.
- a later message by the asker in a Ponder thread, no mention needed -> a follow-up with the
  thread's earlier questions and answers as history.
- the "Reason about this" message shortcut (`shortcut.py`) -> a chain over that message's
  text, answered in its thread.
A reply also sent to the channel (`thread_broadcast`) and a message with a file attached
(`file_share`) are answered by their text like any other message; the bot's own messages,
edits (`message_changed` and the other subtypes) and other bots are ignored. Events Slack
delivers again (`X-Slack-Retry-Num`) are recognised by `event_id` and dropped.
Who may ask, follow up or stop, and one chain at a time per thread, are the service's rules
(`bot/admission.py`); this module only turns Slack's events into its calls, and shows a refusal
to the asker alone (`adapters/slack/refusals.py`). The allow-lists see the asker's own team:
in a Slack Connect channel that is not the workspace that received the event, whose budgets
the chain uses.

- a message in an assistant thread (the assistant panel, `assistant.py`) -> a chain like a DM's,
  with the thread's title and the step being thought on its status line.

`run_slack` serves it over Socket Mode (`SLACK_APP_TOKEN`) or HTTP (`/slack/events`, signatures
verified by bolt: a bad or stale signature gets 401). With `SLACK_CLIENT_ID` and
`SLACK_CLIENT_SECRET` it is an app installed by OAuth in many workspaces (HTTP only,
`oauth.py`): each workspace's token from Ponder's database, every call made with the token of
the workspace the event came from; without them, one workspace's `SLACK_BOT_TOKEN`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.assistant import AssistantPanel, PanelSurface, set_title
from adapters.slack.controls import Press, read_press
from adapters.slack.feedback import FEEDBACK_ACTIONS, press_feedback
from adapters.slack.inbound import SeenEvents, StoreSeenEvents, question_text, thread_key
from adapters.slack.oauth import (
    INSTALL_PATH,
    StoreInstallations,
    TeamClients,
    oauth_settings,
)
from adapters.slack.refusals import Refusals
from adapters.slack.shortcut import CALLBACK_ID, read_shortcut
from adapters.slack.status import QuestionStatus
from adapters.slack.stop import STOP_ACTION, press_stop
from adapters.slack.surface import SlackSurface
from adapters.slack.web import (
    PLATFORM,
    SlackCallError,
    SlackLimits,
    Workspace,
    call,
    make_client,
    new_session,
)
from bot.admission import Admission
from bot.config import Settings
from bot.errors import PlatformError, Refused, SettingsError
from bot.events import Question
from bot.service import ChainHandle, ChainRequest, Ponder
from bot.store import ChainRecord
from bot.tasks import Tasks

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
LAST_WORDS = 5.0  # seconds a stopped chain gets, at shutdown, to write its last state
# Message subtypes that are a person writing (answered by their text); every other subtype
# (bot_message, message_changed, message_deleted, channel_join, ...) is not a question.
ANSWERED_SUBTYPES = frozenset({"thread_broadcast", "file_share"})


# --- the bot -------------------------------------------------------------------------------


class SlackBot:
    """One Slack app in front of a `Ponder` service: one workspace's bot token, or installs
    in many workspaces (OAuth)."""

    def __init__(
        self,
        ponder: Ponder,
        settings: Settings,
        *,
        limits: SlackLimits | None = None,
        streaming: bool = True,
        seen: SeenEvents | None = None,
    ) -> None:
        if settings.slack_bot_token is None and not settings.slack_oauth:
            raise SettingsError("setting SLACK_BOT_TOKEN: needed for Slack (xoxb-…), or "
                                "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET for installs in many "
                                "workspaces")
        self.ponder = ponder
        self.settings = settings
        self.limits = limits or SlackLimits()
        self.streaming = streaming
        self.seen: SeenEvents = seen or StoreSeenEvents(ponder)
        # Installs by OAuth: no token of its own; each workspace's client is made with the
        # token its installation keeps (`client_for`).
        self.oauth = settings.slack_oauth
        bot_token = settings.slack_bot_token
        self.client: AsyncWebClient = make_client(
            None if self.oauth or bot_token is None else bot_token.get_secret_value(),
            settings.slack_api_url, self.limits, self._rate_limited,
        )
        self.refusals = Refusals(self.client, self.limits)
        self.installations: StoreInstallations | None = None
        self.teams: TeamClients | None = None
        secret = settings.slack_signing_secret
        flow = oauth_settings(settings, ponder.store) if self.oauth else None
        if flow is not None:
            if secret is None:
                raise SettingsError("setting SLACK_SIGNING_SECRET: installs in many workspaces "
                                    "are served over HTTP, whose requests it signs")
            self.installations = StoreInstallations(ponder.store)
            flow.installation_store = self.installations
            self.teams = TeamClients(self.installations, self._team_client)
        self.app = AsyncApp(
            name="ponder",
            client=self.client,  # carries the bot token (none with OAuth: per workspace)
            signing_secret=secret.get_secret_value() if secret is not None else "",
            request_verification_enabled=secret is not None,
            process_before_response=False,
            oauth_settings=flow,
        )
        self.app.middleware(self._deduplicate)
        self.bot_user_id = ""
        self._bot_users: dict[str, str] = {}  # team -> Ponder's bot user there (OAuth)
        self.panel = AssistantPanel(self, settings)
        self.app.assistant(self.panel.middleware)
        if self.oauth:
            self.app.event("app_uninstalled")(self._on_uninstalled)
            self.app.event("tokens_revoked")(self._on_tokens_revoked)
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.message_shortcut(CALLBACK_ID)(self._on_shortcut)
        self.app.action(STOP_ACTION)(self._on_button)
        self.app.action(FEEDBACK_ACTIONS)(self._on_button)
        self.team_id = ""
        self.workspaces: dict[str, Workspace] = {}
        self.chains: dict[str, ChainHandle] = {}
        self._tasks = Tasks("Slack")
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self.http_port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool and learn who the bot is (fails fast on a bad token)."""
        self._session = new_session(self.limits)
        self.client.session = self._session
        if self.oauth:
            # No workspace of its own: each one's token is checked as its events come.
            log.info("Slack: installs in many workspaces (OAuth); install at %s",
                     INSTALL_PATH)
            return
        try:
            auth = await call("auth.test", self.client.auth_test())
        except SlackCallError as exc:
            await self._close_session()
            raise PlatformError(
                PLATFORM,
                f"Slack refused SLACK_BOT_TOKEN ({exc.error})"
                if exc.error in ("invalid_auth", "not_authed", "account_inactive",
                                 "token_revoked")
                else f"cannot reach Slack at {self.settings.slack_api_url} ({exc.error})"
            ) from exc
        self.team_id = str(auth.get("team_id") or "")
        self.bot_user_id = str(auth.get("user_id") or "")
        self.workspace(self.team_id)
        log.info("Slack: signed in as %s in %s (%s)", auth.get("user"), auth.get("team"),
                 self.team_id)

    async def recover(self) -> list[ChainHandle]:
        """Resume the Slack chains a dead process left running (the service asks for each
        thread's surface; a thread that cannot be named any more is closed in the store)."""
        handles = await self.ponder.recover(PLATFORM, self._surface_for, adopt=self._adopt)
        for handle in handles:
            self._adopt(handle)
        if handles:
            log.info("Slack: resumed %d interrupted chain(s)", len(handles))
        return handles

    def _adopt(self, handle: ChainHandle) -> None:
        """A resumed chain (at start, or later: one of another process that died)."""
        self._track(handle)
        self.spawn(self._resumed(handle), name=f"slack-resumed-{handle.chain_id}")

    async def _surface_for(self, record: ChainRecord) -> SlackSurface | None:
        channel, _, thread_ts = record.thread.partition(":")
        if not channel or not thread_ts:
            return None
        ws = self._home(record.anchor, record.workspace)
        client = await self.client_for(ws.team_id)
        if client is None:  # uninstalled from that workspace since
            return None
        return SlackSurface(client, ws, channel, thread_ts, asker=record.asker,
                            asker_team=record.workspace)

    async def _resumed(self, handle: ChainHandle) -> None:
        """A resumed chain shows "thinking" on its question again, and clears it at the end
        (the dead process could not)."""
        request = handle.request
        channel, _, thread_ts = request.thread.partition(":")
        message_ts = str(request.anchor.get("message_ts") or thread_ts)
        ws = self._home(request.anchor, request.workspace)
        client = await self.client_for(ws.team_id)
        if client is None:
            await handle.wait()
            return
        status = QuestionStatus(client, ws, channel, thread_ts, message_ts, handle.language)
        await status.begin()
        await self._until_done(handle, status)

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
        if self.oauth:
            log.info("Slack installs: http://%s:%s%s (behind your public HTTPS address)", host,
                     self.http_port, INSTALL_PATH)

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
            try:
                await self._socket.close_async()
            except Exception:  # closing anyway: what is left of it goes with the session
                log.warning("Socket Mode connection did not close cleanly", exc_info=True)
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
        await self._tasks.close(LAST_WORDS)
        await self._close_session()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self.client.session = None

    async def idle(self) -> None:
        """Wait until every event handled so far has finished (tests and benchmarks bound it
        with `asyncio.timeout`)."""
        await self._tasks.idle()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task this bot owns (awaited or cancelled on close)."""
        return self._tasks.spawn(coro, name)

    def workspace(self, team_id: str) -> Workspace:
        ws = self.workspaces.get(team_id)
        if ws is None:
            ws = self.workspaces[team_id] = Workspace(team_id, self.limits,
                                                      streaming=self.streaming)
        return ws

    def _home(self, anchor: dict[str, Any], workspace: str) -> Workspace:
        """The budgets of the workspace that received a chain's question (its anchor's
        `team`; chains stored before it was recorded there name it as their workspace)."""
        return self.workspace(str(anchor.get("team") or workspace or self.team_id))

    def _rate_limited(self, method: str, seconds: float, channel: str | None) -> None:
        self.workspace(self.team_id).rate_limited(method, seconds, channel)

    async def client_for(self, team: str) -> AsyncWebClient | None:
        """The client for calls in `team`'s workspace: with OAuth, made with that workspace's
        token (None where Ponder is not installed); else the one bot token's."""
        if self.teams is None:
            return self.client
        return await self.teams.get(team)

    def _team_client(self, team: str, token: str) -> AsyncWebClient:
        """A workspace's client: its token, its budgets told about its 429s, the shared pool."""
        def limited(method: str, seconds: float, channel: str | None) -> None:
            self.workspace(team).rate_limited(method, seconds, channel)

        client = make_client(token, self.settings.slack_api_url, self.limits, limited)
        client.session = self._session
        return client

    def _bot_user(self, team: str) -> str:
        """Ponder's own user in `team`'s workspace (each install has its own)."""
        return self._bot_users.get(team) or self.bot_user_id

    async def _on_uninstalled(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await self._uninstalled(context.enterprise_id, str(context.team_id or
                                                            body.get("team_id") or ""))

    async def _on_tokens_revoked(self, event: dict[str, Any], body: dict[str, Any],
                                 context: AsyncBoltContext) -> None:
        if (event.get("tokens") or {}).get("bot"):
            await self._uninstalled(context.enterprise_id, str(context.team_id or
                                                                body.get("team_id") or ""))

    async def _uninstalled(self, enterprise_id: str | None, team: str) -> None:
        """The workspace's installation and its client go: its token no longer works."""
        if self.installations is None or self.teams is None or not team:
            return
        await self.installations.async_delete_all(enterprise_id=enterprise_id, team_id=team)
        self.teams.forget(team)
        log.info("Slack: uninstalled from %s", team)

    # --- bolt listeners --------------------------------------------------------------------

    async def _deduplicate(self, body: dict[str, Any], resp: BoltResponse,
                           context: AsyncBoltContext,
                           next: Callable[[], Awaitable[None]]) -> BoltResponse:
        if self.oauth and context.team_id and context.bot_user_id:
            self._bot_users[str(context.team_id)] = str(context.bot_user_id)
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
        team = self._receiving_team(event, body)
        if _from_a_bot(event) or event.get("user") in (None, self._bot_user(team)):
            return
        channel, ts = str(event["channel"]), str(event["ts"])
        thread_ts = str(event.get("thread_ts") or ts)
        self.spawn(self._ask(
            team=team, asker_team=_asker_team(event, team),
            channel=channel, user=str(event["user"]), message_ts=ts, thread_ts=thread_ts,
            text=str(event.get("text") or ""),
        ), name=f"slack-mention-{ts}")

    async def _on_shortcut(self, ack: Callable[[], Awaitable[None]],
                           body: dict[str, Any]) -> None:
        """"Reason about this" on a message: asked as a mention on that message would be."""
        await ack()
        ask = read_shortcut(body, self.team_id)
        if ask is None:
            log.warning("a message shortcut without a message or an asker: ignored")
            return
        self.spawn(self._ask(team=ask.team, asker_team=ask.asker_team, channel=ask.channel,
                             user=ask.user, message_ts=ask.message_ts,
                             thread_ts=ask.thread_ts, text=ask.text),
                   name=f"slack-shortcut-{ask.message_ts}")

    async def _on_button(self, ack: Callable[[], Awaitable[None]],
                         body: dict[str, Any]) -> None:
        """Stop, 👍 or 👎 pressed (`stop.py`, `feedback.py`; `block_actions` over Socket Mode
        or signed over HTTP): acknowledged at once (Slack wants it within 3 s), then done."""
        await ack()
        press = read_press(body, self.team_id)
        if press is None or not press.value:
            log.warning("a button press without a button or a person: ignored")
            return
        self.spawn(self._pressed(press), name=f"slack-{press.action_id}-{press.value}")

    async def _pressed(self, press: Press) -> None:
        ws = self.workspace(press.team)
        client = await self.client_for(ws.team_id)
        if client is None:  # uninstalled from that workspace since
            return
        if press.action_id == STOP_ACTION:
            await press_stop(self.ponder, client, ws, press)
        else:
            await press_feedback(self.ponder, client, ws, press)

    def _receiving_team(self, event: dict[str, Any], body: dict[str, Any]) -> str:
        return str(body.get("team_id") or event.get("team") or self.team_id)

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        subtype = event.get("subtype")
        if (subtype is not None and subtype not in ANSWERED_SUBTYPES) or _from_a_bot(event):
            return  # edits, deletions, joins, bots (ourselves included)
        user = event.get("user")
        team = self._receiving_team(event, body)
        bot_user = self._bot_user(team)
        if user is None or user == bot_user:
            return
        text = str(event.get("text") or "")
        if bot_user and f"<@{bot_user}" in text and event.get("channel_type") != "im":
            return  # a mention: `app_mention` answers it
        channel, ts = str(event["channel"]), str(event["ts"])
        asker_team = _asker_team(event, team)
        if event.get("channel_type") == "im":
            thread_ts = str(event.get("thread_ts") or ts)
            self.spawn(self._ask(team=team, asker_team=asker_team, channel=channel,
                                 user=str(user), message_ts=ts, thread_ts=thread_ts, text=text),
                       name=f"slack-dm-{ts}")
        elif event.get("thread_ts"):
            self.spawn(self._follow_up(team=team, asker_team=asker_team, channel=channel,
                                       user=str(user), message_ts=ts,
                                       thread_ts=str(event["thread_ts"]), text=text),
                       name=f"slack-followup-{ts}")

    # --- chains ----------------------------------------------------------------------------

    async def _follow_up(self, *, team: str, asker_team: str, channel: str, user: str,
                         message_ts: str, thread_ts: str, text: str) -> None:
        """A reply in a thread: a follow-up only in a Ponder thread, and only by its asker
        (the service's rule); anything else is people talking."""
        request = self._request(team, asker_team, channel, user, message_ts, thread_ts, text)
        try:
            admission = await self.ponder.follow_up(request)
        except Refused as refusal:
            await self._refuse(request, refusal)
            return
        if admission is not None:
            await self._run(request, admission)

    async def _ask(self, *, team: str, asker_team: str, channel: str, user: str,
                   message_ts: str, thread_ts: str, text: str, panel: bool = False) -> None:
        request = self._request(team, asker_team, channel, user, message_ts, thread_ts, text)
        try:
            admission = await self.ponder.enter(request)
        except Refused as refusal:
            await self._refuse(request, refusal)
            return
        await self._run(request, admission, panel=panel)

    async def ask_in_panel(self, *, team: str, asker_team: str, channel: str, user: str,
                           message_ts: str, thread_ts: str, text: str) -> None:
        """A message in an assistant thread: asked like a DM, shown as the panel shows it."""
        await self._ask(team=team, asker_team=asker_team, channel=channel, user=user,
                        message_ts=message_ts, thread_ts=thread_ts, text=text, panel=True)

    def _request(self, team: str, asker_team: str, channel: str, user: str, message_ts: str,
                 thread_ts: str, text: str) -> ChainRequest:
        # The request's workspace is the asker's own team (what the allow-lists check); the
        # anchor keeps the question's ts (a restart finds its status and reaction by it) and
        # the team that received it (whose budgets the chain uses).
        return ChainRequest(PLATFORM, Question(question_text(text, self._bot_user(team))),
                            asker=user, channel=channel, thread=thread_key(channel, thread_ts),
                            workspace=asker_team,
                            anchor={"message_ts": message_ts, "team": team})

    async def _run(self, request: ChainRequest, admission: Admission, *,
                   panel: bool = False) -> None:
        channel, _, thread_ts = request.thread.partition(":")
        ws = self._home(request.anchor, request.workspace)
        client = await self.client_for(ws.team_id)
        if client is None:  # uninstalled between the event and now
            self.ponder.release(admission)
            log.warning("Slack: a question from %s, where Ponder is not installed", ws.team_id)
            return
        first = panel and not await self.ponder.history(PLATFORM, request.thread)
        # Its language is the chain's, known once the service has taken it (below).
        status = QuestionStatus(client, ws, channel, thread_ts,
                                str(request.anchor["message_ts"]))
        try:
            surface = PanelSurface(client, ws, channel, thread_ts, asker=request.asker,
                                   asker_team=request.workspace, on_step=status.step) \
                if panel else SlackSurface(client, ws, channel, thread_ts,
                                           asker=request.asker, asker_team=request.workspace)
            handle = self.ponder.submit(request, surface, admission)
        except Refused as refusal:
            await self._refuse(request, refusal)
            return
        finally:
            self.ponder.release(admission)  # a no-op once the chain has started
        self._track(handle)
        status.language = handle.language
        if first:
            await set_title(client, channel, thread_ts, request.question.text)
        await status.begin()
        await self._until_done(handle, status)

    async def _until_done(self, handle: ChainHandle, status: QuestionStatus) -> None:
        # Cancelled on shutdown before the chain ended: its ⏳ stays for the resumed chain
        # to take over (no call to a Slack that may be gone while this is being stopped).
        outcome = await handle.wait()
        await status.end(outcome.status)

    async def _refuse(self, request: ChainRequest, refusal: Refused) -> None:
        """The service's refusal, shown to the asker alone: in the thread when there is one,
        else beside the question (Slack shows an ephemeral reply in a thread only once the
        thread exists)."""
        channel, _, thread_ts = request.thread.partition(":")
        started_here = thread_ts == str(request.anchor.get("message_ts") or "")
        ws = self._home(request.anchor, request.workspace)
        client = await self.client_for(ws.team_id)
        if client is None:
            return
        await self.refusals.show(ws, channel, request.asker,
                                 None if started_here else thread_ts, f"🙅 {refusal.message}",
                                 client=client)


def _asker_team(event: dict[str, Any], receiving: str) -> str:
    """The asker's own team. In a Slack Connect channel the envelope's `team_id` is the
    workspace that received the event, and its person may belong to another: the event says
    which in `user_team` (also `user_profile.team`)."""
    profile = event.get("user_profile")
    for team in (event.get("user_team"),
                 profile.get("team") if isinstance(profile, dict) else None,
                 event.get("team")):
        if team:
            return str(team)
    return receiving


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
        if http or bot.oauth:  # the install pages need HTTP, whatever else is set
            await bot.serve_http(port)
        else:
            await bot.serve_socket()
        await asyncio.Event().wait()  # until the runner cancels this task
    finally:
        # The runner has given running chains the shutdown grace already (`Ponder.drain`):
        # what is left are their last words.
        await bot.close(grace=LAST_WORDS)
