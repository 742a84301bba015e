"""Exit policies (docs/design.md §2.10): one home per policy. For every registered policy the
batch decision (the scan) equals the one-position form bit for bit, over random positions,
markets, thetas and the policy's own parameters (hypothesis); the registry names them; the
kernel's, the triggers' and the guard's entry points are ``theta.policy``'s."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from harvest.domain.exit_ladder import compute_levels
from harvest.domain.kernel import PositionBatch, compute_harvest_proposal, evaluate_batch
from harvest.domain.models import KILL_COMPONENTS, Action, HarvestTheta, MarketState, Position, Regime, Side
from harvest.domain.policies import (
    REGISTRY,
    Bracket,
    ExitPolicy,
    HarvestKernel,
    LsfLadder,
    RLadder,
    TimeExit,
    Trailing,
    get_policy,
    policy_for,
)
from harvest.domain.triggers import next_trigger

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000.0


def _state(draw) -> MarketState:
    return MarketState(
        symbol="X",
        ts_time=0.0,
        sigma=draw(st.floats(0, 0.01)),
        ts=draw(st.floats(0, 1)),
        p_trend=draw(st.floats(0, 1)),
        regime=draw(st.sampled_from(list(Regime))),
        trend_dir=draw(st.sampled_from([-1, 0, 1])),
        regime_bars=draw(st.integers(1, 8)),
    )


@st.composite
def position_and_market(draw) -> tuple[Position, MarketState]:
    """A position (either side, partly closed, any tier, maybe a ratcheted stop, funding,
    leverage 1–125, the mark −1.5 R … 8 R, opened up to three days before T0) and its symbol's
    state now."""
    side = draw(st.sampled_from([Side.LONG, Side.SHORT]))
    s = side.sign
    entry = draw(st.floats(0.01, 1e5))
    dist = draw(st.floats(0.001, 0.2)) * entry
    qty0 = draw(st.floats(0.001, 1e4))
    cur = draw(st.one_of(st.none(), st.floats(-0.99, 3.0)))
    p = Position(
        symbol="X",
        side=side,
        qty=qty0 * draw(st.sampled_from([1.0, 0.75, 0.5, 0.3, 0.1])),
        qty_at_open=qty0,
        entry_price=entry,
        mark_price=max(entry + s * dist * draw(st.floats(-1.5, 8.0)), entry * 0.01),  # −1.5 R … 8 R
        leverage=draw(st.sampled_from([1.0, 5.0, 10.0, 10.4, 20.0, 30.6, 50.0, 125.0])),
        initial_stop=entry - s * dist,
        current_stop=None if cur is None else entry + s * dist * cur,
        opened_at=T0 - draw(st.floats(0, 3 * 86_400)),
        epoch="E",
        harvested_tier=draw(st.integers(0, 3)),
        funding_paid=draw(st.floats(-10, 10)),
        entry_state=_state(draw) if draw(st.booleans()) else None,
    )
    return p, _state(draw)


@st.composite
def thetas(draw) -> HarvestTheta:
    """A theta with every field the policies read drawn (tiers increasing)."""
    t1 = draw(st.floats(0.2, 4.0))
    t2 = t1 + draw(st.floats(0.1, 4.0))
    return HarvestTheta(
        policy=draw(st.sampled_from(["r_ladder", "lsf_ladder"])),
        t1_r=t1,
        t2_r=t2,
        t3_r=t2 + draw(st.floats(0.1, 4.0)),
        kill_threshold=draw(st.floats(0.3, 0.99)),
        w_regime_flip=draw(st.floats(0, 1.2)),
        w_sigma_spike=draw(st.floats(0, 1.2)),
        w_ts_drop=draw(st.floats(0, 1.2)),
        w_age_penalty=draw(st.floats(0, 1.2)),
        max_age_s=draw(st.floats(600, 30 * 86_400)),
        sigma_spike_ratio=draw(st.floats(1.1, 4.0)),
        taker_fee_rate=draw(st.floats(0, 0.002)),
        lock_start_r=draw(st.floats(0.1, 4.0)),
        lock_fraction=draw(st.floats(0.05, 0.95)),
        lock_min_step_r=draw(st.floats(0, 1.0)),
        base_tp=draw(st.floats(0.001, 0.2)),
        regime_confirm_bars=draw(st.integers(1, 6)),
        max_hold_s=draw(st.floats(3_600, 30 * 86_400)),
    )


#: The policies harvest registers, and ``learned_kill`` (registered with its model when one is
#: loaded: drawn here with the shipped model).
BUILTIN = frozenset({"r_ladder", "lsf_ladder", "bracket", "trailing", "time", "hold"})
NAMES = tuple(sorted(BUILTIN | {"learned_kill"}))


def _learned_kill() -> ExitPolicy:
    from harvest.data.kill_model import load_kill_model_doc
    from harvest.domain.kill_model import KillModel, LearnedKill

    return LearnedKill(model=KillModel.from_dict(load_kill_model_doc()))


@st.composite
def policies(draw) -> ExitPolicy:
    """Every policy that can be registered, the baselines with their own parameters drawn."""
    name = draw(st.sampled_from(NAMES))
    if name == "learned_kill":
        return _learned_kill()
    if name == "trailing":
        in_r = draw(st.booleans())
        return get_policy(
            name,
            positive=draw(st.floats(0.001, 0.1)),
            offset=draw(st.floats(0.0, 0.1)),
            trail_r=draw(st.floats(0.1, 3.0)) if in_r else None,
            offset_r=draw(st.floats(0.0, 3.0)),
        )
    if name == "time":
        return get_policy(name, time_stop_s=draw(st.floats(60, 4 * 86_400)))
    return get_policy(name)


def _assert_row_equals(res, i: int, one) -> None:
    assert res.actions()[i] is one.action
    assert int(res.tier[i]) == one.tier
    assert float(res.close_fraction[i]) == one.close_fraction
    assert float(res.r_net[i]) == one.r_net
    assert float(res.kill_score[i]) == one.kill_score
    assert list(res.components[:, i]) == list(one.components.values())
    assert list(one.components) == list(KILL_COMPONENTS)
    if one.new_stop is None:
        assert np.isnan(res.new_stop[i])
    else:
        assert float(res.new_stop[i]) == one.new_stop
    assert bool(res.time_stop[i]) == (one.reason_codes == ["time_stop"])


@hsettings(max_examples=400, deadline=None)
@given(
    st.lists(position_and_market(), min_size=1, max_size=16),
    st.floats(0, 3 * 86_400),
    thetas(),
    policies(),
    st.booleans(),
)
def test_batch_equals_the_one_position_form_for_every_policy(pairs, dt, theta, policy, per_row_now):
    """The bit-equality of docs/design.md §2.9, policy by policy: the scan's row i is
    :meth:`ExitPolicy.decide` of position i, field for field (``now`` a float or, as the lab
    passes it, an array)."""
    now = T0 + dt
    batch = PositionBatch.from_models(pairs)
    res = policy.scan(batch, np.full(len(pairs), now) if per_row_now else now, theta)
    for i, (p, m) in enumerate(pairs):
        _assert_row_equals(res, i, policy.decide(p, m, now, theta))


@hsettings(max_examples=100, deadline=None)
@given(st.lists(position_and_market(), min_size=1, max_size=8), st.floats(0, 3 * 86_400), thetas())
def test_the_kernels_entry_points_are_theta_policys(pairs, dt, theta):
    """``evaluate_batch``, ``compute_harvest_proposal`` and ``next_trigger`` are the scan, the
    decision and the trigger of the policy ``theta.policy`` names."""
    now = T0 + dt
    pol = policy_for(theta)
    assert pol is REGISTRY[theta.policy]
    batch = PositionBatch.from_models(pairs)
    res = evaluate_batch(batch, now, theta)
    mine = pol.scan(batch, now, theta)
    assert np.array_equal(res.action, mine.action) and np.array_equal(res.close_fraction, mine.close_fraction)
    for i, (p, m) in enumerate(pairs):
        _assert_row_equals(res, i, compute_harvest_proposal(p, m, now, theta))
        assert next_trigger(p, theta) == pol.next_trigger(p, theta)


def test_the_registry_names_every_policy_with_its_parameters():
    assert BUILTIN <= set(REGISTRY) <= set(NAMES)  # every registered policy is drawn by policies()
    theta = HarvestTheta()
    for name, pol in {**REGISTRY, "learned_kill": _learned_kill()}.items():
        assert pol.name == name
        assert set(pol.theta_fields) <= set(HarvestTheta.model_fields), name
        params = pol.params(theta)
        assert all(params[f] == getattr(theta, f) for f in pol.theta_fields)
    assert set(RLadder().theta_fields) - set(LsfLadder().theta_fields) == {"t1_r", "t2_r", "t3_r"}
    assert "base_tp" in LsfLadder().theta_fields and "base_tp" in Bracket().theta_fields
    assert get_policy("time", time_stop_s=3600.0).params(theta)["time_stop_s"] == 3600.0
    assert isinstance(policy_for(HarvestTheta(policy="lsf_ladder")), LsfLadder)
    assert isinstance(policy_for(theta), RLadder) and isinstance(policy_for(theta), HarvestKernel)


def test_a_bad_policy_name_or_parameter_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown exit policy 'martingale'.*r_ladder"):
        get_policy("martingale")
    with pytest.raises(ValueError, match="'time' has no parameter \\['trail_r'\\]"):
        get_policy("time", trail_r=1.0)
    with pytest.raises(ValueError, match="trail_r"):
        get_policy("trailing", trail_r=0.0)
    with pytest.raises(ValueError, match="time_stop_s"):
        TimeExit(time_stop_s=-1.0)


def _long(mark: float, opened: float = T0, stop: float | None = None) -> Position:
    return Position(
        symbol="BTCUSDT",
        side=Side.LONG,
        qty=1.0,
        qty_at_open=1.0,
        entry_price=100.0,
        mark_price=mark,
        leverage=10.0,
        initial_stop=95.0,
        current_stop=stop,
        opened_at=opened,
        epoch="e",
    )


CALM = MarketState(symbol="BTCUSDT", ts_time=T0, sigma=0.001, ts=0.1, p_trend=0.2, regime=Regime.CHOP)


def test_the_baselines_decide_what_their_orders_would():
    """bracket: a close at the ladder's tp3 (its trigger while ahead); time: a close at
    ``time_stop_s``; trailing: the stop ``positive`` behind the mark once ``offset`` is made,
    or in R; hold: nothing; none of them has a kill or a tier."""
    th = HarvestTheta()
    tp3 = compute_levels(100.0, "LONG", 10.0, th).tp_prices[2]
    br = REGISTRY["bracket"]
    assert br.next_trigger(_long(101.0), th) == pytest.approx(tp3)
    assert br.decide(_long(101.0), CALM, T0, th).action is Action.NONE
    out = br.decide(_long(tp3 * 1.0001), CALM, T0, th)
    assert (out.action, out.close_fraction, out.reason_codes) == (Action.FULL_CLOSE_PROPOSED, 1.0, ["take_profit"])
    tm = TimeExit(time_stop_s=3600.0)
    assert tm.decide(_long(101.0), CALM, T0 + 3599, th).action is Action.NONE
    assert tm.decide(_long(101.0), CALM, T0 + 3600, th).reason_codes == ["time_stop"]
    tr = Trailing(positive=0.01, offset=0.02)
    assert tr.decide(_long(101.9), CALM, T0, th).action is Action.NONE  # not armed
    out = tr.decide(_long(110.0), CALM, T0, th)
    assert out.action is Action.PROFIT_LOCK_SL and out.new_stop == pytest.approx(108.9)
    assert tr.decide(_long(110.0, stop=109.0), CALM, T0, th).action is Action.NONE  # not tighter
    in_r = Trailing(trail_r=1.0, offset_r=1.0)  # R = 5 USDT
    assert in_r.decide(_long(104.9), CALM, T0, th).action is Action.NONE
    assert in_r.decide(_long(110.0), CALM, T0, th).new_stop == pytest.approx(105.0)
    assert in_r.next_trigger(_long(101.0), th) == pytest.approx(105.0)
    assert REGISTRY["hold"].decide(_long(200.0), CALM, T0 + 1e7, th).action is Action.NONE
    for name in ("bracket", "trailing", "time", "hold"):
        pol = REGISTRY[name]
        assert pol.kill_score(_long(101.0), CALM, T0, th) is None
        assert pol.recheck_tier(_long(200.0), 1, th)[0] is False


def test_the_guard_rechecks_a_tier_with_the_policys_rule():
    """``r_ladder``: R_net within ``guard_r_tolerance`` of the tier's R; ``lsf_ladder``: the mark
    within the tolerance of the ladder's take-profit price; an unreadable position reaches none."""
    th = HarvestTheta()
    r = RLadder()
    assert r.recheck_tier(_long(100.0 + 5 * 1.8), 1, th)[0]  # R_net ≈ 1.8 − fees ≥ 2 − 0.25
    assert not r.recheck_tier(_long(100.0 + 5 * 1.7), 1, th)[0]
    assert r.recheck_tier(None, 1, th) == (False, {"r_net": None, "tier_r": 2.0})
    tp1 = compute_levels(100.0, "LONG", 10.0, th).tp_prices[0]
    lsf = LsfLadder()
    assert lsf.recheck_tier(_long(tp1 - 0.2 * 5), 1, th)[0]  # 0.2 R short: within 0.25 R
    assert not lsf.recheck_tier(_long(tp1 - 0.3 * 5), 1, th)[0]
    assert lsf.recheck_tier(None, 1, th) == (False, {"r_net": None, "policy": "lsf_ladder"})


