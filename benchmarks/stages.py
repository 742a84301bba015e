"""Where a plan's time goes, stage by stage: the four plan stages run in this process, one
plan after another, on the paper venue and a private redis-server.

    python benchmarks/stages.py [--plans 2000] [--json benchmarks/stages.last.json]

For each of ``propose → guard → execute → confirm`` it prints, per plan: the CPU time (ms)
and wall time (ms) of the task body in this process and its Redis round trips (requests sent
on any connection: a pipeline counts once); the exchange's share of the CPU (the paper
engine's calls inside guard, execute and confirm) is timed apart. For the Redis server, per
plan: its CPU time (``INFO`` ``used_cpu_*``: commands, scripts and its network work) and,
over a few hundred more plans, the time of each script call and each command (``SLOWLOG``
with threshold 0; a script's own commands are logged too, and their time is part of the
script's).

No Celery worker runs here: the bodies are called directly (``task.run``), so the figures
are the stages' own cost without Celery's work around a task and without other processes
competing for the CPUs. That makes them steadier than the pipeline figure of
:mod:`benchmarks.performance` (which they do not replace) and a fair before/after measure of
a change to a stage. Under the pipeline benchmark's load the same bodies take about twice the
CPU (see the README's Performance section).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import clean, fresh_namespace, symbols  # noqa: E402

from harvest.ops.procs import RedisServer  # noqa: E402

STAGES = ("propose", "guard", "execute", "confirm")
#: The paper engine's entry points the stages call (timed as the exchange's share).
VENUE_CALLS = ("position", "close_market", "move_stop", "order_and_position")


class RoundTrips:
    """Counts requests sent to Redis on any connection of this process (redis-py's
    ``send_packed_command``: one per command, one per pipeline)."""

    def __init__(self):
        import redis.connection

        self.n = 0
        cls = redis.connection.AbstractConnection
        original = cls.send_packed_command

        def counted(conn, command, check_health=True):
            self.n += 1
            return original(conn, command, check_health)

        cls.send_packed_command = counted


class Timed:
    """Wraps methods of one object, adding up their CPU time per stage (``stage`` is set by
    the caller around each timed body; while it is empty, calls go through untimed)."""

    def __init__(self, obj, names):
        self.stage = ""
        self.cpu: Counter[str] = Counter()
        for name in names:
            if hasattr(obj, name):
                setattr(obj, name, self._wrap(getattr(obj, name)))

    def _wrap(self, f):
        def timed(*args, **kwargs):
            if not self.stage:
                return f(*args, **kwargs)
            c0 = time.process_time()
            try:
                return f(*args, **kwargs)
            finally:
                self.cpu[self.stage] += time.process_time() - c0

        return timed


def run(url: str, plans: int, warmup: int = 20, logged: int = 300) -> dict:
    """Make ``warmup + plans + logged`` actionable positions (2.1 R: one partial close
    each) and decide them as the scan does. Run the four stage bodies of ``warmup`` plans
    untimed, of ``plans`` plans timed (CPU, wall, round trips, the Redis server's CPU), then
    of ``logged`` plans with Redis's ``SLOWLOG`` on (its own cost kept out of the timed
    figures). Returns per-plan figures (see the module docstring)."""
    syms = symbols(warmup + plans + logged, "T")
    ns, env, rt0 = fresh_namespace(url, "stages", syms, 2.1)
    os.environ.update(env)  # before tasks.app reads the settings
    import tasks  # noqa: F401  (every task registered, as in a worker)
    from harvest.services.decide import decide, load_positions
    from harvest.services.runtime import get_runtime
    from tasks.confirm import confirm
    from tasks.execute import execute
    from tasks.guard import guard
    from tasks.propose import propose

    bodies = {"propose": propose, "guard": guard, "execute": execute, "confirm": confirm}
    rt = get_runtime()
    pairs, now = load_positions(rt)
    list(decide(rt, pairs, now))  # first sight: book epochs written, as after an earlier scan
    pairs, now = load_positions(rt)
    decisions = []
    for d in decide(rt, pairs, now):
        payload = d.model_dump(mode="json")
        payload["scanned_at"] = time.time()
        decisions.append(payload)
    if len(decisions) != len(syms):
        raise RuntimeError(f"{len(decisions)} decisions for {len(syms)} actionable positions")
    trips = RoundTrips()
    venue = Timed(rt.venue, VENUE_CALLS)
    cpu, wall, rts = Counter(), Counter(), Counter()
    ends: Counter[str] = Counter()

    def run_plans(batch, timed: bool) -> None:
        for payload in batch:
            out = payload
            for stage in STAGES:
                venue.stage = stage if timed else ""
                n0, c0, w0 = trips.n, time.process_time(), time.perf_counter()
                out = bodies[stage].run(out)
                if timed:
                    cpu[stage] += time.process_time() - c0
                    wall[stage] += time.perf_counter() - w0
                    rts[stage] += trips.n - n0
            if timed:
                ends[str(out)] += 1

    run_plans(decisions[:warmup], False)  # scripts loaded, caches warm
    redis_cpu0 = _redis_cpu_s(rt0.r)
    run_plans(decisions[warmup : warmup + plans], True)
    redis_cpu = _redis_cpu_s(rt0.r) - redis_cpu0
    scripts = {
        s.sha: name
        for name, s in (
            ("create", rt.plans._create),
            ("transition", rt.plans._transition),
            ("mark_send", rt.plans._mark_send),
            ("plan_and_book", rt.plans._plan_and_book),
            ("paper_snapshot", rt.venue._snapshot),
            ("paper_fill", rt.venue._fill),
        )
    }
    rt0.r.config_set("slowlog-max-len", 1_000_000)
    rt0.r.config_set("slowlog-log-slower-than", 0)
    rt0.r.slowlog_reset()
    try:
        run_plans(decisions[warmup + plans :], False)
        log = rt0.r.slowlog_get(1_000_000)
    finally:
        rt0.r.config_set("slowlog-log-slower-than", 10_000)
        rt0.r.config_set("slowlog-max-len", 128)
        clean(rt0)
    server: dict[str, list[int]] = defaultdict(list)
    for e in log:
        argv = [a.decode() if isinstance(a, bytes) else str(a) for a in e["command"].split()]
        name = argv[0].upper()
        if name in ("SLOWLOG", "CONFIG"):
            continue
        if name == "EVALSHA":
            name = "script " + scripts.get(argv[1], argv[1][:8])
        server[name].append(e["duration"])
    per = 1000 / plans
    return {
        "plans": plans,
        "ends": dict(ends),
        "stages": {
            s: {
                "cpu_ms": cpu[s] * per,
                "wall_ms": wall[s] * per,
                "round_trips": rts[s] / plans,
                "exchange_cpu_ms": venue.cpu[s] * per,
            }
            for s in STAGES
        },
        "redis_cpu_us_per_plan": 1e6 * redis_cpu / plans,
        "slowlog_plans": logged,
        "redis_us_per_plan": {k: sum(v) / logged for k, v in sorted(server.items(), key=lambda kv: -sum(kv[1]))},
        "redis_calls_per_plan": {k: len(v) / logged for k, v in server.items()},
    }


def _redis_cpu_s(r) -> float:
    """CPU seconds the Redis server has used so far (its main thread and the others)."""
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=2000, help="plans timed (after 20 untimed)")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    server = RedisServer().start()
    try:
        res = run(server.url, a.plans)
    finally:
        server.stop()
    st = res["stages"]
    print(
        f"{res['plans']} plans, one after another, in this process (paper venue, private redis-server); "
        f"they ended {res['ends']}"
    )
    print(f"{'stage':9s} {'CPU ms':>7s} {'wall ms':>8s} {'round trips':>12s} {'of which exchange CPU ms':>25s}")
    for s in STAGES:
        print(
            f"{s:9s} {st[s]['cpu_ms']:7.3f} {st[s]['wall_ms']:8.3f} {st[s]['round_trips']:12.2f} "
            f"{st[s]['exchange_cpu_ms']:25.3f}"
        )
    print(
        f"{'total':9s} {sum(x['cpu_ms'] for x in st.values()):7.3f} {sum(x['wall_ms'] for x in st.values()):8.3f} "
        f"{sum(x['round_trips'] for x in st.values()):12.2f} {sum(x['exchange_cpu_ms'] for x in st.values()):25.3f}"
    )
    print(
        f"Redis server CPU per plan: {res['redis_cpu_us_per_plan']:.0f} µs (INFO). Time by script and by command, "
        f"SLOWLOG over {res['slowlog_plans']} more plans (µs and calls per plan; most commands run inside the "
        "scripts, and their time is part of the script's):"
    )
    for k, us in res["redis_us_per_plan"].items():
        print(f"  {k:22s} {us:7.1f} µs  {res['redis_calls_per_plan'][k]:5.2f} calls")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
