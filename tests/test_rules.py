"""Pure rules, no servers: plan lineage, liquidation-aware stops, R_net per open unit, the
guard's named rules and the protection decision (DESIGN §2–3; issues 18 and 19)."""

from __future__ import annotations

import math

import pytest

from harvest.domain.book import protective_stop, unprotected
from harvest.data import load_brackets_raw, shipped_filters
from harvest.domain.exit_ladder import compute_levels
from harvest.domain.guard_rules import Approval, Block, GuardContext, close_quantity, verdict
from harvest.domain.kernel import compute_harvest_proposal, compute_r_net
from harvest.domain.margin import brackets_from_response, clamp_stop, liquidation_price, stop_bound
from harvest.domain.models import Action, HarvestTheta, MarketState, Plan, Position, Regime, Side
from harvest.domain.plans import (
    FINAL_REJECTIONS, LatestPlan, attempt_backoff, lineage_id, make_plan_id, next_attempt,
)
from harvest.venues.base import VenuePosition

TH = HarvestTheta()
BR = brackets_from_response(load_brackets_raw())
F = shipped_filters()["BTCUSDT"]
T0 = 1_750_464_000.0


# --------------------------------------------------------------------------- lineage

def test_attempt_is_part_of_the_plan_id_not_of_the_lineage():
    ids = {make_plan_id("a", "BTCUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full", n) for n in range(5)}
    assert len(ids) == 5
    assert make_plan_id("a", "BTCUSDT", "L1", "FULL_CLOSE_PROPOSED", "full", 3) == \
        make_plan_id("a", "BTCUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full", 3)
    assert lineage_id("a", "BTCUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full") != \
        lineage_id("a", "BTCUSDT", "L2", Action.FULL_CLOSE_PROPOSED, "full")


def latest(state, reason="", attempt=0, at=T0, **kw):
    return LatestPlan(attempt=attempt, state=state, reason=reason, updated_at=at, **kw)


def nxt(action, last, now=T0 + 1000.0, max_attempts=20):
    return next_attempt(action, last, now, 5.0, 300.0, max_attempts)


def test_a_failed_exit_gets_its_next_attempt_after_the_backoff():
    """The old system's duplicate_plan: a plan that ended FAILED blocked its decision forever."""
    failed = latest("FAILED", "not_executed:-1008", attempt=0)
    assert nxt(Action.FULL_CLOSE_PROPOSED, failed, now=T0 + 4.9).kind == "waiting"
    r = nxt(Action.FULL_CLOSE_PROPOSED, failed, now=T0 + 5.0)
    assert (r.kind, r.attempt, r.starts) == ("retry", 1, True)
    # doubling to the cap
    assert [attempt_backoff(n, 5.0, 300.0) for n in (0, 1, 2, 6, 7, 50)] == [5, 10, 20, 300, 300, 300]
    assert nxt(Action.PARTIAL_25, latest("EXPIRED", "position_busy", attempt=3), now=T0 + 39).kind == "waiting"
    assert nxt(Action.PARTIAL_25, latest("EXPIRED", "position_busy", attempt=3), now=T0 + 40).attempt == 4


@pytest.mark.parametrize("state,reason,kind", [
    ("PROPOSED", "proposed", "repeat"), ("SUBMITTED", "order_sent", "repeat"), ("FILLED", "order_filled", "repeat"),
    ("SHADOWED", "shadow_mode", "repeat"), ("REJECTED", "below_min_qty", "abandoned"),
    ("REJECTED", "stop_not_tighter", "abandoned"), ("REJECTED", "exchange_rejected:-1111", "abandoned"),
    ("REJECTED", "exchange_rejected:-4061", "retry"), ("REJECTED", "tier_not_reached", "retry"),
    ("REJECTED", "kill_not_confirmed", "retry"), ("EXPIRED", "venue_unavailable", "retry"),
    ("CANCELED", "order_expired", "retry"), ("FAILED", "not_placed", "retry"),
])
def test_true_repeats_final_rejections_and_retries(state, reason, kind):
    assert nxt(Action.PARTIAL_25, latest(state, reason)).kind == kind


def test_kill_and_protect_never_give_up_others_do():
    last = latest("FAILED", "not_executed:-1008", attempt=19)
    assert nxt(Action.PARTIAL_50, last).kind == "abandoned" and nxt(Action.PARTIAL_50, last).reason == "attempts_exhausted"
    assert nxt(Action.FULL_CLOSE_PROPOSED, last).attempt == 20
    assert nxt(Action.PROTECT, last).attempt == 20
    # a protective stop that took effect and is gone again (the decision recurs) is placed again
    assert nxt(Action.PROTECT, latest("FILLED", "stop_working", attempt=2)).kind == "retry"


