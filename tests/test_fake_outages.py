"""The fakes' outages behave like a platform that vanished and came back: real clients (aiohttp,
discord.py) get refused connections and reset sockets while it is down, and find the same
address, the same state and a working gateway once it is back."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.discord_server import FakeDiscord, scaled_rate_limits
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack
from tests.test_discord import four, start, stop

OUTAGE = 0.5


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(rate_limits=scaled_rate_limits(10)) as fake:
        yield fake


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # One session throughout: its pooled keep-alive connections must not outlive an outage.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def until(predicate: Callable[[], Any], seconds: float = 5.0) -> None:
    """Poll state the Slack fake has no wait helper for."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def refused(call: Any) -> None:
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await call
    assert info.value.os_error.errno == errno.ECONNREFUSED


# --- Discord -------------------------------------------------------------------------------


def bot_headers(discord: FakeDiscord) -> dict[str, str]:
    return {"Authorization": f"Bot {discord.token}"}


async def post_message(http: aiohttp.ClientSession, discord: FakeDiscord,
                       content: str) -> dict[str, Any]:
    async with http.post(f"{discord.api_url}/channels/{discord.text_channel_id}/messages",
                         json={"content": content}, headers=bot_headers(discord)) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_discord_rest_is_refused_while_down_and_back_on_the_same_url_with_its_state(
        discord: FakeDiscord, http: aiohttp.ClientSession) -> None:
    before = await post_message(http, discord, "before the outage")
    url = f"{discord.api_url}/channels/{discord.text_channel_id}/messages/{before['id']}"

    await discord.go_down()
    assert discord.is_down
    await refused(http.get(url, headers=bot_headers(discord)))
    await refused(http.get(f"{discord.api_url}/users/@me", headers=bot_headers(discord)))

    await discord.come_back()
    assert not discord.is_down
    async with http.get(url, headers=bot_headers(discord)) as resp:
        assert resp.status == 200
        assert (await resp.json())["content"] == "before the outage"
    after = await post_message(http, discord, "after the outage")
    assert [m["content"] for m in discord.channel_messages(discord.text_channel_id)] == [
        "before the outage", "after the outage"]
    assert int(after["id"]) > int(before["id"])


async def test_discord_request_in_flight_when_it_goes_down_is_reset_and_never_applied(
        discord: FakeDiscord, http: aiohttp.ClientSession) -> None:
    discord.latency = 0.5
    sent = asyncio.create_task(post_message(http, discord, "lost in transit"))
    await discord.wait_for(lambda: discord.requests_to("POST", r"/messages$"))
    await discord.go_down()
    with pytest.raises(aiohttp.ClientConnectionError):
        await sent
    await discord.come_back()
    await asyncio.sleep(discord.latency)  # the handler's pause ends; it must still do nothing
    assert not discord.channel_messages(discord.text_channel_id)
    assert [r.status for r in discord.requests_to("POST", r"/messages$")] == [0]


async def test_discord_outage_drops_the_gateway_and_discord_py_reconnects_and_answers(
        tmp_path: Path, discord: FakeDiscord, fake_llm: FakeOpenAI,
        http: aiohttp.ClientSession) -> None:
    fake_llm.script(*four())
    h = await start(tmp_path, discord, fake_llm)
    try:
        first = await h.ask("What is 2+2?")
        await h.finished(first)
        thread = h.thread_of(first)
        shown = h.texts(thread)
        frames = len(discord.gateway_frames)
        assert discord.gateway_connections == 1

        back = discord.outage(OUTAGE)
        assert discord.is_down  # at once, not at the task's first step
        await discord.wait_for(lambda: discord.gateway_connections == 0, 2)
        await refused(http.get(f"{discord.api_url}/gateway/bot", headers=bot_headers(discord)))
        await back
        assert not discord.is_down

        await discord.wait_identified(20)  # discord.py's own backoff decides how soon
        assert discord.gateway_connections == 1
        again = [f["op"] for f in discord.gateway_frames[frames:] if f.get("op") in (2, 6)]
        assert again, "the bot came back without IDENTIFY or RESUME"
        assert h.texts(thread) == shown

        fake_llm.script(*four())
        second = await h.ask("And 3+3?")
        content = await h.finished(second, marks=("✅",))
        assert "Thought for" in h.texts(h.thread_of(second))[-1], content
    finally:
        await stop(h)


