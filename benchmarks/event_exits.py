"""Reaction to a mark price: event-driven exits (``harvest streams`` firing a position's chain
when a streamed mark crosses its trigger) against the scan path (the beat scan's next tick),
measured side by side in one run on the fapi emulator (issue 23).

    python benchmarks/event_exits.py [--positions 20] [--scan-interval 5] [--json out.json]

Each path gets its own namespace on one private redis-server, its own emulator (REST and
streams, a mark event per symbol per second as Binance's ``@markPrice@1s``), a real worker and
``--positions`` LONGs at 1 R. Then, one position at a time, the mark jumps to 2.2 R (a partial
close is due) and the time to the order's acknowledgement (the plan's ``acked_at``) is taken:

* **event path** (``harvest streams`` with triggers; one scan first, to leave the triggers; no
  beat): from the mark *event* that crossed the trigger (its ``E``) to the acknowledgement — the
  figure of the target (p99 ≤ 250 ms) — and from the mark change;
* **scan path** (beat scanning every ``--scan-interval`` s, REST positions, no streams): from
  the mark change to the acknowledgement; its median is bound by half the scan interval.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import _setup  # noqa: F401  (puts the repository on sys.path)
from _setup import celery_app, fresh_namespace, mark_at_r, paper_of, runtime, start_emulator, start_worker

from harvest.ops.procs import CeleryProcess, HarvestProcess, RedisServer, wait_for
from harvest.store.streams import StreamCache


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _filled(rt, sym: str):
    return next((p for p in rt.plans.all_plans() if p.symbol == sym and p.state == "FILLED" and p.acked_at), None)


def _run(url: str, n: int, event: bool, scan_interval_s: float) -> dict:
    syms = [f"{'E' if event else 'S'}{i:03d}USDT" for i in range(n)]
    extra = {"HARVEST_SCAN_INTERVAL_S": repr(scan_interval_s), "HARVEST_MARKET_REFRESH_S": "3600"}
    ns, env, rt = fresh_namespace(url, "react", syms, r_multiple=1.0)
    env.update(extra)
    emu = start_emulator(rt, env)
    paper = paper_of(rt)
    procs = [start_worker(env, ns, "scan,orders,housekeeping", 2)]
    try:
        procs[0].wait_ready(120)
        if event:
            procs.append(HarvestProcess("streams", env, ["--symbols", ",".join(syms)]).start())
            cache = StreamCache(rt.r, ns, rt.settings.account)
            wait_for(lambda: cache.snapshot(3.0, 3.0), 60, what="the stream cache")
            client = celery_app(env)
            client.send_task("harvest.scan_positions", queue=f"{ns}.scan")  # leaves the triggers
            wait_for(lambda: rt.r.hlen(f"{ns}:triggers:{rt.settings.account}") == n, 30, what="the triggers")
            client.close()
        else:
            procs.append(CeleryProcess("beat", env).start())
            procs[-1].wait_ready(60)
        harvest = runtime(env)
        from_change, from_event = [], []
        for sym in syms:
            time.sleep(random.uniform(0.0, scan_interval_s if not event else 1.0))  # a random phase of the tick
            t_set = time.time()
            rt.r.set(paper.k_mark(sym), repr(mark_at_r(rt, sym, 2.2)))
            plan = wait_for(lambda s=sym: _filled(harvest, s), 30, 0.005, f"{sym}'s partial")
            from_change.append(plan.acked_at - t_set)
            if event:
                fired = [f for _, f in rt.r.xrange(f"{ns}:streams:fired") if f["symbol"] == sym]
                # from the mark event's arrival (wall ms): its E is the exchange's clock, the
                # replay's market time on the emulator, never comparable with acked_at (wall)
                from_event.append(plan.acked_at - int(fired[0]["received_ms"]) / 1000.0)
        out = {
            "positions": n,
            "mark_change_to_ack_p50_s": statistics.median(from_change),
            "mark_change_to_ack_p99_s": _pct(from_change, 0.99),
        }
        if event:
            out["mark_event_to_ack_p50_s"] = statistics.median(from_event)
            out["mark_event_to_ack_p99_s"] = _pct(from_event, 0.99)
            out["mark_event_to_ack_max_s"] = max(from_event)
        return out
    finally:
        for p in procs:
            p.stop()
        emu.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--positions", type=int, default=20)
    p.add_argument("--scan-interval", type=float, default=5.0)
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args()
    server = RedisServer().start()
    try:
        ev = _run(server.url, a.positions, True, a.scan_interval)
        sc = _run(server.url, a.positions, False, a.scan_interval)
    finally:
        server.stop()
    ms = 1000.0
    print(f"reaction to a mark crossing 2 R, {a.positions} positions per path, scan every {a.scan_interval:g} s")
    print(f"{'':40} {'event path':>12} {'scan path':>12}")
    print(
        f"{'mark event → order acknowledged, p50':40} {ev['mark_event_to_ack_p50_s'] * ms:>10.0f}ms {'—':>12}"
        f"\n{'mark event → order acknowledged, p99':40} {ev['mark_event_to_ack_p99_s'] * ms:>10.0f}ms {'—':>12}"
        f"   (target ≤ 250 ms: {'met' if ev['mark_event_to_ack_p99_s'] <= 0.25 else 'MISSED'})"
    )
    for q in ("p50", "p99"):
        e, s = ev[f"mark_change_to_ack_{q}_s"], sc[f"mark_change_to_ack_{q}_s"]
        print(f"{'mark change → order acknowledged, ' + q:40} {e * ms:>10.0f}ms {s * ms:>10.0f}ms")
    print("(a mark change reaches the stream with the next @markPrice@1s event: up to 1 s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"event": ev, "scan": sc, "scan_interval_s": a.scan_interval}, f, indent=2, sort_keys=True)
    return 0 if ev["mark_event_to_ack_p99_s"] <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