def test_partial_fill_remainder_is_the_next_attempt():
    last = latest("PARTIALLY_FILLED", "order_expired", order_qty=0.25, executed_qty=0.1)
    r = nxt(Action.PARTIAL_25, last)
    assert (r.kind, r.attempt, r.remaining_qty) == ("retry", 1, pytest.approx(0.15))
    # an attempt that then fails keeps owing the same remainder
    r2 = nxt(Action.PARTIAL_25, latest("FAILED", "not_placed", attempt=1, remaining_qty=0.15))
    assert r2.remaining_qty == pytest.approx(0.15)


def test_final_rejections_are_the_ones_that_cannot_change():
    assert "tier_not_reached" not in FINAL_REJECTIONS and "exchange_rejected:-4061" not in FINAL_REJECTIONS
    assert {"below_min_qty", "symbol_not_allowed", "stop_not_tighter"} <= FINAL_REJECTIONS


# --------------------------------------------------------------------------- liquidation

def test_liquidation_price_matches_the_formula_by_hand():
    # BTC, 0.1 at 100 000 (notional 10 000, bracket 1: MMR 0.4 %, cum 0), 50×
    lp = liquidation_price(Side.LONG, 0.1, 100_000.0, 50, BR["BTCUSDT"])
    wb = 0.1 * 100_000 / 50
    assert lp == pytest.approx((0.1 * 100_000 - wb) / (0.1 * (1 - 0.004)))
    sp = liquidation_price(Side.SHORT, 0.1, 100_000.0, 50, BR["BTCUSDT"])
    assert sp == pytest.approx((wb + 0.1 * 100_000) / (0.1 * (1 + 0.004)))
    # bracket 2 (notional 100 000): MMR 0.5 %, cum 50
    lp2 = liquidation_price(Side.LONG, 1.0, 100_000.0, 20, BR["BTCUSDT"])
    assert lp2 == pytest.approx((100_000 - 5_000 - 50) / (1 - 0.005))
    assert liquidation_price(Side.LONG, 1.0, 100.0, 1, BR["BTCUSDT"]) is None  # 1× long: none
    with pytest.raises(ValueError):
        liquidation_price(Side.LONG, 0.0, 100.0, 5, BR["BTCUSDT"])


@pytest.mark.parametrize("lev", [5, 20, 50, 75, 125])
@pytest.mark.parametrize("side", [Side.LONG, Side.SHORT])
def test_no_ladder_stop_beyond_liquidation(lev, side):
    """With the default theta the ladder's stop lay beyond the liquidation price from ~46×."""
    liq = liquidation_price(side, 0.1, 100_000.0, lev, BR["BTCUSDT"])
    for sigma in (None, 0.0005, 0.01, 0.3):  # the volatility floor, capped
        lv = compute_levels(100_000.0, side, lev, TH, sigma=sigma, liquidation_price=liq)
        assert side.sign * (lv.sl_price - liq) > 0  # between liquidation and entry
        bound = stop_bound(side, 100_000.0, liq, TH.liquidation_buffer)
        assert side.sign * (lv.sl_price - bound) >= -1e-9
        assert lv.sl_fraction <= max(TH.sl_floor_cap, 0.02) + 1e-12
    unclamped = compute_levels(100_000.0, side, lev, TH)
    assert unclamped.sl_clamped is False
    assert (side.sign * (unclamped.sl_price - liq) <= 0) == (lev >= 50)


def test_clamp_keeps_the_buffer_and_leaves_inner_stops_alone():
    assert clamp_stop(Side.LONG, 90.0, 100.0, 95.0, 0.2) == pytest.approx(96.0)
    assert clamp_stop(Side.LONG, 97.0, 100.0, 95.0, 0.2) == 97.0
    assert clamp_stop(Side.SHORT, 110.0, 100.0, 105.0, 0.2) == pytest.approx(104.0)
    assert clamp_stop(Side.LONG, 90.0, 100.0, None, 0.2) == 90.0


# --------------------------------------------------------------------------- R_net per open unit

def pos(**kw) -> Position:
    base = dict(symbol="BTCUSDT", side=Side.LONG, qty=1.0, qty_at_open=1.0, entry_price=100.0, mark_price=100.0,
                leverage=5, initial_stop=99.0, opened_at=T0, epoch="L1")
    base.update(kw)
    return Position(**base)


