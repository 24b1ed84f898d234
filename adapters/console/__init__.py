"""The terminal front door: `ponder ask` (a chain drawn live, or JSON events) and the prompt
`ponder run` falls back to when no platform has credentials."""

from adapters.console.live import ask_json, ask_live, repl

__all__ = ["ask_json", "ask_live", "repl"]
