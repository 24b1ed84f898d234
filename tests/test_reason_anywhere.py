"""Reason anywhere (#13): `/reason` installed to a person's account and used where Ponder
cannot write in the channel (a guild it is not in, a DM between people, a group DM), and
"Reason about this" on a message, on Discord and Slack. discord.py, slack-bolt and the
Ponder service are real; Discord, Slack and the model server are the local fakes, and the
assertions read what they recorded, i.e. what people would see."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.discord import DiscordBot
from adapters.discord.interaction import InteractionSurface, TokenTimes
from adapters.discord.surface import LimiterRegistry
from adapters.slack.mrkdwn import to_mrkdwn
from bot.llm import LLMClient
from bot.service import Ponder
from bot.surface import SurfaceLimits
from tests.conftest import make_settings, until
from tests.fakes.discord_server import (
    FakeDiscord,
    Interaction,
    RecordedRequest,
    scaled_rate_limits,
)
from tests.fakes.openai_server import FakeOpenAI, Step, Text
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import CHANNEL, sign, start_harness, stop_harness
from tests.test_discord import DONE_MARK, Harness, _alongside, stop

REASON_ABOUT = "Reason about this"
NOTE = "Follow-up questions cannot reach me here"
RAN_OUT = "Discord lets a command answer for 15 minutes"


def three() -> list[Step | Text]:
    return [Step("Restate", "We need 2+2.", "continue"),
            Step("Add", "2+2 is 4.", "continue"),
            Step("Check", "4-2 is 2, so 4 is right.", "final_answer"),
            Text("**4**")]


# --- Discord harness -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _quick_edits(monkeypatch: pytest.MonkeyPatch) -> None:
    # Discord's pacing scaled down with the fake's windows (10 times shorter): the same code
    # paths, without waiting out a second between the edits of one message.
    monkeypatch.setattr(InteractionSurface, "limits",
                        SurfaceLimits(max_chars=2000, edit_interval=0.1))


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as fake:
        yield fake


async def start(tmp_path: Path, discord: FakeDiscord, llm: FakeOpenAI, *,
                token_times: TokenTimes | None = None) -> Harness:
    """The bot with its commands synced globally: only global commands can be installed to a
    person's account (the fake refuses anything else outside the guild's own install)."""
    settings = make_settings(llm.base_url, tmp_path, discord_token=discord.token,
                             discord_api_url=discord.api_url,
                             discord_gateway_url=discord.gateway_url, min_steps=1,
                             discord_guild_ids="")
    ponder = Ponder(settings, llm=LLMClient(settings, retry_base_delay=0.01))
    await ponder.start()
    bot = DiscordBot(ponder, settings, client_options={"guild_ready_timeout": 0.05},
                     limiters=LimiterRegistry(), token_times=token_times)
    task = asyncio.create_task(bot.run())
    await _alongside(task, asyncio.wait_for(bot.ready.wait(), 15))
    return Harness(discord, llm, ponder, settings, task, bot)


@pytest.fixture
async def h(tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    harness = await start(tmp_path, discord, fake_llm)
    try:
        yield harness
    finally:
        await stop(harness)


def webhook_writes(discord: FakeDiscord, interaction: Interaction) -> list[RecordedRequest]:
    """What the bot wrote through the interaction's webhook: follow-ups and their edits."""
    prefix = f"/webhooks/{discord.application_id}/{interaction.token}"
    return [r for r in discord.requests
            if r.path.startswith(prefix) and r.method in ("POST", "PATCH")]


def followups(discord: FakeDiscord, interaction: Interaction) -> list[dict[str, Any]]:
    return [discord.messages[i] for i in interaction.followups]


