"""A Surface that records what a user would see, for tests of everything above the adapters."""

from __future__ import annotations

import asyncio
import time

from bot.errors import SurfaceError
from bot.ratelimit import RateLimiter
from bot.surface import BaseSurface, Handle, SurfaceLimits


class RecordingSurface(BaseSurface):
    def __init__(self, max_chars: int = 2000, edit_interval: float = 0.05,
                 budget: RateLimiter | None = None, fail_edits: int = 0,
                 post_delay: float = 0.0, fail_posts: int = 0) -> None:
        self.limits = SurfaceLimits(max_chars=max_chars, edit_interval=edit_interval)
        self.budget = budget or RateLimiter(1000, 1.0)
        self.calls: list[tuple[str, int, str, float]] = []
        self.shown: dict[int, str] = {}
        self.fail_edits = fail_edits
        self.fail_posts = fail_posts
        self.post_delay = post_delay  # a slow platform
        self.down = False  # unreachable: every post and edit fails
        self.for_good = False  # ... and never again (an interaction whose token expired)

    def render(self, markdown: str) -> str:
        return markdown.replace("@everyone", "@\u200beveryone").replace("&", "&amp;")

    async def post(self, text: str) -> Handle:
        if self.post_delay:
            await asyncio.sleep(self.post_delay)
        if self.down:
            raise SurfaceError("platform unreachable", never=self.for_good)
        if self.fail_posts:
            self.fail_posts -= 1
            raise SurfaceError("platform said no")
        handle = len(self.shown)
        self.shown[handle] = text
        self.calls.append(("post", handle, text, time.monotonic()))
        return handle

    async def edit(self, handle: Handle, text: str) -> None:
        assert isinstance(handle, int)
        if self.down:
            raise SurfaceError("platform unreachable", never=self.for_good)
        if self.fail_edits:
            self.fail_edits -= 1
            raise SurfaceError("platform said no")
        self.shown[handle] = text
        self.calls.append(("edit", handle, text, time.monotonic()))

    async def read(self, handle: Handle) -> str | None:
        return self.shown.get(handle) if isinstance(handle, int) else None

    def edits(self, handle: int) -> list[str]:
        return [text for kind, h, text, _ in self.calls if kind == "edit" and h == handle]

    def text(self) -> str:
        return "\n".join(self.shown.values())
