"""A local Discord that discord.py's real client can log in to: REST and gateway in one server.

    async with FakeDiscord() as fake:
        # point discord.py at fake.api_url (Route.BASE) and fake.gateway_url (DEFAULT_GATEWAY)
        await fake.wait_identified()
        interaction = await fake.slash("reason", question="Why is the sky blue?")
        await fake.wait_for(lambda: fake.requests_to("PATCH", "/channels/"))

What it does like Discord (and what tests can therefore assert on):

- REST under `/api/v10`: login (`/users/@me`, `/oauth2/applications/@me`, `/gateway/bot`),
  application command sync (global and per guild), interaction callbacks (answered with the
  `with_response` shape; a message, a "thinking" defer, or a deferred update for buttons), the
  interaction webhook (fetch and edit `@original`), channels (fetch), channel messages (create,
  edit, fetch), threads (from a message, without one, forum posts). Only what Ponder calls:
  anything else is a 404.
  JSON answers carry `Content-Type: application/json` exactly (discord.py parses nothing else).
- Every request is recorded (`fake.requests`): method, path, query, JSON body, headers, status.
- Rate limits as Discord documents them: every route has a bucket, keyed by its top-level
  resource (channel, webhook + token), and every answer carries `X-RateLimit-Limit`,
  `-Remaining`, `-Reset`, `-Reset-After` and `-Bucket`. Buckets can be shared by routes
  (`shared_buckets`: one name, one count); and as Discord does, a channel's message posts and
  edits answer with one bucket name but are counted apart (`same_name`). By default
  (`rate_model="window"`) a bucket counts in fixed windows: `Limit` requests in a window that
  opens with the first request and lasts `Reset-After` seconds; `Remaining` counts down and
  is back to `Limit` only when the window ends. `rate_model="bucket"` counts as a token bucket
  instead (`Limit` saved up, refilled evenly over the window). Above them the global limit
  (50 a second, interaction callbacks excluded). A request over a limit gets a 429 with
  `retry_after` and `global` in its body, `Retry-After`, `X-RateLimit-Scope` (`user` or
  `global`) and `Via` (a 429 without `Via` reads to discord.py as a Cloudflare ban).
  `scaled_rate_limits(n)`: windows n times shorter, for tests. `fail_next(...)` injects 429s
  or 5xx into the next matching requests. `ClientHolds` counts the requests discord.py held
  back itself, for want of room in a window it knew was spent.
- Validation that can fail a test: content over 2000 chars, empty messages, unknown channels or
  messages, editing someone else's message, answering an interaction twice or after 3 s,
  an expired interaction token (15 min, `token_ttl`, or `expire_token`).
- Interactions from anywhere the app can be used (`where=`, `PLACES`): the guild, the bot's
  DM, and with the app installed to a user's account (`install="user"`) a guild the bot is not
  in, a DM between two people, a group DM. Each carries `context` and
  `authorizing_integration_owners` as Discord sends them; the command must have been
  registered for that context and install type (`contexts`, `integration_types`, global
  commands only), or the call fails the test. Channels the bot is not in answer every channel
  call with 403; the interaction's webhook works everywhere: follow-up messages
  (`POST /webhooks/{app}/{token}`, the first one after a defer taking the place of the
  "thinking" message, as Discord does), fetched and edited like `@original`.
- Message commands (`message_command`, type 3 with `target_id` and the message resolved).
- A gateway websocket (text frames): HELLO → IDENTIFY → READY (with `application`) →
  GUILD_CREATE (a guild with a text channel, a forum channel, roles, members); heartbeats are
  ACKed; RESUME is answered. `slash`, `user_message` and `click` push INTERACTION_CREATE and
  MESSAGE_CREATE as Discord would; THREAD_CREATE follows a REST thread creation.
- Outages (`go_down`, `come_back`, `outage(seconds)`, `is_down`; see `tests/fakes/outage.py`):
  REST and gateway unreachable, open connections reset, everything recorded kept; back on the
  same port, where discord.py's RESUME is answered and `wait_identified` waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.outage import Outages

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000
JSON = "application/json"

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38

MESSAGE_CONTENT_INTENT = 1 << 15

MEMBER_PERMISSIONS = (
    ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | READ_MESSAGE_HISTORY
    | USE_APPLICATION_COMMANDS | CREATE_PUBLIC_THREADS | SEND_MESSAGES_IN_THREADS
)
BOT_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_THREADS
MOD_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_MESSAGES | MANAGE_THREADS

# Channel types.
GUILD_TEXT = 0
DM = 1
GROUP_DM = 3
PUBLIC_THREAD = 11
GUILD_FORUM = 15

# Where an interaction happens (`context`) and who installed the app for it (the keys of
# `authorizing_integration_owners`, `integration_types` of a command).
CONTEXT_GUILD, CONTEXT_BOT_DM, CONTEXT_PRIVATE = 0, 1, 2
GUILD_INSTALL, USER_INSTALL = 0, 1
# Places a user can act from (`slash(..., where=...)`): the guild the bot is in, the bot's own
# DM, and, with the app installed to the user's account, a guild the bot is not in, a DM
# between two people and a group DM (the last three are channels the bot cannot see: any
# channel call there is answered 403).
PLACES = ("guild", "bot_dm", "foreign_guild", "dm", "group_dm")

# Application command types.
CHAT_INPUT, MESSAGE_COMMAND = 1, 3

# Interaction callback types.
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6

MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7

# Per-route buckets: route template -> (limit, window seconds). Templates name the major
# parameter ({channel_id}, {webhook}) that keys a bucket, as Discord does.
DEFAULT_RATE_LIMITS: dict[str, tuple[int, float]] = {
    "POST /channels/{channel_id}/messages": (5, 5.0),
    "PATCH /channels/{channel_id}/messages/{id}": (5, 5.0),
    "POST /channels/{channel_id}/messages/{id}/threads": (5, 5.0),
    "POST /channels/{channel_id}/threads": (5, 5.0),
    "PATCH /webhooks/{webhook}/messages/{id}": (5, 5.0),
    "POST /webhooks/{webhook}": (5, 5.0),
}
# Routes that answer with another route's `X-RateLimit-Bucket` yet are counted apart: Discord
# does this with a channel's message posts and edits (discord/discord-api-docs#1442, #8073:
# one bucket name, `Remaining` counting down separately). A client that takes the name at its
# word counts both in one window and gets that window wrong both ways.
SAME_NAME: dict[str, str] = {
    "PATCH /channels/{channel_id}/messages/{id}": "POST /channels/{channel_id}/messages",
}
# Every other route has a bucket too (Discord sends the headers on every answer): a roomy one.
OTHER_ROUTES_LIMIT: tuple[int, float] = (50, 1.0)
DEFAULT_GLOBAL_LIMIT = 50  # requests per second per bot (interaction callbacks excluded)

# How a bucket counts. "window", as Discord documents it: `Limit` requests in a window of
# `Reset-After` seconds that opens with the first request; `Remaining` counts down and comes
# back to `Limit` only when the window ends. "bucket": a token bucket (`Limit` saved up,
# refilled evenly over the window), which forgives a steady pace that a window refuses.
RATE_MODELS = ("window", "bucket")


def scaled_rate_limits(scale: float) -> dict[str, tuple[int, float]]:
    """Discord's per-route buckets with every window `scale` times shorter, the same counts."""
    return {route: (limit, window / scale)
            for route, (limit, window) in DEFAULT_RATE_LIMITS.items()}


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    body: Any  # parsed JSON, raw text, or None
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived
    status: int = 0
    route: str = ""  # the template it matched, e.g. "PATCH /channels/{channel_id}/messages/{id}"
    scope: str = ""  # a 429's X-RateLimit-Scope: "user" (a route's bucket) or "global"

    @property
    def json(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


@dataclass
class Fault:
    """The next `count` requests matching `method`/`path` (regex) are answered with `status`."""

    count: int
    status: int
    method: str | None
    path: re.Pattern[str] | None
    retry_after: float
    is_global: bool
    via: bool
    skip: int = 0  # matching requests let through first

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        return not self.path or bool(self.path.search(path))


@dataclass
class Interaction:
    """One interaction the fake sent; what the bot answered is filled in as it answers."""

    id: int
    token: str
    type: int
    channel_id: int
    guild_id: int | None
    user_id: int
    created: float
    payload: dict[str, Any]
    response_type: int | None = None
    original_id: int | None = None
    expired: bool = False
    followups: list[int] = field(default_factory=list)  # follow-up messages, in order


@dataclass
class _Bucket:
    """One rate-limit bucket (a route's, keyed by its major parameter, or the global one)."""

    model: str  # one of RATE_MODELS
    limit: int
    window: float  # seconds
    hash: str  # X-RateLimit-Bucket
    remaining: int = 0  # "window": what is left of the open window
    reset_at: float = 0.0  # "window": when the open window ends (monotonic); none open before
    tokens: float = 0.0  # "bucket": what is saved up
    stamp: float = 0.0  # "bucket": when `tokens` was last brought up to date

    def __post_init__(self) -> None:
        self.tokens, self.stamp = float(self.limit), time.monotonic()

    def take(self, now: float) -> bool:
        """Count one request; False when the bucket has nothing left for it."""
        if self.model == "window":
            if now >= self.reset_at:  # the window ended: this request opens the next one
                self.remaining, self.reset_at = self.limit, now + self.window
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True
        self.tokens = min(float(self.limit),
                          self.tokens + (now - self.stamp) * self.limit / self.window)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def retry_after(self, now: float) -> float:
        if self.model == "window":
            return max(0.0, self.reset_at - now)
        return max(0.0, (1 - self.tokens) * self.window / self.limit)

    def headers(self, now: float) -> dict[str, str]:
        if self.model == "window":
            remaining, reset_after = self.remaining, max(0.0, self.reset_at - now)
        else:  # what is saved up, and when the bucket is full again
            remaining = int(self.tokens)
            reset_after = (self.limit - self.tokens) * self.window / self.limit
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": self.hash,
        }


