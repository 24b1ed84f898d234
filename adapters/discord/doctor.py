"""`ponder doctor`'s Discord line: the token's format, then a login (`GET /users/@me`)."""

from __future__ import annotations

import base64
import binascii
import re

import aiohttp

from bot.config import Settings
from bot.platforms import Check, Limits, unreachable_reason

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{17,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}$")


async def check(settings: Settings, limits: Limits) -> Check:
    name = "Discord"
    if settings.discord_token is None:
        return Check(name, "skip", "DISCORD_TOKEN not set (Discord stays off)", required=False)
    token = settings.discord_token.get_secret_value().strip()
    if token.lower().startswith("bot "):
        return Check(name, "fail", "DISCORD_TOKEN starts with 'Bot '",
                     "set the token alone; Ponder adds the 'Bot ' prefix")
    bot_id = bot_id_of(token)
    if bot_id is None:
        return Check(name, "fail", "DISCORD_TOKEN does not look like a bot token",
                     "copy it from the Developer Portal: your app → Bot → Reset Token")
    url = f"{settings.discord_api_url.rstrip('/')}/users/@me"
    try:
        async with aiohttp.ClientSession() as http, http.get(
                url, headers={"Authorization": f"Bot {token}"},
                timeout=aiohttp.ClientTimeout(total=limits.http)) as resp:
            if resp.status == 401:
                return Check(name, "fail", f"the token for bot {bot_id} was rejected (401)",
                             "reset the token in the Developer Portal and update DISCORD_TOKEN")
            if resp.status != 200:
                return Check(name, "fail", f"{url} answered HTTP {resp.status}",
                             "try again later; check DISCORD_API_URL", required=False)
            me = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check(name, "ok", f"token format ok (bot {bot_id}); Discord unreachable, "
                     f"login not checked ({unreachable_reason(exc)})", required=False)
    return Check(name, "ok", f"logged in as {me.get('username', '?')} ({me.get('id', bot_id)})")


def bot_id_of(token: str) -> str | None:
    """The bot's user id, which a real token carries base64-encoded in its first part."""
    if not _TOKEN.match(token):
        return None
    head = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded if decoded.isdigit() else None
