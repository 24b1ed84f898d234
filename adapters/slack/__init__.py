"""Slack front door (slack-bolt): mentions, DMs and follow-ups answered in threads.

`plugin` and `doctor` are the platform as the core sees it (`ponder slack`, `ponder run`,
`ponder doctor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.slack.app import SlackBot, run_slack
    from adapters.slack.surface import SlackSurface
    from adapters.slack.web import SlackLimits

__all__ = ["SlackBot", "SlackLimits", "SlackSurface", "run_slack"]

_HOMES = {"SlackBot": "app", "run_slack": "app", "SlackLimits": "web",
          "SlackSurface": "surface"}


def __getattr__(name: str) -> Any:
    # Every `ponder` command imports this package for its plugin; slack-bolt is loaded only
    # when something of the app is used.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{home}"), name)
