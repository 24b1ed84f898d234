"""Where a `/reason` chain is shown: a thread from the opening message, a forum post, or,
where threads are impossible, inline in the channel (explained once per channel)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord

from adapters.discord import text
from adapters.discord.calls import describe, rest
from adapters.discord.opening import Opening
from adapters.discord.stop import stop_view
from adapters.discord.surface import LimiterRegistry
from bot.events import Language, Question
from bot.memory import Memory
from bot.wording import say

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Place:
    channel: discord.abc.Messageable
    id: int
    where: str | None  # a mention of the thread or post, for summary lines


async def place(client: discord.Client, interaction: discord.Interaction[Any], q: Question,
                opening: Opening, language: Language, limiters: LimiterRegistry,
                memory: Memory, hold: Callable[[str], None]) -> Place:
    """Open where the steps go, with the opening message (and its Stop button) in place.

    `hold(thread_id)` is called the moment a thread (or forum post) exists: from then on a
    /reason typed inside it meets a busy thread, though the chain is not started yet."""
    channel: Any = interaction.channel
    if channel is None:
        channel = client.get_partial_messageable(interaction.channel_id or 0,
                                                 guild_id=interaction.guild_id)
    perms = interaction.app_permissions
    can_thread = perms.create_public_threads and perms.send_messages_in_threads
    running = text.with_status(opening.text, text.running_line(None, language))
    thread: discord.Thread | None = None
    note: str | None = None

    if opening.thread is not None:
        thread = opening.thread  # opened by an earlier try that failed after it
    elif isinstance(channel, discord.ForumChannel) and can_thread:
        thread = opening.thread = await _forum_post(channel, q, opening, language, limiters,
                                                    hold)
    elif isinstance(channel, discord.TextChannel) and can_thread:
        message = await rest(interaction.edit_original_response(
            content=running, view=stop_view(q.id, language)))
        opening.message_id, opening.channel = message.id, channel
        opening.limiter = limiters.get(channel.id)
        try:
            await limiters.threads(channel.id).acquire()
            # "Reason about this" hangs its thread from the message it is about.
            start = opening.target or message
            thread = opening.thread = await rest(start.create_thread(
                name=text.thread_name(q.text), auto_archive_duration=1440))
        except (discord.HTTPException, discord.RateLimited) as exc:
            # Thread creation has tight, sometimes minutes-long limits of its own.
            note = say("no_thread_here", language, why=describe(exc, language))
    elif isinstance(channel, discord.Thread):
        note = say("in_thread_already", language)
    elif isinstance(channel, discord.TextChannel | discord.ForumChannel):
        note = say("no_thread_permission", language)
    else:
        note = say("no_threads", language)

    if thread is not None:
        hold(str(thread.id))
        if opening.channel is not None and not isinstance(channel, discord.ForumChannel):
            await opening.show(text.running_line(thread.mention, language),
                               view=stop_view(q.id, language))
        return Place(thread, thread.id, thread.mention)
    if note is not None and await _first_explanation(memory, channel.id):
        opening.text = text.opening(q.text, interaction.user.mention, note, language)
    message = await rest(interaction.edit_original_response(
        content=text.with_status(opening.text, text.running_line(None, language)),
        view=stop_view(q.id, language)))
    opening.message_id, opening.channel = message.id, channel
    opening.limiter = limiters.get(channel.id)
    return Place(channel, channel.id, None)


async def _forum_post(forum: discord.ForumChannel, q: Question, opening: Opening,
                      language: Language, limiters: LimiterRegistry,
                      hold: Callable[[str], None]) -> discord.Thread:
    await limiters.threads(forum.id).acquire()
    created = await rest(forum.create_thread(
        name=text.thread_name(q.text), auto_archive_duration=1440,
        content=text.with_status(opening.text, text.running_line(None, language)),
        view=stop_view(q.id, language)))
    post, first = created.thread, created.message
    hold(str(post.id))
    # The deferred answer points at the post; the post's first message is the opening.
    interaction = opening.interaction
    if interaction is not None:
        await rest(interaction.edit_original_response(content=f"🧵 {post.mention}"))
    opening.interaction = None
    opening.channel, opening.message_id = post, first.id
    opening.limiter = limiters.get(post.id)
    return post


async def _first_explanation(memory: Memory, place_id: int) -> bool:
    """True the first time inline answering is explained in a place (remembered)."""
    try:
        return await memory.once(f"discord:explained:{place_id}")
    except Exception:  # the store is failing: answer without the note rather than not at all
        log.exception("could not check whether inline answers were explained here")
        return False
