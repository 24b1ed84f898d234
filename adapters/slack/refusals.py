"""Refusals on Slack, shown only to the person refused (`chat.postEphemeral`), in the thread
when there is one; at most one per person per `refusal_interval`, the rest dropped (and
logged); each one paced by the channel's post budget like any other post, behind the chains'
own posts, and dropped when the workspace's `chat.postEphemeral` budget is spent.

What a refusal says is the service's (`Refused.message`, in the asker's language); this module
only decides how it is shown. Posted publicly and unpaced, a flood of mentions from someone
not on the allow list became a flood of posts, and the 429s it drew slowed every chain.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.mrkdwn import escape
from adapters.slack.web import SlackCallError, SlackLimits, Workspace, call

log = logging.getLogger(__name__)


class Refusals:
    """The refusals one bot shows, and whom it showed one to lately (bounded)."""

    def __init__(self, client: AsyncWebClient, limits: SlackLimits) -> None:
        self.client = client
        self.interval = limits.refusal_interval
        self.memory = max(1, limits.refusal_memory)
        # person -> when the last refusal was shown to them, oldest first
        self._shown: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._shown)

    async def show(self, ws: Workspace, channel: str, user: str, thread_ts: str | None,
                   text: str, *, client: AsyncWebClient | None = None) -> bool:
        """Show `text` to `user` alone in `channel` (under `thread_ts`). False when it was
        dropped (one shown to them lately, the budget spent) or Slack would not take it.
        `client`: the workspace's own (installs in many workspaces), else the bot's."""
        now = time.monotonic()
        self._forget(now)
        if user in self._shown:
            log.info("refusal to %s in %s dropped: one was shown less than %.0f s ago "
                     "(%s)", user, channel, self.interval, text)
            return False
        if not ws.ephemeral_budget.try_acquire():
            log.warning("refusal to %s in %s dropped: too many refusals in the workspace "
                        "(%s)", user, channel, text)
            return False
        self._shown[user] = now
        while len(self._shown) > self.memory:
            self._shown.popitem(last=False)
        # Not urgent: the chains' own posts in this channel go first.
        await ws.post_budget(channel).acquire()
        try:
            await call("chat.postEphemeral", (client or self.client).chat_postEphemeral(
                channel=channel, user=user, text=escape(text), thread_ts=thread_ts))
        except SlackCallError as exc:
            log.warning("could not show a refusal to %s in %s: %s", user, channel, exc)
            return False
        return True

    def _forget(self, now: float) -> None:
        while self._shown and now - next(iter(self._shown.values())) >= self.interval:
            self._shown.popitem(last=False)
