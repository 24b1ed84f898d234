"""One reasoning step as the model writes it: the JSON schema, and reading it back.

Pure text in, steps out; no network. The model's reply streams, so a step is read twice: as a
prefix while it grows (for live display), and as a whole at the end, with a tolerant fallback for
replies that are broken, wrapped in prose or cut short.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jiter

from bot.text import clean_text

STEP_SCHEMA: dict[str, Any] = {
    "type": "object",
    # Order matters: the title streams first, so a step is named before its content grows.
    "properties": {
        "title": {"type": "string"},
        "content": {"type": "string"},
        "next_action": {"type": "string", "enum": ["continue", "final_answer"]},
    },
    "required": ["title", "content", "next_action"],
    "additionalProperties": False,
}

# Live progress of a step is re-parsed at most this often (seconds): nobody redraws faster.
PROGRESS_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class StepProgress:
    title: str
    content: str


@dataclass(frozen=True, slots=True)
class StepResult:
    title: str
    content: str
    next_action: Literal["continue", "final_answer"]
    salvaged: bool = False  # parsed from a broken or truncated reply


class StepReader:
    """The raw reply of one attempt at a step, read as it streams in."""

    def __init__(self, *, interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._parsed_at = 0.0
        self.raw = ""
        self._shown = StepProgress("", "")

    def restart(self) -> None:
        """The attempt so far was thrown away; the reply starts over."""
        self.raw, self._shown = "", StepProgress("", "")

    def feed(self, text: str) -> StepProgress | None:
        """Add streamed text; the step's progress when it is worth showing, else None."""
        self.raw += text
        now = self._clock()
        if now - self._parsed_at < self._interval:
            return None  # nobody redraws faster than this; the result carries the rest
        self._parsed_at = now
        partial = parse_step(self.raw, complete=False)
        if partial is None:
            return None
        progress = StepProgress(_text(partial.get("title")), _text(partial.get("content")))
        if progress == self._shown:
            return None
        self._shown = progress
        return progress

    def result(self, finish_reason: str | None) -> StepResult | None:
        """The finished step, salvaged from a broken or cut reply if need be; None when the
        reply holds no content at all."""
        step = parse_step(self.raw, complete=True) if finish_reason != "length" else None
        if step is not None and _text(step.get("content")):
            return _result(step)
        salvage = parse_step(self.raw, complete=False) or {}
        if _text(salvage.get("content")):
            return _result(salvage, salvaged=True)
        return None

    def unusable(self, *, plain_text: bool) -> StepResult:
        """The last resort for a reply with no step content: its title if any, and the whole
        reply as content when the model was asked for plain text."""
        salvage = parse_step(self.raw, complete=False) or {}
        text = self.raw.strip() if plain_text else ""
        return StepResult(_text(salvage.get("title")), text, "continue", salvaged=True)


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _result(step: dict[str, Any], salvaged: bool = False) -> StepResult:
    action = str(step.get("next_action", "continue")).lower()
    next_action: Literal["continue", "final_answer"] = (
        "final_answer" if "final" in action else "continue"
    )
    return StepResult(_text(step.get("title")).strip(), _text(step.get("content")).strip(),
                      next_action, salvaged)


_CONTROL = re.compile(r"[\x00-\x1f]")


def _escape_controls_in_strings(text: str) -> str:
    """Raw control characters inside JSON strings (legal for vLLM's grammar) made parseable."""
    if not _CONTROL.search(text):
        return text
    out: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            elif ch < " ":
                out.append(f"\\u{ord(ch):04x}")
                continue
        elif ch == '"':
            in_string = True
        out.append(ch)
    return "".join(out)


_DECODER = json.JSONDecoder(strict=False)


def parse_step(raw: str, *, complete: bool) -> dict[str, Any] | None:
    """The step object in `raw`, tolerating prose or code fences around it.

    `complete=False` accepts a prefix of the object (strings cut mid-way), for live display.
    """
    start = raw.find("{")
    if start == -1:
        return None
    body = raw[start:]
    if complete:
        try:
            value, _ = _DECODER.raw_decode(body)
        except ValueError:
            return None
        return _cleaned(value)
    try:
        value = jiter.from_json(_escape_controls_in_strings(body).encode(),
                                partial_mode="trailing-strings")
    except ValueError:
        try:  # trailing prose after a finished object
            value, _ = _DECODER.raw_decode(body)
        except ValueError:
            return None
    return _cleaned(value)


def _cleaned(value: object) -> dict[str, Any] | None:
    """The step object with its texts fit to store and post: a model's `\\ud800` escape
    decodes to a lone surrogate, which neither SQLite nor a platform's JSON takes."""
    if not isinstance(value, dict):
        return None
    return {key: clean_text(v) if isinstance(v, str) else v for key, v in value.items()}


_FENCE_HEAD = re.compile(r"^```[\w-]*[ \t]*\n?")
_STEP_KEYS = frozenset({"title", "content", "next_action"})


def answer_text(raw: str, *, complete: bool) -> str:
    """The final answer as a person should read it, also while it streams.

    A model shown steps as JSON often answers in that format too (`{"title": "Final answer",
    "content": "…"}`, sometimes in a ```json fence): then only its `content` is the answer, and
    while it streams, the wrapper is never shown — nothing until the content begins. Anything
    else, a JSON answer of the question's own included, is shown as it is."""
    text = raw.strip()
    body = _FENCE_HEAD.sub("", text, count=1) if text.startswith("```") else text
    if not body.startswith("{"):
        # A fence whose first line is not complete yet may still turn out to hold the JSON.
        return "" if (not complete and text.startswith("```") and not body) else text
    step = parse_step(body, complete=complete)
    if complete:
        content = step.get("content") if step else None
        return content.strip() if isinstance(content, str) and content.strip() else text
    if not step:
        return ""  # `{` and not one key yet: cannot tell which it is
    if step.keys() & _STEP_KEYS:
        content = step.get("content")
        return content if isinstance(content, str) else ""
    return text
