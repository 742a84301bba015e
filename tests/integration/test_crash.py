"""Kill every worker and beat (SIGKILL) while an order is in flight: nothing sends an order
by itself while the pipeline is down, the scorecard shows the pipeline stopped, and after a
restart the plan ends with exactly one order."""

from __future__ import annotations

import uuid

from harvest.domain.models import Action
from harvest.domain.plans import TERMINAL, make_plan_id
from harvest.ops.loadgen import (
    env_for,
    mark_at_r,
    open_positions,
    runtime,
    start_emulator,
    start_worker,
)
from harvest.ops.procs import CeleryProcess, wait_for
from harvest.ops.scorecard import build_scorecard


def test_killing_every_worker_sends_nothing_and_shows_in_the_scorecard(redis_url):
    ns = f"crash-{uuid.uuid4().hex[:6]}"
    syms = ["K00000USDT", "K00001USDT"]
    env = env_for(
        redis_url,
        ns,
        syms,
        HARVEST_SCAN_INTERVAL_S="0.5",
        HARVEST_HEARTBEAT_INTERVAL_S="0.5",
        HARVEST_PLAN_TTL_S="30",
        HARVEST_SWEEP_INTERVAL_S="1",
        HARVEST_MARKET_REFRESH_S="3600",
    )
    rt = runtime(env)
    open_positions(rt, syms, 0.0)
    emu = start_emulator(rt, env)
    rt = runtime(env)  # harvest's view: python-binance to the emulator
    emu.faults.inject("POST /fapi/v1/order", "latency", latency_s=2.0)  # execute waits in the send
    procs = [start_worker(env, ns, "scan,orders,housekeeping", 2), CeleryProcess("beat", env).start()]
    try:
        for p in procs:
            p.wait_ready()
        emu.venue.set_mark(syms[0], mark_at_r(rt, syms[0], 2.2))
        wait_for(lambda: emu.faults.fired().get("latency"), 30, what="execute to be sending the order")
        for p in procs:
            p.kill()  # every worker and beat (SIGKILL to the process group), mid-send
        # Down: the second position becomes actionable too; nothing acts on it.
        emu.venue.set_mark(syms[1], mark_at_r(rt, syms[1], 2.2))
        card = wait_for(
            lambda: (c := build_scorecard(rt))["heartbeat_age_s"].get("beat", 0) > 3 and c,
            30,
            what="the scorecard to show beat stopped",
        )
        assert card["non_terminal"] >= 1  # the in-flight plan shows, not hidden
        harvest_orders = emu.venue.orders(harvest_only=True)
        assert len(harvest_orders) <= 1  # at most the one execute had already sent
        assert all(o.symbol == syms[0] for o in harvest_orders)
        # Restarted: the in-flight plan is resolved by look-up (one order), the other trades once.
        procs = [start_worker(env, ns, "scan,orders,housekeeping", 2), CeleryProcess("beat", env).start()]
        for p in procs:
            p.wait_ready()
        pids = []
        for s in syms:
            epoch = rt.book.get_many(rt.settings.account, [s])[0]
            epoch = (
                wait_for(
                    lambda s=s: (rt.book.get_many(rt.settings.account, [s])[0] or {}).get("epoch"),
                    30,
                    what="book epoch",
                )
                if epoch is None
                else epoch["epoch"]
            )
            pids.append(make_plan_id(rt.settings.account, s, epoch, Action.PARTIAL_25, "tier=1"))
        plans = wait_for(
            lambda: (
                all((p := rt.plans.get(pid)) is not None and p.state in TERMINAL for pid in pids)
                and [rt.plans.get(pid) for pid in pids]
            ),
            90,
            what="both plans to end",
        )
        assert [p.state for p in plans] == ["FILLED", "FILLED"]
        by_plan = {}
        for o in emu.venue.orders(harvest_only=True):
            by_plan.setdefault(o.client_order_id[3:19], []).append(o)
        assert all(len(by_plan[pid]) == 1 for pid in pids), by_plan
    finally:
        for p in procs:
            p.stop()
        emu.stop()
