"""A fleet of accounts on one IP: the beat scan of every account, by REST polling and from
``harvest streams``' caches, side by side in one run on the fapi emulator (issue 23).

    python benchmarks/fleet.py [--accounts 1000] [--positions 10] [--workers 2] [--json out.json]

One private redis-server, one emulator serving every account (REST and streams; its weight
limit lifted: the figures are what Binance would count), ``--accounts`` × ``--positions``
positions (the same symbols in every account), a real worker with ``--workers`` processes. It
prints, each beside its baseline:

* **one beat tick** — publish one scan per account (as beat's group does, without the expiry,
  so that a late scan is measured rather than dropped) → the last account scanned: REST polling
  against the stream caches (target: ≤ 2 s for all, within the 5 s tick);
* **request weight of that tick** per account: positionRisk and its companions against none;
* **steady-state weight per account per minute** at the default intervals: scans (5 s) plus
  reconcile (30 s, measured once), funding (60 s) and exchangeInfo (300 s), polling against
  streams (against today's ~1000, target ≤ 20);
* **the streams process**: RSS and CPU holding every account (idle, then per 1000 accounts) and
  CPU per 1000 mark-price events a second (a second run: one account, 50 symbols, 20 ticks/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import _setup  # noqa: F401  (puts the repository on sys.path)
from _setup import celery_app, clean, env_for, open_positions, runtime, start_emulator, start_worker

from harvest.ops.procs import HarvestProcess, RedisServer, wait_for
from harvest.store.streams import StreamCache
from harvest.venues.binance import PRIORITY_SHARE
from harvest.venues.binance_facts import WEIGHT_LIMIT_1M, request_weight

SCAN_S, RECONCILE_S, FUNDING_S, INFO_S = 5.0, 30.0, 60.0, 300.0
#: The share of an IP's weight harvest's reads may use (the budget's ``read`` priority) of the
#: default budget: 1800 of Binance's 2400 (HARVEST_VENUE_WEIGHT_LIMIT_1M).
READ_SHARE = 0.75 * PRIORITY_SHARE["read"]
TICKS = os.sysconf("SC_CLK_TCK")
#: The emulator's weight table before issue 30 (by the path's last part; 1 for any other): the
#: figures issue 23 reported were counted by it. Printed beside Binance's table for comparison.
OLD_EMULATOR_WEIGHTS = {
    "klines": 2,
    "userTrades": 5,
    "leverageBracket": 1,
    "income": 30,
    "allOrders": 5,
    "positionRisk": 5,
    "symbolConfig": 5,
    "positionSide/dual": 30,
    "openOrders": 1,
    "openAlgoOrders": 1,
    "exchangeInfo": 1,
    "premiumIndex": 1,
    "order": 1,
    "algoOrder": 1,
}


def _old_weight(endpoint: str) -> int:
    path = endpoint.split(" ", 1)[1]
    return OLD_EMULATOR_WEIGHTS.get(path.split("/", 3)[-1], 1)


def _measure(emu, fn) -> tuple[float, dict]:
    """Run ``fn()`` and return (its value, the weight it cost: ``{"binance": w, "old": w,
    "by_endpoint": {endpoint: [requests, weight]}}``) from the emulator's per-endpoint tally."""
    emu.reset_tally()
    value = fn()
    tally = emu.weight_by_endpoint()
    cost = {
        "binance": sum(w for _, w in tally.values()),
        "old": sum(n * _old_weight(e) for e, (n, _) in tally.items()),
        "by_endpoint": {e: [n, w] for e, (n, w) in sorted(tally.items())},
    }
    return value, cost


