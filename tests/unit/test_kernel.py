"""The decision kernel: hand-computed cases, the seed plan, and properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from harvest.domain.exit_ladder import (
    close_scheme,
    compute_levels,
    leverage_scaling_factor,
)
from harvest.domain.kernel import (
    PositionBatch,
    compute_harvest_proposal,
    compute_kill_score,
    compute_profit_lock,
    compute_r_net,
    determine_harvest_action,
    evaluate_batch,
    kill_score_from_components,
)
from harvest.domain.models import Action, HarvestTheta, MarketState, Position, Regime
from tests.kill_theta import KILL_SCORE_THETA

TH = HarvestTheta(**KILL_SCORE_THETA)


def ms(regime=Regime.TREND, p=0.9, ts=0.5, sigma=0.001, d=1, symbol="BTCUSDT", bars=3):
    return MarketState(
        symbol=symbol, ts_time=0.0, sigma=sigma, ts=ts, p_trend=p, regime=regime, trend_dir=d, regime_bars=bars
    )


def pos(
    side="LONG",
    entry=100.0,
    stop=95.0,
    mark=110.0,
    qty=2.0,
    qty0=2.0,
    funding=0.0,
    opened=0.0,
    tier=0,
    entry_state=None,
    current_stop=None,
):
    return Position(
        symbol="BTCUSDT",
        side=side,
        qty=qty,
        qty_at_open=qty0,
        entry_price=entry,
        mark_price=mark,
        initial_stop=stop,
        current_stop=current_stop,
        opened_at=opened,
        epoch="L0",
        harvested_tier=tier,
        funding_paid=funding,
        entry_state=entry_state,
    )


# ------------------------------------------------------------------ hand-computed cases


def test_r_net_hand_computed():
    # upnl = (110 − 100)·2 = 20; fee = 0.0005·110·2 = 0.11; funding 1; R = 5·2 = 10
    assert compute_r_net(pos(funding=1.0), TH) == pytest.approx((20 - 0.11 - 1.0) / 10)
    # SHORT mirror: entry 100, stop 105, mark 90 → upnl 20, fee 0.0005·90·2 = 0.09
    assert compute_r_net(pos("SHORT", stop=105.0, mark=90.0), TH) == pytest.approx((20 - 0.09) / 10)


def test_seed_plan_kill_score():
    k = kill_score_from_components(1.0, 0.0, 0.24159, 0.04167, TH)
    assert k.score == pytest.approx(0.678, abs=5e-4)
    assert k.score == pytest.approx(1 - math.exp(-(1.0 + 0.5 * 0.24159 + 0.3 * 0.04167)))
    assert determine_harvest_action(0.5, k.score, 0, TH)[0] is Action.FULL_CLOSE_PROPOSED


def test_kill_components_hand_computed():
    entry = ms(p=0.9, ts=0.5, sigma=0.001)
    now = ms(p=0.6, ts=0.3, sigma=0.0015)
    k = compute_kill_score(pos(entry_state=entry, opened=0.0), now, 3600.0, TH)
    c = k.components
    assert c["regime_flip"] == pytest.approx((0.9 - 0.6) / 0.9)  # graded p_trend collapse
    assert c["sigma_spike"] == pytest.approx(0.5)  # (1.5 − 1) / (2 − 1)
    assert c["ts_drop"] == pytest.approx(0.4)  # (0.5 − 0.3) / 0.5
    assert c["age_penalty"] == pytest.approx(1 / 24)
    # Regime flip to CHOP, and a TREND against the position, both count fully.
    assert compute_kill_score(pos(entry_state=entry), ms(Regime.CHOP, p=0.2), 0.0, TH).components["regime_flip"] == 1.0
    assert compute_kill_score(pos(entry_state=entry), ms(d=-1), 0.0, TH).components["regime_flip"] == 1.0
    # ... once confirmed: a flip that has held for fewer than regime_confirm_bars bars counts
    # only as the graded collapse (issue 20's repro: TREND against at p 0.92 killed at once).
    assert compute_kill_score(pos(entry_state=entry), ms(Regime.CHOP, p=0.2, bars=2), 0.0, TH).components[
        "regime_flip"
    ] == pytest.approx((0.9 - 0.2) / 0.9)
    repro = compute_harvest_proposal(pos(mark=100.0, entry_state=ms(p=0.92)), ms(d=-1, p=0.92, bars=1), 60.0, TH)
    assert repro.action is Action.NONE and repro.components["regime_flip"] == 0.0
    # Entry not TREND: no regime component; flip alone suffices (1 − e⁻¹ = 0.632 ≥ 0.6).
    assert (
        compute_kill_score(pos(entry_state=ms(Regime.CHOP, p=0.2)), ms(Regime.MR, p=0.1), 0.0, TH).components[
            "regime_flip"
        ]
        == 0.0
    )
    assert kill_score_from_components(1, 0, 0, 0, TH).score == pytest.approx(1 - math.exp(-1))


def test_actions_by_tier():
    assert determine_harvest_action(2.5, 0.1, 0, TH)[:2] == (Action.PARTIAL_25, 1)
    assert determine_harvest_action(2.5, 0.1, 1, TH)[0] is Action.NONE
    assert determine_harvest_action(4.0, 0.1, 1, TH)[:2] == (Action.PARTIAL_50, 2)
    assert determine_harvest_action(6.1, 0.1, 1, TH)[:2] == (Action.PARTIAL_75, 3)
    assert determine_harvest_action(9.0, 0.1, 3, TH)[0] is Action.NONE
    assert determine_harvest_action(1.9, 0.59, 0, TH)[0] is Action.NONE
    assert determine_harvest_action(1.9, 0.60, 0, TH)[0] is Action.FULL_CLOSE_PROPOSED
    assert determine_harvest_action(2.5, 0.1, 0, TH)[2] == ["harvest_partial_25"]
    # The time stop: past max_hold_s the position is closed whatever the kill score.
    assert determine_harvest_action(2.5, 0.1, 0, TH, TH.max_hold_s) == (Action.FULL_CLOSE_PROPOSED, 0, ["time_stop"])
    assert determine_harvest_action(2.5, 0.1, 0, TH, TH.max_hold_s - 1)[0] is Action.PARTIAL_25


def test_time_stop_in_both_forms():
    """Old main: age alone scores at most 1 − e^−0.3 = 0.26; two replay trades were held 218 days."""
    old = pos(mark=100.5, opened=0.0, entry_state=ms())
    now = TH.max_hold_s + 60.0
    p = compute_harvest_proposal(old, ms(), now, TH)
    assert (p.action, p.reason_codes, p.close_fraction) == (Action.FULL_CLOSE_PROPOSED, ["time_stop"], 1.0)
    b = evaluate_batch(PositionBatch.from_models([(old, ms())]), now, TH)
    assert b.actions() == [Action.FULL_CLOSE_PROPOSED] and bool(b.time_stop[0])
    young = evaluate_batch(PositionBatch.from_models([(old, ms())]), 60.0, TH)
    assert young.actions() == [Action.NONE] and not bool(young.time_stop[0])


def test_profit_lock_hand_computed():
    # R_net = (10·2 − 0.11)/10 ≈ 1.99 ≥ 1.5; stop = 100 + 0.5·(110 − 100) = 105
    assert compute_profit_lock(pos(), compute_r_net(pos(), TH), TH) == pytest.approx(105.0)
    # Already at 104: a 1-unit step is below 0.25 R (1.25) → nothing.
    assert compute_profit_lock(pos(current_stop=104.0), 1.99, TH) is None
    assert compute_profit_lock(pos(), 1.4, TH) is None
    short = pos("SHORT", stop=105.0, mark=90.0)
    assert compute_profit_lock(short, 1.99, TH) == pytest.approx(95.0)
    p = compute_harvest_proposal(pos(mark=108.0), ms(), 0.0, TH)
    assert p.action is Action.PROFIT_LOCK_SL and p.new_stop == pytest.approx(104.0)


def test_exit_ladder_hand_computed():
    lsf = 1 / (1 + math.log(11))
    assert leverage_scaling_factor(10) == pytest.approx(lsf)
    lv = compute_levels(100.0, "LONG", 10, TH)
    assert lv.tp_fractions == pytest.approx((0.02 * (0.6 + lsf), 0.02 * (1.2 + lsf / 2), 0.02 * (1.8 + lsf / 4)))
    assert lv.sl_fraction == pytest.approx(0.01 * (1 + (1 - lsf) * 0.8))
    assert lv.sl_price == pytest.approx(100 * (1 - lv.sl_fraction))
    assert compute_levels(100.0, "SHORT", 10, TH).sl_price == pytest.approx(100 * (1 + lv.sl_fraction))
    assert [close_scheme(x) for x in (5, 10, 11, 30, 31, 50)] == [
        (0.3, 0.3, 0.4),
        (0.3, 0.3, 0.4),
        (0.4, 0.4, 0.2),
        (0.4, 0.4, 0.2),
        (0.5, 0.3, 0.2),
        (0.5, 0.3, 0.2),
    ]
    # Volatility floor: 2σ of a one-hour move.
    assert compute_levels(100.0, "LONG", 10, TH, sigma=0.002).sl_fraction == pytest.approx(2 * 0.002 * math.sqrt(60))
    # ... capped at sl_floor_cap (a cascade's sigma once made a 60 % stop).
    assert compute_levels(100.0, "LONG", 10, TH, sigma=0.05).sl_fraction == pytest.approx(TH.sl_floor_cap)
    with pytest.raises(ValueError):
        leverage_scaling_factor(0.5)


# ------------------------------------------------------------------ properties

unit = st.floats(0, 1, allow_nan=False)


@given(unit, unit, unit, unit)
def test_kill_score_bounded(a, b, c, d):
    s = kill_score_from_components(a, b, c, d, TH).score
    assert 0.0 <= s < 1.0


@given(unit, unit, unit, unit, st.integers(0, 3), st.floats(0, 1))
def test_kill_score_monotone(a, b, c, d, i, bump):
    comps = [a, b, c, d]
    up = list(comps)
    up[i] = min(1.0, up[i] + bump)
    assert kill_score_from_components(*up, TH).score >= kill_score_from_components(*comps, TH).score


@given(st.lists(st.floats(-3, 10, allow_nan=False), min_size=1, max_size=40))
def test_each_tier_fires_at_most_once_per_epoch(r_path):
    harvested, fired = 0, []
    for r in r_path:
        action, tier, _ = determine_harvest_action(r, 0.0, harvested, TH)
        if tier:
            assert tier > harvested
            fired.append(tier)
            harvested = tier
    assert len(fired) == len(set(fired))


@given(st.lists(st.floats(0.5, 3.0, allow_nan=False), min_size=1, max_size=30), st.sampled_from(["LONG", "SHORT"]))
def test_stop_only_tightens(moves, side):
    sign = 1 if side == "LONG" else -1
    entry, stop = 100.0, 100.0 - sign * 5.0
    current = None
    for m in moves:
        mark = entry + sign * 5.0 * m * 2
        p = pos(side, entry=entry, stop=stop, mark=mark, current_stop=current)
        new = compute_profit_lock(p, compute_r_net(p, TH), TH)
        if new is not None:
            assert sign * (new - p.stop) > 0
            current = new


side_st = st.sampled_from(["LONG", "SHORT"])
regime_st = st.sampled_from(list(Regime))


@st.composite
def position_and_market(draw):
    side = draw(side_st)
    s = 1 if side == "LONG" else -1
    entry = draw(st.floats(0.01, 1e5))
    dist = draw(st.floats(0.001, 0.2)) * entry
    mark = entry * draw(st.floats(0.5, 1.6))
    qty0 = draw(st.floats(0.001, 1e4))
    qty = qty0 * draw(st.sampled_from([1.0, 0.75, 0.5, 0.25, 0.1]))
    has_entry = draw(st.booleans())
    es = MarketState(
        symbol="X",
        ts_time=0,
        sigma=draw(st.floats(0, 0.01)),
        ts=draw(st.floats(0, 1)),
        p_trend=draw(st.floats(0, 1)),
        regime=draw(regime_st),
        trend_dir=draw(st.sampled_from([-1, 0, 1])),
    )
    now_ms = MarketState(
        symbol="X",
        ts_time=0,
        sigma=draw(st.floats(0, 0.01)),
        ts=draw(st.floats(0, 1)),
        p_trend=draw(st.floats(0, 1)),
        regime=draw(regime_st),
        trend_dir=draw(st.sampled_from([-1, 0, 1])),
    )
    cur = draw(st.one_of(st.none(), st.floats(0.0, 0.99)))
    p = Position(
        symbol="X",
        side=side,
        qty=qty,
        qty_at_open=qty0,
        entry_price=entry,
        mark_price=mark,
        initial_stop=entry - s * dist,
        current_stop=None if cur is None else entry - s * dist * cur,
        opened_at=0.0,
        epoch="E",
        harvested_tier=draw(st.integers(0, 3)),
        funding_paid=draw(st.floats(-10, 10)),
        entry_state=es if has_entry else None,
    )
    return p, now_ms


@hsettings(max_examples=300)
@given(
    st.lists(position_and_market(), min_size=1, max_size=20),
    st.floats(0, 200_000),
    st.sampled_from(["r_ladder", "lsf_ladder"]),
)
def test_batch_equals_single_exactly(pairs, now, policy):
    th = TH.model_copy(update={"policy": policy})
    res = evaluate_batch(PositionBatch.from_models(pairs), now, th)
    for i, (p, m) in enumerate(pairs):
        single = compute_harvest_proposal(p, m, now, th)
        assert res.actions()[i] is single.action
        assert int(res.tier[i]) == single.tier
        assert float(res.r_net[i]) == single.r_net
        assert float(res.kill_score[i]) == single.kill_score
        assert list(res.components[:, i]) == list(single.components.values())
        assert float(res.close_fraction[i]) == single.close_fraction
        if single.new_stop is None:
            assert np.isnan(res.new_stop[i])
        else:
            assert float(res.new_stop[i]) == single.new_stop


def test_position_rejects_bad_numbers():
    with pytest.raises(ValueError):
        pos(mark=float("nan"))
    with pytest.raises(ValueError):
        pos(stop=105.0)  # a LONG's stop above entry
    with pytest.raises(ValueError):
        pos(qty=0.0)


def test_the_lsf_ladder_policy_closes_the_scheme_at_the_ladders_prices():
    """``policy = lsf_ladder`` (docs/design.md §4.5): tiers at the exit ladder's tp1..tp3, each closing its
    leverage scheme of the opening qty (10×: 30/30/40 %), the last one all that is left."""
    from harvest.domain.exit_ladder import compute_levels

    th = TH.model_copy(update={"policy": "lsf_ladder"})
    lv = compute_levels(100.0, "LONG", 10.0, th)
    calm = ms(Regime.CHOP, p=0.2)
    p = pos(mark=lv.tp_prices[0] + 0.001, entry_state=calm).model_copy(update={"leverage": 10.0})
    out = compute_harvest_proposal(p, calm, 60.0, th)
    assert (out.action, out.tier, out.close_fraction) == (Action.PARTIAL_25, 1, pytest.approx(0.30))
    assert compute_harvest_proposal(p, calm, 60.0, TH).action is not Action.PARTIAL_25  # not 2 R yet
    p2 = p.model_copy(update={"mark_price": lv.tp_prices[1] + 0.001, "harvested_tier": 1, "qty": 0.7})
    out = compute_harvest_proposal(p2, calm, 60.0, th)
    assert (out.tier, out.close_fraction) == (2, pytest.approx(0.30 / 0.70))
    p3 = p.model_copy(update={"mark_price": lv.tp_prices[2] + 0.001, "harvested_tier": 1})
    assert compute_harvest_proposal(p3, calm, 60.0, th).close_fraction == 1.0  # tiers 2 and 3 at once: all
    below = p.model_copy(update={"mark_price": lv.tp_prices[0] - 0.001})
    assert compute_harvest_proposal(below, calm, 60.0, th).tier == 0


def test_the_shipped_default_kill_score_does_not_fire_alone():
    """The lab's defaults (README "The policy lab"): every component at its maximum gives
    1 − e^(−(0.45 + 0.30 + 0.64 + 0.3)) ≈ 0.82, below the 0.94 threshold; the time stop still
    closes a position held max_hold_s."""
    th = HarvestTheta()
    top = kill_score_from_components(1.0, 1.0, 1.0, 1.0, th)
    assert top.score == pytest.approx(1 - math.exp(-1.69)) and top.score < th.kill_threshold
    assert determine_harvest_action(0.5, top.score, 0, th)[0] is Action.NONE
    assert determine_harvest_action(0.5, top.score, 0, th, th.max_hold_s) == (
        Action.FULL_CLOSE_PROPOSED,
        0,
        ["time_stop"],
    )
