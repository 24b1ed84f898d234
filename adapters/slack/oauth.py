"""Ponder in many Slack workspaces: Slack's OAuth install flow through slack-bolt's own support,
with the installations kept in Ponder's database.

- `/slack/install` shows an "Add to Slack" page whose link carries a one-time `state` (also
  set as a cookie in the browser that opened it); `/slack/oauth_redirect` checks that browser
  and state, exchanges Slack's code with `oauth.v2.access`, and keeps the workspace's
  installation. Both are bolt's (`AsyncOAuthFlow`), served beside `/slack/events`.
- `StoreInstallations`: bolt's `AsyncInstallationStore` over Ponder's `Store` (the
  `installations` table), so installations follow `PONDER_DB` to PostgreSQL: every process
  of one bot finds every workspace. Bot tokens only (bolt's "bot only" mode); a workspace
  install, not an organisation-wide one (the manifest keeps `org_deploy_enabled` off).
- `StoreStates`: bolt's `AsyncOAuthStateStore` over the `oauth_states` table. A state is
  signed with `SLACK_STATE_SECRET`, good once (whichever process sees it first takes it) and
  for `STATE_SECONDS`; a forged, replayed or stale state is refused.
- `TeamClients`: the Web API client of each workspace, with that workspace's token, so every
  call a chain makes goes out as the workspace the event came from.

`app_uninstalled` and `tokens_revoked` remove a workspace's installation (`SlackBot` listens).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from logging import Logger
from typing import Any

from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_sdk.oauth.installation_store.async_installation_store import (
    AsyncInstallationStore,
)
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.web import PLATFORM
from bot.config import Settings
from bot.errors import SettingsError
from bot.store import Store, StoreFailed

log = logging.getLogger(__name__)

INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"
STATE_SECONDS = 600  # how long an install link stays good
MIN_STATE_SECRET = 16  # characters; `openssl rand -hex 32` gives 64

# What Ponder asks a workspace for (as `slack-manifest.yml`).
BOT_SCOPES = (
    "app_mentions:read", "assistant:write", "chat:write", "channels:history", "groups:history",
    "im:history", "mpim:history", "reactions:write", "commands", "users:read",
)


def oauth_settings(settings: Settings, store: Store) -> AsyncOAuthSettings:
    """bolt's OAuth settings for Ponder: its paths, its scopes, and both stores over `store`."""
    if settings.slack_client_id is None or settings.slack_client_secret is None:
        raise SettingsError("settings SLACK_CLIENT_ID and SLACK_CLIENT_SECRET: both are needed "
                            "for installs in many workspaces")
    secret = settings.slack_state_secret
    if secret is None or len(secret.get_secret_value()) < MIN_STATE_SECRET:
        raise SettingsError(f"setting SLACK_STATE_SECRET: needed with SLACK_CLIENT_ID, at least "
                            f"{MIN_STATE_SECRET} characters (e.g. `openssl rand -hex 32`)")
    return AsyncOAuthSettings(
        client_id=settings.slack_client_id,
        client_secret=settings.slack_client_secret.get_secret_value(),
        scopes=list(BOT_SCOPES),
        install_path=INSTALL_PATH,
        redirect_uri_path=REDIRECT_PATH,
        installation_store=StoreInstallations(store),
        installation_store_bot_only=True,
        state_store=StoreStates(store, secret.get_secret_value()),
        state_expiration_seconds=STATE_SECONDS,
        logger=log,
    )


def _key(enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None
         ) -> str:
    """Where an installation is kept: its workspace (its organisation for an org install)."""
    return f"E:{enterprise_id}" if is_enterprise_install else str(team_id or "")


