"""Self-consistency votes: K chains for one question against the fake model (which answers each
chain as scripted, in turn), the majority, ties, failed chains, free-text grouping by the
model, and the vote as users see it: `ponder ask --votes`, `/reason votes:` on Discord, Slack's
stream under PONDER_VOTES."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import SettingsError, load_settings
from bot.events import (
    AnswerDelta,
    ChainFailed,
    Event,
    FinalAnswer,
    Question,
    VoteCount,
    Votes,
    event_to_dict,
)
from bot.presenter import final_summary, vote_line
from bot.votes import VOTE_TEMPERATURE, count_votes, vote
from tests.conftest import make_engine, make_settings, until
from tests.fakes.discord_server import FakeDiscord, scaled_rate_limits
from tests.fakes.openai_server import FakeOpenAI, Fault, Hang, Text
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import start_harness, stop_harness
from tests.test_cli import ponder

QUESTION = "What is 6 × 7?"
NEVER = 600.0  # seconds a hanging answer takes: past any test's patience


async def voted(fake: FakeOpenAI, question: Question, k: int, **overrides: object
                ) -> list[Event]:
    settings = make_settings(fake.base_url, min_steps=1, max_steps=3, **overrides)
    engine, llm = make_engine(settings)
    try:
        return [event async for event in vote(engine, question, k)]
    finally:
        await llm.close()


def chat_requests(fake: FakeOpenAI) -> list[dict[str, object]]:
    return [{"headers": r.headers, **r.body} for r in fake.requests
            if r.path.endswith("/chat/completions")]


# --- the vote --------------------------------------------------------------------------------


async def test_the_majority_answer_is_given_with_its_count(fake_llm: FakeOpenAI) -> None:
    fake_llm.auto_steps = 2
    fake_llm.answer(QUESTION, "**42**", "The answer is **41**.", "It is **42**.")
    question = Question(QUESTION)
    events = await voted(fake_llm, question, 3)
    final = events[-1]
    assert isinstance(final, FinalAnswer)
    assert final.votes == Votes(agree=2, total=3, answers=(VoteCount("42", 2),
                                                           VoteCount("41", 1)))
    assert re.search(r"\*\*42\*\*", final.text)
    assert final.steps == 2
    # The first chain is the one shown: its steps stream; its answer waits for the vote.
    assert [e.name for e in events].count("step_finished") == 2
    assert [e for e in events if isinstance(e, AnswerDelta)] == [AnswerDelta("")]
    # Each chain its own session id (one replica each), all with the same prompt prefix; the
    # first at the configured temperature, the others sampled.
    requests = chat_requests(fake_llm)
    by_chain: dict[str, list[dict[str, object]]] = {}
    for r in requests:
        by_chain.setdefault(r["headers"]["x-session-id"], []).append(r)  # type: ignore[index]
    assert set(by_chain) == {question.id, f"{question.id}-2", f"{question.id}-3"}
    assert {r["temperature"] for r in by_chain[question.id]} == {0.2}
    assert {r["temperature"] for r in by_chain[f"{question.id}-3"]} == {VOTE_TEMPERATURE}
    prefixes = {json.dumps(rs[0]["messages"][:2]) for rs in by_chain.values()}  # type: ignore[index]
    assert len(prefixes) == 1
    # Concurrent, not one after the other: a later chain began before the first had answered.
    first_final = max(i for i, r in enumerate(requests)
                      if r["headers"]["x-session-id"] == question.id)  # type: ignore[index]
    assert any(r["headers"]["x-session-id"] != question.id  # type: ignore[index]
               for r in requests[:first_final])
    line = final_summary(final)
    assert line.startswith("2 of 3 lines of reasoning agree · others said 41 (1) · Thought for ")
    assert line.endswith(" · 2 steps · 3 chains")


async def test_a_tie_is_reported_as_one() -> None:
    # No model call: numbers need no grouping (no client given).
    tally = await count_votes(None, Question("q"), ["**4**", "**5**", None])  # type: ignore[arg-type]
    assert tally.text == "**4**"  # the shown chain's answer, among the tied ones
    assert tally.votes == Votes(agree=1, total=3, answers=(VoteCount("4", 1), VoteCount("5", 1)),
                                tie=True, failed=1)
    assert vote_line(tally.votes) == ("No majority: 1 of 3 lines of reasoning give this answer, "
                                      "as many give another · others said 5 (1) · "
                                      "1 ended without an answer")
    assert vote_line(tally.votes, "zh").startswith("没有多数：3 条推理中有 1 条给出这个答案")


async def test_the_majority_need_not_be_the_first_chain() -> None:
    tally = await count_votes(None, Question("q"), ["It is **7**.", "**8**", "8", None])  # type: ignore[arg-type]
    assert tally.text == "**8**"
    assert tally.votes == Votes(agree=2, total=4, answers=(VoteCount("8", 2), VoteCount("7", 1)),
                                failed=1)


async def test_free_text_answers_are_grouped_by_one_model_call(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Text('```json\n{"groups": [[1, 3], [2]]}\n```'))
    settings = make_settings(fake_llm.base_url)
    _, llm = make_engine(settings)
    answers = ["Paris is the capital of France.", "Lyon, I believe.",
               "France's capital city is Paris."]
    try:
        tally = await count_votes(llm, Question("What is the capital of France?"), answers)
    finally:
        await llm.close()
    assert tally.text == answers[0]
    assert tally.votes == Votes(agree=2, total=3, answers=(
        VoteCount("Paris is the capital of France", 2), VoteCount("Lyon, I believe", 1)),
        grouped=True)
    assert "free-text answers grouped by the model" in vote_line(tally.votes)
    (call,) = chat_requests(fake_llm)
    prompt = call["messages"][-1]["content"]  # type: ignore[index]
    assert all(f"Answer {n}:\n{a}" in prompt for n, a in enumerate(answers, 1))


async def test_unusable_grouping_falls_back_to_equal_texts(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Fault(400, message="nope"))
    settings = make_settings(fake_llm.base_url)
    _, llm = make_engine(settings)
    try:
        tally = await count_votes(llm, Question("q"), ["Paris.", "Lyon", "paris"])
    finally:
        await llm.close()
    assert tally.votes.grouped is False
    assert (tally.votes.agree, tally.votes.answers[0].count, tally.text) == (2, 2, "Paris.")


async def test_a_failed_sampled_chain_does_not_stop_the_vote(fake_llm: FakeOpenAI) -> None:
    fake_llm.auto_steps = 1
    question = Question(QUESTION)
    fake_llm.answer(QUESTION, "**42**")
    fake_llm.script_for(f"{question.id}-2", Fault(500))  # the second chain's first step fails
    events = await voted(fake_llm, question, 3, max_attempts=1)
    final = events[-1]
    assert isinstance(final, FinalAnswer)
    assert final.votes == Votes(agree=2, total=3, answers=(VoteCount("42", 2),), failed=1)
    assert final_summary(final).startswith("2 of 3 lines of reasoning agree · 1 ended without "
                                           "an answer · Thought for ")
    assert "chain_failed" not in [e.name for e in events]


def vote_tasks(question: Question) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"vote-{question.id}-")]


async def test_when_the_shown_chain_fails_the_vote_fails_and_stops(fake_llm: FakeOpenAI) -> None:
    question = Question(QUESTION)
    fake_llm.answer(QUESTION, Hang(NEVER))  # the other chains' answers never come…
    fake_llm.script_for(question.id, Fault(500))  # …and the shown chain's first step fails
    async with asyncio.timeout(NEVER / 10):  # it ends now: it does not wait for the others
        events = await voted(fake_llm, question, 3, max_attempts=1, request_timeout=NEVER)
    assert isinstance(events[-1], ChainFailed) and events[-1].reason == "model_unavailable"
    assert not any(isinstance(e, FinalAnswer) for e in events)
    assert vote_tasks(question) == []  # the others were stopped, not left hanging


async def test_stopping_a_vote_stops_every_chain(fake_llm: FakeOpenAI) -> None:
    fake_llm.answer(QUESTION, Hang(NEVER))
    settings = make_settings(fake_llm.base_url, min_steps=1, max_steps=2,
                             request_timeout=NEVER)
    engine, llm = make_engine(settings)
    events: list[Event] = []

    async def consume() -> None:
        async for event in vote(engine, question, 3):
            events.append(event)

    question = Question(QUESTION)
    task = asyncio.create_task(consume())
    try:
        # Every chain is waiting for its (hanging) final answer.
        await until(lambda: len({r.headers.get("x-session-id") for r in fake_llm.requests
                                 if "response_format" not in r.body}) == 3, 10)
        assert len(vote_tasks(question)) == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(NEVER / 10):  # stopped now, not when the others end
                await task
        assert [e.reason for e in events if isinstance(e, ChainFailed)] == ["cancelled"]
        assert vote_tasks(question) == []
    finally:
        await llm.close()


def test_final_answer_event_has_votes_only_when_voted() -> None:
    one = FinalAnswer("4", 1.0, 2.0, 3)
    assert "votes" not in event_to_dict(one)
    many = FinalAnswer("4", 1.0, 2.0, 3, Votes(2, 3, (VoteCount("4", 2), VoteCount("5", 1))))
    assert event_to_dict(many)["votes"] == {
        "agree": 2, "total": 3, "answers": ({"answer": "4", "count": 2},
                                            {"answer": "5", "count": 1}),
        "tie": False, "grouped": False, "failed": 0}


def test_ponder_votes_is_capped() -> None:
    assert load_settings().votes == 1
    assert load_settings(votes=9).votes == 9
    with pytest.raises(SettingsError, match="PONDER_VOTES"):
        load_settings(votes=10)


# --- as users see it -------------------------------------------------------------------------


@pytest.mark.process
async def test_ask_votes_json_through_the_cli(fake_llm: FakeOpenAI) -> None:
    fake_llm.answer(QUESTION, "**42**", "**41**", "**42**")
    code, out, err = await ponder("ask", "--votes", "3", "--json", QUESTION,
                                  env={"OPENAI_BASE_URL": fake_llm.base_url,
                                       "PONDER_MIN_STEPS": "1"})
    assert code == 0, err
    final = json.loads(out.splitlines()[-1])
    assert final["event"] == "final_answer"
    assert final["votes"]["agree"] == 2 and final["votes"]["total"] == 3
    assert final["votes"]["answers"] == [{"answer": "42", "count": 2},
                                         {"answer": "41", "count": 1}]
    assert len({r.headers["x-session-id"] for r in fake_llm.requests}) == 3


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as fake:
        yield fake


async def test_reason_votes_3_on_discord_shows_the_vote(tmp_path: Path, discord: FakeDiscord,
                                                        fake_llm: FakeOpenAI) -> None:
    from tests.test_discord import start, stop  # its harness (here: only this test needs it)

    fake_llm.answer("How many r", "**3**", "**2**", "There are **3**.")
    h = await start(tmp_path, discord, fake_llm)
    try:
        command = discord.guild_commands[discord.guild_id][0]
        option = next(o for o in command["options"] if o["name"] == "votes")
        assert (option["type"], option["min_value"], option["max_value"]) == (4, 1, 9)
        interaction = await h.ask("How many r are in strawberry?", votes=3)
        await h.finished(interaction)
        texts = h.texts(h.thread_of(interaction))
        answer = texts[-1]
        # The majority's answer, whichever of its chains wrote it.
        assert re.match(r"\*\*Answer\*\*\n(There are )?\*\*3\*\*", answer), answer
        assert "_2 of 3 lines of reasoning agree · others said 2 (1) · Thought for " in answer
        assert answer.rstrip().endswith(" · 3 chains_")
        assert len({r.headers["x-session-id"] for r in fake_llm.requests}) == 3
    finally:
        await stop(h)


async def test_slack_follows_ponder_votes_and_shows_the_vote(tmp_path: Path,
                                                             fake_llm: FakeOpenAI) -> None:
    fake_llm.answer("What is 2+2", "**4**", "**4**", "**5**")
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, fake_llm, votes=3, min_steps=1)
        try:
            question, body = h.ask("What is 2+2?")
            await h.post(body)
            await h.settle()
            (stream,) = h.replies(question.ts)
            assert "2 of 3 lines of reasoning agree · others said 5 (1)" in stream.text
            assert stream.text.rstrip().endswith("3 chains_")
        finally:
            await stop_harness(h)
