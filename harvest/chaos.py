"""``harvest chaos``: drive N plans through real processes while breaking things, then check
that every plan's order was sent at most once, no plan was lost, and every plan ended.

The set-up is harvest as deployed, on this machine:

* a **state Redis** (private, AOF with ``appendfsync always``, so it can be restarted under
  load) holding plans, book, market states and — unless ``broker`` is given — the Celery
  queues; ``broker="amqp://…"`` puts the queues on RabbitMQ instead;
* an **exchange**: the fapi emulator (:mod:`harvest.emulator`) in this process, on its own
  Redis, reached by the workers through python-binance;
* a **scan worker** (``scan`` + ``housekeeping`` queues), an **orders worker** (``orders``),
  and **beat**, as ``celery`` child processes; a supervisor restarts any that exits (as
  systemd's ``Restart=always`` would) and counts it.

N positions are opened at 0 R, then marked up to 2.2 R in waves (each wave makes its
positions actionable: a 25 % partial close, and what follows from it). Each wave brings one
kind of fault (:data:`WAVES`):

``http_429``            a 429 storm on every endpoint (``Retry-After``)
``unknown_503_after_accept``  orders executed, answered 503 "Unknown error…"
``timeout_after_accept``      orders executed, answered after the client's read timeout
``unknown_503``               orders not executed, answered 503 "Unknown error…"
``sigkill_execute``     the orders worker's pool processes SIGKILLed while execute waits on
                        the order request
``sigkill_confirm``     the whole orders worker SIGKILLed while confirm waits on the
                        order look-up, then started again
``redis_restart``       the state Redis (and Redis broker) stopped and started again
``second_beat``         a second beat started beside the first (the lock keeps one active);
                        the first is then SIGKILLed and the second takes over
``duplicate_scans``     five extra scans published at once

It then waits for quiescence (no open plan, empty queues, and no actionable position
without a plan, twice in a row) and reports JSON: plans, terminal, states, orders per plan
(max), duplicate orders, lost plans, time to drain, faults injected by kind, restarts.

Orders are counted from the exchange's own records (the emulator's paper engine): each
record is an order the exchange accepted, keyed by its ``hv-<plan_id>-<step>``
clientOrderId; a plan with more than one is a duplicate.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

import redis

from harvest.loadgen import T0, clean, env_for, mark_at_r, open_positions, runtime, start_worker, symbols
from harvest.plans import CLIENT_ORDER_PREFIX, TERMINAL
from harvest.procs import CeleryProcess, RedisServer, wait_for
from settings import mask_url

#: The wave's fault, in order; waves beyond these run without a fault.
WAVES = ("http_429", "unknown_503_after_accept", "sigkill_execute", "timeout_after_accept", "redis_restart",
         "unknown_503", "sigkill_confirm", "second_beat", "duplicate_scans", "none")
#: Read timeout of the workers' exchange requests (s); ``timeout_after_accept`` answers later.
VENUE_TIMEOUT_S = 2.0
#: Plan TTL of the run (s): plans orphaned by a killed worker end by the sweeper at it.
PLAN_TTL_S = 45.0


def _children(pid: int) -> list[int]:
    """Direct child pids of ``pid`` (Linux /proc)."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class _Procs:
    """The run's Celery processes by role, restarted when one exits (counted)."""

    def __init__(self, env: dict[str, str], ns: str):
        self.env, self.ns = env, ns
        self.procs: dict[str, CeleryProcess] = {}
        self.restarts: Counter[str] = Counter()
        self.expected_down: set[str] = set()

    def start(self, role: str) -> CeleryProcess:
        if role == "scan_worker":
            p = start_worker(self.env, self.ns, "scan,housekeeping", 2)
        elif role == "orders_worker":
            p = start_worker(self.env, self.ns, "orders", 2)
        else:  # beat, beat2
            p = CeleryProcess("beat", self.env).start()
        self.procs[role] = p
        return p

    def supervise(self) -> None:
        for role, p in list(self.procs.items()):
            if role not in self.expected_down and p.proc is not None and p.proc.poll() is not None:
                self.restarts[role] += 1
                self.start(role)

    def kill(self, role: str) -> None:
        """SIGKILL the role's whole process group (main process and pool)."""
        p = self.procs[role]
        self.expected_down.add(role)
        if p.proc is not None and p.proc.poll() is None:
            os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait(10)

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.stop(15)


