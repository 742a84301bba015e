"""Request weight of the scan's position reads: REST polling against ``harvest streams``' cache
(issue 23), measured side by side in one run on the fapi emulator (its weight counter is
Binance's per-endpoint weight).

    python benchmarks/stream_weight.py [--positions 10] [--scans 24] [--refreshes 6] [--audit-s 30] [--json out.json]

It starts a private redis-server, the emulator (REST and streams) and a real ``harvest
streams`` process, opens ``--positions`` positions, then reads the account's positions the way
the beat scan does (:func:`harvest.services.decide.venue_positions`) ``--scans`` times from
REST and ``--scans`` times with the streams up, and prints the weight per scan and per minute at
the default 5-second scan interval for both, the weight the streams process spent meanwhile
(none when nothing changes), and the weight of one change (a stop moved and a partial close:
folded in from the stream, no REST read since issue 32). Then what a streamed account costs at
steady state (issue 32, "streams are the truth, REST the audit"): one audit of the cache
(``--audit-s`` apart here; its weight priced per minute at the default
``HARVEST_AUDIT_INTERVAL_S``, 900 s) and one reconcile, from REST and from the stream cache.
Then the market refresh's klines: ``GET /fapi/v1/klines`` at
every refresh as before the kline streams, against the bars ``harvest streams`` keeps from
``<symbol>@kline_1m`` with the market clock a minute on before each refresh.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import _setup  # noqa: F401  (puts the repository on sys.path)
from _setup import ROOT, fresh_namespace, runtime, start_emulator

from harvest.ops.procs import RedisServer, wait_for
from harvest.services.decide import venue_positions
from harvest.services.market import refresh_market_states
from harvest.services.reconcile import reconcile_once
from harvest.store.streams import KlineCache, StreamCache
from harvest.venues.binance_facts import request_weight

SCAN_INTERVAL_S = 5.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--positions", type=int, default=10)
    p.add_argument("--scans", type=int, default=24)
    p.add_argument("--refreshes", type=int, default=6, help="market refreshes each way")
    p.add_argument("--audit-s", type=float, default=30.0, help="the streams process's audit interval here")
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args()
    server = RedisServer().start()
    proc = None
    try:
        syms = [f"B{i:03d}USDT" for i in range(a.positions)]
        ns, env, rt = fresh_namespace(server.url, "weight", syms, r_multiple=0.5)
        emu = start_emulator(rt, env)
        rest = runtime(env)  # env now points at the emulator: positions by python-binance
        venue_positions(rest, from_streams=False)  # warm: leverage, opening times, funding cached
        w0 = emu.weight_spent()
        for _ in range(a.scans):
            assert len(venue_positions(rest, from_streams=False)) == a.positions
        per_scan_rest = (emu.weight_spent() - w0) / a.scans

        # The market refresh before the kline streams: GET /fapi/v1/klines for every symbol at
        # every refresh (the bar cache emptied before each, as the refresh read before it had one).
        klines = KlineCache(rt.r, ns)
        n_bars = rest.settings.theta.closes_needed

        def rest_reads() -> int:
            return int(rt.r.hget(f"{ns}:counters", "market:klines_rest") or 0)

        r0 = rest_reads()
        for _ in range(a.refreshes):
            rt.r.delete(*(klines.key(s) for s in rest.settings.symbols))
            refresh_market_states(rest)
        reads_before = (rest_reads() - r0) / a.refreshes
        # one reconcile from REST (positionRisk + openAlgoOrders, openOrders + openAlgoOrders, the clock)
        reconcile_once(rest)  # recovery and book epochs first
        w_r = emu.weight_spent()
        reconcile_once(rest)
        reconcile_rest = emu.weight_spent() - w_r

        def counter(name: str) -> int:
            return int(rt.r.hget(f"{ns}:counters", name) or 0)

        proc = subprocess.Popen(
            [sys.executable, "-m", "harvest.ops.cli", "streams", "--symbols", ",".join(syms)],
            cwd=ROOT,
            env={**os.environ, **env, "HARVEST_AUDIT_INTERVAL_S": str(a.audit_s)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cache = StreamCache(rt.r, ns, rt.settings.account)
        wait_for(lambda: cache.snapshot(3.0, 3.0), 60, what="the stream cache with every mark")
        # measure right after an audit, so that none falls inside the windows below
        wait_for(lambda: counter("streams:audits") >= 1, 2 * a.audit_s + 30, what="the first audit")
        w1, t1 = emu.weight_spent(), time.monotonic()
        for _ in range(a.scans):
            assert len(venue_positions(rest)) == a.positions
        per_scan_streams = (emu.weight_spent() - w1) / a.scans
        from_cache = int(rt.r.hget(f"{ns}:counters", "positions:streams") or 0)
        quiet_s = time.monotonic() - t1
        # one change: a stop moved and a partial close on the exchange; both come by the stream
        vp = rt.venue.positions()[0]
        w2 = emu.weight_spent()
        f = rt.venue.filters(vp.symbol)
        moved = f.fmt(f.round_price(vp.stop_price * 1.001))
        rt.venue.move_stop(vp.symbol, vp.side.close_order_side, moved, "bench-move-1")
        part = f.fmt(f.round_qty(vp.qty / 2))
        rt.venue.close_market(vp.symbol, vp.side.close_order_side, part, "bench-part-1")
        want = rt.venue.position(vp.symbol)

        def folded():
            rows = cache.snapshot(3.0, 3.0) or []
            return any((x.symbol, x.qty, x.stop_price) == (vp.symbol, want.qty, want.stop_price) for x in rows)

        wait_for(folded, 30, what="the change folded in from the stream")
        per_change = emu.weight_spent() - w2
        # one audit of the cache, nothing else running; then one reconcile from the stream cache
        audits, w3 = counter("streams:audits"), emu.weight_spent()
        tally0 = emu.weight_by_endpoint()
        wait_for(lambda: counter("streams:audits") > audits, 2 * a.audit_s + 30, what="an audit")
        per_audit = emu.weight_spent() - w3
        audit_by_endpoint = {
            k: w - tally0.get(k, (0, 0))[1]
            for k, (_, w) in emu.weight_by_endpoint().items()
            if w > tally0.get(k, (0, 0))[1]
        }
        # the next audit, nothing changed since the last: what a quiet account costs
        audits, w5 = counter("streams:audits"), emu.weight_spent()
        wait_for(lambda: counter("streams:audits") > audits, 2 * a.audit_s + 30, what="a quiet audit")
        per_quiet_audit = emu.weight_spent() - w5
        w4 = emu.weight_spent()
        n_from = counter("reconcile:from_streams")
        reconcile_once(rest)
        reconcile_once(rest)
        assert counter("reconcile:from_streams") == n_from + 2, "reconcile did not read the stream cache"
        reconcile_streams = (emu.weight_spent() - w4) / 2
        # The market refresh with the kline streams: the clock a minute on before each refresh
        # (every bar new), the minute's bar awaited from the stream, then the refresh.
        refresh_market_states(rest)  # the bars the stream has not sent (history) come once by REST
        t, r1 = rt.clock.now(), rest_reads()
        for _ in range(a.refreshes):
            t += 60.0
            rt.clock.set(t, 0.0)
            last = (int(t // 60) - 1) * 60_000
            wait_for(
                lambda: all(klines.closes(s, n_bars, last) is not None for s in syms),  # noqa: B023
                30,
                what="the minute's bars by stream",
            )
            refresh_market_states(rest)
        reads_streams = (rest_reads() - r1) / a.refreshes
        streamed = int(rt.r.hget(f"{ns}:counters", "market:klines_streamed") or 0)
        per_min = 60.0 / SCAN_INTERVAL_S
        # a refresh's klines read, as the adapter sends it (limit = the bars needed + 1), by Binance's table
        kline_w = request_weight("GET", "/fapi/v1/klines", {"limit": min(1500, n_bars + 1)})
        out = {
            "positions": a.positions,
            "scans": a.scans,
            "rest_weight_per_scan": per_scan_rest,
            "rest_weight_per_min": per_scan_rest * per_min,
            "streams_weight_per_scan": per_scan_streams,
            "streams_weight_per_min": per_scan_streams * per_min,
            "streams_quiet_span_s": round(quiet_s, 2),
            "scans_from_cache": from_cache,
            "weight_per_change": per_change,
            "weight_per_audit": per_audit,
            "audit_by_endpoint": audit_by_endpoint,
            "weight_per_quiet_audit": per_quiet_audit,
            "audit_weight_per_min_at_900s": per_quiet_audit * 60.0 / 900.0,
            "reconcile_weight_rest": reconcile_rest,
            "reconcile_weight_streams": reconcile_streams,
            "market_symbols": len(rest.settings.symbols),
            "klines_rest_reads_per_refresh_before": reads_before,
            "klines_rest_reads_per_refresh_streams": reads_streams,
            "klines_weight_each": kline_w,
            "klines_weight_per_min_before": reads_before * kline_w * per_min,
            "klines_weight_per_min_streams": reads_streams * kline_w,
            "refreshes_from_streams": streamed,
        }
        print(f"position reads of one account with {a.positions} positions, scans every {SCAN_INTERVAL_S:g} s")
        print(f"{'':34} {'REST polling':>14} {'streams':>10}")
        print(f"{'request weight per scan':34} {per_scan_rest:>14.1f} {per_scan_streams:>10.1f}")
        print(f"{'request weight per minute':34} {per_scan_rest * per_min:>14.1f} {per_scan_streams * per_min:>10.1f}")
        print(f"scans served from the stream cache: {from_cache} of {a.scans}")
        print(f"one change (stop moved, partial close): folded in from the stream: weight {per_change}")
        print(
            f"one audit of the cache after that change (positionRisk, openAlgoOrders and openOrders of the known "
            f"symbols, leverage and opening re-read for the changed position): weight {per_audit} "
            f"({', '.join(f'{k} {w}' for k, w in sorted(audit_by_endpoint.items()))})"
        )
        print(
            f"one audit with nothing changed: weight {per_quiet_audit}; "
            f"{per_quiet_audit * 60.0 / 900.0:.2f} a minute at HARVEST_AUDIT_INTERVAL_S=900"
        )
        print(
            f"one reconcile: {reconcile_rest} weight from REST, {reconcile_streams:g} from the stream cache "
            f"(the clock check); a minute at 30 s: {2 * reconcile_rest} against {2 * reconcile_streams:g}"
        )
        print(
            f"market refresh of {len(rest.settings.symbols)} symbols: GET /fapi/v1/klines per refresh "
            f"{reads_before:.1f} before, {reads_streams:.1f} with the kline streams (a new bar every refresh); "
            f"weight per minute at a refresh every {SCAN_INTERVAL_S:g} s: "
            f"{out['klines_weight_per_min_before']:.0f} against {out['klines_weight_per_min_streams']:.0f}"
        )
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2, sort_keys=True)
        emu.stop()
        return 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
