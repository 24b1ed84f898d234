"""`ponder ask` as a user runs it: a real subprocess talking HTTP to the fake model server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAI, Fault, Step, Text

ROOT = Path(__file__).resolve().parents[1]
EVENT_FIELDS = {
    "chain_started": {"chain_id", "question", "mode", "language"},
    "step_started": {"index"},
    "step_delta": {"index", "title", "content"},
    "step_finished": {"index", "title", "content", "seconds"},
    "final_answer": {"text", "seconds", "total_seconds", "steps"},
    "chain_failed": {"reason", "message", "total_seconds"},
}


async def ponder(*args: str, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> tuple[int, str, str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env=full_env, preexec_fn=preexec_fn,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ask_json_prints_one_event_per_line(fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Step("Look", "Three letters r.", "continue"),
                    Step("Check", "s-t-r-a-w-b-e-r-r-y: 3.", "final_answer"), Text("**3**"))
    code, out, err = await ponder("ask", "--json", "How many r in strawberry?",
                                  env={"OPENAI_BASE_URL": fake_llm.base_url,
                                       "PONDER_MIN_STEPS": "2"})
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    for event in events:
        assert set(event) - {"event"} == EVENT_FIELDS[event["event"]], event
    names = [e["event"] for e in events]
    assert names[0] == "chain_started" and names[-1] == "final_answer"
    assert names.count("step_finished") == 2
    assert events[-1]["text"] == "**3**" and events[-1]["steps"] == 2


@pytest.mark.process
async def test_ask_live_draws_steps_and_the_total_time(fake_llm: FakeOpenAI) -> None:
    code, out, err = await ponder("ask", "Why is the sky blue?",
                                  env={"OPENAI_BASE_URL": fake_llm.base_url, "COLUMNS": "100"})
    assert code == 0, err
    assert "Step 1" in out and "Answer" in out
    assert "Thought for" in out and "3 steps" in out


@pytest.mark.process
async def test_no_server_exits_1_with_one_readable_line() -> None:
    code, out, err = await ponder("ask", "--json", "q",
                                  env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                                       "PONDER_MAX_ATTEMPTS": "1"})
    assert code == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ponder: no model server answers")
    assert "127.0.0.1:9" not in last  # the address is for the log, not for people
    assert "ponder model serve" in last
    assert json.loads(out.splitlines()[-1])["event"] == "chain_failed"


@pytest.mark.process
async def test_a_server_error_mid_chain_is_exit_1_and_nothing_looks_busy(
        fake_llm: FakeOpenAI) -> None:
    fake_llm.script(Step("Look", "Half way there.", "continue"), Fault(500))
    code, out, err = await ponder("ask", "q", env={"OPENAI_BASE_URL": fake_llm.base_url,
                                                   "PONDER_MAX_ATTEMPTS": "1",
                                                   "PONDER_MIN_STEPS": "2", "COLUMNS": "100"})
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("ponder: the model server kept failing")
    # Step 1 stays as it finished; step 2, asked for when the server failed, says it was cut
    # short; the failure is the last line, ended like any other.
    assert "Half way there." in out and "(cut short)" in out and "⏳" not in out
    assert out.endswith(" s)\n") and "kept failing (HTTP 500)" in out


@pytest.mark.process
async def test_empty_question_is_a_usage_error() -> None:
    code, out, err = await ponder("ask", "   ")
    assert code == 2 and "usage: ponder ask" in err and out == ""


@pytest.mark.process
async def test_a_bad_setting_is_one_line_naming_it() -> None:
    for name, value in (("PONDER_MAX_STEPS", "-1"), ("OPENAI_BASE_URL", "nonsense"),
                        ("PONDER_MODE", "dream")):
        code, _, err = await ponder("ask", "q", env={name: value})
        assert code == 2, name
        assert err.strip().count("\n") == 0 and name in err and "Traceback" not in err


@pytest.mark.process
async def test_a_question_over_the_limit_is_refused() -> None:
    code, _, err = await ponder("ask", "x" * 50, env={"PONDER_MAX_QUESTION_CHARS": "10"})
    assert code == 2 and "limit is 10" in err


@pytest.mark.process
async def test_the_terminal_prompt_asks_follow_ups_with_their_history(
        fake_llm: FakeOpenAI) -> None:
    # `ponder run` with no platform credentials: one question per line.
    env = {"OPENAI_BASE_URL": fake_llm.base_url, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b"What is 2+2?\nAnd twice that?\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().count("Thought for") == 2
    last = fake_llm.requests[-1].body["messages"]
    assert {"role": "user", "content": "What is 2+2?"} in last
    assert {"role": "assistant", "content": "The answer is 42."} in last
    # The terminal answers from its own engine: no store opened, no model watcher started.
    assert not (Path.cwd() / "data").exists()


@pytest.mark.process
async def test_ctrl_c_at_the_terminal_prompt_exits_at_once(fake_llm: FakeOpenAI) -> None:
    env = {"OPENAI_BASE_URL": fake_llm.base_url, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        seen = b""
        while b"? " not in seen:  # the prompt, waiting for a line that never comes
            chunk = await asyncio.wait_for(proc.stdout.read(256), 30)
            assert chunk, f"exited before the prompt:\n{(await proc.stderr.read()).decode()}"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        # Generous for a loaded machine (parallel workers, shared cores): what this catches is
        # a prompt that waits for Enter, which is forever.
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (await proc.stderr.read()).decode()
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    assert proc.returncode in (0, 130, -signal.SIGINT)


# --- quiet terminals: library loggers stay at WARNING unless PONDER_LOG_LEVEL=DEBUG ----------


@pytest.mark.process
async def test_no_line_per_http_request_unless_debug(fake_llm: FakeOpenAI) -> None:
    env = {"OPENAI_BASE_URL": fake_llm.base_url}
    code, out, err = await ponder("ask", "--json", "Is 221 prime?", env=env)
    assert code == 0, err
    assert "HTTP Request" not in out + err, err
    assert err == ""  # nothing at all beside the events at the default level
    code, out, err = await ponder("ask", "--json", "Is 221 prime?",
                                  env={**env, "PONDER_LOG_LEVEL": "DEBUG"})
    assert code == 0, err
    assert "INFO httpx2" in err and "HTTP Request: POST" in err
    # The events stay alone on stdout, one JSON object a line.
    assert [json.loads(line)["event"] for line in out.splitlines()][-1] == "final_answer"


@pytest.mark.process
async def test_doctor_shows_requests_only_when_debug_and_after_the_checklist(
        fake_llm: FakeOpenAI) -> None:
    async def doctor(**env: str) -> tuple[int, list[str]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "doctor", "--timeout", "3",
            env={**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_BASE_URL": fake_llm.base_url,
                 **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode().splitlines()

    code, lines = await doctor()
    assert code == 0, lines
    assert not any("HTTP Request" in line for line in lines), lines
    assert all(line[:2] in ("✓ ", "– ") for line in lines), lines

    code, lines = await doctor(PONDER_LOG_LEVEL="DEBUG")
    assert code == 0, lines
    marked = [i for i, line in enumerate(lines) if line[:2] in ("✓ ", "✗ ", "– ")]
    # One block of checks, then the log lines held back while it was printed.
    assert marked == list(range(len(marked))), lines
    assert len(marked) >= 8 and lines[marked[-1]].startswith("– GPU")
    assert any("HTTP Request: POST" in line for line in lines[len(marked):]), lines


@pytest.mark.process
async def test_a_platform_that_cannot_start_is_one_line(fake_llm: FakeOpenAI) -> None:
    # `ponder slack` without its token: a settings error, exit 2, one line naming it.
    code, out, err = await ponder("slack", env={"OPENAI_BASE_URL": fake_llm.base_url})
    assert code == 2 and out == "", err
    assert err.strip().splitlines() == [err.strip()], err
    assert err.startswith("ponder: setting SLACK_BOT_TOKEN: needed for Slack")
