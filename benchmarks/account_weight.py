"""One account's steady-state request weight by Binance's table, measured on the fapi emulator
with the real python-binance client (issue 32, items 2–3).

    python benchmarks/account_weight.py [--positions 10] [--json out.json]

One private redis-server, one emulator (its weights are Binance's, counted per client IP), one
account holding ``--positions`` positions on synthetic symbols that trade like BTCUSDT. Each read
harvest makes is measured once in steady state (caches warm) from the emulator's per-endpoint
tally, then priced at its cadence:

* **scan** (REST, no streams: every 5 s) — ``positions()``: positionRisk (5, every symbol; the
  read that finds positions on any symbol) and the positions' stops by the cheaper form
  (openAlgoOrders 1 a symbol, or 40 for every symbol);
* **reconcile / audit** — ``positions()`` and ``open_orders``: every symbol's (80, the
  discovering read) or the known symbols' (the cheaper form: 2 a symbol);
* **leverage** — symbolConfig (5) each time the account's leverage cache expires (an hour,
  ``BinanceVenue.leverage_ttl_s``; before: every 300 s, forgotten by beat's exchangeInfo refresh)
  — and when a position changes, which is not steady state;
* **funding** — income (30) once after each funding time, measured over 24 market hours of scans
  (``positions()`` every 10 market minutes), with premiumIndex (1, every symbol, shared by the
  deployment) for the funding times.

Printed: each read's weight by endpoint, and weight per account per minute for the schedules:
streams with an audit every 15 min (HARVEST_AUDIT_INTERVAL_S) and no REST scans; REST scans every
5 s with reconcile every 30 s; and today's reads before issue 32 priced by the same table
(openAlgoOrders for every symbol in each scan, openOrders + openAlgoOrders for every symbol in each
reconcile, income every 60 s).
"""

from __future__ import annotations

import argparse
import json
import sys

import _setup  # noqa: F401  (puts the repository on sys.path)
import redis

from harvest.ops.loadgen import T0
from harvest.ops.procs import RedisServer
from harvest.venues.binance import BinanceVenue, make_client
from harvest.venues.binance_facts import request_weight
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.emulator import Emulator

KEY, SECRET, NS = "bench-key", "bench-secret", "acctw"
SCAN_S, RECONCILE_S, AUDIT_S = 5.0, 30.0, 900.0
#: Before issue 32 the beat's exchange_info refresh forgot every account's leverage each 300 s.
OLD_LEVERAGE_S = 300.0


def _measure(emu: Emulator, fn) -> dict[str, list[int]]:
    """The requests and weight ``fn()`` cost, by endpoint: ``{endpoint: [requests, weight]}``."""
    emu.reset_tally()
    fn()
    return {e: [n, w] for e, (n, w) in sorted(emu.weight_by_endpoint().items())}


def _total(cost: dict[str, list[int]]) -> int:
    return sum(w for _, w in cost.values())


def run(n_pos: int) -> dict:
    server = RedisServer().start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        clock = MarketClock(r, NS, T0, 0.0)
        clock.set(T0 + 60.0, 0.0)
        emu = Emulator(r, NS, "paper", KEY, SECRET, clock=clock, weight_limit_1m=1_000_000).start(streams=False)
        try:
            syms = [f"B{i:03d}USDT" for i in range(n_pos)]
            emu.venue.list_symbols({s: "BTCUSDT" for s in syms})
            for s in syms:
                emu.venue.set_mark(s, 100_000.0)
                emu.venue.open_position(s, "LONG", 0.01, 5.0, stop_price=95_000.0)
            bv = BinanceVenue(
                r,
                NS,
                lambda: make_client(KEY, SECRET, emu.url, False, 5.0, 5000),
                1_000_000,
                clock=clock,
                funding_poll_s=60.0,
            )
            bv.refresh_filters()
            out_ttl = bv.leverage_ttl_s
            bv.positions()  # first sight: openings, leverage, funding so far
            out: dict = {"positions": n_pos, "leverage_ttl_s": out_ttl}
            out["scan"] = _measure(emu, bv.positions)
            out["reconcile_known_symbols"] = _measure(emu, lambda: (bv.positions(), bv.open_orders(symbols=syms)))
            out["reconcile_every_symbol"] = _measure(emu, lambda: (bv.positions(), bv.open_orders()))
            r.delete(bv.k_leverage)
            out["leverage_refresh"] = {
                e: v for e, v in _measure(emu, bv.positions).items() if e == "GET /fapi/v1/symbolConfig"
            }

            def day_of_scans() -> None:
                for k in range(1, 24 * 6 + 1):  # every 10 market minutes for 24 h
                    clock.set(T0 + 60.0 + k * 600.0, 0.0)
                    r.delete(f"{bv.k_funding_times}:lock")  # a wall minute passes between two of them
                    r.hset(bv.k_leverage, mapping={s: "5.0" for s in syms})  # leverage priced apart
                    bv.positions()

            day = _measure(emu, day_of_scans)
            funding = ("GET /fapi/v1/income", "GET /fapi/v1/premiumIndex")
            out["funding_day"] = {e: v for e, v in day.items() if e in funding}
        finally:
            emu.stop()
    finally:
        server.stop()

    per_min = {
        "scan": _total(out["scan"]) * 60 / SCAN_S,
        "reconcile_known": _total(out["reconcile_known_symbols"]) * 60 / RECONCILE_S,
        "audit_known": _total(out["reconcile_known_symbols"]) * 60 / AUDIT_S,
        "audit_every_symbol": _total(out["reconcile_every_symbol"]) * 60 / AUDIT_S,
        "leverage": _total(out["leverage_refresh"]) * 60 / out["leverage_ttl_s"],
        "funding": _total(out["funding_day"]) / (24 * 60),
    }
    old_scan = request_weight("GET", "/fapi/v3/positionRisk") + request_weight("GET", "/fapi/v1/openAlgoOrders")
    old_reconcile = old_scan + 2 * request_weight("GET", "/fapi/v1/openOrders")
    out["per_account_per_minute"] = {
        "streams_audit_15min_known_symbols": per_min["audit_known"] + per_min["leverage"] + per_min["funding"],
        "streams_audit_15min_every_symbol": per_min["audit_every_symbol"] + per_min["leverage"] + per_min["funding"],
        "rest_scans_5s_reconcile_30s": per_min["scan"]
        + per_min["reconcile_known"]
        + per_min["leverage"]
        + per_min["funding"],
        "before_issue_32_rest": old_scan * 60 / SCAN_S
        + old_reconcile * 60 / RECONCILE_S
        + request_weight("GET", "/fapi/v1/symbolConfig") * 60 / OLD_LEVERAGE_S
        + request_weight("GET", "/fapi/v1/income"),
        "parts": per_min,
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", type=int, default=10)
    ap.add_argument("--json", help="write the figures to this file too")
    a = ap.parse_args()
    out = run(a.positions)
    print(f"one account, {a.positions} positions, weights by Binance's table (measured on the emulator)")
    for k in ("scan", "reconcile_known_symbols", "reconcile_every_symbol", "leverage_refresh", "funding_day"):
        print(f"  {k:<24} {_total(out[k]):>4}  " + "  ".join(f"{e}={n}x/{w}" for e, (n, w) in out[k].items()))
    pm = out["per_account_per_minute"]
    print("weight per account per minute:")
    for k, v in pm.items():
        if k != "parts":
            print(f"  {k:<36} {v:8.2f}")
    print("  parts: " + "  ".join(f"{k}={v:.2f}" for k, v in pm["parts"].items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
