"""Slack's Web API as Ponder uses it: the limits, what one workspace shares, and a client whose
retries tell the shared budgets about every 429.

- `SlackLimits`: the numbers (rates, sizes) in one place, so tests and the benchmark can shrink
  the windows.
- `Workspace`: what all chains in one workspace share — the `chat.update` budget (Tier 3, about
  50 a minute for the whole workspace), per-channel `chat.postMessage` budgets (about 1/s; kept
  for busy channels only, `ChannelBudgets`), the `chat.postEphemeral` budget (Tier 4), the
  streaming budgets, and what the workspace turned out to support. A 429 pauses only the
  budget it belongs to: the method's, and for per-channel methods that channel's.
- `SlackThread`: where one chain writes.
- `make_client` / `call`: the client (every payload defused on its way out, every 429 told to
  the budgets with its channel), and one call with Slack's error code on failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack.safety import defused
from bot.errors import PonderError
from bot.metrics import PLATFORM_429, PLATFORM_CALLS
from bot.ratelimit import RateLimiter, SlidingWindowLimiter

log = logging.getLogger(__name__)

PLATFORM = "slack"


@dataclass(frozen=True)
class SlackLimits:
    """Slack's limits as Ponder paces itself under them. Defaults are for real Slack.

    Slack counts each method's calls in windows ("50+ per minute", per workspace; posts per
    channel), so the budgets are windows too (`SlidingWindowLimiter`): never more than a window
    holds, and a whole free window at once, so a burst of final texts goes out together.
    """

    update_calls: int = 50  # chat.update: Tier 3, 50+ a minute for the whole workspace
    update_window: float = 60.0
    # Of every chat.update window, what interim edits leave to final texts (besides one call
    # for every message still waiting for its final text): what they take stays spent a minute.
    update_reserve: float = 0.3
    post_calls: int = 3  # chat.postMessage: about 1 a second per channel, short bursts
    post_window: float = 3.0
    # Seconds added to every window. Calls count from when their answer came (later than
    # Slack counted them), so none is needed; a test may add one against clock jitter.
    window_margin: float = 0.0
    channels_kept: int = 256  # idle channels' post budgets kept past this many are dropped
    # chat.postEphemeral (refusals): Tier 4, 100+/min per workspace. Never waited on: a refusal
    # that finds it spent is dropped, so a flood of refusals cannot queue up.
    ephemeral_rate: float = 90.0
    ephemeral_per: float = 60.0
    ephemeral_burst: int = 5
    refusal_interval: float = 60.0  # one refusal per person per this many seconds
    refusal_memory: int = 10_000  # people remembered for that (the least recent forgotten)
    edit_interval: float = 1.0  # one message is edited at most this often
    max_chars: int = 3900  # chat.update / postMessage refuse text over 4,000 chars
    # Streaming (chat.startStream / appendStream / stopStream), each method per workspace
    append_calls: int = 100  # chat.appendStream: Tier 4, 100+ a minute
    append_window: float = 60.0
    append_interval: float = 1.0  # one stream is appended at most this often
    start_calls: int = 20  # chat.startStream: Tier 2, 20+ a minute
    stop_calls: int = 20  # chat.stopStream: Tier 2
    stream_window: float = 60.0
    # How long a chain waits for Slack to let it open a stream before it posts and edits
    # instead (only the next minute's window would let it).
    stream_wait: float = 10.0
    stream_max_age: float = 240.0  # Slack ends a stream after about 5 minutes: roll over first
    stream_max_chars: int = 30000  # a streamed message is rolled over past this much text
    markdown_chunk: int = 10000  # markdown_text is refused over 12,000 chars per chunk
    request_timeout: int = 30  # seconds, every Web API call
    max_429_retries: int = 12  # a 429 is waited out this many times in a row, then given up
    max_5xx_retries: int = 3
    connection_retries: int = 2  # a refused or reset connection, retried with slack_sdk's backoff


StatusMode = Literal["assistant", "reactions"]


@dataclass
class Workspace:
    """Everything the chains of one workspace share."""

    team_id: str
    limits: SlackLimits
    update_budget: SlidingWindowLimiter = field(init=False)
    append_budget: SlidingWindowLimiter = field(init=False)
    stream_starts: SlidingWindowLimiter = field(init=False)
    stream_stops: SlidingWindowLimiter = field(init=False)
    open_streams: int = 0  # streams of this workspace open now (they share the appends)
    ephemeral_budget: RateLimiter = field(init=False)
    post_budgets: ChannelBudgets = field(init=False)
    # What the workspace supports, learnt from its answers. `streaming` starts as the bot was
    # configured (`SlackBot(streaming=...)`) and is the only switch for it.
    streaming: bool = True
    no_stream_kinds: set[str] = field(default_factory=set)  # channel kinds: "C", "G", "D"
    status_mode: StatusMode = "assistant"

    def __post_init__(self) -> None:
        lim = self.limits
        margin = lim.window_margin
        self.update_budget = SlidingWindowLimiter((lim.update_calls, lim.update_window),
                                                  reserve=lim.update_reserve, margin=margin)
        self.append_budget = SlidingWindowLimiter((lim.append_calls, lim.append_window),
                                                  margin=margin)
        self.stream_starts = SlidingWindowLimiter((lim.start_calls, lim.stream_window),
                                                  margin=margin)
        self.stream_stops = SlidingWindowLimiter((lim.stop_calls, lim.stream_window),
                                                 margin=margin)
        self.ephemeral_budget = RateLimiter(lim.ephemeral_rate, lim.ephemeral_per,
                                            lim.ephemeral_burst)
        self.post_budgets = ChannelBudgets(lim)

    def post_budget(self, channel: str) -> SlidingWindowLimiter:
        return self.post_budgets.get(channel)

    def may_stream(self, channel: str) -> bool:
        return self.streaming and channel_kind(channel) not in self.no_stream_kinds

    def rate_limited(self, method: str, seconds: float, channel: str | None) -> None:
        """Slack answered 429 to `method` (in `channel`): hold back what shares its limit, and
        nothing else — the method's budget for the workspace, or for `chat.postMessage`
        (limited per channel) that channel's only."""
        log.warning("Slack rate limit on %s%s: waiting %.0f s", method,
                    f" in {channel}" if channel else "", seconds)
        if method == "chat.postMessage":
            if channel:
                self.post_budgets.pause(channel, seconds)
            else:  # the client names every call's channel; only the call itself waits
                log.warning("a 429 on %s without a channel: no budget paused", method)
        elif method == "chat.update":
            self.update_budget.pause(seconds)
        elif method == "chat.postEphemeral":
            self.ephemeral_budget.pause(seconds)
        elif method == "chat.appendStream":
            self.append_budget.pause(seconds)
        elif method == "chat.startStream":
            self.stream_starts.pause(seconds)
        elif method == "chat.stopStream":
            self.stream_stops.pause(seconds)


