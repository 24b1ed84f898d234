"""Slack's assistant panel (the AI-app split view), through slack-bolt's `Assistant` middleware.

- `assistant_thread_started` (someone opens the panel): a short greeting in the new thread and
  three suggested prompts (`assistant.threads.setSuggestedPrompts`), English or Chinese by the
  person's Slack locale (`users.info` with `include_locale`), or the ones `SLACK_SUGGESTED_PROMPTS`
  sets.
- a message in an assistant thread (bolt: a DM message in a thread, not a bot's): a chain like a
  DM's, the thread titled from its first question (`assistant.threads.setTitle`), and while
  the chain runs the status line shows the step being thought as its loading message
  (`PanelSurface` taps the chain's events; `QuestionStatus.step` writes it).
- `assistant_thread_context_changed` (the person looks at another channel): noted only; Ponder
  answers from the thread, not from the channel beside it.

bolt's middleware does the routing (and acknowledges edits and deletions in assistant threads);
the calls themselves go through the workspace's own client (`PanelHost.client_for`), so they
are defused, paced and sent with the right token like every other.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.surface import SlackSurface
from adapters.slack.web import SlackCallError, Workspace, call
from bot.config import Settings
from bot.errors import SettingsError
from bot.events import Event, Language, StepDelta
from bot.surface import Outcome, Presenter
from bot.wording import say

log = logging.getLogger(__name__)

MAX_PROMPTS = 4  # Slack shows at most four suggested prompts
PROMPT_TITLE_CHARS = 40
THREAD_TITLE_CHARS = 80
STEP_TITLE_CHARS = 100
LOCALES_KEPT = 4096  # people whose locale is remembered (the least recent forgotten)


class PanelHost(Protocol):
    """What the panel needs of the bot (`SlackBot`)."""

    bot_user_id: str

    async def client_for(self, team: str) -> AsyncWebClient | None: ...

    def workspace(self, team_id: str) -> Workspace: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...

    async def ask_in_panel(self, *, team: str, asker_team: str, channel: str, user: str,
                           message_ts: str, thread_ts: str, text: str) -> None: ...


Prompt = dict[str, str]  # {"title": shown on the button, "message": what it asks}


def suggested_prompts(raw: str | None) -> list[Prompt] | None:
    """`SLACK_SUGGESTED_PROMPTS` read: a JSON list (of texts, or of {"title", "message"}) or
    texts separated by `|`; None when unset (the built-in ones, in the person's language)."""
    if raw is None or not raw.strip():
        return None
    items: list[Any]
    if raw.lstrip().startswith("["):
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise SettingsError(f"setting SLACK_SUGGESTED_PROMPTS: not a JSON list ({exc})"
                                ) from None
    else:
        items = [part for part in raw.split("|")]
    prompts: list[Prompt] = []
    for item in items:
        if isinstance(item, str) and item.strip():
            text = item.strip()
            prompts.append({"title": _short(text, PROMPT_TITLE_CHARS), "message": text})
        elif isinstance(item, dict) and str(item.get("message") or "").strip():
            message = str(item["message"]).strip()
            title = str(item.get("title") or "").strip() or message
            prompts.append({"title": _short(title, PROMPT_TITLE_CHARS), "message": message})
        elif not (isinstance(item, str) and not item.strip()):
            raise SettingsError("setting SLACK_SUGGESTED_PROMPTS: each prompt is a text or "
                                f'{{"title": ..., "message": ...}}, got {item!r}')
    if not prompts:
        raise SettingsError("setting SLACK_SUGGESTED_PROMPTS: no prompt in it")
    if len(prompts) > MAX_PROMPTS:
        raise SettingsError(f"setting SLACK_SUGGESTED_PROMPTS: Slack shows at most "
                            f"{MAX_PROMPTS} prompts, got {len(prompts)}")
    return prompts


def builtin_prompts(language: Language) -> list[Prompt]:
    return [{"title": say(f"assistant_prompt_{n}_title", language),
             "message": say(f"assistant_prompt_{n}", language)} for n in (1, 2, 3)]


def _short(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


class AssistantPanel:
    """The assistant panel of one bot: `middleware` goes to `AsyncApp.assistant`."""

    def __init__(self, host: PanelHost, settings: Settings) -> None:
        self.host = host
        self.prompts = suggested_prompts(settings.slack_suggested_prompts)
        self.middleware = AsyncAssistant(logger=log)
        self.middleware.thread_started(self._thread_started)
        self.middleware.thread_context_changed(self._context_changed)
        self.middleware.user_message(self._user_message)
        self._locales: OrderedDict[tuple[str, str], Language] = OrderedDict()

    # --- bolt listeners (acknowledged by bolt; the work is an owned task) ------------------

    async def _thread_started(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        thread = event.get("assistant_thread") or {}
        channel, thread_ts = str(thread.get("channel_id") or ""), str(
            thread.get("thread_ts") or "")
        user = str(thread.get("user_id") or "")
        if not channel or not thread_ts:
            log.warning("assistant_thread_started without a thread: ignored")
            return
        team = _team_of(body, thread)
        self.host.spawn(self.greet(team, channel, thread_ts, user),
                        name=f"slack-panel-{thread_ts}")

    async def _context_changed(self, event: dict[str, Any]) -> None:
        log.debug("assistant thread context changed: %s",
                  (event.get("assistant_thread") or {}).get("context"))

    async def _user_message(self, event: dict[str, Any], body: dict[str, Any],
                            context: dict[str, Any]) -> None:
        user = event.get("user")
        bot_user = str(context.get("bot_user_id") or self.host.bot_user_id)
        if user is None or user == bot_user or event.get("bot_profile"):
            return
        team = str(body.get("team_id") or event.get("team") or "")
        ts = str(event["ts"])
        self.host.spawn(self.host.ask_in_panel(
            team=team, asker_team=str(event.get("user_team") or event.get("team") or team),
            channel=str(event["channel"]), user=str(user), message_ts=ts,
            thread_ts=str(event.get("thread_ts") or ts), text=str(event.get("text") or "")),
            name=f"slack-panel-ask-{ts}")

    # --- what the panel shows --------------------------------------------------------------

    async def greet(self, team: str, channel: str, thread_ts: str, user: str) -> None:
        """The greeting and the suggested prompts of a new assistant thread."""
        client = await self.host.client_for(team)
        if client is None:
            log.warning("assistant thread in %s, where Ponder is not installed: ignored", team)
            return
        language = await self.language(client, team, user)
        budget = self.host.workspace(team).post_budget(channel)
        await budget.acquire()
        try:
            await call("chat.postMessage", client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=say("assistant_greeting", language)))
        except SlackCallError as exc:
            log.warning("could not greet in assistant thread %s: %s", thread_ts, exc.error)
        finally:
            budget.settled()
        try:
            await call("assistant.threads.setSuggestedPrompts",
                       client.assistant_threads_setSuggestedPrompts(
                           channel_id=channel, thread_ts=thread_ts,
                           title=say("assistant_prompts_title", language),
                           prompts=self.prompts or builtin_prompts(language)))
        except SlackCallError as exc:
            log.warning("could not suggest prompts in assistant thread %s: %s", thread_ts,
                        exc.error)

    async def language(self, client: AsyncWebClient, team: str, user: str) -> Language:
        """The person's language by their Slack locale (`zh-…` is Chinese), remembered."""
        key = (team, user)
        known = self._locales.get(key)
        if known is not None:
            self._locales.move_to_end(key)
            return known
        try:
            info = await call("users.info", client.users_info(user=user, include_locale=True))
        except SlackCallError as exc:
            log.info("the locale of %s is not known (%s): English", user, exc.error)
            return "en"  # not remembered: the next thread asks again
        locale = str((info.get("user") or {}).get("locale") or "")
        language: Language = "zh" if locale.lower().startswith("zh") else "en"
        self._locales[key] = language
        while len(self._locales) > LOCALES_KEPT:
            self._locales.popitem(last=False)
        return language


async def set_title(client: AsyncWebClient, channel: str, thread_ts: str, question: str) -> None:
    """The assistant thread named after its first question (one line, short)."""
    try:
        await call("assistant.threads.setTitle", client.assistant_threads_setTitle(
            channel_id=channel, thread_ts=thread_ts,
            title=_short(question, THREAD_TITLE_CHARS)))
    except SlackCallError as exc:
        log.info("could not title assistant thread %s: %s", thread_ts, exc.error)


def _team_of(body: dict[str, Any], thread: dict[str, Any]) -> str:
    context = thread.get("context") or {}
    return str(body.get("team_id") or context.get("team_id") or "")


# --- the status line while a chain runs ---------------------------------------------------


class StepTitles:
    """Each step's title, once it is whole, handed to `show` (the status line): one call at a
    time, and when steps come faster than Slack answers, only the latest waits its turn."""

    def __init__(self, show: Callable[[str], Awaitable[None]]) -> None:
        self._show = show
        self._seen = 0  # the last step whose title was taken
        self._next: str | None = None
        self._task: asyncio.Task[None] | None = None

    def see(self, event: Event) -> None:
        # A step's title is whole once its content has begun (the step's JSON names the
        # title first).
        if isinstance(event, StepDelta) and event.index > self._seen and event.title and \
                event.content:
            self._seen = event.index
            self._next = _short(event.title, STEP_TITLE_CHARS)
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name="slack-step-status")

    async def _run(self) -> None:
        while self._next is not None:
            title, self._next = self._next, None
            try:
                await self._show(title)
            except Exception:  # a status line is a courtesy: the chain goes on
                log.exception("could not show the step on the status line")

    async def close(self) -> None:
        """No more titles; the one being written finishes (before the status is cleared)."""
        self._next = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class _TitledPresenter:
    """The surface's own presenter, with the chain's events also going to `StepTitles`."""

    def __init__(self, inner: Presenter, titles: StepTitles) -> None:
        self._inner = inner
        self._titles = titles

    @property
    def outcome(self) -> Outcome:
        return self._inner.outcome

    @outcome.setter
    def outcome(self, value: Outcome) -> None:
        self._inner.outcome = value

    async def notice(self, markdown: str, key: str | None = None) -> None:
        await self._inner.notice(markdown, key)

    async def present(self, events: AsyncIterator[Event]) -> Outcome:
        try:
            return await self._inner.present(self._tap(events))
        finally:
            await self._titles.close()

    async def _tap(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            self._titles.see(event)
            yield event


class PanelSurface(SlackSurface):
    """An assistant thread: a Slack thread whose status line follows the chain's steps."""

    def __init__(self, *args: Any, on_step: Callable[[str], Awaitable[None]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_step = on_step

    def presenter(self, language: Language) -> Presenter:
        return _TitledPresenter(super().presenter(language), StepTitles(self._on_step))
