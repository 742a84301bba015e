"""``harvest chaos``: drive N plans through real processes while breaking things, then check
that every plan's order was sent at most once, no plan was lost, and every plan ended.

The set-up is harvest as deployed, on this machine:

* a **state Redis** (private, AOF with ``appendfsync always``, so it can be restarted under
  load) holding plans, book, market states and — unless ``broker`` is given — the Celery
  queues; ``broker="amqp://…"`` puts the queues on RabbitMQ instead;
* an **exchange**: the fapi emulator (:mod:`harvest.venues.sim.emulator`) in this process, on its own
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
``html_503_after_accept``  orders executed, answered with a load balancer's HTML 503 page
``redis_restart_empty`` the state Redis (and Redis broker) restarted without its data: every
                        plan, lineage, book entry and queued message gone; nothing may be
                        sent before reconcile has read the exchange's harvest orders
``storm_503``           the order endpoint answers 503 "Service Unavailable." for longer than
                        a plan's TTL, then recovers: plans end FAILED or EXPIRED, and their
                        decisions' next attempts (plan lineage) must carry the exits out

With ``sentinel`` the state Redis (and the Redis broker) is a primary, a replica and three
Sentinels (:class:`harvest.ops.procs.SentinelCluster`), reached through ``redis+sentinel://``,
and both restart waves become ``failover``: the primary SIGKILLed while the wave's plans are in
flight, a replica promoted, the killed server back as a replica. Writes the old primary had not
passed on are lost; nothing may be sent twice for it.

With ``accounts`` > 1 the positions are spread over that many accounts (``HARVEST_ACCOUNTS``,
one emulator serving them all on one IP, each with its own API key), a ``harvest streams``
process (supervised like the rest) feeds the scans from the accounts' user data and
mark-price streams, and each wave also brings a stream fault (:data:`STREAM_FAULTS`, in turn):

``stream_drop``         every stream connection dropped without a close frame
``stream_expire``       the listenKeys expire (``listenKeyExpired``; a new stream is opened)
``stream_delay``        the next user-stream events held back 1.5 s
``stream_reorder``      two user-stream events sent out of order
``stream_gap``          the next user-stream events lost without a trace (only a resync closes it)
``streams_sigkill``     the streams process SIGKILLed (restarted by the supervisor)

It then waits for quiescence (no open plan, empty queues, no actionable position without a
plan and no decision waiting for its next attempt, twice in a row) and reports JSON: plans,
terminal, states, orders per plan (max), duplicate orders, lost plans, ``unachieved``, time to
drain, faults injected by kind, restarts.

Orders are counted from the exchange's own records (the emulator's paper engine): every fill
of a MARKET order (a clientOrderId re-used after a fill fills again there, as Binance allows,
and counts again) and every stop placed, keyed by the ``hv-<plan_id>-<step>`` clientOrderId; a
plan with more than one is a duplicate. ``unachieved`` counts what the faults left undone once
the system drained: decisions still retrying, positions whose decision is a close that are not
flat, and positions without a stop that can trigger (none, or one beyond the liquidation
price); an abandoned decision is not unachieved (its reason is on the plan and the scorecard).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any, Callable

import redis
from celery import Celery

from harvest.domain.models import STOP_ACTIONS, PlanState
from harvest.domain.plans import CLIENT_ORDER_PREFIX, TERMINAL, plan_id_for
from harvest.ops.chaos_procs import Procs, delete_amqp_queues, redis_safe
from harvest.ops.loadgen import (
    clean,
    env_for,
    mark_at_r,
    open_positions,
    paper_of,
    runtime,
    settings_of,
    start_emulator,
    symbols,
)
from harvest.ops.procs import RedisServer, SentinelCluster, child_pids, wait_for
from harvest.ops.scorecard import queue_depths
from harvest.venues.base import VenueError
from settings import mask_url
from settings.celery import celery_config

#: The wave's fault, in order; waves beyond these run without a fault.
WAVES = (
    "http_429",
    "unknown_503_after_accept",
    "sigkill_execute",
    "timeout_after_accept",
    "redis_restart",
    "unknown_503",
    "sigkill_confirm",
    "second_beat",
    "duplicate_scans",
    "html_503_after_accept",
    "redis_restart_empty",
    "storm_503",
)
#: The stream faults of a run with several accounts, one per wave in turn (module docstring).
STREAM_FAULTS = ("stream_drop", "stream_expire", "stream_delay", "stream_reorder", "stream_gap", "streams_sigkill")
#: Read timeout of the workers' exchange requests (s); ``timeout_after_accept`` answers later.
VENUE_TIMEOUT_S = 2.0
#: Plan TTL of the run (s): plans orphaned by a killed worker end by the sweeper at it.
PLAN_TTL_S = 45.0


def chaos_env(state_url: str, ns: str, syms: list[str], plan_ttl_s: float, venue_timeout_s: float) -> dict[str, str]:
    """The HARVEST_* environment of a chaos run's workers, beat and streams (one host or several,
    :mod:`harvest.ops.hosts`): fast beat entries, short retry back-offs, ``plan_ttl_s`` (s), a
    durable state (``HARVEST_THROWAWAY_STATE=false``), the exchange's answers awaited
    ``venue_timeout_s`` (s)."""
    return env_for(
        state_url,
        ns,
        syms,
        HARVEST_PLAN_TTL_S=repr(plan_ttl_s),
        HARVEST_SCAN_INTERVAL_S="1",
        HARVEST_SWEEP_INTERVAL_S="2",
        HARVEST_RECONCILE_INTERVAL_S="10",
        HARVEST_MARKET_REFRESH_S="3600",
        HARVEST_EXCHANGE_INFO_INTERVAL_S="3600",
        HARVEST_HEARTBEAT_INTERVAL_S="2",
        HARVEST_CONFIRM_RETRY_S="0.5",
        HARVEST_RETRY_BACKOFF_S="0.3",
        HARVEST_RETRY_BACKOFF_MAX_S="3",
        HARVEST_MAX_SEND_ATTEMPTS="10",
        HARVEST_ATTEMPT_BACKOFF_S="1",
        HARVEST_ATTEMPT_BACKOFF_MAX_S="5",
        HARVEST_VENUE_TIMEOUT_S=repr(venue_timeout_s),
        HARVEST_THROWAWAY_STATE="false",
    )


class _Run:
    """One chaos run: :meth:`start` (Redis, exchange, positions, workers, beat), :meth:`wave`
    per batch of positions, :meth:`drain` until quiescence, :meth:`report`."""

    def __init__(
        self,
        plans: int,
        broker: str | None,
        plan_ttl_s: float,
        say: Callable[[str], None],
        accounts: int = 1,
        sentinel: bool = False,
    ):
        self.n, self.broker, self.say = plans, broker, say
        self.n_accounts = accounts
        self.t_start = time.monotonic()
        self.sentinel = sentinel
        # harvest's state (and the Redis broker): one server, or a primary that fails over
        self.state: RedisServer | SentinelCluster = SentinelCluster() if sentinel else RedisServer(persistent=True)
        self.exchange = RedisServer()  # the emulator's paper engine: not harvest's to restart
        self.ns = f"chaos-{uuid.uuid4().hex[:6]}"
        self.syms = symbols(plans, "C")
        self.env: dict[str, str] = {}
        self.plan_ttl_s = plan_ttl_s
        self.faults: Counter[str] = Counter()
        # the running harvest.venues.sim.emulator.Emulator (harvest.ops.hosts: a stand-in with its faults)
        self.emu: Any = None
        self.procs: Procs | None = None
        self.lost_before = 0  # plans that existed when the state Redis came back empty

    @property
    def running(self) -> Procs:
        """The run's supervised processes (set by :meth:`start`)."""
        assert self.procs is not None, "the chaos run has not started"
        return self.procs

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        self.state.start()
        self.exchange.start()
        self.env = chaos_env(self.state.url, self.ns, self.syms, self.plan_ttl_s, VENUE_TIMEOUT_S)
        # the state Redis keeps AOF (fsync always): durable
        if self.broker:
            self.env["HARVEST_BROKER_URL"] = self.broker
        if self.n_accounts > 1:
            self.env["HARVEST_ACCOUNTS"] = json.dumps([{"name": f"acct-{i}"} for i in range(self.n_accounts)])
        # The exchange: paper engines + emulator on their own Redis; positions opened at 0 R,
        # position i in account i mod n.
        self.xrt = runtime(dict(self.env, HARVEST_REDIS_URL=self.exchange.url))
        self.xr = self.xrt.r
        clean(self.xrt)
        self.owner = {s: self.xrt.accounts[i % len(self.xrt.accounts)] for i, s in enumerate(self.syms)}
        for a in self.xrt.accounts:
            open_positions(self.xrt.for_account(a), [s for s in self.syms if self.owner[s] == a], 0.0)
        self.papers = {a: paper_of(self.xrt.for_account(a)) for a in self.xrt.accounts}
        self.streams = self.n_accounts > 1
        # env gains the emulator's URL and every account's fake keys
        self.emu = start_emulator(self.xrt, self.env, streams=self.streams)
        self.rt = runtime(self.env)  # harvest's view: state Redis, python-binance to the emulator
        clean(self.rt)
        self.rt.market.put_many(self.xrt.market.get_many(self.syms))  # the states open_positions cached
        self.procs = Procs(self.env, self.ns)
        roles = ("scan_worker", "orders_worker", "beat") + (("streams",) if self.streams else ())
        for role in roles:
            self.procs.start(role)
        for role in roles[:3]:
            self.procs.procs[role].wait_ready(120)
        self.say(
            f"chaos: {self.n} positions in {len(self.rt.accounts)} account(s), namespace {self.ns}, "
            f"broker {mask_url(self.broker) if self.broker else 'redis (state)'}"
            + (" through Sentinel" if self.sentinel else "")
            + "; workers and beat up"
            + ("; harvest streams up" if self.streams else "")
        )

    # ------------------------------------------------------------------ waves

    def n_plans(self) -> int:
        return redis_safe(lambda: int(self.rt.r.zcard(self.rt.plans.k.plan_index)), 0)

    def open_count(self) -> int:
        return redis_safe(self.rt.plans.count_open, 1 << 30)

    def _fired(self, kind: str, before: int, timeout: float = 30.0) -> bool:
        """Wait (bounded) until an exchange fault of ``kind`` fired again; whether it did."""

        def fired() -> bool:
            self.running.supervise()
            return bool(self.emu.faults.fired().get(kind, 0) > before)

        try:
            wait_for(
                fired,
                timeout,
                0.02,
                what=f"a {kind} fault to fire",
            )
            return True
        except AssertionError:
            return False

    def _arm(self, kind: str, k: int) -> None:
        """Arm the exchange-side fault of a wave before its positions become actionable."""
        f = self.emu.faults
        if kind == "http_429":
            f.inject("*", "http_429", times=k * 3, retry_after=1.0)
        elif kind in ("unknown_503_after_accept", "unknown_503", "html_503_after_accept"):
            f.inject("POST /fapi/v1/order", kind, times=k)
        elif kind == "timeout_after_accept":
            f.inject("POST /fapi/v1/order", kind, times=k, latency_s=VENUE_TIMEOUT_S + 1.0)
        elif kind == "sigkill_execute":  # execute waits in the order request while its process is killed
            f.inject("POST /fapi/v1/order", "latency", times=2, latency_s=1.5)
        elif kind == "sigkill_confirm":  # confirm waits in the order look-up while its worker is killed
            f.inject("GET /fapi/v1/order", "latency", times=2, latency_s=1.5)
        elif kind == "storm_503":  # every order refused until the storm is over (_strike ends it)
            f.inject("POST /fapi/v1/order", "unavailable_503", times=10**9)

    def _stream_fault(self, i: int) -> None:
        """Wave ``i``'s stream fault (runs with streams: :data:`STREAM_FAULTS` in turn)."""
        kind = STREAM_FAULTS[i % len(STREAM_FAULTS)]
        if kind == "streams_sigkill":
            self.running.procs["streams"].kill()  # the supervisor starts it again (a restart counted)
        else:
            name = kind.removeprefix("stream_")
            target = "both" if name == "drop" else "user"
            for t in ("user", "market") if target == "both" else (target,):
                self.emu.streams.inject(name, latency_s=1.5 if name == "delay" else 0.0, target=t)
        self.faults[kind] += 1

    def _strike(self, kind: str, latency_fired: int, before: int) -> None:
        """The harness-side fault of a wave, once its plans are in flight."""
        procs = self.running
        if kind == "sigkill_execute" and self._fired("latency", latency_fired):
            worker = procs.procs["orders_worker"].proc
            assert worker is not None, "the orders worker was started"
            pids = child_pids(worker.pid)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            self.faults[kind] += len(pids)
        elif kind == "sigkill_confirm" and self._fired("latency", latency_fired):
            procs.kill("orders_worker")
            procs.expected_down.discard("orders_worker")
            procs.start("orders_worker").wait_ready(120)
            self.faults[kind] += 1
        elif kind == "failover":
            wait_for(lambda: self.n_plans() > before, 60, 0.05, "the wave's first plans")
            assert isinstance(self.state, SentinelCluster)
            took = self.state.fail_over()
            self.faults[kind] += 1
            self.say(f"chaos: state Redis primary SIGKILLed, a replica promoted in {took:.2f} s")
        elif kind in ("redis_restart", "redis_restart_empty"):
            assert isinstance(self.state, RedisServer)
            wait_for(lambda: self.n_plans() > before, 60, 0.05, "the wave's first plans")
            empty = kind == "redis_restart_empty"
            if empty:
                self.lost_before = self.n_plans()
            down = self.state.restart(empty=empty)
            if empty:  # what the market refresh would write again within its interval (hourly in this run)
                self.rt.market.put_many(self.xrt.market.get_many(self.syms))
            self.faults[kind] += 1
            self.say(f"chaos: state Redis restarted{' EMPTY' if empty else ''} (down {down:.2f} s)")
        elif kind == "second_beat":
            procs.start("beat2")
            self.faults[kind] += 1
            wait_for(lambda: "beat: Starting" in procs.procs["beat2"].output(), 60, 0.1, "the second beat to start")
            procs.kill("beat")  # the first dies; the standby takes the lock over
        elif kind == "storm_503":
            # The storm outlasts a plan's TTL: the wave's first plans end FAILED or EXPIRED.
            wait_for(lambda: self.n_plans() > before, 60, 0.05, "the wave's first plans")
            end = time.monotonic() + self.plan_ttl_s + 5.0
            while time.monotonic() < end:  # the fault's duration, not a synchronisation
                procs.supervise()
                time.sleep(0.2)
            self.emu.faults.clear()
            self.faults[kind] += 1
            self.say(f"chaos: 503 storm over after {self.plan_ttl_s + 5.0:.0f} s")
        elif kind == "duplicate_scans":
            client = Celery("chaos", set_as_current=False)
            client.conf.update(celery_config(settings_of(self.env)))
            for _ in range(5):
                client.send_task("harvest.scan_positions", queue=f"{self.ns}.scan")
            self.faults[kind] += 5

    def wave(self, i: int, n_waves: int, batch: list[str]) -> None:
        """Make ``batch`` actionable (2.2 R) under wave ``i``'s fault; return once its plans
        exist and its exchange fault is used up (bounded: a fault may hold plans back)."""
        kind = WAVES[i] if i < len(WAVES) else "none"
        if self.sentinel and kind in ("redis_restart", "redis_restart_empty"):
            kind = "failover"
        latency_fired = self.emu.faults.fired().get("latency", 0)
        self._arm(kind, max(2, len(batch) // 5))
        before = self.n_plans()
        if self.streams:
            self._stream_fault(i)
        p = self.xr.pipeline(transaction=False)
        for s in batch:
            xa = self.xrt.for_account(self.owner[s])
            p.set(self.papers[self.owner[s]].k_mark(s), repr(mark_at_r(xa, s, 2.2)))
        p.execute()
        self._strike(kind, latency_fired, before)
        if kind == "redis_restart_empty":
            before = 0  # every plan went with the state; the wave's plans come after recovery

        def arrived() -> bool:
            self.running.supervise()
            return self.n_plans() >= before + len(batch) and not self.emu.faults.armed()

        try:  # the next wave's fault must not replace this one's before it fired
            wait_for(
                arrived,
                120,
                0.1,
                f"wave {i + 1}'s plans and faults",
            )
        except AssertionError:
            self.say(f"chaos: wave {i + 1} ({kind}): plans still arriving or faults armed, moving on")
            self.emu.faults.clear()
        self.say(f"chaos: wave {i + 1}/{n_waves} ({kind}): {self.n_plans()} plans, {self.open_count()} open")

    # ------------------------------------------------------------------ quiescence and report

    def outstanding(self) -> tuple[list[str], dict[str, int]]:
        """What the positions call for now and is not done: plan_ids of decisions due to start
        that have no plan (a lost plan), and the unachieved counts — ``retrying`` (a decision
        waiting for its next attempt), ``close_not_done`` (a position still open whose decision
        is a close), ``unprotected`` (no stop that can trigger). ``(["?"], {"?": 1})`` while the
        venue or Redis does not answer."""
        from harvest.domain.book import unprotected
        from harvest.domain.models import Action
        from harvest.services.decide import decide_and_plan, load_positions

        rows, planned = [], []
        try:
            for a in self.rt.accounts:
                ra = self.rt.for_account(a)
                a_rows, now = load_positions(ra, from_streams=False)
                rows += a_rows
                planned += decide_and_plan(ra, a_rows, now)
            ids = [plan_id_for(d) for d, nx in planned if nx.starts]
            exists = self.rt.plans.exists_many(ids)
        except (VenueError, redis.RedisError):
            return ["?"], {"?": 1}
        left = {
            "retrying": sum(1 for _, nx in planned if nx.kind == "waiting"),
            "close_not_done": sum(
                1 for d, nx in planned if d.action is Action.FULL_CLOSE_PROPOSED and nx.kind != "abandoned"
            ),
            "unprotected": sum(1 for vp, _, _ in rows if unprotected(vp)),
        }
        return [pid for pid, ex in zip(ids, exists, strict=True) if not ex], left

    def unplanned(self) -> list[str]:
        """plan_ids of decisions the positions call for now that have no plan (a lost plan)."""
        return self.outstanding()[0]

    def _quiet(self) -> bool:
        self.running.supervise()
        if self.open_count() != 0 or any(redis_safe(lambda: queue_depths(self.rt), {"?": 1}).values()):
            return False
        missing, left = self.outstanding()
        return not missing and not left.get("retrying") and not left.get("?")

    def drain(self, timeout_s: float) -> float:
        """Wait until nothing is open, the queues are empty and no actionable position lacks a
        plan — twice in a row, beat scanning in between; seconds it took (bounded)."""
        t0 = time.monotonic()
        quiet_once = False
        while time.monotonic() - t0 < timeout_s:
            if self._quiet():
                if quiet_once:
                    break
                quiet_once = True
                time.sleep(3.0)  # a second look, a few scans later (not a synchronisation)
            else:
                quiet_once = False
                time.sleep(0.5)
        return time.monotonic() - t0

    def report(self, drained_s: float) -> dict:
        fired = self.emu.faults.fired()
        for kind in (
            "http_429",
            "unknown_503_after_accept",
            "timeout_after_accept",
            "unknown_503",
            "html_503_after_accept",
        ):
            self.faults[kind] += fired.get(kind, 0)
        all_plans = list(self.rt.plans.all_plans())
        states = Counter(p.state for p in all_plans)
        why = Counter(
            f"{p.state} {p.reason}" + (f" {p.error_code}" if p.error_code else "") + f" step {p.step}"
            for p in all_plans
            if p.state != PlanState.FILLED
        )
        per_plan: Counter[str] = Counter()  # the exchange's own records, by plan_id: fills and stops placed
        fills = [
            t["clientOrderId"]
            for paper in self.papers.values()
            for t in paper.trades()
            if t["clientOrderId"].startswith(CLIENT_ORDER_PREFIX)
        ]
        cids = fills + [
            o.client_order_id for paper in self.papers.values() for o in paper.orders(harvest_only=True) if o.algo
        ]
        for cid in cids:
            per_plan[cid[len(CLIENT_ORDER_PREFIX) : len(CLIENT_ORDER_PREFIX) + 16]] += 1
        # Per decision (lineage): plans with a MARKET fill on the exchange beyond the first,
        # less those a partial fill legitimately asked for (its remainder is the next attempt).
        filled_plans = {cid[len(CLIENT_ORDER_PREFIX) : len(CLIENT_ORDER_PREFIX) + 16] for cid in fills}
        by_lineage: dict[str, list] = {}
        for p in all_plans:
            if p.lineage:
                by_lineage.setdefault(p.lineage, []).append(p)
        lineage_dups = sum(
            max(
                0,
                sum(1 for p in ps if p.plan_id in filled_plans and p.action not in STOP_ACTIONS)
                - 1
                - sum(1 for p in ps if p.state == PlanState.PARTIALLY_FILLED),
            )
            for ps in by_lineage.values()
        )
        recovered = set(self.rt.r.smembers(self.rt.plans.k.recovered_plans))
        known = {p.plan_id for p in all_plans} | recovered  # a plan lost with the state, found on the exchange
        non_terminal = [p.plan_id for p in all_plans if p.state not in TERMINAL]
        missing, left = self.outstanding()
        lineages = Counter(p.lineage for p in all_plans if p.lineage)
        rep = {
            "plans": len(all_plans),
            "terminal": sum(n for s, n in states.items() if s in TERMINAL),
            "states": dict(sorted(states.items())),
            "ended_without_effect": dict(why.most_common()),
            "positions": self.n,
            "orders": sum(per_plan.values()),
            "orders_per_plan_max": max(per_plan.values(), default=0),
            "duplicate_orders": sum(n - 1 for n in per_plan.values() if n > 1),
            "duplicate_fills_per_decision": lineage_dups,
            "orders_without_plan": sum(n for pid, n in per_plan.items() if pid not in known),
            "non_terminal": len(non_terminal),
            "unplanned_decisions": len(missing),
            "lost_plans": len(non_terminal) + len(missing),
            "unachieved": sum(left.values()),
            "unachieved_by_kind": left,
            "plans_lost_with_state": self.lost_before,
            "plans_recovered_from_exchange": len(recovered),
            "decisions": len(lineages),
            "decisions_retried": sum(1 for n in lineages.values() if n > 1),
            "time_to_drain_s": round(drained_s, 2),
            "wall_s": round(time.monotonic() - self.t_start, 2),
            "faults_injected": dict(sorted(self.faults.items())),
            "restarts": dict(self.running.restarts),
            "broker": "amqp"
            if self.broker and self.broker.startswith("amqp")
            else ("redis+sentinel" if self.sentinel else "redis"),
            "failovers": self.state.failovers if isinstance(self.state, SentinelCluster) else 0,
            "accounts": len(self.rt.accounts),
            "positions_from_streams": int(redis_safe(lambda: self.rt.counters.read().get("positions:streams", 0), 0)),
        }
        rep["ok"] = (
            rep["duplicate_orders"] == 0
            and rep["duplicate_fills_per_decision"] == 0
            and rep["lost_plans"] == 0
            and rep["orders_without_plan"] == 0
            and rep["terminal"] == rep["plans"]
            and rep["unachieved"] == 0
        )
        return rep

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.stop_all()
        if self.emu is not None:
            self.emu.stop()
        if self.broker and self.broker.startswith("amqp"):
            delete_amqp_queues(self.broker, self.ns)
        self.state.stop()
        self.exchange.stop()


def run_chaos(
    plans: int = 200,
    broker: str | None = None,
    waves: int = len(WAVES),
    drain_timeout_s: float = 600.0,
    plan_ttl_s: float = PLAN_TTL_S,
    progress: Callable[[str], None] | None = None,
    accounts: int = 1,
    sentinel: bool = False,
) -> dict:
    """Run the harness (see module docstring) with ``plans`` positions, each made actionable
    once, in ``waves`` waves; ``broker``: a Celery broker URL (default: the state Redis);
    ``plan_ttl_s``: the plans' TTL (s), which bounds how long a plan orphaned by a kill waits
    for the sweeper; ``progress``: called with one line per step; ``accounts``: the positions
    spread over that many accounts, with ``harvest streams`` and stream faults when > 1;
    ``sentinel``: the state Redis fails over instead of restarting (module docstring).
    Returns the report:

    ``{"plans", "terminal", "states", "ended_without_effect" ("<state> <reason> [code] step n" →
    plans), "positions", "duplicate_fills_per_decision" (a decision's plans with a fill beyond
    the first and the remainders partial fills asked for), "orders", "orders_per_plan_max",
    "duplicate_orders", "orders_without_plan", "non_terminal", "unplanned_decisions",
    "lost_plans", "unachieved", "unachieved_by_kind", "decisions", "decisions_retried",
    "time_to_drain_s", "wall_s", "faults_injected", "restarts", "broker", "failovers", "accounts",
    "positions_from_streams", "ok"}`` (counts;
    seconds). ``ok``: no duplicate order, no order without a plan, no lost plan, every plan
    terminal, and nothing unachieved. Raises RuntimeError when redis-server is missing; AssertionError
    when set-up times out.
    """
    run = _Run(plans, broker, plan_ttl_s, progress or (lambda m: None), accounts, sentinel)
    try:
        run.start()
        batches = [run.syms[i::waves] for i in range(waves)]
        for i, batch in enumerate(batches):
            run.wave(i, len(batches), batch)
        run.emu.faults.clear()
        drained = run.drain(drain_timeout_s)
        run.say(f"chaos: drained in {drained:.1f} s")
        return run.report(drained)
    finally:
        run.stop()


def format_report(rep: dict) -> str:
    """The report as a few human-readable lines."""
    verdict = "OK" if rep["ok"] else "FAILED"
    return "\n".join(
        [
            f"chaos {verdict} on {rep['broker']}: {rep['plans']} plans for {rep['positions']} positions "
            f"in {rep.get('accounts', 1)} account(s), "
            f"{rep['terminal']} terminal, {rep['non_terminal']} non-terminal",
            f"  states: {json.dumps(rep['states'])}; without effect: {json.dumps(rep['ended_without_effect'])}",
            f"  orders: {rep['orders']} (max per plan {rep['orders_per_plan_max']}, "
            f"duplicates {rep['duplicate_orders']}, "
            f"duplicate fills per decision {rep['duplicate_fills_per_decision']}, "
            f"without a plan {rep['orders_without_plan']})",
            f"  lost plans: {rep['lost_plans']} (unplanned decisions {rep['unplanned_decisions']}); "
            f"unachieved: {rep['unachieved']} {json.dumps(rep['unachieved_by_kind'])}",
            f"  decisions: {rep['decisions']} ({rep['decisions_retried']} needed more than one attempt)",
            f"  drained in {rep['time_to_drain_s']} s after the last wave; {rep['wall_s']} s in all",
            f"  faults: {json.dumps(rep['faults_injected'])}; restarts: {json.dumps(rep['restarts'])}",
        ]
    )