class ChannelBudgets:
    """The per-channel `chat.postMessage` budgets of a workspace, bounded.

    A budget at rest (refilled, no pause left, nobody waiting) is the same as a new one, so
    once more than `channels_kept` channels are known, the least recently used ones at rest
    are dropped; one that still holds something (a pause, a waiter, spent tokens) is kept.
    So the map holds the busy channels plus at most `channels_kept` others, however many
    channels a workspace has.
    """

    def __init__(self, limits: SlackLimits) -> None:
        self._limits = limits
        # An emptied bucket is full again after this long.
        self._refill = limits.post_window + limits.window_margin
        self._budgets: OrderedDict[str, _ChannelBudget] = OrderedDict()

    def get(self, channel: str) -> SlidingWindowLimiter:
        now = time.monotonic()
        entry = self._budgets.get(channel)
        if entry is None:
            lim = self._limits
            entry = _ChannelBudget(SlidingWindowLimiter((lim.post_calls, lim.post_window),
                                                        margin=lim.window_margin))
            self._budgets[channel] = entry
            if len(self._budgets) > lim.channels_kept:
                self._prune(now)
        else:
            self._budgets.move_to_end(channel)
        entry.used = now
        return entry.limiter

    def pause(self, channel: str, seconds: float) -> None:
        self.get(channel).pause(seconds)
        entry = self._budgets[channel]
        entry.paused_until = max(entry.paused_until, time.monotonic() + max(0.0, seconds))

    def _prune(self, now: float) -> None:
        excess = len(self._budgets) - self._limits.channels_kept
        for channel, entry in list(self._budgets.items()):
            if excess <= 0:
                return
            if entry.limiter.waiting == 0 and \
                    now - max(entry.used, entry.paused_until) >= self._refill:
                del self._budgets[channel]
                excess -= 1

    def __len__(self) -> int:
        return len(self._budgets)

    def __contains__(self, channel: object) -> bool:
        return channel in self._budgets

    def __iter__(self) -> Iterator[str]:
        return iter(self._budgets)


