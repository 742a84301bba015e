"""Stage 3, guard: the checks a plan must pass before any order.

The rules are pure functions in :mod:`harvest.domain.guard_rules` (their order and reasons are
listed there); this task does the reads and the one transition:

1. state is PROPOSED (else a repeat delivery: nothing to do);
2. the plan, its position's book entry and the symbol's cached market state in one round
   trip; the position and the symbol filters from the venue (a venue that does not answer:
   retried every second until the TTL, then EXPIRED ``venue_unavailable``);
3. :func:`harvest.domain.guard_rules.verdict`: a :class:`~harvest.domain.guard_rules.Block` ends the plan
   REJECTED or EXPIRED with its reason (counted ``guard:<reason>``);
4. trading state (:mod:`harvest.domain.trading`, read with the plan): HALTED → REJECTED ``halted``
   (tried again by its lineage once trading resumes); SHADOW (or ``HARVEST_MODE=shadow``) →
   SHADOWED ``shadow_mode`` (what would have been sent is recorded);
5. otherwise APPROVED with the exact order quantity / stop price, taking the position's
   in-flight lock in the same compare-and-set; while another plan holds it the plan stays
   PROPOSED and the guard retries (1 s) until the TTL, then EXPIRED ``position_busy``.
"""

from __future__ import annotations

import time

from harvest.domain.guard_rules import Block, GuardContext, verdict
from harvest.domain.models import Plan, PlanState
from harvest.domain.trading import effective
from harvest.services.runtime import Runtime
from harvest.venues.base import VenueError
from tasks.app import app
from tasks.common import contract


def _block(rt: Runtime, plan: Plan, b: Block) -> None:
    """The one denial path: count the reason and end the plan."""
    rt.plans.count(f"guard:{b.reason}")
    rt.plans.transition(plan.plan_id, b.to, b.reason, data={"guard": b.reason, **b.data})


@app.task(bind=True, **contract("harvest.guard", acks_late=True, max_retries=None))
def guard(self, ref: dict | None) -> dict | None:
    """ref: ``{"plan_id": …}``. Returns the ref when APPROVED, else None (blocked, shadowed,
    expired or a repeat). Retries (1 s) while another plan holds the position, up to the TTL."""
    rt = self.rt
    plan, entry, market = self.plan_and_book(ref)
    if plan is None:
        return None
    pid = plan.plan_id
    if plan.state != PlanState.PROPOSED:
        rt.plans.count("guard:not_proposed")
        return None
    acct_rt = self.for_account(plan.account, ref)
    if acct_rt is None:
        _block(rt, plan, Block(PlanState.REJECTED, "unknown_account"))
        return None
    rt = acct_rt
    s = rt.settings
    ctx = GuardContext(
        frozenset(s.symbols), s.theta_for(plan.symbol), time.time(), rt.market_now, s.account, s.market_stale_after_s
    )
    vp = f = None
    if time.time() <= plan.expires_at and plan.symbol in ctx.symbols:
        try:
            vp = rt.venue.position(plan.symbol)
            f = rt.venue.filters(plan.symbol)
        except VenueError as e:
            if time.time() + 1.0 < plan.expires_at:
                raise self.retry(countdown=1.0, exc=e) from e
            _block(rt, plan, Block(PlanState.EXPIRED, "venue_unavailable", {"code": e.code}))
            return None
    out = verdict(plan, vp, entry, f, market, ctx)
    if isinstance(out, Block):
        _block(rt, plan, out)
        return None
    if out.note:
        rt.plans.count(f"guard:{out.note}")
    trading = effective(rt.plans.last_trading, plan.account, s.mode)  # read with the plan, no extra round trip
    if trading == "HALTED":
        _block(rt, plan, Block(PlanState.REJECTED, "halted", {"trading": trading}))
        return None
    if trading == "SHADOW":
        rt.plans.count("guard:shadow_mode")
        rt.plans.transition(
            pid, PlanState.SHADOWED, "shadow_mode", data={"guard": "shadow_mode", **out.data}, fields=out.fields
        )
        return None
    # The in-flight lock is taken by the approval itself (one script: approved ⇔ locked).
    ok, before = rt.plans.transition(
        pid,
        PlanState.APPROVED,
        out.note or "guard_passed",
        data={"guard": "passed", **out.data},
        fields=out.fields,
        lock_ttl_s=s.plan_ttl_s,
    )
    if ok:
        return {"plan_id": pid}
    if before == PlanState.PROPOSED:  # still PROPOSED, not approved: another plan holds the position
        rt.plans.count("guard:position_busy")
        if time.time() + 1.0 < plan.expires_at:
            raise self.retry(countdown=1.0)
        _block(rt, plan, Block(PlanState.EXPIRED, "position_busy"))
    return None
