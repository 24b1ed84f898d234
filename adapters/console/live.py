"""The terminal front door: a chain drawn live (rich), or one JSON event per line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.text import Text

from bot.engine import Engine
from bot.events import (
    AnswerDelta,
    ChainFailed,
    ChainStarted,
    Event,
    FinalAnswer,
    Language,
    Question,
    StepDelta,
    StepFinished,
    StepStarted,
    Turn,
    event_to_dict,
)
from bot.links import honest_markdown
from bot.logs import chain_id
from bot.presenter import final_summary, interrupted_text, seconds_text, step_title
from bot.votes import chains
from bot.wording import say


async def ask_json(engine: Engine, question: Question, out: TextIO = sys.stdout) -> int:
    """Print each event as one JSON object per line. Exit code: 0 answered, 1 failed."""
    return _exit_code(await _drive(engine, question, lambda ev: _print_json(ev, out)))


def _print_json(event: Event, out: TextIO) -> None:
    if isinstance(event, AnswerDelta):
        return  # the final_answer event carries the whole text; deltas would only repeat it
    out.write(json.dumps(event_to_dict(event), ensure_ascii=False) + "\n")
    out.flush()


async def ask_live(engine: Engine, question: Question, console: Console | None = None) -> int:
    """Draw the chain in place while it streams, then leave the final state on screen."""
    return _exit_code(await _show_live(engine, question, console or Console()))


async def _show_live(engine: Engine, question: Question, console: Console
                     ) -> FinalAnswer | ChainFailed | None:
    view = _LiveView()
    with Live(view.render(), console=console, refresh_per_second=8, transient=False) as live:
        def update(event: Event) -> None:
            view.apply(event)
            live.update(view.render())
        end = await _drive(engine, question, update)
    if not console.is_terminal:
        console.line()  # piped, rich leaves the last line open
    return end


async def _drive(engine: Engine, question: Question, on_event: Callable[[Event], None]
                 ) -> FinalAnswer | ChainFailed | None:
    chain_id.set(question.id)  # the model client's retry warnings name the chain
    end: FinalAnswer | ChainFailed | None = None
    async for event in chains(engine, question):  # one chain, or a vote (--votes, PONDER_VOTES)
        on_event(event)
        if isinstance(event, FinalAnswer | ChainFailed):
            end = event
    return end


def _exit_code(end: FinalAnswer | ChainFailed | None) -> int:
    if isinstance(end, FinalAnswer):
        return 0
    message = end.message if end is not None else "the chain ended without an answer"
    sys.stderr.write(f"ponder: {message}\n")
    return 1


class _LiveView:
    def __init__(self) -> None:
        self.language: Language = "en"
        self.steps: dict[int, tuple[str, str, float | None]] = {}
        self.answer = ""
        self.footer = ""
        self.failed = False

    def apply(self, event: Event) -> None:
        match event:
            case ChainStarted(language=language):
                self.language = language
            case StepStarted(index=i):
                self.steps[i] = ("", "", None)
            case StepDelta(index=i, title=title, content=content):
                self.steps[i] = (title, content, None)
            case StepFinished(index=i, title=title, content=content, seconds=secs):
                self.steps[i] = (title, content, secs)
            case AnswerDelta(text=text):
                self.answer = text
            case FinalAnswer(text=text):
                self.answer = text
                self.footer = final_summary(event, self.language)
            case ChainFailed(message=message, total_seconds=total):
                took = say("took", self.language, s=seconds_text(total))
                self.footer = f"{message} ({took})"
                self.failed = True

    def render(self) -> Group:
        parts: list[RenderableType] = []
        for i, (title, content, secs) in sorted(self.steps.items()):
            name = step_title(i, title, self.language)
            if secs is not None:
                took = say("took", self.language, s=seconds_text(secs))
                body, state, border = content, took, "dim"
            elif self.failed:  # the chain is over: nothing may still look like it is thinking
                body, state, border = interrupted_text(content, self.language), "✗", "red"
            else:
                body, state, border = content or "…", "⏳", "cyan"
            parts.append(Panel(Markdown(honest_markdown(body)), title=name, subtitle=state,
                               title_align="left", subtitle_align="right", border_style=border))
        if self.answer:
            parts.append(Panel(Markdown(honest_markdown(self.answer)),
                               title=say("answer", self.language), title_align="left",
                               border_style="green"))
        if self.footer:
            parts.append(Text(self.footer, style="bold red" if self.failed else "bold"))
        return Group(*parts)


class _Lines:
    """Lines from a file descriptor, read when the event loop says it is readable.

    Not input() on a worker thread: a thread blocked in input() cannot be cancelled, so
    Ctrl-C at the prompt would wait for Enter (asyncio.run joins its executor) or, with a
    daemon thread, abort the interpreter on its stdin lock at exit.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = b""
        self._eof = False

    async def readline(self) -> str | None:
        """The next line without its newline; None at end of input."""
        while b"\n" not in self._pending and not self._eof:
            loop = asyncio.get_running_loop()
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fd, _settle, readable)
            try:
                await readable
            finally:
                loop.remove_reader(self.fd)
            block = os.read(self.fd, 65536)
            self._pending += block
            self._eof = not block
        if not self._pending:
            return None
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", errors="replace").rstrip("\r")


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def repl(engine: Engine, stdin: int | None = None) -> int:
    """`ponder run` with no platform credentials: ask questions in the terminal."""
    console = Console()
    console.print("[bold]Ponder[/bold] — ask a question (empty line or Ctrl-D to quit).")
    lines = _Lines(sys.stdin.fileno() if stdin is None else stdin)
    turns: list[Turn] = []
    while True:
        console.print("? ", end="")
        line = await lines.readline()
        if line is None or not line.strip():
            return 0
        question = Question(line.strip(), history=tuple(turns))
        end = await _show_live(engine, question, console)  # a failure shows in its footer
        if isinstance(end, FinalAnswer):
            turns.append(Turn(question.text, end.text))  # the next line is a follow-up
