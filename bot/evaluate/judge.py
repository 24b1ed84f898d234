"""Is an answer right? The final answer text a user sees, read per kind (`bot/answers.py`).

What is compared depends on the expected answer's shape (a number, yes/no, a weekday, a letter,
a word, free text), read from the item's expected answer itself, so a JSONL set needs no more
than `question` and `answer`:
- a number, yes/no, weekday or letter: the answer's value, read loosely (`bot.answers.read`:
  bold, then after an answer marker, then the whole answer, then its first value), equals the
  expected one (`5,535` = `5535`, `3.50` = `3.5`, `Friday` = `星期五`, `(B)` = `b`);
- a word: the same, or the word on its own in the answer's first sentence (in Chinese, anywhere
  in it);
- free text: the answer's bold span, what follows its marker, its first line or the whole
  answer equals the expected text once both are case-folded without Markdown or punctuation.
"""

from __future__ import annotations

import re

from bot.answers import Shape, plain, read, shape_of, text_key, whole

_CJK = re.compile(r"[\u3400-\u9fff]")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s|\n")


def expected_key(expected: str) -> tuple[Shape, str]:
    shape = shape_of(expected)
    found = whole(expected, shape)
    return shape, (found.key if found is not None else text_key(expected))


def judge(answer: str, expected: str) -> bool:
    """Whether `answer` (the final answer as shown) gives `expected`."""
    shape, want = expected_key(expected)
    if shape in ("word", "text"):
        return _text_matches(answer, want, shape)
    found = read(answer, shape, loose=True)
    return found is not None and found.key == want


def _text_matches(answer: str, want: str, shape: Shape) -> bool:
    found = read(answer, shape)
    if found is not None and found.key == want:
        return True
    candidates = [answer, answer.strip().split("\n", 1)[0]]
    if any(text_key(c) == want for c in candidates):
        return True
    if shape == "word":
        first = _SENTENCE_END.split(answer.strip(), maxsplit=1)[0]
        sentence = plain(first).casefold()
        if _CJK.search(want):  # Chinese does not put spaces between words
            return want in sentence
        return want in re.findall(r"\w+", sentence)
    return False
