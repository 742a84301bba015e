"""A fleet of accounts on one IP: what harvest reads from the exchange when ``harvest streams``
holds every account (streams as the truth, REST as a rotating audit, issue 32), side by side
with the same fleet read by REST polling, in one run on the fapi emulator.

    python benchmarks/fleet.py [--accounts 1000] [--positions 10] [--workers 2]
                               [--audit-s 120] [--audit-accounts 100] [--json out.json]

One private redis-server, one emulator serving every account (REST and streams; weights by
Binance's table, counted per client IP; its limit and harvest's budget lifted so that what is
measured is what Binance would count, not a budget's queue), ``--accounts`` × ``--positions``
positions (the same symbols in every account), a real worker with ``--workers`` processes. It
prints, each beside its baseline:

* **one beat tick** — publish one scan per account (as beat's group does, without the expiry,
  so that a late scan is measured rather than dropped) → the last account scanned: REST polling
  against the stream caches (target ≤ 2 s on 2 CPUs);
* **steady-state weight per account per minute, by endpoint** (target ≤ 2): with streams, the
  audit (measured: one rotation at ``--audit-s``, priced at the default
  HARVEST_AUDIT_INTERVAL_S, 900 s) plus the reads that run on their own cadence by Binance's table
  (leverage an hour, income after each of three funding times a day, the listenKey keepalive);
  the scans' and reconcile's weight from the caches is measured (0 expected); by REST polling,
  scans every 5 s and reconcile every 30 s, measured; and the reads of the design before issue 32
  (stops for every symbol in each scan, openOrders and openAlgoOrders for every symbol in each
  reconcile, income every 60 s, leverage every 300 s) priced by the same table;
* **the audit's full rotation** — a second streams process holding ``--audit-accounts`` of
  them at ``HARVEST_AUDIT_INTERVAL_S=--audit-s``: the seconds until each was audited once (each
  account at its own phase: the audits spread, never a burst) and the weight of one audit;
* **cold start** — ``harvest streams`` taking every account (one resync each): its weight by
  endpoint and how long it takes inside the reads' share of one IP; and, once in a deployment's
  life, a new account's first read (openings, leverage, funding so far, then kept in Redis);
* **the streams process** — RSS and CPU holding every account (audits at 900 s), and CPU per
  1000 mark-price events a second (a second run: one account, 50 symbols, 20 ticks/s);
* how many accounts one IP holds at the default budget, and the audit interval 1000 need.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _setup  # noqa: F401  (puts the repository on sys.path)
from _setup import celery_app, clean, env_for, open_positions, runtime, start_emulator, start_worker

from harvest.ops.procs import HarvestProcess, RedisServer, wait_for
from harvest.services.streams import DISCOVERY_S
from harvest.store.streams import StreamCache
from harvest.venues.binance import PRIORITY_SHARE
from harvest.venues.binance_facts import WEIGHT_LIMIT_1M, request_weight

SCAN_S, RECONCILE_S = 5.0, 30.0
#: harvest's defaults the steady state is priced at: HARVEST_AUDIT_INTERVAL_S; the adapter's
#: leverage cache (BinanceVenue leverage_ttl_s); python-binance's listenKey keepalive (PUT, 1).
AUDIT_S, LEVERAGE_TTL_S, KEEPALIVE_S = 900.0, 3600.0, 1800.0
#: Funding times a day of a symbol settling every 8 h (income is read once after each).
FUNDINGS_A_DAY = 3
#: Before issue 32: income every 60 s, leverage every 300 s (forgotten by beat's exchangeInfo refresh).
OLD_FUNDING_S, OLD_LEVERAGE_S = 60.0, 300.0
#: The share of an IP's weight harvest's reads may use (the budget's ``read`` priority) of the
#: default budget: 1260 of the 1800 of Binance's 2400 (HARVEST_VENUE_WEIGHT_LIMIT_1M).
READ_SHARE = 0.75 * PRIORITY_SHARE["read"]
TICKS = os.sysconf("SC_CLK_TCK")


def _w(method: str, path: str, **params) -> int:
    return request_weight(method, path, params)


def _measure(emu, fn) -> tuple[object, dict]:
    """Run ``fn()``; (its value, ``{endpoint: [requests, weight]}`` it cost on the emulator)."""
    emu.reset_tally()
    value = fn()
    return value, {e: [n, w] for e, (n, w) in sorted(emu.weight_by_endpoint().items())}


def _total(cost: dict) -> int:
    return sum(w for _, w in cost.values())


def _per(cost: dict, n: int, scale: float = 1.0) -> dict:
    """A tally per account (× ``scale``): ``{endpoint: [requests, weight]}``."""
    return {e: [c * scale / n, w * scale / n] for e, (c, w) in cost.items()}


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


def _less_audits(cost: dict, audit: dict, audits: int) -> dict:
    """A tally ``{endpoint: [requests, weight]}`` less ``audits`` audits of ``audit``'s per-audit
    tally (the streams process's audits, which ran meanwhile); never below 0."""
    out = {}
    for e, (n, w) in cost.items():
        an, aw = audit.get(e, [0, 0])
        out[e] = [max(0.0, n - an * audits), max(0.0, w - aw * audits)]
    return out


def _reconcile(env) -> float:
    """One reconcile of every account, by ``harvest reconcile`` (the command an operator runs;
    beat's task is the same function). Not in this process: it also serves the emulator, whose
    mark streams a reconcile here would starve, causing the very fallbacks to REST it
    measures. Not by the worker's task either: by REST polling, 1000 accounts take longer than
    the task's soft time limit (``settings.celery.TIME_LIMITS_S``; said in the docs)."""
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "reconcile", "--json"],
        cwd=_setup.ROOT,
        env=env,
        check=True,
        timeout=1800,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - t0


