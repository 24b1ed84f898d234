"""Long threads against a model with a small context window (issue #11): every request fits,
earlier turns are left out oldest first and the thread is told so once, a context-length
error is never a reason to change the output format, and the model server's URL (and any
credentials in it) never reaches a chat."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.context import TokenCounter, estimate
from bot.errors import SettingsError
from bot.events import (
    AnswerDelta,
    ChainFailed,
    Event,
    FinalAnswer,
    Question,
    StepStarted,
    Turn,
    TurnsLeftOut,
)
from bot.service import ChainRequest, Ponder
from bot.wording import say
from tests.conftest import collect, make_engine, make_settings, until
from tests.fakes.openai_server import FakeOpenAI, Fault, Hang, chat_tokens, text_tokens
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import start_harness, stop_harness
from tests.surfaces import RecordingSurface

WINDOW = 8192


def long_text(language: str, n: int, chars: int = 3000) -> str:
    """A follow-up (or an answer) of about `chars` characters, different for each `n`."""
    if language == "zh":
        unit = f"第{n}个追问：请结合前面的讨论，再仔细分析这个函数在边界条件下的行为。"
    else:
        unit = f"Follow-up {n}: given what we discussed, look again at the edge cases here. "
    return (unit * (chars // len(unit) + 1))[:chars]


def kinds(fake: FakeOpenAI) -> list[str | None]:
    return [(r.body.get("response_format") or {}).get("type") for r in fake.requests]


def failure_of(events: list[Event]) -> ChainFailed | None:
    return next((e for e in events if isinstance(e, ChainFailed)), None)


@pytest.mark.parametrize("tokenize", [True, False], ids=["tokenize", "estimate"])
@pytest.mark.parametrize("language", ["en", "zh"])
async def test_twenty_long_follow_ups_keep_answering_in_an_8k_context(
        language: str, tokenize: bool) -> None:
    """20 follow-ups of ~3,000 characters each: every one answered with steps, every request
    within the window (the fake refuses as vLLM does), the oldest turns left out and said so,
    and an unrelated chain afterwards still asks for `json_schema`. With /tokenize (counted
    by the server's tokenizer) and without (the CJK-aware estimate)."""
    async with FakeOpenAI(max_model_len=WINDOW, auto_steps=3, tokenize=tokenize) as fake:
        engine, llm = make_engine(make_settings(fake.base_url))
        turns: list[Turn] = []
        left_out = []
        for n in range(1, 21):
            question = Question(long_text(language, n), history=tuple(turns))
            events = await collect(engine, question)
            assert failure_of(events) is None, (n, failure_of(events))
            answer = next(e for e in events if isinstance(e, FinalAnswer))
            assert answer.steps >= 1, n
            told = [e for e in events if isinstance(e, TurnsLeftOut)]
            assert len(told) <= 1  # at most once a chain
            if told:  # before the request that leaves them out (a step, or the answer)
                assert told[0].of == n - 1
                after = events[events.index(told[0]) + 1]
                assert isinstance(after, StepStarted | AnswerDelta | FinalAnswer), after
            left_out.append(told[0].left_out if told else 0)
            turns.append(Turn(question.text, long_text(language, n, 1200)))
        unrelated = await collect(engine, "What is 2+2?")
        await llm.close()
    assert fake.stats.errors == 0  # not one request past the window
    # More is left out as the thread grows: by the end, most of it (8k holds a few turns).
    assert left_out == sorted(left_out) and left_out[-1] >= 12, left_out
    assert failure_of(unrelated) is None
    assert set(kinds(fake)) == {"json_schema", None}  # steps, and plain final answers
    assert fake.requests[-2].body["response_format"]["type"] == "json_schema"
    assert llm.output_format == "json_schema"
    assert llm.counter.measured is tokenize
    for request in fake.requests:  # the newest turns are the ones kept, the question always
        messages = request.body["messages"]
        assert request.body["max_tokens"] + chat_tokens(messages) <= WINDOW


async def test_the_thread_is_told_once_that_earlier_turns_were_left_out(tmp_path: Path) -> None:
    """Through the service: follow-ups in one thread, each ~3,000 Han characters; soon the
    oldest turns no longer fit, and the thread says so once, in Chinese."""
    async with FakeOpenAI(max_model_len=WINDOW, auto_steps=3) as fake:
        ponder = Ponder(make_settings(fake.base_url, tmp_path))
        await ponder.start()
        surfaces = []
        for n in range(1, 6):
            surface = RecordingSurface()
            request = ChainRequest("test", Question(long_text("zh", n)), "U1", channel="C1",
                                   thread="T1")
            outcome = await asyncio.wait_for(ponder.submit(request, surface).wait(), 30)
            assert outcome.answer and outcome.steps >= 1, (n, outcome)
            surfaces.append(surface)
        await ponder.close()
    notice = say("turns_left_out", "zh")
    said = [surface.text().count(notice) for surface in surfaces]
    assert sum(said) == 1 and said[0] == 0, said
    assert fake.stats.errors == 0


async def test_token_counts_are_cached_per_message() -> None:
    """A long thread is not tokenized again on every step: only messages never counted
    before go to /tokenize."""
    history = tuple(Turn(long_text("en", n, 600), long_text("en", -n, 300)) for n in range(20))
    async with FakeOpenAI(max_model_len=WINDOW, auto_steps=4) as fake:
        engine, llm = make_engine(make_settings(fake.base_url))
        await collect(engine, Question("First follow-up?", history=history))
        first = fake.stats.tokenize_calls
        requests = len(fake.requests)
        await collect(engine, Question("Second follow-up?", history=history))
        second = fake.stats.tokenize_calls - first
        await llm.close()
    # The template (3), the system prompt, 40 earlier messages, the question, 4 steps and the
    # prompts between them: each once, though 5 requests carried most of them.
    assert first <= 3 + 1 + 40 + 1 + 4 + 5, first
    assert requests == 5 and first < requests * 20
    assert second <= 2, second  # the new question (the steps read as before)


async def test_a_context_length_error_refits_and_leaves_the_format_alone() -> None:
    """A server that lists no window and has no /tokenize: the whole thread is sent, vLLM
    refuses it as too long, and the chain is fitted again (with what the error said) and
    answered. The format stays json_schema, for this chain and an unrelated one."""
    history = tuple(Turn(long_text("zh", n), long_text("zh", -n, 800)) for n in range(6))
    async with FakeOpenAI(max_model_len=WINDOW, tokenize=False, list_max_model_len=False,
                          auto_steps=2) as fake:
        engine, llm = make_engine(make_settings(fake.base_url))
        events = await collect(engine, Question(long_text("zh", 7), history=history))
        unrelated = await collect(engine, "What is 2+2?")
        await llm.close()
    assert failure_of(events) is None and failure_of(unrelated) is None
    assert fake.stats.errors == 1  # the one refusal that taught the window
    assert await llm.context_window() == WINDOW
    assert any(isinstance(e, TurnsLeftOut) for e in events)
    assert "json_object" not in kinds(fake) and llm.output_format == "json_schema"
    assert fake.requests[-2].body["response_format"]["type"] == "json_schema"


async def test_a_tokenizer_that_counts_more_than_the_estimate_is_learned_from() -> None:
    """No /tokenize, and a model whose tokenizer spends two tokens on each Han character (the
    estimate says one): the first refusal says by how much, the chain is fitted again with
    that and answered, and later follow-ups are fitted right the first time."""
    async with FakeOpenAI(max_model_len=WINDOW, tokenize=False, wide_tokens=2,
                          auto_steps=2) as fake:
        engine, llm = make_engine(make_settings(fake.base_url))
        turns: list[Turn] = []
        for n in range(1, 6):
            events = await collect(engine, Question(long_text("zh", n, 1500),
                                                    history=tuple(turns)))
            assert failure_of(events) is None, (n, failure_of(events))
            turns.append(Turn(long_text("zh", n, 1500), long_text("zh", -n, 600)))
        await llm.close()
    assert fake.stats.errors == 1
    assert "json_object" not in kinds(fake)


async def test_a_question_too_long_for_the_window_fails_that_chain_in_its_language() -> None:
    """Refused twice as too long (a window smaller than the question): the chain fails with a
    message the asker can act on, in Chinese; nothing about the server changes."""
    async with FakeOpenAI(max_model_len=1200, auto_steps=2) as fake:
        engine, llm = make_engine(make_settings(fake.base_url, step_max_tokens=200,
                                                answer_max_tokens=200))
        events = await collect(engine, long_text("zh", 1, 1500))
        after = await collect(engine, "2+2?")
        await llm.close()
    failure = failure_of(events)
    assert failure is not None and failure.reason == "model_error"
    assert failure.message == say("llm_too_long", "zh")
    assert failure_of(after) is None
    assert llm.output_format == "json_schema"
    assert fake.requests[-2].body["response_format"]["type"] == "json_schema"


async def test_any_other_400_fails_that_chain_alone(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Fault(400, message="temperature must be non-negative"))
    engine, llm = make_engine(make_settings(fake_llm.base_url))
    events = await collect(engine, "q")
    after = await collect(engine, "q2")
    await llm.close()
    failure = failure_of(events)
    assert failure is not None and failure.reason == "model_error"
    assert "HTTP 400" in failure.message and "temperature must be non-negative" in failure.message
    assert failure_of(after) is None
    assert kinds(fake_llm)[:2] == ["json_schema", "json_schema"]  # not downgraded
    assert llm.output_format == "json_schema"


async def test_a_format_error_still_downgrades_that_server() -> None:
    """The one 400 that does change the format: it names response_format (a server without
    structured outputs)."""
    async with FakeOpenAI(reject_json_schema=True, auto_steps=1) as fake:
        engine, llm = make_engine(make_settings(fake.base_url, min_steps=1))
        events = await collect(engine, "q")
        await llm.close()
    assert failure_of(events) is None
    assert kinds(fake)[:2] == ["json_schema", "json_object"]


# --- the model server's URL stays out of chat ----------------------------------------------


@pytest.mark.parametrize("case", ["no server", "hangs", "keeps failing", "refuses",
                                  "needs a password"])
@pytest.mark.parametrize("question", ["What is 2+2?", "二加二等于多少？"])
async def test_no_failure_a_person_reads_names_the_model_server(case: str,
                                                               question: str) -> None:
    async with FakeOpenAI(basic_auth=("u", "p") if case == "needs a password" else None
                          ) as fake:
        base = "http://127.0.0.1:9/v1" if case == "no server" else fake.base_url
        if case == "hangs":
            fake.script(Hang(3), Hang(3))
        elif case == "keeps failing":
            fake.script(*[Fault(503, message=f"upstream {fake.base_url} is sick")] * 2)
        elif case == "refuses":
            fake.script(Fault(400, message=f"bad request for {fake.base_url}/chat/completions"))
        engine, llm = make_engine(make_settings(base, max_attempts=2, request_timeout=0.5))
        events = await collect(engine, question)
        await llm.close()
    failure = failure_of(events)
    assert failure is not None, case
    host = re.sub(r"^http://|/v1$", "", base)
    assert host not in failure.message and "127.0.0.1" not in failure.message, failure.message
    assert "<" not in failure.message  # no proxy's HTML page either


# --- OPENAI_BASE_URL with user:password@ ----------------------------------------------------


async def test_credentials_in_the_url_are_sent_as_basic_auth_everywhere() -> None:
    async with FakeOpenAI(basic_auth=("ponder", "s3:cr@t"), auto_steps=2) as fake:
        url = fake.base_url.replace("http://", "http://ponder:s3%3Acr%40t@")
        settings = make_settings(url, min_steps=1)
        assert settings.openai_base_url == fake.base_url  # shown and logged without them
        engine, llm = make_engine(settings)
        events = await collect(engine, "What is 2+2?")
        healthy, up = await llm.healthy(), await llm.ping()
        await llm.close()
        # Without them, the proxy's refusal is a readable line (not its HTML page).
        engine, bare = make_engine(make_settings(fake.base_url))
        refused = await collect(engine, "What is 2+2?")
        await bare.close()
    assert failure_of(events) is None and healthy and up
    assert fake.stats.tokenize_calls > 0 and len(fake.requests) >= 2
    failure = failure_of(refused)
    assert failure is not None and "HTTP 401" in failure.message
    assert "Unauthorized" in failure.message and "<" not in failure.message
    assert fake.stats.unauthorized >= 1  # only the bare client's


def test_credentials_and_an_api_key_together_are_refused_in_one_line() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(openai_base_url="http://u:hunter2@model.internal:8000/v1",
                      openai_api_key="sk-secret")
    line = str(caught.value)
    assert "\n" not in line and line.startswith("setting OPENAI_API_KEY:")
    assert "hunter2" not in line and "sk-secret" not in line


# --- counting --------------------------------------------------------------------------------


def test_the_estimate_is_never_below_the_fake_tokenizer_and_knows_han() -> None:
    samples = [long_text("en", 1), long_text("zh", 1), "3.14159265358979 + 2.71828 = ?",
               '{"title": "A", "content": "b"}', "naïve café 😀" * 20, "ひらがなとカタカナ한국어"]
    for text in samples:
        assert estimate(text) >= text_tokens(text), text
    assert estimate("你好" * 500) >= 1000  # a token a character, not a third of one


async def test_a_server_without_tokenize_is_asked_once(fake_llm: FakeOpenAI) -> None:
    fake_llm.tokenize = False
    engine, llm = make_engine(make_settings(fake_llm.base_url, min_steps=1))
    await collect(engine, "q")
    await collect(engine, "q2")
    await llm.close()
    assert llm.counter.measured is False
    assert fake_llm.stats.tokenize_calls == 0


async def test_counts_grow_when_the_server_counts_more() -> None:
    counter = TokenCounter("m", None)
    messages = [{"role": "user", "content": "你好" * 100}]
    before = await counter.count(messages)
    counter.learn(before, before * 2)
    assert await counter.count(messages) >= before * 2


async def test_slack_says_it_once_beside_an_open_stream(tmp_path: Path) -> None:
    """On Slack the notice comes while the chain's streamed reply is open: a reply of its own,
    once per thread, recorded with the chain's messages while it runs (a restart tidies by
    them), the stream's among them."""
    notice = say("turns_left_out", "zh")
    async with FakeOpenAI(max_model_len=WINDOW, auto_steps=3) as llm, FakeSlack() as slack:
        h = await start_harness(tmp_path, slack, llm)
        try:
            question, body = h.ask(long_text("zh", 1))
            await h.post(body)
            await h.settle()
            mid_chain: dict[str, object] = {}
            for n in range(2, 5):
                # Until it is seen: at a model's pace, so the chain runs on after the notice.
                llm.chunk_delay = 0.0 if mid_chain else 0.01
                _, body = h.ask(long_text("zh", n), thread_ts=question.ts, mention=False)
                await h.post(body)
                if not mid_chain:
                    await until(lambda: h.ponder.running)  # a chain of ~1 s at this pace
                    await until(lambda: any(notice in r.text for r in h.replies(question.ts))
                                or not h.ponder.running)
                    if h.ponder.running:
                        (chain_id,) = h.ponder.running
                        for _ in range(200):  # until the handles are saved after the notice
                            record = await h.ponder.store.chain(chain_id)
                            if record is not None and "notice:turns-left-out" in record.handles:
                                mid_chain = record.handles
                                break
                            await asyncio.sleep(0.01)
                await h.settle()
            replies = [r.text for r in h.replies(question.ts)]
            records = [await h.ponder.store.chain(r.id)
                       for r in await h.ponder.store.chains_with_status("answered")]
        finally:
            await stop_harness(h)
    assert len(records) == 4 and llm.stats.errors == 0
    assert sum(notice in text for text in replies) == 1, replies
    assert "stream" in mid_chain, mid_chain
    told = [r for r in records if r is not None and "notice:turns-left-out" in r.handles]
    assert len(told) == 1 and "stream" in told[0].handles, [r.handles for r in records if r]
