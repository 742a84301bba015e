"""Pure rules, no servers: plan lineage, liquidation-aware stops, R_net per open unit, the
guard's named rules and the protection decision (docs/design.md §2.2, §4.4, §5.4, §5.6, §5.8; issues 18 and 19)."""

from __future__ import annotations

import math

import pytest

from harvest.data import load_brackets_raw, shipped_filters
from harvest.domain.book import protective_stop, unprotected
from harvest.domain.exit_ladder import compute_levels
from harvest.domain.kernel import compute_harvest_proposal, compute_r_net
from harvest.domain.margin import (
    brackets_from_response,
    clamp_stop,
    liquidation_price,
    stop_bound,
)
from harvest.domain.models import (
    Action,
    HarvestTheta,
    MarketState,
    Position,
    Regime,
    Side,
)
from harvest.domain.plans import (
    FINAL_REJECTIONS,
    LatestPlan,
    attempt_backoff,
    lineage_id,
    make_plan_id,
    next_attempt,
)
from tests.kill_theta import KILL_SCORE_THETA
from tests.unit.test_guard_rules import book, vpos

TH = HarvestTheta(**KILL_SCORE_THETA)
BR = brackets_from_response(load_brackets_raw())
F = shipped_filters()["BTCUSDT"]
T0 = 1_750_464_000.0


# --------------------------------------------------------------------------- lineage


def test_attempt_is_part_of_the_plan_id_not_of_the_lineage():
    ids = {make_plan_id("a", "BTCUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full", n) for n in range(5)}
    assert len(ids) == 5
    assert make_plan_id("a", "BTCUSDT", "L1", "FULL_CLOSE_PROPOSED", "full", 3) == make_plan_id(
        "a", "BTCUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full", 3
    )
    assert lineage_id("a", "BTCUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full") != lineage_id(
        "a", "BTCUSDT", "L2", Action.FULL_CLOSE_PROPOSED, "full"
    )


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


@pytest.mark.parametrize(
    "state,reason,kind",
    [
        ("PROPOSED", "proposed", "repeat"),
        ("SUBMITTED", "order_sent", "repeat"),
        ("FILLED", "order_filled", "repeat"),
        ("SHADOWED", "shadow_mode", "repeat"),
        ("REJECTED", "below_min_qty", "abandoned"),
        ("REJECTED", "stop_not_tighter", "abandoned"),
        ("REJECTED", "exchange_rejected:precision", "abandoned"),
        ("REJECTED", "exchange_rejected:position_mode", "retry"),
        ("REJECTED", "tier_not_reached", "retry"),
        ("REJECTED", "kill_not_confirmed", "retry"),
        ("EXPIRED", "venue_unavailable", "retry"),
        ("CANCELED", "order_expired", "retry"),
        ("FAILED", "not_placed", "retry"),
    ],
)
def test_true_repeats_final_rejections_and_retries(state, reason, kind):
    assert nxt(Action.PARTIAL_25, latest(state, reason)).kind == kind


def test_kill_and_protect_never_give_up_others_do():
    last = latest("FAILED", "not_executed:-1008", attempt=19)
    assert (
        nxt(Action.PARTIAL_50, last).kind == "abandoned" and nxt(Action.PARTIAL_50, last).reason == "attempts_exhausted"
    )
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
    assert "tier_not_reached" not in FINAL_REJECTIONS and "exchange_rejected:position_mode" not in FINAL_REJECTIONS
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
    base = dict(
        symbol="BTCUSDT",
        side=Side.LONG,
        qty=1.0,
        qty_at_open=1.0,
        entry_price=100.0,
        mark_price=100.0,
        leverage=5,
        initial_stop=99.0,
        opened_at=T0,
        epoch="L1",
    )
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


def test_final_exchange_rejections_are_the_venue_neutral_final_reasons():
    from harvest.venues.base import FINAL_REASONS, VenueReason

    exchange = {r for r in FINAL_REJECTIONS if r.startswith("exchange_rejected:")}
    assert exchange == {f"exchange_rejected:{r.value}" for r in FINAL_REASONS}
    assert f"exchange_rejected:{VenueReason.REDUCE_ONLY_REJECTED.value}" not in FINAL_REJECTIONS
