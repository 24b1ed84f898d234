"""`ponder doctor`'s Slack line: the tokens' formats, then `auth.test` with the bot token; with
installs in many workspaces (OAuth), the OAuth settings instead."""

from __future__ import annotations

import aiohttp

from bot.config import Settings
from bot.platforms import Check, Limits, unreachable_reason


async def check(settings: Settings, limits: Limits) -> Check:
    name = "Slack"
    bot, app = settings.slack_bot_token, settings.slack_app_token
    if settings.slack_client_id is not None or settings.slack_client_secret is not None:
        return oauth_check(settings)
    if bot is None and app is None:
        return Check(name, "skip", "SLACK_BOT_TOKEN not set (Slack stays off)", required=False)
    if bot is None:
        return Check(name, "fail", "SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is not",
                     "set SLACK_BOT_TOKEN (xoxb-…, from OAuth & Permissions)")
    token = bot.get_secret_value().strip()
    if not token.startswith("xoxb-"):
        return Check(name, "fail", "SLACK_BOT_TOKEN does not start with xoxb-",
                     "use the Bot User OAuth Token (OAuth & Permissions), not a user token")
    if app is not None and not app.get_secret_value().strip().startswith("xapp-"):
        return Check(name, "fail", "SLACK_APP_TOKEN does not start with xapp-",
                     "create an app-level token with connections:write (Basic Information)")
    if app is None and settings.slack_signing_secret is None:
        return Check(name, "fail", "neither SLACK_APP_TOKEN (Socket Mode) nor "
                     "SLACK_SIGNING_SECRET (HTTP mode) is set",
                     "set SLACK_APP_TOKEN (xapp-…) for Socket Mode")
    mode = "Socket Mode" if app is not None else "HTTP mode"
    url = f"{settings.slack_api_url.rstrip('/')}/auth.test"
    try:
        async with aiohttp.ClientSession() as http, http.post(
                url, headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=limits.http)) as resp:
            if resp.status != 200:
                return Check(name, "fail", f"auth.test answered HTTP {resp.status}",
                             "try again later; check SLACK_API_URL", required=False)
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check(name, "ok", f"token format ok ({mode}); Slack unreachable, auth not "
                     f"checked ({unreachable_reason(exc)})", required=False)
    if not body.get("ok"):
        error = body.get("error", "unknown error")
        return Check(name, "fail", f"auth.test refused the bot token ({error})",
                     "reinstall the app to the workspace and copy the new xoxb- token")
    return Check(name, "ok", f"authenticated as {body.get('user', '?')} in "
                 f"{body.get('team', '?')} ({mode})")


def oauth_check(settings: Settings) -> Check:
    """Installs in many workspaces: the app's credentials, the state secret, HTTP mode."""
    from adapters.slack.oauth import INSTALL_PATH, MIN_STATE_SECRET

    name = "Slack"
    client_id, secret = settings.slack_client_id, settings.slack_client_secret
    if client_id is None or secret is None:
        missing = "SLACK_CLIENT_SECRET" if client_id is not None else "SLACK_CLIENT_ID"
        return Check(name, "fail", f"{missing} is not set (installs in many workspaces need "
                     "both SLACK_CLIENT_ID and SLACK_CLIENT_SECRET)",
                     "copy both from Basic Information -> App Credentials")
    if not all(part.isdigit() for part in client_id.strip().split(".")):
        return Check(name, "fail", "SLACK_CLIENT_ID does not look like a Slack client id "
                     "(digits.digits)", "copy the Client ID from Basic Information")
    state = settings.slack_state_secret
    if state is None or len(state.get_secret_value()) < MIN_STATE_SECRET:
        return Check(name, "fail", f"SLACK_STATE_SECRET is not set or shorter than "
                     f"{MIN_STATE_SECRET} characters", "set it to `openssl rand -hex 32`")
    if settings.slack_signing_secret is None:
        return Check(name, "fail", "SLACK_SIGNING_SECRET is not set: installs in many "
                     "workspaces are served over HTTP", "copy it from Basic Information")
    extra = "; SLACK_BOT_TOKEN is not used" if settings.slack_bot_token is not None else ""
    return Check(name, "ok", f"installs in many workspaces (OAuth, HTTP mode): each workspace "
                 f"installs at {INSTALL_PATH}{extra}")
