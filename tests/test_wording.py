"""All wording lives in bot/wording.py, complete in every language."""

from __future__ import annotations

import string

import pytest

from bot.wording import TEXTS, every, say


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_key_exists_in_every_language_with_the_same_placeholders() -> None:
    english = TEXTS["en"]
    for language, texts in TEXTS.items():
        assert texts.keys() == english.keys(), (language, texts.keys() ^ english.keys())
        for key, text in texts.items():
            assert text.strip(), (language, key)
            assert fields(text) == fields(english[key]), (language, key)


def test_chinese_is_chinese_not_a_copy_of_english() -> None:
    # A key copied over untranslated would pass the completeness check; this does not.
    same = [key for key, text in TEXTS["zh"].items() if text == TEXTS["en"][key]]
    assert same == []


def test_say_fills_placeholders_and_refuses_a_missing_one() -> None:
    assert say("summary", "en", s="1.5", n=3) == "Thought for 1.5 s · 3 steps"
    assert say("summary", "zh", s="1.5", n=3) == "思考用时 1.5 秒 · 共 3 步"
    assert every("thinking") == ("thinking…", "思考中…")
    with pytest.raises(KeyError):
        say("summary", "en", s="1.5")