def _old_design(n_pos: int) -> dict[str, float]:
    """Weight per account per minute of the reads before issue 32, priced by Binance's table:
    REST scans (positionRisk + openAlgoOrders for every symbol) every 5 s, reconcile (that and
    openOrders + openAlgoOrders for every symbol) every 30 s, income every 60 s, leverage every
    300 s; with streams the scans read the caches (no weight), the rest as without."""
    scan = _w("GET", "/fapi/v3/positionRisk") + _w("GET", "/fapi/v1/openAlgoOrders")
    reconcile = scan + _w("GET", "/fapi/v1/openOrders") + _w("GET", "/fapi/v1/openAlgoOrders")
    fixed = (
        reconcile * 60 / RECONCILE_S
        + _w("GET", "/fapi/v1/income") * 60 / OLD_FUNDING_S
        + _w("GET", "/fapi/v1/symbolConfig") * 60 / OLD_LEVERAGE_S
    )
    return {"rest": scan * 60 / SCAN_S + fixed, "streams": fixed}


def _cadence() -> dict[str, float]:
    """Per account per minute, by Binance's table at harvest's cadence, the reads a short run
    cannot wait for (measured one by one by benchmarks/account_weight.py): the daily discovering
    read of every symbol's orders (streams only; the audit test shows its weight), leverage once an hour,
    income once after each funding time (premiumIndex, shared by the deployment, left out), the
    listenKey keepalive every 30 min (streams only)."""
    return {
        # the daily discovering audit reads every symbol's orders (priced whole, on top of the audit)
        "daily discovery (openOrders + openAlgoOrders, every symbol)": (
            _w("GET", "/fapi/v1/openOrders") + _w("GET", "/fapi/v1/openAlgoOrders")
        )
        * 60
        / DISCOVERY_S,
        "GET /fapi/v1/symbolConfig": _w("GET", "/fapi/v1/symbolConfig") * 60 / LEVERAGE_TTL_S,
        "GET /fapi/v1/income": _w("GET", "/fapi/v1/income") * FUNDINGS_A_DAY / (24 * 60),
        "PUT /fapi/v1/listenKey": _w("PUT", "/fapi/v1/listenKey") * 60 / KEEPALIVE_S,
    }


