"""The Slack `Surface` for one thread: replies posted under `thread_ts`, edited with
`chat.update`, paced by the workspace's shared budgets (`adapters/slack/web.py`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.chunks import stop_leftover_stream
from adapters.slack.controls import actions, sections
from adapters.slack.feedback import feedback_buttons
from adapters.slack.mrkdwn import to_mrkdwn
from adapters.slack.presenter import SlackPresenter
from adapters.slack.stop import stop_button
from adapters.slack.web import SlackCallError, SlackThread, Workspace, call
from bot.errors import SurfaceError
from bot.events import Language
from bot.ratelimit import SlidingWindowLimiter
from bot.store import StepRecord
from bot.surface import BaseSurface, Control, Controls, Handle, Presenter, SurfaceLimits

log = logging.getLogger(__name__)

# chat.update's answers for a message that is no more (deleted): waiting will not help.
_GONE = frozenset({"message_not_found", "cant_update_message"})


class SlackSurface(BaseSurface):
    """One Slack thread: replies posted under `thread_ts`, edited with `chat.update`. Stop on
    a chain's first reply and 👍/👎 under its answer are Block Kit buttons (`controls.py`)."""

    offers: frozenset[Control] = frozenset({"stop", "feedback"})

    def __init__(
        self,
        client: AsyncWebClient,
        workspace: Workspace,
        channel: str,
        thread_ts: str,
        *,
        asker: str = "",
        asker_team: str = "",
    ) -> None:
        self.thread = SlackThread(client, workspace, channel, thread_ts, asker, asker_team)
        self.client = client
        self.workspace = workspace
        self.channel = channel
        self.thread_ts = thread_ts
        lim = workspace.limits
        self.limits = SurfaceLimits(max_chars=lim.max_chars, edit_interval=lim.edit_interval)
        self.budget = workspace.update_budget
        self._shown: dict[str, str] | None = None  # the thread as read once by `strays`

    @property
    def post_budget(self) -> SlidingWindowLimiter:
        # chat.postMessage: about 1/s per channel, apart from edits. Asked for at every post:
        # the workspace keeps a channel's budget only while it is in use (`ChannelBudgets`).
        return self.workspace.post_budget(self.channel)

    def render(self, markdown: str) -> str:
        return to_mrkdwn(markdown)

    def presenter(self, language: Language) -> Presenter:
        """Slack's streaming where the workspace offers it, else post + edit."""
        return SlackPresenter(self.thread, self, language)

    async def post(self, text: str) -> Handle:
        return await self._post(text, None)

    async def post_with(self, text: str, controls: Controls) -> Handle:
        return await self._post(text, message_blocks(text, controls) or None)

    async def edit(self, handle: Handle, text: str) -> None:
        # Blocks a message carried are kept by an update without any: an empty list takes
        # them off, so the message shows `text` (a late delivery of a final text included).
        await self.edit_with(handle, text, Controls(self.chain_id))

    async def edit_with(self, handle: Handle, text: str, controls: Controls) -> None:
        try:
            await call("chat.update", self.client.chat_update(
                channel=self.channel, ts=str(handle), text=text,
                blocks=message_blocks(text, controls),
            ))
        except SlackCallError as exc:
            raise SurfaceError(str(exc), gone=exc.error in _GONE) from exc
        finally:
            self.workspace.update_budget.settled()

    async def _post(self, text: str, blocks: list[dict[str, Any]] | None) -> Handle:
        try:
            response = await call("chat.postMessage", self.client.chat_postMessage(
                channel=self.channel, thread_ts=self.thread_ts, text=text, blocks=blocks,
                unfurl_links=False, unfurl_media=False,
            ))
        except SlackCallError as exc:
            raise SurfaceError(str(exc)) from exc
        finally:
            self.post_budget.settled()  # Slack has counted it by now
        return str(response["ts"])

    # --- recovery: reading back what a dead process left -----------------------------------

    async def strays(self, known: Sequence[Handle]) -> list[tuple[Handle, str]]:
        """Bot messages after the first known one that no slot records (posted by a process
        that died before it could record them). Reads the thread once; `read` answers from it."""
        posted = {str(h) for h in known if isinstance(h, str)}
        posted |= {str(h["stream"]) for h in known if isinstance(h, dict) and "stream" in h}
        since = min(posted, key=_ts_key) if posted else None
        try:
            messages = await self._replies(since)
        except SlackCallError as exc:
            raise SurfaceError(f"could not read thread {self.thread_ts}: {exc.error}") from exc
        self._shown = {str(m.get("ts", "")): str(m.get("text") or "") for m in messages}
        first = _ts_key(since) if since else (0, 0)
        return [(str(m.get("ts", "")), str(m.get("text") or "")) for m in messages
                if bool(m.get("bot_id")) and str(m.get("ts", "")) not in posted
                and _ts_key(str(m.get("ts", ""))) > first]

    async def read(self, handle: Handle) -> str | None:
        if not isinstance(handle, str):
            return None
        if self._shown is None or handle not in self._shown:
            try:
                messages = await self._replies(handle)
            except SlackCallError as exc:
                raise SurfaceError(f"could not read message {handle}: {exc.error}") from exc
            if self._shown is None:
                self._shown = {}
            self._shown.update({str(m.get("ts", "")): str(m.get("text") or "")
                                for m in messages})
        return self._shown.get(handle)

    async def close_leftover(self, handle: Handle, steps: Sequence[StepRecord],
                             language: Language) -> bool:
        if isinstance(handle, dict) and handle.get("stream"):
            await stop_leftover_stream(self.thread, str(handle["stream"]), steps, language)
            return True
        return False

    async def _replies(self, since: str | None) -> list[dict[str, Any]]:
        """The thread's messages from `since` on (all of them without it), page by page: a
        long thread of follow-ups outgrows one page, and the dead chain's are the newest."""
        messages: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await call("conversations.replies", self.client.conversations_replies(
                channel=self.channel, ts=self.thread_ts, limit=200, cursor=cursor,
                oldest=since, inclusive=True if since else None))
            messages.extend(page.get("messages") or [])
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return messages


def message_blocks(text: str, controls: Controls) -> list[dict[str, Any]]:
    """A message's blocks: its text and its buttons; none when it carries no buttons."""
    elements: list[dict[str, Any]] = []
    if "stop" in controls.kinds:
        elements.append(stop_button(controls.chain_id, controls.language))
    if "feedback" in controls.kinds:
        elements.extend(feedback_buttons(controls.chain_id))
    return [*sections(text), actions(elements)] if elements else []


def _ts_key(ts: str) -> tuple[int, int]:
    """A Slack `ts` ("1700000000.000100") in time order (floats would round it)."""
    whole, _, frac = ts.partition(".")
    try:
        return int(whole), int(frac or 0)
    except ValueError:
        return 0, 0
