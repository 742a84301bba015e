"""Request weight of the scan's position reads: REST polling against ``harvest streams``' cache
(issue 23), measured side by side in one run on the fapi emulator (its weight counter is
Binance's per-endpoint weight).

    python benchmarks/stream_weight.py [--positions 10] [--scans 24] [--refreshes 6] [--json out.json]

It starts a private redis-server, the emulator (REST and streams) and a real ``harvest
streams`` process, opens ``--positions`` positions, then reads the account's positions the way
the beat scan does (:func:`harvest.services.decide.venue_positions`) ``--scans`` times from
REST and ``--scans`` times with the streams up, and prints the weight per scan and per minute at
the default 5-second scan interval for both, the weight the streams process spent meanwhile
(its resyncs; none when nothing changes), and the weight of one change (a stop moved: the
process re-reads the rows once). Then the market refresh's klines: ``GET /fapi/v1/klines`` at
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
from harvest.store.streams import KlineCache, StreamCache
from harvest.venues.binance_facts import request_weight

SCAN_INTERVAL_S = 5.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--positions", type=int, default=10)
    p.add_argument("--scans", type=int, default=24)
    p.add_argument("--refreshes", type=int, default=6, help="market refreshes each way")
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

        proc = subprocess.Popen(
            [sys.executable, "-m", "harvest.ops.cli", "streams", "--symbols", ",".join(syms)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cache = StreamCache(rt.r, ns, rt.settings.account)
        wait_for(lambda: cache.snapshot(3.0, 3.0), 60, what="the stream cache with every mark")
        w1, t1 = emu.weight_spent(), time.monotonic()
        for _ in range(a.scans):
            assert len(venue_positions(rest)) == a.positions
        per_scan_streams = (emu.weight_spent() - w1) / a.scans
        from_cache = int(rt.r.hget(f"{ns}:counters", "positions:streams") or 0)
        quiet_s = time.monotonic() - t1
        # one change: a stop moved on the exchange; the process re-reads the rows once
        vp = rt.venue.positions()[0]
        w2 = emu.weight_spent()
        resyncs = int(rt.r.hget(f"{ns}:counters", "streams:resyncs") or 0)
        f = rt.venue.filters(vp.symbol)
        moved = f.fmt(f.round_price(vp.stop_price * 1.001))
        rt.venue.move_stop(vp.symbol, vp.side.close_order_side, moved, "bench-move-1")
        wait_for(
            lambda: int(rt.r.hget(f"{ns}:counters", "streams:resyncs") or 0) > resyncs and cache.snapshot(3.0, 3.0),
            30,
            what="the resync after the change",
        )
        per_change = emu.weight_spent() - w2
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
        print(f"one change (stop moved): the streams process re-reads the rows once: weight {per_change}")
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
