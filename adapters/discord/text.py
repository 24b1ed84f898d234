"""What Ponder writes on Discord outside the steps themselves: names, opening lines, summaries.

Discord renders Markdown itself, so model text is kept as it is; only mass mentions are
neutralised (the client's `AllowedMentions.none()` already stops every ping, this keeps the
text from even looking like one), and a link whose text names another address than its target
is shown as its target (`bot.links`).
"""

from __future__ import annotations

import re

from bot.events import Language
from bot.links import honest_markdown
from bot.presenter import seconds_text, summary_line
from bot.surface import Outcome
from bot.wording import say

MAX_CONTENT = 2000
THREAD_NAME_LIMIT = 100
_ZWSP = "\u200b"

_MASS_MENTION = re.compile(r"@(everyone|here)\b")
_MENTION = re.compile(r"<(?:@[!&]?|#)\d+>|<a?:\w+:\d+>|<t:\d+(?::\w)?>")
_EMPHASIS = re.compile(r"[*_~`|]+")
_MARKUP = re.compile(r"[>#\[\]()]+")
_URL = re.compile(r"https?://\S+")
_SPACE = re.compile(r"\s+")


def render(markdown: str) -> str:
    """Presenter Markdown → Discord text: unchanged, except that `@everyone`/`@here` cannot
    ping and no link's text names an address it does not lead to."""
    return _MASS_MENTION.sub(lambda m: f"@{_ZWSP}{m.group(1)}", honest_markdown(markdown))


def thread_name(question: str, limit: int = THREAD_NAME_LIMIT) -> str:
    """A thread title from a question: one line, no markup or mentions, at most `limit` chars."""
    text = _MENTION.sub(" ", question)
    text = _URL.sub(lambda m: m.group(0).split("//", 1)[1].split("/", 1)[0], text)
    text = _EMPHASIS.sub("", text)
    text = _MARKUP.sub(" ", text)
    text = _SPACE.sub(" ", text).strip(" -:;,.")
    text = render(text)
    if not text:
        return "Ponder"
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" -:;,.") + "…"


def quote(text: str, limit: int) -> str:
    """`text` as a Markdown block quote of at most `limit` chars."""
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.splitlines())


def opening(question: str, asker_mention: str, note: str | None = None,
            language: Language = "en") -> str:
    """The message a chain starts from (a thread's first message, or the inline header)."""
    head = say("asked", language, who=asker_mention)
    tail = f"\n_{note}_" if note else ""
    room = MAX_CONTENT - len(head) - len(tail) - 200  # room for the closing summary line
    return render(f"{head}\n{quote(question, room)}{tail}")


def running_line(where: str | None, language: Language = "en") -> str:
    return say("running_in", language, where=where) if where else say("running", language)


def outcome_line(outcome: Outcome, language: Language, where: str | None) -> str:
    """One line for the opening message once the chain is over, from its status."""
    link = f" · {where}" if where else ""
    failure = outcome.failure
    match outcome.status:
        case "resuming":
            return say("will_resume", language) + link
        case "stopped":
            seconds = failure.total_seconds if failure is not None else outcome.total_seconds
            return say("stopped_line", language, s=seconds_text(seconds)) + link
        case "failed":
            message = failure.message if failure is not None else say("no_answer", language)
            return f"⚠️ {message}{link}"
        case "answered":
            return f"✅ {summary_line(outcome.total_seconds, outcome.steps, language)}{link}"


def with_status(opening_text: str, line: str) -> str:
    """The opening message with its status line below it, within Discord's limit."""
    text = f"{opening_text}\n{line}"
    if len(text) <= MAX_CONTENT:
        return text
    keep = MAX_CONTENT - len(line) - 2
    return f"{opening_text[:keep].rstrip()}…\n{line}"
