"""The five-stage pipeline with a real Celery worker process and a real Redis."""

from __future__ import annotations

import os

import pytest

from harvest.domain.models import Action
from harvest.domain.plans import make_plan_id
from tests.harness import worker
from tests.pipeline_helpers import (
    T0,
    epoch,
    mark_for_r,
    open_position,
    state,
    wait_quiet,
    wait_terminal,
)

SYM = "BTCUSDT"


@pytest.fixture(scope="module")
def live_worker():
    ns = os.environ["HARVEST_NAMESPACE"]
    w = worker({}, ns).start()
    w.wait_ready()
    yield w
    assert w.stop() == 0 or True


@pytest.fixture()
def rt(live_worker, rt):
    """The shared clean runtime (tests/integration/conftest.py), once the processes run."""
    return rt


def scan():
    from tasks.scan import scan_positions

    return scan_positions()


def fills(rt, symbol):
    return [o for o in rt.venue.orders() if o.symbol == symbol and o.type == "MARKET"]


def plan_id(rt, symbol, action, key):
    return make_plan_id(rt.settings.account, symbol, epoch(rt, symbol), action, key)


def test_partial_25_then_dedup_then_partial_50(rt):
    entry, stop, qty = 100_000.0, 99_000.0, 1.0
    open_position(rt, SYM, "LONG", qty, entry, stop, mark=mark_for_r(entry, stop, qty, qty, 2.1, "LONG"))
    out = scan()
    assert out["started"] == 1
    pid = plan_id(rt, SYM, Action.PARTIAL_25, "tier=1")
    plan = wait_terminal(rt, pid)
    assert plan.state == "FILLED"
    assert plan.order_qty == "0.25"  # 25 % of 1.0 rounded down to stepSize 0.001
    pos = rt.venue.position(SYM)
    assert pos.qty == pytest.approx(0.75)
    assert plan.position_qty_after == pytest.approx(0.75)
    hist = [h["to"] for h in rt.plans.history(pid)]
    assert hist == ["PROPOSED", "APPROVED", "SUBMITTED", "FILLED"]
    assert [h["reason"] for h in rt.plans.history(pid, sends=True)][2:] == [
        "order_sent",
        "send_accepted",
        "order_filled",
    ]
    assert rt.book.get_many(rt.settings.account, [SYM])[0]["harvested_tier"] == 1

    # Same state, next scans: no second close order.
    for _ in range(3):
        scan()
    wait_quiet(rt)
    assert len(fills(rt, SYM)) == 1

    # 4R on the remaining 0.75 → PARTIAL_50 under a new plan_id.
    rt.venue.set_mark(SYM, mark_for_r(entry, stop, 0.75, qty, 4.2, "LONG"))
    scan()
    pid50 = plan_id(rt, SYM, Action.PARTIAL_50, "tier=2")
    assert pid50 != pid
    plan50 = wait_terminal(rt, pid50)
    assert plan50.state == "FILLED"
    # 50 % of 0.75 = 0.375 → stepSize 0.001 keeps 0.375
    assert plan50.order_qty == "0.375"
    assert rt.venue.position(SYM).qty == pytest.approx(0.375)
    assert len(fills(rt, SYM)) == 2


def test_kill_score_full_close(rt):
    entry, stop, qty = 100_000.0, 99_000.0, 0.5
    open_position(rt, SYM, "LONG", qty, entry, stop)
    scan()  # first sight: entry state TREND captured; nothing to do
    wait_quiet(rt)
    assert rt.plans.count_open() == 0 and not fills(rt, SYM)
    from harvest.domain.models import Regime

    rt.market.put_many([state(SYM, Regime.CHOP, p=0.2, ts=0.1)])
    scan()
    pid = plan_id(rt, SYM, Action.FULL_CLOSE_PROPOSED, "full")
    plan = wait_terminal(rt, pid)
    assert plan.state == "FILLED"
    assert plan.decision["kill_score"] >= 0.6
    assert "regime_flip" in plan.decision["reason_codes"]
    assert rt.venue.position(SYM) is None


