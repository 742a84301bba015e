"""State that must not be lost (issue 19.3), with a real worker: a Redis without persistence
gets no order unless the deployment says it is throw-away; a Redis that lost harvest's state
sends nothing until the exchange's records are read, and the lost plan's order is found, not
repeated. Old main: Redis restarted empty under a SUBMITTED plan, the next scan closed again."""

from __future__ import annotations

import os

import pytest

from harvest.domain.models import Action
from harvest.services.runtime import build_runtime
from settings import load_settings
from tasks.app import app
from tests.harness import wait_for, worker
from tests.pipeline_helpers import clean, mark_for_r, open_position, state

BASE = os.environ["HARVEST_NAMESPACE"]


def hv_fills(rt, symbol):
    return [t for t in rt.venue.trades() if t["symbol"] == symbol and t["clientOrderId"].startswith("hv-")]


def scan(ns):
    app.send_task("harvest.scan_positions", queue=f"{ns}.scan")


def partial_plan_ending(ns, rt, state: str):
    """A LONG at 2.2 R, one scan, and the first plan that ends in ``state``."""
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
    scan(ns)
    return wait_for(
        lambda: next((p for p in rt.plans.all_plans() if p.state == state), None), 30, what=f"a plan ending {state}"
    )


@pytest.fixture()
def ns_worker(request):
    ns = BASE + "-" + request.param
    rt = build_runtime(load_settings(namespace=ns))
    clean(rt)
    env = {"HARVEST_NAMESPACE": ns, "HARVEST_THROWAWAY_STATE": "false" if request.param == "d" else "true"}
    w = worker(env, ns, 2).start()
    try:
        w.wait_ready()
        yield ns, rt
    finally:
        w.stop()
        clean(rt)


@pytest.mark.parametrize("ns_worker", ["d"], indirect=True)
def test_no_order_to_a_state_redis_without_persistence(ns_worker):
    ns, rt = ns_worker
    plan = partial_plan_ending(ns, rt, "FAILED")
    assert plan.reason == "state_not_durable" and not hv_fills(rt, "BTCUSDT")


@pytest.mark.parametrize("ns_worker", ["l"], indirect=True)
def test_state_lost_sends_nothing_until_recovered_and_never_repeats_the_lost_order(ns_worker):
    ns, rt = ns_worker
    first = partial_plan_ending(ns, rt, "FILLED")
    assert first.action is Action.PARTIAL_25 and len(hv_fills(rt, "BTCUSDT")) == 1
    # The state Redis comes back empty; the exchange (the paper engine's keys here) keeps its records.
    keep = (f"{ns}:paper:", f"{ns}:clock", f"{ns}:market:")
    lost = [k for k in rt.r.scan_iter(f"{ns}:*") if not k.startswith(keep)]
    rt.r.delete(*lost)
    assert rt.plans.get(first.plan_id) is None

    def recovered():
        scan(ns)
        return rt.r.exists(rt.plans.k.recovered)

    wait_for(recovered, 40, 0.5, "recovery from the exchange")
    counters = rt.plans.counters()
    assert counters.get("scan:awaiting_recovery", 0) >= 1 and counters.get("recovery:plans_recovered") == 1
    assert rt.r.sismember(rt.plans.k.recovered_plans, first.plan_id)  # the lost plan, known again
    assert (rt.book.get_many(rt.settings.account, ["BTCUSDT"])[0] or {}).get("harvested_tier") == 1
    for _ in range(3):  # later scans: still the one order
        scan(ns)
    wait_for(lambda: rt.plans.counters().get("scan:runs", 0) >= 4, 20, what="the scans")
    assert len(hv_fills(rt, "BTCUSDT")) == 1
    assert not [p for p in rt.plans.all_plans() if p.action is Action.PARTIAL_25 and p.state == "FILLED"]


def test_a_lost_later_attempt_is_not_repeated_either():
    """A decision whose order went out at attempt 1 (attempt 0 failed) has a plan_id no decision
    remakes at attempt 0 after the loss: the book's tier, restored from the exchange's orders,
    keeps the tier from being decided again (python-binance against the emulator)."""
    from harvest.venues.sim.emulator import Emulator

    ns = BASE + "-a"
    rt = build_runtime(load_settings(namespace=ns))
    clean(rt)
    key, secret = "loss-key", "loss-secret"
    emu = Emulator(rt.r, ns, rt.settings.account, key, secret, clock=rt.clock).start()
    env = {
        "HARVEST_NAMESPACE": ns,
        "HARVEST_FAPI_URL": emu.url,
        "HARVEST_API_KEY": key,
        "HARVEST_API_SECRET": secret,
        "HARVEST_MAX_SEND_ATTEMPTS": "1",
        "HARVEST_ATTEMPT_BACKOFF_S": "0.2",
        "HARVEST_VENUE_TIMEOUT_S": "1",
    }
    w = worker(env, ns, 2).start()
    try:
        w.wait_ready()
        e, s = 100_000.0, 99_000.0
        rt.market.put_many([state("BTCUSDT")])
        rt.venue.set_mark("BTCUSDT", e)
        rt.venue.open_position("BTCUSDT", "LONG", 1.0, 10.0, stop_price=s, client_order_id="strategy-open")
        emu.faults.inject("POST /fapi/v1/order", "unavailable_503", times=1)  # attempt 0: not executed
        rt.venue.set_mark("BTCUSDT", mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))

        def filled():
            scan(ns)
            # the tier's plan (while it backs off, the decision falls back to a profit lock, which
            # may fill first: its stop is no fill)
            return next(
                (p for p in rt.plans.all_plans() if p.action is Action.PARTIAL_25 and p.state == "FILLED"), None
            )

        done = wait_for(filled, 30, 0.3, "tier 1 at a later attempt")
        assert done.attempt == 1 and len(hv_fills(rt, "BTCUSDT")) == 1
        keep = (f"{ns}:paper:", f"{ns}:clock", f"{ns}:market:", f"{ns}:emu:")
        rt.r.delete(*[k for k in rt.r.scan_iter(f"{ns}:*") if not k.startswith(keep)])

        def restored():
            scan(ns)
            return (rt.book.get_many(rt.settings.account, ["BTCUSDT"])[0] or {}).get("harvested_tier") == 1

        wait_for(restored, 40, 0.5, "recovery to restore the tier")
        for _ in range(4):
            scan(ns)
        wait_for(lambda: rt.plans.counters().get("scan:runs", 0) >= 5, 20, what="the scans")
        assert len(hv_fills(rt, "BTCUSDT")) == 1
        assert not [p for p in rt.plans.all_plans() if p.action is Action.PARTIAL_25]
    finally:
        w.stop()
        emu.stop()
        clean(rt)


