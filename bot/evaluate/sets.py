"""The questions an eval asks: the built-in set (generated from a seed) or a JSONL file.

Every built-in item has one exactly checkable answer, computed here, never typed in:
- `letters`: how many times a letter appears in a word (strawberry's r);
- `arithmetic`: multi-digit arithmetic (347 × 28 + 519);
- `decimals`: which of two decimals is larger, where the longer one looks larger (9.11 or 9.9);
- `weekday`: the weekday some days after a date whose weekday is given;
- `days`: the days between two dates;
- `word`: a short multi-step word problem with an integer answer.
Kinds take turns, and so do English and Chinese, so any `--n` mixes them; one seed gives the
same items on every machine.

A JSONL set has one object per line: `question`, `answer` (a string or a number), optional
`kind` (default `other`). Blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path

from bot.errors import PonderError
from bot.events import Language


class SetError(PonderError):
    """An eval set that cannot be read; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Item:
    question: str
    answer: str
    kind: str = "other"


KINDS = ("letters", "arithmetic", "decimals", "weekday", "days", "word")
DEFAULT_N = 30

_WORDS = ("strawberry", "raspberry", "bookkeeper", "mississippi", "banana", "committee",
          "occurrence", "assessment", "successful", "parallel", "possession", "necessary",
          "accommodate", "embarrass", "millennium", "tomorrow", "referee", "coffee",
          "balloon", "cinnamon", "address", "giraffe", "pepper", "hippopotamus")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_WEEKDAYS = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "zh": ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"),
}


def builtin(n: int = DEFAULT_N, seed: int = 0) -> list[Item]:
    """`n` items, the same for the same seed: kinds in turn, English and Chinese in turn."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        # Each round of kinds starts with the other language, so every kind gets both.
        language: Language = "zh" if (i + i // len(KINDS)) % 2 else "en"
        items.append(_MAKERS[kind](rng, language))
    return items


def load_jsonl(path: Path, n: int | None = None) -> list[Item]:
    """The items of a JSONL file (the first `n`, when given)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SetError(f"{path} is not UTF-8 text") from None
    items: list[Item] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SetError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise SetError(f"{path}:{number}: expected an object with question and answer")
        question, answer, kind = value.get("question"), value.get("answer"), value.get("kind")
        if not isinstance(question, str) or not question.strip():
            raise SetError(f"{path}:{number}: `question` must be a non-empty string")
        if isinstance(answer, bool) or not isinstance(answer, str | int | float) or (
                isinstance(answer, str) and not answer.strip()):
            raise SetError(f"{path}:{number}: `answer` must be a non-empty string or a number")
        if kind is not None and (not isinstance(kind, str) or not kind.strip()):
            raise SetError(f"{path}:{number}: `kind` must be a non-empty string when given")
        items.append(Item(question.strip(), str(answer).strip(), (kind or "other").strip()))
        if n is not None and len(items) >= n:
            break
    if not items:
        raise SetError(f"{path} holds no questions")
    return items


# --- the kinds ---------------------------------------------------------------------------------


def _letters(rng: random.Random, language: Language) -> Item:
    word = rng.choice(_WORDS)
    repeated = sorted({c for c in word if word.count(c) > 1})
    letter = rng.choice(repeated or sorted(set(word)))
    count = word.count(letter)
    if language == "zh":
        question = f"单词“{word}”中字母“{letter}”出现了几次？只回答数字。"
    else:
        question = (f'How many times does the letter "{letter}" appear in the word "{word}"? '
                    "Answer with just the number.")
    return Item(question, str(count), "letters")


def _arithmetic(rng: random.Random, language: Language) -> Item:
    a, b, c = rng.randint(101, 999), rng.randint(12, 98), rng.randint(101, 999)
    if rng.random() < 0.5:
        expression, value = f"{a} × {b} + {c}", a * b + c
    else:
        expression, value = f"{a} × {b} − {c}", a * b - c
    if language == "zh":
        question = f"计算 {expression} 等于多少？只回答数字。"
    else:
        question = f"What is {expression}? Answer with just the number."
    return Item(question, str(value), "arithmetic")


