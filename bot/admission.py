"""Who may ask what, where, and when: the product's admission rules, for every platform.

- a question must be readable and not too long;
- the allow-lists (users, channels, workspaces);
- an asker has at most `PONDER_USER_CONCURRENCY` chains at once and `PONDER_USER_RATE` a minute;
- one chain at a time in a thread: a second question there waits for the first to end;
- with a store several processes share, the asker's limits (running chains and questions a
  minute) and the thread's rule count every process's chains, at admission, before the front
  door answers (`Store.hold`; `shared_refusal` words it), and once more as the chain starts;
- in a Ponder thread, only the person who started it follows up.

An `Admission` holds the asker's slot and the thread from the moment it is granted, because a
platform may take seconds to open a thread, and a second question in those seconds must be
refused too.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bot.config import Settings
from bot.errors import Refused
from bot.events import Language, Question
from bot.store import Taken
from bot.text import clean_text, visible
from bot.wording import say

RATE_WINDOW = 60.0  # seconds over which PONDER_USER_RATE counts an asker's questions
SWEEP_FLOOR = 1024  # askers held before the first sweep of the question times


@dataclass(frozen=True, slots=True)
class ChainRequest:
    """A question as a front door hands it over. `thread` names where the chain runs (empty
    until a platform has opened one); `anchor` is the front door's note of where the chain's
    opening message is, stored with the chain so a restart finds it again."""

    platform: str
    question: Question
    asker: str
    channel: str = ""
    thread: str = ""
    workspace: str = ""
    anchor: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        # Every platform's question comes through here: cleaned once, it can be stored, sent to
        # the model server and quoted back without anything failing on it further on.
        text = clean_text(self.question.text)
        if text != self.question.text:
            object.__setattr__(self, "question", replace(self.question, text=text))


AskerKey = tuple[str, str]  # (platform, asker)
ThreadKey = tuple[str, str]  # (platform, thread)


class Admission:
    """A question admitted before its chain starts. `take` hands its slot to the chain;
    `release` gives the slot (and the thread) back when the chain never starts."""

    def __init__(self, gate: Gate, request: ChainRequest, language: Language) -> None:
        self._gate = gate
        self.request = request
        self.language: Language = language
        self.open = True
        self.stop_requested = False  # Stop pressed before the chain started
        self.held = False  # a shared store holds it too (`Store.hold`), until the chain starts
        self.at: float | None = None  # when the Gate counted it against the rate
        self._thread: ThreadKey | None = None

    def hold_thread(self, thread: str) -> None:
        """The chain will run in `thread` (known only once a platform has opened it)."""
        key = (self.request.platform, thread)
        if thread and self._thread != key:
            self._gate.release_thread(self._thread, self.request.question.id)
            self._thread = key
            self._gate.threads[key] = self.request.question.id

    def take(self) -> ThreadKey | None:
        """The chain has started: its slot and thread are the chain's now."""
        self.open = False
        return self._thread

    def release(self) -> None:
        if self.open:
            self.open = False
            self._gate.uncount((self.request.platform, self.request.asker))
            self._gate.release_thread(self._thread, self.request.question.id)

    def withdraw(self) -> None:
        """Not admitted after all (refused over every process): released, and no longer
        counted against the asker's rate either, as a question refused here is not."""
        self.release()
        self._gate.uncount_time((self.request.platform, self.request.asker), self.at)


