"""An answer reduced to what it says: a number, yes or no, a weekday, a letter, a word.

The one normaliser for the two places that compare answers: `ponder eval`'s judge (an answer
against the expected one, `bot/evaluate/judge.py`) and self-consistency votes (answers against
each other, `bot/votes.py`). Pure text in, keys out.

Where the value is in an answer, in this order:
1. the last **bold** span that holds a value of the shape looked for;
2. the first value after the last answer marker ("answer is", "answer:", "result is", "=",
   "答案是", "答案为", "答案：", "结果是");
3. the whole answer, when it is nothing but that value ("42.", "**Friday**", "Yes");
4. the only value of that shape in a one-line answer of at most 80 characters;
5. (a loose reading only, the eval's) the first value of that shape: Ponder's final answer
   leads with the answer, and so do direct answers to "answer with just the number".
Votes read strictly (1–4): an answer with several candidate values and no marker is free text.

Shapes and their keys:
- number: digits with `,` thousands separators, a sign (`-`, `−`), decimals; Chinese numerals
  (零 to 九百九十九, 两) standing alone or before a measure word (三次, 十二个). `3.50` = `3.5`.
- yes/no: yes, no, true, false, correct, incorrect; 是, 不是, 对, 不对, 否, 正确, 错误 — read at
  the start of the answer (a model leads with it), in bold, or after a marker.
- weekday: Monday … Sunday; 星期一 … 星期日/天, 周一 … 周日, 礼拜一 ….
- letter: one Latin letter (a choice: `B`, `(B)`, `B.`), compared in lower case.
- word, text: case-folded, Markdown and surrounding punctuation dropped, spaces collapsed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

Shape = Literal["number", "yesno", "weekday", "letter", "word", "text"]
# The shapes a vote tries, in order, before it calls answers free text.
# Yes/no first: it is read only where an answer begins, and "No, 221 = 13 × 17" is a no.
VOTE_SHAPES: tuple[Shape, ...] = ("yesno", "number", "weekday", "letter")
_SHORT = 80  # a one-line answer this long or shorter is read whole when it holds one value


@dataclass(frozen=True, slots=True)
class Found:
    key: str  # what is compared: `5535`, `yes`, `friday`, `b`, `paris`
    shown: str  # the value as the answer wrote it: `5,535`, `Yes`, `星期五`


# --- where a value can be --------------------------------------------------------------------

_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__", re.S)
_MARKERS = re.compile(
    r"(?:final\s+answer|answer|result)\s*(?:is|:|=|：)|答案\s*(?:是|为|：|:)|结果\s*(?:是|为|：|:)"
    r"|(?<![=<>!])=(?!=)",
    re.I,
)
_MARKUP = re.compile(r"[*_`#>|~]+")
_EDGES = " \t\r\n.,;:!?。，；：！？、()（）[]【】\"'“”‘’「」"


def plain(text: str) -> str:
    """`text` without Markdown marks, with spaces collapsed and edge punctuation dropped."""
    return " ".join(_MARKUP.sub("", unicodedata.normalize("NFKC", text)).split()).strip(_EDGES)


def text_key(text: str) -> str:
    """Free text as compared: case-folded `plain`."""
    return plain(text).casefold()


# --- numbers ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\.?\d)")
_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
              "七": 7, "八": 8, "九": 9}
_ZH_NUMERAL = "[零〇一二两三四五六七八九十百]+"
_ZH_MEASURE = "个次天人只本条位元岁颗块辆页名年月周步"
_ZH_NUMBER = re.compile(rf"(?<![零〇一二两三四五六七八九十百第]){_ZH_NUMERAL}(?=[{_ZH_MEASURE}])")
_ZH_ALONE = re.compile(rf"^{_ZH_NUMERAL}[{_ZH_MEASURE}]?$")


def _zh_value(numeral: str) -> int | None:
    """A Chinese numeral up to 999 (十二, 一百零五, 两百, 三); None when it is not one."""
    total, digit = 0, None
    rest = numeral
    for unit, size in (("百", 100), ("十", 10)):
        if unit in rest:
            head, rest = rest.split(unit, 1)
            head = head.lstrip("零〇")
            if len(head) > 1 or (head and head not in _ZH_DIGITS):
                return None
            total += (_ZH_DIGITS[head] if head else 1) * size
    rest = rest.lstrip("零〇") if total else rest
    if len(rest) > 1:
        return None
    if rest:
        digit = _ZH_DIGITS.get(rest)
        if digit is None:
            return None
        total += digit
    return total if (total or numeral in ("零", "〇")) else None


def number_key(value: str) -> str | None:
    """`5,535`, `-3.50`, `−2`, `十二` as one canonical form (`5535`, `-3.5`, `-2`, `12`)."""
    text = value.strip().replace("−", "-").replace(",", "")
    zh = _ZH_ALONE.match(text)
    if zh:
        number = _zh_value(text.rstrip(_ZH_MEASURE))
        return None if number is None else str(number)
    try:
        parsed = Decimal(text)
    except InvalidOperation:
        return None
    if not parsed.is_finite():
        return None
    if parsed == 0:
        return "0"
    out = format(parsed.normalize(), "f")
    return out


def _numbers(text: str) -> list[Found]:
    found: list[tuple[int, Found]] = []
    for m in _NUMBER.finditer(text):
        key = number_key(m.group())
        if key is not None:
            found.append((m.start(), Found(key, m.group())))
    for m in _ZH_NUMBER.finditer(text):
        value = _zh_value(m.group())
        if value is not None:
            found.append((m.start(), Found(str(value), m.group())))
    return [f for _, f in sorted(found, key=lambda pair: pair[0])]


# --- yes / no --------------------------------------------------------------------------------

_YES_NO = re.compile(
    r"^(?:(yes|true|correct)|(no|false|incorrect|not\s+correct))\b"
    r"|^(?:(不是|不对|不正确|错误|否|错|不)|(是的|是|对的|对|正确))",
    re.I,
)


def _yes_no_at_start(text: str) -> Found | None:
    m = _YES_NO.match(plain(text))
    if m is None:
        return None
    yes = bool(m.group(1) or m.group(4))
    return Found("yes" if yes else "no", m.group().strip())


# --- weekdays --------------------------------------------------------------------------------

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ZH_DAYS = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6}
_WEEKDAY = re.compile(rf"\b({'|'.join(_DAYS)})\b|(?:星期|礼拜|周)([一二三四五六日天])", re.I)


def _weekdays(text: str) -> list[Found]:
    out = []
    for m in _WEEKDAY.finditer(text):
        index = _DAYS.index(m.group(1).lower()) if m.group(1) else _ZH_DAYS[m.group(2)]
        out.append(Found(_DAYS[index], m.group()))
    return out


# --- letters and words -----------------------------------------------------------------------

_LETTER_ALONE = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
_LETTER_CHOICE = re.compile(r"\(([A-Za-z])\)|(?:^|\s)([A-Z])[.):](?=\s|$)")


def _letters(text: str) -> list[Found]:
    out = []
    for m in _LETTER_CHOICE.finditer(text):
        letter = m.group(1) or m.group(2)
        out.append(Found(letter.lower(), letter))
    return out


def _values(text: str, shape: Shape) -> list[Found]:
    """Every value of `shape` in `text`, in order."""
    match shape:
        case "number":
            return _numbers(text)
        case "weekday":
            return _weekdays(text)
        case "yesno":
            found = _yes_no_at_start(text)
            return [found] if found else []
        case "letter":
            whole = _LETTER_ALONE.match(plain(text))
            if whole:
                return [Found(whole.group(1).lower(), whole.group(1))]
            return _letters(text)
        case _:
            key = text_key(text)
            return [Found(key, plain(text))] if key else []


def whole(text: str, shape: Shape) -> Found | None:
    """`text` read as exactly one value of `shape` and nothing else (an expected answer)."""
    bare = plain(text)
    if not bare:
        return None
    if shape == "number":
        key = number_key(bare)
        return Found(key, bare) if key is not None else None
    if shape in ("word", "text"):
        return Found(text_key(bare), bare) if (shape == "text" or " " not in bare) else None
    values = _values(bare, shape)
    if len(values) == 1 and text_key(values[0].shown) == bare.casefold():
        return values[0]
    return None


def shape_of(expected: str) -> Shape:
    """The shape of an expected answer: what an answer to compare with it must hold."""
    shapes: tuple[Shape, ...] = ("number", "yesno", "weekday", "letter")
    for shape in shapes:
        if whole(expected, shape) is not None:
            return shape
    return "word" if " " not in plain(expected) else "text"


def read(text: str, shape: Shape, *, loose: bool = False) -> Found | None:
    """The value of `shape` that `text` gives as its answer (the rules in this module's
    docstring), or None when it gives none (or, strictly, when it is not clear which)."""
    for m in reversed(list(_BOLD.finditer(text))):
        span = m.group(1) or m.group(2) or ""
        found = _first(span, shape)
        if found is not None:
            return found
    markers = list(_MARKERS.finditer(text))
    if markers:
        after = text[markers[-1].end():]
        found = _first(after, shape)
        if found is not None:
            return found
    alone = whole(text, shape)
    if alone is not None:
        return alone
    values = _values(text, shape)
    if not values:
        return None
    if loose:
        return values[0]
    one_line = "\n" not in text.strip() and len(text.strip()) <= _SHORT
    # A long answer's only number may be a date or a count on the way: not its answer.
    return values[0] if one_line and len({v.key for v in values}) == 1 else None


def _first(span: str, shape: Shape) -> Found | None:
    """The value a span (bold, or after a marker) gives: after its own last marker if it has
    one (`**123 × 45 = 5535**`), else its first."""
    if shape in ("word", "text"):
        return whole(span, shape)
    markers = list(_MARKERS.finditer(span))
    if markers:
        after = _values(span[markers[-1].end():], shape)
        if after:
            return after[0]
    values = _values(span, shape)
    return values[0] if values else None


def vote_key(text: str) -> tuple[Shape, Found] | None:
    """What an answer says, for a vote: the first shape it clearly gives a value of."""
    for shape in VOTE_SHAPES:
        found = read(text, shape)
        if found is not None:
            return shape, found
    return None
