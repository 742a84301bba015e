"""Stage 3, guard: the checks a plan must pass before any order, in this order.

1. state is PROPOSED (else a repeat delivery: nothing to do);
2. plan within its TTL (else EXPIRED ``plan_ttl_expired``);
3. symbol on the allowlist (else REJECTED ``symbol_not_allowed``);
4. the position exists with qty > 0 (else REJECTED ``ghost_position``), on the plan's side
   (else REJECTED ``side_mismatch``: a close must never be sent the wrong way) and is the
   same epoch (else REJECTED ``epoch_changed``);
5. closes: qty = remaining × fraction rounded *down* to stepSize; a remainder that would be
   dust (below minQty, or notional below minNotional) is folded into a full close; a qty below
   minQty after rounding is REJECTED ``below_min_qty``. Stop moves: the stop rounded to
   tickSize toward entry must tighten the stop in force (else REJECTED ``stop_not_tighter``)
   and stay on the loss side of the mark (else REJECTED ``stop_through_mark``);
6. shadow mode: SHADOWED ``shadow_mode`` (what would have been sent is recorded);
7. otherwise APPROVED with the exact order quantity / stop price, taking the position's
   in-flight lock in the same compare-and-set; while another plan holds it the plan stays
   PROPOSED and the guard retries (1 s) until the TTL, then EXPIRED ``position_busy``.

The plan and its position's book entry are read in one round trip.
"""

from __future__ import annotations

import time
from decimal import Decimal

from harvest.book import is_new_epoch
from harvest.data import SymbolFilters
from harvest.models import Action, Plan, Side
from harvest.runtime import Runtime, get_runtime
from harvest.venue import VenueError, VenuePosition
from tasks.app import app
from tasks.common import load_plan_and_book


def _block(rt: Runtime, plan: Plan, to: str, reason: str, data: dict | None = None) -> None:
    rt.plans.count(f"guard:{reason}")
    rt.plans.transition(plan.plan_id, to, reason, data={"guard": reason, **(data or {})})


def close_quantity(f: SymbolFilters, plan: Plan, vp: VenuePosition) -> tuple[Decimal | None, str]:
    """Order qty (Decimal, a stepSize multiple) for a close plan and a note
    (``""``, ``dust_folded`` or the block reason ``below_min_qty`` with qty None)."""
    pos_q = Decimal(str(vp.qty))
    if plan.action is Action.FULL_CLOSE_PROPOSED:
        q, note = f.round_qty(pos_q), ""
    else:
        q, note = f.round_qty(pos_q * Decimal(str(plan.close_fraction))), ""
        rest = pos_q - q
        if rest > 0 and (rest < f.min_qty or rest * Decimal(str(vp.mark_price)) < f.min_notional):
            q, note = f.round_qty(pos_q), "dust_folded"
    if q < f.min_qty or q <= 0:
        return None, "below_min_qty"
    return q, note


@app.task(name="harvest.guard", bind=True, max_retries=None)
def guard(self, ref: dict | None) -> dict | None:
    """ref: ``{"plan_id": …}``. Returns the ref when APPROVED, else None (blocked, shadowed,
    expired or a repeat). Retries (1 s) while another plan holds the position, up to the TTL."""
    rt = get_runtime()
    plan, entry = load_plan_and_book(rt, "guard", ref)
    if plan is None:
        return None
    pid = plan.plan_id
    if plan.state != "PROPOSED":
        rt.plans.count("guard:not_proposed")
        return None
    s = rt.settings
    if time.time() > plan.expires_at:
        _block(rt, plan, "EXPIRED", "plan_ttl_expired")
        return None
    if plan.symbol not in s.symbols:
        _block(rt, plan, "REJECTED", "symbol_not_allowed")
        return None
    try:
        vp = rt.venue.position(plan.symbol)
        f = rt.venue.filters(plan.symbol)
    except VenueError as e:
        if time.time() + 1.0 < plan.expires_at:
            raise self.retry(countdown=1.0, exc=e) from e
        _block(rt, plan, "EXPIRED", "venue_unavailable", {"code": e.code})
        return None
    if vp is None or vp.qty <= 0:
        _block(rt, plan, "REJECTED", "ghost_position")
        return None
    if vp.side is not plan.side:
        _block(rt, plan, "REJECTED", "side_mismatch", {"position_side": vp.side.value})
        return None
    if entry is None or entry["epoch"] != plan.epoch or is_new_epoch(vp, entry):
        _block(rt, plan, "REJECTED", "epoch_changed")
        return None

    fields: dict = {}
    data: dict = {"position_qty": vp.qty, "mark_price": vp.mark_price}
    if plan.action is Action.PROFIT_LOCK_SL:
        direction = "down" if plan.side is Side.LONG else "up"
        sp = f.round_price(plan.new_stop, direction)
        current = vp.stop_price if vp.stop_price is not None else entry["initial_stop"]
        if plan.side.sign * (float(sp) - current) <= 0:
            _block(rt, plan, "REJECTED", "stop_not_tighter", {"stop": str(sp), "current": current})
            return None
        if plan.side.sign * (vp.mark_price - float(sp)) <= 0:
            _block(rt, plan, "REJECTED", "stop_through_mark", {"stop": str(sp), "mark": vp.mark_price})
            return None
        fields["stop_price"] = f.fmt(sp)
        data["stop_price"] = fields["stop_price"]
    else:
        q, note = close_quantity(f, plan, vp)
        if q is None:
            _block(rt, plan, "REJECTED", note, data)
            return None
        fields["order_qty"] = f.fmt(q)
        data["order_qty"] = fields["order_qty"]
        if note:
            data["note"] = note
            rt.plans.count(f"guard:{note}")
    if s.mode == "shadow":
        rt.plans.count("guard:shadow_mode")
        rt.plans.transition(pid, "SHADOWED", "shadow_mode", data={"guard": "shadow_mode", **data}, fields=fields)
        return None
    # The in-flight lock is taken by the approval itself (one script: approved ⇔ locked).
    ok, before = rt.plans.transition(pid, "APPROVED", data.get("note", "guard_passed"),
                                     data={"guard": "passed", **data}, fields=fields, lock_ttl_s=s.plan_ttl_s)
    if ok:
        return {"plan_id": pid}
    if before == "PROPOSED":  # still PROPOSED, not approved: another plan holds the position
        rt.plans.count("guard:position_busy")
        if time.time() + 1.0 < plan.expires_at:
            raise self.retry(countdown=1.0)
        _block(rt, plan, "EXPIRED", "position_busy")
    return None