class FakeDiscord(Outages):
    def __init__(
        self,
        *,
        rate_limits: dict[str, tuple[int, float]] | None = None,
        global_limit: int | None = DEFAULT_GLOBAL_LIMIT,
        rate_model: str = "window",
        shared_buckets: dict[str, str] | None = None,
        same_name: dict[str, str] | None = None,
        latency: float = 0.0,
        heartbeat_interval_ms: int = 41250,
        interaction_deadline: float = 3.0,
        token_ttl: float = 15 * 60,
        token: str = "fake-bot-token",
    ) -> None:
        Outages.__init__(self)
        self.rate_limits = DEFAULT_RATE_LIMITS if rate_limits is None else rate_limits
        self.global_limit = global_limit
        if rate_model not in RATE_MODELS:
            raise ValueError(f"rate_model must be one of {RATE_MODELS}")
        self.rate_model = rate_model
        # Route -> the route whose bucket it counts in (one name, one count), as Discord
        # documents shared buckets; and route -> the route whose bucket name it answers with
        # while counted apart, as Discord does with message posts and edits.
        self.shared_buckets = shared_buckets or {}
        self.same_name = SAME_NAME if same_name is None else same_name
        self.latency = latency
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.interaction_deadline = interaction_deadline
        self.token_ttl = token_ttl
        self.token = token

        self._ids = itertools.count(1)
        self.application_id = self.snowflake()
        self.bot = self._user(self.application_id, "Ponder", bot=True)
        self.alice = self._user(self.snowflake(), "alice")
        self.bob = self._user(self.snowflake(), "bob")
        self.mod = self._user(self.snowflake(), "mod")
        self.guild_id = self.snowflake()
        self.mod_role_id = self.snowflake()
        self.bot_role_id = self.snowflake()
        self.text_channel_id = self.snowflake()
        self.forum_channel_id = self.snowflake()
        # A guild with the app installed by its users only (the bot is not a member), a DM
        # between alice and bob, and a group DM: user-install places the bot cannot see.
        self.foreign_guild_id = self.snowflake()
        self.foreign_channel_id = self.snowflake()
        self.private_dm_id = self.snowflake()
        self.group_dm_id = self.snowflake()
        self.users: dict[int, dict[str, Any]] = {
            int(u["id"]): u for u in (self.bot, self.alice, self.bob, self.mod)
        }
        self.channels: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.interactions: dict[int, Interaction] = {}
        self.requests: list[RecordedRequest] = []
        self.gateway_frames: list[dict[str, Any]] = []  # what the client sent on the gateway
        self.deny_threads: set[int] = set()  # channels where thread creation answers 403
        # Privileged intents the portal has not enabled for this bot (e.g.
        # MESSAGE_CONTENT_INTENT): an IDENTIFY asking for one is closed with 4014, as Discord
        # does.
        self.disallowed_intents = 0
        self._faults: list[Fault] = []
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._global: _Bucket | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._hung = asyncio.Event()  # cleared: REST hangs (`hang`)
        self._hung.set()
        self._identified = asyncio.Event()
        self._seq = 0
        self._session_id = secrets.token_hex(16)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._socket_tasks: set[asyncio.Task[Any]] = set()
        self.port = 0
        self._add_text_channel(self.text_channel_id, "general")
        self._add_forum_channel(self.forum_channel_id, "questions")
        self._add_unseen_channels()
        self._routes = self._route_table()

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def close(self) -> None:
        self._end_outages()
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _listen_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def _went_down(self) -> None:
        # A client that comes back must identify or resume again before it hears anything.
        self._identified.clear()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # --- ids, users, channels -------------------------------------------------------------

    def snowflake(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (next(self._ids) & 0x3FFFFF)

    @staticmethod
    def _user(user_id: int, name: str, bot: bool = False) -> dict[str, Any]:
        user: dict[str, Any] = {
            "id": str(user_id), "username": name, "discriminator": "0", "global_name": name,
            "avatar": None,
        }
        if bot:
            user["bot"] = True
        return user

    def _add_text_channel(self, channel_id: int, name: str) -> dict[str, Any]:
        channel = {
            "id": str(channel_id), "type": GUILD_TEXT, "guild_id": str(self.guild_id),
            "name": name, "position": len(self.channels), "permission_overwrites": [],
            "nsfw": False, "parent_id": None, "topic": None, "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        self.channels[channel_id] = channel
        return channel

    def _add_forum_channel(self, channel_id: int, name: str) -> dict[str, Any]:
        channel = self._add_text_channel(channel_id, name)
        channel.update({
            "type": GUILD_FORUM, "available_tags": [], "default_reaction_emoji": None,
            "default_sort_order": None, "default_forum_layout": 0, "flags": 0,
            "default_thread_rate_limit_per_user": 0,
        })
        return channel

    def _add_unseen_channels(self) -> None:
        foreign = self._add_text_channel(self.foreign_channel_id, "elsewhere")
        foreign.update(guild_id=str(self.foreign_guild_id), _bot_absent=True)
        self.channels[self.private_dm_id] = {
            "id": str(self.private_dm_id), "type": DM, "recipients": [self.bob],
            "last_message_id": None, "_bot_absent": True}
        self.channels[self.group_dm_id] = {
            "id": str(self.group_dm_id), "type": GROUP_DM, "name": "study group",
            "icon": None, "owner_id": self.alice["id"], "recipients": [self.bob, self.mod],
            "last_message_id": None, "_bot_absent": True}

    def place_channel(self, where: str, user: dict[str, Any] | None = None) -> int:
        """The channel a user acts from in one of `PLACES` (a new DM for "bot_dm")."""
        match where:
            case "guild":
                return self.text_channel_id
            case "foreign_guild":
                return self.foreign_channel_id
            case "dm":
                return self.private_dm_id
            case "group_dm":
                return self.group_dm_id
            case "bot_dm":
                dm_id = self.snowflake()
                self.channels[dm_id] = {"id": str(dm_id), "type": DM,
                                        "recipients": [user or self.alice],
                                        "last_message_id": None}
                return dm_id
        raise ValueError(f"where must be one of {PLACES}")

    def _where_of(self, channel_id: int) -> str:
        if channel_id == self.foreign_channel_id:
            return "foreign_guild"
        if channel_id == self.private_dm_id:
            return "dm"
        if channel_id == self.group_dm_id:
            return "group_dm"
        return "bot_dm" if self.channels[channel_id]["type"] == DM else "guild"

    def add_user(self, name: str) -> dict[str, Any]:
        """Another member of the guild (for `slash(..., user=...)`)."""
        user = self._user(self.snowflake(), name)
        self.users[int(user["id"])] = user
        return user

    def add_text_channel(self, name: str) -> int:
        """A second text channel (after READY, announced with CHANNEL_CREATE by the caller)."""
        channel_id = self.snowflake()
        self._add_text_channel(channel_id, name)
        return channel_id

    def _member(self, user: dict[str, Any], roles: list[int] | None = None) -> dict[str, Any]:
        return {
            "user": user, "roles": [str(r) for r in roles or []], "nick": None, "avatar": None,
            "joined_at": "2025-01-01T00:00:00+00:00", "deaf": False, "mute": False, "flags": 0,
            "pending": False,
        }

    def _permissions_of(self, user_id: int) -> int:
        if user_id == int(self.mod["id"]):
            return MOD_PERMISSIONS
        if user_id == int(self.bot["id"]):
            return BOT_PERMISSIONS
        return MEMBER_PERMISSIONS

    def guild_payload(self) -> dict[str, Any]:
        top = [c for c in self.channels.values() if c["type"] in (GUILD_TEXT, GUILD_FORUM)
               and c.get("guild_id") == str(self.guild_id)]
        threads = [c for c in self.channels.values() if c["type"] == PUBLIC_THREAD]
        return {
            "id": str(self.guild_id), "name": "Ponder test guild", "icon": None,
            "owner_id": self.mod["id"], "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 1, "explicit_content_filter": 0, "features": [],
            "mfa_level": 0, "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "vanity_url_code": None, "description": None,
            "premium_tier": 0, "preferred_locale": "en-US", "nsfw_level": 0, "large": False,
            "unavailable": False, "member_count": 4, "emojis": [], "stickers": [],
            "voice_states": [], "presences": [], "stage_instances": [],
            "guild_scheduled_events": [], "soundboard_sounds": [],
            "joined_at": "2025-01-01T00:00:00+00:00",
            "roles": [
                self._role(self.guild_id, "@everyone", MEMBER_PERMISSIONS, 0),
                self._role(self.mod_role_id, "mods", MOD_PERMISSIONS, 1),
                self._role(self.bot_role_id, "Ponder", BOT_PERMISSIONS, 2, managed=True),
            ],
            "channels": top,
            "threads": threads,
            "members": [
                self._member(self.bot, [self.bot_role_id]), self._member(self.alice),
                self._member(self.bob), self._member(self.mod, [self.mod_role_id]),
            ],
        }

    @staticmethod
    def _role(role_id: int, name: str, permissions: int, position: int,
              managed: bool = False) -> dict[str, Any]:
        return {
            "id": str(role_id), "name": name, "permissions": str(permissions),
            "position": position, "color": 0, "hoist": False, "managed": managed,
            "mentionable": False, "flags": 0, "icon": None, "unicode_emoji": None,
        }

    # --- what the bot did: queries for tests ----------------------------------------------

    def requests_to(self, method: str | None = None, path: str = "",
                    status: int | None = None) -> list[RecordedRequest]:
        """Recorded requests by method and a regex searched in the path."""
        return [
            r for r in self.requests
            if (method is None or r.method == method) and re.search(path, r.path)
            and (status is None or r.status == status)
        ]

    def count(self, status: int) -> int:
        return sum(1 for r in self.requests if r.status == status)

    def channel_messages(self, channel_id: int) -> list[dict[str, Any]]:
        """Messages in a channel or thread, oldest first (ephemeral ones left out)."""
        return sorted(
            (m for m in self.messages.values()
             if int(m["channel_id"]) == channel_id
             and not m["flags"] & MESSAGE_FLAG_EPHEMERAL),
            key=lambda m: int(m["id"]),
        )

    def message_history(self, message_id: int) -> list[str]:
        """Every content a message showed, in order (creation, then each edit)."""
        return list(self.messages[message_id]["_history"])

    def threads(self) -> list[dict[str, Any]]:
        return [c for c in self.channels.values() if c["type"] == PUBLIC_THREAD]

    async def wait_for(self, predicate: Callable[[], Any], seconds: float = 10.0) -> Any:
        """Wait until `predicate()` is truthy (checked after every request and gateway frame)."""
        async with asyncio.timeout(seconds):
            async with self._changed:
                while not (result := predicate()):
                    # Woken by every request; polled too, for state the fake does not own.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.05)
                return result

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- faults ---------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 429, *, method: str | None = None,
                  path: str | None = None, retry_after: float = 1.0, is_global: bool = False,
                  via: bool = True, skip: int = 0) -> None:
        """Answer the next `count` matching requests with `status` (429: with Retry-After),
        after letting `skip` of them through."""
        pattern = re.compile(path) if path else None
        self._faults.append(Fault(count, status, method, pattern, retry_after, is_global, via,
                                  skip))

    def expire_token(self, interaction: Interaction) -> None:
        interaction.expired = True

    # --- gateway: pushing events ----------------------------------------------------------

    @property
    def gateway_connections(self) -> int:
        """Gateway websockets open now."""
        return len(self._sockets)

    async def wait_identified(self, seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds):
            await self._identified.wait()

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        frame = json.dumps({"op": 0, "t": event, "s": self._seq, "d": data})
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(frame)

    async def slash(self, name: str = "reason", *, user: dict[str, Any] | None = None,
                    channel_id: int | None = None, dm: bool = False, where: str = "guild",
                    install: str | None = None, **options: str | int) -> Interaction:
        """A user runs `/name option:value…` (INTERACTION_CREATE, type 2) in one of `PLACES`
        (`dm=True` is the bot's DM), through the app's guild or user install (`install`:
        "guild", "user" or "both"; by default what the place allows)."""
        data: dict[str, Any] = {
            "name": name, "type": CHAT_INPUT,
            "options": [
                {"name": k, "type": 4 if isinstance(v, int) else 3, "value": v}
                for k, v in options.items()
            ],
        }
        where = "bot_dm" if dm else where
        return await self._command(data, user or self.alice, channel_id, where, install)

    async def message_command(self, name: str, message: dict[str, Any], *,
                              user: dict[str, Any] | None = None,
                              install: str | None = None) -> Interaction:
        """A user runs the message command `name` on `message` (its "Apps" menu): type 2
        with command type 3, `target_id` and the message resolved, as Discord sends it."""
        data: dict[str, Any] = {
            "name": name, "type": MESSAGE_COMMAND, "target_id": message["id"],
            "resolved": {"messages": {message["id"]: self._strip(message)}},
        }
        channel_id = int(message["channel_id"])
        return await self._command(data, user or self.alice, channel_id,
                                   self._where_of(channel_id), install)

    async def _command(self, data: dict[str, Any], user: dict[str, Any],
                       channel_id: int | None, where: str,
                       install: str | None) -> Interaction:
        if where not in PLACES:
            raise ValueError(f"where must be one of {PLACES}")
        install = install or ("guild" if where in ("guild", "bot_dm") else "user")
        name, kind = data["name"], data["type"]
        # Guild commands exist only for the guild install (in its guild; here in the bot DM
        # too, which tests that sync per guild rely on); everywhere else Discord offers the
        # global ones, where their contexts and install types allow.
        guild_commands = self.guild_commands.get(self.guild_id, [])
        command = next((c for c in guild_commands if c["name"] == name
                        and c.get("type", CHAT_INPUT) == kind), None)
        if command is not None and where in ("guild", "bot_dm") and install == "guild":
            data["guild_id"] = str(self.guild_id)
        else:
            command = next((c for c in self.global_commands if c["name"] == name
                            and c.get("type", CHAT_INPUT) == kind), None)
            if command is None:
                raise AssertionError(f"{name!r} (type {kind}) was never synced here")
            context = {"guild": CONTEXT_GUILD, "foreign_guild": CONTEXT_GUILD,
                       "bot_dm": CONTEXT_BOT_DM}.get(where, CONTEXT_PRIVATE)
            installs = {"guild": [GUILD_INSTALL], "user": [USER_INSTALL],
                        "both": [GUILD_INSTALL, USER_INSTALL]}[install]
            # Discord's defaults: every context; the guild install only.
            if context not in (command.get("contexts") or [0, 1, 2]):
                raise AssertionError(f"{name!r} is not registered for context {context}")
            registered = command.get("integration_types") or [GUILD_INSTALL]
            if not any(i in registered for i in installs):
                raise AssertionError(f"{name!r} is not registered for install {install}")
        data["id"] = command["id"]
        return await self._interact(2, data, user, channel_id, where=where, install=install)

    async def click(self, message_id: int, custom_id: str, *,
                    user: dict[str, Any] | None = None) -> Interaction:
        """A user presses a button on a message (INTERACTION_CREATE, type 3)."""
        message = self.messages[message_id]
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(3, data, user or self.alice, int(message["channel_id"]),
                                    message=message)

    async def _interact(self, kind: int, data: dict[str, Any], user: dict[str, Any],
                        channel_id: int | None, *, where: str | None = None,
                        install: str | None = None,
                        message: dict[str, Any] | None = None) -> Interaction:
        interaction_id = self.snowflake()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        if where is None:  # a button: where its message is
            where = "guild" if channel_id is None else self._where_of(channel_id)
        install = install or ("guild" if where in ("guild", "bot_dm") else "user")
        user_id = int(user["id"])
        owners: dict[str, str] = {}
        if install in ("guild", "both"):
            # A guild install names its guild; used from the bot's DM, "0".
            owners[str(GUILD_INSTALL)] = str(self.guild_id) if where == "guild" else "0"
        if install in ("user", "both"):
            owners[str(USER_INSTALL)] = str(user_id)
        payload: dict[str, Any] = {
            "id": str(interaction_id), "application_id": str(self.application_id),
            "type": kind, "data": data, "token": token, "version": 1, "locale": "en-US",
            "entitlements": [], "attachment_size_limit": 10 * 1024 * 1024,
            "authorizing_integration_owners": owners,
        }
        guild_id: int | None = None
        if where in ("bot_dm", "dm", "group_dm"):
            if channel_id is None:
                channel_id = self.place_channel(where, user)
            channel = self.channels[channel_id]
            payload.update(user=user, context=CONTEXT_BOT_DM if where == "bot_dm"
                           else CONTEXT_PRIVATE, channel_id=str(channel_id),
                           channel=self._strip(channel),
                           app_permissions=str(SEND_MESSAGES | VIEW_CHANNEL | EMBED_LINKS))
        else:
            home = where == "guild"
            channel_id = channel_id or self.place_channel(where)
            channel = self.channels[channel_id]
            guild_id = self.guild_id if home else self.foreign_guild_id
            member = self._member(user, [self.mod_role_id] if user is self.mod else [])
            member["permissions"] = str(self._permissions_of(user_id))
            if home:
                app_permissions = BOT_PERMISSIONS
                if channel_id in self.deny_threads:
                    app_permissions &= ~CREATE_PUBLIC_THREADS
            else:
                # What a user-installed app is said to have there; it can still not act in
                # a channel of a guild it is not in (every channel call is a 403).
                app_permissions = MEMBER_PERMISSIONS
            payload.update(
                guild_id=str(guild_id), member=member, context=CONTEXT_GUILD,
                channel_id=str(channel_id), channel=self._strip(channel),
                guild={"id": str(guild_id), "locale": "en-US", "features": []},
                guild_locale="en-US", app_permissions=str(app_permissions),
            )
        if message is not None:
            payload["message"] = self._strip(message)
        interaction = Interaction(interaction_id, token, kind, channel_id, guild_id, user_id,
                                  time.monotonic(), payload)
        self.interactions[interaction_id] = interaction
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def user_message(self, channel_id: int, content: str, *,
                           user: dict[str, Any] | None = None) -> dict[str, Any]:
        """A user writes in a channel or thread (MESSAGE_CREATE, where the bot can see it)."""
        user = user or self.alice
        message = self._new_message(channel_id, content, author=user)
        if self.channels[channel_id].get("_bot_absent"):
            return message
        payload = self._strip(message)
        if self.channels[channel_id].get("guild_id"):
            payload["member"] = {k: v for k, v in self._member(user).items() if k != "user"}
        await self.dispatch("MESSAGE_CREATE", payload)
        return message

    # --- gateway: the socket --------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await ws.send_str(json.dumps(
                {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.gateway_frames.append(frame)
                await self._on_frame(ws, frame)
                await self._notify()
        finally:
            self._sockets.discard(ws)
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == 1:  # heartbeat
            await ws.send_str(json.dumps({"op": 11}))
        elif op == 2:  # identify
            if frame["d"].get("token") != self.token:
                await ws.close(code=4004, message=b"Authentication failed.")
                return
            if int(frame["d"].get("intents", 0)) & self.disallowed_intents:
                await ws.close(code=4014, message=b"Disallowed intent(s).")
                return
            self._seq += 1
            # A sharded client names its shard [id, count]: the guild is on the shard Discord
            # puts it on, (guild_id >> 22) % count, and only that shard hears of it.
            shard = frame["d"].get("shard") or [0, 1]
            ours = (self.guild_id >> 22) % int(shard[1]) == int(shard[0])
            ready = {
                "v": 10, "user": {**self.bot, "verified": True, "mfa_enabled": False,
                                  "flags": 0, "email": None},
                "guilds": [{"id": str(self.guild_id), "unavailable": True}] if ours else [],
                "session_id": self._session_id, "resume_gateway_url": self.gateway_url,
                "shard": shard, "application": {"id": str(self.application_id), "flags": 0},
                "private_channels": [], "relationships": [], "presences": [],
            }
            await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": self._seq, "d": ready}))
            if ours:
                self._seq += 1
                await ws.send_str(json.dumps(
                    {"op": 0, "t": "GUILD_CREATE", "s": self._seq, "d": self.guild_payload()}))
            self._identified.set()
        elif op == 6:  # resume
            self._seq += 1
            await ws.send_str(json.dumps({"op": 0, "t": "RESUMED", "s": self._seq, "d": {}}))
            self._identified.set()

    # --- REST: plumbing -------------------------------------------------------------------

    def _route_table(self) -> list[tuple[str, re.Pattern[str], str, Handler]]:
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/oauth2/applications/@me", self._get_app),
            ("GET", "/applications/@me", self._get_app),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("GET", "/gateway", self._get_gateway_bot),
            ("GET", "/applications/{app}/commands", self._get_commands),
            ("PUT", "/applications/{app}/commands", self._put_commands),
            ("GET", "/applications/{app}/guilds/{guild_id}/commands", self._get_commands),
            ("PUT", "/applications/{app}/guilds/{guild_id}/commands", self._put_commands),
            ("POST", "/interactions/{interaction}/{token}/callback", self._callback),
            ("POST", "/webhooks/{webhook}", self._webhook_send),
            ("GET", "/webhooks/{webhook}/messages/{id}", self._webhook_get),
            ("PATCH", "/webhooks/{webhook}/messages/{id}", self._webhook_edit),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("GET", "/channels/{channel_id}/messages/{id}", self._get_message),
            ("POST", "/channels/{channel_id}/messages", self._post_message),
            ("PATCH", "/channels/{channel_id}/messages/{id}", self._edit_message),
            ("POST", "/channels/{channel_id}/messages/{id}/threads", self._thread_from_message),
            ("POST", "/channels/{channel_id}/threads", self._thread_without_message),
        ]
        compiled = []
        for method, template, handler in table:
            pattern = re.escape(template)
            pattern = pattern.replace(re.escape("{webhook}"), r"(?P<webhook>\d+/[^/]+)")
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
            compiled.append((method, re.compile(f"^{pattern}$"), f"{method} {template}", handler))
        return compiled

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        raw = await request.text()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        record = RecordedRequest(request.method, path, dict(request.query), body,
                                 dict(request.headers), time.monotonic())
        self.requests.append(record)
        generation = self._generation
        try:
            response = await self._answer(request, record, generation)
        except _Reply as reply:
            response = reply.response
        # Status 0: the fake went down before answering; the client never heard back.
        record.status = 0 if self._cut_off(generation) else response.status
        record.scope = response.headers.get("X-RateLimit-Scope", "")
        await self._notify()
        return response

    def hang(self) -> None:
        """From now on REST takes requests and never answers them (a stuck proxy, a Discord
        incident): the client's own deadlines are all that end a call."""
        self._hung.clear()

    async def _answer(self, request: web.Request, record: RecordedRequest,
                      generation: int) -> web.Response:
        await self._hung.wait()
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._cut_off(generation):
            return web.Response(status=503)  # never applied, never read: the host was gone
        for method, pattern, name, found in self._routes:
            match = pattern.match(record.path) if method == record.method else None
            if match:
                record.route, handler = name, found
                break
        else:
            return _error(404, 0, "404: Not Found")
        params = match.groupdict()
        is_interaction = record.path.startswith(("/interactions/", "/webhooks/"))
        if not is_interaction and request.headers.get("Authorization") != f"Bot {self.token}":
            return _error(401, 0, "401: Unauthorized")
        fault = self._take_fault(record)
        if fault is not None:
            return fault
        headers = self._rate_limit(record.route, params, is_interaction)
        if isinstance(headers, web.Response):
            return headers
        response = await handler(record, params)
        response.headers.update(headers)
        return response

    def _take_fault(self, record: RecordedRequest) -> web.Response | None:
        for fault in self._faults:
            if fault.count > 0 and fault.matches(record.method, record.path):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.count -= 1
                if fault.status == 429:
                    return _too_many(fault.retry_after, fault.is_global, fault.via, "user")
                return web.Response(status=fault.status, text="upstream error",
                                    content_type="text/plain")
        return None

    def _rate_limit(self, route: str, params: dict[str, str],
                    is_interaction: bool) -> dict[str, str] | web.Response:
        now = time.monotonic()
        if self.global_limit and not route.startswith("POST /interactions/"):
            if self._global is None:
                self._global = _Bucket(self.rate_model, self.global_limit, 1.0, "global")
            if not self._global.take(now):
                return _too_many(self._global.retry_after(now), True, True, "global")
        name = self.shared_buckets.get(route, route)
        limit, window = self.rate_limits.get(name, OTHER_ROUTES_LIMIT)
        # Keyed by the top-level resource in the path, as Discord does (channel, webhook).
        major = params.get("channel_id") or params.get("webhook") or ""
        bucket = self._buckets.get((name, major))
        if bucket is None:
            shown = self.same_name.get(name, name)
            digest = hashlib.sha1(shown.encode()).hexdigest()[:16]
            bucket = self._buckets[(name, major)] = _Bucket(self.rate_model, limit, window,
                                                            digest)
        if not bucket.take(now):
            response = _too_many(bucket.retry_after(now), False, True, "user")
            response.headers.update(bucket.headers(now))
            return response
        return bucket.headers(now)

    # --- REST: login ----------------------------------------------------------------------

    async def _get_me(self, record: RecordedRequest, params: dict[str, str]) -> web.Response:
        return _json({**self.bot, "verified": True, "mfa_enabled": False, "flags": 0})

    async def _get_app(self, record: RecordedRequest, params: dict[str, str]) -> web.Response:
        return _json({
            "id": str(self.application_id), "name": "Ponder", "icon": None,
            "description": "Reasons step by step", "rpc_origins": [], "bot_public": True,
            "bot_require_code_grant": False, "owner": self.mod, "team": None,
            "verify_key": "0" * 64, "flags": 0, "summary": "", "bot": self.bot,
            "tags": [], "redirect_uris": [],
        })

    async def _get_gateway_bot(self, record: RecordedRequest,
                               params: dict[str, str]) -> web.Response:
        return _json({
            "url": self.gateway_url, "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0,
                                    "max_concurrency": 1},
        })

    # --- REST: application commands -------------------------------------------------------

    def _commands_for(self, params: dict[str, str]) -> list[dict[str, Any]]:
        if int(params["app"]) != self.application_id:
            raise _Reply(_error(403, 50001, "Missing Access"))
        if "guild_id" in params:
            return self.guild_commands.setdefault(int(params["guild_id"]), [])
        return self.global_commands

    async def _get_commands(self, record: RecordedRequest,
                            params: dict[str, str]) -> web.Response:
        return _json(self._commands_for(params))

    async def _put_commands(self, record: RecordedRequest,
                            params: dict[str, str]) -> web.Response:
        current = self._commands_for(params)
        if not isinstance(record.body, list):
            return _error(400, 50035, "Invalid Form Body")
        stored = []
        for command in record.body:
            # Slash command names are one lowercase word; a message or user command's name
            # is what its menu shows (spaces and capitals allowed), up to 32 characters.
            name = command.get("name", "")
            valid = (re.fullmatch(r"[-_\w]{1,32}", name) and name == name.lower()
                     if command.get("type", CHAT_INPUT) == CHAT_INPUT
                     else 1 <= len(name) <= 32 and name.strip() == name)
            if not valid:
                return _error(400, 50035, "Invalid Form Body")
            old = next((c for c in current if c["name"] == command["name"]), None)
            stored.append({
                # Discord answers every command with a description ("" for menu commands).
                "type": 1, "options": [], "default_member_permissions": None, "nsfw": False,
                "description": "", **command,
                "id": old["id"] if old else str(self.snowflake()),
                "application_id": str(self.application_id),
                "version": str(self.snowflake()),
                **({"guild_id": params["guild_id"]} if "guild_id" in params else {}),
            })
        current[:] = stored
        return _json(stored)

    # --- REST: interactions and their webhook ---------------------------------------------

    def _interaction_by_token(self, webhook: str) -> Interaction:
        app_id, _, token = webhook.partition("/")
        for interaction in self.interactions.values():
            if interaction.token == token and int(app_id) == self.application_id:
                if interaction.expired or time.monotonic() - interaction.created > self.token_ttl:
                    raise _Reply(_error(401, 50027, "Invalid Webhook Token"))
                return interaction
        raise _Reply(_error(404, 10015, "Unknown Webhook"))

    async def _callback(self, record: RecordedRequest, params: dict[str, str]) -> web.Response:
        interaction = self.interactions.get(int(params["interaction"]))
        if interaction is None or interaction.token != params["token"]:
            return _error(404, 10062, "Unknown interaction")
        if interaction.response_type is not None:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - interaction.created > self.interaction_deadline:
            return _error(404, 10062, "Unknown interaction")
        body = record.json
        kind = body.get("type")
        data = body.get("data") or {}
        resource: dict[str, Any] | None = None
        loading = ephemeral = False
        if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            flags = int(data.get("flags", 0))
            ephemeral = bool(flags & MESSAGE_FLAG_EPHEMERAL)
            loading = kind == DEFERRED_CHANNEL_MESSAGE
            if kind == CHANNEL_MESSAGE:
                problem = _check_message(data)
                if problem:
                    return problem
            message = self._new_message(
                interaction.channel_id, data.get("content", "") if not loading else "",
                author=self.bot, components=data.get("components"),
                flags=(flags & MESSAGE_FLAG_EPHEMERAL) | (MESSAGE_FLAG_LOADING if loading else 0),
                interaction=interaction,
            )
            interaction.original_id = int(message["id"])
            resource = {"type": kind, "message": self._strip(message)}
        elif kind != DEFERRED_UPDATE_MESSAGE:
            return _error(400, 50035, "Invalid Form Body")
        interaction.response_type = kind
        if record.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        answer: dict[str, Any] = {"interaction": {
            "id": str(interaction.id), "type": interaction.type,
            "response_message_loading": loading, "response_message_ephemeral": ephemeral,
            **({"response_message_id": str(interaction.original_id)}
               if interaction.original_id else {}),
        }}
        if resource is not None:
            answer["resource"] = resource
        return _json(answer)

    def _webhook_message(self, interaction: Interaction, message_id: str) -> dict[str, Any]:
        if message_id == "@original":
            if interaction.original_id is None:
                raise _Reply(_error(404, 10008, "Unknown Message"))
            return self.messages[interaction.original_id]
        if int(message_id) != interaction.original_id and \
                int(message_id) not in interaction.followups:
            raise _Reply(_error(404, 10008, "Unknown Message"))
        return self.messages[int(message_id)]

    async def _webhook_send(self, record: RecordedRequest,
                            params: dict[str, str]) -> web.Response:
        """A follow-up message. The first after a deferred response takes the place of the
        "thinking…" message (it edits it), as Discord does; later ones are new messages."""
        interaction = self._interaction_by_token(params["webhook"])
        if interaction.response_type is None:
            return _error(404, 10015, "Unknown Webhook")  # not acknowledged yet
        body = record.json
        problem = _check_message(body)
        if problem:
            return problem
        original = (self.messages.get(interaction.original_id)
                    if interaction.original_id is not None else None)
        if original is not None and original["flags"] & MESSAGE_FLAG_LOADING:
            self._apply_edit(original, body)
            message = original
        else:
            flags = int(body.get("flags", 0)) & MESSAGE_FLAG_EPHEMERAL
            message = self._new_message(interaction.channel_id, body.get("content", ""),
                                        author=self.bot, components=body.get("components"),
                                        flags=flags, interaction=interaction)
            interaction.followups.append(int(message["id"]))
        if record.query.get("wait") not in ("1", "true", "True"):
            return web.Response(status=204)
        return _json(self._strip(message))

    async def _webhook_get(self, record: RecordedRequest, params: dict[str, str]) -> web.Response:
        interaction = self._interaction_by_token(params["webhook"])
        return _json(self._strip(self._webhook_message(interaction, params["id"])))

    async def _webhook_edit(self, record: RecordedRequest,
                            params: dict[str, str]) -> web.Response:
        interaction = self._interaction_by_token(params["webhook"])
        message = self._webhook_message(interaction, params["id"])
        problem = _check_message(record.json, editing=True)
        if problem:
            return problem
        self._apply_edit(message, record.json)
        return _json(self._strip(message))

    # --- REST: channels and messages ------------------------------------------------------

    def _channel(self, params: dict[str, str]) -> dict[str, Any]:
        channel = self.channels.get(int(params["channel_id"]))
        if channel is None:
            raise _Reply(_error(404, 10003, "Unknown Channel"))
        if channel.get("_bot_absent"):  # a guild the bot is not in, a DM it is not part of
            raise _Reply(_error(403, 50001, "Missing Access"))
        return channel

    def _message(self, channel: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        message = self.messages.get(int(params["id"]))
        if message is None or message["channel_id"] != channel["id"]:
            raise _Reply(_error(404, 10008, "Unknown Message"))
        return message

    async def _get_channel(self, record: RecordedRequest, params: dict[str, str]) -> web.Response:
        return _json(self._channel(params))

    async def _get_message(self, record: RecordedRequest, params: dict[str, str]) -> web.Response:
        channel = self._channel(params)
        return _json(self._strip(self._message(channel, params)))

    async def _post_message(self, record: RecordedRequest,
                            params: dict[str, str]) -> web.Response:
        channel = self._channel(params)
        if channel["type"] == GUILD_FORUM:
            return _error(400, 50008, "Cannot send messages in a non-text channel")
        if channel.get("thread_metadata", {}).get("archived"):
            return _error(400, 50083, "Thread is archived")
        problem = _check_message(record.json)
        if problem:
            return problem
        body = record.json
        message = self._new_message(int(channel["id"]), body.get("content", ""),
                                    author=self.bot, components=body.get("components"),
                                    reference=body.get("message_reference"))
        await self.dispatch("MESSAGE_CREATE", self._strip(message))
        return _json(self._strip(message))

    async def _edit_message(self, record: RecordedRequest,
                            params: dict[str, str]) -> web.Response:
        channel = self._channel(params)
        message = self._message(channel, params)
        if message["author"]["id"] != self.bot["id"] and "content" in record.json:
            return _error(403, 50005, "Cannot edit a message authored by another user")
        problem = _check_message(record.json, editing=True)
        if problem:
            return problem
        self._apply_edit(message, record.json)
        return _json(self._strip(message))

    # --- REST: threads --------------------------------------------------------------------

    def _check_thread_allowed(self, channel: dict[str, Any], body: dict[str, Any]) -> None:
        if int(channel["id"]) in self.deny_threads:
            raise _Reply(_error(403, 50013, "Missing Permissions"))
        if channel["type"] not in (GUILD_TEXT, GUILD_FORUM):
            raise _Reply(_error(400, 50024, "Cannot execute action on this channel type"))
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise _Reply(_error(400, 50035, "Invalid Form Body"))

    def _new_thread(self, parent: dict[str, Any], thread_id: int, name: str,
                    body: dict[str, Any]) -> dict[str, Any]:
        now = _iso(time.time())
        thread = {
            "id": str(thread_id), "type": PUBLIC_THREAD, "guild_id": str(self.guild_id),
            "parent_id": parent["id"], "owner_id": self.bot["id"], "name": name,
            "last_message_id": None, "message_count": 0, "member_count": 1,
            "total_message_sent": 0, "rate_limit_per_user": 0, "flags": 0,
            "applied_tags": body.get("applied_tags", []),
            "thread_metadata": {
                "archived": False, "locked": False, "archive_timestamp": now,
                "auto_archive_duration": int(body.get("auto_archive_duration", 1440)),
                "create_timestamp": now,
            },
            "member": {"id": str(thread_id), "user_id": self.bot["id"], "join_timestamp": now,
                       "flags": 0},
        }
        self.channels[thread_id] = thread
        return thread

    async def _thread_from_message(self, record: RecordedRequest,
                                   params: dict[str, str]) -> web.Response:
        channel = self._channel(params)
        message = self._message(channel, params)
        self._check_thread_allowed(channel, record.json)
        if channel["type"] != GUILD_TEXT:
            return _error(400, 50024, "Cannot execute action on this channel type")
        if message.get("thread"):
            return _error(400, 160004, "A thread has already been created for this message")
        thread = self._new_thread(channel, int(message["id"]), record.json["name"], record.json)
        message["thread"] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return _json(thread)

    async def _thread_without_message(self, record: RecordedRequest,
                                      params: dict[str, str]) -> web.Response:
        channel = self._channel(params)
        body = record.json
        self._check_thread_allowed(channel, body)
        thread_id = self.snowflake()
        if channel["type"] == GUILD_FORUM:
            first = body.get("message")
            if not isinstance(first, dict):
                return _error(400, 50035, "Invalid Form Body")
            problem = _check_message(first)
            if problem:
                return problem
            thread = self._new_thread(channel, thread_id, body["name"], body)
            message = self._new_message(thread_id, first.get("content", ""), author=self.bot,
                                        components=first.get("components"), message_id=thread_id)
            await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
            return _json({**thread, "message": self._strip(message)})
        thread = self._new_thread(channel, thread_id, body["name"], body)
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return _json(thread)

    # --- messages -------------------------------------------------------------------------

    def _new_message(self, channel_id: int, content: str, *, author: dict[str, Any],
                     components: list[Any] | None = None, flags: int = 0,
                     interaction: Interaction | None = None, message_id: int | None = None,
                     reference: dict[str, Any] | None = None) -> dict[str, Any]:
        message_id = message_id or self.snowflake()
        channel = self.channels[channel_id]
        message: dict[str, Any] = {
            "id": str(message_id), "channel_id": str(channel_id), "author": author,
            "content": content, "timestamp": _iso(time.time()), "edited_timestamp": None,
            "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": False, "type": 0, "flags": flags,
            "components": components or [],
            "_history": [content],
        }
        if channel.get("guild_id"):
            message["guild_id"] = channel["guild_id"]
        if author is not self.bot:
            # Who a person's message mentions, as Discord resolves it (the bot's own
            # messages mention nobody: every send has `allowed_mentions` none).
            message["mentions"] = [self.users[int(i)] for i in re.findall(r"<@!?(\d+)>", content)
                                   if int(i) in self.users]
            message["mention_everyone"] = bool(re.search(r"@(everyone|here)\b", content))
        if reference:
            message["message_reference"] = reference
        if interaction is not None:
            message["webhook_id"] = str(self.application_id)
            message["application_id"] = str(self.application_id)
            message["type"] = 20 if interaction.type == 2 else 0
            message["interaction_metadata"] = {
                "id": str(interaction.id), "type": interaction.type,
                "user": self.users[interaction.user_id],
                "authorizing_integration_owners":
                    interaction.payload["authorizing_integration_owners"],
            }
        self.messages[message_id] = message
        channel["last_message_id"] = str(message_id)
        if channel["type"] == PUBLIC_THREAD:
            channel["message_count"] += 1
            channel["total_message_sent"] += 1
        return message

    @staticmethod
    def _apply_edit(message: dict[str, Any], body: dict[str, Any]) -> None:
        if "content" in body:
            message["content"] = body["content"] or ""
            message["_history"].append(message["content"])
        if "components" in body:
            message["components"] = body["components"] or []
        if "embeds" in body:
            message["embeds"] = body["embeds"] or []
        message["flags"] = message["flags"] & ~MESSAGE_FLAG_LOADING
        message["edited_timestamp"] = _iso(time.time())

    @staticmethod
    def _strip(obj: dict[str, Any]) -> dict[str, Any]:
        """A JSON-ready copy without the fake's bookkeeping keys."""
        return {k: v for k, v in obj.items() if not k.startswith("_")}


Handler = Callable[[RecordedRequest, dict[str, str]], Awaitable[web.Response]]


class _Reply(Exception):
    """Raised by a handler to answer at once (an error found deep in a lookup)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _json(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json" (no charset): discord.py parses nothing else as JSON.
    response = web.Response(status=status, body=json.dumps(data).encode())
    response.headers["Content-Type"] = JSON
    return response


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status)


def _too_many(retry_after: float, is_global: bool, via: bool, scope: str) -> web.Response:
    retry_after = round(max(retry_after, 0.001), 3)
    response = _json({"message": "You are being rate limited.", "retry_after": retry_after,
                      "global": is_global}, 429)
    response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    response.headers["X-RateLimit-Scope"] = scope
    if is_global:
        response.headers["X-RateLimit-Global"] = "true"
    if via:
        response.headers["Via"] = "1.1 google"
    return response


def _check_message(body: dict[str, Any], editing: bool = False) -> web.Response | None:
    content = body.get("content")
    if content is not None and len(content) > 2000:
        return _json({"message": "Invalid Form Body", "code": 50035, "errors": {"content": {
            "_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                         "message": "Must be 2000 or fewer in length."}]}}}, 400)
    if not editing and not content and not body.get("embeds") and not body.get("components"):
        return _error(400, 50006, "Cannot send an empty message")
    return None


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


class ClientHolds:
    """Counts, while in use (`with ClientHolds() as holds:`), the requests discord.py's own
    rate limiting held back because a window it knew of was spent for a while yet (its
    `Ratelimit.acquire` found nothing remaining and the window's end more than `slack`
    seconds away). The 429s a fake Discord sees say whether a client sent into a spent window;
    this says whether the bot handed discord.py more than the window had, to be queued there
    in arrival order, urgent or not. A moment's wait at a window's very end is not counted:
    the bot may read the same answer a moment before discord.py does."""

    def __init__(self, slack: float = 0.1) -> None:
        self.slack = slack
        self.count = 0
        self._original: Callable[..., Awaitable[None]] | None = None

    def __enter__(self) -> ClientHolds:
        from discord.http import Ratelimit

        original = self._original = Ratelimit.acquire
        holds = self

        async def acquire(limit: Ratelimit) -> None:
            now = limit._loop.time()
            if (limit.remaining <= 0 and limit.expires is not None
                    and limit.expires - now > holds.slack):
                holds.count += 1
            await original(limit)

        setattr(Ratelimit, "acquire", acquire)  # noqa: B010 (a method, replaced while in use)
        return self

    def __exit__(self, *exc: object) -> None:
        from discord.http import Ratelimit

        if self._original is not None:
            setattr(Ratelimit, "acquire", self._original)  # noqa: B010
