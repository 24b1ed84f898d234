"""The engine and LLM client against the fake vLLM server, over real HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bot.events import (
    AnswerDelta,
    ChainFailed,
    ChainStarted,
    FinalAnswer,
    Question,
    StepDelta,
    StepFinished,
    StepStarted,
    Turn,
)
from tests.conftest import collect, make_engine, make_settings
from tests.fakes.openai_server import (
    Cut,
    FakeOpenAI,
    Fault,
    Hang,
    Raw,
    Reasoning,
    Step,
    Text,
    chat_tokens,
)


def finished(events: list[object]) -> list[StepFinished]:
    return [e for e in events if isinstance(e, StepFinished)]


def final(events: list[object]) -> FinalAnswer:
    answers = [e for e in events if isinstance(e, FinalAnswer)]
    assert answers, f"no final answer in {events[-3:]}"
    return answers[-1]


async def test_a_chain_streams_steps_then_a_final_answer(fake_llm: FakeOpenAI) -> None:
    fake_llm.chunk_delay = 0.02  # tokens at a model's pace, so the step visibly grows
    fake_llm.chunk_chars = 4
    fake_llm.script(Step("Restate", "We need 2+2, which is a small sum.", "continue"),
                    Step("Add", "2+2 is 4.", "continue"),
                    Step("Check", "4-2 is 2, so 4 is right.", "final_answer"),
                    Text("**4**"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, min_steps=3))
    events = await collect(engine, "What is 2+2?")
    await llm.close()
    assert isinstance(events[0], ChainStarted) and events[0].language == "en"
    steps = finished(events)
    assert [(s.index, s.title) for s in steps] == [(1, "Restate"), (2, "Add"), (3, "Check")]
    answer = final(events)
    assert answer.text == "**4**" and answer.steps == 3
    assert answer.total_seconds >= answer.seconds > 0
    assert all(s.seconds > 0 for s in steps)
    # The title streams before the content, and the content grows.
    deltas = [e for e in events if isinstance(e, StepDelta) and e.index == 1]
    assert len(deltas) >= 3
    assert "We need 2+2, which is a small sum.".startswith(deltas[-1].content)
    grown = [len(d.content) for d in deltas]
    assert grown == sorted(grown)
    assert any(isinstance(e, AnswerDelta) for e in events)
    # Step requests use a strict JSON schema; the final request is plain text.
    bodies = [r.body for r in fake_llm.requests]
    assert bodies[0]["response_format"]["type"] == "json_schema"
    assert bodies[0]["response_format"]["json_schema"]["strict"] is True
    assert bodies[0]["stream"] is True
    assert "response_format" not in bodies[-1]
    assert bodies[-1]["messages"][-1]["role"] == "user"
    # One chain, one routing key: every request carries the chain id.
    chain_id = events[0].chain_id
    assert {r.headers.get("x-session-id") for r in fake_llm.requests} == {chain_id}


async def test_the_step_cap_is_exact(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(*[Step(f"S{n}", f"thought {n}", "continue") for n in range(10)], Text("done"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, max_steps=4))
    events = await collect(engine, "Think forever")
    await llm.close()
    assert len(finished(events)) == 4
    assert len(fake_llm.requests) == 5  # four steps and one final-answer request
    assert final(events).steps == 4


async def test_an_early_final_answer_is_held_until_the_minimum_steps(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Step("One", "a", "final_answer"), Step("Two", "b", "final_answer"),
                    Step("Three", "c", "final_answer"), Text("ok"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, min_steps=3))
    events = await collect(engine, "Quick one")
    await llm.close()
    assert len(finished(events)) == 3
    nudge = fake_llm.requests[1].body["messages"][-1]["content"]
    assert "check" in nudge.lower()


async def test_5xx_and_429_are_retried_honouring_retry_after(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Fault(500), Fault(429, retry_after=0.3), Step("A", "b", "final_answer"),
                    Text("fine"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, min_steps=1))
    loop = asyncio.get_running_loop()
    began = loop.time()
    events = await collect(engine, "q")
    await llm.close()
    assert final(events).text == "fine"
    assert loop.time() - began >= 0.3
    assert len(fake_llm.requests) == 4


async def test_three_failures_end_the_chain_with_a_readable_reason(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Fault(503), Fault(503), Fault(503))
    engine, llm = make_engine(make_settings(fake_llm.base_url))
    events = await collect(engine, "q")
    await llm.close()
    failure = events[-1]
    assert isinstance(failure, ChainFailed) and failure.reason == "model_unavailable"
    assert "kept failing" in failure.message and "HTTP 503" in failure.message
    assert len(fake_llm.requests) == 3


async def test_other_4xx_are_not_retried(fake_llm: FakeOpenAI) -> None:
    engine, llm = make_engine(make_settings(fake_llm.base_url, model="no-such-model"))
    events = await collect(engine, "q")
    await llm.close()
    failure = events[-1]
    assert isinstance(failure, ChainFailed) and failure.reason == "model_error"
    assert "HTTP 404" in failure.message and "PONDER_MODEL" in failure.message
    assert len(fake_llm.requests) == 1


async def test_no_server_gives_the_hint_to_start_one(tmp_path: Path) -> None:
    engine, llm = make_engine(make_settings("http://127.0.0.1:9/v1", max_attempts=2))
    events = await collect(engine, "q")
    await llm.close()
    failure = events[-1]
    assert isinstance(failure, ChainFailed) and failure.reason == "model_unavailable"
    assert failure.message.startswith("no model server answers")
    assert "ponder model serve" in failure.message
    assert "127.0.0.1:9" not in failure.message  # where it is goes to the log, not to chat


async def test_a_stream_cut_midway_is_retried_and_the_step_starts_over(
        fake_llm: FakeOpenAI) -> None:
    whole = json.dumps({"title": "Cut", "content": "x" * 80, "next_action": "continue"})
    fake_llm.script(Cut(whole, after_chars=40), Step("Whole", "fine now", "final_answer"),
                    Text("answer"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, min_steps=1))
    events = await collect(engine, "q")
    await llm.close()
    steps = finished(events)
    assert [(s.title, s.content) for s in steps] == [("Whole", "fine now")]
    resets = [e for e in events if isinstance(e, StepDelta) and e.content == "" and e.title == ""]
    assert resets, "the partial step was not cleared before the retry"
    assert final(events).text == "answer"


async def test_a_request_timeout_is_a_failed_attempt(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Hang(5), Step("After", "timeout", "final_answer"), Text("ok"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, request_timeout=0.5,
                                            min_steps=1))
    events = await collect(engine, "q")
    await llm.close()
    assert final(events).text == "ok"
    assert finished(events)[0].title == "After"


async def test_malformed_json_is_salvaged_not_fatal(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Raw('{"title": "Broken", "content": "half a thou'),
                    Raw('{"title": "Ctrl", "content": "line one\nline two", '
                        '"next_action": "final_answer"}'),
                    Text("ok"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, min_steps=1))
    events = await collect(engine, "q")
    await llm.close()
    steps = finished(events)
    assert steps[0].title == "Broken" and steps[0].content == "half a thou"
    assert steps[1].content == "line one\nline two"  # a raw newline inside a JSON string
    assert final(events).text == "ok"


async def test_length_with_nothing_usable_retries_once_with_a_bigger_budget(
        fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Raw("{" + " " * 50, finish_reason="length"),
                    Step("Second try", "worked", "final_answer"), Text("ok"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, min_steps=1,
                                            step_max_tokens=100))
    events = await collect(engine, "q")
    await llm.close()
    assert finished(events)[0].title == "Second try"
    budgets = [r.body["max_tokens"] for r in fake_llm.requests]
    assert budgets[:2] == [100, 200]


async def test_length_with_content_keeps_what_was_written(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Raw('{"title": "Long", "content": "so far so good', finish_reason="length"),
                    Step("Next", "b", "final_answer"), Text("ok"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, min_steps=1))
    events = await collect(engine, "q")
    await llm.close()
    assert finished(events)[0].content == "so far so good"
    assert len(fake_llm.requests) == 3


async def test_a_server_without_json_schema_falls_back_and_remembers() -> None:
    async with FakeOpenAI(reject_json_schema=True, auto_steps=3) as fake:
        engine, llm = make_engine(make_settings(fake.base_url))
        first = await collect(engine, "q1")
        second = await collect(engine, "q2")
        await llm.close()
    assert final(first).steps == 3 and final(second).steps == 3
    kinds = [r.body.get("response_format", {}).get("type") for r in fake.requests]
    assert kinds.count("json_schema") == 1  # probed once, never again
    assert kinds.count("json_object") == 6
    assert llm.output_format == "json_object"


async def test_a_server_without_any_json_mode_gets_plain_text_and_tolerant_parsing() -> None:
    async with FakeOpenAI(reject_json_schema=True, reject_json_object=True) as fake:
        fake.script(Raw('Sure! ```json\n{"title": "Prose", "content": "wrapped", '
                        '"next_action": "final_answer"}\n```'), Text("ok"))
        engine, llm = make_engine(make_settings(fake.base_url, min_steps=1))
        events = await collect(engine, "q")
        await llm.close()
    assert finished(events)[0].content == "wrapped"
    assert llm.output_format == "text"


async def test_language_follows_the_question(fake_llm: FakeOpenAI) -> None:
    engine, llm = make_engine(make_settings(fake_llm.base_url, max_steps=1, min_steps=1))
    events = await collect(engine, "strawberry 这个单词里有几个字母 r？")
    await llm.close()
    assert isinstance(events[0], ChainStarted) and events[0].language == "zh"
    system = fake_llm.requests[0].body["messages"][0]["content"]
    assert "每次回复" in system
    assert "最终答案" in fake_llm.requests[-1].body["messages"][-1]["content"]


async def test_history_is_sent_as_earlier_turns(fake_llm: FakeOpenAI) -> None:
    engine, llm = make_engine(make_settings(fake_llm.base_url, max_steps=1, min_steps=1))
    q = Question("And times 3?", history=(Turn("What is 2+2?", "4"),))
    await collect(engine, q)
    await llm.close()
    messages = fake_llm.requests[0].body["messages"]
    assert [m["role"] for m in messages[1:4]] == ["user", "assistant", "user"]
    assert messages[2]["content"] == "4" and messages[3]["content"] == "And times 3?"


async def test_cancelling_the_consumer_stops_the_request_and_reports_it() -> None:
    async with FakeOpenAI(chunk_delay=0.05, chunk_chars=2) as fake:
        fake.script(Step("Slow", "y" * 400, "continue"))
        engine, llm = make_engine(make_settings(fake.base_url))
        seen: list[object] = []
        streaming = asyncio.Event()

        async def consume() -> None:
            async for event in engine.run(Question("q")):
                seen.append(event)
                if isinstance(event, StepDelta):
                    streaming.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(streaming.wait(), 10)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await llm.close()
    assert isinstance(seen[-1], ChainFailed) and seen[-1].reason == "cancelled"
    assert task.cancelled()
    assert len(fake.requests) == 1


async def test_native_mode_cuts_reasoning_into_steps(fake_llm: FakeOpenAI) -> None:
    thinking = "\n\n".join(f"Thought {n}. " + "detail " * 40 for n in range(4))
    fake_llm.script(Reasoning(thinking, "The answer is 7.", field="reasoning_content"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, mode="native"))
    events = await collect(engine, "q")
    await llm.close()
    steps = finished(events)
    assert len(steps) == 4
    assert [s.title for s in steps] == [f"Thought {n}." for n in range(4)]
    assert final(events).text == "The answer is 7." and final(events).steps == 4
    assert [e.index for e in events if isinstance(e, StepStarted)] == [1, 2, 3, 4]
    assert "response_format" not in fake_llm.requests[0].body


async def test_native_mode_respects_the_step_cap(fake_llm: FakeOpenAI) -> None:
    thinking = "\n\n".join(f"Idea {n}. " + "more " * 60 for n in range(6))
    fake_llm.script(Reasoning(thinking, "Done."))
    engine, llm = make_engine(make_settings(fake_llm.base_url, mode="native", max_steps=2,
                                            min_steps=1))
    events = await collect(engine, "q")
    await llm.close()
    assert len(finished(events)) == 2
    assert "Idea 5." in finished(events)[-1].content


async def test_budgets_are_clamped_to_the_context_window_and_the_chain_stops_in_time() -> None:
    async with FakeOpenAI(max_model_len=1500, auto_steps=50) as fake:
        engine, llm = make_engine(make_settings(fake.base_url, step_max_tokens=400,
                                                answer_max_tokens=800, max_steps=30))
        events = await collect(engine, "A long question")
        await llm.close()
    answer = final(events)
    assert 1 <= answer.steps < 30  # stopped early to leave room for the answer
    for request in fake.requests:  # none refused: every budget fit beside its prompt
        assert request.body["max_tokens"] + chat_tokens(request.body["messages"]) <= 1500


async def test_a_server_that_hangs_is_reported_as_slow_not_missing(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Hang(3), Hang(3))
    engine, llm = make_engine(make_settings(fake_llm.base_url, request_timeout=0.3,
                                            max_attempts=2))
    events = await collect(engine, "q")
    await llm.close()
    failure = events[-1]
    assert isinstance(failure, ChainFailed) and failure.reason == "model_unavailable"
    assert "did not answer within 0.3 s" in failure.message
    assert "PONDER_REQUEST_TIMEOUT" in failure.message


async def test_a_model_repeating_itself_is_asked_for_its_answer(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Step("A", "first thought"), Step("B", "The answer is 4."),
                    Step("B", "The answer is  4."), Step("B", "the answer is 4."), Text("4"))
    engine, llm = make_engine(make_settings(fake_llm.base_url, max_steps=25))
    events = await collect(engine, "2+2?")
    await llm.close()
    assert len(finished(events)) == 4  # two repeats of step 2, then the answer
    assert final(events).text == "4"