def assert_never_pings(discord: FakeDiscord) -> None:
    """Every message written says `allowed_mentions: none`, and none shows a mass mention
    or a raw mention of a person as text that could ping."""
    checked = 0
    for r in discord.requests:
        if r.method not in ("POST", "PATCH") or not re.search(r"/messages|/webhooks/", r.path):
            continue
        if r.path.endswith("/threads"):
            continue
        body = r.json
        if r.path.endswith("/callback"):
            body = body.get("data") or {}
            if not body:
                continue
        assert body.get("allowed_mentions") == {"parse": []}, (r.method, r.path, r.body)
        # Defused as "@\u200beveryone": no longer the mention, even as text.
        assert not re.search(r"@(everyone|here)\b", str(body.get("content") or "")), r.body
        checked += 1
    assert checked


# --- registration --------------------------------------------------------------------------


async def test_commands_are_registered_for_both_installs_and_every_context(
        h: Harness) -> None:
    commands = {c["name"]: c for c in h.discord.global_commands}
    assert set(commands) == {"reason", REASON_ABOUT}
    reason, about = commands["reason"], commands[REASON_ABOUT]
    assert reason.get("type", 1) == 1 and about["type"] == 3  # a message command
    for command in (reason, about):
        assert sorted(command["integration_types"]) == [0, 1]  # guild and user install
        assert sorted(command["contexts"]) == [0, 1, 2]  # guild, bot DM, private channels


# --- /reason through the interaction -------------------------------------------------------


@pytest.mark.parametrize("where", ["foreign_guild", "dm", "group_dm"])
async def test_user_install_reason_writes_steps_as_follow_ups_edited_in_place(
        h: Harness, where: str) -> None:
    h.llm.chunk_delay = 0.01  # steps stream in pieces: each message is posted, then edited
    h.llm.script(*three())
    interaction = await h.discord.slash("reason", question="What is 2+2?", where=where,
                                        install="user")
    assert interaction.payload["authorizing_integration_owners"] == {
        "1": h.discord.alice["id"]}
    opening = await h.finished(interaction)

    # The response message is the opening: the question, who asked, that follow-ups cannot
    # reach it here, and at the end the summary line.
    assert "> What is 2+2?" in opening and NOTE in opening
    assert opening.rsplit("\n", 1)[-1].startswith("✅ Thought for ")
    # One follow-up per step, then the answer with the total time.
    texts = [m["content"] for m in followups(h.discord, interaction)]
    assert len(texts) == 4, texts
    for text, (index, title) in zip(texts, [(1, "Restate"), (2, "Add"), (3, "Check")],
                                    strict=False):
        assert re.match(rf"\*\*Step {index} · {title}\*\* · \d+\.\d s\n", text), text
    assert texts[-1].startswith("**Answer**\n**4**") and "_Thought for " in texts[-1]
    # Edited in place: the follow-ups are changed by PATCH on their own ids, no new message
    # for a step's later text.
    edits = [r for r in webhook_writes(h.discord, interaction) if r.method == "PATCH"
             and not r.path.endswith("/@original")]
    assert edits and {int(r.path.rsplit("/", 1)[1]) for r in edits} <= set(
        interaction.followups)
    assert any(len(h.discord.message_history(i)) > 1 for i in interaction.followups)
    assert not any(still_running(t) for t in texts)
    # Nothing went to the channel: Ponder cannot write there (the fake answers 403).
    assert not h.discord.requests_to(path=r"^/channels/")
    assert all(200 <= r.status < 300 for r in webhook_writes(h.discord, interaction))
    assert_never_pings(h.discord)


def still_running(text: str) -> bool:
    return bool(re.search(r"\*\* ⏳", text)) or "thinking…" in text


