"""The guard's rules: what a plan must pass before any order. Pure, no I/O.

Each rule is a named function of ``(plan, position as read, book entry, filters, market state,
context)`` that returns a :class:`Block` or None; :func:`verdict` runs them in order and, when
none blocks, sizes the order (quantity or stop price). There is one denial path: the guard
task writes the :class:`Block`'s target state and reason. A decision is never trusted: every
rule re-reads the position the venue reports and recomputes what the decision claims with the
kernel's own functions (never a second implementation of a rule).

Order of the rules (the first that blocks decides):

1. ``plan_ttl_expired`` (EXPIRED) — the plan's TTL passed before the guard ran;
2. ``symbol_not_allowed`` — the symbol is not on the allowlist;
3. ``ghost_position`` — no open position on the venue;
4. ``side_mismatch`` — the position is on the other side (a close must never go the wrong way);
5. ``epoch_changed`` — the position is another opening than the plan's;
6. by action:

   * partial: ``tier_harvested`` (the book says the tier is done), ``tier_not_reached`` (R_net
     re-read is more than ``guard_r_tolerance`` below the tier), then the quantity: the
     tier's fraction of the position (or the remainder an earlier attempt left), rounded
     down to stepSize, dust folded into a full close, ``below_min_qty`` when nothing is left;
   * full close: ``kill_not_confirmed`` unless the kill score recomputed from the cached market
     state (not a stale one) reaches the threshold, the mark is through the stop in force
     (``stop_breached``), or the position is older than ``max_hold_s`` (``time_stop``);
   * stop (profit lock, protect): the price rounded to tickSize toward the mark; ``already_protected``
     (protect: a working stop inside liquidation exists), ``stop_not_tighter`` (lock: must
     tighten the stop in force), ``stop_through_mark`` (at least one tick plus
     ``stop_min_distance`` of the mark on the loss side), ``no_stop_inside_liquidation``
     (beyond the liquidation price it would never trigger).

Rejections that cannot change in the epoch are listed in :data:`harvest.domain.plans.FINAL_REJECTIONS`
(the lineage ends); the others (``tier_not_reached``, ``kill_not_confirmed``) let a later
attempt try again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

from pydantic import ValidationError

from harvest.data import SymbolFilters
from harvest.domain.book import is_new_epoch, to_position
from harvest.domain.models import (
    STOP_ACTIONS,
    Action,
    HarvestTheta,
    MarketState,
    Plan,
    PlanState,
    Position,
    Side,
    VenuePosition,
)
from harvest.domain.policies import policy_for


@dataclass(frozen=True)
class Block:
    """A denial: the state the plan moves to (REJECTED or EXPIRED), the reason, and what the
    results stream records beside it."""

    to: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Approval:
    """A plan that passed: the plan fields to write (``order_qty`` or ``stop_price``, wire
    strings), the stream data, and a note (``dust_folded``) or ``""``."""

    fields: dict[str, str]
    data: dict[str, Any]
    note: str = ""


@dataclass(frozen=True)
class GuardContext:
    """What the rules read besides the plan: the allowlist, theta, wall time now (s), market
    time now (s; the kill score's age: a float, or a callable read only by the kill
    re-check, which spares the other plans a clock read), the account label."""

    symbols: frozenset[str]
    theta: HarvestTheta
    now: float
    market_now: float | Callable[[], float]
    account: str = "paper"
    market_stale_s: float = float("inf")

    def market_time(self) -> float:
        """Market time now (s)."""
        return self.market_now() if callable(self.market_now) else self.market_now


Rule = Callable[[Plan, "VenuePosition | None", "dict[str, Any] | None", GuardContext], "Block | None"]


def ttl(plan: Plan, vp: VenuePosition | None, entry: dict[str, Any] | None, c: GuardContext) -> Block | None:
    """EXPIRED ``plan_ttl_expired`` once the plan's TTL passed."""
    return Block(PlanState.EXPIRED, "plan_ttl_expired") if c.now > plan.expires_at else None


def allowlist(plan: Plan, vp: VenuePosition | None, entry: dict[str, Any] | None, c: GuardContext) -> Block | None:
    """REJECTED ``symbol_not_allowed`` for a symbol off the allowlist."""
    return Block(PlanState.REJECTED, "symbol_not_allowed") if plan.symbol not in c.symbols else None


def position_exists(
    plan: Plan, vp: VenuePosition | None, entry: dict[str, Any] | None, c: GuardContext
) -> Block | None:
    """REJECTED ``ghost_position`` when the venue reports no open position."""
    return Block(PlanState.REJECTED, "ghost_position") if vp is None or vp.qty <= 0 else None


def same_side(plan: Plan, vp: VenuePosition | None, entry: dict[str, Any] | None, c: GuardContext) -> Block | None:
    """REJECTED ``side_mismatch`` when the position is on the other side."""
    assert vp is not None
    return (
        Block(PlanState.REJECTED, "side_mismatch", {"position_side": vp.side.value})
        if vp.side is not plan.side
        else None
    )


