"""What the service runs for a Slack thread: a stream where the workspace offers one, else
post + edit (`ThreadPresenter`), and what the workspace turned out not to support.

Every chain that Slack will stream is streamed: a chain waits a little (`stream_wait`) for
`chat.startStream`'s window to let it open one, and posts and edits instead only when the
window stays full that long, or when Slack refuses streaming (which is remembered)."""

from __future__ import annotations

import asyncio
import logging
import time
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
        # When the chain began: between chains sharing a budget, the first goes first.
        self.rank = time.monotonic()
        self._classic: ThreadPresenter | None = None
        self._stream: Stream | None = None  # while one is open

    def _thread_presenter(self) -> ThreadPresenter:
        if self._classic is None:
            self._classic = ThreadPresenter(self.surface, self.language, rank=self.rank)
            if self._stream is None:
                self.outcome = self._classic.outcome
        return self._classic

    async def notice(self, markdown: str, key: str | None = None) -> None:
        """A one-off reply shown at once (a resumed chain, a model server that is down).

        Always a plain reply, never the start of a stream: the service may wait a long time
        after a notice, or be stopped before `present`, and a stream must not hang open.
        """
        classic = self._thread_presenter()
        await classic.notice(markdown, key)
        if self._stream is not None:
            # Said while a stream is open (earlier turns left out): the stream's outcome stays
            # the chain's, and records this reply too.
            self._stream.outcome.merge(classic.outcome)

    async def present(self, events: AsyncIterator[Event]) -> Outcome:
        ws = self.thread.workspace
        if ws.may_stream(self.thread.channel) and await self._may_open():
            stream = Stream(self.thread, self.surface, self.language, rank=self.rank)
            if self._classic is not None:
                stream.outcome.merge(self._classic.outcome)
            try:
                await stream.open()
            except StreamRefused as exc:
                self._remember(exc.error)
            except SlackCallError as exc:
                log.warning("could not open a stream (%s): posting and editing instead", exc)
            else:
                self.outcome, self._stream = stream.outcome, stream
                try:
                    self.outcome = await stream.present(events)
                finally:
                    self._stream = None
                return self.outcome
        presenter = self._thread_presenter()
        self.outcome = presenter.outcome
        return await presenter.present(events)

    async def _may_open(self) -> bool:
        """A turn of `chat.startStream`'s window, if one comes within `stream_wait`."""
        ws = self.thread.workspace
        try:
            async with asyncio.timeout(ws.limits.stream_wait):
                await ws.stream_starts.acquire(rank=self.rank)
        except TimeoutError:
            log.info("no stream could be opened within %.0f s (Slack's limit on new streams):"
                     " posting and editing instead", ws.limits.stream_wait)
            return False
        return True

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