def test_r_net_per_open_unit_makes_tier_two_reachable():
    """Repro of issue 20: qty 0.75 of 1.0, price +4.5 R, tier 1 harvested → was 3.34, no PARTIAL_50."""
    th = TH.model_copy(update={"taker_fee_rate": 0.0})
    p = pos(qty=0.75, mark_price=104.5, harvested_tier=1)
    assert compute_r_net(p, th) == pytest.approx(4.5)
    m = MarketState(symbol="BTCUSDT", ts_time=T0, sigma=0.001, ts=0.1, p_trend=0.1, regime=Regime.CHOP)
    assert compute_harvest_proposal(p, m, T0 + 60, th).action is Action.PARTIAL_50
    # funding per unit opened, on the open quantity: 1 USDT paid on 1.0 opened = 1 R per unit
    assert compute_r_net(pos(qty=0.5, mark_price=102.0, funding_paid=1.0), th) == pytest.approx(2.0 - 1.0)


# --------------------------------------------------------------------------- guard rules

def plan(action=Action.PARTIAL_25, tier=1, fraction=0.25, new_stop=None, **kw) -> Plan:
    base = dict(plan_id="0123456789abcdef", account="paper", symbol="BTCUSDT", epoch="L1", side=Side.LONG,
                action=action, tier=tier, close_fraction=fraction, new_stop=new_stop, state="PROPOSED",
                created_at=T0, updated_at=T0, expires_at=T0 + 30, client_order_id="hv-0123456789abcdef-0")
    base.update(kw)
    return Plan(**base)


def vpos(mark=100_000.0, qty=0.1, stop=99_000.0, lev=10.0, side=Side.LONG, entry=100_000.0) -> VenuePosition:
    liq = liquidation_price(side, qty, entry, lev, BR["BTCUSDT"])
    return VenuePosition(symbol="BTCUSDT", side=side, qty=qty, entry_price=entry, mark_price=mark, leverage=lev,
                         stop_price=stop, liquidation_price=liq)


def book(tier=0, stop=99_000.0, entry_state=None):
    return {"epoch": "L1", "side": Side.LONG, "opened_at": T0, "entry_price": 100_000.0, "qty_at_open": 0.1,
            "initial_stop": stop, "harvested_tier": tier, "entry_state": entry_state}


CTX = GuardContext(frozenset({"BTCUSDT"}), TH, T0 + 1, T0 + 1)


def test_common_rules_in_order():
    assert verdict(plan(), vpos(), book(), F, None, GuardContext(frozenset({"BTCUSDT"}), TH, T0 + 31, T0)).reason \
        == "plan_ttl_expired"
    assert verdict(plan(symbol="ETHUSDT"), None, None, None, None, CTX).reason == "symbol_not_allowed"
    assert verdict(plan(), None, book(), F, None, CTX).reason == "ghost_position"
    assert verdict(plan(side=Side.SHORT), vpos(), book(), F, None, CTX).reason == "side_mismatch"
    assert verdict(plan(epoch="L0"), vpos(), book(), F, None, CTX).reason == "epoch_changed"


def test_forged_partial_75_at_2_2r_after_tier_one_is_rejected():
    """Issue 19.5: a forged PARTIAL_75 at 2.2 R after tier 1 closed 5.6 of 7.5."""
    mark = 100_000.0 + 2.2 * 1_000.0 + 60.0  # ~2.2 R net of the fee
    out = verdict(plan(Action.PARTIAL_75, 3, 0.75), vpos(mark=mark), book(tier=1), F, None, CTX)
    assert isinstance(out, Block) and out.reason == "tier_not_reached"
    assert verdict(plan(), vpos(mark=mark), book(tier=1), F, None, CTX).reason == "tier_harvested"
    ok = verdict(plan(), vpos(mark=mark), book(tier=0), F, None, CTX)
    assert isinstance(ok, Approval) and ok.fields == {"order_qty": "0.025"}


def test_forged_stop_at_the_mark_is_rejected():
    """Issue 19.5: a forged PROFIT_LOCK_SL with the stop at the mark was filled at once."""
    out = verdict(plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=103_000.0), vpos(mark=103_000.0), book(), F, None, CTX)
    assert isinstance(out, Block) and out.reason == "stop_through_mark"
    close = 103_000.0 - 0.5 * TH.stop_min_distance * 103_000.0  # inside the minimum distance
    assert verdict(plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=close), vpos(mark=103_000.0), book(), F, None,
                   CTX).reason == "stop_through_mark"
    assert verdict(plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=98_000.0), vpos(mark=103_000.0), book(), F, None,
                   CTX).reason == "stop_not_tighter"
    ok = verdict(plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=101_500.0), vpos(mark=103_000.0), book(), F, None, CTX)
    assert isinstance(ok, Approval) and ok.fields == {"stop_price": "101500"}