def same_epoch(plan: Plan, vp: VenuePosition | None, entry: dict[str, Any] | None, c: GuardContext) -> Block | None:
    """REJECTED ``epoch_changed`` when the book's epoch is not the plan's or the venue shows
    another opening."""
    assert vp is not None
    if entry is None or entry.get("epoch") != plan.epoch or is_new_epoch(vp, entry):
        return Block(PlanState.REJECTED, "epoch_changed")
    return None


#: Blocks that say the position a plan was made from is not the exchange's (the scan's view, the
#: stream cache when ``harvest streams`` holds the account, missed a change): the guard asks
#: for that account's cache to be audited now (:meth:`harvest.store.streams.StreamCache.request_audit`).
VIEW_DISAGREES = frozenset({"ghost_position", "side_mismatch", "epoch_changed"})

#: Rules every plan passes first, in order.
COMMON_RULES: tuple[Rule, ...] = (ttl, allowlist, position_exists, same_side, same_epoch)


def close_quantity(f: SymbolFilters, plan: Plan, vp: VenuePosition) -> tuple[Decimal | None, str]:
    """Order qty (Decimal, a stepSize multiple) for a close plan and a note (``""``,
    ``dust_folded`` or the block reason ``below_min_qty`` with qty None).

    Full close: the whole position. Partial: ``remaining_qty`` when an earlier attempt of the
    tier filled in part (capped at the position), else ``close_fraction`` of the position;
    rounded *down* to stepSize; a remainder below minQty or minNotional is folded into a full
    close (it could never be closed on its own). (:func:`close_quantity_of`, on plain values.)"""
    want = None
    if plan.action is not Action.FULL_CLOSE_PROPOSED:
        want = plan.remaining_qty if plan.remaining_qty else None
    return close_quantity_of(
        f, vp.qty, vp.mark_price, plan.action is Action.FULL_CLOSE_PROPOSED, plan.close_fraction, want
    )


def close_quantity_of(
    f: SymbolFilters, position_qty: float, mark: float, full: bool, fraction: float, want_qty: float | None = None
) -> tuple[Decimal | None, str]:
    """:func:`close_quantity` on plain values (the guard and the replay share it): the position's
    qty (base units) and mark (USDT), a full close or ``fraction`` (0..1) of the position, or
    ``want_qty`` (a tier's remainder). Returns (qty or None, note)."""
    pos_q = Decimal(str(position_qty))
    if full:
        q, note = f.round_qty(pos_q), ""
    else:
        want = Decimal(str(want_qty)) if want_qty else pos_q * Decimal(str(fraction))
        q, note = f.round_qty(min(want, pos_q)), ""
        rest = pos_q - q
        if rest > 0 and (rest < f.min_qty or rest * Decimal(str(mark)) < f.min_notional):
            q, note = f.round_qty(pos_q), "dust_folded"
    if q < f.min_qty or q <= 0:
        return None, "below_min_qty"
    return q, note


def _position(vp: VenuePosition, entry: dict[str, Any], c: GuardContext) -> Position | None:
    """The kernel's position as read now, or None when the reading is inconsistent."""
    try:
        return to_position(c.account, vp, entry)
    except ValidationError:
        return None


def stop_in_force(vp: VenuePosition, entry: dict[str, Any]) -> float:
    """The stop protecting the position: the venue's working stop, else the book's initial
    stop (USDT)."""
    return vp.stop_price if vp.stop_price is not None else float(entry["initial_stop"])


def breached(side: Side, mark: float, stop: float) -> bool:
    """Whether the mark is at or through ``stop`` (below it for a LONG, above for a SHORT)."""
    return mark <= stop if side is Side.LONG else mark >= stop


def check_partial(
    plan: Plan, vp: VenuePosition, entry: dict[str, Any], f: SymbolFilters, c: GuardContext, data: dict[str, Any]
) -> Block | Approval:
    """A partial close: tier not yet harvested and reached (the policy's re-check,
    :meth:`harvest.domain.policies.ExitPolicy.recheck_tier`: ``r_ladder``: R_net at the tier's
    R, ``lsf_ladder``: the mark at the exit ladder's take-profit price; either within
    ``guard_r_tolerance`` R), then its quantity."""
    if int(entry.get("harvested_tier", 0)) >= plan.tier:
        return Block(PlanState.REJECTED, "tier_harvested", {"harvested_tier": entry.get("harvested_tier")})
    reached, info = policy_for(c.theta).recheck_tier(_position(vp, entry, c), plan.tier, c.theta)
    if not reached:
        return Block(PlanState.REJECTED, "tier_not_reached", info)
    return _sized(plan, vp, f, dict(data, r_net=info["r_net"]))