class Gate:
    """The counters the rules need, shared by every front door of one process.

    Per-asker state is kept only while it matters: a count while the asker has a chain (or an
    admission) open, the times of their questions while one is inside the rate window. Each
    asker ever seen would otherwise stay for good (100k askers held ~100 MB)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        # A defaultdict so that reading an asker with nothing open gives 0; an entry is
        # removed as soon as its count is back to 0.
        self.per_user: dict[AskerKey, int] = defaultdict(int)
        self.recent: dict[AskerKey, deque[float]] = {}
        self.threads: dict[ThreadKey, str] = {}  # thread -> the chain (or admission) in it
        self.accepting = True
        self._sweep_at = SWEEP_FLOOR

    def busy(self, platform: str, thread: str) -> bool:
        return bool(thread) and (platform, thread) in self.threads

    def refusal(self, request: ChainRequest, language: Language) -> str | None:
        """Why this question is not taken now, or None. Checked before anything is posted."""
        s = self.settings
        text = request.question.text.strip()
        if not self.accepting:
            return say("not_accepting", language)
        if not visible(text):
            return say("empty", language)
        if len(text) > s.max_question_chars:
            return say("too_long", language, n=f"{len(text):,}",
                       limit=f"{s.max_question_chars:,}")
        if s.allowed_users and request.asker not in s.allowed_users:
            return say("user_not_allowed", language)
        if s.allowed_channels and request.channel not in s.allowed_channels:
            return say("channel_not_allowed", language)
        if s.allowed_teams and request.workspace not in s.allowed_teams:
            return say("team_not_allowed", language)
        if self.busy(request.platform, request.thread):
            return say("busy", language)
        key = (request.platform, request.asker)
        n = self.per_user.get(key, 0)  # looking must not add an entry
        if n >= s.user_concurrency:
            return say("too_many_one", language) if n == 1 else say("too_many", language, n=n)
        recent = self.recent.get(key)
        if recent is None:
            return None
        now = self.clock()
        _forget_old(recent, now)
        if not recent:
            del self.recent[key]
            return None
        if len(recent) >= s.user_rate_per_minute:
            return too_fast(s.user_rate_per_minute, now - recent[0], language)
        return None

    def admit(self, request: ChainRequest, language: Language) -> Admission:
        reason = self.refusal(request, language)
        if reason is not None:
            raise Refused(reason)
        key = (request.platform, request.asker)
        now = self.clock()
        self.recent.setdefault(key, deque()).append(now)
        self.per_user[key] += 1
        if len(self.recent) > self._sweep_at:
            self._sweep(now)
        admission = Admission(self, request, language)
        admission.at = now
        admission.hold_thread(request.thread)
        return admission

    def count_resumed(self, platform: str, asker: str, thread: str, chain_id: str) -> None:
        """A chain resumed after a restart holds its asker's slot and its thread again."""
        self.per_user[(platform, asker)] += 1
        if thread:
            self.threads[(platform, thread)] = chain_id

    def finished(self, platform: str, asker: str, thread: ThreadKey | None,
                 chain_id: str) -> None:
        self.uncount((platform, asker))
        self.release_thread(thread, chain_id)

    def uncount(self, key: AskerKey) -> None:
        """One of the asker's chains (or admissions) is over."""
        n = self.per_user.get(key, 0) - 1
        if n > 0:
            self.per_user[key] = n
        else:
            self.per_user.pop(key, None)

    def uncount_time(self, key: AskerKey, at: float | None) -> None:
        recent = self.recent.get(key)
        if recent is not None and at is not None and at in recent:
            recent.remove(at)
            if not recent:
                del self.recent[key]

    def _sweep(self, now: float) -> None:
        """Drop the question times of askers with none inside the rate window. Run when the
        table has doubled since the last sweep, so its cost is spread over the admissions
        that grew it: O(1) per admission on average, and about twice the askers of the last
        minute held at most."""
        for key in [k for k, times in self.recent.items() if now - times[-1] > RATE_WINDOW]:
            del self.recent[key]
        self._sweep_at = max(SWEEP_FLOOR, 2 * len(self.recent))

    def release_thread(self, thread: ThreadKey | None, chain_id: str) -> None:
        if thread is not None and self.threads.get(thread) == chain_id:
            del self.threads[thread]


def too_fast(rate: int, oldest_age: float, language: Language) -> str:
    """PONDER_USER_RATE met: `rate` questions within the window, the oldest `oldest_age`
    seconds ago (its leaving the window frees the next one)."""
    return say("too_fast", language, n=rate, s=int(RATE_WINDOW - oldest_age) + 1)


def shared_refusal(taken: Taken, language: Language) -> str:
    """The same rules counted over every process of a shared store: the asker's chains
    running (or admitted) anywhere, their questions within the rate window anywhere, or a
    chain in the thread elsewhere. The Gate counts this process's alone; `Store.hold` counts
    them all at admission (`Ponder.enter`, `Ponder.follow_up`), and `Store.start_chain` once
    more as the chain starts."""
    if taken.what == "thread":
        return say("busy", language)
    if taken.what == "rate":
        return too_fast(taken.limit, taken.age, language)
    n = taken.running
    return say("too_many_one", language) if n == 1 else say("too_many", language, n=n)


def _forget_old(times: deque[float], now: float) -> None:
    while times and now - times[0] > RATE_WINDOW:
        times.popleft()
