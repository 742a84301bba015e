"""harvest's performance targets, each measured beside its baseline in one run.

    python benchmarks/performance.py [--positions 10000] [--json benchmarks/performance.last.json]

Real processes throughout: a private redis-server as broker and store, ``celery worker``
processes with harvest's own configuration (acks late, prefetch 1, JSON), the paper venue,
and the fapi emulator behind python-binance for the latency run. Prints one line per figure
with its target and writes everything to JSON.

a. kernel — :func:`harvest.domain.kernel.evaluate_batch` over 10 000 positions vs
   :func:`harvest.domain.kernel.compute_harvest_proposal` called per position (same inputs).
b. scan — one beat scan of 10 000 open paper positions, ~1 % actionable: wall time from
   publish to the scan's end (every chain published) on a scan worker with 2 processes, the
   tasks it published, in steady state (each process has scanned once before, untimed);
   beside it, bare 5-task no-op chains through the same broker and workers (what a chain
   per position would cost).
c. pipeline — actionable ``propose → guard → execute → confirm`` chains per second (first
   publish to every plan terminal) vs the same number of bare 4-task no-op chains, same
   queues, same workers (scan -c 2, orders -c 2), in alternating rounds; the median ratio,
   and the machine CPU per chain of each side by process.
   Both kinds of chain are published the same way, from this process with Celery's canvas
   (harvest's own :func:`workflows.action_chain` for the decisions a scan would make), so
   the ratio is what harvest's four stages cost against four no-ops. Beside it, rounds whose
   chains the beat scan starts in a worker (scan publish to every plan terminal, the scan's
   read of every open position included) against bare rounds too, and rounds on workers
   whose venue answers from memory (:mod:`benchmarks.instant_venue`: the stages without the
   paper engine's work; a decomposition, not a target figure).
d. latency — scan tick → order acknowledged by the exchange (the plan's ``scanned_at`` →
   ``acked_at``), p50/p99, on the emulator through python-binance, one actionable position
   per tick among 100 open.
e. memory — RSS of a scan worker's pool process over 100 000 position evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import (  # noqa: E402
    T0,
    celery_app,
    clean,
    fresh_namespace,
    mark_at_r,
    paper_of,
    start_emulator,
    start_worker,
    symbols,
)

from harvest.ops.procs import RedisServer, child_pids, wait_for  # noqa: E402

TARGETS = {
    "kernel_ratio": 50.0,
    "scan_wall_s": 1.0,
    "pipeline_ratio": 0.8,
    "latency_p99_ms": 250.0,
    "rss_growth_mb": 5.0,
}
NOOP = ["-I", "benchmarks.noop_tasks"]
#: Workers of the pipeline rounds with the exchange's work removed (see benchmarks/instant_venue.py).
INSTANT = ["-I", "benchmarks.noop_tasks,benchmarks.instant_venue"]


# --------------------------------------------------------------------------- a. kernel


def bench_kernel(n: int) -> dict:
    """Batch vs per-position kernel over the same n random positions (best of 3 each)."""
    from harvest.domain.kernel import (
        PositionBatch,
        compute_harvest_proposal,
        evaluate_batch,
    )
    from harvest.domain.models import HarvestTheta, MarketState, Position, Regime, Side

    rnd = random.Random(7)
    theta = HarvestTheta()
    now = T0 + 86_400
    pairs = []
    for i in range(n):
        side = rnd.choice([Side.LONG, Side.SHORT])
        entry = rnd.uniform(1, 1000)
        stop = entry * (1 - side.sign * rnd.uniform(0.005, 0.05))
        mark = entry * (1 + side.sign * rnd.uniform(-0.04, 0.2))
        reg = [Regime.TREND, Regime.CHOP, Regime.MR]
        es = MarketState(
            symbol=f"S{i}",
            ts_time=T0,
            sigma=rnd.uniform(0, 0.01),
            ts=rnd.random(),
            p_trend=rnd.random(),
            regime=rnd.choice(reg),
            trend_dir=rnd.choice([-1, 0, 1]),
        )
        ms = es.model_copy(update={"sigma": rnd.uniform(0, 0.02), "ts": rnd.random(), "regime": rnd.choice(reg)})
        pos = Position(
            symbol=f"S{i}",
            side=side,
            qty=1.0,
            qty_at_open=1.0,
            entry_price=entry,
            mark_price=mark,
            leverage=10,
            initial_stop=stop,
            opened_at=T0 + rnd.uniform(0, 80_000),
            epoch="e",
            harvested_tier=rnd.choice([0, 0, 1, 2]),
            entry_state=es,
        )
        pairs.append((pos, ms))

    def best(f, k=3):
        out = []
        for _ in range(k):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
        return min(out)

    loop_s = best(lambda: [compute_harvest_proposal(p, m, now, theta) for p, m in pairs])
    batch = PositionBatch.from_models(pairs)
    batch_s = best(lambda: evaluate_batch(batch, now, theta), 5)
    build_s = best(lambda: PositionBatch.from_models(pairs))
    return {
        "positions": n,
        "loop_s": loop_s,
        "batch_s": batch_s,
        "build_arrays_s": build_s,
        "ratio": loop_s / batch_s,
        "ratio_incl_build": loop_s / (batch_s + build_s),
        "loop_positions_per_s": n / loop_s,
        "batch_positions_per_s": n / batch_s,
    }


# --------------------------------------------------------------------------- helpers


def _pool_pids(worker_pid: int) -> list[int]:
    """The pool processes of a ``celery worker`` (its children, or theirs behind a wrapper)."""
    return [c for p in child_pids(worker_pid) for c in child_pids(p)] or child_pids(worker_pid)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux ``/proc``); 0.0
    when it cannot be read."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


#: The processes of the pipeline runs, by kind (the keys of :func:`_cpu_by_kind`).
CPU_KINDS = ("redis", "benchmark", "scan_consumer", "scan_pool", "orders_consumer", "orders_pool")


def _cpu_by_kind(rt, ws) -> dict[str, float]:
    """CPU seconds used so far by the Redis server, this process, and each worker's main
    (consumer) process and pool processes (``ws``: the scan worker, then the orders worker)."""
    out = {"redis": _cpu_s(int(rt.r.info("server")["process_id"])), "benchmark": _cpu_s(os.getpid())}
    for w, kind in zip(ws, ("scan", "orders"), strict=True):
        out[f"{kind}_consumer"] = _cpu_s(w.proc.pid)
        out[f"{kind}_pool"] = sum(_cpu_s(p) for p in _pool_pids(w.proc.pid))
    return out


def _counter(rt, name: str) -> int:
    return int(rt.r.hget(rt.plans.k.counters, name) or 0)


def _bare_chains(app, ns: str, rt, n: int, queues: list[str]) -> float:
    """Publish n bare no-op chains (one task per entry of ``queues``, the last one counts
    the chain done) and wait until all are done; chains per second."""
    from celery import chain

    key = f"{ns}:bench:done:{uuid.uuid4().hex[:6]}"
    sigs = [app.signature("bench.noop", queue=f"{ns}.{q}") for q in queues[:-1]]
    t0 = time.perf_counter()
    for _ in range(n):
        chain(
            app.signature("bench.noop", args=(None,), queue=f"{ns}.{queues[0]}"),
            *sigs[1:],
            app.signature("bench.done", kwargs={"key": key}, queue=f"{ns}.{queues[-1]}"),
        ).apply_async()
    wait_for(lambda: int(rt.r.get(key) or 0) >= n, 600, 0.02, f"{n} bare chains")
    return n / (time.perf_counter() - t0)


def _set_marks(rt, paper, batch: list[str], r_multiple: float) -> None:
    """Mark every symbol of ``batch`` at ``r_multiple`` R (0: at entry, nothing to do)."""
    p = rt.r.pipeline(transaction=False)
    for s in batch:
        p.set(paper.k_mark(s), repr(mark_at_r(rt, s, r_multiple)))
    p.execute()


def _prime(app, ns: str, rt, processes: int = 2) -> None:
    """One scan per scan-worker process, side by side: the first sight of every position
    (book epochs written) and each process's per-process caches warm (listings, parsed
    entry and market states), as after any earlier beat tick. Not timed."""
    runs = _counter(rt, "scan:runs")
    for _ in range(processes):
        app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
    wait_for(lambda: _counter(rt, "scan:runs") == runs + processes, 240, 0.005, "the priming scans")


def _workers(env, ns, scan_c=2, orders_c=2, preload=NOOP):
    ws = [start_worker(env, ns, "scan", scan_c, *preload), start_worker(env, ns, "orders", orders_c, *preload)]
    for w in ws:
        w.wait_ready()
    return ws


def _all_terminal(rt, n: int) -> bool:
    return rt.r.zcard(rt.plans.k.plan_index) >= n and rt.plans.count_open() == 0


# --------------------------------------------------------------------------- b. scan


def bench_scan(url: str, n: int, rounds: int = 3, baseline_chains: int = 1000) -> dict:
    syms = symbols(n)
    ns, env, rt = fresh_namespace(url, "perf", syms, 0.0)
    app = celery_app(env)
    ws = _workers(env, ns)
    paper = paper_of(rt)
    actionable = max(1, n // 100)
    out: dict = {"positions": n, "actionable_per_scan": actionable, "scan_worker_processes": 2, "rounds": []}
    try:
        _prime(app, ns, rt)
        for k in range(rounds):
            batch = syms[k * actionable : (k + 1) * actionable]
            _set_marks(rt, paper, batch, 2.1)
            runs, started = _counter(rt, "scan:runs"), _counter(rt, "scan:chains_started")
            t0 = time.perf_counter()
            app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
            wait_for(lambda runs=runs: _counter(rt, "scan:runs") == runs + 1, 60, 0.01, "the scan")
            wall = time.perf_counter() - t0
            chains = _counter(rt, "scan:chains_started") - started
            wait_for(lambda k=k: _all_terminal(rt, (k + 1) * actionable), 300, 0.01, "the round's plans terminal")
            _set_marks(rt, paper, batch, 0.0)  # back at entry: the next scan has 1 % actionable again
            out["rounds"].append(
                {
                    "scan_wall_s": wall,
                    "chains_published": chains,
                    "tasks_published": 4 * chains,
                    "until_all_terminal_s": time.perf_counter() - t0,
                }
            )
        rate = _bare_chains(app, ns, rt, baseline_chains, ["scan", "scan", "scan", "orders", "orders"])
        out["bare_5task_chains_per_s"] = rate
        out["chain_per_position_design_s"] = n / rate
        out["scan_wall_s"] = max(r["scan_wall_s"] for r in out["rounds"])
    finally:
        for w in ws:
            w.stop()
        clean(rt)
    return out


# --------------------------------------------------------------------------- c. pipeline


def _harvest_canvas(env: dict[str, str]):
    """harvest's own Celery app, canvases and scan decisions in this process, for the
    namespace of ``env`` (:mod:`tasks.app` reads its settings from the environment once, at
    import, so this may run once per process). Returns ``(action_chain, load_positions,
    decide)``. The ``sent_at`` stamp that harvest's workers put on what they publish is
    left off here, as on the bare chains this process publishes."""
    if "tasks.app" in sys.modules:
        raise RuntimeError("harvest's app is already configured in this process")
    from settings import get_settings

    saved = dict(os.environ)
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        from celery.signals import before_task_publish

        import tasks  # noqa: F401  (every task registered, as in a worker)
        from harvest.services.decide import decide, load_positions
        from workflows import action_chain
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
    before_task_publish.disconnect(sys.modules["tasks.app"]._stamp_sent_at)
    return action_chain, load_positions, decide


def bench_pipeline(url: str, n: int, rounds: int = 7, scan_rounds: int = 2, instant_rounds: int = 2) -> dict:
    """``rounds`` rounds, each n harvest chains and n bare 4-task chains back to back (the
    order alternates, so a machine that speeds up or slows down during the run does not
    favour either side); the figure is the median of the rounds' ratios (their pooled
    ratio is reported beside it). Each round makes n fresh positions actionable (2.1 R:
    one partial each), decides them as the scan does (untimed), publishes one
    :func:`workflows.action_chain` per decision from here, as the bare chains are, and,
    once its plans are terminal, marks them back at entry. Then ``scan_rounds`` more pairs
    in which the beat scan (of every position opened so far) starts the chains. Every timed
    side also records the machine CPU it used per chain, by process (Redis, this process,
    each worker's consumer and pool processes; Linux ``/proc``): the rate follows it when
    the CPUs are busy, and it shows where harvest's extra goes. Last, ``instant_rounds``
    pairs like the first ones on workers whose venue answers from memory
    (:mod:`benchmarks.instant_venue`): the stages without the paper engine's work, which on a
    real exchange runs on the exchange's machines, not on these 2 CPUs (a decomposition, not
    a target figure)."""
    syms = symbols(n * (rounds + scan_rounds + instant_rounds), "P")
    ns, env, rt = fresh_namespace(url, "perf", syms, 0.0)
    app = celery_app(env)
    paper = paper_of(rt)
    action_chain, load_positions, decide = _harvest_canvas(env)
    from harvest.services.decide import chain_payload

    ws = _workers(env, ns)
    queues = ["scan", "scan", "orders", "orders"]
    out: dict = {
        "chains": n,
        "rounds": [],
        "scan_rounds": [],
        "instant_rounds": [],
        "workers": "scan -c 2, orders -c 2",
    }
    try:
        _bare_chains(app, ns, rt, 50, queues)  # warm-up of the pools
        _prime(app, ns, rt)

        def _cpu_ms_per_chain(before: dict[str, float]) -> dict[str, float]:
            after = _cpu_by_kind(rt, ws)
            return {kind: 1000 * (after[kind] - before[kind]) / n for kind in CPU_KINDS}

        def harvest_round(k: int) -> tuple[float, dict[str, float]]:
            batch = syms[k * n : (k + 1) * n]
            _set_marks(rt, paper, batch, 2.1)
            pairs, now = load_positions(rt)
            scanned_at = time.time()
            chains = [chain_payload(d, scanned_at) for d in decide(rt, pairs, now)]
            if len(chains) != n:
                raise RuntimeError(f"{len(chains)} decisions for {n} actionable positions")
            cpu0, t0 = _cpu_by_kind(rt, ws), time.perf_counter()
            for payload, pid in chains:
                action_chain(payload, pid).apply_async()
            wait_for(lambda: _all_terminal(rt, (k + 1) * n), 600, 0.02, "the round's plans terminal")
            rate, cpu = n / (time.perf_counter() - t0), _cpu_ms_per_chain(cpu0)
            _set_marks(rt, paper, batch, 0.0)
            return rate, cpu

        def scan_round(k: int) -> tuple[float, dict[str, float]]:
            batch = syms[k * n : (k + 1) * n]
            _set_marks(rt, paper, batch, 2.1)
            cpu0, t0 = _cpu_by_kind(rt, ws), time.perf_counter()
            app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
            wait_for(lambda: _all_terminal(rt, (k + 1) * n), 600, 0.02, "the round's plans terminal")
            rate, cpu = n / (time.perf_counter() - t0), _cpu_ms_per_chain(cpu0)
            _set_marks(rt, paper, batch, 0.0)
            return rate, cpu

        def bare_round() -> tuple[float, dict[str, float]]:
            cpu0 = _cpu_by_kind(rt, ws)
            return _bare_chains(app, ns, rt, n, queues), _cpu_ms_per_chain(cpu0)

        for k in range(rounds + scan_rounds + instant_rounds):
            if k == rounds + scan_rounds:  # workers whose venue answers from memory
                for w in ws:
                    w.stop()
                ws[:] = _workers({**env, "HARVEST_BENCH_INSTANT_VENUE": "1"}, ns, preload=INSTANT)
                _bare_chains(app, ns, rt, 50, queues)
            run = scan_round if rounds <= k < rounds + scan_rounds else harvest_round
            if k % 2 == 0:
                (bare, bare_cpu), (harvest, harvest_cpu) = bare_round(), run(k)
            else:
                (harvest, harvest_cpu), (bare, bare_cpu) = run(k), bare_round()
            row = {
                "harvest_chains_per_s": harvest,
                "bare_4task_chains_per_s": bare,
                "ratio": harvest / bare,
                "harvest_cpu_ms_per_chain": harvest_cpu,
                "bare_cpu_ms_per_chain": bare_cpu,
            }
            if run is scan_round:
                row["positions_scanned"] = n * (rounds + scan_rounds + instant_rounds)  # every position stays open
            out["rounds" if k < rounds else "scan_rounds" if run is scan_round else "instant_rounds"].append(row)
        states: dict[str, int] = {}
        for p in rt.plans.all_plans():
            states[p.state] = states.get(p.state, 0) + 1
    finally:
        for w in ws:
            w.stop()
        clean(rt)
    rs = out["rounds"]
    out.update(
        {
            "harvest_chains_per_s": statistics.median(r["harvest_chains_per_s"] for r in rs),
            "bare_4task_chains_per_s": statistics.median(r["bare_4task_chains_per_s"] for r in rs),
            "ratio": statistics.median(r["ratio"] for r in rs),
            "pooled_ratio": (
                sum(1 / r["bare_4task_chains_per_s"] for r in rs) / sum(1 / r["harvest_chains_per_s"] for r in rs)
            ),
            "scan_started_ratio": (
                statistics.median(r["ratio"] for r in out["scan_rounds"]) if out["scan_rounds"] else None
            ),
            "instant_ratio": (
                statistics.median(r["ratio"] for r in out["instant_rounds"]) if out["instant_rounds"] else None
            ),
            # Machine CPU per chain by process (mean over the rounds, ms): where harvest's extra goes.
            "cpu_ms_per_chain": {
                side: {kind: statistics.mean(r[f"{side}_cpu_ms_per_chain"][kind] for r in rs) for kind in CPU_KINDS}
                for side in ("harvest", "bare")
            },
            "states": states,
        }
    )
    return out


# --------------------------------------------------------------------------- d. latency


def bench_latency(url: str, ticks: int, open_n: int = 100) -> dict:
    syms = symbols(open_n, "L")
    ns, env, rt = fresh_namespace(url, "perf", syms, 0.0)
    emu = start_emulator(rt, env)
    app = celery_app(env)
    paper = paper_of(rt)
    ws = _workers(env, ns)
    lat = []
    try:
        app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
        wait_for(lambda: _counter(rt, "scan:runs") == 1, 60, 0.005, "the priming scan")
        for k in range(ticks):
            sym = syms[k % open_n]
            if k >= open_n:
                raise ValueError("ticks must not exceed the open positions")
            paper.set_mark(sym, mark_at_r(rt, sym, 2.1))
            runs, plans = _counter(rt, "scan:runs"), rt.r.zcard(rt.plans.k.plan_index)
            app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
            # One tick at a time: this tick's scan ran and the plans it started are terminal
            # (no backlog of scans ahead of the next tick's chains).
            wait_for(
                lambda runs=runs, plans=plans: (
                    _counter(rt, "scan:runs") > runs
                    and rt.r.zcard(rt.plans.k.plan_index) > plans
                    and rt.plans.count_open() == 0
                ),
                60,
                0.002,
                "the tick's plans terminal",
            )
        for p in rt.plans.all_plans():
            if p.acked_at is not None and p.scanned_at is not None:
                lat.append(1000 * (p.acked_at - p.scanned_at))
    finally:
        for w in ws:
            w.stop()
        emu.stop()
        clean(rt)
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {
        "ticks": ticks,
        "open_positions": open_n,
        "acknowledged": len(lat),
        "p50_ms": q[49],
        "p99_ms": q[98],
        "max_ms": lat[-1],
    }


# --------------------------------------------------------------------------- e. memory


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_memory(url: str, evaluations: int, positions: int = 1000) -> dict:
    syms = symbols(positions, "M")
    ns, env, rt = fresh_namespace(url, "perf", syms, 0.0)
    app = celery_app(env)
    w = start_worker(env, ns, "scan", 1)  # no --max-tasks-per-child: one pool process throughout
    samples = []
    try:
        w.wait_ready()
        celery_main = w.proc.pid
        pool = wait_for(lambda: _pool_pids(celery_main), 30, 0.05, "the worker's pool process")
        scans = evaluations // positions
        for k in range(scans):
            app.send_task("harvest.scan_positions", queue=f"{ns}.scan")
            wait_for(lambda k=k: _counter(rt, "scan:runs") == k + 1, 60, 0.01, "a scan")
            if (k + 1) % max(1, scans // 10) == 0:
                samples.append({"evaluations": (k + 1) * positions, "rss_mb": max(_rss_mb(p) for p in pool)})
    finally:
        w.stop()
        clean(rt)
    warm = samples[0]["rss_mb"]
    return {
        "positions_per_scan": positions,
        "evaluations": evaluations,
        "samples": samples,
        "rss_after_first_tenth_mb": warm,
        "rss_end_mb": samples[-1]["rss_mb"],
        "growth_mb": samples[-1]["rss_mb"] - warm,
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=10_000, help="open positions (kernel and scan runs)")
    ap.add_argument("--chains", type=int, default=300, help="actionable chains per round (pipeline run)")
    ap.add_argument("--rounds", type=int, default=7, help="pipeline rounds, harvest and bare (the target figure)")
    ap.add_argument(
        "--instant-rounds",
        type=int,
        default=2,
        help="pipeline rounds with the exchange's work removed (a decomposition; 7 makes it as "
        "steady as the target figure)",
    )
    ap.add_argument("--ticks", type=int, default=100, help="scan ticks (latency run)")
    ap.add_argument("--evaluations", type=int, default=100_000, help="position evaluations (memory run)")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    if a.rounds < 1 or a.instant_rounds < 0:
        ap.error("--rounds must be at least 1 and --instant-rounds at least 0")
    os.environ.pop("HARVEST_FAPI_URL", None)
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "targets": TARGETS,
    }
    out["kernel"] = bench_kernel(a.positions)
    server = RedisServer().start()
    try:
        out["scan"] = bench_scan(server.url, a.positions)
        out["pipeline"] = bench_pipeline(server.url, a.chains, rounds=a.rounds, instant_rounds=a.instant_rounds)
        out["latency"] = bench_latency(server.url, a.ticks)
        out["memory"] = bench_memory(server.url, a.evaluations)
    finally:
        server.stop()
    k, s, p, lt, m = out["kernel"], out["scan"], out["pipeline"], out["latency"], out["memory"]
    checks = {
        "kernel": k["ratio"] >= TARGETS["kernel_ratio"],
        "scan": s["scan_wall_s"] <= TARGETS["scan_wall_s"],
        "pipeline": p["ratio"] >= TARGETS["pipeline_ratio"],
        "latency": lt["p99_ms"] <= TARGETS["latency_p99_ms"],
        "memory": m["growth_mb"] <= TARGETS["rss_growth_mb"],
    }
    out["met"] = checks

    def ok(name):
        return "met" if checks[name] else "MISSED"

    print(f"machine: {out['machine']['cpus']} CPUs, Python {out['machine']['python']}, {out['machine']['platform']}")
    print(
        f"a. kernel  {k['positions']} positions: batch {1000 * k['batch_s']:.2f} ms "
        f"({k['batch_positions_per_s']:,.0f}/s) vs loop {1000 * k['loop_s']:.0f} ms "
        f"({k['loop_positions_per_s']:,.0f}/s) → ratio {k['ratio']:.0f}× (target ≥ 50×: {ok('kernel')}); "
        f"with array build from models {k['ratio_incl_build']:.0f}×"
    )
    rounds = ", ".join(f"{1000 * r['scan_wall_s']:.0f} ms" for r in s["rounds"])
    print(
        f"b. scan    {s['positions']} positions, {s['actionable_per_scan']} actionable, scan worker -c 2: "
        f"wall {rounds} (worst {1000 * s['scan_wall_s']:.0f} ms; target ≤ 1000 ms: {ok('scan')}); "
        f"{s['rounds'][0]['chains_published']} chains = {s['rounds'][0]['tasks_published']} tasks published; "
        f"all plans terminal after {s['rounds'][0]['until_all_terminal_s']:.2f} s"
    )
    print(
        f"           baseline: bare 5-task no-op chains {s['bare_5task_chains_per_s']:.0f}/s → a chain per position "
        f"would take {s['chain_per_position_design_s']:.1f} s for {s['positions']} positions "
        f"({s['chain_per_position_design_s'] / s['scan_wall_s']:.0f}× the batch scan)"
    )
    print(
        f"c. pipeline {len(p['rounds'])} rounds of {p['chains']} chains ({p['workers']}), harvest and bare "
        f"alternating: ratio median {p['ratio']:.2f} (target ≥ 0.8: {ok('pipeline')}), pooled "
        f"{p['pooled_ratio']:.2f}; per round "
        + ", ".join(f"{r['harvest_chains_per_s']:.0f}/{r['bare_4task_chains_per_s']:.0f}/s" for r in p["rounds"])
        + f"; {p['states']}"
    )
    cpu = p["cpu_ms_per_chain"]
    h_cpu, b_cpu = sum(cpu["harvest"].values()), sum(cpu["bare"].values())
    print(
        f"           machine CPU per chain (mean of the rounds): harvest {h_cpu:.1f} ms vs bare {b_cpu:.1f} ms "
        f"(CPU ratio {b_cpu / h_cpu:.2f}); harvest's extra by process: "
        + ", ".join(f"{kind} {cpu['harvest'][kind] - cpu['bare'][kind]:+.2f}" for kind in CPU_KINDS)
        + " ms"
    )
    if p["scan_rounds"]:
        print(
            f"           chains started by the beat scan in a worker (its read of all "
            f"{p['scan_rounds'][0]['positions_scanned']} open positions included): ratio median "
            f"{p['scan_started_ratio']:.2f}; per round "
            + ", ".join(
                f"{r['harvest_chains_per_s']:.0f}/{r['bare_4task_chains_per_s']:.0f}/s" for r in p["scan_rounds"]
            )
        )
    if p["instant_rounds"]:
        ir = p["instant_rounds"]
        h_i = statistics.mean(sum(r["harvest_cpu_ms_per_chain"].values()) for r in ir)
        b_i = statistics.mean(sum(r["bare_cpu_ms_per_chain"].values()) for r in ir)
        print(
            f"           the same chains with the exchange's work removed (the workers' venue answers from memory, "
            f"benchmarks/instant_venue.py; a decomposition, not the target figure): ratio median "
            f"{p['instant_ratio']:.2f}; machine CPU per chain harvest {h_i:.1f} ms vs bare {b_i:.1f} ms; per round "
            + ", ".join(f"{r['harvest_chains_per_s']:.0f}/{r['bare_4task_chains_per_s']:.0f}/s" for r in ir)
        )
    print(
        f"d. latency scan tick → order acknowledged (emulator, python-binance), {lt['acknowledged']} ticks: "
        f"p50 {lt['p50_ms']:.0f} ms, p99 {lt['p99_ms']:.0f} ms, max {lt['max_ms']:.0f} ms "
        f"(target p99 ≤ 250 ms: {ok('latency')})"
    )
    print(
        f"e. memory  scan worker pool process over {m['evaluations']:,} evaluations: RSS "
        f"{m['rss_after_first_tenth_mb']:.1f} MB after the first tenth → {m['rss_end_mb']:.1f} MB at the end "
        f"(growth {m['growth_mb']:+.1f} MB; target ≤ 5 MB: {ok('memory')})"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
