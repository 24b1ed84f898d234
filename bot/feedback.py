"""Feedback on answers, the one rule for every platform: 👍 or 👎 under each final answer, one
vote per person per answer; a second press of the other button changes the vote, the same
button again changes nothing. Votes are stored with the chain (`Store.vote`, atomic on both
back ends) and counted in `ponder_feedback_total{platform,vote}`; `ponder stats` sums them.

The front doors only draw the buttons (`adapters/*/feedback.py`) and hand each press here.
"""

from __future__ import annotations

import logging

from bot.metrics import FEEDBACK
from bot.store import Store, Vote, Voted

log = logging.getLogger(__name__)

VOTES: tuple[Vote, ...] = ("up", "down")


def as_vote(value: str) -> Vote | None:
    """A button's vote, or None for anything else (a forged or outdated custom id)."""
    return "up" if value == "up" else "down" if value == "down" else None


async def cast(store: Store, chain_id: str, platform: str, voter: str, vote: Vote) -> Voted:
    """Record a press. Raises `StoreFailed` when the store refuses it (the front door says
    so to the voter; nothing was counted)."""
    voted = await store.vote(chain_id, platform, voter, vote)
    if voted in ("new", "changed"):
        FEEDBACK.labels(platform, vote).inc()
    log.info("feedback on %s by %s: %s (%s)", chain_id, voter, vote, voted)
    return voted
