"""Reconciliation of exchange truth against local state (``harvest reconcile`` / the beat
task), on a real Redis and the paper engine, stages called in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harvest.domain.plans import client_order_id
from harvest.ops.procs import ROOT
from harvest.services.decide import decide, load_positions
from harvest.services.reconcile import reconcile_once
from tasks.guard import guard
from tasks.propose import propose
from tests.pipeline_helpers import T0, mark_for_r, open_position

SYM = "BTCUSDT"
NS = os.environ["HARVEST_NAMESPACE"]


def approved_plan(rt, r: float = 2.2):
    """An APPROVED partial-close plan of a 1 BTC long (execute not run)."""
    e, s = 100_000.0, 99_000.0
    open_position(rt, SYM, "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, r, "LONG"))
    rows, now = load_positions(rt)
    [d] = decide(rt, rows, now)
    ref = propose(d.model_dump(mode="json"))
    assert guard(ref) == ref
    plan = rt.plans.get(ref["plan_id"])
    assert plan.state == "APPROVED"
    return plan


def test_position_closed_outside_ends_its_open_plans_without_an_order(rt):
    plan = approved_plan(rt)
    rt.venue.close_market(SYM, "SELL", "1", "manual-close-1")  # an operator closes it on the exchange
    out = reconcile_once(rt)
    assert out["closed_outside"] == 1 and out["ghosts_dropped"] == 1 and out["positions"] == 0
    got = rt.plans.get(plan.plan_id)
    assert (got.state, got.reason) == ("EXPIRED", "position_closed_outside")
    assert rt.venue.orders(harvest_only=True) == []
    assert rt.plans.count_open() == 0


def test_position_reopened_outside_ends_plans_of_the_old_epoch(rt):
    plan = approved_plan(rt)
    rt.venue.set_position(SYM, "LONG", 2.0, 101_000.0, 10.0, opened_at=T0 + 3600, stop_price=100_000.0)
    out = reconcile_once(rt)
    assert out["closed_outside"] == 1 and out["positions"] == 1
    assert rt.plans.get(plan.plan_id).state == "EXPIRED"


def test_plan_of_an_open_position_is_left_alone(rt):
    plan = approved_plan(rt)
    out = reconcile_once(rt)
    assert out["closed_outside"] == 0 and out["unknown_orders"] == 0
    assert rt.plans.get(plan.plan_id).state == "APPROVED"


def test_unknown_harvest_order_is_reported_not_cancelled(rt):
    open_position(rt, SYM, "LONG", 1.0, 100_000.0, 99_000.0)
    cid = client_order_id("0123456789abcdef", 0)  # harvest's form, a plan this store never had
    rt.venue.place_stop(SYM, "SELL", "99500", cid)
    out = reconcile_once(rt)
    assert out["unknown_orders"] == 1
    [(_, rec)] = rt.r.xrange(f"{NS}:stream:reconcile")
    assert rec["kind"] == "unknown_order" and rec["client_order_id"] == cid
    assert [o.client_order_id for o in rt.venue.open_orders(SYM, algo=True) if o.client_order_id == cid] == [cid]
    assert rt.plans.counters()["reconcile:unknown_order"] == 1
    from harvest.ops.scorecard import build_scorecard

    assert build_scorecard(rt)["reconcile"]["unknown_order"] == 1


def test_working_order_of_an_approved_plan_is_adopted_and_resolved(rt):
    """The store lost the SUBMITTED write (e.g. restored from an older snapshot) but the
    exchange has the plan's stop working: the plan adopts it and ends by its state."""
    plan = approved_plan(rt)
    rt.venue.place_stop(SYM, "SELL", "99500", plan.client_order_id)  # as if execute had sent it
    from harvest.domain.models import Action

    # Make the plan a profit lock, the only kind of order that stays working on the venue.
    rt.r.hset(rt.plans.k.plan(plan.plan_id), mapping={"action": Action.PROFIT_LOCK_SL.value, "stop_price": "99500"})
    out = reconcile_once(rt)
    assert out["adopted"] == 1
    got = rt.plans.get(plan.plan_id)
    assert (got.state, got.reason) == ("FILLED", "stop_working")
    assert [h["reason"] for h in rt.plans.history(plan.plan_id)][-2:] == ["adopted_from_exchange", "stop_working"]


def test_stuck_submitted_plan_past_ttl_is_resolved_by_lookup_never_resent(rt):
    plan = approved_plan(rt)
    rt.plans.transition(plan.plan_id, "SUBMITTED", "order_sent", fields={"step": 0, "send": "unknown"})
    rt.venue.close_market(SYM, "SELL", "0.25", plan.client_order_id)  # the order went through
    rt.r.zadd(rt.plans.k.open_plans, {plan.plan_id: 0})  # past its TTL
    out = reconcile_once(rt)
    assert out["swept"] == {"FILLED": 1}
    assert rt.plans.get(plan.plan_id).state == "FILLED"
    assert len(rt.venue.orders(harvest_only=True)) == 1


def test_harvest_reconcile_cli_reports_json(rt):
    approved_plan(rt)
    rt.venue.close_market(SYM, "SELL", "1", "manual-close-2")
    out = subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "reconcile", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["closed_outside"] == 1 and rep["open_plans"] == 0


def test_position_without_a_market_state_is_not_taken_for_closed(rt):
    plan = approved_plan(rt)
    rt.r.delete(rt.market.k.market(SYM))  # the market refresh failed for this symbol
    assert rt.market.get_many([SYM]) == [None]
    out = reconcile_once(rt)
    assert out["closed_outside"] == 0 and out["ghosts_dropped"] == 0
    assert rt.plans.get(plan.plan_id).state == "APPROVED"
