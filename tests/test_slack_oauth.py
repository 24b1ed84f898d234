"""Ponder installed in many Slack workspaces: bolt's OAuth flow served by the real `AsyncApp`
(`/slack/install`, `/slack/oauth_redirect`), the fake Slack's `oauth.v2.access`, installations
kept in Ponder's store, and every call made with the token of the workspace that asked."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from slack_sdk.oauth.installation_store.models.installation import Installation

from adapters.slack import SlackBot
from adapters.slack.doctor import check
from adapters.slack.oauth import BOT_SCOPES, StoreInstallations, StoreStates
from bot.platforms import Limits
from bot.service import Ponder
from bot.store import Store, backend_for
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack
from tests.slack_harness import FAST, SECRET, Harness, envelope, three_steps

STATE_SECRET = "9" * 40
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.pg)]


def oauth_settings(slack: FakeSlack, llm: FakeOpenAI, tmp_path: Path, **more: Any) -> Any:
    values: dict[str, Any] = {"min_steps": 3, "max_steps": 6, "max_attempts": 2,
                              "user_rate_per_minute": 100, "user_concurrency": 50,
                              "slack_client_id": slack.client_id,
                              "slack_client_secret": slack.client_secret,
                              "slack_state_secret": STATE_SECRET,
                              "slack_signing_secret": SECRET, "slack_api_url": slack.base_url}
    values.update(more)
    return make_settings(llm.base_url, tmp_path, **values)


@pytest.fixture
async def h(tmp_path: Path, slack: FakeSlack, fake_llm: FakeOpenAI) -> AsyncIterator[Harness]:
    cfg = oauth_settings(slack, fake_llm, tmp_path)
    ponder = Ponder(cfg)
    await ponder.start()
    bot = SlackBot(ponder, cfg, limits=FAST, streaming=False)
    await bot.start()
    await bot.serve_http(port=0, host="127.0.0.1")
    harness = Harness(slack, fake_llm, ponder, bot, aiohttp.ClientSession())
    try:
        yield harness
    finally:
        await harness.http.close()
        await ponder.drain(0)
        await bot.close(grace=5)
        await ponder.close()


def base(h: Harness) -> str:
    return f"http://127.0.0.1:{h.bot.http_port}"


async def install_page(h: Harness) -> tuple[str, str]:
    """Open "Add to Slack": the state in its link, and the cookie the browser was given."""
    async with h.http.get(f"{base(h)}/slack/install") as resp:
        assert resp.status == 200
        page = await resp.text()
        cookie = resp.headers["Set-Cookie"].split(";", 1)[0]
    link = re.search(r'href="(https://slack\.com/oauth/v2/authorize\?[^"]+)"', page)
    assert link is not None, page
    assert f"client_id={h.slack.client_id}" in link.group(1)
    assert "assistant%3Awrite" in link.group(1) or "assistant:write" in link.group(1)
    state = re.search(r"state=([^&\"]+)", link.group(1))
    assert state is not None
    return state.group(1), cookie


async def redirect(h: Harness, code: str, state: str, cookie: str | None) -> int:
    """Slack sends the browser back with the code and the state."""
    headers = {"Cookie": cookie} if cookie else {}
    async with h.http.get(f"{base(h)}/slack/oauth_redirect",
                          params={"code": code, "state": state}, headers=headers) as resp:
        await resp.read()
        return resp.status


async def install(h: Harness, team: str) -> str:
    """The whole flow for workspace `team`; its bot token."""
    state, cookie = await install_page(h)
    code = h.slack.approve_install(team, f"{team} Inc")
    assert await redirect(h, code, state, cookie) == 200
    token = h.slack.team_token(team)
    assert token is not None
    return token


def mention(h: Harness, team: str, channel: str, text: str) -> tuple[Any, dict[str, Any]]:
    """Someone in workspace `team` mentions Ponder there (its own bot user)."""
    bot_user = h.slack.teams[team]["bot_user_id"]
    full = f"<@{bot_user}> {text}"
    msg = h.slack.add_user_message(channel, full, user=f"U{team}")
    body = envelope(h.slack, {"type": "app_mention", "user": f"U{team}", "text": full,
                              "ts": msg.ts, "event_ts": msg.ts, "channel": channel,
                              "team": team})
    body["team_id"] = team
    body["authorizations"] = [{"team_id": team, "user_id": bot_user, "is_bot": True,
                               "is_enterprise_install": False}]
    return msg, body


async def test_each_workspace_installs_ponder_and_is_answered_with_its_own_token(
        h: Harness) -> None:
    first = await install(h, "T0FIRST")
    second = await install(h, "T0SECOND")
    assert first != second
    [access, _] = h.slack.calls_to("oauth.v2.access")
    assert access.ok
    stored = await h.ponder.store.installation("slack", "T0FIRST")
    assert stored is not None and first in stored

    questions = {}
    for team, channel in (("T0FIRST", "C0FIRST"), ("T0SECOND", "C0SECOND")):
        h.llm.script(*three_steps())
        questions[team], body = mention(h, team, channel, "What is 2+2?")
        assert await h.post(body) == 200
        await h.settle()  # one at a time: the fake model's script is one queue

    for team, channel, token in (("T0FIRST", "C0FIRST", first),
                                 ("T0SECOND", "C0SECOND", second)):
        replies = h.replies(questions[team].ts, channel=channel)
        assert any("Thought for" in r.text for r in replies), [r.text for r in replies]
        writes = [c for c in h.slack.calls
                  if c.method.startswith(("chat.", "reactions.", "assistant."))
                  and c.body.get("channel", c.body.get("channel_id")) == channel]
        assert writes and {c.token for c in writes} == {token}
    # Each workspace's own bot mention was taken out of its question.
    assert [r.body["messages"][-1]["content"] for r in h.llm.requests[::4]] == [
        "What is 2+2?", "What is 2+2?"]
    # Each workspace's 429s pause that workspace's budgets, not the others'.
    assert h.bot.workspace("T0FIRST") is not h.bot.workspace("T0SECOND")


@pytest.mark.parametrize("event", ["app_uninstalled", "tokens_revoked"])
async def test_uninstalling_removes_the_workspace_token(h: Harness, event: str) -> None:
    await install(h, "T0GONE")
    await install(h, "T0STAYS")
    h.slack.revoke("T0GONE")
    payload: dict[str, Any] = {"type": event, "event_ts": f"{time.time():.6f}"}
    if event == "tokens_revoked":
        payload["tokens"] = {"oauth": [], "bot": [h.slack.teams["T0GONE"]["bot_user_id"]]}
    body = envelope(h.slack, payload)
    body["team_id"] = "T0GONE"
    body["authorizations"] = [{"team_id": "T0GONE", "user_id": "UBOTT0GONE", "is_bot": True,
                               "is_enterprise_install": False}]
    assert await h.post(body) == 200
    await h.settle()
    assert await h.ponder.store.installation("slack", "T0GONE") is None
    assert await h.ponder.store.installation("slack", "T0STAYS") is not None
    assert await h.bot.client_for("T0GONE") is None

    # A question from there now is not taken; the other workspace is still answered.
    _, gone = mention(h, "T0GONE", "C0GONE", "What is 2+2?")
    await h.post(gone)
    h.llm.script(*three_steps())
    stays_q, stays = mention(h, "T0STAYS", "C0STAYS", "What is 2+2?")
    assert await h.post(stays) == 200
    await h.settle()
    assert h.replies(stays_q.ts, channel="C0STAYS")
    assert len(h.llm.requests) == 4
    assert not [c for c in h.slack.calls if c.body.get("channel") == "C0GONE"]


async def test_a_bad_or_replayed_state_is_refused(h: Harness) -> None:
    state, cookie = await install_page(h)
    # Forged: a state this app never signed, in a browser given a cookie for it.
    forged = "made-up.0000"
    assert await redirect(h, h.slack.approve_install("T0EVIL"), forged,
                          f"slack-app-oauth-state={forged}") >= 400
    # A good state from another browser (no cookie for it).
    assert await redirect(h, h.slack.approve_install("T0EVIL"), state, None) >= 400
    # Signed with the app's secret but never issued (or issued by another secret's app).
    signer = StoreStates(h.ponder.store, STATE_SECRET)
    unissued = f"never-issued.{signer._sign('never-issued')}"
    assert await redirect(h, h.slack.approve_install("T0EVIL"), unissued,
                          f"slack-app-oauth-state={unissued}") >= 400
    assert h.slack.calls_to("oauth.v2.access") == []
    assert await h.ponder.store.installation("slack", "T0EVIL") is None

    # The real one works once; the same state again is a replay.
    assert await redirect(h, h.slack.approve_install("T0GOOD"), state, cookie) == 200
    assert await redirect(h, h.slack.approve_install("T0AGAIN"), state, cookie) >= 400
    assert len(h.slack.calls_to("oauth.v2.access")) == 1
    assert await h.ponder.store.installation("slack", "T0AGAIN") is None


async def test_doctor_checks_the_oauth_settings(tmp_path: Path, slack: FakeSlack,
                                                fake_llm: FakeOpenAI) -> None:
    limits = Limits(http=2.0)
    good = await check(oauth_settings(slack, fake_llm, tmp_path), limits)
    assert good.status == "ok" and "/slack/install" in good.detail
    for missing, words in (({"slack_state_secret": "short"}, "SLACK_STATE_SECRET"),
                           ({"slack_client_secret": None}, "SLACK_CLIENT_SECRET"),
                           ({"slack_client_id": "not-an-id"}, "SLACK_CLIENT_ID"),
                           ({"slack_signing_secret": None}, "SLACK_SIGNING_SECRET")):
        bad = await check(oauth_settings(slack, fake_llm, tmp_path, **missing), limits)
        assert bad.status == "fail" and words in bad.detail, bad


def test_the_install_asks_for_the_scopes_the_manifest_lists() -> None:
    manifest = (Path(__file__).parent.parent / "slack-manifest.yml").read_text()
    bot_scopes = manifest.split("    bot:\n", 1)[1].split("settings:", 1)[0]
    listed = {line.split("#")[0].strip().removeprefix("- ").strip()
              for line in bot_scopes.splitlines() if line.strip().startswith("- ")}
    assert listed == set(BOT_SCOPES)


# --- the stores, on both back ends ---------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    where = str(tmp_path / "ponder.db") if request.param == "sqlite" else str(
        request.getfixturevalue("pg_url"))
    opened = backend_for(where)(where)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_installations_are_kept_replaced_and_removed(store: Store) -> None:
    kept = StoreInstallations(store)
    await kept.async_save(Installation(app_id="A1", team_id="T1", team_name="One",
                                       bot_token="xoxb-1", bot_id="B1", bot_user_id="U1",
                                       bot_scopes="chat:write", user_id="UINST",
                                       installed_at=1_700_000_000.0))
    bot = await kept.async_find_bot(enterprise_id=None, team_id="T1")
    assert bot is not None and (bot.bot_token, bot.bot_user_id) == ("xoxb-1", "U1")
    assert bot.bot_scopes == ["chat:write"] and bot.installed_at == 1_700_000_000.0
    await kept.async_save(Installation(team_id="T1", bot_token="xoxb-1b", bot_user_id="U1",
                                       user_id="UINST"))
    bot = await kept.async_find_bot(enterprise_id=None, team_id="T1")
    assert bot is not None and bot.bot_token == "xoxb-1b"
    assert await kept.async_find_bot(enterprise_id=None, team_id="T2") is None
    await kept.async_delete_all(enterprise_id=None, team_id="T1")
    assert await kept.async_find_bot(enterprise_id=None, team_id="T1") is None


async def test_a_state_is_good_once_and_not_after_it_expires(store: Store) -> None:
    states = StoreStates(store, STATE_SECRET)
    state = await states.async_issue()
    assert await states.async_consume(state)
    assert not await states.async_consume(state)  # replayed
    short = StoreStates(store, STATE_SECRET, seconds=-1)  # expired as soon as issued
    assert not await short.async_consume(await short.async_issue())
    other = StoreStates(store, "another secret, another app")
    assert not await other.async_consume(await states.async_issue())  # not signed by it
