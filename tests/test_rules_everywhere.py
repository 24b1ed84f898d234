"""Product rules that live once, in the service, hold on Slack as on Discord.

Each test drives the real slack-bolt app over signed HTTP against the fake Slack and the fake
model server; each failed on the layout where the rules lived in the Discord adapter only and
the service looked up optional presenter features by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import until
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import (
    ASKER,
    CHANNEL,
    Harness,
    start_harness,
    stop_harness,
    unreachable_model,
)


def texts(h: Harness, thread_ts: str) -> list[str]:
    return [m.text for m in h.replies(thread_ts)]


@pytest.mark.parametrize("how", [
    {"mention": False},  # a plain reply in the thread
    {"mention": True},  # a mention in the thread (`app_mention`)
    {"mention": False, "subtype": "thread_broadcast"},  # "also send to channel"
], ids=["reply", "mention", "broadcast"])
async def test_slack_a_follow_up_while_a_chain_runs_is_refused_not_interleaved(
        tmp_path: Path, how: dict[str, Any]) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack, \
            FakeOpenAI(chunk_delay=0.02, chunk_chars=4) as llm:
        llm.script(Step("Restate", "We need 17 times 3, worked out with care.", "continue"),
                   Step("Multiply", "17 times 3 is 51, ten threes and seven threes.", "continue"),
                   Step("Check", "51 divided by 3 is 17 again.", "final_answer"),
                   Text("**51**"))
        h = await start_harness(tmp_path, slack, llm)
        try:
            question, body = h.ask("What is 17 times 3?")
            assert await h.post(body) == 200
            await until(lambda: any("Step 1" in t for t in texts(h, question.ts)))
            _, follow = h.ask("And 18 times 3?", thread_ts=question.ts, **how)
            assert await h.post(follow) == 200
            await h.settle()
            shown = texts(h, question.ts)
            # A short note to the asker alone, in the thread; nothing public.
            assert not [t for t in shown if "previous question" in t], shown
            (note,) = slack.ephemerals
            assert (note.user, note.channel, note.thread_ts) == (ASKER, CHANNEL, question.ts)
            assert "still on the previous question here" in note.text
            heads = [t.split("*", 2)[1] for t in shown if t.startswith("*Step ")]
            assert [h_.split(" · ")[0] for h_ in heads] == ["Step 1", "Step 2", "Step 3"], shown
            chains = [r for r in await h.ponder.store.chains_with_status("answered", "failed")
                      if r.thread == f"{CHANNEL}:{question.ts}"]
            assert len(chains) == 1  # the follow-up started no second chain
            # Once the chain is over, the same follow-up is taken.
            llm.script(Step("Restate", "18 times 3.", "continue"),
                       Step("Multiply", "54.", "continue"),
                       Step("Check", "54 / 3 = 18.", "final_answer"), Text("**54**"))
            _, again = h.ask("And 18 times 3?", thread_ts=question.ts, mention=False)
            assert await h.post(again) == 200
            await h.settle()
            assert any("*54*" in t for t in texts(h, question.ts))
        finally:
            await stop_harness(h)


async def test_slack_someone_else_in_a_ponder_thread_starts_nothing(tmp_path: Path) -> None:
    async with FakeSlack(streaming=False, update_limit=None) as slack, \
            FakeOpenAI(auto_steps=3) as llm:
        h = await start_harness(tmp_path, slack, llm)
        try:
            question, body = h.ask("Is 221 prime?")
            assert await h.post(body) == 200
            await h.settle()
            before = len(texts(h, question.ts))
            _, other = h.ask("I think it is not", thread_ts=question.ts, mention=False,
                             user="UOTHER")
            assert await h.post(other) == 200
            await h.settle()
            assert len(texts(h, question.ts)) == before + 1  # only the person's own message
            assert all(r.asker == ASKER for r in await h.ponder.store.chains_with_status(
                "answered"))
        finally:
            await stop_harness(h)


async def test_slack_shutdown_while_waiting_for_the_model_says_it_will_resume(
        tmp_path: Path) -> None:
    """The model server is down, so the chain waits (visibly); Ponder is stopped meanwhile.
    The thread says the chain picks up where it stopped — not "something went wrong"."""
    llm = await unreachable_model()
    async with FakeSlack(streaming=True, update_limit=None) as slack:
        h = await start_harness(tmp_path, slack, llm, model_wait=60, health_interval=0.1,
                                connect_timeout=0.2)
        try:
            await until(lambda: not h.ponder.model_up.is_set())
            question, body = h.ask("What is 2+2?")
            assert await h.post(body) == 200
            await until(lambda: any("not answering" in t for t in texts(h, question.ts)))
            await h.ponder.drain(0)
            await h.settle()
            shown = texts(h, question.ts)
            assert any("this chain will pick up where it stopped" in t for t in shown), shown
            assert not any("went wrong" in t or "internal error" in t for t in shown), shown
            record = (await h.ponder.store.chains_with_status("running"))[0]
            assert record.thread == f"{CHANNEL}:{question.ts}"  # left to resume
            assert "hourglass_flowing_sand" not in question.reactions
        finally:
            await stop_harness(h)