@dataclass(slots=True)
class _ChannelBudget:
    limiter: SlidingWindowLimiter
    used: float = 0.0  # when it was last handed out (every post asks for it)
    paused_until: float = 0.0


def channel_kind(channel: str) -> str:
    """Slack channel ids start with C (channel), G (private/group) or D (direct message)."""
    return channel[:1].upper() or "C"


# --- the Web API client ------------------------------------------------------------------


class _RateLimitRetry(AsyncRetryHandler):
    """Waits out a 429 for `Retry-After` seconds and tells the shared budgets first.

    slack_sdk's own handler would sleep too, but the other chains of the workspace would keep
    spending the budget meanwhile and meet 429s of their own.
    """

    def __init__(self, on_limited: Callable[[str, float, str | None], None],
                 max_retry_count: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.on_limited = on_limited

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None,
                               error: Exception | None = None) -> bool:
        return response is not None and response.status_code == 429

    async def prepare_for_next_attempt_async(self, *, state: RetryState, request: HttpRequest,
                                             response: HttpResponse | None = None,
                                             error: Exception | None = None) -> None:
        seconds = 1.0
        if response is not None:
            for key, values in response.headers.items():
                if key.lower() == "retry-after" and values:
                    try:
                        seconds = max(0.0, float(values[0]))
                    except ValueError:
                        pass
        method = request.url.rstrip("/").rsplit("/", 1)[-1]
        channel = _CALL_CHANNEL.get() or _channel_of(request)
        try:
            self.on_limited(method, seconds, channel)
        except Exception:  # a budget bookkeeping error must not turn a 429 into a failure
            log.exception("rate-limit callback failed")
        state.next_attempt_requested = True
        await asyncio.sleep(seconds + random.uniform(0.0, 0.25))
        state.increment_current_attempt()


class _ServerErrorRetry(AsyncRetryHandler):
    """5xx from Slack: retried with backoff (slack_sdk's own handler only knows 500/503)."""

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None,
                               error: Exception | None = None) -> bool:
        return response is not None and response.status_code >= 500


def _channel_of(request: HttpRequest) -> str | None:
    for source in (request.body_params, request.data):
        if channel := channel_of(source):
            return channel
    return None


def channel_of(payload: object) -> str | None:
    """The channel a call's payload names (`channel`, or `channel_id` for the assistant's)."""
    if isinstance(payload, dict):
        for key in ("channel", "channel_id"):
            if payload.get(key):
                return str(payload[key])
    return None


# The channel of the call being made, for the 429 handler: slack_sdk sends `chat.*` as JSON,
# which the request its retry handlers see does not carry (only form and query parameters).
_CALL_CHANNEL: ContextVar[str | None] = ContextVar("slack_call_channel", default=None)