def _decimals(rng: random.Random, language: Language) -> Item:
    whole = rng.randint(1, 20)
    tenths = rng.randint(2, 9)
    # Two decimals whose digits after the point read larger but are worth less: 9.11 < 9.9.
    hundredths = rng.choice([h for h in range(11, tenths * 10) if h % 10])
    short, long = f"{whole}.{tenths}", f"{whole}.{hundredths:02d}"
    first, second = (short, long) if rng.random() < 0.5 else (long, short)
    if language == "zh":
        question = f"{first} 和 {second} 哪个更大？只回答较大的那个数。"
    else:
        question = f"Which is larger: {first} or {second}? Answer with just the larger number."
    return Item(question, short, "decimals")


def _date(rng: random.Random) -> dt.date:
    return dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 30))


def _date_text(day: dt.date, language: Language) -> str:
    if language == "zh":
        return f"{day.year}年{day.month}月{day.day}日"
    return f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"  # not strftime: the locale's


def _weekday(rng: random.Random, language: Language) -> Item:
    start = _date(rng)
    later = rng.randint(20, 400)
    names = _WEEKDAYS[language]
    was, will = names[start.weekday()], names[(start + dt.timedelta(days=later)).weekday()]
    if language == "zh":
        question = f"{_date_text(start, language)}是{was}。{later} 天之后是星期几？只回答星期几。"
    else:
        question = (f"{_date_text(start, language)} was a {was}. What day of the week is it "
                    f"{later} days later? Answer with just the day.")
    return Item(question, will, "weekday")


def _days(rng: random.Random, language: Language) -> Item:
    start = _date(rng)
    end = start + dt.timedelta(days=rng.randint(10, 500))
    gap = (end - start).days
    if language == "zh":
        question = (f"从{_date_text(start, language)}到{_date_text(end, language)}相隔多少天？"
                    "只回答数字。")
    else:
        question = (f"How many days are there from {_date_text(start, language)} to "
                    f"{_date_text(end, language)}? Answer with just the number.")
    return Item(question, str(gap), "days")


def _word(rng: random.Random, language: Language) -> Item:
    template = rng.randrange(3)
    if template == 0:
        friends, each = rng.randint(3, 7), rng.randint(2, 6)
        has = friends * each + rng.randint(3, 30)
        buys = rng.randint(5, 40)
        value = has - friends * each + buys
        if language == "zh":
            question = (f"小明有 {has} 个苹果。他给 {friends} 个朋友每人 {each} 个，然后又买了 "
                        f"{buys} 个。他现在有多少个苹果？只回答数字。")
        else:
            question = (f"Tom has {has} apples. He gives {each} to each of his {friends} "
                        f"friends, then buys {buys} more. How many apples does he have now? "
                        "Answer with just the number.")
    elif template == 1:
        v1, h1, v2, h2 = (rng.randint(40, 120), rng.randint(2, 5), rng.randint(30, 100),
                          rng.randint(1, 4))
        value = v1 * h1 + v2 * h2
        if language == "zh":
            question = (f"一列火车先以每小时 {v1} 千米的速度行驶 {h1} 小时，再以每小时 {v2} "
                        f"千米的速度行驶 {h2} 小时。它一共行驶了多少千米？只回答数字。")
        else:
            question = (f"A train travels at {v1} km per hour for {h1} hours, then at {v2} km "
                        f"per hour for {h2} hours. How many kilometres does it travel in all? "
                        "Answer with just the number.")
    else:
        per_day, days = rng.randint(12, 40), rng.randint(3, 9)
        pages = per_day * days + rng.randint(10, 200)
        value = pages - per_day * days
        if language == "zh":
            question = (f"一本书有 {pages} 页。小红每天读 {per_day} 页，读了 {days} 天。"
                        "还剩多少页没读？只回答数字。")
        else:
            question = (f"A book has {pages} pages. Mia reads {per_day} pages a day for {days} "
                        "days. How many pages are left to read? Answer with just the number.")
    return Item(question, str(value), "word")


_MAKERS = {"letters": _letters, "arithmetic": _arithmetic, "decimals": _decimals,
           "weekday": _weekday, "days": _days, "word": _word}
