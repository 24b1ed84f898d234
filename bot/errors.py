"""Every error Ponder raises on purpose, under one base.

Each carries a message meant for a person (one readable line, the fix included where there is
one); front doors show it as it is. Anything that is not a `PonderError` is a bug: it is logged
with its traceback and the user sees the internal-error wording instead.
"""

from __future__ import annotations


class PonderError(Exception):
    """Base of Ponder's own errors; `message` is the readable line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SettingsError(PonderError):
    """A setting is missing or has a wrong value; the message names it."""


class ModelError(PonderError):
    """The model server could not be prepared, started or found."""


class PlatformError(PonderError):
    """A front door cannot run: its token is refused, or the platform cannot be reached.
    The same error for every platform, so the runner reports each the same way."""

    def __init__(self, platform: str, message: str) -> None:
        super().__init__(message)
        self.platform = platform


class SurfaceError(PonderError):
    """A post or edit the platform would not take, after the surface's own retries. `gone`:
    the message edited no longer exists (deleted), so waiting will not help; post anew.
    `never`: the whole surface will take nothing again (an interaction whose token expired),
    so what is owed to it is given up at once rather than retried for hours."""

    def __init__(self, message: str, *, gone: bool = False, never: bool = False) -> None:
        super().__init__(message)
        self.gone = gone
        self.never = never


class Refused(PonderError):
    """A question Ponder will not take now; `message` is the short, polite reason to show."""
