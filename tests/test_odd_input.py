"""Hostile and odd input: links whose text names another address than their target, lone
surrogates in questions and in model output, Japanese questions."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.discord.text import render
from adapters.slack.mrkdwn import to_mrkdwn
from bot.links import deceptive, honest_markdown, honest_so_far
from bot.prompts import detect_language
from tests.fakes.openai_server import FakeOpenAI, Raw, Step, Text
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import Harness, start_harness, stop_harness, texts_sent

ROOT = Path(__file__).resolve().parents[1]
EVIL = "https://evil.example/login"


@pytest.fixture
async def h(tmp_path: Path, fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    # Post + chat.update: the path on which Ponder itself turns Markdown into Slack's links.
    async with FakeSlack(streaming=False, update_limit=None) as slack:
        harness = await start_harness(tmp_path, slack, fake_llm, min_steps=1)
        try:
            yield harness
        finally:
            await stop_harness(harness)


# --- links -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "https://acme.slack.com/sso",
    "acme.slack.com/sso",
    "www.acme.com",
    "paypal.com",
    "**https://acme.com/login**",
    "Sign in at https://acme.com/login today",
    "ｈｔｔｐｓ：／／acme．com/sso",  # full-width forms read the same
    "acme\u200b.com",  # a zero-width space read over
    "acme\\.com",  # a Markdown escape
    "192.168.1.1",
    "https://acme.com.evil.example",
])
def test_link_text_naming_another_address_is_deceptive(text: str) -> None:
    assert deceptive(text, EVIL)


@pytest.mark.parametrize(("text", "target"), [
    ("the docs", EVIL),
    ("Node.js", "https://nodejs.org"),
    ("README.md", "https://github.com/acme/app/blob/main/README.md"),
    ("os.path.join", "https://docs.python.org/3/library/os.path.html"),
    ("acme.com", "https://acme.com/pricing"),  # the site it names, a page of it
    ("acme.com", "https://docs.acme.com/start"),
    ("https://example.com/a", "https://example.com/a/"),
    ("www.example.com", "https://example.com"),
    ("ceo@acme.com", "mailto:ceo@acme.com"),
    ("bücher.de", "https://xn--bcher-kva.de/"),
])
def test_ordinary_and_truthful_link_texts_are_not(text: str, target: str) -> None:
    assert not deceptive(text, target)


def test_discord_shows_where_a_misleading_link_goes() -> None:
    assert render("[https://acme.slack.com/sso](https://evil.example)") == "<https://evil.example>"
    assert render("Log in: [acme.slack.com/sso](<https://evil.example/a(b)>) now") == \
        "Log in: <https://evil.example/a(b)> now"
    assert render("[https://acme.com](https://evil.example \"Acme\")") == "<https://evil.example>"
    assert render("[nested [https://acme.com]](https://evil.example)") == "<https://evil.example>"
    # Ordinary links stay; code shows text, not links, and stays as written.
    assert render("see [the docs](https://example.com/docs)") == \
        "see [the docs](https://example.com/docs)"
    assert render("`[https://a.com](https://b.com)`") == "`[https://a.com](https://b.com)`"
    fenced = "```\n[https://a.com](https://b.com)\n```"
    assert render(fenced) == fenced
    assert honest_markdown("[https://a.com](https://a.com)") == "[https://a.com](https://a.com)"


def test_slack_shows_where_a_misleading_link_goes() -> None:
    assert to_mrkdwn("[https://acme.slack.com/sso](https://evil.example)") == \
        "<https://evil.example>"
    # Slack's own link syntax written by the model is no way around it.
    assert to_mrkdwn("<https://evil.example|https://acme.slack.com/sso>") == \
        "<https://evil.example>"
    assert to_mrkdwn("<mailto:x@evil.example|ceo@acme.com>") == "<mailto:x@evil.example>"
    # Ordinary links stay links with their text.
    assert to_mrkdwn("[the docs](https://example.com/a?b=1&c=2)") == \
        "<https://example.com/a?b=1&amp;c=2|the docs>"
    assert to_mrkdwn("<https://example.com|the docs>") == "<https://example.com|the docs>"
    assert to_mrkdwn("<https://example.com>") == "<https://example.com>"
    assert to_mrkdwn("`<https://evil.example|https://acme.com>`") == \
        "`&lt;https://evil.example|https://acme.com&gt;`"


async def test_a_misleading_link_from_the_model_reaches_slack_as_its_target(h: Harness) -> None:
    h.llm.script(
        Step("Where", "Sign in at [https://acme.slack.com/sso](https://evil.example/a).",
             "final_answer"),
        Text("Go to <https://evil.example/b|https://acme.slack.com/sso> or "
             "[the handbook](https://acme.example/handbook)."))
    question, body = h.ask("Where do I sign in?")
    assert await h.post(body) == 200
    await h.settle()
    replies = [r.text for r in h.replies(question.ts)]
    assert "Sign in at <https://evil.example/a>." in replies[0]
    assert "Go to <https://evil.example/b> or <https://acme.example/handbook|the handbook>." \
        in replies[-1]
    for text in texts_sent(h.slack):
        assert "|https://acme" not in text and "|acme." not in text, text


@pytest.mark.parametrize(("so_far", "shown"), [
    ("See [https://acme.slack.com/sso](https://evil.ex", "See "),
    ("See [https://acme.slack.com/sso](https://evil.example/a).", "See <https://evil.example/a>."),
    ("See [docs](https://x.org/a) and [https://a", "See [docs](https://x.org/a) and "),
    ("a [b] c", "a [b] c"),
    ("x [b]", "x "),
])
def test_a_link_still_being_written_waits_for_its_target(so_far: str, shown: str) -> None:
    assert honest_so_far(so_far) == shown


async def test_a_misleading_link_streamed_to_slack_goes_out_as_its_target(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    # Streamed Markdown is rendered by Slack itself; the answer arrives a few characters at a
    # time, so the link is cut in pieces on the way.
    fake_llm.script(Step("Where", "Look it up.", "final_answer"),
                    Text("Go to [https://acme.slack.com/sso](https://evil.example/b) or "
                         "[the handbook](https://acme.example/handbook)."))
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm, min_steps=1)
        try:
            _question, body = h.ask("Where do I sign in?")
            assert await h.post(body) == 200
            await h.settle()
        finally:
            await stop_harness(h)
    streamed = "".join(
        str(chunk.get("text", "")) for c in slack.calls if c.method.endswith("Stream")
        for chunk in c.body.get("chunks") or [] if chunk.get("type") == "markdown_text")
    assert "https://evil.example/b" in streamed, streamed
    assert "acme.slack.com" not in streamed, streamed
    assert "[the handbook](https://acme.example/handbook)" in streamed, streamed


@pytest.mark.process
async def test_a_misleading_link_in_the_terminal_shows_its_target(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(
        Step("Where", "Sign in at [https://acme.slack.com/sso](https://evil.example/a).",
             "final_answer"),
        Text("Go to [www.acme.example](https://evil.example/b)."))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_BASE_URL": fake_llm.base_url,
           "PONDER_MIN_STEPS": "1", "COLUMNS": "120"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "ask", "Where do I sign in?", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    shown = out.decode()
    assert "https://evil.example/a" in shown and "https://evil.example/b" in shown, shown
    assert "acme.slack.com" not in shown and "www.acme.example" not in shown, shown


# --- lone surrogates ---------------------------------------------------------------------------


@pytest.mark.process
async def test_undecodable_bytes_in_a_terminal_question_are_answered(
        fake_llm: FakeOpenAI) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_BASE_URL": fake_llm.base_url}
    # Python hands undecodable argument bytes over as lone surrogates (surrogateescape).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "ask", "--json", b"Is 7 prime? \xff\xfe", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert events[0]["question"] == "Is 7 prime? \ufffd\ufffd"
    assert events[-1]["event"] == "final_answer"
    assert fake_llm.requests[0].body["messages"][-1]["content"] == "Is 7 prime? \ufffd\ufffd"


async def test_a_lone_surrogate_in_a_slack_question_is_answered(h: Harness) -> None:
    h.llm.script(Step("Check", "7 has no divisors but 1 and 7.", "final_answer"), Text("Yes."))
    # json.dumps writes it as the `\ud800` escape Slack's JSON can carry.
    question, body = h.ask("Is 7 prime? \ud800")
    assert await h.post(body) == 200
    await h.settle()
    replies = [r.text for r in h.replies(question.ts)]
    assert replies[-1].startswith("*Answer*\nYes."), replies
    assert h.llm.requests[0].body["messages"][-1]["content"] == "Is 7 prime? \ufffd"
    [record] = await h.ponder.store.chains_with_status("answered")
    assert record.question == "Is 7 prime? \ufffd"


async def test_model_output_with_a_lone_surrogate_escape_is_stored_and_posted(
        h: Harness) -> None:
    # A model writes its JSON step with `\ud800` escapes, which decode to lone surrogates.
    h.llm.script(
        Raw('{"title": "Odd \\ud800", "content": "bad \\udfff byte, \\ud83d\\ude00 fine",'
            ' "next_action": "final_answer"}'),
        Text("Done."))
    question, body = h.ask("Say something odd")
    assert await h.post(body) == 200
    await h.settle()
    replies = [r.text for r in h.replies(question.ts)]
    assert replies[0].startswith("*Step 1 · Odd \ufffd*"), replies
    assert "bad \ufffd byte, 😀 fine" in replies[0]
    assert replies[-1].startswith("*Answer*\nDone."), replies
    [record] = await h.ponder.store.chains_with_status("answered")
    [step] = await h.ponder.store.steps(record.id)
    assert step.content == "bad \ufffd byte, 😀 fine"


# --- Japanese ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "language"), [
    ("ひらがなだけのしつもんです", "en"),  # kana only
    ("東京タワーの高さは何メートルですか？", "en"),  # kana and kanji
    ("日本語で説明してください", "en"),
    ("コーヒーは体にいいですか", "en"),
    ("東京都庁舎", "zh"),  # kanji only: cannot be told from Chinese
    ("为什么天空是蓝色的？", "zh"),
    ("我の朋友是谁？你知道他在哪里吗", "zh"),  # one stray kana does not make it Japanese
    ("列奥纳多・达・芬奇是谁？", "zh"),  # the katakana middle dot is Chinese usage too
    ("Why is the sky blue?", "en"),
])
def test_japanese_is_not_taken_for_chinese(text: str, language: str) -> None:
    assert detect_language(text) == language
