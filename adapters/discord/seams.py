"""Where discord.py is pointed at a Discord: its REST base and its gateway.

discord.py keeps both as class attributes (found in its source, 2.7.1):
- `discord.http.Route.BASE`: every REST route, interaction callbacks and webhooks included;
- `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`: where a plain `Client` connects (it never
  asks `GET /gateway/bot`; on RESUME it uses READY's `resume_gateway_url`, and falls back to
  this one when a session is invalidated).
They are process-wide, so one process serves one Discord; `restore()` puts the defaults back.
"""

from __future__ import annotations

from collections.abc import Callable

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route


def point_discord_at(api_url: str, gateway_url: str) -> Callable[[], None]:
    """Aim discord.py at `api_url` and `gateway_url`; returns a function that undoes it."""
    previous = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    Route.BASE = api_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)

    def restore() -> None:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = previous

    return restore
