"""Slack front door (slack-bolt): mentions, DMs and follow-ups answered in threads."""

from adapters.slack.app import SlackBot, run_slack
from adapters.slack.surface import SlackSurface
from adapters.slack.web import SlackLimits

__all__ = ["SlackBot", "SlackLimits", "SlackSurface", "run_slack"]
