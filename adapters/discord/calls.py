"""One Discord REST call with a deadline, and a failure in words."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import discord

from adapters.discord.surface import REST_TIMEOUT

T = TypeVar("T")


async def rest(awaitable: Awaitable[T], seconds: float = REST_TIMEOUT) -> T:
    """One REST call with a deadline (discord.py's own retries happen inside it)."""
    async with asyncio.timeout(seconds):
        return await awaitable


def describe(exc: BaseException) -> str:
    if isinstance(exc, discord.RateLimited):
        return f"Discord asks to wait {exc.retry_after:.0f} s"
    if isinstance(exc, discord.Forbidden):
        return "missing permission"
    if isinstance(exc, discord.HTTPException):
        return f"Discord said {exc.status}: {exc.text or exc.response.reason}"
    if isinstance(exc, TimeoutError):
        return "Discord did not answer in time"
    return str(exc) or type(exc).__name__