def run_chaos(plans: int = 200, broker: str | None = None, waves: int = 10, drain_timeout_s: float = 600.0,
              plan_ttl_s: float = PLAN_TTL_S, progress: Callable[[str], None] | None = None) -> dict:
    """Run the harness (see module docstring) with ``plans`` positions, each made actionable
    once; ``broker``: a Celery broker URL (default: the state Redis); ``plan_ttl_s``: the
    plans' TTL (s), which bounds how long a plan orphaned by a kill waits for the sweeper.
    Returns the report:

    ``{"plans", "terminal", "states", "positions", "orders", "orders_per_plan_max",
    "duplicate_orders", "lost_plans", "non_terminal", "unplanned_decisions",
    "time_to_drain_s", "wall_s", "faults_injected", "restarts", "broker", "ok"}``.
    ``ok`` is True when duplicate orders and lost plans are 0 and every plan is terminal.
    Raises RuntimeError when redis-server is missing; AssertionError when set-up times out.
    """
    say = progress or (lambda m: None)
    t_start = time.monotonic()
    state = RedisServer(persistent=True).start()
    exchange = RedisServer().start()
    ns = f"chaos-{uuid.uuid4().hex[:6]}"
    syms = symbols(plans, "C")
    env = env_for(state.url, ns, syms, HARVEST_PLAN_TTL_S=repr(plan_ttl_s), HARVEST_SCAN_INTERVAL_S="1",
                  HARVEST_SWEEP_INTERVAL_S="2", HARVEST_RECONCILE_INTERVAL_S="10", HARVEST_MARKET_REFRESH_S="3600",
                  HARVEST_EXCHANGE_INFO_INTERVAL_S="3600", HARVEST_HEARTBEAT_INTERVAL_S="2",
                  HARVEST_CONFIRM_RETRY_S="0.5", HARVEST_RETRY_BACKOFF_S="0.3", HARVEST_RETRY_BACKOFF_MAX_S="3",
                  HARVEST_MAX_SEND_ATTEMPTS="10", HARVEST_VENUE_TIMEOUT_S=repr(VENUE_TIMEOUT_S))
    if broker:
        env["HARVEST_BROKER_URL"] = broker
    procs = _Procs(env, ns)
    faults: Counter[str] = Counter()
    emu = None
    try:
        # The exchange: paper engine + emulator on their own Redis; positions opened at 0 R.
        from harvest.emulator import Emulator
        from harvest.loadgen import paper_of
        from harvest.paper import MarketClock

        xr = redis.Redis.from_url(exchange.url, decode_responses=True)
        xclock = MarketClock(xr, ns, T0, 0.0)
        xclock.set(T0, 0.0)
        ex_env = dict(env, HARVEST_REDIS_URL=exchange.url)
        xrt = runtime(ex_env)
        clean(xrt)
        open_positions(xrt, syms, 0.0)
        paper = paper_of(xrt)
        import secrets

        key, secret = secrets.token_hex(8), secrets.token_hex(16)
        emu = Emulator(xr, ns, xrt.settings.account, key, secret, clock=xclock, weight_limit_1m=10_000_000).start()
        env.update({"HARVEST_FAPI_URL": emu.url, "HARVEST_API_KEY": key, "HARVEST_API_SECRET": secret,
                    "HARVEST_VENUE_WEIGHT_LIMIT_1M": "1000000"})
        rt = runtime(env)  # harvest's view: state Redis, python-binance to the emulator
        clean(rt)
        rt.market.put_many(xrt.market.get_many(syms))  # the market states open_positions cached
        for role in ("scan_worker", "orders_worker", "beat"):
            procs.start(role)
        for role in ("scan_worker", "orders_worker", "beat"):
            procs.procs[role].wait_ready(120)
        say(f"chaos: {plans} positions, namespace {ns}, broker {mask_url(broker) if broker else 'redis (state)'}; "
            "workers and beat up")

        def safe(fn, default=None):
            try:
                return fn()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                return default

        def open_count() -> int:
            return safe(rt.plans.count_open, 1 << 30)

        def n_plans() -> int:
            return safe(lambda: int(rt.r.zcard(rt.plans.k.plan_index)), 0)

        def wait_orders_fired(kind: str, before: int, timeout: float = 30.0) -> bool:
            try:
                wait_for(lambda: (procs.supervise(), emu.faults.fired().get(kind, 0) > before)[1], timeout, 0.02,
                         what=f"a {kind} fault to fire")
                return True
            except AssertionError:
                return False

        batches = [syms[i::waves] for i in range(waves)]
        for i, batch in enumerate(batches):
            kind = WAVES[i] if i < len(WAVES) else "none"
            fired0 = emu.faults.fired()
            # Arm the exchange-side fault before the wave's positions become actionable.
            k = max(2, len(batch) // 5)
            if kind == "http_429":
                emu.faults.inject("*", "http_429", times=k * 3, retry_after=1.0)
            elif kind in ("unknown_503_after_accept", "unknown_503"):
                emu.faults.inject("POST /fapi/v1/order", kind, times=k)
            elif kind == "timeout_after_accept":
                emu.faults.inject("POST /fapi/v1/order", kind, times=k, latency_s=VENUE_TIMEOUT_S + 1.0)
            elif kind == "sigkill_execute":
                emu.faults.inject("POST /fapi/v1/order", "latency", times=2, latency_s=1.5)
            elif kind == "sigkill_confirm":
                emu.faults.inject("GET /fapi/v1/order", "latency", times=2, latency_s=1.5)
            before = n_plans()
            marks = {s: mark_at_r(xrt, s, 2.2) for s in batch}
            p = xr.pipeline(transaction=False)
            for s, m in marks.items():
                p.set(paper.k_mark(s), repr(m))
            p.execute()
            # Fault that needs plans in flight.
            if kind == "sigkill_execute":
                if wait_orders_fired("latency", fired0.get("latency", 0)):
                    pids = _children(procs.procs["orders_worker"].proc.pid)
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    faults[kind] += len(pids)
            elif kind == "sigkill_confirm":
                if wait_orders_fired("latency", fired0.get("latency", 0)):
                    procs.kill("orders_worker")
                    procs.expected_down.discard("orders_worker")
                    procs.start("orders_worker").wait_ready(120)
                    faults[kind] += 1
            elif kind == "redis_restart":
                wait_for(lambda: n_plans() > before, 60, 0.05, "the wave's first plans")
                down = state.restart()
                faults[kind] += 1
                say(f"chaos: state Redis restarted (down {down:.2f} s)")
            elif kind == "second_beat":
                procs.start("beat2")
                faults[kind] += 1
                wait_for(lambda: "beat: Starting" in procs.procs["beat2"].output(), 60, 0.1, "the second beat to start")
                procs.kill("beat")  # the first dies; the standby takes the lock over
            elif kind == "duplicate_scans":
                from celery import Celery

                from harvest.loadgen import settings_of
                from settings.celery import celery_config

                client = Celery("chaos")
                client.conf.update(celery_config(settings_of(env)))
                for _ in range(5):
                    client.send_task("harvest.scan_positions", queue=f"{ns}.scan")
                faults[kind] += 5
            # The wave is under way when its positions have plans and its exchange fault is used
            # up (so the next wave's fault does not replace it); bounded, faults may delay it.
            try:
                wait_for(lambda: (procs.supervise(), n_plans() >= before + len(batch) and not emu.faults.armed())[1],
                         120, 0.1, f"wave {i + 1}'s plans and faults")
            except AssertionError:
                say(f"chaos: wave {i + 1} ({kind}): plans still arriving or faults armed, moving on")
                emu.faults.clear()
            say(f"chaos: wave {i + 1}/{len(batches)} ({kind}): {n_plans()} plans, {open_count()} open")
        fired = emu.faults.fired()
        for kind in ("http_429", "unknown_503_after_accept", "timeout_after_accept", "unknown_503"):
            faults[kind] += fired.get(kind, 0)
        emu.faults.clear()

        # Quiescence: nothing open, queues empty, no actionable position without a plan —
        # twice in a row, the beat scanning meanwhile.
        t_drain = time.monotonic()
        from harvest.scorecard import queue_depths
        from tasks.evaluate import decide, load_positions

        def quiet() -> bool:
            procs.supervise()
            if open_count() != 0 or any(safe(lambda: queue_depths(rt), {"x": 1}).values()):
                return False
            return not unplanned()

        def unplanned() -> list[str]:
            from harvest.plans import plan_id_for
            from harvest.venue import VenueError

            try:
                rows, now = load_positions(rt)
                ds = decide(rt, rows, now)
            except (VenueError, redis.RedisError):
                return ["?"]
            ids = [plan_id_for(d) for d in ds]
            return [pid for pid, ex in zip(ids, rt.plans.exists_many(ids)) if not ex]

        quiet_once = False
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline:
            if quiet():
                if quiet_once:
                    break
                quiet_once = True
                time.sleep(3.0)  # a second look, a few scans later (not a synchronisation)
            else:
                quiet_once = False
                time.sleep(0.5)
        drained = time.monotonic() - t_drain
        say(f"chaos: drained in {drained:.1f} s")

        all_plans = list(rt.plans.all_plans())
        states = Counter(p.state for p in all_plans)
        per_plan: Counter[str] = Counter()
        for o in paper.orders(harvest_only=True):
            per_plan[o.client_order_id[len(CLIENT_ORDER_PREFIX):len(CLIENT_ORDER_PREFIX) + 16]] += 1
        known = {p.plan_id for p in all_plans}
        non_terminal = [p.plan_id for p in all_plans if p.state not in TERMINAL]
        missing = unplanned()
        report = {
            "plans": len(all_plans),
            "terminal": sum(n for s, n in states.items() if s in TERMINAL),
            "states": dict(sorted(states.items())),
            "positions": plans,
            "orders": sum(per_plan.values()),
            "orders_per_plan_max": max(per_plan.values(), default=0),
            "duplicate_orders": sum(n - 1 for n in per_plan.values() if n > 1),
            "orders_without_plan": sum(n for pid, n in per_plan.items() if pid not in known),
            "non_terminal": len(non_terminal),
            "unplanned_decisions": len(missing),
            "lost_plans": len(non_terminal) + len(missing),
            "time_to_drain_s": round(drained, 2),
            "wall_s": round(time.monotonic() - t_start, 2),
            "faults_injected": dict(sorted(faults.items())),
            "restarts": dict(procs.restarts),
            "broker": "amqp" if broker and broker.startswith("amqp") else "redis",
        }
        report["ok"] = (report["duplicate_orders"] == 0 and report["lost_plans"] == 0
                        and report["orders_without_plan"] == 0 and report["terminal"] == report["plans"])
        return report
    finally:
        procs.stop_all()
        if emu is not None:
            emu.stop()
        if broker and broker.startswith("amqp"):
            _delete_amqp_queues(broker, ns)
        state.stop()
        exchange.stop()


def _delete_amqp_queues(broker: str, ns: str) -> None:
    """Remove the run's queues from RabbitMQ (they are named after its namespace)."""
    try:
        from kombu import Connection

        with Connection(broker, connect_timeout=5) as conn:
            ch = conn.channel()
            for k in ("scan", "orders", "housekeeping"):
                try:
                    ch.queue_delete(f"{ns}.{k}")
                except conn.channel_errors:
                    ch = conn.channel()
    except Exception as e:  # pragma: no cover - best effort clean-up
        print(f"chaos: queues of {ns} not removed from the broker: {e}", file=sys.stderr)


def format_report(rep: dict) -> str:
    """The report as a few human-readable lines."""
    verdict = "OK" if rep["ok"] else "FAILED"
    return "\n".join([
        f"chaos {verdict} on {rep['broker']}: {rep['plans']} plans for {rep['positions']} positions, "
        f"{rep['terminal']} terminal, {rep['non_terminal']} non-terminal",
        f"  states: {json.dumps(rep['states'])}",
        f"  orders: {rep['orders']} (max per plan {rep['orders_per_plan_max']}, duplicates {rep['duplicate_orders']}, "
        f"without a plan {rep['orders_without_plan']})",
        f"  lost plans: {rep['lost_plans']} (unplanned decisions {rep['unplanned_decisions']})",
        f"  drained in {rep['time_to_drain_s']} s after the last wave; {rep['wall_s']} s in all",
        f"  faults: {json.dumps(rep['faults_injected'])}; restarts: {json.dumps(rep['restarts'])}",
    ])
