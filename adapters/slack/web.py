"""Slack's Web API as Ponder uses it: the limits, what one workspace shares, and a client whose
retries tell the shared budgets about every 429.

- `SlackLimits`: the numbers (rates, sizes) in one place, so tests and the benchmark can shrink
  the windows.
- `Workspace`: what all chains in one workspace share — the `chat.update` budget (Tier 3, about
  50 a minute for the whole workspace), per-channel `chat.postMessage` budgets (about 1/s), the
  streaming budgets, and what the workspace turned out to support.
- `SlackThread`: where one chain writes.
- `make_client` / `call`: the client, and one call with Slack's error code on failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
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

from bot.errors import PonderError
from bot.metrics import PLATFORM_429, PLATFORM_CALLS
from bot.ratelimit import RateLimiter

log = logging.getLogger(__name__)

PLATFORM = "slack"


@dataclass(frozen=True)
class SlackLimits:
    """Slack's limits as Ponder paces itself under them. Defaults are for real Slack.

    A token bucket of `rate` per `per` seconds with `burst` saved up lets at most
    `burst + rate` calls through in any `per`-second window, so `rate + burst` stays under
    Slack's figure (Tier 3 `chat.update`: 50/min per workspace).
    """

    update_rate: float = 45.0  # chat.update, per workspace
    update_per: float = 60.0
    update_burst: int = 5
    post_rate: float = 1.0  # chat.postMessage, per channel
    post_per: float = 1.0
    post_burst: int = 2
    edit_interval: float = 1.0  # one message is edited at most this often
    max_chars: int = 3900  # chat.update / postMessage refuse text over 4,000 chars
    # Streaming (chat.startStream / appendStream / stopStream)
    append_rate: float = 80.0  # appendStream, Tier 4 (100+/min), per workspace
    append_per: float = 60.0
    append_burst: int = 10
    append_interval: float = 1.0  # one stream is appended at most this often
    stream_starts: float = 8.0  # streams opened per `stream_per` (start + stop are Tier 2)
    stream_per: float = 60.0
    stream_burst: int = 2
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
    update_budget: RateLimiter = field(init=False)
    append_budget: RateLimiter = field(init=False)
    # Never waited on: when no stream may be opened now, a chain posts and edits instead of
    # queueing behind others (start + stop are in a tight tier).
    stream_starts: RateLimiter = field(init=False)
    post_budgets: dict[str, RateLimiter] = field(default_factory=dict)
    # What the workspace supports, learnt from its answers. `streaming` starts as the bot was
    # configured (`SlackBot(streaming=...)`) and is the only switch for it.
    streaming: bool = True
    no_stream_kinds: set[str] = field(default_factory=set)  # channel kinds: "C", "G", "D"
    status_mode: StatusMode = "assistant"

    def __post_init__(self) -> None:
        lim = self.limits
        self.update_budget = RateLimiter(lim.update_rate, lim.update_per, lim.update_burst)
        self.append_budget = RateLimiter(lim.append_rate, lim.append_per, lim.append_burst)
        self.stream_starts = RateLimiter(lim.stream_starts, lim.stream_per, lim.stream_burst)

    def post_budget(self, channel: str) -> RateLimiter:
        budget = self.post_budgets.get(channel)
        if budget is None:
            lim = self.limits
            budget = self.post_budgets[channel] = RateLimiter(
                lim.post_rate, lim.post_per, lim.post_burst
            )
        return budget

    def may_stream(self, channel: str) -> bool:
        return self.streaming and channel_kind(channel) not in self.no_stream_kinds

    def rate_limited(self, method: str, seconds: float, channel: str | None) -> None:
        """Slack answered 429 to `method`: hold back everything that shares its budget."""
        log.warning("Slack rate limit on %s: waiting %.0f s", method, seconds)
        if method == "chat.update":
            self.update_budget.pause(seconds)
        elif method == "chat.postMessage":
            # slack_sdk sends posts as JSON, which its retry hook does not show: when the
            # channel is unknown, every channel's posts wait.
            budgets = [self.post_budget(channel)] if channel else list(self.post_budgets.values())
            for budget in budgets:
                budget.pause(seconds)
        elif method == "chat.appendStream":
            self.append_budget.pause(seconds)
        elif method in ("chat.startStream", "chat.stopStream"):
            self.stream_starts.pause(seconds)


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
        channel = _channel_of(request)
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
        if isinstance(source, dict) and source.get("channel"):
            return str(source["channel"])
    return None


def make_client(
    token: str,
    base_url: str,
    limits: SlackLimits,
    on_limited: Callable[[str, float, str | None], None],
) -> AsyncWebClient:
    """A Web API client with a timeout on every call and retries for 429, 5xx and resets."""
    return AsyncWebClient(
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