async def test_the_bots_own_dm_and_its_guild_are_still_written_directly(h: Harness) -> None:
    """A user install used where the bot can write (its own DM) keeps writing there, and a
    guild-installed bot in its guild still opens a thread: only where it cannot write does
    the interaction carry the chain."""
    h.llm.script(Step("A", "a", "final_answer"), Text("in the dm"),
                 Step("B", "b", "final_answer"), Text("in the thread"))
    dm = await h.discord.slash("reason", question="In my DM?", where="bot_dm", install="user")
    await h.finished(dm)
    assert any(m["content"].startswith("**Answer**\nin the dm")
               for m in h.discord.channel_messages(dm.channel_id))
    assert not dm.followups
    guild = await h.discord.slash("reason", question="In the guild?", install="both")
    await h.finished(guild)
    assert h.discord.messages[guild.original_id or 0].get("thread")
    assert not guild.followups


async def test_a_chain_reaching_the_tokens_time_limit_ends_visibly_before_it_expires(
        tmp_path: Path, fake_llm: FakeOpenAI) -> None:
    # The token's 15 minutes scaled to 4 s, Discord and the bot alike.
    times = TokenTimes(ttl=4.0, wrap_up=2.5, margin=0.3)
    async with FakeDiscord(rate_limits=scaled_rate_limits(10), token_ttl=times.ttl) as fake:
        h = await start(tmp_path, fake, fake_llm, token_times=times)
        try:
            fake_llm.chunk_delay = 0.02  # about 0.4 s a step: 20 steps outlast the token
            fake_llm.script(*[Step(f"Part {i}", f"Looking at part {i} of the question.",
                                   "continue") for i in range(1, 21)], Text("too late"))
            interaction = await fake.slash("reason", question="A long one?", where="dm")
            opening = await h.finished(interaction, marks=DONE_MARK)
            last = opening.rsplit("\n", 1)[-1]
            assert last.startswith(f"⚠️ {RAN_OUT}"), last
            texts = [m["content"] for m in followups(fake, interaction)]
            assert texts and RAN_OUT in texts[-1] and "too late" not in "".join(texts)
            assert not any(still_running(t) for t in texts)  # the cut step says so
            # Everything was written while the token worked: no write refused, none late.
            writes = webhook_writes(fake, interaction)
            assert writes and all(200 <= r.status < 300 for r in writes)
            assert all(r.at - interaction.created < times.ttl for r in writes)
            assert not fake.requests_to(status=401)
            assert len(await h.ponder.store.chains_with_status("cancelled")) == 1
        finally:
            await stop(h)


# --- "Reason about this" -------------------------------------------------------------------


async def test_reason_about_a_discord_message_answers_in_a_thread_from_it(h: Harness) -> None:
    h.llm.script(*three())
    bob = h.discord.bob
    target = await h.discord.user_message(
        h.discord.text_channel_id,
        f"@everyone @here is <@{h.discord.alice['id']}> right that 2+2 is 4?", user=bob)
    interaction = await h.discord.message_command(REASON_ABOUT, target)
    opening = await h.finished(interaction)
    assert opening.rsplit("\n", 1)[-1].startswith("✅")

    # The thread starts from the message itself, named after it.
    (create,) = h.discord.requests_to("POST", r"/messages/\d+/threads$")
    assert create.path == f"/channels/{h.discord.text_channel_id}/messages/{target['id']}/threads"
    thread_id = int(target["thread"]["id"])
    texts = [m["content"] for m in h.discord.channel_messages(thread_id)]
    assert texts[-1].startswith("**Answer**\n**4**") and "_Thought for " in texts[-1]
    # The question is the message's text, its mentions written as names, none able to ping.
    question = _model_question(h.llm)
    assert "is @alice right that 2+2 is 4?" in question
    assert "<@" not in question
    assert not re.search(r"@(everyone|here)", question)
    assert "<@" not in create.json["name"] and "@everyone" not in create.json["name"]
    assert_never_pings(h.discord)


