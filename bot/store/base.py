"""What every store is: the records, the errors, and the `Store` interface both back ends
(SQLite, PostgreSQL) implement.

`Store(where)` opens the back end `where` names (an SQLite path, or a `postgresql://` URL), as
`open_store(settings)` does; a subclass is built directly (`SqliteStore(path)`).

A store shared by several processes (`shared`) also holds what makes them one bot: each
running chain has a lease (the process that runs it, until when), so a chain is run by one
process and resumed by exactly one other when its process dies; a chain starts only within
its asker's limit and its thread's one-at-a-time rule counted over every process (`Claim`);
and a Stop reaches a chain whichever process runs it (`request_stop`, `listen_stops`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from bot.errors import PonderError
from bot.events import Language, Turn

log = logging.getLogger("bot.store")

# Chains removed per transaction when pruning: running chains' writes get their turn between.
PRUNE_BATCH = 500


@dataclass(slots=True)
class ChainRecord:
    id: str
    platform: str
    question: str
    mode: str
    workspace: str = ""
    channel: str = ""
    thread: str = ""
    asker: str = ""
    status: str = "running"
    reason: str | None = None
    answer: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    total_seconds: float | None = None
    # Message handles keyed by slot (`step:2`, `answer`, ...); a chain stored before slots
    # existed has its flat list under "" (what each showed is then read back, not known).
    handles: dict[str, list[Any]] = field(default_factory=dict)
    history: list[Turn] = field(default_factory=list)
    language: Language = "en"
    anchor: dict[str, Any] = field(default_factory=dict)
    delivery: str = "done"  # 'owed' while final texts wait for the platform; 'expired'
    owed: list[dict[str, Any]] = field(default_factory=list)  # Owed.as_json() each


@dataclass(frozen=True, slots=True)
class StepRecord:
    index: int
    title: str
    content: str
    seconds: float


# An answer's feedback: 👍 or 👎.
Vote = Literal["up", "down"]
# What a vote did: the voter's first on that answer, a change of their earlier one, the same
# again (nothing changes), or no such chain (pruned, forgotten, never stored).
Voted = Literal["new", "changed", "same", "unknown"]


@dataclass(frozen=True, slots=True)
class ChainTally:
    """One chain as `ponder stats` counts it."""

    started_at: float
    platform: str
    status: str
    steps: int
    total_seconds: float | None
    up: int
    down: int


@dataclass(frozen=True, slots=True)
class Removed:
    """What `prune` or `forget` took out of the store."""

    chains: int = 0
    steps: int = 0
    events: int = 0  # event ids (prune)
    running: int = 0  # running chains of the user, which `forget` keeps unless forced
    rewritten: int = 0  # other askers' chains whose history quoted a removed turn (forget)


@dataclass(frozen=True, slots=True)
class Claim:
    """A chain started on a shared store: run by `owner` (this process) for `seconds` at a
    time (renewed while it runs), and only while its asker has fewer than `user_limit` chains
    running in any process and its thread none."""

    owner: str
    seconds: float
    user_limit: int


@dataclass(frozen=True, slots=True)
class Hold:
    """A question admitted on a shared store, before its chain starts: it counts as one of
    its asker's chains (and holds its thread) in every process until the chain starts under
    the same id, `unhold` gives it up, or its lease (owner, seconds: renewed like a chain's)
    runs out; and against `rate` questions per `window` seconds while it is inside it."""

    id: str
    platform: str
    asker: str
    thread: str
    owner: str
    seconds: float
    user_limit: int
    rate: int
    window: float


class StoreFailed(PonderError):
    """A write the database did not take (its disk is full, it became read-only, an I/O
    error, the server went away); `cause` is the database's own words."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"the store could not be written ({cause})")
        self.cause = cause


class Taken(PonderError):
    """A question a shared store would not take: its asker has `running` chains already
    (`what == "user"`), or its thread has one (`what == "thread"`), in some process; or
    (`what == "rate"`, at admission) its asker asked `running` questions, `limit` allowed,
    within the window, the oldest of them `age` seconds ago."""

    def __init__(self, what: Literal["user", "thread", "rate"], running: int = 1, *,
                 limit: int = 0, age: float = 0.0) -> None:
        super().__init__(f"the {what} has {running} chain(s) running already"
                         if what != "rate" else f"{running} questions within the window")
        self.what: Literal["user", "thread", "rate"] = what
        self.running = running
        self.limit = limit
        self.age = age


class Store(ABC):
    """The interface every back end implements (`bot/store/sqlite.py`,
    `bot/store/postgres.py`); `Store(where)` opens the one `where` names."""

    # Several processes share it: leases, cross-process limits and stops are live.
    shared: bool = False
    # Every back end, as it is defined (`bot/store/__init__.py` imports them all).
    backends: ClassVar[list[type[Store]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Store.backends.append(cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> Store:
        if cls is Store:
            return super().__new__(backend_for(args[0] if args else kwargs["where"]))
        return super().__new__(cls)

    @classmethod
    def opens(cls, where: str | Path) -> bool:
        """Whether this back end is the one `where` (PONDER_DB) names."""
        return False

    @abstractmethod
    async def open(self) -> None:
        """Open (and upgrade) the database and check it takes a write: a store that cannot
        is a setting to fix (`SettingsError` naming PONDER_DB), not a traceback."""
        ...

    @abstractmethod
    async def close(self) -> None:
        ...

    # --- chains ----------------------------------------------------------------------------

    @abstractmethod
    async def start_chain(self, record: ChainRecord, claim: Claim | None = None) -> None:
        """Record a new chain. With a `claim` on a shared store: held by its owner, and
        refused with `Taken` when its asker or thread is busy in any process."""
        ...

    @abstractmethod
    async def add_step(self, chain_id: str, step: StepRecord) -> None:
        ...

    @abstractmethod
    async def finish_chain(self, chain_id: str, status: str, *, answer: str | None = None,
                           reason: str | None = None, total_seconds: float | None = None) -> None:
        ...

    @abstractmethod
    async def set_handles(self, chain_id: str, handles: dict[str, list[Any]]) -> None:
        ...

    @abstractmethod
    async def set_owed(self, chain_id: str, owed: list[dict[str, Any]],
                       delivery: str | None = None, *, owner: str = "",
                       seconds: float = 0.0) -> None:
        """What of a chain the platform has still to take; `delivery` 'owed' while there is
        any, 'done' once there is none, or 'expired' when it was given up on. With an `owner`
        (a shared store): its delivery is held by that process for `seconds`, renewed with
        its chains (`claim_owed` hands it to another one only once that lease ran out)."""
        ...

    @abstractmethod
    async def chains_owing(self) -> list[ChainRecord]:
        ...

    @abstractmethod
    async def chain(self, chain_id: str) -> ChainRecord | None:
        ...

    @abstractmethod
    async def chains_with_status(self, *statuses: str) -> list[ChainRecord]:
        ...

    @abstractmethod
    async def steps(self, chain_id: str) -> list[StepRecord]:
        ...

    @abstractmethod
    async def history(self, platform: str, thread: str) -> tuple[Turn, ...]:
        """Earlier questions of a thread with their final answers (not the steps)."""
        ...

    @abstractmethod
    async def thread_asker(self, platform: str, thread: str) -> str | None:
        """The asker of the thread's first chain, when Ponder runs chains in that thread."""
        ...

    # --- feedback and stats ----------------------------------------------------------------

    @abstractmethod
    async def vote(self, chain_id: str, platform: str, voter: str, vote: Vote) -> Voted:
        """Record `voter`'s vote on a chain's answer, atomically: one vote per person per
        answer, a second one replaces the first (`bot/feedback.py` is the rule's home)."""
        ...

    @abstractmethod
    async def votes(self, chain_id: str) -> dict[Vote, int]:
        """How many 👍 and 👎 a chain's answer has now."""
        ...

    @abstractmethod
    async def tallies(self, since: float) -> list[ChainTally]:
        """Every chain started at or after `since` (epoch seconds), oldest first, with its
        step count and votes."""
        ...

    # --- several processes -----------------------------------------------------------------

    @abstractmethod
    async def claim_interrupted(self, platform: str, owner: str, seconds: float,
                                skip: frozenset[str] = frozenset()) -> list[ChainRecord]:
        """Chains of `platform` left running by a process that is gone (not in `skip`), now
        held by `owner` for `seconds`: each is handed to exactly one caller."""
        ...

    @abstractmethod
    async def hold(self, hold: Hold) -> None:
        """Admit a question counted over every process: its asker's running chains and held
        questions, its thread's, and its asker's questions within the rate window; held
        (`Hold`) when admitted, else `Taken` saying which limit it met, nothing held."""
        ...

    @abstractmethod
    async def unhold(self, chain_id: str) -> None:
        """A held question whose chain will not start: its slot and thread are free again
        (it still counts against the rate, as it was asked)."""
        ...

    @abstractmethod
    async def claim_owed(self, platform: str, owner: str, seconds: float,
                         skip: frozenset[str] = frozenset()) -> list[ChainRecord]:
        """Chains of `platform` with final texts still owed (`delivery = 'owed'`) that no
        live process is delivering (not in `skip`), now held by `owner` for `seconds`: each
        is handed to exactly one caller, who delivers them."""
        ...

    @abstractmethod
    async def renew(self, owner: str, seconds: float) -> list[str]:
        """Extend the leases of `owner`'s running chains, held questions and owed deliveries;
        the ids of its chains someone asked, from any process, to stop."""
        ...

    @abstractmethod
    async def release(self, owner: str) -> None:
        """`owner` is leaving: the chains it leaves running, and the deliveries it still owes,
        are free for another process at once; its held questions are let go."""
        ...

    @abstractmethod
    async def running_elsewhere(self, platform: str, thread: str, owner: str) -> str | None:
        """The id of a chain another process runs in this thread now, if any."""
        ...

    @abstractmethod
    async def request_stop(self, chain_id: str) -> bool:
        """Ask whichever process runs this chain to stop it; False when it is not running."""
        ...

    @abstractmethod
    async def listen_stops(self, stop: Callable[[str], None]) -> None:
        """Call `stop(chain_id)` for each Stop asked anywhere, as it is asked."""
        ...

    # --- de-duplication and small state ----------------------------------------------------

    @abstractmethod
    async def first_sight(self, event_id: str, keep_seconds: float = 3600.0) -> bool:
        """True the first time an event id is seen (within `keep_seconds`), by any process
        sharing the store; False after."""
        ...

    @abstractmethod
    async def get(self, key: str) -> str | None:
        ...

    @abstractmethod
    async def put(self, key: str, value: str) -> None:
        ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        ...

    # --- installs by OAuth (an app in many workspaces) -------------------------------------

    @abstractmethod
    async def save_installation(self, platform: str, workspace: str, data: str) -> None:
        """Keep (or replace) a workspace's installation: `data` is the platform library's own
        description of it, as JSON (tokens included)."""
        ...

    @abstractmethod
    async def installation(self, platform: str, workspace: str) -> str | None:
        ...

    @abstractmethod
    async def delete_installation(self, platform: str, workspace: str) -> bool:
        """Forget a workspace's installation (uninstalled, tokens revoked); False when there
        was none."""
        ...

    @abstractmethod
    async def issue_state(self, state: str, expires_at: float) -> None:
        """Remember an install link's state until `expires_at` (epoch seconds)."""
        ...

    @abstractmethod
    async def consume_state(self, state: str) -> bool:
        """True once for a state issued and not yet expired, in whichever process asks
        first; False after, and for one never issued."""
        ...

    # --- chains that could not be saved, retention, forgetting -----------------------------

    @abstractmethod
    async def abandon(self, chain_id: str, cause: str) -> None:
        """A chain that could not be saved ends here: marked failed, so that nothing resumes
        it (its thread already says it could not be saved). Never raises: a mark the store
        refuses too is held and written as soon as it takes writes again."""
        ...

    @abstractmethod
    async def prune(self, days: float) -> Removed:
        """Remove chains finished more than `days` ago, with their steps, the delivery state
        they kept and their kv rows, and event ids as old. Running chains stay, however old."""
        ...

    @abstractmethod
    async def forget(self, asker: str, platform: str | None = None, *,
                     force: bool = False) -> Removed:
        """Remove every chain `asker` started (follow-ups are chains too) with its steps,
        answer, delivery state, language, anchor and kv rows, and take their turns out of the
        history other askers' chains in the same threads quoted. With a chain of theirs still
        marked running, nothing is removed (`Removed.running` says how many) unless `force`."""
        ...


def is_postgres(where: str | Path) -> bool:
    return str(where).startswith(("postgresql://", "postgres://"))


def backend_for(where: str | Path) -> type[Store]:
    for backend in Store.backends:
        if backend.opens(where):
            return backend
    raise ValueError(f"no store back end opens {str(where).partition('://')[0]}")


def record_of(row: tuple[Any, ...] | Any) -> ChainRecord:
    """A chain as `CHAIN_COLUMNS` read it, on either back end."""
    record = ChainRecord(*tuple(row[:14]))
    handles = json.loads(row[14])
    record.handles = handles if isinstance(handles, dict) else {"": handles}
    record.history = [Turn(q, a) for q, a in json.loads(row[15])]
    record.language = "zh" if row[16] == "zh" else "en"
    record.anchor = json.loads(row[17])
    record.delivery, record.owed = row[18], json.loads(row[19])
    return record


TALLY_QUERY = (
    "SELECT c.started_at, c.platform, c.status,"
    " (SELECT count(*) FROM steps s WHERE s.chain_id = c.id), c.total_seconds,"
    " (SELECT count(*) FROM feedback f WHERE f.chain_id = c.id AND f.vote = 'up'),"
    " (SELECT count(*) FROM feedback f WHERE f.chain_id = c.id AND f.vote = 'down')"
    " FROM chains c WHERE c.started_at >= {since} ORDER BY c.started_at")


def tally_of(row: tuple[Any, ...] | Any) -> ChainTally:
    return ChainTally(float(row[0]), str(row[1]), str(row[2]), int(row[3]),
                      None if row[4] is None else float(row[4]), int(row[5]), int(row[6]))


CHAIN_COLUMNS = ("id, platform, question, mode, workspace, channel, thread, asker, status,"
                 " reason, answer, started_at, finished_at, total_seconds, handles, history,"
                 " language, anchor, delivery, owed")


def history_json(history: list[Turn]) -> str:
    return json.dumps([[t.question, t.answer] for t in history], ensure_ascii=False)


def unquoted(history: str, turns: set[tuple[str, str | None]]) -> str | None:
    """A chain's stored history without the removed `turns`; None when it quoted none."""
    quoted = json.loads(history)
    kept = [turn for turn in quoted if (turn[0], turn[1]) not in turns]
    return json.dumps(kept, ensure_ascii=False) if len(kept) != len(quoted) else None


async def keep_pruned(store: Store, days: float, every: float) -> None:
    """`PONDER_RETENTION_DAYS` at work: prune now, then every `every` seconds, until cancelled
    (an owned task of the running service)."""
    while True:
        try:
            removed = await store.prune(days)
        except StoreFailed:
            pass  # the store has said why; the next round tries again
        except Exception:
            log.exception("retention: pruning failed; trying again in %.0f s", every)
        else:
            if removed.chains or removed.events:
                log.info("retention: removed %d chains (%d steps) finished over %g days ago "
                         "and %d event ids", removed.chains, removed.steps, days, removed.events)
        await asyncio.sleep(every)
