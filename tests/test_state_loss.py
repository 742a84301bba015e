"""State that must not be lost (issue 19.3), with a real worker: a Redis without persistence
gets no order unless the deployment says it is throw-away; a Redis that lost harvest's state
sends nothing until the exchange's records are read, and the lost plan's order is found, not
repeated. Old main: Redis restarted empty under a SUBMITTED plan, the next scan closed again."""

from __future__ import annotations

import os

import pytest

from harvest.models import Action
from harvest.runtime import build_runtime
from settings import load_settings
from tasks.app import app
from tests.harness import wait_for, worker
from tests.pipeline_helpers import clean, mark_for_r, open_position

BASE = os.environ["HARVEST_NAMESPACE"]


def hv_fills(rt, symbol):
    return [t for t in rt.venue.trades() if t["symbol"] == symbol and t["clientOrderId"].startswith("hv-")]


def scan(ns):
    app.send_task("harvest.scan_positions", queue=f"{ns}.scan")


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
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
    scan(ns)
    plan = wait_for(lambda: next((p for p in rt.plans.all_plans() if p.state == "FAILED"), None), 30,
                    what="the plan to be refused")
    assert plan.reason == "state_not_durable" and not hv_fills(rt, "BTCUSDT")


@pytest.mark.parametrize("ns_worker", ["l"], indirect=True)
def test_state_lost_sends_nothing_until_recovered_and_never_repeats_the_lost_order(ns_worker):
    ns, rt = ns_worker
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
    scan(ns)
    first = wait_for(lambda: next((p for p in rt.plans.all_plans() if p.state == "FILLED"), None), 30,
                     what="tier 1")
    assert first.action is Action.PARTIAL_25 and len(hv_fills(rt, "BTCUSDT")) == 1
    # The state Redis comes back empty; the exchange (the paper engine's keys here) keeps its records.
    keep = (f"{ns}:paper:", f"{ns}:clock", f"{ns}:market:")
    lost = [k for k in rt.r.scan_iter(f"{ns}:*") if not k.startswith(keep)]
    rt.r.delete(*lost)
    assert rt.plans.get(first.plan_id) is None

    def recovered_repeat():
        scan(ns)
        return rt.plans.counters().get("dedup:RECOVERED", 0) >= 1
    wait_for(recovered_repeat, 40, 0.5, "the same decision to meet the recovered plan")
    counters = rt.plans.counters()
    assert counters.get("scan:awaiting_recovery", 0) >= 1 and counters.get("recovery:plans_recovered") == 1
    wait_for(lambda: (rt.book.get_many(rt.settings.account, ["BTCUSDT"])[0] or {}).get("harvested_tier") == 1, 20,
             what="the book to learn that tier 1 was done")
    for _ in range(3):  # later scans: still the one order
        scan(ns)
    wait_for(lambda: rt.plans.counters().get("scan:runs", 0) >= 4, 20, what="the scans")
    assert len(hv_fills(rt, "BTCUSDT")) == 1
    assert not [p for p in rt.plans.all_plans() if p.action is Action.PARTIAL_25 and p.state == "FILLED"]
