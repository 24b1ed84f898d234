"""The pieces of a Slack streamed message (task cards, Markdown text) as Ponder builds them,
and the stop of a stream a dead process left open."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from slack_sdk.models.messages.chunk import Chunk, MarkdownTextChunk, TaskUpdateChunk

from adapters.slack.web import SlackCallError, SlackThread, call
from bot.events import Language
from bot.presenter import step_title
from bot.store import StepRecord
from bot.wording import say

log = logging.getLogger(__name__)


async def stop_leftover_stream(thread: SlackThread, ts: str, steps: Sequence[StepRecord],
                               language: Language) -> None:
    """Stop a stream a dead process left open: its last stored step's card complete, the one
    it was thinking about marked as cut short, and a line saying the chain goes on below. A
    stream that was stopped already (or has expired) refuses; that is fine."""
    chunks: list[dict[str, Any]] = []
    if steps:
        last = steps[-1]
        title = step_title(last.index, last.title, language, last.seconds)
        chunks.append(task(last.index, card_title(title), "complete"))
    nxt = steps[-1].index + 1 if steps else 1
    cut = f"{step_title(nxt, '', language)} · {say('cut_by_restart', language)}"
    chunks.append(task(nxt, card_title(cut), "error"))
    chunks.append({"type": "markdown_text", "text": continued(language)})
    await thread.workspace.stream_stops.acquire(urgent=True)
    try:
        await call("chat.stopStream", thread.client.chat_stopStream(
            channel=thread.channel, ts=ts,
            chunks=to_chunks(chunks, thread.workspace.limits.markdown_chunk)))
    except SlackCallError as exc:
        log.info("leftover stream %s not stopped (%s)", ts, exc.error)
    finally:
        thread.workspace.stream_stops.settled()


def continued(language: Language) -> str:
    return f"\n\n_{say('continued', language)}_"


def card_title(text: str) -> str:
    """Slack refuses a task card title over 256 characters."""
    return text if len(text) <= 250 else text[:249] + "…"


def task(i: int, title: str, status: str) -> dict[str, Any]:
    return card(f"step-{i}", title, status)


def card(id_: str, title: str, status: str) -> dict[str, Any]:
    return {"type": "task_update", "id": id_, "title": title, "status": status}


def text_delta(sent: str, new: str) -> tuple[str, bool]:
    """What to append so `sent` becomes `new` (trailing blanks held back), or a restart."""
    new = new.rstrip()
    if new.startswith(sent):
        return new[len(sent):], False
    return new, True


def text_size(chunks: list[dict[str, Any]]) -> int:
    return sum(len(c.get("text", "")) for c in chunks if c["type"] == "markdown_text")


def to_chunks(chunks: list[dict[str, Any]], limit: int) -> list[Chunk]:
    """slack_sdk chunk objects; markdown longer than Slack takes in one chunk is cut."""
    out: list[Chunk] = []
    for chunk in chunks:
        if chunk["type"] == "markdown_text":
            text = chunk["text"]
            for start in range(0, len(text), limit):
                out.append(MarkdownTextChunk(text=text[start:start + limit]))
        else:
            out.append(TaskUpdateChunk(id=chunk["id"], title=chunk["title"],
                                       status=chunk["status"]))
    return out