def check_full_close(
    plan: Plan,
    vp: VenuePosition,
    entry: dict[str, Any],
    f: SymbolFilters,
    market: MarketState | None,
    c: GuardContext,
    data: dict[str, Any],
) -> Block | Approval:
    """A full close: the kill score recomputed from the cached market state (the policy's,
    :meth:`harvest.domain.policies.ExitPolicy.kill_score`) reaches the threshold, or the mark is
    through the stop in force, or the position is older than ``max_hold_s``."""
    stop = stop_in_force(vp, entry)
    if breached(vp.side, vp.mark_price, stop):
        return _sized(plan, vp, f, dict(data, confirmed="stop_breached", stop=stop))
    age = c.market_time() - float(entry["opened_at"])
    if age >= c.theta.max_hold_s:
        return _sized(plan, vp, f, dict(data, confirmed="time_stop", age_s=age))
    kill = None
    if market is not None and market.computed_at is not None and c.now - market.computed_at > c.market_stale_s:
        market = None  # stale: confirms nothing
    position = _position(vp, entry, c) if market is not None else None
    if market is not None and position is not None:
        ks = policy_for(c.theta).kill_score(position, market, c.market_time(), c.theta)
        kill = None if ks is None else ks.score
    if kill is None or kill < c.theta.kill_threshold:
        return Block(PlanState.REJECTED, "kill_not_confirmed", {"kill_score": kill})
    return _sized(plan, vp, f, dict(data, confirmed="kill_score", kill_score=kill))


def _sized(plan: Plan, vp: VenuePosition, f: SymbolFilters, data: dict[str, Any]) -> Block | Approval:
    q, note = close_quantity(f, plan, vp)
    if q is None:
        return Block(PlanState.REJECTED, note, data)
    qty = f.fmt(q)
    return Approval({"order_qty": qty}, dict(data, order_qty=qty, **({"note": note} if note else {})), note)


def inside_liquidation(side: Side, stop: float, liquidation: float | None) -> bool:
    """Whether a stop can trigger before liquidation: strictly between the liquidation price
    and the mark's side (above it for a LONG). True when there is no liquidation price."""
    if liquidation is None:
        return True
    return stop > liquidation if side is Side.LONG else stop < liquidation


def check_stop(
    plan: Plan, vp: VenuePosition, entry: dict[str, Any], f: SymbolFilters, c: GuardContext, data: dict[str, Any]
) -> Block | Approval:
    """A stop placement (profit lock or protect): rounded toward the mark, then the checks."""
    assert plan.new_stop is not None
    side = plan.side
    # A protective stop rounds toward the mark (tighter: it stays inside liquidation); a profit
    # lock toward entry, as it always has.
    up = (plan.action is Action.PROTECT) == (side is Side.LONG)
    sp = f.round_price(plan.new_stop, "up" if up else "down")
    stop = float(sp)
    d = dict(data, stop=f.fmt(sp))
    current = vp.stop_price
    if plan.action is Action.PROTECT:
        if current is not None and inside_liquidation(side, current, vp.liquidation_price):
            return Block(PlanState.REJECTED, "already_protected", dict(d, current=current))
    else:
        in_force = stop_in_force(vp, entry)
        if side.sign * (stop - in_force) <= 0:
            return Block(PlanState.REJECTED, "stop_not_tighter", dict(d, current=in_force))
    gap = float(f.tick_size) + c.theta.stop_min_distance * vp.mark_price
    if side.sign * (vp.mark_price - stop) < gap:
        return Block(PlanState.REJECTED, "stop_through_mark", dict(d, mark=vp.mark_price, min_gap=gap))
    if not inside_liquidation(side, stop, vp.liquidation_price):
        return Block(PlanState.REJECTED, "no_stop_inside_liquidation", dict(d, liquidation_price=vp.liquidation_price))
    return Approval({"stop_price": f.fmt(sp)}, dict(d, stop_price=f.fmt(sp)))


def verdict(
    plan: Plan,
    vp: VenuePosition | None,
    entry: dict[str, Any] | None,
    f: SymbolFilters | None,
    market: MarketState | None,
    c: GuardContext,
) -> Block | Approval:
    """Every rule in order (module docstring): the first :class:`Block`, or the
    :class:`Approval` with the exact order. ``f`` may be None only when a common rule blocks
    (the task reads filters for a plan that got that far)."""
    for rule in COMMON_RULES:
        b = rule(plan, vp, entry, c)
        if b is not None:
            return b
    assert vp is not None and entry is not None and f is not None
    data: dict[str, Any] = {"position_qty": vp.qty, "mark_price": vp.mark_price}
    if plan.action in STOP_ACTIONS:
        return check_stop(plan, vp, entry, f, c, data)
    if plan.action is Action.FULL_CLOSE_PROPOSED:
        return check_full_close(plan, vp, entry, f, market, c, data)
    return check_partial(plan, vp, entry, f, c, data)
