"""A fake Slack Web API: enough of it to serve a whole Ponder session, recorded call by call.

Serve it with `async with FakeSlack() as slack:` and hand `slack.base_url`
(`http://127.0.0.1:PORT/api/`) to slack_sdk as `base_url`. It speaks the shapes slack_sdk 3.47
sends: JSON bodies for `chat.*` and `assistant.threads.setStatus`, form bodies for
`reactions.*` and `auth.test`, query strings for `conversations.replies`, the bot token as
`Authorization: Bearer ...`.

What it keeps:
- every request (`slack.calls`, `slack.calls_to("chat.update")`) with its full payload (JSON,
  form and query parameters merged; `blocks`, `chunks` and `attachments` of a form body decoded),
  headers, the status it answered and the answer;
- every ephemeral message (`slack.ephemerals`: whom it was shown to, where, its text), apart
  from the messages: nobody else sees them, and they are never part of a thread's history;
- every message by channel and `ts` (`slack.thread(channel, thread_ts)` lists a thread in
  order), with the history of its texts (`message.texts`), and for streamed messages their
  markdown text, task cards and state.

What it can do to a client (all injectable while it runs):
- `inject(method, status=429, retry_after=2)` / `inject(method, error="msg_too_long")` /
  `inject(method, status=503)`: the next call(s) of a method fail that way; with `channel=`
  only its calls in that channel (Slack limits `chat.postMessage` per channel);
- `limit(method, calls, window, per="workspace"|"channel")`: a sliding-window budget that
  answers 429 + `Retry-After` when exceeded (by default `chat.update` has Tier 3's 50 per
  60 s per workspace; `chat.postMessage`'s about 1/s is per channel; shorten the window to
  test fast); `add=True` adds a window to the method's others (a short one for bursts, a long
  one for the rate) instead of replacing them;
- `published_limits(scale)`: every limit Slack publishes for the methods a chain writes with,
  each window divided by `scale` (`PUBLISHED`: `chat.update` Tier 3, 50 a minute for the
  workspace; `chat.postMessage` about 1 a second per channel with short bursts; `chat.startStream`
  and `chat.stopStream` Tier 2, 20 a minute; `chat.appendStream` Tier 4, 100 a minute).
  Windows slide: at most `calls` in *any* `window` seconds, which is stricter than counting
  per clock minute, so a client that passes here passes Slack's own count too;
- `streaming = False` (or `stream_error = "..."`): the streaming methods answer an error, as in a
  workspace or channel that does not offer them; `stream_max_age`: a stream stops accepting
  appends after that many seconds (Slack ends streams after about five minutes);
- `assistant_status = False`: `assistant.threads.setStatus` is refused (`status_error`);
- `go_down()` / `come_back()` / `outage(seconds)` / `is_down`: Slack unreachable, Web API and
  Socket Mode alike (refused connections, open ones reset; `tests/fakes/outage.py`), then back
  on the same address with everything recorded kept. `socket_connected` is cleared while down,
  so a test can wait for the client's reconnection.

Socket Mode: `apps.connections.open` (with the app token, `xapp-…`) hands out a WebSocket URL on
this server; it sends `hello`, then whatever `push_event(payload)` gives it as an `events_api`
envelope (`push_interactive(payload)`: an `interactive` one), and records the acks
(`await slack.acked(envelope_id)`).

Buttons: a message keeps its Block Kit `blocks` (`message.buttons()` by action id; an update
without `blocks` keeps them, with `[]` takes them off, as Slack does); `block_action(message,
action_id, user=...)` is the `block_actions` payload of a press on one of them.

Message shortcuts: `message_action(message, user=...)` is the payload Slack sends when a person
runs one on a message (`type: message_action`, `callback_id`, `message`, `channel`, `user` with
its `team_id`, `trigger_id`, `response_url`).

The assistant panel: `start_assistant_thread(user=...)` opens one (its parent message, and the
`assistant_thread_started` event to send); `assistant.threads.setSuggestedPrompts` /
`setTitle` / `setStatus` (with `loading_messages`) are kept in `suggested`, `titles` and
`loading`; `users.info` answers `locales` (default `en-US`).

Many workspaces: `tokens` maps every bot token to its team (the constructor's token to
`team_id`); `approve_install(team)` is someone approving the install on Slack's page (a code
good once), `oauth.v2.access` (the app's `client_id` / `client_secret`, HTTP basic auth or in
the body) turns it into that team's token, `revoke(team)` uninstalls (its tokens then answer
`token_revoked`); `auth.test` and `users.info` answer as the calling token's team, and each
`Call.token` says which token a call used.

Rules it enforces like Slack: `chat.update` / `chat.postMessage` text over 4,000 characters is
`msg_too_long`; `markdown_text` over 12,000 characters per call is `msg_too_long`; a stream
outside a DM needs `recipient_user_id` and `recipient_team_id`; unknown channels or messages are
`channel_not_found` / `message_not_found`; a wrong token is `invalid_auth`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes.outage import Outages

MAX_TEXT = 4000
MAX_MARKDOWN = 12000

STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")
# Methods Slack limits per channel rather than per workspace (its "special" tier).
PER_CHANNEL = frozenset({"chat.postMessage"})


@dataclass
class Call:
    """One request as the fake saw it and what it answered."""

    method: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))

    @property
    def error(self) -> str | None:
        return self.response.get("error")

    @property
    def token(self) -> str | None:
        """The bearer token the call was made with (which workspace's)."""
        auth = self.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None


@dataclass
class Task:
    id: str
    title: str
    status: str


@dataclass
class Message:
    channel: str
    ts: str
    thread_ts: str | None
    text: str
    user: str | None = None
    bot_id: str | None = None
    texts: list[str] = field(default_factory=list)  # every text it has shown, in order
    reactions: dict[str, set[str]] = field(default_factory=dict)  # name -> users
    # Streaming: "streaming" until stopped, then "stopped"; None for ordinary messages.
    stream_state: Literal["streaming", "stopped"] | None = None
    stream_started: float = 0.0
    tasks: dict[str, Task] = field(default_factory=dict)
    # Block Kit: what the message shows instead of `text` (a streamed one: its blocks chunks,
    # then the blocks its stop put under it).
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def buttons(self) -> dict[str, dict[str, Any]]:
        """Its buttons by `action_id`."""
        return {str(e.get("action_id")): e for b in self.blocks if b.get("type") == "actions"
                for e in b.get("elements") or [] if e.get("type") == "button"}

    @property
    def edits(self) -> int:
        return max(0, len(self.texts) - 1)

    @property
    def is_bot(self) -> bool:
        return self.bot_id is not None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if self.user:
            out["user"] = self.user
        if self.bot_id:
            out["bot_id"] = self.bot_id
        return out


@dataclass
class Ephemeral:
    """A message shown to one person only (`chat.postEphemeral`)."""

    channel: str
    user: str
    text: str
    thread_ts: str | None
    ts: str


@dataclass
class _Fault:
    status: int
    error: str | None
    retry_after: int | None
    times: int
    channel: str | None = None


@dataclass
class _Limit:
    calls: int
    window: float
    per: Literal["workspace", "channel"]
    seen: dict[str, deque[float]] = field(default_factory=dict)


Per = Literal["workspace", "channel"]

# Slack's published limits for the methods a chain writes with, as (method, calls, seconds,
# per what). Tier 3 is "50+ per minute", Tier 2 "20+", Tier 4 "100+", per method and workspace
# (docs.slack.dev/apis/web-api/rate-limits); chat.postMessage is "1 per second per channel,
# short bursts >1 allowed": here at most 3 in any 3 seconds.
PUBLISHED: tuple[tuple[str, int, float, Per], ...] = (
    ("chat.update", 50, 60.0, "workspace"),
    ("chat.postMessage", 3, 3.0, "channel"),
    ("chat.startStream", 20, 60.0, "workspace"),
    ("chat.stopStream", 20, 60.0, "workspace"),
    ("chat.appendStream", 100, 60.0, "workspace"),
)


class FakeSlack(Outages):
    """A local Slack Web API for one workspace (`team_id`) and one bot user."""

    def __init__(
        self,
        *,
        token: str = "xoxb-test-token",
        app_token: str = "xapp-test-token",
        team_id: str = "T0PONDER",
        team: str = "Ponder Test",
        bot_user_id: str = "UPONDERBOT",
        bot_id: str = "BPONDER",
        streaming: bool = True,
        assistant_status: bool = True,
        update_limit: tuple[int, float] | None = (50, 60.0),
        host: str = "127.0.0.1",
    ) -> None:
        Outages.__init__(self)
        self.token = token
        self.app_token = app_token
        self.team_id = team_id
        self.team = team
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.streaming = streaming
        self.stream_error = "method_not_supported_for_channel_type"
        self.stream_max_age: float | None = None
        self.assistant_status = assistant_status
        self.status_error = "missing_scope"
        self.host = host
        self.latency = 0.0  # seconds added to every answer
        self.replies_page = 1000  # the most replies conversations.replies returns at once

        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemerals: list[Ephemeral] = []
        self.statuses: list[tuple[str, str, str]] = []  # (channel, thread_ts, status)
        # The assistant panel: each status's loading messages, the suggested prompts
        # (channel, thread_ts, title, [{title, message}]), each thread's title.
        self.loading: list[tuple[str, str, list[str]]] = []
        self.suggested: list[tuple[str, str, str | None, list[dict[str, str]]]] = []
        self.titles: dict[tuple[str, str], str] = {}
        self.locales: dict[str, str] = {}  # user -> locale (`users.info`), default en-US
        self.admins: set[str] = set()  # users `users.info` says administer the workspace
        # Many workspaces: every token Slack knows -> its team, each team's names, the OAuth
        # app's credentials and the codes an install hands to `oauth.v2.access` (once each).
        self.tokens: dict[str, str] = {token: team_id}
        self.revoked: set[str] = set()
        self.teams: dict[str, dict[str, str]] = {
            team_id: {"team": team, "bot_user_id": bot_user_id, "bot_id": bot_id}}
        self.client_id = "1111.2222"
        self.client_secret = "fake-client-secret"
        self._codes: dict[str, str] = {}
        self._caller_team = team_id
        self._faults: dict[str, deque[_Fault]] = {}
        self._limits: dict[str, list[_Limit]] = {}
        self.time_scale = 1.0  # Slack seconds per second here (`published_limits`)
        if update_limit is not None:
            self.limit("chat.update", *update_limit)
        self._clock = itertools.count(1)
        self._base_seconds = int(time.time())
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._listeners: list[Callable[[Call], None]] = []
        self._sockets: list[web.WebSocketResponse] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self._acked = asyncio.Condition()
        self.socket_connected = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_get("/link/", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        self._end_outages()
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _listen_address(self) -> tuple[str, int]:
        return self.host, self._port

    def _went_down(self) -> None:
        self.socket_connected.clear()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}/api/"

    # --- what tests set up -----------------------------------------------------------------

    def inject(
        self,
        method: str,
        *,
        status: int = 200,
        error: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
        channel: str | None = None,
    ) -> None:
        """Make the next `times` calls of `method` (in `channel`, if given) fail: HTTP
        `status`, or `ok: false` + `error`.

        `status=429` answers `Retry-After: retry_after` (default 1) and `error: ratelimited`.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        if status == 429 and error is None:
            error = "ratelimited"
        if status == 200 and error is None:
            raise ValueError("a 200 fault needs an error")
        self._faults.setdefault(method, deque()).append(
            _Fault(status, error, retry_after, times, channel))

    def limit(
        self,
        method: str,
        calls: int,
        window: float,
        per: Literal["workspace", "channel"] | None = None,
        *,
        add: bool = False,
    ) -> None:
        """At most `calls` accepted calls of `method` in any `window` seconds, else 429; per
        channel for the methods Slack limits that way (`PER_CHANNEL`), else per workspace.
        With `add`, on top of the method's other windows (every one must have room)."""
        if per is None:
            per = "channel" if method in PER_CHANNEL else "workspace"
        windows = self._limits.setdefault(method, []) if add else []
        windows.append(_Limit(calls, window, per))
        self._limits[method] = windows

    def published_limits(self, scale: float = 1.0) -> None:
        """Slack's published limits (`PUBLISHED`) for every method a chain writes with, each
        window divided by `scale` (a benchmark's compressed time)."""
        for method, calls, window, per in PUBLISHED:
            self.limit(method, calls, window / scale, per)
        self.time_scale = scale

    def on_call(self, listener: Callable[[Call], None]) -> None:
        """Call `listener(call)` after every answered request (benchmarks time with it)."""
        self._listeners.append(listener)

    def next_ts(self) -> str:
        n = next(self._clock)
        return f"{self._base_seconds + n // 1_000_000}.{n % 1_000_000:06d}"

    def add_user_message(
        self, channel: str, text: str, *, user: str = "UASKER", thread_ts: str | None = None
    ) -> Message:
        """A message a person wrote (what an event will then point at)."""
        ts = self.next_ts()
        msg = Message(channel, ts, thread_ts, text, user=user, texts=[text])
        self.messages[(channel, ts)] = msg
        return msg

    async def push_event(self, payload: dict[str, Any], *, retry_attempt: int = 0,
                         retry_reason: str = "") -> str:
        """Deliver an Events API payload over the open Socket Mode connection."""
        if not self._sockets:
            raise RuntimeError("no Socket Mode connection is open")
        envelope_id = uuid.uuid4().hex
        await self._sockets[-1].send_json({
            "envelope_id": envelope_id,
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": retry_reason,
            "payload": payload,
        })
        return envelope_id

    # --- the assistant panel and installs (OAuth) ------------------------------------------

    def start_assistant_thread(self, *, user: str = "UASKER", channel: str = "D0ASSIST",
                               team: str | None = None) -> dict[str, Any]:
        """A person opens Ponder's assistant panel: Slack starts a thread in their DM with the
        app (its parent an `assistant_app_thread` message) and sends this
        `assistant_thread_started` event."""
        ts = self.next_ts()
        team = team or self.team_id
        bot = self.teams.get(team, {})
        self.messages[(channel, ts)] = Message(channel, ts, ts, "New chat", bot_id=bot.get(
            "bot_id", self.bot_id), texts=["New chat"])
        return {"type": "assistant_thread_started", "event_ts": self.next_ts(),
                "assistant_thread": {"user_id": user, "channel_id": channel, "thread_ts": ts,
                                     "context": {"channel_id": "C0GENERAL", "team_id": team,
                                                 "enterprise_id": None}}}

    def approve_install(self, team_id: str, team: str = "", *, bot_user_id: str = "",
                        bot_id: str = "") -> str:
        """Someone in workspace `team_id` approved the install on Slack's authorize page: the
        code Slack redirects back with, for `oauth.v2.access` (good once)."""
        self.teams.setdefault(team_id, {"team": team or f"Team {team_id}",
                                        "bot_user_id": bot_user_id or f"UBOT{team_id}",
                                        "bot_id": bot_id or f"B{team_id}"})
        code = uuid.uuid4().hex
        self._codes[code] = team_id
        return code

    def revoke(self, team_id: str) -> None:
        """The app is uninstalled from `team_id`: its tokens stop working."""
        for token, team in list(self.tokens.items()):
            if team == team_id:
                del self.tokens[token]
                self.revoked.add(token)

    def team_token(self, team_id: str) -> str | None:
        return next((t for t, team in self.tokens.items() if team == team_id), None)

    def message_action(self, message: Message, *, user: str = "UASKER",
                       callback_id: str = "reason_about_this",
                       user_team: str | None = None) -> dict[str, Any]:
        """The `message_action` payload Slack sends when `user` runs the message shortcut
        `callback_id` on `message` (sent signed as `payload=<json>` over HTTP, or with
        `push_interactive` over Socket Mode)."""
        team = user_team or self.team_id
        text = {"type": "message", "text": message.text, "user": message.user,
                "ts": message.ts, "team": team}
        if message.thread_ts is not None and message.thread_ts != message.ts:
            text["thread_ts"] = message.thread_ts
        return {
            "type": "message_action", "token": "legacy-verification-token",
            "action_ts": self.next_ts(), "callback_id": callback_id,
            "trigger_id": f"{next(self._clock)}.{uuid.uuid4().hex[:12]}",
            "team": {"id": self.team_id, "domain": "ponder-test"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(),
                     "team_id": team},
            "channel": {"id": message.channel, "name": message.channel.lower()},
            "is_enterprise_install": False, "enterprise": None,
            "message_ts": message.ts, "message": text,
            "response_url": f"{self.base_url}response/{uuid.uuid4().hex}",
        }

    def block_action(self, message: Message, action_id: str, *,
                     user: str = "UASKER") -> dict[str, Any]:
        """The `block_actions` payload Slack sends when `user` presses the button
        `action_id` on `message` (sent signed as `payload=<json>` over HTTP, or with
        `push_interactive` over Socket Mode). The button must be on the message."""
        element = message.buttons()[action_id]
        container: dict[str, Any] = {"type": "message", "message_ts": message.ts,
                                     "channel_id": message.channel, "is_ephemeral": False}
        shown = message.as_json()
        if message.thread_ts:
            container["thread_ts"] = message.thread_ts
        return {
            "type": "block_actions", "token": "legacy-verification-token",
            "api_app_id": "APONDER", "trigger_id": f"{next(self._clock)}.{uuid.uuid4().hex[:12]}",
            "team": {"id": self.team_id, "domain": "ponder-test"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(),
                     "team_id": self.team_id},
            "container": container,
            "channel": {"id": message.channel, "name": message.channel.lower()},
            "message": {**shown, "blocks": message.blocks},
            "is_enterprise_install": False, "enterprise": None,
            "response_url": f"{self.base_url}response/{uuid.uuid4().hex}",
            "actions": [{"type": "button", "action_id": action_id,
                         "block_id": "ponder_controls", "value": element.get("value"),
                         "text": element.get("text"), "action_ts": self.next_ts()}],
        }

    async def push_interactive(self, payload: dict[str, Any]) -> str:
        """Deliver an interactivity payload (a shortcut) over the open Socket Mode
        connection."""
        if not self._sockets:
            raise RuntimeError("no Socket Mode connection is open")
        envelope_id = uuid.uuid4().hex
        await self._sockets[-1].send_json({
            "envelope_id": envelope_id, "type": "interactive",
            "accepts_response_payload": True, "payload": payload,
        })
        return envelope_id

    async def acked(self, envelope_id: str) -> dict[str, Any]:
        """Wait for the client's ack of an envelope (bound it with `asyncio.timeout`)."""
        async with self._acked:
            await self._acked.wait_for(lambda: envelope_id in self.acks)
        return self.acks[envelope_id]

    # --- what tests read -------------------------------------------------------------------

    @property
    def socket_connections(self) -> int:
        """Socket Mode websockets open now."""
        return len(self._sockets)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def count(self, method: str, status: int | None = None) -> int:
        return sum(
            1 for c in self.calls if c.method == method and (status is None or c.status == status)
        )

    @property
    def rate_limited(self) -> int:
        """How many calls were answered 429 (injected or by a budget)."""
        return sum(1 for c in self.calls if c.status == 429)

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The replies of a thread (not its parent), oldest first."""
        replies = [
            m for (ch, _), m in self.messages.items()
            if ch == channel and m.thread_ts == thread_ts and m.ts != thread_ts
        ]
        return sorted(replies, key=lambda m: _ts_key(m.ts))

    def ephemerals_to(self, user: str) -> list[Ephemeral]:
        return [e for e in self.ephemerals if e.user == user]

    def bot_messages(self) -> list[Message]:
        return sorted(
            (m for m in self.messages.values() if m.is_bot), key=lambda m: _ts_key(m.ts)
        )

    # --- the server ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        body = await _parse_body(request)
        call = Call(method, body, dict(request.headers), time.monotonic())
        self.calls.append(call)
        generation = self._generation
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._cut_off(generation):
            # Never applied, and the client never heard back: the host was gone.
            call.status = 0
            return web.Response(status=503)
        status, payload, headers = self._answer(method, body, request)
        call.status, call.response = status, payload
        for listener in self._listeners:
            listener(call)
        return web.json_response(payload, status=status, headers=headers)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets),
                            "debug_info": {"host": "fake-slack"},
                            "connection_info": {"app_id": "APONDER"}})
        self.socket_connected.set()
        try:
            async for message in ws:
                if message.type != web.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                if isinstance(data, dict) and data.get("envelope_id"):
                    async with self._acked:
                        self.acks[str(data["envelope_id"])] = data
                        self._acked.notify_all()
        finally:
            self._sockets.remove(ws)
        return ws

    def _answer(
        self, method: str, body: dict[str, Any], request: web.Request
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method == "oauth.v2.access":
            return self._oauth_access(body, request)
        token = _token(request, body)
        if token is None:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if method == "apps.connections.open":
            if token != self.app_token:
                return 200, {"ok": False, "error": "invalid_auth"}, {}
            ticket = uuid.uuid4().hex
            url = f"ws://{self.host}:{self._port}/link/?ticket={ticket}"
            return 200, {"ok": True, "url": url}, {}
        if token in self.revoked:
            return 200, {"ok": False, "error": "token_revoked"}, {}
        if token not in self.tokens:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        self._caller_team = self.tokens[token]  # read by the handler, called below at once

        faults = self._faults.get(method)
        fault = next((f for f in faults if f.channel in (None, _channel(body))), None) \
            if faults else None
        if faults and fault is not None:
            fault.times -= 1
            if fault.times <= 0:
                faults.remove(fault)
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            if fault.status >= 500:
                return fault.status, {"ok": False, "error": "internal_error"}, headers
            return fault.status, {"ok": False, "error": fault.error}, headers

        limited = self._over_limit(method, body)
        if limited is not None:
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": f"{limited:g}"}

        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        try:
            payload = handler(body)
        except _SlackError as exc:
            return 200, {"ok": False, "error": exc.error}, {}
        return 200, {"ok": True, **payload}, {}

    def _over_limit(self, method: str, body: dict[str, Any]) -> float | None:
        """None when the call fits every window of its method (and is then counted in each),
        else Retry-After: whole seconds until the fullest window has room."""
        now = time.monotonic()
        counted: list[deque[float]] = []
        wait = 0.0
        for lim in self._limits.get(method, ()):
            key = self.team_id if lim.per == "workspace" else _channel(body)
            seen = lim.seen.setdefault(key, deque())
            while seen and seen[0] <= now - lim.window:
                seen.popleft()
            if len(seen) >= lim.calls:
                wait = max(wait, seen[0] + lim.window - now)
            counted.append(seen)
        if wait > 0:
            # Whole seconds of Slack's time, however compressed the clock is here.
            return max(1, math.ceil(wait * self.time_scale)) / self.time_scale
        for seen in counted:
            seen.append(now)
        return None

    # --- methods ---------------------------------------------------------------------------

    def _m_auth_test(self, body: dict[str, Any]) -> dict[str, Any]:
        team = self.teams[self._caller_team]
        return {
            "url": "https://ponder-test.slack.com/",
            "team": team["team"],
            "user": "ponder",
            "team_id": self._caller_team,
            "user_id": team["bot_user_id"],
            "bot_id": team["bot_id"],
            "is_enterprise_install": False,
        }

    def _oauth_access(self, body: dict[str, Any], request: web.Request
                      ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """`oauth.v2.access`: the app's credentials (HTTP basic auth, or in the body) and a
        code from an approved install -> that workspace's bot token."""
        client_id, client_secret = body.get("client_id"), body.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(
                auth.removeprefix("Basic ")).decode().partition(":")
        if client_id != self.client_id:
            return 200, {"ok": False, "error": "invalid_client_id"}, {}
        if client_secret != self.client_secret:
            return 200, {"ok": False, "error": "bad_client_secret"}, {}
        team_id = self._codes.pop(str(body.get("code") or ""), None)
        if team_id is None:
            return 200, {"ok": False, "error": "invalid_code"}, {}
        team = self.teams[team_id]
        token = f"xoxb-{team_id}-{uuid.uuid4().hex[:12]}"
        self.tokens[token] = team_id
        return 200, {
            "ok": True, "app_id": "APONDER", "access_token": token, "token_type": "bot",
            "scope": "app_mentions:read,chat:write,assistant:write",
            "bot_user_id": team["bot_user_id"],
            "team": {"id": team_id, "name": team["team"]}, "enterprise": None,
            "is_enterprise_install": False,
            "authed_user": {"id": "UINSTALLER"},
        }, {}

    def _m_chat_postMessage(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _need(body, "channel")
        text = str(body.get("text") or body.get("markdown_text") or "")
        if not text and not body.get("blocks"):
            raise _SlackError("no_text")
        if len(text) > MAX_TEXT:
            raise _SlackError("msg_too_long")
        thread_ts = body.get("thread_ts") or None
        if thread_ts is not None and (channel, thread_ts) not in self.messages:
            raise _SlackError("thread_not_found")
        ts = self.next_ts()
        msg = Message(channel, ts, thread_ts, text, bot_id=self.bot_id, texts=[text],
                      blocks=_blocks(body))
        self.messages[(channel, ts)] = msg
        return {"channel": channel, "ts": ts, "message": msg.as_json()}

    def _m_chat_postEphemeral(self, body: dict[str, Any]) -> dict[str, Any]:
        channel, user = _need(body, "channel"), _need(body, "user")
        text = str(body.get("text") or body.get("markdown_text") or "")
        if not text and not body.get("blocks"):
            raise _SlackError("no_text")
        if len(text) > MAX_TEXT:
            raise _SlackError("msg_too_long")
        ts = self.next_ts()
        self.ephemerals.append(Ephemeral(channel, user, text, body.get("thread_ts") or None, ts))
        return {"message_ts": ts}

    def _m_chat_update(self, body: dict[str, Any]) -> dict[str, Any]:
        channel, ts = _need(body, "channel"), _need(body, "ts")
        msg = self.messages.get((channel, ts))
        if msg is None:
            raise _SlackError("message_not_found")
        if not msg.is_bot:
            raise _SlackError("cant_update_message")
        text = str(body.get("text") or body.get("markdown_text") or "")
        if not text and not body.get("blocks"):
            raise _SlackError("no_text")
        if len(text) > MAX_TEXT:
            raise _SlackError("msg_too_long")
        msg.text = text
        msg.texts.append(text)
        if "blocks" in body:  # as Slack: left out, the blocks stay; `[]` takes them off
            msg.blocks = _blocks(body)
        return {"channel": channel, "ts": ts, "text": text, "message": msg.as_json()}

    def _stream_allowed(self) -> None:
        if not self.streaming:
            raise _SlackError(self.stream_error)

    def _m_chat_startStream(self, body: dict[str, Any]) -> dict[str, Any]:
        self._stream_allowed()
        channel = _need(body, "channel")
        thread_ts = body.get("thread_ts") or None
        if not channel.startswith("D"):
            if not body.get("recipient_user_id"):
                raise _SlackError("missing_recipient_user_id")
            if not body.get("recipient_team_id"):
                raise _SlackError("missing_recipient_team_id")
        if thread_ts is not None and (channel, thread_ts) not in self.messages:
            raise _SlackError("thread_not_found")
        ts = self.next_ts()
        msg = Message(channel, ts, thread_ts, "", bot_id=self.bot_id, texts=[""],
                      stream_state="streaming", stream_started=time.monotonic())
        self._apply_stream(msg, body)
        self.messages[(channel, ts)] = msg
        return {"channel": channel, "ts": ts}

    def _streaming_message(self, body: dict[str, Any]) -> Message:
        self._stream_allowed()
        channel, ts = _need(body, "channel"), _need(body, "ts")
        msg = self.messages.get((channel, ts))
        if msg is None:
            raise _SlackError("message_not_found")
        if msg.stream_state != "streaming":
            raise _SlackError("message_not_in_streaming_state")
        if self.stream_max_age is not None and (
            time.monotonic() - msg.stream_started > self.stream_max_age
        ):
            msg.stream_state = "stopped"
            raise _SlackError("message_not_in_streaming_state")
        return msg

    def _m_chat_appendStream(self, body: dict[str, Any]) -> dict[str, Any]:
        msg = self._streaming_message(body)
        if not body.get("markdown_text") and not body.get("chunks"):
            raise _SlackError("no_text")
        self._apply_stream(msg, body)
        return {"channel": msg.channel, "ts": msg.ts}

    def _m_chat_stopStream(self, body: dict[str, Any]) -> dict[str, Any]:
        msg = self._streaming_message(body)
        self._apply_stream(msg, body)
        msg.blocks.extend(_blocks(body))  # rendered under the finished reply
        msg.stream_state = "stopped"
        return {"channel": msg.channel, "ts": msg.ts, "message": msg.as_json()}

    def _apply_stream(self, msg: Message, body: dict[str, Any]) -> None:
        """Validate everything first (a refused call changes nothing), then apply it."""
        chunks = body.get("chunks") or []
        if not isinstance(chunks, list):
            raise _SlackError("invalid_chunks")
        texts: list[str] = []
        if body.get("markdown_text"):
            texts.append(str(body["markdown_text"]))
        for chunk in chunks:
            if not isinstance(chunk, dict) or chunk.get("type") not in (
                "markdown_text", "task_update", "plan_update", "blocks"
            ):
                raise _SlackError("invalid_chunks")
            if chunk["type"] == "markdown_text":
                texts.append(str(chunk.get("text", "")))
            if chunk["type"] == "task_update":
                if not chunk.get("id") or not chunk.get("title") or chunk.get("status") not in (
                    "pending", "in_progress", "complete", "error"
                ):
                    raise _SlackError("invalid_chunks")
                if len(str(chunk["title"])) > 256:
                    raise _SlackError("invalid_chunks")
        if any(len(t) > MAX_MARKDOWN for t in texts):
            raise _SlackError("msg_too_long")
        for chunk in chunks:
            if chunk["type"] == "task_update":
                task = msg.tasks.get(chunk["id"])
                if task is None:
                    task = msg.tasks[chunk["id"]] = Task(chunk["id"], "", "pending")
                task.title, task.status = str(chunk["title"]), str(chunk["status"])
        for chunk in chunks:
            if chunk["type"] == "blocks":
                msg.blocks.extend(b for b in chunk.get("blocks") or [] if isinstance(b, dict))
        if texts:
            msg.text += "".join(texts)
            msg.texts.append(msg.text)

    def _m_reactions_add(self, body: dict[str, Any]) -> dict[str, Any]:
        msg = self._reacted(body)
        users = msg.reactions.setdefault(_need(body, "name"), set())
        if self.bot_user_id in users:
            raise _SlackError("already_reacted")
        users.add(self.bot_user_id)
        return {}

    def _m_reactions_remove(self, body: dict[str, Any]) -> dict[str, Any]:
        msg = self._reacted(body)
        users = msg.reactions.get(_need(body, "name"), set())
        if self.bot_user_id not in users:
            raise _SlackError("no_reaction")
        users.discard(self.bot_user_id)
        if not users:
            msg.reactions.pop(body["name"], None)
        return {}

    def _reacted(self, body: dict[str, Any]) -> Message:
        channel, ts = _need(body, "channel"), _need(body, "timestamp")
        msg = self.messages.get((channel, ts))
        if msg is None:
            raise _SlackError("message_not_found")
        return msg

    def _m_assistant_threads_setStatus(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.assistant_status:
            raise _SlackError(self.status_error)
        channel, thread_ts = _need(body, "channel_id"), _need(body, "thread_ts")
        if "status" not in body:
            raise _SlackError("invalid_arguments")
        if (channel, thread_ts) not in self.messages:
            raise _SlackError("invalid_thread_ts")
        self.statuses.append((channel, thread_ts, str(body["status"])))
        loading = body.get("loading_messages")
        if loading is not None:
            if not isinstance(loading, list) or len(loading) > 10:
                raise _SlackError("invalid_arguments")
            self.loading.append((channel, thread_ts, [str(m) for m in loading]))
        return {}

    def _m_assistant_threads_setSuggestedPrompts(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = _need(body, "channel_id")
        prompts = body.get("prompts")
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= 4 or not all(
                isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts):
            raise _SlackError("invalid_arguments")
        thread_ts = str(body.get("thread_ts") or "")
        if thread_ts and (channel, thread_ts) not in self.messages:
            raise _SlackError("invalid_thread_ts")
        self.suggested.append((channel, thread_ts, body.get("title"), prompts))
        return {}

    def _m_assistant_threads_setTitle(self, body: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts = _need(body, "channel_id"), _need(body, "thread_ts")
        title = _need(body, "title")
        if (channel, thread_ts) not in self.messages:
            raise _SlackError("invalid_thread_ts")
        self.titles[(channel, thread_ts)] = title
        return {}

    def _m_users_info(self, body: dict[str, Any]) -> dict[str, Any]:
        user = _need(body, "user")
        out: dict[str, Any] = {"id": user, "team_id": self._caller_team, "name": user.lower()}
        if str(body.get("include_locale", "")).lower() in ("1", "true"):
            out["locale"] = self.locales.get(user, "en-US")
        out["is_admin"] = user in self.admins
        return {"user": out}

    def _m_conversations_replies(self, body: dict[str, Any]) -> dict[str, Any]:
        channel, ts = _need(body, "channel"), _need(body, "ts")
        parent = self.messages.get((channel, ts))
        if parent is None:
            raise _SlackError("thread_not_found")
        # As Slack: the parent first, then replies from `oldest` on, a page of at most
        # `limit` (and never more than `replies_page`) at a time, `next_cursor` to go on.
        oldest = str(body.get("oldest") or "")
        inclusive = str(body.get("inclusive", "")).lower() in ("1", "true")
        replies = [m for m in self.thread(channel, ts) if not oldest
                   or _ts_key(m.ts) > _ts_key(oldest)
                   or (inclusive and m.ts == oldest)]
        start = int(body.get("cursor") or 0)
        size = min(int(body.get("limit") or 1000), self.replies_page)
        page = replies[start:start + size]
        more = start + size < len(replies)
        out: dict[str, Any] = {"messages": [m.as_json() for m in [parent, *page]],
                               "has_more": more}
        if more:
            out["response_metadata"] = {"next_cursor": str(start + size)}
        return out


class _SlackError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = body.get("blocks") or []
    if not isinstance(blocks, list):
        raise _SlackError("invalid_blocks")
    return [b for b in blocks if isinstance(b, dict)]


def _need(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not value:
        raise _SlackError("channel_not_found" if name in ("channel", "channel_id")
                          else "invalid_arguments")
    return str(value)


def _channel(body: dict[str, Any]) -> str:
    return str(body.get("channel") or body.get("channel_id") or "")


def _ts_key(ts: str) -> tuple[int, int]:
    whole, _, frac = ts.partition(".")
    return int(whole), int(frac or 0)


def _token(request: web.Request, body: dict[str, Any]) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth.removeprefix("Bearer ").strip()
    token = body.get("token")
    return str(token) if token else None


async def _parse_body(request: web.Request) -> dict[str, Any]:
    body: dict[str, Any] = dict(request.query)
    raw = await request.read()
    if not raw:
        return body
    if request.content_type == "application/json":
        loaded = json.loads(raw)
        if isinstance(loaded, dict):
            body.update(loaded)
        return body
    for key, value in parse_qsl(raw.decode(), keep_blank_values=True):
        body[key] = _maybe_json(value) if key in ("chunks", "blocks", "attachments") else value
    return body


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
