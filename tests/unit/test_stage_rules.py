"""The stages' pure rules (issue 34): one function makes a new plan (:func:`new_plan`), one rule
says whether trading is halted (:func:`halted`) and what the trading state refuses
(:func:`order_refusal`)."""

from __future__ import annotations

import pytest

from harvest.domain.models import Action, Decision, Side
from harvest.domain.plans import client_order_id, lineage_of, new_plan, plan_id_for
from harvest.domain.trading import halted, order_refusal


def decision(**kw: object) -> Decision:
    base: dict[str, object] = {
        "account": "a1",
        "symbol": "BTCUSDT",
        "epoch": "E1",
        "side": Side.SHORT,
        "action": Action.PARTIAL_50,
        "tier": 2,
        "close_fraction": 0.25,
        "r_net": 1.4,
        "kill_score": 0.3,
        "mark_price": 50_000.0,
        "decided_at": 1000.0,
        "scanned_at": 999.5,
        "attempt": 3,
    }
    return Decision.model_validate({**base, **kw})


def test_new_plan_is_the_decisions_plan():
    d = decision()
    p = new_plan(d, now=1001.0, ttl_s=30.0)
    assert p.plan_id == plan_id_for(d) == p.record["plan_id"]
    assert p.record["lineage"] == lineage_of(d)
    assert p.record["client_order_id"] == client_order_id(p.plan_id, 0)
    assert (p.record["created_at"], p.record["expires_at"], p.record["scanned_at"]) == (1001.0, 1031.0, 999.5)
    assert (p.record["attempt"], p.record["tier"], p.record["side"]) == (3, 2, Side.SHORT)
    assert p.record["decision"] == d.model_dump(mode="json")
    assert (p.data["r_net"], p.data["attempt"], p.data["regime"]) == (1.4, 3, None)


def test_new_plan_caps_a_scan_time_ahead_of_now_and_keys_by_attempt():
    assert new_plan(decision(scanned_at=2000.0), now=1001.0, ttl_s=5).record["scanned_at"] == 1001.0
    assert new_plan(decision(scanned_at=None), now=1001.0, ttl_s=5).record["scanned_at"] is None
    assert new_plan(decision(attempt=4), 1001.0, 5).plan_id != new_plan(decision(), 1001.0, 5).plan_id
    assert new_plan(decision(), 1.0, 5).plan_id == new_plan(decision(), 2.0, 5).plan_id  # never from time


@pytest.mark.parametrize(
    "states,mode,want",
    [
        ({}, "live", None),
        ({"*": "REDUCING"}, "live", None),
        ({"a1": "HALTED"}, "live", "halted"),
        ({"*": "HALTED"}, "shadow", "halted"),
        ({"*": "SHADOW"}, "live", "shadow_mode"),
        ({}, "shadow", "shadow_mode"),
        ({"a2": "HALTED"}, "live", None),  # another account's halt
        ({"a1": "bogus"}, "live", "halted"),  # a corrupted switch stops trading
    ],
)
def test_one_rule_for_the_trading_state(states, mode, want):
    assert order_refusal(states, "a1", mode) == want
    assert halted(states, "a1", mode) is (want == "halted")
