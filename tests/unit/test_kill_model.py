"""The learned kill (issue 35): the model file's checks at load, batch = one position bit for
bit, the fit recovering a known continuation, and the replay closing where the model says."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from harvest.domain.kernel import PositionBatch, compute_harvest_proposal, evaluate_batch
from harvest.domain.kill_model import (
    BASIS_VERSION,
    FEATURES,
    PROVENANCE_FIELDS,
    KillModel,
    KillModelError,
    gain_batch,
    gain_one,
    kill_batch,
    kill_one,
)
from harvest.domain.models import HarvestTheta, MarketState, Position, Regime
from harvest.lab.kill_model import fit

TH = HarvestTheta()
N = len(FEATURES)


def doc(**over):
    d = {
        "format": "harvest.kill_model",
        "basis": BASIS_VERSION,
        "features": list(FEATURES),
        "intercept": 0.1,
        "coef": [0.01 * (j + 1) * (-1) ** j for j in range(N)],
        "clip_lo": [-50.0] * N,
        "clip_hi": [50.0] * N,
        "margin_r": 0.2,
        "provenance": {k: ["x"] if k == "symbols" else "x" for k in PROVENANCE_FIELDS},
    }
    d.update(over)
    return d


def test_a_good_file_loads_and_round_trips():
    m = KillModel.from_dict(doc())
    assert KillModel.from_dict(m.to_dict()) == m


@pytest.mark.parametrize("field", PROVENANCE_FIELDS)
def test_a_file_without_a_provenance_field_is_refused_naming_it(field):
    d = doc()
    del d["provenance"][field]
    with pytest.raises(KillModelError, match=f"provenance lacks {field}"):
        KillModel.from_dict(d)


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"basis": "kill-basis-0"}, "does not match this code's"),
        ({"features": list(FEATURES[:-1])}, "features"),
        ({"coef": [0.0] * (N - 1)}, "coef must be a list"),
        ({"clip_lo": [1.0] * N, "clip_hi": [0.0] * N}, "clip_lo exceeds"),
        ({"margin_r": -0.1}, "margin_r"),
        ({"intercept": "nan"}, "intercept is not finite"),
        ({"provenance": None}, "provenance missing"),
        ({"format": "other"}, "format"),
    ],
)
def test_a_bad_file_is_refused_with_a_clear_error(over, words):
    with pytest.raises(KillModelError, match=words):
        KillModel.from_dict(doc(**copy.deepcopy(over)))


def test_the_shipped_model_loads():
    from harvest.data.kill_model import load_kill_model_doc

    m = KillModel.from_dict(load_kill_model_doc())
    assert set(PROVENANCE_FIELDS) <= set(m.provenance)


regime_st = st.sampled_from([Regime.TREND, Regime.CHOP, Regime.MR])


def _state(draw):
    return MarketState(
        symbol="X",
        ts_time=0,
        sigma=draw(st.floats(0, 0.01)),
        ts=draw(st.floats(0, 1)),
        p_trend=draw(st.floats(0, 1)),
        regime=draw(regime_st),
        trend_dir=draw(st.sampled_from([-1, 0, 1])),
        regime_bars=draw(st.integers(1, 10)),
    )


@st.composite
def position_and_market(draw):
    s = draw(st.sampled_from([1, -1]))
    entry = draw(st.floats(0.01, 1e5))
    dist = draw(st.floats(0.001, 0.2)) * entry
    qty0 = draw(st.floats(0.001, 1e4))
    cur = draw(st.one_of(st.none(), st.floats(0.0, 0.99)))
    p = Position(
        symbol="X",
        side="LONG" if s > 0 else "SHORT",
        qty=qty0 * draw(st.sampled_from([1.0, 0.75, 0.5, 0.25])),
        qty_at_open=qty0,
        entry_price=entry,
        mark_price=entry * draw(st.floats(0.5, 1.6)),
        initial_stop=entry - s * dist,
        current_stop=None if cur is None else entry - s * dist * cur,
        opened_at=draw(st.floats(0, 100_000)),
        epoch="E",
        harvested_tier=draw(st.integers(0, 3)),
        funding_paid=draw(st.floats(-10, 10)),
        entry_state=_state(draw) if draw(st.booleans()) else None,
    )
    return p, _state(draw)


@hsettings(max_examples=200, deadline=None)
@given(st.lists(position_and_market(), min_size=1, max_size=15), st.floats(100_000, 400_000))
def test_batch_equals_one_position_exactly(pairs, now):
    model = KillModel.from_dict(doc())
    b = PositionBatch.from_models(pairs)
    res = evaluate_batch(b, now, TH)
    g = gain_batch(model, b, now, res.r_net, res.components, TH)
    k = kill_batch(model, b, now, res.r_net, res.components, TH)
    for i, (p, m) in enumerate(pairs):
        one = compute_harvest_proposal(p, m, now, TH)
        assert gain_one(model, p, m, now, one.r_net, one.components, TH) == float(g[i])
        assert kill_one(model, p, m, now, one.r_net, one.components, TH) is bool(k[i])


def test_the_fit_recovers_a_known_continuation():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40_000, N))
    true = np.linspace(-0.5, 0.5, N)
    y = 0.3 + X @ true + rng.normal(scale=0.5, size=X.shape[0])
    f = fit(X, y, alpha=1.0)
    assert np.allclose(f.coef, true, atol=0.02)
    assert abs(f.intercept - 0.3) < 0.02
    inside = np.all((X > f.lo) & (X < f.hi), axis=1)
    assert np.allclose(f.predict(X[inside]), 0.3 + X[inside] @ true, atol=0.1)


def test_the_replay_kills_where_the_model_says():
    from harvest.lab.engine import simulate
    from harvest.lab.entries import generate
    from harvest.lab.market import load_market

    m = load_market([], TH)
    entries = generate(m, TH, "grid", 86_400.0)[:12]
    always = KillModel.from_dict(doc(intercept=-100.0, coef=[0.0] * N, margin_r=0.0))
    never = KillModel.from_dict(doc(intercept=100.0, coef=[0.0] * N, margin_r=0.0))
    base = simulate(m, entries, "default", TH)
    killed = simulate(m, entries, "default", TH, kill_model=always)
    kept = simulate(m, entries, "default", TH, kill_model=never)
    assert np.array_equal(kept.r, base.r)
    assert "learned_kill" not in set(kept.exit_reason.tolist())
    # every trade still open at its first scan is closed by the kill at the next bar's open
    assert np.sum(killed.exit_reason == "learned_kill") >= len(entries) - np.sum(base.exit_time <= killed.exit_time)
    assert set(killed.exit_reason.tolist()) <= {"learned_kill", "stop", "liquidation", "end_of_data"}
    assert np.all(killed.exit_time - killed.entry_time <= 2 * 60 + 1e-9)


@hsettings(max_examples=150, deadline=None)
@given(st.lists(position_and_market(), min_size=1, max_size=12), st.floats(100_000, 400_000))
def test_the_learned_kill_policy_scan_equals_its_one_position_form(pairs, now):
    from harvest.domain.kill_model import LearnedKill

    # a model that kills about half the rows: the sign of R_net decides
    pol = LearnedKill(model=KillModel.from_dict(doc(intercept=0.0, coef=[1.0] + [0.0] * (N - 1), margin_r=0.0)))
    res = pol.scan(PositionBatch.from_models(pairs), now, TH)
    for i, (p, m) in enumerate(pairs):
        one = pol.decide(p, m, now, TH)
        assert res.actions()[i] is one.action
        assert float(res.kill_score[i]) == one.kill_score
        assert float(res.close_fraction[i]) == one.close_fraction
        assert list(res.components[:, i]) == list(one.components.values())


def test_the_learned_kill_policy_closes_with_its_reason_and_needs_a_model():
    from harvest.domain.kill_model import LearnedKill

    p = Position(
        symbol="X",
        side="LONG",
        qty=1.0,
        qty_at_open=1.0,
        entry_price=100.0,
        mark_price=100.5,
        initial_stop=99.0,
        opened_at=0.0,
        epoch="E",
    )
    m = MarketState(symbol="X", ts_time=0, sigma=0.001, ts=0.5, p_trend=0.5, regime=Regime.CHOP)
    kill = LearnedKill(model=KillModel.from_dict(doc(intercept=-1.0, coef=[0.0] * N, margin_r=0.5)))
    out = kill.decide(p, m, 600.0, TH)
    assert out.action.value == "FULL_CLOSE_PROPOSED"
    assert out.reason_codes[0] == "learned_kill"
    keep = LearnedKill(model=KillModel.from_dict(doc(intercept=-0.4, coef=[0.0] * N, margin_r=0.5)))
    assert keep.decide(p, m, 600.0, TH).action.value != "FULL_CLOSE_PROPOSED"
    with pytest.raises(ValueError, match="no kill model loaded"):
        LearnedKill().decide(p, m, 600.0, TH)


def test_settings_load_the_model_for_the_learned_kill_and_refuse_a_bad_file(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from harvest.domain.kill_model import LearnedKill
    from harvest.domain.policies import REGISTRY, policy_for
    from settings import HarvestSettings

    saved = dict(REGISTRY)
    try:
        s = HarvestSettings(policy="learned_kill")
        pol = policy_for(s.theta)
        assert isinstance(pol, LearnedKill) and pol.model is not None
        bad = tmp_path / "kill.json"
        bad.write_text('{"format": "harvest.kill_model", "basis": "kill-basis-0"}')
        with pytest.raises(ValidationError, match="does not match this code's"):
            HarvestSettings(policy="learned_kill", kill_model=str(bad))
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)


def test_the_lab_runs_the_learned_kill_policy_as_the_hook_does():
    """``harvest replay --policies learned_kill`` (the ExitPolicy with the shipped model, or one
    given) closes exactly where ``simulate(kill_model=…)`` on the default does, as
    ``learned_kill``."""
    from harvest.domain.kill_model import LearnedKill
    from harvest.lab.engine import lab_policy, simulate
    from harvest.lab.entries import generate
    from harvest.lab.market import load_market

    assert isinstance(lab_policy("learned_kill", TH), LearnedKill)
    assert lab_policy("learned_kill", TH).model is not None  # the shipped model
    m = load_market([], TH)
    entries = generate(m, TH, "grid", 6 * 3600.0)[:60]
    model = KillModel.from_dict(doc(intercept=0.0, coef=[1.0] + [0.0] * (N - 1), margin_r=0.0))
    pol = simulate(m, entries, "learned_kill", TH, kill_model=model)
    hook = simulate(m, entries, "default", TH, kill_model=model)
    assert np.array_equal(pol.r, hook.r)
    assert list(pol.exit_reason) == list(hook.exit_reason)
    assert "learned_kill" in set(pol.exit_reason.tolist())
