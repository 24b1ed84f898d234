"""The fake vLLM server, driven by the real openai client (so the fake stays honest)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from tests.fakes.openai_server import Cut, FakeOpenAI, Fault, Hang, Raw, Reasoning, Step, Text

ROOT = Path(__file__).resolve().parents[1]
USER = [{"role": "user", "content": "How many r's are in strawberry?"}]
SCHEMA_FORMAT: dict[str, Any] = {"type": "json_schema", "json_schema": {
    "name": "reasoning_step", "strict": True, "schema": {"type": "object"}}}


@pytest.fixture
async def client(fake_llm: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=fake_llm.base_url, api_key="EMPTY", max_retries=0) as c:
        yield c


async def chunks(client: AsyncOpenAI, model: str, **kwargs: Any) -> list[Any]:
    stream = await client.chat.completions.create(
        model=model, messages=kwargs.pop("messages", USER), stream=True, **kwargs)
    return [chunk async for chunk in stream]


async def test_a_step_streams_as_json_across_several_chunks(
        fake_llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    fake_llm.script(Step("Count letters", "s-t-r-a-w-b-e-r-r-y has three r's.", "final_answer"))
    got = await chunks(client, fake_llm.model, response_format=SCHEMA_FORMAT,
                       stream_options={"include_usage": True})
    with_choices = [c for c in got if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id.startswith("chatcmpl-")
               for c in got)
    assert len({c.id for c in got}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert json.loads(text) == {"title": "Count letters",
                                "content": "s-t-r-a-w-b-e-r-r-y has three r's.",
                                "next_action": "final_answer"}
    pieces = [c for c in with_choices if c.choices[0].delta.content]
    assert len(pieces) > 5 and all(len(c.choices[0].delta.content) <= 8 for c in pieces)
    finishes = [c.choices[0].finish_reason for c in with_choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert got[-1].choices == [] and got[-1].usage is not None  # include_usage
    assert got[-1].usage.completion_tokens > 0
    assert fake_llm.requests[0].path == "/v1/chat/completions"
    assert fake_llm.requests[0].body["response_format"]["type"] == "json_schema"
    assert fake_llm.requests[0].headers["content-type"] == "application/json"


async def test_the_wire_format_is_sse_ending_in_done(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Text("Hi there, friend"))
    async with aiohttp.ClientSession() as http, http.post(
            f"{fake_llm.base_url}/chat/completions",
            json={"model": fake_llm.model, "messages": USER, "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert bodies[-1]["choices"][0] == {"index": 0, "delta": {"content": ", friend"},
                                        "logprobs": None, "finish_reason": "stop"}


async def test_a_429_is_a_rate_limit_error_with_retry_after(
        fake_llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    fake_llm.script(Fault(429, retry_after=2, message="slow down"))
    with pytest.raises(openai.RateLimitError) as caught:
        await chunks(client, fake_llm.model)
    response = caught.value.response
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": {"message": "slow down", "type": "RateLimitError",
                                         "param": None, "code": 429}}
    # The script moves on: the next request is answered.
    assert (await chunks(client, fake_llm.model))[-1].choices[0].finish_reason == "stop"


async def test_a_500_is_an_internal_server_error(
        fake_llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    fake_llm.script(Fault(503, message="engine dead"))
    with pytest.raises(openai.InternalServerError) as caught:
        await chunks(client, fake_llm.model)
    assert caught.value.status_code == 503
    assert "retry-after" not in caught.value.response.headers


@pytest.mark.parametrize("transport", ["httpx2", "aiohttp"])
async def test_a_cut_stream_raises_a_connection_error_mid_iteration(
        fake_llm: FakeOpenAI, transport: str) -> None:
    whole = json.dumps({"title": "Cut", "content": "x" * 80, "next_action": "continue"})
    fake_llm.script(Cut(whole, after_chars=43))
    http = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
    async with AsyncOpenAI(base_url=fake_llm.base_url, api_key="EMPTY", max_retries=0,
                           http_client=http) as client:
        stream = await client.chat.completions.create(
            model=fake_llm.model, messages=USER, stream=True)
        seen: list[Any] = []
        with pytest.raises(openai.APIConnectionError) as caught:
            async for chunk in stream:
                seen.append(chunk)
    # What arrived before the cut: exactly after_chars of content and never a finish_reason.
    assert "".join(c.choices[0].delta.content or "" for c in seen) == whole[:43]
    assert all(c.choices[0].finish_reason is None for c in seen)
    expected = httpx2.RemoteProtocolError if transport == "httpx2" else httpx2.ReadError
    assert isinstance(caught.value.__cause__, expected)


async def test_reasoning_streams_in_its_own_delta_field(
        fake_llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    fake_llm.script(Reasoning("Let me count the r's one by one.", "Three."),
                    Reasoning("Old servers say reasoning_content.", "Yes.",
                              field="reasoning_content"))
    for field, thought, answer in (("reasoning", "Let me count the r's one by one.", "Three."),
                                   ("reasoning_content", "Old servers say reasoning_content.",
                                    "Yes.")):
        got = await chunks(client, fake_llm.model)
        deltas = [c.choices[0].delta for c in got]
        thinking = [d for d in deltas if getattr(d, field, None)]
        assert thinking and all(d.content is None for d in thinking)
        assert "".join(getattr(d, field) for d in thinking) == thought
        assert all(field in (d.model_extra or {}) for d in thinking)
        assert "".join(d.content or "" for d in deltas) == answer
        # All the thinking comes before any of the answer.
        first_answer = next(i for i, d in enumerate(deltas) if d.content)
        assert max(deltas.index(d) for d in thinking) < first_answer


async def test_raw_text_and_a_length_finish(fake_llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    broken = '{"title": "Ctrl", "content": "line one\nline two'
    fake_llm.script(Raw(broken, finish_reason="length"))
    got = await chunks(client, fake_llm.model)
    assert "".join(c.choices[0].delta.content or "" for c in got) == broken
    assert got[-1].choices[0].finish_reason == "length"


async def run_auto_chain(client: AsyncOpenAI, model: str, *, stream: bool) -> list[str]:
    """Step requests (with response_format) until final_answer, then the answer request."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "Reason step by step."},
                                      *USER]
    titles: list[str] = []
    for _ in range(20):
        if stream:
            got = await chunks(client, model, messages=messages,
                               response_format=SCHEMA_FORMAT)
            text = "".join(c.choices[0].delta.content or "" for c in got)
        else:
            whole = await client.chat.completions.create(
                model=model, messages=messages, response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
            assert whole.object == "chat.completion"
            assert whole.choices[0].finish_reason == "stop"
            text = whole.choices[0].message.content or ""
        step = json.loads(text)
        titles.append(step["title"])
        assert len(step["content"]) >= 150
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": "Continue."}]
        if step["next_action"] == "final_answer":
            break
    answer = await chunks(client, model, messages=[*messages, {"role": "user",
                                                               "content": "Final answer?"}])
    titles.append("".join(c.choices[0].delta.content or "" for c in answer))
    return titles


@pytest.mark.parametrize("stream", [True, False])
async def test_auto_mode_gives_exactly_auto_steps_steps(stream: bool) -> None:
    async with FakeOpenAI(auto_steps=4) as fake, AsyncOpenAI(
            base_url=fake.base_url, api_key="EMPTY", max_retries=0) as client:
        titles = await run_auto_chain(client, fake.model, stream=stream)
    assert titles == ["Step 1", "Step 2", "Step 3", "Step 4", "The answer is 42."]
    assert fake.stats.calls == 5


async def test_hundreds_of_concurrent_auto_chains_are_cheap() -> None:
    async with FakeOpenAI(auto_steps=2, chunk_chars=16, chunk_delay=0.005) as fake:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            async def chain(n: int) -> int:
                messages: list[dict[str, str]] = [{"role": "user", "content": f"q{n}"}]
                while True:
                    async with http.post(f"{fake.base_url}/chat/completions", json={
                            "model": fake.model, "messages": messages, "stream": True,
                            "response_format": {"type": "json_object"}}) as resp:
                        lines = (await resp.read()).decode().split("\n\n")
                    text = "".join(json.loads(line[6:])["choices"][0]["delta"]["content"] or ""
                                   for line in lines if line.startswith("data: {"))
                    messages += [{"role": "assistant", "content": text}]
                    if json.loads(text)["next_action"] == "final_answer":
                        return len(messages) - 1

            began = time.perf_counter()
            steps = await asyncio.gather(*(chain(n) for n in range(500)))
            elapsed = time.perf_counter() - began
    assert steps == [2] * 500
    assert fake.stats.calls == fake.stats.streams == 1000
    assert fake.stats.peak_active > 100  # really concurrent
    assert elapsed < 20


async def test_a_server_without_json_schema_says_400() -> None:
    async with FakeOpenAI(reject_json_schema=True) as fake, AsyncOpenAI(
            base_url=fake.base_url, api_key="EMPTY", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await chunks(client, fake.model, response_format=SCHEMA_FORMAT)
        assert "json_schema response_format is not supported" in caught.value.message
        assert caught.value.response.headers["content-type"].startswith("application/json")
        # json_object still works: a client can fall back to it.
        got = await chunks(client, fake.model, response_format={"type": "json_object"})
        assert json.loads("".join(c.choices[0].delta.content or "" for c in got))["title"]
    async with FakeOpenAI(reject_json_object=True) as fake, AsyncOpenAI(
            base_url=fake.base_url, api_key="EMPTY", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            await chunks(client, fake.model, response_format={"type": "json_object"})


async def test_requests_are_validated_like_vllm(
        fake_llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await chunks(client, "gpt-5")
    assert missing.value.status_code == 404 and "gpt-5" in missing.value.message
    with pytest.raises(openai.BadRequestError):
        await chunks(client, fake_llm.model, messages=[])
    with pytest.raises(openai.BadRequestError):
        await chunks(client, fake_llm.model, response_format=SCHEMA_FORMAT,
                     extra_body={"structured_outputs": {"json": {"type": "object"}}})
    # structured_outputs alone is fine (and counts as a step request in auto mode).
    got = await chunks(client, fake_llm.model,
                       extra_body={"structured_outputs": {"json": {"type": "object"}}})
    assert json.loads("".join(c.choices[0].delta.content or "" for c in got))["title"] == "Step 1"
    assert fake_llm.stats.errors == 3 and len(fake_llm.requests) == 4


async def test_models_health_and_metrics(fake_llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    page = await client.models.list()
    assert [m.id for m in page.data] == [fake_llm.model]
    assert (page.data[0].model_extra or {})["max_model_len"] == 32768
    await chunks(client, fake_llm.model, messages=[*USER, {"role": "assistant", "content": "x"},
                                                   {"role": "user", "content": "more"}])
    root = fake_llm.base_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{root}/health") as resp:
            assert resp.status == 200 and await resp.read() == b""
        async with http.get(f"{root}/metrics") as resp:
            text = await resp.text()
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("vllm:")}
    assert values["vllm:prefix_cache_queries_total"] > values["vllm:prefix_cache_hits_total"] > 0


async def test_model_seconds_add_up_the_streaming_time() -> None:
    async with FakeOpenAI(chunk_chars=4, chunk_delay=0.02) as fake, AsyncOpenAI(
            base_url=fake.base_url, api_key="EMPTY", max_retries=0) as client:
        fake.script(Text("x" * 40), Text("y" * 40))  # 10 chunks each, 0.2 s each
        await asyncio.gather(chunks(client, fake.model), chunks(client, fake.model))
    assert 0.4 <= fake.stats.model_seconds < 1.0
    assert fake.stats.peak_active == 2 and fake.stats.active == 0


async def test_hang_times_the_client_out_and_stop_does_not_wait_for_it() -> None:
    fake = FakeOpenAI()
    await fake.start()
    fake.script(Hang(0.3), Hang(30))
    async with AsyncOpenAI(base_url=fake.base_url, api_key="EMPTY", max_retries=0) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=fake.model, messages=USER, stream=True,
                                                 timeout=0.1)
        # A short hang then answers as auto mode would (the script is not consumed).
        assert fake.pending == 1
        pending = asyncio.create_task(chunks(client, fake.model))
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        await fake.stop()
        assert time.perf_counter() - began < 0.5
        with pytest.raises(openai.APIConnectionError):
            await pending


async def test_it_runs_standalone_until_interrupted() -> None:
    # Port 0: the server takes a free one and says which, so parallel tests never collide.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.openai_server", "--port", "0",
        "--auto-steps", "2", "--chunk-delay", "0", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        found = re.search(r"http://127\.0\.0\.1:([1-9]\d*)/v1", line.decode())
        assert found, line
        async with AsyncOpenAI(base_url=found.group(0), api_key="EMPTY",
                               max_retries=0) as client:
            titles = await run_auto_chain(client, "Qwen2.5-7B-Instruct", stream=True)
        assert titles == ["Step 1", "Step 2", "The answer is 42."]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()


async def test_the_context_window_is_enforced_with_vllms_wording() -> None:
    """Both of vLLM's checks: the prompt alone, then prompt + max_tokens; counted with the
    fake's tokenizer (a token per Han character, one per four other characters, 5 a message
    and 3 for the generation prompt)."""
    async with FakeOpenAI(max_model_len=100) as fake, AsyncOpenAI(
            base_url=fake.base_url, api_key="EMPTY", max_retries=0) as client:
        prompt = [{"role": "user", "content": "字" * 80}]  # 80 + 5 + 3 = 88 tokens
        with pytest.raises(openai.BadRequestError) as too_much:
            await chunks(client, fake.model, messages=prompt, max_tokens=20)
        assert too_much.value.message.endswith(
            "'max_tokens' or 'max_completion_tokens' is too large: 20. This model's maximum "
            "context length is 100 tokens and your request has 88 input tokens (20 > 100 - 88).")
        got = await chunks(client, fake.model, messages=prompt, max_tokens=12)
        assert got[-1].choices[0].finish_reason == "stop"
        with pytest.raises(openai.BadRequestError) as too_long:
            await chunks(client, fake.model, messages=[{"role": "user", "content": "字" * 99}])
        assert ("This model's maximum context length is 100 tokens. However, your request has "
                "107 input tokens. Please reduce the length of the input messages."
                ) in too_long.value.message


async def test_tokenize_counts_prompts_and_chats_and_can_be_missing() -> None:
    async with FakeOpenAI(max_model_len=4096) as fake, aiohttp.ClientSession() as http:
        root = fake.base_url.removesuffix("/v1")
        async with http.post(f"{root}/tokenize", json={
                "model": fake.model, "prompt": "你好, world!", "add_special_tokens": False}) as r:
            assert await r.json() == {"count": 4, "max_model_len": 4096,
                                      "tokens": [0, 1, 2, 3], "token_strs": None}
        async with http.post(f"{root}/tokenize", json={
                "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
                "add_generation_prompt": True}) as r:
            assert (await r.json())["count"] == 5 + 5 + 1 + 3
        assert fake.stats.tokenize_calls == 2 and fake.requests == []  # not chat requests
        fake.tokenize = False
        async with http.post(f"{root}/tokenize", json={"prompt": "x"}) as r:
            assert r.status == 404


async def test_basic_auth_when_configured_on_every_endpoint() -> None:
    async with FakeOpenAI(basic_auth=("u", "p")) as fake, aiohttp.ClientSession() as http:
        root = fake.base_url.removesuffix("/v1")
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/tokenize"),
                             ("POST", "/v1/chat/completions")):
            async with http.request(method, root + path, json={"prompt": "x"}) as r:
                assert r.status == 401 and "401 Authorization Required" in await r.text()
            async with http.request(method, root + path, json={"prompt": "x"}, headers={
                    "Authorization": aiohttp.encode_basic_auth("u", "p")}) as r:
                assert r.status != 401, path
        assert fake.stats.unauthorized == 4