def test_no_policy_branch_is_left_outside_the_policies():
    """Issue 35: the ``theta.policy == "lsf_ladder"`` branches of the kernel, the triggers, the
    guard and the lab live in :mod:`harvest.domain.policies` now."""
    pattern = re.compile(r"""\.policy\s*[!=]=|policy\s*==\s*["'](?:lsf_ladder|r_ladder|bracket|trailing|time|hold)""")
    files = [ROOT / "harvest" / "domain" / n for n in ("kernel.py", "triggers.py", "guard_rules.py")]
    files += sorted((ROOT / "harvest" / "lab").glob("*.py"))
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in files
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_the_lab_runs_the_registered_policies_with_its_knobs():
    """``harvest replay``'s names are registered policies (``default``: ``theta.policy``'s); the
    fill model's knobs are the baselines' parameters."""
    from harvest.lab.engine import POLICIES, FillModel, lab_policy

    th = HarvestTheta()
    assert set(POLICIES) - {"default", "learned_kill"} <= set(REGISTRY)  # learned_kill: registered with its model
    assert lab_policy("default", th) is REGISTRY["r_ladder"]
    assert lab_policy("default", HarvestTheta(policy="lsf_ladder")) is REGISTRY["lsf_ladder"]
    assert lab_policy("trailing", th, FillModel(trail_r=0.5, trail_offset_r=2.0)) == Trailing(trail_r=0.5, offset_r=2.0)
    assert lab_policy("time", th, FillModel(time_stop_s=60.0)) == TimeExit(time_stop_s=60.0)
    with pytest.raises(ValueError, match="unknown policy 'martingale'"):
        lab_policy("martingale", th)
