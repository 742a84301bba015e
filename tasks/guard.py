"""Stage 3, guard: the checks a plan must pass before any order.

The rules are pure functions in :mod:`harvest.domain.guard_rules` (their order and reasons are
listed there); :func:`harvest.services.guard.guard_plan` does the venue reads and the one
transition; this task reads the plan and calls it:

1. state is PROPOSED (else a repeat delivery: nothing to do);
2. the plan, its position's book entry and the symbol's cached market state in one round
   trip; the position and the symbol filters from the venue (a venue that does not answer:
   retried every second until the TTL, then EXPIRED ``venue_unavailable``);
3. :func:`harvest.domain.guard_rules.verdict`: a :class:`~harvest.domain.guard_rules.Block` ends the plan
   REJECTED or EXPIRED with its reason (counted ``guard:<reason>``);
4. trading state (:func:`harvest.domain.trading.order_refusal`, read with the plan): HALTED → REJECTED ``halted``
   (tried again by its lineage once trading resumes); SHADOW (or ``HARVEST_MODE=shadow``) →
   SHADOWED ``shadow_mode`` (what would have been sent is recorded);
5. otherwise APPROVED with the exact order quantity / stop price, taking the position's
   in-flight lock in the same compare-and-set; while another plan holds it the plan stays
   PROPOSED and the guard retries (1 s) until the TTL, then EXPIRED ``position_busy``.
"""

from __future__ import annotations

from typing import Any

from harvest.services.guard import Guarded, guard_plan
from tasks.app import app
from tasks.common import contract


@app.task(bind=True, **contract("harvest.guard", acks_late=True, max_retries=None))
def guard(self: Any, ref: dict[str, Any] | None) -> dict[str, Any] | None:
    """ref: ``{"plan_id": …}``. Returns the ref when APPROVED, else None (blocked, shadowed,
    expired or a repeat). Retries (1 s) while another plan holds the position, up to the TTL."""
    plan, entry, market, trading = self.plan_and_book(ref)  # one round trip, trading states included
    if plan is None:
        return None
    out = guard_plan(self.rt, plan, entry, market, trading, ref)
    if out.kind is Guarded.RETRY:
        raise self.retry(countdown=out.retry_in, exc=out.error)
    return out.ref()