def test_plan_creation_knows_recovered_plans_and_waits_for_recovery():
    """The store's side: no plan while the state is not known whole; a plan_id the exchange
    showed after a loss is a true repeat whose lineage reads FILLED."""
    import time as _t

    from harvest.domain.models import Decision, Side
    from harvest.domain.plans import lineage_id, make_plan_id, new_plan

    rt = build_runtime(load_settings(namespace=BASE + "-s"))
    clean(rt)
    lid = lineage_id("paper", "BTCUSDT", "L1", Action.PARTIAL_25, "tier=1")
    pid = make_plan_id("paper", "BTCUSDT", "L1", Action.PARTIAL_25, "tier=1", 0)
    now = _t.time()
    d = Decision(
        account="paper",
        symbol="BTCUSDT",
        epoch="L1",
        side=Side.LONG,
        action=Action.PARTIAL_25,
        tier=1,
        close_fraction=0.25,
        r_net=1.0,
        kill_score=0.0,
        mark_price=100.0,
        decided_at=now,
    )
    made = new_plan(d, now, 30)
    assert (made.plan_id, made.record["lineage"]) == (pid, lid)
    plan = made.record
    rt.r.delete(rt.plans.k.recovered)
    assert rt.plans.create(plan, {}) == "STATE_NOT_RECOVERED" and rt.plans.get(pid) is None
    rt.r.sadd(rt.plans.k.recovered_plans, pid)
    # A marker written on another server (before a failover or a restart) is no marker: removed.
    rt.r.set(rt.plans.k.recovered, "0" * 40)
    assert rt.plans.create(plan, {}) == "STATE_NOT_RECOVERED" and not rt.r.exists(rt.plans.k.recovered)
    assert rt.plans.mark_recovered("not-this-server") is False and not rt.plans.state_known()
    assert rt.plans.mark_recovered(rt.plans.server_id()) and rt.plans.state_known()
    assert rt.plans.create(plan, {}) == "RECOVERED" and rt.plans.get(pid) is None
    [latest] = rt.plans.latest_many([lid])
    assert (latest.attempt, latest.state, latest.reason) == (0, "FILLED", "recovered_from_exchange")
    clean(rt)


def test_terminal_plans_past_retention_are_archived_and_stay_readable():
    """Old main: plans were never deleted (and a 1 MB reason list was stored whole)."""
    import time as _t

    from harvest.domain.models import Side
    from harvest.domain.plans import lineage_id, make_plan_id

    rt = build_runtime(load_settings(namespace=BASE + "-r"))
    clean(rt)
    lid = lineage_id("paper", "BTCUSDT", "L1", Action.PARTIAL_25, "tier=1")
    pid = make_plan_id("paper", "BTCUSDT", "L1", Action.PARTIAL_25, "tier=1", 0)
    now = _t.time()
    rt.plans.create(
        {
            "plan_id": pid,
            "lineage": lid,
            "attempt": 0,
            "account": "paper",
            "symbol": "BTCUSDT",
            "epoch": "L1",
            "side": Side.LONG,
            "action": Action.PARTIAL_25,
            "tier": 1,
            "close_fraction": 0.25,
            "created_at": now - 100,
            "expires_at": now + 30,
            "client_order_id": f"hv-{pid}-0",
        },
        {},
    )
    assert rt.plans.archive_before(now) == 0  # not terminal: never archived
    rt.plans.transition(pid, "REJECTED", "below_min_qty", now=now - 50)
    assert rt.plans.archive_before(now - 60) == 0  # within its retention
    assert rt.plans.archive_before(now) == 1
    assert not rt.r.exists(rt.plans.k.plan(pid)) and pid not in list(p.plan_id for p in rt.plans.all_plans())
    again = rt.plans.get(pid)  # still readable
    assert (again.state, again.reason, again.tier) == ("REJECTED", "below_min_qty", 1)
    [latest] = rt.plans.latest_many([lid])  # the lineage still knows how it ended
    assert (latest.state, latest.reason) == ("REJECTED", "below_min_qty")
    clean(rt)
