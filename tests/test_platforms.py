"""The platform seam (plugins found through entry points), the runner that serves them, and
log lines that never cut through a terminal UI."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
from collections.abc import Iterator, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from rich.console import Console

from adapters import console
from bot import logs, runner
from bot.config import Settings, SettingsError, load_settings
from bot.errors import PlatformError
from bot.errors import SettingsError as ErrorsSettingsError
from bot.events import Question
from bot.platforms import Check, Limits, Services, discover
from tests.conftest import make_engine, make_settings
from tests.fakes.openai_server import FakeOpenAI, Fault

# --- discovery ---------------------------------------------------------------------------------


def test_the_installed_platforms_are_found_through_entry_points() -> None:
    found = discover()
    assert [p.name for p in found] == ["console", "discord", "slack"]
    assert [p.name for p in found if p.fallback] == ["console"]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    for platform in found:
        platform.add_commands(sub)
    args = parser.parse_args(["slack", "--http", "--port", "3001"])
    assert args.http and args.port == 3001 and callable(args.func)
    args = parser.parse_args(["ask", "--json", "--mode", "native", "Is", "221", "prime?"])
    assert args.json and args.mode == "native" and args.question == ["Is", "221", "prime?"]
    assert callable(parser.parse_args(["discord"]).func)


def test_configured_platforms_follow_the_credentials() -> None:
    assert runner.configured_platforms(load_settings()) == []
    assert runner.configured_platforms(load_settings(discord_token="t")) == ["discord"]
    # Slack needs its bot token and a way in: Socket Mode's app token or HTTP's secret.
    assert runner.configured_platforms(load_settings(slack_bot_token="xoxb-1")) == []
    both = load_settings(discord_token="t", slack_bot_token="xoxb-1",
                         slack_signing_secret="s")
    assert runner.configured_platforms(both) == ["discord", "slack"]


class Stub:
    """A platform as a plugin would write one, doing what each test tells it."""

    fallback = False

    def __init__(self, name: str, *, fail: BaseException | None = None,
                 after: float = 0.0, uses_service: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.after = after
        self.uses_service = uses_service
        self.cancelled = False
        self.served_by: Services | None = None

    def add_commands(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
                     ) -> None:
        subparsers.add_parser(self.name)

    def configured(self, settings: Settings) -> bool:
        return True

    async def serve(self, services: Services) -> None:
        self.served_by = services
        if self.uses_service:
            await services.ponder()
        try:
            await asyncio.sleep(self.after)
            if self.fail is not None:
                raise self.fail
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def checks(self, settings: Settings, limits: Limits) -> Sequence[Check]:
        if self.fail is not None:
            raise self.fail
        return [Check(self.name, "ok", "fine")]


def entry(name: str, value: str) -> EntryPoint:
    return EntryPoint(name, value, "ponder.platforms")


def test_a_plugin_that_fails_to_load_is_left_out_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    found = discover([
        entry("slack", "adapters.slack.plugin:platform"),
        entry("broken", "tests.no_such_module:platform"),
        entry("odd", "bot.config:Mode"),  # loads, but is no Platform
        entry("discord", "adapters.discord.plugin:platform"),
        entry("again", "adapters.discord.plugin:platform"),
    ])
    assert [p.name for p in found] == ["discord", "slack"]
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("broken" in line and "failed to load" in line for line in said), said
    assert any("odd" in line and "is not a Platform" in line for line in said), said
    assert any("two platform plugins are named discord" in line for line in said), said


# --- the runner --------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, fake_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
             ) -> Settings:
    monkeypatch.setattr(runner, "tune_gc", lambda: None)  # not on the test process itself
    return make_settings(fake_llm.base_url, tmp_path, shutdown_grace=1.0)


async def test_a_platform_error_is_one_line_and_stops_the_others(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    steady = Stub("steady", uses_service=True)
    failing = Stub("failing", fail=PlatformError("failing", "Failing refused its token"),
                   after=0.1)
    assert await runner.serve(settings, [steady, failing]) == 1
    assert capsys.readouterr().err == "ponder: Failing refused its token\n"
    assert steady.cancelled
    # Both shared the one service, started for the platform that asked and closed after.
    services = steady.served_by
    assert services is not None and services is failing.served_by
    assert settings.db.exists() and services._ponder is None  # opened, then closed


async def test_a_settings_error_is_exit_2(settings: Settings,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    failing = Stub("failing", fail=ErrorsSettingsError("setting FAILING_TOKEN: needed"))
    assert await runner.serve(settings, [failing]) == 2
    assert capsys.readouterr().err == "ponder: setting FAILING_TOKEN: needed\n"


async def test_a_bug_in_a_platform_is_logged_with_its_traceback(
        settings: Settings, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    failing = Stub("failing", fail=KeyError("oops"))
    assert await runner.serve(settings, [failing]) == 1
    assert capsys.readouterr().err == ""
    record = next(r for r in caplog.records if r.name == "bot.runner")
    assert record.levelno == logging.ERROR and "failing" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)


async def test_ponder_run_falls_back_to_the_terminal_without_starting_the_service(
        settings: Settings) -> None:
    class Terminal(Stub):
        fallback = True

        def configured(self, settings: Settings) -> bool:
            return False

        async def serve(self, services: Services) -> None:
            self.served_by = services

    terminal, off = Terminal("terminal"), Stub("off")
    off.configured = lambda settings: False  # type: ignore[method-assign]
    assert await runner.serve_all(settings, [off, terminal]) == 0
    assert terminal.served_by is not None and off.served_by is None
    assert terminal.served_by._ponder is None
    assert not settings.db.exists()  # no store opened for a terminal that does not use it


async def test_a_plugin_whose_checks_break_is_one_failed_line(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from bot import doctor

    async def no_gpu(limits: Limits) -> Check:
        return Check("GPU", "skip", "none found", required=False)

    checks = await doctor.run_checks(
        settings, gpu_check=no_gpu,
        platforms=[Stub("fine"), Stub("broken", fail=RuntimeError("bug"))])
    lines = [doctor.format_check(c) for c in checks]
    assert lines[-3] == "✓ fine: fine"
    assert lines[-2].startswith("✗ broken: its check failed: RuntimeError('bug')")
    assert lines[-1] == "– GPU: none found"
    assert any(r.exc_info for r in caplog.records if r.name == "bot.doctor")


# --- logs --------------------------------------------------------------------------------------


@pytest.fixture
def saved_logging() -> Iterator[None]:
    """setup_logging changes process-wide state: put it back for the other tests."""
    names = ("", *logs.OWN_LOGGERS, "httpx2", "slack_bolt")
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = logging.getLogger().handlers[:]
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


@pytest.mark.usefixtures("saved_logging")
def test_libraries_stay_at_warning_unless_debug() -> None:
    logs.setup_logging("info", io.StringIO())
    assert logging.getLogger("httpx2").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("slack_bolt.App").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("bot.llm").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("adapters.slack.app").getEffectiveLevel() == logging.INFO
    logs.setup_logging("ERROR", io.StringIO())
    assert logging.getLogger("httpx2").getEffectiveLevel() == logging.ERROR
    logs.setup_logging("DEBUG", io.StringIO())
    assert logging.getLogger("httpx2").getEffectiveLevel() == logging.DEBUG
    with pytest.raises(SettingsError, match="setting PONDER_LOG_LEVEL: 'loud' is not a log level"):
        logs.setup_logging("loud")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stderr_is_terminal", [True, False])
async def test_a_log_line_during_a_live_chain_never_cuts_through_it(
        tmp_path: Path, fake_llm: FakeOpenAI, stderr_is_terminal: bool) -> None:
    # A retried model call logs a warning while the chain is drawn.
    fake_llm.script(Fault(500))
    engine, llm = make_engine(make_settings(fake_llm.base_url, tmp_path, max_attempts=2))
    stderr = Terminal() if stderr_is_terminal else io.StringIO()
    handler = logs.StderrHandler(stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    own = logging.getLogger("bot")
    own.addHandler(handler)
    screen = io.StringIO()
    try:
        code = await console.ask_live(
            engine, Question("Why is the sky blue?"),
            Console(file=screen, force_terminal=True, width=200, height=50))
    finally:
        own.removeHandler(handler)
        await llm.close()
    assert code == 0
    drawn = screen.getvalue()
    if stderr_is_terminal:
        # Printed by rich above the display, which is drawn again below it.
        line = drawn.index("WARNING bot.")
        assert drawn.rindex("Thought for") > line
        assert drawn[line:].split("\n", 1)[0].count("WARNING") == 1
        assert stderr.getvalue() == ""
    else:
        # A file or pipe gets the lines as they are; the screen gets none.
        assert "WARNING bot." in stderr.getvalue() and "WARNING" not in drawn


@pytest.mark.usefixtures("saved_logging")
def test_held_logs_come_after_the_checklist_in_order() -> None:
    out = io.StringIO()
    logs.setup_logging("INFO", out)
    log = logging.getLogger("bot.test")
    with logs.held_logs():
        log.info("first")
        log.warning("second")
        assert out.getvalue() == ""
    lines = out.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["first", "second"]
    assert all(" chain=- " in line for line in lines)
