"""An answer is done only when the platform has it.

A final text the platform did not take (it was unreachable longer than the presenter's own
retries) is owed: kept in the store and written later, in order, with backoff, for up to
`PONDER_DELIVERY_HOURS` — without holding the asker's slot or any other chain. A message that
still exists is edited to its final text; one that never got posted (or was deleted) is posted
anew with a note that it comes late. A process that starts finds what an earlier one still
owed (`Ponder.recover`) and delivers it. Past the bound it is logged and counted
(`ponder_undelivered_total`), never dropped in silence.

With a store several processes share, each chain's owed texts are delivered by one process:
the one that owes them holds their lease (taken as they become owed, renewed with its chains);
another takes them over (`Store.claim_owed`) only once that lease has run out — its process
gone, or told to stop writing (`stop`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from bot.errors import SurfaceError
from bot.events import Language
from bot.metrics import OWED, UNDELIVERED
from bot.store import Store, StoreFailed
from bot.surface import Owed, Surface
from bot.tasks import Tasks
from bot.wording import say

log = logging.getLogger(__name__)

# Seconds between tries: doubling, capped low enough that an answer lands within seconds of
# the platform's return (measured: a 60 s cap left answers waiting ~56 s after a 60 s outage).
FIRST_WAIT, LONGEST_WAIT = 1.0, 10.0


# Who holds a delivery on a shared store, and for how long: (owner, seconds); None on a store
# of one process.
Lease = Callable[[], tuple[str, float] | None]


class Deliveries:
    def __init__(self, store: Store, hours: float, lease: Lease = lambda: None) -> None:
        self.store = store
        self.hours = hours
        self.lease = lease
        self._tasks = Tasks("delivery")
        self._owing: set[str] = set()  # chains this process is delivering

    def owing(self, chain_id: str) -> bool:
        return chain_id in self._owing

    def owing_now(self) -> frozenset[str]:
        """The chains this process is delivering."""
        return frozenset(self._owing)

    async def owe(self, chain_id: str, platform: str, surface: Surface, owed: Sequence[Owed],
                  language: Language, since: float | None = None) -> None:
        """Record what is owed and start delivering it (`since`: when it first was owed)."""
        await self._note(chain_id, owed)
        if chain_id in self._owing:
            return
        self._owing.add(chain_id)
        deadline = (since if since is not None else time.time()) + self.hours * 3600
        self._tasks.spawn(self._deliver(chain_id, platform, surface, list(owed), language,
                                        deadline), name=f"deliver-{chain_id}")

    async def close(self) -> None:
        """Stop trying (what is owed stays in the store for the next start)."""
        await self._tasks.close(0)

    async def stop(self) -> None:
        """Stop writing at once and leave what is owed to whichever process takes its lease
        over (this process's lease on it has lapsed); later deliveries are still taken."""
        if self._tasks:
            log.warning("delivery: stopped %d delivery(ies); another process takes them over",
                        len(self._tasks))
        await self._tasks.close(0)

    async def _deliver(self, chain_id: str, platform: str, surface: Surface, owed: list[Owed],
                       language: Language, deadline: float) -> None:
        OWED.inc()
        wait = FIRST_WAIT
        try:
            log.warning("chain %s: %d final text(s) owed to %s; delivering when it answers",
                        chain_id, len(owed), platform)
            while owed:
                item = owed[0]
                try:
                    await _write(surface, item, language)
                except SurfaceError as exc:
                    if exc.gone and item.handle is not None:
                        owed[0] = Owed(item.slot, None, item.text)  # post it anew instead
                        continue
                    if exc.never or time.time() >= deadline:
                        UNDELIVERED.labels(platform).inc()
                        await self._note(chain_id, owed, "expired")
                        log.error("chain %s: %s did not take %d final text(s) %s; given up "
                                  "(they stay in the store)", chain_id, platform, len(owed),
                                  f"({exc})" if exc.never else f"within {self.hours:g} h")
                        return
                    log.info("chain %s: %s still refuses (%s); again in %.0f s", chain_id,
                             platform, exc, wait)
                    await asyncio.sleep(min(wait, max(0.0, deadline - time.time())))
                    wait = min(wait * 2, LONGEST_WAIT)
                    continue
                owed.pop(0)
                wait = FIRST_WAIT
                await self._note(chain_id, owed)
            log.info("chain %s: delivered all that was owed", chain_id)
        finally:
            OWED.dec()
            self._owing.discard(chain_id)

    async def _note(self, chain_id: str, owed: Sequence[Owed], delivery: str | None = None
                    ) -> None:
        """Keep what is still owed in the store, for a later process. A store that refuses
        (it has logged why) leaves the delivery to this process alone: it goes on."""
        lease = self.lease()
        owner, seconds = lease if lease is not None else ("", 0.0)
        try:
            await self.store.set_owed(chain_id, [o.as_json() for o in owed], delivery,
                                      owner=owner, seconds=seconds)
        except StoreFailed:
            pass


async def _write(surface: Surface, item: Owed, language: Language) -> None:
    if item.handle is not None:
        await surface.budget.acquire(urgent=True)
        await surface.edit(item.handle, item.text)
        return
    note = surface.render(f"_{say('delayed', language)}_")
    text = f"{item.text}\n{note}"
    await surface.post_budget.acquire(urgent=True)
    await surface.post(text if len(text) <= surface.limits.max_chars else item.text)


def owed_of(record_owed: Sequence[dict[str, object]]) -> list[Owed]:
    """Owed texts as the store keeps them."""
    out = []
    for item in record_owed:
        handle = item.get("handle")
        if handle is not None and not isinstance(handle, str | int | dict):
            continue
        out.append(Owed(str(item.get("slot", "")), handle, str(item.get("text", ""))))
    return out
