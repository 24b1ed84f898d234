"""The presenter against a recording surface: pacing, splitting, escaping, wording."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from bot.events import (
    AnswerDelta,
    ChainFailed,
    ChainStarted,
    Event,
    FinalAnswer,
    StepDelta,
    StepFinished,
    StepStarted,
)
from bot.presenter import (
    ThreadPresenter,
    split_text,
    summary_line,
)
from bot.ratelimit import RateLimiter
from tests.surfaces import RecordingSurface


async def events_of(items: list[Event], gap: float = 0.0) -> AsyncIterator[Event]:
    for item in items:
        if gap:
            await asyncio.sleep(gap)
        yield item


def streamed_step(index: int, title: str, content: str, pieces: int) -> list[Event]:
    out: list[Event] = [StepStarted(index)]
    for n in range(1, pieces + 1):
        out.append(StepDelta(index, title, content[: len(content) * n // pieces]))
    out.append(StepFinished(index, title, content, 0.5))
    return out


def chain(*steps: list[Event], answer: str = "42", total: float = 12.44) -> list[Event]:
    items: list[Event] = [ChainStarted("c1", "q", "chain", "en")]
    for step in steps:
        items.extend(step)
    items += [AnswerDelta(answer[:1]), FinalAnswer(answer, 1.0, total, len(steps))]
    return items


async def test_each_step_is_one_message_edited_in_place_and_ends_with_the_summary() -> None:
    surface = RecordingSurface()
    items = chain(streamed_step(1, "Read the question", "A" * 300, 5),
                  streamed_step(2, "Check", "B" * 100, 3))
    outcome = await ThreadPresenter(surface).present(events_of(items, gap=0.002))
    posts = [c for c in surface.calls if c[0] == "post"]
    assert len(posts) == 3  # two steps and the answer, in this order
    assert surface.shown[0].startswith("**Step 1 · Read the question** · 0.5 s\n")
    assert surface.shown[0].endswith("A" * 300)
    assert surface.shown[1].startswith("**Step 2 · Check**")
    assert surface.shown[2].endswith("_Thought for 12.4 s · 2 steps_")
    assert "**Answer**\n42" in surface.shown[2]
    assert outcome.answer == "42" and outcome.steps == 2
    assert "⏳" not in "".join(surface.shown.values())


async def test_edits_are_coalesced_to_the_interval_and_the_latest_text_wins() -> None:
    surface = RecordingSurface(edit_interval=0.2)
    items = chain(streamed_step(1, "t", "x" * 400, 200))
    await ThreadPresenter(surface).present(events_of(items, gap=0.002))
    edits = [c for c in surface.calls if c[0] == "edit" and c[1] == 0]
    # 200 deltas over ~0.4 s become a handful of edits spaced by the interval.
    assert 1 <= len(edits) <= 5
    stamps = [c[3] for c in surface.calls if c[1] == 0]
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(stamps))
    assert surface.shown[0].endswith("x" * 400) and "0.5 s" in surface.shown[0]


async def test_a_long_step_continues_in_further_messages_under_the_limit() -> None:
    surface = RecordingSurface(max_chars=500)
    text = "\n\n".join(f"Paragraph {n}. " + "word " * 40 for n in range(12))
    items = chain(streamed_step(1, "Long", text, 4))
    await ThreadPresenter(surface).present(events_of(items))
    step_messages = [t for h, t in surface.shown.items() if h < len(surface.shown) - 1]
    assert len(step_messages) >= 3
    assert all(len(t) <= 500 for t in surface.shown.values())
    joined = " ".join(step_messages)
    for n in range(12):
        assert f"Paragraph {n}." in joined


async def test_rendering_that_grows_text_is_still_kept_under_the_limit() -> None:
    surface = RecordingSurface(max_chars=300)
    items = chain(streamed_step(1, "Amps", "& " * 400, 2))
    await ThreadPresenter(surface).present(events_of(items))
    assert all(len(t) <= 300 for t in surface.shown.values())
    assert all("&amp;" in t for h, t in surface.shown.items() if h < len(surface.shown) - 1)


async def test_mass_mentions_pass_through_the_surface_escaping() -> None:
    surface = RecordingSurface()
    items = chain(streamed_step(1, "@everyone look", "ping @everyone", 1), answer="@everyone")
    await ThreadPresenter(surface).present(events_of(items))
    for text in surface.shown.values():
        assert "@everyone" not in text


async def test_a_failure_is_shown_and_no_message_is_left_thinking() -> None:
    surface = RecordingSurface()
    items: list[Event] = [ChainStarted("c", "q", "chain", "en"), StepStarted(1),
                          StepDelta(1, "Half", "half a thought"),
                          ChainFailed("model_unavailable", "no model server answers", 3.21)]
    outcome = await ThreadPresenter(surface).present(events_of(items))
    assert outcome.failure is not None
    assert "⏳" not in surface.shown[0] and "half a thought" in surface.shown[0]
    assert surface.shown[1] == "⚠️ no model server answers\n_Gave up after 3.2 s._"


async def test_cancelled_chain_says_it_was_stopped() -> None:
    surface = RecordingSurface()
    items: list[Event] = [ChainStarted("c", "q", "chain", "en"),
                          ChainFailed("cancelled", "stopped", 4.0)]
    await ThreadPresenter(surface).present(events_of(items))
    assert surface.shown[0] == "⏹️ Stopped after 4.0 s."


async def test_chinese_question_gets_chinese_labels() -> None:
    surface = RecordingSurface()
    items = [ChainStarted("c", "q", "chain", "zh"), *streamed_step(1, "分析", "内容", 1),
             FinalAnswer("答案是 3", 1.0, 5.0, 1)]
    await ThreadPresenter(surface).present(events_of(items))
    assert surface.shown[0].startswith("**第 1 步 · 分析**")
    assert surface.shown[1].endswith("_思考用时 5.0 秒 · 共 1 步_")


async def test_final_text_is_retried_once_when_an_edit_fails() -> None:
    surface = RecordingSurface(fail_edits=1)
    items = chain(streamed_step(1, "t", "final words", 1))
    await ThreadPresenter(surface).present(events_of(items))
    assert surface.shown[0].endswith("final words")


async def test_shared_budget_paces_parallel_chains() -> None:
    budget = RateLimiter(rate=20, per=1.0, burst=2)
    surfaces = [RecordingSurface(edit_interval=0.0, budget=budget) for _ in range(3)]
    began = time.monotonic()
    await asyncio.gather(*(ThreadPresenter(s).present(
        events_of(chain(streamed_step(1, "t", "y" * 50, 2)))) for s in surfaces))
    calls = sum(len(s.calls) for s in surfaces)
    # Every call took a token: beyond the burst they come at 20 a second at most.
    assert time.monotonic() - began >= (calls - 2) / 20 * 0.9
    for s in surfaces:
        assert s.shown[1].endswith("_Thought for 12.4 s · 1 step_")


def test_summary_line_wording() -> None:
    assert summary_line(12.44, 6) == "Thought for 12.4 s · 6 steps"
    assert summary_line(1.0, 1) == "Thought for 1.0 s · 1 step"


@pytest.mark.parametrize("limit", [40, 100, 333])
def test_split_prefers_paragraphs_then_sentences(limit: int) -> None:
    text = ("First paragraph is short.\n\nSecond one has two sentences. Here is the other one."
            "\n\n" + "Third " * 30)
    pieces = split_text(text, limit)
    assert all(len(p) <= limit for p in pieces)
    assert "".join(pieces).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace(
        "\n", "")
    if 100 <= limit < len(text):
        assert pieces[0].endswith(("short.", "other one."))


def test_split_closes_and_reopens_code_fences() -> None:
    code = "```python\n" + "\n".join(f"x{n} = {n}" for n in range(80)) + "\n```"
    pieces = split_text("Intro.\n\n" + code, 200)
    assert len(pieces) > 2
    for piece in pieces:
        assert piece.count("```") % 2 == 0, piece


async def test_a_step_that_never_got_content_does_not_say_thinking_after_failure() -> None:
    surface = RecordingSurface()
    items: list[Event] = [ChainStarted("c", "q", "chain", "en"), StepStarted(1),
                          ChainFailed("model_unavailable", "down", 1.0)]
    await ThreadPresenter(surface).present(events_of(items))
    assert "thinking" not in surface.text() and "⏳" not in surface.text()
    assert surface.shown[0].startswith("⚠️ down")


async def test_a_step_that_starts_with_content_costs_one_post_and_no_edit() -> None:
    surface = RecordingSurface()
    items = [ChainStarted("c", "q", "chain", "en"), StepStarted(1),
             StepFinished(1, "Quick", "done at once", 0.1), FinalAnswer("ok", 0.1, 0.2, 1)]
    await ThreadPresenter(surface).present(events_of(items))
    assert [c[0] for c in surface.calls] == ["post", "post"]
    assert surface.shown[0].startswith("**Step 1 · Quick** · 0.1 s")


@pytest.mark.parametrize("content", ["", "Half of a thought"])
async def test_a_cut_short_step_says_so(content: str) -> None:
    surface = RecordingSurface()
    items: list[Event] = [ChainStarted("c", "q", "chain", "en"), StepStarted(1),
                          StepDelta(1, "Half", content),
                          ChainFailed("model_unavailable", "down", 1.0)]
    await ThreadPresenter(surface).present(events_of(items))
    assert surface.shown[0] == f"**Step 1 · Half**\n{content}\n_(cut short)_".replace(
        "\n\n", "\n")
    assert "thinking" not in surface.text() and "⏳" not in surface.text()
