"""The replay and the pipeline make the same decisions (issue 20.2): on a shipped day, for the
same six positions (a tight 0.5 % strategy stop, so that partials and profit locks come
within the day) and theta, every plan the Celery pipeline makes — the scan in this process on
the paper engine, the chains in a real worker — is a decision the replay made at the same bar,
with the same plan_id, action and tier, and the other way round.

The pipeline is driven bar by bar: the market clock stands at each 1-minute bar's close, the
mark is that bar's close (the replay's mark), the market state is refreshed by the
``harvest.refresh_market`` task's own code, and each scan's chains finish before the next bar.
A position is compared until the replay's first exit of it (a stop the replay sees on a bar's
low, the paper engine's mark override sees only at a close: after that the two positions
differ by design). The fill model differs by one bar (the pipeline fills at the scan's mark,
the replay at the next open), which changes no decision: R_net is per unit still open."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from harvest.data import SHIPPED_SYMBOLS, load_klines
from harvest.domain.models import Action, Side
from harvest.domain.plans import decision_key_of, make_plan_id
from harvest.lab.engine import simulate
from harvest.lab.entries import Entry
from harvest.lab.market import load_market
from settings import load_settings
from tests.harness import wait_for, worker
from tests.pipeline_helpers import wait_quiet

T_START = 1_750_464_000 + 1800  # 2025-06-21 00:30 UTC (the demo's day)
HOURS = 24


@pytest.fixture(scope="module")
def live_worker():
    w = worker({}, os.environ["HARVEST_NAMESPACE"]).start()
    w.wait_ready()
    yield w
    w.stop()


@pytest.fixture()
def rt(live_worker, rt):
    return rt


def test_replay_and_pipeline_make_the_same_decisions(rt):
    from tasks.housekeeping import refresh_market
    from tasks.scan import scan_positions

    theta = load_settings().theta
    m = load_market([], theta)
    entries = []
    for sym in SHIPPED_SYMBOLS:
        k = load_klines(sym)
        j0 = int(np.searchsorted(k.open_time, T_START))
        side = Side.LONG if k.close[j0 - 1] >= k.close[j0 - 61] else Side.SHORT  # the demo's rule
        price = float(k.open[j0])
        stop = price * (1 - side.sign * 0.005)  # a tight strategy stop: partials and locks come sooner
        entries.append(Entry(sym, side, m.start[sym] + j0, price, round(2000.0 / price, 3), 10.0, stop))
    decided: list = []
    trades = simulate(m, entries, "default", theta, decisions=decided)
    last = {e.symbol: T_START + HOURS * 3600 for e in entries}
    for i, e in enumerate(entries):  # compare until the replay's exit
        last[e.symbol] = min(last[e.symbol], float(trades.exit_time[i]) - 60)

    def pid(e: Entry, action: Action, tier: int, new_stop: float) -> str:
        epoch = f"{e.side.value[0]}{int(m.open_time[e.bar])}"
        stop = None if np.isnan(new_stop) else new_stop
        return make_plan_id(rt.settings.account, e.symbol, epoch, action, decision_key_of(action, tier, stop))

    replay = set()
    for gid, bar, action, tier, new_stop in decided:
        e = entries[gid]
        t = float(m.open_time[bar]) + 60
        if t <= last[e.symbol]:
            replay.add((t, e.symbol, action.value, tier, pid(e, action, tier, new_stop)))

    # the pipeline, bar by bar
    rt.clock.set(T_START, 0.0)
    for e in entries:
        rt.venue.set_position(e.symbol, e.side.value, e.qty, e.price, e.leverage, opened_at=T_START, stop_price=e.stop)
        rt.venue.set_mark(e.symbol, e.price)
    refresh_market()
    scan_positions()  # first sight: the book's epochs and entry states
    wait_quiet(rt)
    assert not list(rt.plans.all_plans())
    klines = {s: load_klines(s) for s in SHIPPED_SYMBOLS}
    seen: set[str] = set()
    pipeline = set()
    t0 = time.monotonic()
    for minute in range(HOURS * 60):
        t = T_START + 60 * (minute + 1)  # the close of bar `minute`
        rt.clock.set(t, 0.0)
        for s, k in klines.items():
            rt.venue.set_mark(s, float(k.close[k.index_at(t - 1)]))
        refresh_market()
        started = scan_positions()["started"]
        # the chains this scan started have made their plans, and every plan is terminal
        want = len(seen) + started
        wait_for(lambda want=want: len(list(rt.plans.all_plans())) >= want, 30, what="the scan's plans")
        wait_quiet(rt)
        for p in rt.plans.all_plans():
            if p.plan_id not in seen:
                seen.add(p.plan_id)
                if t <= last[p.symbol]:
                    pipeline.add((float(t), p.symbol, p.action.value, p.tier, p.plan_id))
    assert time.monotonic() - t0 < 600
    print(f"\n{len(replay)} decisions compared: {sorted(replay)}")
    assert replay, "the window holds decisions to compare"
    assert pipeline == replay, (sorted(pipeline - replay)[:5], sorted(replay - pipeline)[:5])


def test_the_pipeline_runs_the_lsf_ladder_policy():
    """``HARVEST_POLICY=lsf_ladder`` in a worker: a 10× long whose mark passed the ladder's tp1
    gets tier 1 closing the scheme's 30 % of the opening qty (not the R ladder's 25 % at 2 R)."""
    from harvest.domain.exit_ladder import compute_levels
    from harvest.services.runtime import build_runtime
    from tasks.app import app
    from tests.pipeline_helpers import clean, open_position

    ns = os.environ["HARVEST_NAMESPACE"] + "-lsf"
    rt = build_runtime(load_settings(namespace=ns))
    clean(rt)
    w = worker({"HARVEST_NAMESPACE": ns, "HARVEST_POLICY": "lsf_ladder"}, ns, 2).start()
    try:
        w.wait_ready()
        theta = load_settings(policy="lsf_ladder").theta
        e = 100_000.0
        tp1 = compute_levels(e, "LONG", 10.0, theta).tp_prices[0]
        open_position(rt, "BTCUSDT", "LONG", 1.0, e, 99_000.0, leverage=10.0, mark=tp1 + 10)
        assert (tp1 + 10 - e) / 1_000.0 < 2.0  # under 2 R: the R ladder would hold
        app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
        plan = wait_for(
            lambda: next((p for p in rt.plans.all_plans() if p.state in ("FILLED", "REJECTED", "FAILED")), None),
            30,
            what="the tier's plan",
        )
        assert (plan.action, plan.tier, plan.state, plan.order_qty) == (Action.PARTIAL_25, 1, "FILLED", "0.3")
        assert rt.venue.position("BTCUSDT").qty == pytest.approx(0.7)
    finally:
        w.stop()
