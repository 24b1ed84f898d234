""""Thinking" on the question while a chain runs: the assistant status where the workspace
allows it, else an ⏳ reaction replaced by ✅ or ❌ at the end."""

from __future__ import annotations

import logging

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.web import SlackCallError, Workspace, call
from bot.events import Language
from bot.surface import Status
from bot.wording import say

log = logging.getLogger(__name__)

THINKING, DONE, FAILED = "hourglass_flowing_sand", "white_check_mark", "x"


class QuestionStatus:
    def __init__(self, client: AsyncWebClient, ws: Workspace, channel: str, thread_ts: str,
                 message_ts: str, language: Language = "en") -> None:
        self.client, self.ws = client, ws
        self.channel, self.thread_ts, self.message_ts = channel, thread_ts, message_ts
        self.language: Language = language
        self.mode: str | None = None

    async def begin(self) -> None:
        """Show "thinking" (again, after a restart: an ⏳ already there is taken over)."""
        if self.ws.status_mode == "assistant":
            try:
                await self._set_status(say("thinking_status", self.language))
                self.mode = "assistant"
                return
            except SlackCallError as exc:
                log.info("assistant status not available in %s (%s): using reactions",
                         self.ws.team_id, exc.error)
                self.ws.status_mode = "reactions"
        if await self._react("reactions.add", THINKING) in (None, "already_reacted"):
            self.mode = "reactions"

    async def end(self, status: Status) -> None:
        """✅ for an answer, ❌ for a chain that failed or was stopped; a chain that resumes
        after a restart only loses its ⏳."""
        if self.mode == "assistant":
            try:
                await self._set_status("")
            except SlackCallError as exc:  # Slack clears it by itself with the next reply
                log.info("could not clear the assistant status: %s", exc.error)
        elif self.mode == "reactions":
            await self._react("reactions.remove", THINKING)
            if status != "resuming":
                await self._react("reactions.add", DONE if status == "answered" else FAILED)

    async def step(self, title: str) -> None:
        """The step being thought now, as the assistant status's loading message (the
        assistant panel); nothing where the status is not the assistant's."""
        if self.mode != "assistant":
            return
        try:
            await self._set_status(say("thinking_status", self.language), [title])
        except SlackCallError as exc:
            log.info("could not show the step in the assistant status: %s", exc.error)

    async def _set_status(self, text: str, loading: list[str] | None = None) -> None:
        await call("assistant.threads.setStatus", self.client.assistant_threads_setStatus(
            channel_id=self.channel, thread_ts=self.thread_ts, status=text,
            loading_messages=loading))

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