async def test_reason_about_a_message_in_a_group_dm_goes_through_the_interaction(
        h: Harness) -> None:
    h.llm.script(*three())
    target = await h.discord.user_message(h.discord.group_dm_id, "@here what is 2+2?",
                                          user=h.discord.bob)
    interaction = await h.discord.message_command(REASON_ABOUT, target, install="user")
    opening = await h.finished(interaction)
    assert NOTE in opening and opening.rsplit("\n", 1)[-1].startswith("✅")
    texts = [m["content"] for m in followups(h.discord, interaction)]
    assert len(texts) == 4 and texts[-1].startswith("**Answer**\n**4**")
    assert not h.discord.requests_to(path=r"^/channels/")
    assert not re.search(r"@(everyone|here)", _model_question(h.llm))
    assert_never_pings(h.discord)


def _model_question(llm: FakeOpenAI) -> str:
    messages = llm.requests[0].body["messages"]
    return str(next(m["content"] for m in messages if m["role"] == "user"))


# --- Slack ---------------------------------------------------------------------------------


async def test_reason_about_a_slack_message_answers_in_its_thread(tmp_path: Path) -> None:
    async with FakeSlack(streaming=False) as slack, FakeOpenAI() as llm:
        llm.script(*three())
        h = await start_harness(tmp_path, slack, llm)
        try:
            target = slack.add_user_message(
                CHANNEL, "<!channel> <!here|here> is <@UBOB> right that 2+2 is 4?",
                user="UBOB")
            assert await shortcut(h, slack.message_action(target, user="UASKER")) == 200
            await until(lambda: (r := h.replies(target.ts)) and "_Thought for " in r[-1].text)
            replies = h.replies(target.ts)
            assert replies[0].text.startswith("*Step 1 · Restate*")
            assert replies[-1].text.startswith("*Answer*\n" + to_mrkdwn("**4**"))
            question = _model_question(llm)
            assert "is @UBOB right that 2+2 is 4?" in question and "<!" not in question
            # Nothing Ponder sent can ping: no special mention, no link_names.
            sent = [c for c in slack.calls if c.method.startswith("chat.")]
            assert sent and not any("<!" in json.dumps(c.body) for c in sent)
            assert not any(c.body.get("link_names") for c in sent)
            record = (await h.ponder.store.chains_with_status("answered"))[0]
            assert record.asker == "UASKER" and record.thread == f"{CHANNEL}:{target.ts}"
        finally:
            await stop_harness(h)


async def test_reason_about_a_slack_reply_answers_in_the_thread_it_is_in(
        tmp_path: Path) -> None:
    async with FakeSlack(streaming=False) as slack, FakeOpenAI() as llm:
        llm.script(*three())
        h = await start_harness(tmp_path, slack, llm)
        try:
            parent = slack.add_user_message(CHANNEL, "A thread", user="UBOB")
            reply = slack.add_user_message(CHANNEL, "what is 2+2?", user="UBOB",
                                           thread_ts=parent.ts)
            assert await shortcut(h, slack.message_action(reply)) == 200
            await until(lambda: any("_Thought for " in r.text
                                    for r in h.replies(parent.ts)))
            assert not h.replies(reply.ts)  # no thread of its own under a reply
        finally:
            await stop_harness(h)


async def shortcut(h: Any, payload: dict[str, Any]) -> int:
    """Slack delivers a shortcut as a signed form post: `payload=<json>`."""
    from urllib.parse import urlencode

    raw = urlencode({"payload": json.dumps(payload)})
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sign(raw, stamp)}
    async with h.http.post(h.url, data=raw, headers=headers) as resp:
        await resp.read()
        return resp.status



def test_the_slack_manifest_declares_the_message_shortcut() -> None:
    from adapters.slack.shortcut import CALLBACK_ID

    manifest = (Path(__file__).resolve().parents[1] / "slack-manifest.yml").read_text()
    assert re.search(rf"- name: {REASON_ABOUT}\n\s+type: message\n\s+callback_id: {CALLBACK_ID}\n",
                     manifest)
    assert re.search(r"\n\s+- commands\b", manifest)
    assert re.search(r"interactivity:\n(\s+#.*\n)*\s+is_enabled: true", manifest)
