"""Stale work after an outage: a backlog of expired scan and plan messages drains in seconds
with a real worker process, runs no stage, sends no order, and is logged as one line."""

from __future__ import annotations

import os
import re
import time

from harvest.domain.models import Action
from harvest.domain.plans import make_plan_id
from harvest.services.runtime import build_runtime
from settings import load_settings
from tasks.app import app
from tasks.stale import QUIET_S
from tests.harness import wait_for, worker
from tests.pipeline_helpers import T0, clean, mark_for_r, open_position

NS = os.environ["HARVEST_NAMESPACE"]
#: Size of the backlog (the design's figure is 10 000; CI uses fewer to stay quick).
N = int(os.environ.get("HARVEST_TEST_STALE_N", "3000"))


def _depth(rt) -> int:
    return sum(rt.r.llen(f"{NS}.{k}") for k in ("scan", "orders", "housekeeping"))


def test_expired_backlog_drains_fast_runs_nothing_and_logs_one_line():
    rt = build_runtime(load_settings())
    clean(rt)
    for k in ("scan", "orders", "housekeeping"):
        rt.r.delete(f"{NS}.{k}")
    # An actionable position (2R), so that a propose or scan that ran would make a plan.
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
    decision = {
        "account": rt.settings.account,
        "symbol": "BTCUSDT",
        "epoch": "e1",
        "side": "LONG",
        "action": Action.PARTIAL_25.value,
        "tier": 1,
        "close_fraction": 0.25,
        "new_stop": None,
        "r_net": 2.2,
        "kill_score": 0.0,
        "components": {},
        "reason_codes": ["R_2"],
        "mark_price": 102_000.0,
        "regime": "TREND",
        "decided_at": T0,
    }
    pid = make_plan_id(rt.settings.account, "BTCUSDT", "e1", Action.PARTIAL_25, "tier=1")

    # The outage: no worker; beat and scans keep publishing, every message expiring soon.
    # Publishing takes 0.5–2 ms a message (fast and slow days of the same machine kind): the
    # messages' life allows 4 ms each, so the backlog is whole before any of it expires.
    life_s = 2.0 + N * 0.004
    expires_at = time.time() + life_s
    kinds = [
        ("harvest.scan_positions", (), {}),
        ("harvest.propose", (decision,), {}),
        ("harvest.execute", ({"plan_id": pid},), {}),
        ("harvest.confirm", ({"plan_id": pid},), {}),
    ]
    with app.producer_or_acquire() as producer:
        for i in range(N):
            name, args, kwargs = kinds[i % len(kinds)]
            app.send_task(name, args=args, kwargs=kwargs, expires=expires_at - time.time(), producer=producer)
    assert time.time() < expires_at, "publishing took longer than the messages' life; lower HARVEST_TEST_STALE_N"
    assert _depth(rt) == N
    wait_for(lambda: time.time() > expires_at, life_s, what="the backlog to expire")  # the outage outlives it

    w = worker({}, NS).start()
    try:
        w.wait_ready()
        t0 = time.monotonic()
        wait_for(lambda: _depth(rt) == 0, 60, what="the stale backlog to drain")
        drained_s = time.monotonic() - t0
        # The summary comes QUIET_S after the last drop (and the counts with it).
        line = wait_for(
            lambda: re.search(r"dropped (\d+) stale messages in [\d.]+ s.*\n", w.output()),
            10 + QUIET_S,
            what="the summary line",
        )
        counters = rt.plans.counters()
    finally:
        w.stop()
    print(
        f"\n{N} expired messages drained in {drained_s:.2f} s ({N / drained_s:.0f}/s); "
        f"worker log: {line.group(0).strip()}"
    )
    assert drained_s < 30  # seconds, not the hours the old consumer spent replaying
    out = w.output()
    assert int(line.group(1)) == N and out.count("stale messages in") == 1
    assert "Discarding revoked task" not in out and "] received" not in out
    assert sum(v for k, v in counters.items() if k.startswith("stale:expired:")) == N
    assert counters["stale:expired:harvest.execute"] == N // 4 + (N % 4 > 2)
    from harvest.ops.scorecard import build_scorecard

    assert sum(build_scorecard(rt)["stale_dropped"].values()) == N  # what the operator sees
    # Nothing ran: no plan made, no message rejected, no order, no scan.
    assert rt.plans.get(pid) is None and rt.plans.count_open() == 0
    assert rt.r.xlen(f"{NS}:stream:rejected") == 0
    assert rt.venue.orders(harvest_only=True) == []
    assert "scan:runs" not in counters