def _proc(pid: int) -> tuple[float, float]:
    """(CPU seconds used, RSS MB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    cpu = (int(parts[11]) + int(parts[12])) / TICKS
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return cpu, rss


def _cpu_share(pid: int, seconds: float) -> tuple[float, float]:
    """(CPU fraction of one core over ``seconds``, RSS MB at the end)."""
    c0, _ = _proc(pid)
    time.sleep(seconds)  # the measurement window, not a synchronisation
    c1, rss = _proc(pid)
    return (c1 - c0) / seconds, rss


def _tick(rt, env, accounts: list[str]) -> float:
    """Publish beat's scan (its message: the worker fans it out as a group, in chunks of
    ``HARVEST_SCAN_ACCOUNTS_PER_TASK``); seconds until every account's scan has run. The run's
    scan interval is long, so that a scan later than the 5-second tick is measured, not dropped
    by its expiry."""
    counters = rt.plans.k.counters
    before = {a: int(rt.r.hget(counters, f"acct:{a}:scan:runs") or 0) for a in accounts}
    total = int(rt.r.hget(counters, "scan:runs") or 0)
    client = celery_app(env)
    t0 = time.monotonic()
    client.send_task("harvest.scan_positions", queue=f"{rt.settings.namespace}.scan")
    # One read a poll (every account's scan adds 1 to scan:runs): a poll of every account's counter
    # every 10 ms took the GIL from the emulator serving the scans in this same process.
    wait_for(lambda: int(rt.r.hget(counters, "scan:runs") or 0) >= total + len(accounts), 900, 0.01, "the scans")
    took = time.monotonic() - t0
    p = rt.r.pipeline(transaction=False)
    for a in accounts:
        p.hget(counters, f"acct:{a}:scan:runs")
    missed = [a for a, n in zip(accounts, p.execute(), strict=True) if int(n or 0) <= before[a]]
    assert not missed, f"{len(missed)} accounts not scanned (a scan ran twice elsewhere?)"
    client.close()
    return took


def fleet(url: str, n_acc: int, n_pos: int, workers: int, per_task: int) -> dict:
    syms = [f"F{i:03d}USDT" for i in range(n_pos)]
    accounts = [f"a{i:04d}" for i in range(n_acc)]
    ns = f"fleet-{os.getpid()}"
    env = env_for(
        url,
        ns,
        syms,
        HARVEST_ACCOUNTS=json.dumps([{"name": a} for a in accounts]),
        HARVEST_MARKET_REFRESH_S="3600",
        HARVEST_SCAN_INTERVAL_S="900",  # no expiry drops a late scan (a first tick meets every account): it is measured
        HARVEST_SCAN_ACCOUNTS_PER_TASK=str(per_task),
    )
    rt = runtime(env)
    clean(rt)
    for a in accounts:
        open_positions(rt.for_account(a), syms, 0.5)
    emu = start_emulator(rt, env)  # env gains every account's keys
    hv = runtime(env)  # harvest's side: python-binance to the emulator
    procs = [start_worker(env, ns, "scan,housekeeping", workers)]
    out: dict = {"accounts": n_acc, "positions_per_account": n_pos, "workers": workers, "per_task": per_task}
    try:
        procs[0].wait_ready(120)
        # warm, twice (each worker process meets every account): clients built; leverage, openings,
        # funding cached, as after any earlier tick
        _tick(hv, env, accounts)
        _tick(hv, env, accounts)
        out["rest_tick_s"], cost = _measure(emu, lambda: _tick(hv, env, accounts))
        out["rest_tick_weight_per_account"] = cost["binance"] / n_acc
        out["old_rest_tick_weight_per_account"] = cost["old"] / n_acc
        out["rest_tick_by_endpoint"] = cost["by_endpoint"]
        from harvest.services.reconcile import reconcile_once

        _, cost = _measure(emu, lambda: reconcile_once(hv))
        out["reconcile_weight_per_account"] = cost["binance"] / n_acc
        out["old_reconcile_weight_per_account"] = cost["old"] / n_acc
        out["reconcile_by_endpoint"] = cost["by_endpoint"]
        hv.r.delete(*[hv.for_account(a).venue.k_funding_poll for a in accounts])  # type: ignore[attr-defined]

        def funding_polls() -> None:
            for a in accounts:
                hv.for_account(a).venue.positions()  # one funding poll per account (its positions read aside)

        _, cost = _measure(emu, funding_polls)
        # The seeded positions have no opening trade, so the adapter has no epoch to poll funding
        # for and this run makes no income read; a real account's positions do: one
        # GET /fapi/v1/income per account every HARVEST_FUNDING_POLL_S, priced by each table.
        measured = max(0.0, cost["binance"] / n_acc - out["rest_tick_weight_per_account"])
        out["funding_poll_weight_measured_per_account"] = measured
        out["funding_poll_weight_per_account"] = max(measured, request_weight("GET", "/fapi/v1/income"))
        out["old_funding_poll_weight_per_account"] = OLD_EMULATOR_WEIGHTS["income"]

        st = HarvestProcess("streams", env, ["--symbols", ",".join(syms), "--no-triggers"]).start()
        procs.append(st)
        caches = [StreamCache(hv.r, ns, a) for a in accounts]
        t0 = time.monotonic()
        wait_for(lambda: all(c.trusted() for c in caches), 600, 0.5, "every account's stream cache")
        out["streams_resync_all_s"] = time.monotonic() - t0
        wait_for(lambda: caches[0].snapshot(3.0, 3.0), 30, 0.1, "fresh marks")
        cpu, rss = _cpu_share(st.proc.pid, 10.0)
        out["streams_idle_cpu_share"], out["streams_rss_mb"] = cpu, rss
        out["streams_tick_s"], cost = _measure(emu, lambda: _tick(hv, env, accounts))
        out["streams_tick_weight_per_account"] = cost["binance"] / n_acc
        out["old_streams_tick_weight_per_account"] = cost["old"] / n_acc
        out["positions_from_streams"] = int(hv.r.hget(hv.plans.k.counters, "positions:streams") or 0)
        per_min = 60.0 / SCAN_S
        for table in ("", "old_"):  # Binance's table (what the emulator charges), then its old one
            fixed = (
                out[f"{table}reconcile_weight_per_account"] * 60 / RECONCILE_S
                + out[f"{table}funding_poll_weight_per_account"] * 60 / FUNDING_S
                + 1 * 60 / INFO_S
            )
            out[f"{table}rest_weight_per_account_min"] = out[f"{table}rest_tick_weight_per_account"] * per_min + fixed
            out[f"{table}streams_weight_per_account_min"] = (
                out[f"{table}streams_tick_weight_per_account"] * per_min + fixed
            )
        out["accounts_per_ip"] = {
            mode: int(WEIGHT_LIMIT_1M * READ_SHARE // out[f"{mode}_weight_per_account_min"])
            for mode in ("rest", "streams")
        }
        return out
    finally:
        for p in procs:
            p.stop(30)
        emu.stop()
        clean(rt)


def mark_events(url: str, symbols: int = 50, tick_s: float = 0.05, seconds: float = 10.0) -> dict:
    """The streams process's CPU per 1000 mark-price events a second: one account, ``symbols``
    mark streams, the emulator ticking every ``tick_s``."""
    syms = [f"M{i:03d}USDT" for i in range(symbols)]
    ns = f"marks-{os.getpid()}"
    env = env_for(url, ns, syms)
    rt = runtime(env)
    clean(rt)
    open_positions(rt, syms, 0.5)  # lists every symbol (a mark stream each)
    emu = start_emulator(rt, env, streams=False)
    from harvest.venues.sim.emulator_streams import StreamServer

    emu.streams = StreamServer(emu, tick_s=tick_s).start()
    st = HarvestProcess("streams", env, ["--symbols", ",".join(syms), "--no-triggers"]).start()
    try:
        wait_for(lambda: StreamCache(rt.r, ns, rt.settings.account).snapshot(3.0, 3.0), 60, 0.1, "the marks")
        sent0 = emu.streams.sent
        cpu, rss = _cpu_share(st.proc.pid, seconds)
        rate = (emu.streams.sent - sent0) / seconds
        return {
            "mark_events_per_s": rate,
            "cpu_share": cpu,
            "cpu_share_per_1000_events_s": cpu * 1000 / rate,
            "rss_mb": rss,
        }
    finally:
        st.stop(30)
        emu.stop()
        clean(rt)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--positions", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--per-task", type=int, default=25, help="HARVEST_SCAN_ACCOUNTS_PER_TASK (default %(default)s)")
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args()
    server = RedisServer().start()
    try:
        f = fleet(server.url, a.accounts, a.positions, a.workers, a.per_task)
        m = mark_events(server.url)
    finally:
        server.stop()
    k = 1000 / a.accounts
    print(
        f"{a.accounts} accounts × {a.positions} positions on one IP, a worker with {a.workers} processes, "
        f"{a.per_task} accounts per scan task"
    )
    print(f"{'':52} {'REST polling':>14} {'streams':>10}")
    print(
        f"{'one beat tick: every account scanned (s)':52} {f['rest_tick_s']:>14.2f} {f['streams_tick_s']:>10.2f}"
        f"   (target ≤ 2 s: {'met' if f['streams_tick_s'] <= 2 else 'MISSED'})"
    )
    print(
        f"{'request weight of that tick, per account':52} {f['rest_tick_weight_per_account']:>14.1f}"
        f" {f['streams_tick_weight_per_account']:>10.1f}"
    )
    print(
        f"{'steady-state weight per account per minute':52} {f['rest_weight_per_account_min']:>14.1f}"
        f" {f['streams_weight_per_account_min']:>10.1f}   (Binance's table, as the emulator charges)"
    )
    print(
        f"{'  the same requests by the emulator old table':52} {f['old_rest_weight_per_account_min']:>14.1f}"
        f" {f['old_streams_weight_per_account_min']:>10.1f}   (issue 23 reported 88.2 / 16.2: without funding)"
    )
    print(
        f"  of which reconcile every {RECONCILE_S:g} s: {f['reconcile_weight_per_account'] * 60 / RECONCILE_S:.1f}"
        f" (old table {f['old_reconcile_weight_per_account'] * 60 / RECONCILE_S:.1f}); "
        f"funding every {FUNDING_S:g} s: {f['funding_poll_weight_per_account'] * 60 / FUNDING_S:.1f}"
    )
    print(
        f"accounts one IP holds at steady state (reads' share {WEIGHT_LIMIT_1M * READ_SHARE:.0f} of {WEIGHT_LIMIT_1M}"
        f" a minute): REST polling {f['accounts_per_ip']['rest']}, streams {f['accounts_per_ip']['streams']}"
    )
    for phase in ("rest_tick", "reconcile"):
        print(f"{phase.replace('_', ' ')} by endpoint, per account (requests, weight):")
        for e, (n, w) in f[f"{phase}_by_endpoint"].items():
            print(f"  {e:<40} {n / a.accounts:>6.2f} {w / a.accounts:>8.1f}")
    print(
        f"harvest streams holding {a.accounts} accounts: first resync of all {f['streams_resync_all_s']:.1f} s, "
        f"RSS {f['streams_rss_mb']:.0f} MB ({f['streams_rss_mb'] * k:.0f} MB per 1000 accounts), "
        f"idle CPU {100 * f['streams_idle_cpu_share']:.1f} % of a core "
        f"({100 * f['streams_idle_cpu_share'] * k:.1f} % per 1000)"
    )
    print(
        f"mark-price events: {m['mark_events_per_s']:.0f}/s cost {100 * m['cpu_share']:.1f} % of a core: "
        f"{100 * m['cpu_share_per_1000_events_s']:.1f} % per 1000 events/s (RSS {m['rss_mb']:.0f} MB)"
    )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"fleet": f, "marks": m}, fh, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
