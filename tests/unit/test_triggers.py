"""Event-driven exits (issue 23.3): the mark at which a position's next decision falls due
(:func:`harvest.domain.triggers.next_trigger`) is where the kernel's decision changes: just short
of it the kernel holds, just past it the kernel acts; R_net at :func:`mark_for_r` is that R."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvest.domain.kernel import compute_harvest_proposal, compute_r_net
from harvest.domain.models import Action, HarvestTheta, MarketState, Position, Regime, Side
from harvest.domain.triggers import mark_for_r, next_trigger

T0 = 1_750_000_000.0
MARKET = MarketState(symbol="BTCUSDT", ts_time=T0, sigma=0.001, ts=0.5, p_trend=0.9, regime=Regime.TREND)


def _pos(
    side: Side, entry: float, stop_frac: float, mark_r: float, tier: int, lock: float | None, lev: float, fund: float
) -> Position:
    s = side.sign
    stop = entry * (1 - s * stop_frac)
    p = Position(
        symbol="BTCUSDT",
        side=side,
        qty=1.0,
        qty_at_open=1.0,
        entry_price=entry,
        mark_price=entry,
        leverage=lev,
        initial_stop=stop,
        current_stop=None if lock is None else entry + s * lock * abs(entry - stop),
        opened_at=T0,
        epoch="e1",
        harvested_tier=tier,
        funding_paid=fund,
    )
    return p.model_copy(update={"mark_price": mark_for_r(p, mark_r, HarvestTheta())})


def _act(p: Position, mark: float, theta: HarvestTheta) -> Action:
    return compute_harvest_proposal(p.model_copy(update={"mark_price": mark}), MARKET, T0 + 60, theta).action


@given(
    side=st.sampled_from([Side.LONG, Side.SHORT]),
    entry=st.floats(0.01, 100_000),
    stop_frac=st.floats(0.002, 0.2),
    mark_r=st.floats(-1.0, 7.0),
    tier=st.integers(0, 3),
    lock=st.one_of(st.none(), st.floats(-0.5, 5.0)),
    lev=st.floats(1, 50),
    fund=st.floats(-5, 5),
    policy=st.sampled_from(["r_ladder", "lsf_ladder"]),
)
def test_the_trigger_is_where_the_kernel_starts_to_act(side, entry, stop_frac, mark_r, tier, lock, lev, fund, policy):
    theta = HarvestTheta(policy=policy)
    p = _pos(side, entry, stop_frac, mark_r, tier, lock, lev, fund)
    if _act(p, p.mark_price, theta) is not Action.NONE:
        return  # due now: the scan's (or a chain in flight's), not a trigger's
    trig = next_trigger(p, theta)
    if trig is None:
        return
    s, eps = side.sign, 1e-7 * max(abs(trig), abs(p.mark_price))
    assert s * (trig - p.mark_price) > 0  # ahead, in the position's favour
    assert _act(p, trig - s * eps, theta) is Action.NONE  # short of it: hold
    assert _act(p, trig + s * eps, theta) is not Action.NONE  # past it: act


def test_mark_for_r_inverts_r_net():
    theta = HarvestTheta()
    for side in (Side.LONG, Side.SHORT):
        p = _pos(side, 100.0, 0.01, 0.0, 0, None, 10, 0.3)
        for r in (-1.0, 0.0, 2.0, 4.0, 6.5):
            at = p.model_copy(update={"mark_price": mark_for_r(p, r, theta)})
            assert compute_r_net(at, theta) == pytest.approx(r)


def test_a_long_at_one_r_triggers_at_the_profit_lock_then_the_first_tier():
    theta = HarvestTheta()  # lock from 1.6 R, first tier at 2 R
    p = _pos(Side.LONG, 100.0, 0.01, 1.0, 0, None, 10, 0.0)
    assert next_trigger(p, theta) == pytest.approx(mark_for_r(p, theta.lock_start_r, theta))
    past_lock = p.model_copy(update={"mark_price": mark_for_r(p, 1.9, theta), "current_stop": 100.9})
    assert next_trigger(past_lock, theta) == pytest.approx(mark_for_r(p, theta.t1_r, theta))
