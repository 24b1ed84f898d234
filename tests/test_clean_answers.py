"""A model that writes its final answer in the step format it was shown
(`{"title": …, "content": …}`): users see only the content, while it streams too — on Discord,
on Slack (edited replies and streaming) and in the terminal."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from adapters.console.live import ask_live
from bot.events import AnswerDelta, FinalAnswer, Question
from bot.steps import answer_text
from tests.conftest import collect, make_engine, make_settings
from tests.fakes.discord_server import FakeDiscord, scaled_rate_limits
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import start_harness, stop_harness
from tests.test_discord import start as start_discord
from tests.test_discord import stop as stop_discord
from tests.test_discord import writes

WRAPPER_TITLE = "Wrapped up"  # appears nowhere but in the model's JSON wrapper
WRAPPED = Text('```json\n{"title": "Wrapped up", "content": "The answer is **4**, since '
               'two and two make four.", "next_action": "final_answer"}\n```')


def script(llm: FakeOpenAI) -> None:
    llm.script(Step("Add", "2+2 is 4.", "continue"), Step("Check", "4-2 is 2.", "final_answer"),
               WRAPPED)


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    # A few characters a chunk: many interim answer states, each one a chance to leak.
    async with FakeOpenAI(chunk_chars=3, chunk_delay=0.002) as fake:
        yield fake


@pytest.mark.parametrize(("raw", "shown"), [
    ('{"title": "Final answer", "content": "It is 4', "It is 4"),
    ('```json\n{"title": "Final', ""),
    ('{"tit', ""),
    ("```", ""),
    ('{"name": "Ada", "age"', '{"name": "Ada", "age"'),  # a JSON answer of its own
    ("```python\nprint(4)", "```python\nprint(4)"),
    ("It is 4", "It is 4"),
])
def test_an_answer_so_far_is_shown_without_the_step_wrapper(raw: str, shown: str) -> None:
    assert answer_text(raw, complete=False) == shown


async def test_the_engine_and_the_terminal_never_show_the_wrapper(
        tmp_path: Path, llm: FakeOpenAI) -> None:
    script(llm)
    engine, client = make_engine(make_settings(llm.base_url, tmp_path, min_steps=2))
    try:
        events = await collect(engine, "What is 2+2?")
        answers = [e.text for e in events if isinstance(e, AnswerDelta | FinalAnswer)]
        # What every front door draws the answer from, the console's live view included.
        assert len(answers) > 10 and all(WRAPPER_TITLE not in a and "{" not in a
                                         for a in answers)
        assert answers[-1] == "The answer is **4**, since two and two make four."
        script(llm)
        screen = io.StringIO()
        console = Console(file=screen, force_terminal=True, width=100, record=True)
        assert await ask_live(engine, Question("What is 2+2?"), console) == 0
        assert WRAPPER_TITLE not in screen.getvalue() and "next_action" not in screen.getvalue()
        assert "The answer is 4, since two and two make four." in console.export_text()
    finally:
        await client.close()


async def test_discord_never_shows_the_wrapper(tmp_path: Path, llm: FakeOpenAI) -> None:
    script(llm)
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as discord:
        h = await start_discord(tmp_path, discord, llm, min_steps=2)
        try:
            interaction = await discord.slash("reason", question="What is 2+2?")
            await h.finished(interaction)
            shown = [json.dumps(r.json, ensure_ascii=False) for r in writes(discord)]
            answers = [s for s in shown if "**Answer**" in s]
            assert answers and not any(WRAPPER_TITLE in s or "next_action" in s for s in shown)
            assert "The answer is **4**, since two and two make four." in answers[-1]
        finally:
            await stop_discord(h)


@pytest.mark.parametrize("streaming", [False, True])
async def test_slack_never_shows_the_wrapper(tmp_path: Path, llm: FakeOpenAI,
                                             streaming: bool) -> None:
    script(llm)
    async with FakeSlack(streaming=streaming, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, llm, min_steps=2)
        try:
            question, body = h.ask("What is 2+2?")
            assert await h.post(body) == 200
            await h.settle()
            sent = [json.dumps(c.body, ensure_ascii=False) for c in slack.calls
                    if c.method.startswith("chat.")]
            assert sent and not any(WRAPPER_TITLE in s or "next_action" in s for s in sent)
            final = h.replies(question.ts)[-1].text  # mrkdwn, or Markdown when streamed
            assert ("The answer is *4*, since two and two make four." in final
                    or "The answer is **4**, since two and two make four." in final), final
        finally:
            await stop_harness(h)
