"""Guard verdicts, profit lock, shadow mode and malformed messages, through real workers."""

from __future__ import annotations

import os

import pytest

from harvest.domain.models import Action
from harvest.domain.plans import make_plan_id
from harvest.services.runtime import build_runtime
from settings import load_settings
from tasks.app import app
from tests.harness import wait_for, worker
from tests.pipeline_helpers import (
    clean,
    epoch,
    mark_for_r,
    open_position,
    wait_quiet,
    wait_terminal,
)

NS = os.environ["HARVEST_NAMESPACE"]
SHADOW_NS = NS + "-s"


@pytest.fixture(scope="module")
def workers():
    live = worker({}, NS).start()
    shadow = worker({"HARVEST_NAMESPACE": SHADOW_NS, "HARVEST_MODE": "shadow"}, SHADOW_NS).start()
    live.wait_ready()
    shadow.wait_ready()
    yield live, shadow
    live.stop()
    shadow.stop()


@pytest.fixture()
def rt(workers, rt):
    """The shared clean runtime (tests/integration/conftest.py), once the processes run."""
    return rt


@pytest.fixture()
def shadow_rt(workers):
    rt = build_runtime(load_settings(namespace=SHADOW_NS, mode="shadow"))
    clean(rt)
    return rt


def scan():
    from tasks.scan import scan_positions

    return scan_positions()


def pid(rt, symbol, action, key):
    return make_plan_id(rt.settings.account, symbol, epoch(rt, symbol), action, key)


def test_below_min_qty_rejected(rt):
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 0.003, e, s, mark=mark_for_r(e, s, 0.003, 0.003, 2.2, "LONG"))
    scan()
    plan = wait_terminal(rt, pid(rt, "BTCUSDT", Action.PARTIAL_25, "tier=1"))
    assert (plan.state, plan.reason) == ("REJECTED", "below_min_qty")
    assert rt.venue.orders(harvest_only=True) == []


def test_dust_remainder_folded_into_full_close(rt):
    e, s = 2500.0, 2475.0
    open_position(rt, "ETHUSDT", "LONG", 0.009, e, s, mark=mark_for_r(e, s, 0.009, 0.009, 2.2, "LONG"))
    scan()
    plan = wait_terminal(rt, pid(rt, "ETHUSDT", Action.PARTIAL_25, "tier=1"))
    assert plan.state == "FILLED" and plan.order_qty == "0.009"
    assert rt.venue.position("ETHUSDT") is None
    assert rt.plans.counters()["guard:dust_folded"] == 1


def test_symbol_not_allowed(rt):
    e, s = 0.10, 0.099
    open_position(rt, "ALGOUSDT", "LONG", 5000.0, e, s, mark=mark_for_r(e, s, 5000, 5000, 2.2, "LONG"))
    scan()
    plan = wait_terminal(rt, pid(rt, "ALGOUSDT", Action.PARTIAL_25, "tier=1"))
    assert (plan.state, plan.reason) == ("REJECTED", "symbol_not_allowed")
    assert rt.venue.orders(harvest_only=True) == []


def test_decision_for_the_other_side_is_rejected_before_any_order(rt):
    """A well-formed decision whose side is not the position's (a corrupted or forged message)
    never reaches the exchange: a close sent the wrong way is stopped by the guard."""
    from harvest.services.decide import decide, load_positions
    from workflows import action_chain

    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
    rows, now = load_positions(rt)
    [d] = decide(rt, rows, now)
    from harvest.domain.models import Side

    wrong = d.model_copy(update={"side": Side.SHORT})
    action_chain(wrong.model_dump(mode="json")).apply_async()
    from harvest.domain.plans import plan_id_for

    plan = wait_terminal(rt, plan_id_for(wrong))
    assert (plan.state, plan.reason) == ("REJECTED", "side_mismatch")
    assert rt.venue.orders(harvest_only=True) == []
    assert rt.plans.counters()["guard:side_mismatch"] == 1


def test_profit_lock_only_tightens(rt):
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 1.8, "LONG"))
    scan()
    mark = rt.venue.mark_price("BTCUSDT")
    expected = e + 0.5 * (mark - e)
    plan = wait_terminal(rt, pid(rt, "BTCUSDT", Action.PROFIT_LOCK_SL, f"stop={expected:.10g}"))
    assert (plan.state, plan.reason) == ("FILLED", "stop_working")
    new_stop = rt.venue.position("BTCUSDT").stop_price
    assert e < new_stop <= expected and new_stop > s
    for _ in range(3):  # same state: no looser or repeated stop move
        scan()
    wait_quiet(rt)
    stops = [o for o in rt.venue.orders(harvest_only=True) if o.type == "STOP_MARKET"]
    assert len(stops) == 1
    # Price falls back below the lock: the stop triggers on the venue, never loosens.
    rt.venue.set_mark("BTCUSDT", new_stop - 10)
    assert rt.venue.position("BTCUSDT") is None


def test_shadow_mode_records_no_order(shadow_rt):
    rt = shadow_rt
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.1, "LONG"))
    app.send_task("harvest.scan_positions", queue=f"{SHADOW_NS}.scan")
    wait_for(lambda: rt.r.exists(rt.book.k.book(rt.settings.account, "BTCUSDT")), 20, what="book entry")
    plan = wait_terminal(rt, pid(rt, "BTCUSDT", Action.PARTIAL_25, "tier=1"))
    assert (plan.state, plan.reason) == ("SHADOWED", "shadow_mode")
    assert plan.order_qty == "0.25"  # what would have been sent is recorded
    assert rt.venue.orders(harvest_only=True) == []
    assert rt.venue.position("BTCUSDT").qty == 1.0


@pytest.mark.parametrize(
    "task,payload",
    [
        ("harvest.propose", {"symbol": "BTCUSDT", "action": "FULL_CLOSE_PROPOSED"}),
        (
            "harvest.propose",
            {
                "account": "paper",
                "symbol": "BTCUSDT",
                "epoch": "L1",
                "side": "LONG",
                "action": "PARTIAL_25",
                "tier": 1,
                "r_net": float("nan"),
                "kill_score": 0.1,
                "mark_price": 1.0,
                "decided_at": 0.0,
            },
        ),
        ("harvest.guard", {"plan_id": "'; DROP"}),
        ("harvest.execute", ["not", "a", "dict"]),
        ("harvest.confirm", "garbage"),
        ("harvest.evaluate", 42),
    ],
)
def test_malformed_message_rejected_and_recorded(rt, task, payload):
    stage = task.split(".")[1]
    queue = f"{NS}.orders" if stage in ("execute", "confirm") else f"{NS}.scan"
    app.send_task(task, args=[payload], queue=queue)
    wait_for(lambda: rt.plans.counters().get(f"malformed:{stage}"), 20, what="rejection record")
    [(_, rec)] = rt.r.xrange(f"{NS}:stream:rejected")
    assert rec["stage"] == stage and rec["error"]
    assert rt.venue.orders(harvest_only=True) == [] and rt.plans.count_open() == 0
