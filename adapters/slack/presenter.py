"""What the service runs for a Slack thread: a stream where the workspace offers one, else
post + edit (`ThreadPresenter`), and what the workspace turned out not to support."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from adapters.slack.stream import CHANNEL_REFUSALS, Stream, StreamRefused
from adapters.slack.web import SlackCallError, SlackThread, channel_kind
from bot.events import Event, Language
from bot.presenter import ThreadPresenter
from bot.surface import Outcome, Surface

log = logging.getLogger(__name__)


class SlackPresenter:
    """What `Ponder` runs for a Slack thread: a stream where possible, else post + edit
    (`surface`, the thread's plain Surface)."""

    def __init__(self, thread: SlackThread, surface: Surface, language: Language = "en") -> None:
        self.thread = thread
        self.surface = surface
        self.language: Language = language
        self.outcome = Outcome()
        self._classic: ThreadPresenter | None = None

    def _thread_presenter(self) -> ThreadPresenter:
        if self._classic is None:
            self._classic = ThreadPresenter(self.surface, self.language)
            self.outcome = self._classic.outcome
        return self._classic

    async def notice(self, markdown: str, key: str | None = None) -> None:
        """A one-off reply shown at once (a resumed chain, a model server that is down).

        Always a plain reply, never the start of a stream: the service may wait a long time
        after a notice, or be stopped before `present`, and a stream must not hang open.
        """
        await self._thread_presenter().notice(markdown, key)

    async def present(self, events: AsyncIterator[Event]) -> Outcome:
        ws = self.thread.workspace
        if ws.may_stream(self.thread.channel) and ws.stream_starts.try_acquire():
            stream = Stream(self.thread, self.surface, self.language)
            if self._classic is not None:
                stream.outcome.merge(self._classic.outcome)
            try:
                await stream.open()
            except StreamRefused as exc:
                self._remember(exc.error)
            except SlackCallError as exc:
                log.warning("could not open a stream (%s): posting and editing instead", exc)
            else:
                self.outcome = stream.outcome
                self.outcome = await stream.present(events)
                return self.outcome
        presenter = self._thread_presenter()
        self.outcome = presenter.outcome
        return await presenter.present(events)

    def _remember(self, error: str) -> None:
        ws = self.thread.workspace
        if error in CHANNEL_REFUSALS:
            ws.no_stream_kinds.add(channel_kind(self.thread.channel))
            log.info("Slack streaming is not offered in %s channels of %s (%s)",
                     channel_kind(self.thread.channel), ws.team_id, error)
        else:
            ws.streaming = False
            log.info("Slack streaming is not offered in workspace %s (%s): using chat.update",
                     ws.team_id, error)