def fleet(url: str, n_acc: int, n_pos: int, workers: int, per_task: int, audit_s: float, audit_accounts: int) -> dict:
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
    out: dict = {
        "accounts": n_acc,
        "positions_per_account": n_pos,
        "workers": workers,
        "per_task": per_task,
        "audit_s": audit_s,
        "audit_accounts": min(audit_accounts, n_acc),
    }
    counters = hv.plans.k.counters
    try:
        procs[0].wait_ready(120)
        # ---- REST polling: the fleet without harvest streams
        # warm, twice (each worker process meets every account): clients built; leverage, openings,
        # funding so far, as after any earlier tick
        _, cost = _measure(emu, lambda: _tick(hv, env, accounts))
        out["first_read"] = _per(cost, n_acc)  # a new account's first read: openings, leverage, funding
        _tick(hv, env, accounts)
        out["rest_tick_s"], cost = _measure(emu, lambda: _tick(hv, env, accounts))
        out["rest_scan"] = _per(cost, n_acc)
        out["rest_reconcile_s"], cost = _measure(emu, lambda: _reconcile(env))
        out["rest_reconcile"] = _per(cost, n_acc)

        # ---- harvest streams holds every account (HARVEST_AUDIT_INTERVAL_S as configured: 900 s)
        caches = [StreamCache(hv.r, ns, a) for a in accounts]
        emu.reset_tally()
        audits_before = int(hv.r.hget(counters, "streams:audits") or 0)
        t0 = time.monotonic()
        st = HarvestProcess("streams", env, ["--symbols", ",".join(syms), "--no-triggers"]).start()
        procs.append(st)
        wait_for(lambda: all(c.trusted() for c in caches), 1800, 0.5, "every account's stream cache")
        out["cold_start_s"] = time.monotonic() - t0
        cold = {e: [n, w] for e, (n, w) in emu.weight_by_endpoint().items()}
        # accounts trusted early are audited (at 900 s) while the last ones still connect: those
        # audits are taken out below, priced by the audit measured on its own
        out["cold_start_audits"] = int(hv.r.hget(counters, "streams:audits") or 0) - audits_before
        wait_for(lambda: caches[0].snapshot(3.0, 3.0), 30, 0.1, "fresh marks")
        cpu, rss = _cpu_share(st.proc.pid, 10.0)
        out["streams_cpu_share"], out["streams_rss_mb"] = cpu, rss
        audits_at = int(hv.r.hget(counters, "streams:audits") or 0)
        out["streams_tick_s"], tick_cost = _measure(emu, lambda: _tick(hv, env, accounts))
        tick_audits = int(hv.r.hget(counters, "streams:audits") or 0) - audits_at
        out["positions_from_streams"] = int(hv.r.hget(counters, "positions:streams") or 0)
        audits_at = int(hv.r.hget(counters, "streams:audits") or 0)
        out["streams_reconcile_s"], reconcile_cost = _measure(emu, lambda: _reconcile(env))
        reconcile_audits = int(hv.r.hget(counters, "streams:audits") or 0) - audits_at
        # the reads of streamed accounts that went to REST in that tick and reconcile, by why
        out["fallbacks"] = {
            k.split(":", 2)[2]: int(v) for k, v in hv.r.hgetall(counters).items() if k.startswith("streams:fallback:")
        }

        # ---- one full rotation of the audit (each account at its own phase of --audit-s): a
        # second streams process holding --audit-accounts of them (the audit's cost per account
        # does not depend on the fleet; the first process's audits stay at their 900 s)
        st.stop(30)
        procs.remove(st)
        some = accounts[: out["audit_accounts"]]
        audit_env = dict(env, HARVEST_AUDIT_INTERVAL_S=repr(audit_s))
        args = ["--symbols", ",".join(syms), "--no-triggers", "--accounts", ",".join(some)]
        st = HarvestProcess("streams", audit_env, args).start()
        procs.append(st)
        wait_for(lambda: all(c.trusted() for c in caches[: len(some)]), 900, 0.5, "the audited accounts' caches")
        audits0 = int(hv.r.hget(counters, "streams:audits") or 0)
        emu.reset_tally()
        t0 = time.monotonic()
        wait_for(
            lambda: int(hv.r.hget(counters, "streams:audits") or 0) >= audits0 + len(some),
            3 * audit_s + 300,
            0.5,
            "one audit of every account",
        )
        out["audit_rotation_s"] = time.monotonic() - t0
        tally = emu.weight_by_endpoint()
        audits = int(hv.r.hget(counters, "streams:audits") or 0) - audits0
        out["audit"] = _per({e: [n, w] for e, (n, w) in tally.items()}, audits)  # per audit
        out["audit_disagreements"] = int(hv.r.hget(counters, "streams:gap:audit") or 0)
        # the streams process audits all along (1000 accounts at 900 s: 1.1 a second): what the
        # emulator counted while the cold start, the tick and the reconcile ran holds those
        # audits, priced here by the audit measured on its own and taken out (the audit has its
        # own line in the steady state)
        out["cold_start"] = _per(_less_audits(cold, out["audit"], out["cold_start_audits"]), n_acc)
        out["streams_scan"] = _per(_less_audits(tick_cost, out["audit"], tick_audits), n_acc)
        out["streams_reconcile"] = _per(_less_audits(reconcile_cost, out["audit"], reconcile_audits), n_acc)
        out["audits_taken_out"] = {
            "cold_start": out["cold_start_audits"],
            "tick": tick_audits,
            "reconcile": reconcile_audits,
        }

        # ---- steady state per account per minute, by endpoint
        cadence = _cadence()

        def steady(parts: list[tuple[dict, float]], extra: dict[str, float]) -> dict[str, float]:
            by: dict[str, float] = {}
            for tally_, per_min in parts:
                for e, (_, w) in tally_.items():
                    by[e] = by.get(e, 0.0) + w * per_min
            for e, w in extra.items():
                by[e] = by.get(e, 0.0) + w
            return {e: w for e, w in sorted(by.items()) if w > 0}

        no_keepalive = {e: w for e, w in cadence.items() if "listenKey" not in e and "discovery" not in e}
        out["steady_streams"] = steady(
            [
                (out["streams_scan"], 60 / SCAN_S),
                (out["streams_reconcile"], 60 / RECONCILE_S),
                (out["audit"], 60 / AUDIT_S),
            ],
            cadence,
        )
        out["steady_rest"] = steady(
            [(out["rest_scan"], 60 / SCAN_S), (out["rest_reconcile"], 60 / RECONCILE_S)], no_keepalive
        )
        out["steady_old"] = _old_design(n_pos)
        totals = {
            "streams": sum(out["steady_streams"].values()),
            "rest": sum(out["steady_rest"].values()),
        }
        out["weight_per_account_min"] = totals
        share = WEIGHT_LIMIT_1M * READ_SHARE
        out["accounts_per_ip"] = {
            "streams": int(share // totals["streams"]),
            "rest": int(share // totals["rest"]),
            "old_streams": int(share // out["steady_old"]["streams"]),
            "old_rest": int(share // out["steady_old"]["rest"]),
        }
        # the audit interval at which 1000 accounts fit the reads' share (the rest as measured)
        audit_w = _total(out["audit"])
        other = totals["streams"] - audit_w * 60 / AUDIT_S
        room = share / 1000 - other
        out["audit_s_for_1000"] = audit_w * 60 / room if room > 0 else None
        out["cold_start_min_in_share"] = _total(out["cold_start"]) * n_acc / share
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
    p.add_argument(
        "--audit-s",
        type=float,
        default=120.0,
        help="HARVEST_AUDIT_INTERVAL_S of the run, so that one rotation is measured (default %(default)s)",
    )
    p.add_argument(
        "--audit-accounts",
        type=int,
        default=100,
        help="the accounts whose audit rotation is measured, by a second streams process (default %(default)s)",
    )
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args()
    server = RedisServer().start()
    try:
        f = fleet(server.url, a.accounts, a.positions, a.workers, a.per_task, a.audit_s, a.audit_accounts)
        m = mark_events(server.url)
    finally:
        server.stop()
    k = 1000 / a.accounts
    share = WEIGHT_LIMIT_1M * READ_SHARE
    print(
        f"{a.accounts} accounts × {a.positions} positions on one IP, a worker with {a.workers} processes, "
        f"{a.per_task} accounts per scan task; weights by Binance's table, as the emulator counts them"
    )
    print(f"{'':56} {'REST polling':>13} {'streams':>10}")
    print(
        f"{'one beat tick: every account scanned (s)':56} {f['rest_tick_s']:>13.2f} {f['streams_tick_s']:>10.2f}"
        f"   (target ≤ 2 s: {'met' if f['streams_tick_s'] <= 2 else 'MISSED'})"
    )
    print(f"{'weight of that tick, per account':56} {_total(f['rest_scan']):>13.2f} {_total(f['streams_scan']):>10.2f}")
    print(
        f"{'weight of one reconcile, per account':56} {_total(f['rest_reconcile']):>13.2f}"
        f" {_total(f['streams_reconcile']):>10.2f}"
    )
    print(
        f"{'one reconcile of every account (s, harvest reconcile)':56} {f['rest_reconcile_s']:>13.2f}"
        f" {f['streams_reconcile_s']:>10.2f}"
    )
    t = f["audits_taken_out"]
    print(
        f"  (the streams process's audits that ran meanwhile are taken out, priced by the audit's own "
        f"measure: {t['tick']} in the tick, {t['reconcile']} in the reconcile, {t['cold_start']} in the cold start)"
    )
    if f["fallbacks"]:
        print(
            "  of which reads of streamed accounts that went to REST (cache refused, by why): "
            + ", ".join(f"{k} {v}" for k, v in sorted(f["fallbacks"].items()))
        )
    ws = f["weight_per_account_min"]
    print(
        f"{'steady-state weight per account per minute':56} {ws['rest']:>13.2f} {ws['streams']:>10.2f}"
        f"   (target ≤ 2: {'met' if ws['streams'] <= 2 else 'MISSED'})"
    )
    print(
        f"{'  the reads before issue 32, the same table':56} {f['steady_old']['rest']:>13.2f}"
        f" {f['steady_old']['streams']:>10.2f}"
    )
    for mode in ("streams", "rest"):
        print(f"steady state by endpoint, {mode} (weight per account per minute):")
        for e, w in f[f"steady_{mode}"].items():
            print(f"  {e:<40} {w:>8.3f}")
    print(
        f"the audit: one rotation of {f['audit_accounts']} accounts at HARVEST_AUDIT_INTERVAL_S={a.audit_s:g} took "
        f"{f['audit_rotation_s']:.0f} s; {_total(f['audit']):.1f} weight an audit ("
        + ", ".join(f"{e} {w:.1f}" for e, (_, w) in f["audit"].items())
        + f"); {f['audit_disagreements']} disagreements"
    )
    print(
        f"accounts one IP holds at steady state (reads' share {share:.0f} of {WEIGHT_LIMIT_1M} a minute): "
        f"streams {f['accounts_per_ip']['streams']}, REST polling {f['accounts_per_ip']['rest']} "
        f"(before issue 32: {f['accounts_per_ip']['old_streams']} / {f['accounts_per_ip']['old_rest']})"
    )
    if f["audit_s_for_1000"] is not None:
        print(f"1000 accounts fit the reads' share with HARVEST_AUDIT_INTERVAL_S ≥ {f['audit_s_for_1000']:.0f} s")
    print(
        f"cold start (harvest streams takes every account): {_total(f['cold_start']):.1f} weight per account ("
        + ", ".join(f"{e} {w:.1f}" for e, (_, w) in f["cold_start"].items() if w > 0.05)
        + f"; the {f['cold_start_audits']} audits meanwhile taken out)"
        + f"; {f['cold_start_s']:.0f} s with the budget lifted, {f['cold_start_min_in_share']:.1f} min "
        f"for {a.accounts} accounts inside the reads' share"
    )
    print(
        f"a new account's first read, once (openings from userTrades, leverage, funding so far; kept in Redis "
        f"across restarts): {_total(f['first_read']):.1f} weight ("
        + ", ".join(f"{e} {w:.1f}" for e, (_, w) in f["first_read"].items())
        + f"); {_total(f['first_read']) * a.accounts / share:.1f} min for {a.accounts} accounts inside the reads' share"
    )
    print(
        f"harvest streams holding {a.accounts} accounts (audits at 900 s): "
        f"RSS {f['streams_rss_mb']:.0f} MB ({f['streams_rss_mb'] * k:.0f} MB per 1000 accounts), "
        f"CPU {100 * f['streams_cpu_share']:.1f} % of a core ({100 * f['streams_cpu_share'] * k:.1f} % per 1000)"
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