class StoreInstallations(AsyncInstallationStore):
    """Installations in Ponder's database, one per workspace (the latest install wins)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def logger(self) -> Logger:
        return log

    async def async_save(self, installation: Installation) -> None:
        data = installation.to_dict_for_copying()
        # Epoch numbers, not the datetimes `to_dict` gives: `Installation(**data)` reads them.
        data.update(installed_at=installation.installed_at,
                    bot_token_expires_at=installation.bot_token_expires_at,
                    user_token_expires_at=installation.user_token_expires_at)
        key = _key(installation.enterprise_id, installation.team_id,
                   installation.is_enterprise_install)
        await self.store.save_installation(PLATFORM, key, json.dumps(data))
        log.info("Slack: installed in %s (%s)", installation.team_name or key, key)

    async def async_save_bot(self, bot: Bot) -> None:
        # Only whole installations are saved here (bolt's bot-only mode saves those too).
        raise NotImplementedError("Ponder keeps whole installations (async_save)")

    async def async_find_installation(self, *, enterprise_id: str | None, team_id: str | None,
                                      user_id: str | None = None,
                                      is_enterprise_install: bool | None = False
                                      ) -> Installation | None:
        raw = await self.store.installation(
            PLATFORM, _key(enterprise_id, team_id, is_enterprise_install))
        if raw is None:
            return None
        installation = Installation(**json.loads(raw))
        if user_id is not None and installation.user_id != user_id:
            return None  # only the installer's is kept
        return installation

    async def async_find_bot(self, *, enterprise_id: str | None, team_id: str | None,
                             is_enterprise_install: bool | None = False) -> Bot | None:
        installation = await self.async_find_installation(
            enterprise_id=enterprise_id, team_id=team_id,
            is_enterprise_install=is_enterprise_install)
        if installation is None or installation.bot_token is None:
            return None
        return installation.to_bot()

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        await self._delete(enterprise_id, team_id)

    async def async_delete_installation(self, *, enterprise_id: str | None,
                                        team_id: str | None,
                                        user_id: str | None = None) -> None:
        if user_id is None:  # a user's own token revoked: Ponder keeps none
            await self._delete(enterprise_id, team_id)

    async def async_delete_all(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        await self._delete(enterprise_id, team_id)

    async def _delete(self, enterprise_id: str | None, team_id: str | None) -> None:
        for key in {_key(enterprise_id, team_id, False), _key(enterprise_id, team_id, True)}:
            if key not in ("", "E:None") and \
                    await self.store.delete_installation(PLATFORM, key):
                log.info("Slack: the installation in %s was removed", key)


class StoreStates(AsyncOAuthStateStore):
    """Install links' states: `nonce.signature`, the nonce kept in the database until used."""

    def __init__(self, store: Store, secret: str, seconds: float = STATE_SECONDS) -> None:
        self.store = store
        self._secret = secret.encode()
        self.seconds = seconds

    @property
    def logger(self) -> Logger:
        return log

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        nonce = secrets.token_urlsafe(24)
        await self.store.issue_state(nonce, time.time() + self.seconds)
        return f"{nonce}.{self._sign(nonce)}"

    async def async_consume(self, state: str) -> bool:
        nonce, _, signature = state.partition(".")
        if not nonce or not hmac.compare_digest(signature, self._sign(nonce)):
            log.warning("Slack install: a state not signed by this app was refused")
            return False
        try:
            taken = await self.store.consume_state(nonce)
        except StoreFailed as exc:
            log.warning("Slack install: the state could not be checked (%s)", exc.cause)
            return False
        if not taken:
            log.warning("Slack install: a state used before, or expired, was refused")
        return taken


class TeamClients:
    """The Web API client of each installed workspace, made with its token (`make(team,
    token)`), and made again when the workspace's token changes (a reinstall)."""

    def __init__(self, installations: StoreInstallations,
                 make: Callable[[str, str], AsyncWebClient]) -> None:
        self.installations = installations
        self._make = make
        self._clients: dict[str, AsyncWebClient] = {}

    async def get(self, team: str) -> AsyncWebClient | None:
        """The workspace's client; None when Ponder is not (or no longer) installed there."""
        bot = await self.installations.async_find_bot(enterprise_id=None, team_id=team)
        if bot is None:
            self._clients.pop(team, None)
            return None
        client = self._clients.get(team)
        if client is None or client.token != bot.bot_token:
            client = self._clients[team] = self._make(team, bot.bot_token)
        return client

    async def bot_user(self, team: str) -> str:
        bot = await self.installations.async_find_bot(enterprise_id=None, team_id=team)
        return bot.bot_user_id if bot is not None and bot.bot_user_id else ""

    def forget(self, team: str) -> None:
        self._clients.pop(team, None)

    def __iter__(self) -> Any:
        return iter(self._clients.values())
