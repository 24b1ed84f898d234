"""One Discord REST call with a deadline, and a failure in words."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import discord

from adapters.discord.surface import REST_TIMEOUT
from bot.events import Language
from bot.wording import say

T = TypeVar("T")


async def rest(awaitable: Awaitable[T], seconds: float = REST_TIMEOUT) -> T:
    """One REST call with a deadline (discord.py's own retries happen inside it)."""
    async with asyncio.timeout(seconds):
        return await awaitable


def describe(exc: BaseException, language: Language = "en") -> str:
    """Why a Discord call failed, for the person who asked."""
    if isinstance(exc, discord.RateLimited):
        return say("discord_wait", language, s=f"{exc.retry_after:.0f}")
    if isinstance(exc, discord.Forbidden):
        return say("missing_permission", language)
    if isinstance(exc, discord.HTTPException):
        return say("discord_said", language, status=exc.status,
                   why=exc.text or exc.response.reason)
    if isinstance(exc, TimeoutError):
        return say("discord_timeout", language)
    return str(exc) or type(exc).__name__
