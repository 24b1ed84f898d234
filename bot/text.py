"""Text as every part of Ponder takes it: a store, the model server, each platform."""

from __future__ import annotations

import re
import unicodedata

_UNSENDABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """`text` as every store, model server and platform takes it: lone surrogates (which
    UTF-8 cannot carry: a `\\ud800` escape in JSON, a terminal's undecodable bytes) become
    U+FFFD, surrogate pairs the characters they encode, and control characters other than
    tab and line breaks are dropped (PostgreSQL refuses NUL; nobody can read the rest)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return _UNSENDABLE.sub("", text)


def visible(text: str) -> str:
    """What is left of `text` to read: without control and invisible formatting characters
    (zero-width spaces and joiners, direction marks, BOMs), which alone make no question."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf")).strip()