def test_protect_rules():
    naked = vpos(stop=None, lev=50)
    liq = naked.liquidation_price
    assert liq is not None and liq > 98_000.0
    ok = verdict(plan(Action.PROTECT, 0, 0.0, new_stop=99_000.0), naked, book(), F, None, CTX)
    assert isinstance(ok, Approval)
    assert verdict(plan(Action.PROTECT, 0, 0.0, new_stop=liq - 10), naked, book(), F, None, CTX).reason \
        == "no_stop_inside_liquidation"
    assert verdict(plan(Action.PROTECT, 0, 0.0, new_stop=99_000.0), vpos(stop=99_500.0, lev=50), book(), F, None,
                   CTX).reason == "already_protected"


def test_full_close_needs_the_kill_recomputed_or_a_breached_stop():
    calm = MarketState(symbol="BTCUSDT", ts_time=T0, sigma=0.001, ts=0.5, p_trend=0.9, regime=Regime.TREND, trend_dir=1)
    flipped = calm.model_copy(update={"regime": Regime.CHOP, "p_trend": 0.1, "ts": 0.05})
    full = plan(Action.FULL_CLOSE_PROPOSED, 0, 1.0)
    assert verdict(full, vpos(), book(entry_state=calm), F, calm, CTX).reason == "kill_not_confirmed"
    assert verdict(full, vpos(), book(entry_state=calm), F, None, CTX).reason == "kill_not_confirmed"
    ok = verdict(full, vpos(), book(entry_state=calm), F, flipped, CTX)
    assert isinstance(ok, Approval) and ok.data["confirmed"] == "kill_score" and ok.fields == {"order_qty": "0.1"}
    stale = GuardContext(frozenset({"BTCUSDT"}), TH, T0 + 1, T0 + 1, market_stale_s=15.0)
    assert verdict(full, vpos(), book(entry_state=calm), F, flipped.model_copy(update={"computed_at": T0 - 60}),
                   stale).reason == "kill_not_confirmed"
    assert isinstance(verdict(full, vpos(), book(entry_state=calm), F,
                              flipped.model_copy(update={"computed_at": T0 - 5}), stale), Approval)
    breach = verdict(full, vpos(mark=98_900.0), book(entry_state=calm), F, calm, CTX)
    assert isinstance(breach, Approval) and breach.data["confirmed"] == "stop_breached"


def test_close_quantity_rounding_dust_and_remainder():
    p = plan()
    q, note = close_quantity(F, p, vpos(qty=0.1))
    assert (str(q), note) == ("0.025", "")
    q, note = close_quantity(F, p, vpos(qty=0.0045))  # remainder 0.0034 → 340 USDT ≥ minNotional? yes
    assert str(q) == "0.001"
    q, note = close_quantity(F, p, vpos(qty=0.002))  # 0.0005 → 0.000: nothing to send, the rest is no dust
    assert (q, note) == (None, "below_min_qty")
    q, note = close_quantity(F, p, vpos(qty=0.005, mark=20_000.0))  # rest 0.004 × 20 000 < 100 USDT minNotional
    assert (str(q), note) == ("0.005", "dust_folded")
    q, note = close_quantity(F, plan(remaining_qty=0.015), vpos(qty=0.075))  # the tier's remainder
    assert str(q) == "0.015"
    assert close_quantity(F, plan(), VenuePosition(symbol="BTCUSDT", side=Side.LONG, qty=0.0009, entry_price=1.0,
                                                   mark_price=1.0, leverage=1.0))[1] == "below_min_qty"


# --------------------------------------------------------------------------- protection

def test_protection_of_a_naked_or_doomed_position():
    assert unprotected(vpos(stop=None)) and not unprotected(vpos(stop=99_000.0))
    doomed = vpos(stop=97_000.0, lev=50)  # a strategy's stop beyond the 50× liquidation price
    assert unprotected(doomed)
    stop, through = protective_stop(doomed, book(stop=97_000.0), TH)
    assert stop > doomed.liquidation_price and not through
    assert stop == pytest.approx(stop_bound(Side.LONG, 100_000.0, doomed.liquidation_price, TH.liquidation_buffer))
    _, through = protective_stop(vpos(stop=None, mark=98_500.0), book(stop=99_000.0), TH)
    assert through
    assert math.isclose(protective_stop(vpos(stop=None), book(stop=99_000.0), TH)[0], 99_000.0)
