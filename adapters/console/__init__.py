"""The terminal front door: `ponder ask` (a chain drawn live, or JSON events) and the prompt
`ponder run` falls back to when no platform has credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.console.live import ask_json, ask_live, repl

__all__ = ["ask_json", "ask_live", "repl"]


def __getattr__(name: str) -> Any:
    # Every `ponder` command loads this package for its plugin; rich and the model client are
    # loaded only when the terminal front door is used.
    if name in __all__:
        from adapters.console import live

        return getattr(live, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
