"""`ponder doctor`'s Slack line: the tokens' formats, then `auth.test` with the bot token."""

from __future__ import annotations

import aiohttp

from bot.config import Settings
from bot.platforms import Check, Limits, unreachable_reason


async def check(settings: Settings, limits: Limits) -> Check:
    name = "Slack"
    bot, app = settings.slack_bot_token, settings.slack_app_token
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
