""""Reason about this" (a message command, in both installs): a chain over a message's text.

The question is the message as its readers see it: mentions of people, roles and channels
written as names (nothing in it can ping, whoever wrote it and whatever Ponder later quotes
of it), `@everyone` and `@here` defused, custom emoji as `:name:`, Ponder's own mention
dropped. Its length is the service's to judge, as for any question. Where the chain is shown
is `/reason`'s choice (`app.py`), except that its thread starts from that message.
"""

from __future__ import annotations

import re

import discord

_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")
_CHANNEL = re.compile(r"<#(\d+)>")
_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_MASS = re.compile(r"@(everyone|here)\b")
_ZWSP = "\u200b"


def question_from(message: discord.Message, bot_id: int | None = None) -> str:
    """`message`'s text as a question, with every mention its author wrote neutralised."""
    people = {member.id: member.display_name for member in message.mentions}
    guild = message.guild
    content = message.content
    if bot_id is not None:
        content = re.sub(rf"<@!?{bot_id}>", " ", content)

    def person(match: re.Match[str]) -> str:
        return "@" + people.get(int(match.group(1)), "someone")

    def role(match: re.Match[str]) -> str:
        found = guild.get_role(int(match.group(1))) if guild is not None else None
        return "@" + (found.name if found is not None else "role")

    def channel(match: re.Match[str]) -> str:
        found = guild.get_channel_or_thread(int(match.group(1))) if guild is not None else None
        return "#" + (found.name if found is not None else "channel")

    content = _USER.sub(person, content)
    content = _ROLE.sub(role, content)
    content = _CHANNEL.sub(channel, content)
    content = _EMOJI.sub(r":\1:", content)
    content = _MASS.sub(lambda m: f"@{_ZWSP}{m.group(1)}", content)
    return content.strip()
