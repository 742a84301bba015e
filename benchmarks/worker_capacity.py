"""What one worker of each kind sustains on this machine: the numbers behind the README's
scaling guidance. Real processes: a private redis-server, ``celery worker`` per queue, the
paper venue (in-process, and through python-binance + the fapi emulator).

    python benchmarks/worker_capacity.py [--positions 1000] [--plans 200] [--json out.json]

Measures, each in the same run:

* scan queue — scans per second one worker process (``-c 1``) drains when every scan reads
  ``--positions`` open positions and none needs action (the steady state);
* orders path — plans per second from one scan to every plan terminal (propose → guard on the
  scan worker, execute → confirm on the orders worker) with orders concurrency 1, 2, 4, on the
  in-process paper venue and on the emulator with 50 ms added to every order request (an
  exchange round trip): CPU-bound vs I/O-bound order work;
* housekeeping — one market-state refresh of the allowlist (ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import clean as _clean  # noqa: E402
from _setup import env_for as _env  # noqa: E402
from _setup import fresh_namespace, start_emulator, start_worker  # noqa: E402
from _setup import symbols as _symbols  # noqa: E402

from harvest.ops.procs import RedisServer, wait_for  # noqa: E402


def scan_rate(url: str, positions: int, scans: int = 10) -> dict:
    syms = _symbols(positions)
    ns, env, rt = fresh_namespace(url, "cap", syms, 0.0)
    os.environ.update(env)
    from celery import Celery

    from settings import load_settings
    from settings.celery import celery_config

    app = Celery("bench", set_as_current=False)
    app.conf.update(celery_config(load_settings()))
    w = start_worker(env, ns, "scan", 1)
    try:
        w.wait_ready()
        app.send_task("harvest.scan_positions", queue=f"{ns}.scan")  # warm-up: imports, first Redis calls
        wait_for(lambda: int(rt.plans.counters().get("scan:runs", 0)) == 1, 60, 0.01, "warm-up scan")
        t0 = time.perf_counter()
        for _ in range(scans):
            app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
        wait_for(lambda: int(rt.plans.counters().get("scan:runs", 0)) == scans + 1, 300, 0.005, "scans to drain")
        dt = time.perf_counter() - t0
    finally:
        w.stop()
        _clean(rt)
    return {
        "positions": positions,
        "scans": scans,
        "seconds": round(dt, 3),
        "scans_per_s": round(scans / dt, 2),
        "ms_per_scan": round(1000 * dt / scans, 1),
    }


def order_rate(url: str, plans: int, concurrency: int, emulator_latency_s: float | None) -> dict:
    syms = _symbols(plans)
    ns, env, rt = fresh_namespace(url, "cap", syms, 2.1)
    emu = None
    if emulator_latency_s is not None:
        emu = start_emulator(rt, env)
        emu.faults.inject("POST /fapi/v1/order", "latency", times=10 * plans, latency_s=emulator_latency_s)
    os.environ.update(env)
    from celery import Celery

    from settings import load_settings
    from settings.celery import celery_config

    app = Celery("bench", set_as_current=False)
    app.conf.update(celery_config(load_settings()))
    scan_w = start_worker(env, ns, "scan", 2)
    orders_w = start_worker(env, ns, "orders", concurrency)
    try:
        scan_w.wait_ready()
        orders_w.wait_ready()
        t0 = time.perf_counter()
        app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
        wait_for(lambda: int(rt.plans.counters().get("scan:runs", 0)) == 1, 120, 0.01, "the scan")
        wait_for(
            lambda: rt.r.zcard(rt.plans.k.plan_index) >= plans and rt.plans.count_open() == 0,
            600,
            0.02,
            "every plan terminal",
        )
        dt = time.perf_counter() - t0
        states = {}
        for p in rt.plans.all_plans():
            states[p.state] = states.get(p.state, 0) + 1
    finally:
        scan_w.stop()
        orders_w.stop()
        if emu is not None:
            emu.stop()
        _clean(rt)
    return {
        "venue": "emulator +%d ms/order" % round(1000 * emulator_latency_s) if emu else "paper in-process",
        "orders_concurrency": concurrency,
        "plans": plans,
        "states": states,
        "seconds": round(dt, 2),
        "plans_per_s": round(plans / dt, 1),
    }


def market_refresh_ms(url: str) -> dict:
    ns = "cap-" + uuid.uuid4().hex[:6]
    env = _env(url, ns, ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"])
    for k in ("HARVEST_FAPI_URL", "HARVEST_API_KEY", "HARVEST_API_SECRET", "HARVEST_VENUE_WEIGHT_LIMIT_1M"):
        os.environ.pop(k, None)  # the in-process paper engine, as beat's housekeeping uses it
    os.environ.update(env)
    from settings import get_settings

    get_settings.cache_clear()
    from harvest.services.runtime import reset_runtime

    reset_runtime()
    from tasks.housekeeping import refresh_market

    refresh_market()  # warm: loads the shipped klines
    t0 = time.perf_counter()
    for _ in range(5):
        refresh_market()
    return {"symbols": 6, "ms_per_refresh": round(1000 * (time.perf_counter() - t0) / 5, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=1000, help="open positions per scan (scan-rate run)")
    ap.add_argument("--plans", type=int, default=100, help="actionable positions (orders runs)")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    server = RedisServer().start()
    try:
        out = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "scan": [scan_rate(server.url, n) for n in (10, 100, a.positions)],
            "orders": [order_rate(server.url, a.plans, c, None) for c in (1, 2, 4)]
            + [order_rate(server.url, a.plans, c, 0.05) for c in (1, 4, 8)],
            "housekeeping": market_refresh_ms(server.url),
        }
    finally:
        server.stop()
    print(f"machine: {out['machine']['cpus']} CPUs, Python {out['machine']['python']}")
    for s in out["scan"]:
        print(
            f"scan worker -c 1: {s['positions']:>5} positions/scan → {s['scans_per_s']:>7.1f} scans/s "
            f"({s['ms_per_scan']} ms/scan)"
        )
    for o in out["orders"]:
        print(
            f"orders worker -c {o['orders_concurrency']} ({o['venue']}): {o['plans_per_s']:>6.1f} plans/s "
            f"({o['plans']} plans in {o['seconds']} s; {o['states']})"
        )
    print(
        f"housekeeping: market refresh of {out['housekeeping']['symbols']} symbols "
        f"{out['housekeeping']['ms_per_refresh']} ms"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