def test_ghost_position_blocked(rt):
    entry, stop = 100_000.0, 99_000.0
    open_position(rt, SYM, "LONG", 1.0, entry, stop, mark=mark_for_r(entry, stop, 1.0, 1.0, 2.1, "LONG"))
    from harvest.services.decide import decide, load_positions
    from workflows import action_chain

    pairs, now = load_positions(rt)
    [d] = decide(rt, pairs, now)
    rt.venue.set_position(SYM, "LONG", 0.0, entry, 10.0, opened_at=T0)  # the position is gone (qty 0)
    action_chain(d.model_dump(mode="json")).apply_async()
    plan = wait_terminal(rt, plan_id(rt, SYM, Action.PARTIAL_25, "tier=1"))
    assert (plan.state, plan.reason) == ("REJECTED", "ghost_position")
    assert not fills(rt, SYM)
    assert rt.plans.counters().get("guard:ghost_position") == 1
    # the scan's view was not the exchange's: the account's stream cache is to be audited now
    assert rt.r.smembers(f"{rt.settings.namespace}:streams:audit_requests") == {rt.settings.account}
    # A scan of the ghost: exchange truth has no position; the book entry is dropped, no order.
    scan()
    assert rt.book.get_many(rt.settings.account, [SYM]) == [None]
    assert not fills(rt, SYM)


def test_short_mirrors_long(rt):
    entry, stop, qty = 2500.0, 2525.0, 4.0
    sym = "ETHUSDT"
    open_position(rt, sym, "SHORT", qty, entry, stop, mark=mark_for_r(entry, stop, qty, qty, 2.1, "SHORT"))
    scan()
    plan = wait_terminal(rt, plan_id(rt, sym, Action.PARTIAL_25, "tier=1"))
    assert plan.state == "FILLED" and plan.order_qty == "1"
    [o] = fills(rt, sym)
    assert o.side == "BUY" and o.realized_pnl > 0
    assert rt.venue.position(sym).qty == pytest.approx(3.0)


def test_full_chain_on_demand(rt):
    entry, stop, qty = 100_000.0, 99_000.0, 1.0
    open_position(rt, SYM, "LONG", qty, entry, stop, mark=mark_for_r(entry, stop, qty, qty, 6.5, "LONG"))
    from workflows import full_chain

    full_chain(SYM).apply_async()
    from tests.harness import wait_for

    wait_for(lambda: rt.r.exists(rt.book.k.book(rt.settings.account, SYM)), 20, what="book entry")
    plan = wait_terminal(rt, plan_id(rt, SYM, Action.PARTIAL_75, "tier=3"))
    assert plan.state == "FILLED" and plan.order_qty == "0.75"
    # Tiers 1 and 2 are skipped for this epoch: the highest tier reached fired once.
    assert rt.book.get_many(rt.settings.account, [SYM])[0]["harvested_tier"] == 3


def test_duplicate_deliveries_send_one_order(rt):
    """The same decision delivered five times (two beats, a redelivery…): one plan, one order."""
    entry, stop = 100_000.0, 99_000.0
    open_position(rt, SYM, "LONG", 1.0, entry, stop, mark=mark_for_r(entry, stop, 1.0, 1.0, 2.1, "LONG"))
    from harvest.services.decide import decide, load_positions
    from workflows import action_chain

    pairs, now = load_positions(rt)
    [d] = decide(rt, pairs, now)
    for _ in range(5):
        action_chain(d.model_dump(mode="json")).apply_async()
    pid = plan_id(rt, SYM, Action.PARTIAL_25, "tier=1")
    assert wait_terminal(rt, pid).state == "FILLED"
    from tests.harness import wait_for

    wait_for(
        lambda: sum(v for k, v in rt.plans.counters().items() if k.startswith("dedup:")) == 4,
        20,
        what="four repeats blocked",
    )
    assert len(fills(rt, SYM)) == 1
    assert [h["to"] for h in rt.plans.history(pid)] == ["PROPOSED", "APPROVED", "SUBMITTED", "FILLED"]


def test_results_stream_carries_the_decision_inputs(rt):
    import json

    entry, stop = 100_000.0, 99_000.0
    open_position(rt, SYM, "LONG", 1.0, entry, stop, mark=mark_for_r(entry, stop, 1.0, 1.0, 2.1, "LONG"))
    scan()
    pid = plan_id(rt, SYM, Action.PARTIAL_25, "tier=1")
    wait_terminal(rt, pid)
    hist = rt.plans.history(pid)
    proposed = json.loads(hist[0]["data"])
    assert proposed["r_net"] == pytest.approx(2.1)
    assert set(proposed["components"]) == {"regime_flip", "sigma_spike", "ts_drop", "age_penalty"}
    assert proposed["mark_price"] == pytest.approx(rt.venue.mark_price(SYM)) and proposed["regime"] == "TREND"
    approved = json.loads(hist[1]["data"])
    assert approved["guard"] == "passed" and approved["order_qty"] == "0.25"
    filled = json.loads(hist[-1]["data"])
    assert filled["position_qty_after"] == pytest.approx(0.75) and "realized_pnl" in filled
    assert all(h["symbol"] == SYM and h["action"] == "PARTIAL_25" for h in hist)