async def test_discord_outage_task_can_be_awaited_and_going_down_twice_is_one_outage(
        discord: FakeDiscord, http: aiohttp.ClientSession) -> None:
    back = discord.outage(OUTAGE)
    await discord.go_down()  # already down: nothing more happens
    loop = asyncio.get_running_loop()
    began = loop.time()
    await back
    assert OUTAGE * 0.9 <= loop.time() - began < OUTAGE + 1.0
    assert not discord.is_down
    await post_message(http, discord, "up again")


# --- Slack ---------------------------------------------------------------------------------


async def slack_call(http: aiohttp.ClientSession, slack: FakeSlack, method: str,
                     token: str | None = None, **body: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token or slack.token}"}
    async with http.post(slack.base_url + method, json=body, headers=headers) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_slack_web_api_is_refused_while_down_and_back_on_the_same_url_with_its_state(
        slack: FakeSlack, http: aiohttp.ClientSession) -> None:
    posted = await slack_call(http, slack, "chat.postMessage", channel="C1", text="before")
    assert posted["ok"]
    base_url = slack.base_url

    await slack.go_down()
    assert slack.is_down
    await refused(slack_call(http, slack, "chat.update", channel="C1", ts=posted["ts"],
                             text="during"))
    assert slack.count("chat.update") == 0

    await slack.come_back()
    assert not slack.is_down and slack.base_url == base_url
    updated = await slack_call(http, slack, "chat.update", channel="C1", ts=posted["ts"],
                               text="after")
    assert updated["ok"]
    assert slack.messages[("C1", posted["ts"])].texts == ["before", "after"]


async def test_slack_call_in_flight_when_it_goes_down_is_reset_and_never_applied(
        slack: FakeSlack, http: aiohttp.ClientSession) -> None:
    slack.latency = 0.5
    sent = asyncio.create_task(slack_call(http, slack, "chat.postMessage", channel="C1",
                                          text="lost in transit"))
    await until(lambda: slack.calls)
    await slack.go_down()
    with pytest.raises(aiohttp.ClientConnectionError):
        await sent
    await slack.come_back()
    await asyncio.sleep(slack.latency)
    assert not slack.bot_messages()
    assert [c.status for c in slack.calls] == [0]


async def test_slack_outage_resets_socket_mode_and_a_new_connection_gets_events(
        slack: FakeSlack, http: aiohttp.ClientSession) -> None:
    opened = await slack_call(http, slack, "apps.connections.open", token=slack.app_token)
    async with http.ws_connect(opened["url"]) as ws:
        assert (await ws.receive_json(timeout=2))["type"] == "hello"
        assert slack.socket_connected.is_set()

        back = slack.outage(OUTAGE)
        assert slack.is_down and not slack.socket_connected.is_set()
        closing = await ws.receive(timeout=2)
        assert closing.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), closing
        await until(lambda: slack.socket_connections == 0)
        with pytest.raises(RuntimeError, match="no Socket Mode connection"):
            await slack.push_event({"event": {"type": "app_mention"}})
        await refused(slack_call(http, slack, "apps.connections.open", token=slack.app_token))
        await back

    reopened = await slack_call(http, slack, "apps.connections.open", token=slack.app_token)
    async with http.ws_connect(reopened["url"]) as ws:
        assert (await ws.receive_json(timeout=2))["type"] == "hello"
        assert slack.socket_connected.is_set()
        envelope_id = await slack.push_event({"event": {"type": "app_mention"}})
        pushed = await ws.receive_json(timeout=2)
        assert pushed["envelope_id"] == envelope_id
        await ws.send_json({"envelope_id": envelope_id})
        async with asyncio.timeout(2):
            await slack.acked(envelope_id)