class PonderWebClient(AsyncWebClient):
    """slack_sdk's client with two things done to every call on its way out, whoever makes
    it: every string of the payload defused (`adapters/slack/safety.py`), and the call's
    channel noted for the 429 handler."""

    async def api_call(
        self,
        api_method: str,
        *,
        http_verb: str = "POST",
        files: dict[str, Any] | None = None,
        data: dict[str, Any] | aiohttp.FormData | None = None,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        auth: dict[str, Any] | None = None,
    ) -> AsyncSlackResponse:
        json = defused(json) if isinstance(json, dict) else json
        data = defused(data) if isinstance(data, dict) else data
        params = defused(params) if isinstance(params, dict) else params
        noted = _CALL_CHANNEL.set(channel_of(json) or channel_of(data) or channel_of(params))
        try:
            return await super().api_call(
                api_method, http_verb=http_verb, files=files, data=data, params=params,
                json=json, headers=headers, auth=auth)
        finally:
            _CALL_CHANNEL.reset(noted)


def make_client(
    token: str | None,
    base_url: str,
    limits: SlackLimits,
    on_limited: Callable[[str, float, str | None], None],
) -> AsyncWebClient:
    """A Web API client with a timeout on every call and retries for 429, 5xx and resets."""
    return PonderWebClient(
        token=token,
        base_url=base_url,
        timeout=limits.request_timeout,
        retry_handlers=[
            _RateLimitRetry(on_limited, limits.max_429_retries),
            _ServerErrorRetry(max_retry_count=limits.max_5xx_retries),
            AsyncConnectionErrorRetryHandler(max_retry_count=limits.connection_retries),
        ],
    )


def new_session(limits: SlackLimits) -> aiohttp.ClientSession:
    """One connection pool for all calls (slack_sdk would open a session per call)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=limits.request_timeout, connect=10),
        connector=aiohttp.TCPConnector(limit=64),
        trace_configs=[_metrics_trace()],
    )


def _metrics_trace() -> aiohttp.TraceConfig:
    """Every Web API call and every 429 counted, by method (`chat.update`, ...)."""
    async def on_end(session: aiohttp.ClientSession, context: object,
                     params: aiohttp.TraceRequestEndParams) -> None:
        method = params.url.path.rsplit("/", 1)[-1]
        PLATFORM_CALLS.labels("slack", method).inc()
        if params.response.status == 429:
            PLATFORM_429.labels("slack").inc()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    return trace


def slack_error(exc: BaseException) -> str:
    """The Slack error code of a failed call (`msg_too_long`, `ratelimited`, ...)."""
    if isinstance(exc, SlackApiError):
        data: Any = getattr(exc.response, "data", None)
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
        status = getattr(exc.response, "status_code", None)
        return f"http_{status}" if status else "unknown_error"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientError):
        return "connection_error"
    return type(exc).__name__


class SlackCallError(PonderError):
    """A Web API call that failed after its retries; `error` is Slack's code for it. Not a
    `SurfaceError`: most calls (auth.test, reactions, status) are not writes of a chain; the
    surface turns a failed post or edit into one."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method} failed: {error}")
        self.method = method
        self.error = error


async def call(method: str, request: Awaitable[Any]) -> Any:
    """Await a Web API call; a failure becomes `SlackCallError` with Slack's reason."""
    try:
        return await request
    except (TimeoutError, SlackApiError, aiohttp.ClientError) as exc:
        raise SlackCallError(method, slack_error(exc)) from exc


@dataclass(frozen=True, slots=True)
class SlackThread:
    """Where one chain writes: a thread (`thread_ts`) in a channel of a workspace."""

    client: AsyncWebClient
    workspace: Workspace
    channel: str
    thread_ts: str
    asker: str = ""  # streams in DMs and assistant threads name their recipient
    asker_team: str = ""  # the asker's own team (another one in a Slack Connect channel)
