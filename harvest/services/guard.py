"""The guard's service (stage 3): a PROPOSED plan, read with its book entry, market state and
the trading states, becomes APPROVED with the exact order, or ends with the rule's reason.
The rules are pure (:mod:`harvest.domain.guard_rules`, :func:`harvest.domain.trading.order_refusal`);
this module does the venue reads and the one transition, and returns a :class:`GuardOutcome`."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from harvest.domain.guard_rules import VIEW_DISAGREES, Block, GuardContext, verdict
from harvest.domain.models import MarketState, Plan, PlanState
from harvest.domain.trading import order_refusal
from harvest.services.rejected import account_runtime
from harvest.services.runtime import Runtime
from harvest.store.streams import StreamCache
from harvest.venues.base import VenueError

#: How long the guard waits before it looks again at a busy position or a venue that did not answer (s).
GUARD_RETRY_S = 1.0


class Guarded(enum.Enum):
    """What the guard made of a plan (:class:`GuardOutcome`)."""

    APPROVED = "approved"  # APPROVED with the exact order, the position's in-flight lock taken
    REFUSED = "refused"  # ended REJECTED or EXPIRED with ``reason`` (counted ``guard:<reason>``)
    SHADOWED = "shadowed"  # ended SHADOWED: what would have been sent is recorded
    RETRY = "retry"  # still PROPOSED: look again in ``retry_in`` s (busy position, venue silent)
    REPEAT = "repeat"  # not PROPOSED (a repeat delivery) or approved elsewhere: nothing done


@dataclass(frozen=True)
class GuardOutcome:
    """The guard's outcome for one plan: ``kind``, ``plan_id``, ``reason`` (REFUSED:
    the rule's reason), ``retry_in`` (s, RETRY) and ``error`` (the venue's, RETRY after one)."""

    kind: Guarded
    plan_id: str
    reason: str = ""
    retry_in: float = 0.0
    error: Exception | None = field(default=None, compare=False)

    def ref(self) -> dict[str, Any] | None:
        """The ref handed to execute: ``{"plan_id"}`` when APPROVED, else None."""
        return {"plan_id": self.plan_id} if self.kind is Guarded.APPROVED else None


def _block(rt: Runtime, plan: Plan, b: Block) -> GuardOutcome:
    """The one denial path: count the reason and end the plan. A reason that says the plan's
    view of the position was not the exchange's (:data:`VIEW_DISAGREES`) also asks for the
    account's stream cache to be audited now."""
    rt.counters.count(f"guard:{b.reason}")
    if b.reason in VIEW_DISAGREES:
        StreamCache(rt.r, rt.settings.namespace, plan.account).request_audit()
    rt.plans.transition(plan.plan_id, b.to, b.reason, data={"guard": b.reason, **b.data})
    return GuardOutcome(Guarded.REFUSED, plan.plan_id, b.reason)


def _retry_or_expire(rt: Runtime, plan: Plan, reason: str, e: VenueError | None = None) -> GuardOutcome:
    """Look again in :data:`GUARD_RETRY_S` while the TTL allows, else end EXPIRED ``reason``."""
    if time.time() + GUARD_RETRY_S < plan.expires_at:
        return GuardOutcome(Guarded.RETRY, plan.plan_id, reason, GUARD_RETRY_S, e)
    return _block(rt, plan, Block(PlanState.EXPIRED, reason, {"code": e.code} if e is not None else {}))


def guard_plan(
    rt: Runtime,
    plan: Plan,
    entry: dict[str, Any] | None,
    market: MarketState | None,
    trading: dict[str, str],
    payload: Any,
) -> GuardOutcome:
    """Guard ``plan`` (read with its position's book ``entry``, its symbol's cached ``market``
    state and the ``trading`` states, ``{"*" or account: state}``, in one round trip);
    ``payload``: the message, recorded if it names an account not managed here.

    1. not PROPOSED → REPEAT (counted ``guard:not_proposed``); an unknown account → REJECTED;
    2. the position and the symbol filters from the plan's account's venue (no answer: RETRY
       every second until the TTL, then EXPIRED ``venue_unavailable``);
    3. :func:`harvest.domain.guard_rules.verdict` — a Block ends the plan with its reason;
    4. the trading state in force (:func:`harvest.domain.trading.order_refusal`): HALTED →
       REJECTED ``halted``; SHADOW → SHADOWED ``shadow_mode``;
    5. APPROVED with the exact order, taking the position's in-flight lock in the same
       compare-and-set; another plan holding it → RETRY until the TTL, then EXPIRED
       ``position_busy``."""
    if plan.state != PlanState.PROPOSED:
        rt.counters.count("guard:not_proposed")
        return GuardOutcome(Guarded.REPEAT, plan.plan_id)
    acct_rt = account_runtime(rt, "guard", payload, plan.account)
    if acct_rt is None:
        return _block(rt, plan, Block(PlanState.REJECTED, "unknown_account"))
    return _guard_on_account(acct_rt, plan, entry, market, trading)


def _guard_on_account(
    rt: Runtime, plan: Plan, entry: dict[str, Any] | None, market: MarketState | None, trading: dict[str, str]
) -> GuardOutcome:
    """:func:`guard_plan` from step 2, ``rt`` the plan's account's runtime."""
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
            return _retry_or_expire(rt, plan, "venue_unavailable", e)
    out = verdict(plan, vp, entry, f, market, ctx)
    if isinstance(out, Block):
        return _block(rt, plan, out)
    if out.note:
        rt.counters.count(f"guard:{out.note}")
    refusal = order_refusal(trading, plan.account, s.mode)
    if refusal == "halted":
        return _block(rt, plan, Block(PlanState.REJECTED, "halted", {"trading": "HALTED"}))
    if refusal == "shadow_mode":
        rt.counters.count("guard:shadow_mode")
        rt.plans.transition(
            plan.plan_id,
            PlanState.SHADOWED,
            "shadow_mode",
            data={"guard": "shadow_mode", **out.data},
            fields=out.fields,
        )
        return GuardOutcome(Guarded.SHADOWED, plan.plan_id, "shadow_mode")
    # The in-flight lock is taken by the approval itself (one script: approved ⇔ locked).
    ok, before = rt.plans.transition(
        plan.plan_id,
        PlanState.APPROVED,
        out.note or "guard_passed",
        data={"guard": "passed", **out.data},
        fields=out.fields,
        lock_ttl_s=s.plan_ttl_s,
    )
    if ok:
        return GuardOutcome(Guarded.APPROVED, plan.plan_id)
    if before == PlanState.PROPOSED:  # still PROPOSED, not approved: another plan holds the position
        rt.counters.count("guard:position_busy")
        return _retry_or_expire(rt, plan, "position_busy")
    return GuardOutcome(Guarded.REPEAT, plan.plan_id)
