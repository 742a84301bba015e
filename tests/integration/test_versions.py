"""Versioned records, upgrades in place (issue 33, item 3).

* Real workers of the current code run beside a simulated newer version that writes plans
  (``v=2``, a state this version does not know), a ledger entry (``v=2``) and messages
  (header ``harvest_v=2``): the workers send no order for any of them — a newer message is
  recorded on the rejected stream with its payload, a newer plan is left for a newer worker —
  the current plans still end FILLED, and the console, ``harvest plans``, the scorecard and
  ``/metrics`` show the newer records as such and keep answering.
* A rolling restart of the workers under load (each worker in turn stopped by SIGTERM, a warm
  shutdown, and replaced while plans are in flight) loses and duplicates nothing.

Each part fails on the code before issue 33: the old worker executes the ``v=2`` message's
order (it reads no version), and an unknown state made the guard raise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from harvest.domain.models import Action, PlanState
from harvest.domain.plans import TERMINAL, lineage_id, make_plan_id
from harvest.ops.loadgen import celery_app, fresh_namespace, mark_at_r, paper_of, start_worker
from harvest.ops.metrics import HarvestCollector
from harvest.ops.procs import ROOT, CeleryProcess, wait_for
from harvest.ops.scorecard import build_scorecard
from harvest.store.records import MESSAGE_HEADER, SCHEMA
from tests.integration.test_desk import console, get

NEWER = SCHEMA["message"] + 1


def _plan(rt, sym: str, key: str, state: str | None = None, order_qty: str | None = None) -> str:
    """A FULL_CLOSE plan on ``sym`` made by this version's PlanStore (PROPOSED; APPROVED with
    the position's lock and ``order_qty`` when ``state`` says so); its plan_id."""
    now, acct = time.time(), rt.settings.account
    epoch = (rt.book.get_many(acct, [sym])[0] or {}).get("epoch") or "E1"
    pid = make_plan_id(acct, sym, epoch, Action.FULL_CLOSE_PROPOSED, key)
    plan = {
        "plan_id": pid,
        "lineage": lineage_id(acct, sym, epoch, Action.FULL_CLOSE_PROPOSED, key),
        "attempt": 0,
        "account": acct,
        "symbol": sym,
        "epoch": epoch,
        "side": "LONG",
        "action": Action.FULL_CLOSE_PROPOSED,
        "tier": 0,
        "close_fraction": 1.0,
        "created_at": now,
        "expires_at": now + 60,
        "client_order_id": f"hv-{pid}-0",
        "decision": {},
    }
    assert rt.plans.create(plan, {}) is None
    if state == PlanState.APPROVED:
        ok, _ = rt.plans.transition(
            pid, PlanState.APPROVED, "guard_passed", fields={"order_qty": order_qty}, lock_ttl_s=60
        )
        assert ok
    return pid


def _harvest_orders(rt, syms) -> list:
    return [o for o in paper_of(rt).orders(harvest_only=True) if o.symbol in syms]


def _settled(rt, syms: list[str]) -> list | None:
    """Every plan on ``syms`` when each symbol's partial close (tier 1) is FILLED and every plan
    on them is terminal; else None."""
    plans = [p for p in rt.plans.all_plans() if p.symbol in syms]
    filled = {p.symbol for p in plans if p.state == PlanState.FILLED and p.action == Action.PARTIAL_25}
    return plans if filled == set(syms) and all(p.state in TERMINAL for p in plans) else None


def _duplicates(orders: list) -> int:
    """Orders beyond the first for any plan (a clientOrderId ``hv-<plan_id>-<step>`` names it)."""
    by_plan: dict[str, int] = {}
    for o in orders:
        by_plan[o.client_order_id[3:19]] = by_plan.get(o.client_order_id[3:19], 0) + 1
    return sum(n - 1 for n in by_plan.values())


def test_current_workers_beside_a_newer_writer(redis_url):
    cur = [f"V{i:05d}USDT" for i in range(4)]
    new = [f"W{i:05d}USDT" for i in range(5)]
    ns, env, rt = fresh_namespace(redis_url, "ver", cur + new, r_multiple=0.0)
    env.update(HARVEST_MARKET_REFRESH_S="3600")
    app = celery_app(env)
    w = start_worker(env, ns, "scan,orders,housekeeping", 2)
    try:
        w.wait_ready()
        qty = paper_of(rt).position(new[2]).qty
        close_qty = str(paper_of(rt).filters(new[2]).round_qty(qty))
        # -- the newer version's records --------------------------------------------------------
        newer_v = _plan(rt, new[0], "newer-v")  # PROPOSED, written with v=2
        rt.r.hset(rt.plans.k.plan(newer_v), "v", NEWER)
        paused = _plan(rt, new[1], "paused")  # a state this version does not know
        rt.r.hset(rt.plans.k.plan(paused), "state", "PAUSED")
        approved_v2 = _plan(rt, new[2], "approved-v2", PlanState.APPROVED, close_qty)  # APPROVED, v=2
        rt.r.hset(rt.plans.k.plan(approved_v2), "v", NEWER)
        approved = _plan(rt, new[3], "approved", PlanState.APPROVED, close_qty)  # this version's own
        rt.r.xadd(rt.plans.k.results, {"v": NEWER, "plan_id": paused, "from": "PROPOSED", "to": "PAUSED", "ts": "x"})
        # -- messages: the newer version's (header v=2), and this version's naming newer plans ---
        orders_q, scan_q = f"{ns}.orders", f"{ns}.scan"
        newer = {MESSAGE_HEADER: NEWER}
        app.send_task("harvest.execute", args=[{"plan_id": approved}], queue=orders_q, headers=newer, expires=30)
        rt.venue.set_mark(new[4], mark_at_r(rt, new[4], 2.2))  # actionable: a v=2 evaluate must not act
        app.send_task("harvest.evaluate", args=[{"symbol": new[4]}], queue=scan_q, headers=newer, expires=30)
        for name, pid in (
            ("harvest.guard", newer_v),
            ("harvest.guard", paused),
            ("harvest.confirm", paused),
            ("harvest.execute", approved_v2),
        ):
            app.send_task(name, args=[{"plan_id": pid}], queue=orders_q, expires=6)
        wait_for(lambda: rt.r.xlen(f"{ns}:stream:rejected") >= 2, 30, what="the two newer messages recorded")
        counters = wait_for(
            lambda: (c := rt.plans.counters()).get("newer_plan:execute") and c.get("newer_plan:guard", 0) >= 2 and c,
            30,
            what="the newer plans left alone",
        )
        assert counters["newer_message:execute"] == 1 and counters["newer_message:evaluate"] == 1
        rejected = {f["stage"]: f for _, f in rt.r.xrange(f"{ns}:stream:rejected")}
        assert approved in rejected["execute"]["payload"] and "newer version (v=2)" in rejected["execute"]["error"]
        assert new[4] in rejected["evaluate"]["payload"]
        # the newer messages' plans wait out their expiry, re-offered for a newer worker, never run
        wait_for(
            lambda: rt.plans.counters().get("stale:expired:harvest.guard", 0) >= 2,
            40,
            what="the re-offered messages to expire unexecuted",
        )
        assert _harvest_orders(rt, new) == []  # no order for any record of the newer version
        raw = {pid: rt.r.hmget(rt.plans.k.plan(pid), "state", "v") for pid in (newer_v, paused, approved_v2, approved)}
        assert raw == {
            newer_v: ["PROPOSED", str(NEWER)],
            paused: ["PAUSED", "1"],
            approved_v2: ["APPROVED", str(NEWER)],
            approved: ["APPROVED", "1"],
        }
        assert not any(p.symbol == new[4] for p in rt.plans.all_plans())  # the v=2 evaluate made no plan
        rt.venue.set_mark(new[4], mark_at_r(rt, new[4], 0.0))
        # -- this version's plans still complete ---------------------------------------------------
        for s in cur:
            rt.venue.set_mark(s, mark_at_r(rt, s, 2.2))
        app.send_task("harvest.scan_positions", queue=scan_q, expires=30)
        done = wait_for(lambda: _settled(rt, cur), 60, what="the current plans to end")
        assert _duplicates(_harvest_orders(rt, cur)) == 0 and _harvest_orders(rt, new) == []
        # -- the views show the newer records as such and go on -----------------------------------
        keys = {rt.plans.k.plan(p) for p in (newer_v, paused, approved_v2)}
        with console(rt, password=None) as url:
            code, page, _ = get(url + "/")
        assert code == 200 and all(k in page for k in keys) and "written by a newer version (v=2)" in page
        assert f"{rt.plans.k.results}#" in page  # the v=2 ledger entry, listed
        out = subprocess.run(
            [sys.executable, "-m", "harvest.ops.cli", "plans"],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert all(f"UNREADABLE  {k}" in out.stdout for k in keys) and "3 unreadable" in out.stdout
        assert all(p.plan_id in out.stdout for p in done) and approved in out.stdout
        card = build_scorecard(rt)
        newer_keys = {u["key"] for u in card["unreadable_records"] if u["newer"]}
        assert keys <= newer_keys
        reg = CollectorRegistry()
        reg.register(HarvestCollector(rt, lambda: {}))
        text = generate_latest(reg).decode()
        assert all(f'harvest_unreadable_records{{key="{k}"}} 1.0' in text for k in keys)
        assert "harvest_newer_version_records 3.0" in text
        assert w.proc.poll() is None
    finally:
        w.stop()
    assert "Traceback" not in w.output() and "Unrecoverable error" not in w.output()


def _warm_restart(w: CeleryProcess, env: dict, ns: str) -> CeleryProcess:
    """SIGTERM to the worker's main process only (Celery's warm shutdown: running tasks end,
    messages it holds unacknowledged go back to the queue), then a new worker in its place."""
    os.kill(w.proc.pid, signal.SIGTERM)
    w.proc.wait(60)
    assert w.stop() == 0, w.output()[-3000:]
    nw = start_worker(env, ns, "scan,orders,housekeeping", 2)
    nw.wait_ready()
    return nw


def test_rolling_restart_under_load_loses_and_duplicates_nothing(redis_url):
    syms = [f"R{i:05d}USDT" for i in range(150)]
    ns, env, rt = fresh_namespace(redis_url, "roll", syms, r_multiple=0.0)
    env.update(
        HARVEST_SCAN_INTERVAL_S="0.5",
        HARVEST_HEARTBEAT_INTERVAL_S="0.5",
        HARVEST_SWEEP_INTERVAL_S="1",
        HARVEST_MARKET_REFRESH_S="3600",
        HARVEST_PLAN_TTL_S="30",
    )
    qty0 = {s: paper_of(rt).position(s).qty for s in syms}
    workers = [start_worker(env, ns, "scan,orders,housekeeping", 2) for _ in range(2)]
    beat = CeleryProcess("beat", env).start()
    waves = [syms[i::3] for i in range(3)]
    t0 = time.monotonic()
    in_flight: list[int] = []  # plans not yet terminal and messages queued as each worker was stopped
    try:
        for p in (*workers, beat):
            p.wait_ready()
        for i, wave in enumerate(waves):  # a wave becomes actionable; a worker restarts under it
            for s in wave:
                rt.venue.set_mark(s, mark_at_r(rt, s, 2.2))
            wait_for(lambda wave=wave: any(p.symbol in wave for p in rt.plans.all_plans()), 30, what="the wave's plans")
            in_flight.append(rt.plans.count_open() + sum(rt.r.llen(f"{ns}.{q}") for q in ("scan", "orders")))
            workers[i % 2] = _warm_restart(workers[i % 2], env, ns)  # while the wave's plans are in flight
        plans = wait_for(lambda: _settled(rt, syms), 120, what="every partial close FILLED, every plan terminal")
        orders = paper_of(rt).orders(harvest_only=True)
        duplicates = _duplicates(orders)
        partials = [p for p in plans if p.action == Action.PARTIAL_25 and p.state == PlanState.FILLED]
        assert duplicates == 0
        assert sorted(p.symbol for p in partials) == sorted(syms)  # each exactly once: none lost, none twice
        for p in partials:  # the quarter left each position once
            assert paper_of(rt).position(p.symbol).qty == pytest.approx(qty0[p.symbol] - float(p.order_qty))
        assert sum(in_flight) > 0  # the restarts met plans in flight, not an idle pipeline
        report = {"plans": len(plans), "orders": len(orders), "duplicates": duplicates, "lost": 0}
        print(json.dumps({**report, "in_flight": in_flight, "seconds": round(time.monotonic() - t0, 1)}))
    finally:
        beat.stop()
        for w in workers:
            w.stop()


def test_a_stream_cache_of_a_newer_version_is_not_read(rt):
    """``harvest streams`` of a newer version wrote the cache (health ``v=2``) and an event: this
    version's readers fall back to REST (None) and leave the event out, rather than misread them;
    the same cache at this version's ``v`` (or none, as written before versions) is read."""
    from harvest.domain.models import VenuePosition
    from harvest.store.streams import StreamCache

    cache = StreamCache(rt.r, rt.settings.namespace, rt.settings.account)
    vp = VenuePosition(symbol="BTCUSDT", side="LONG", qty=1.0, entry_price=100.0, mark_price=100.0, leverage=10.0)
    cache.resync([vp], started_ms=1)
    assert rt.r.hget(cache.k_health, "v") == str(SCHEMA["stream"])
    assert set(cache.positions() or {}) == {"BTCUSDT"}
    rt.r.hdel(cache.k_health, "v")  # as written before versions: read as before
    assert set(cache.positions() or {}) == {"BTCUSDT"}
    rt.r.hset(cache.k_health, "v", SCHEMA["stream"] + 1)
    assert cache.positions() is None
    rt.r.hset(f"{rt.settings.namespace}:heartbeat", "streams", repr(time.time()))
    assert cache.view(60, 60) is None
    rt.r.xadd(cache.k_events, {"v": SCHEMA["stream"] + 1, "type": "TradeUpdate", "data": "{a newer layout"})
    assert cache.events() == []


def test_no_next_attempt_over_a_plan_of_a_newer_version(rt):
    """The lineage's latest plan is in a state this version does not know, or was written by a
    newer version: this version's create refuses the decision's next attempt (that version
    goes on with the lineage, and may yet act on its plan); a plan of this version that ended
    without effect lets it through, as before."""
    sym = "BTCUSDT"
    first = _plan(rt, sym, "lineage")
    plan = {k: v for k, v in rt.r.hgetall(rt.plans.k.plan(first)).items() if k in ("lineage", "epoch", "account")}
    now, acct = time.time(), rt.settings.account
    nxt = make_plan_id(acct, sym, plan["epoch"], Action.FULL_CLOSE_PROPOSED, "lineage#1")
    second = {
        **plan,
        "plan_id": nxt,
        "attempt": 1,
        "symbol": sym,
        "side": "LONG",
        "action": Action.FULL_CLOSE_PROPOSED,
        "created_at": now,
        "expires_at": now + 60,
        "client_order_id": f"hv-{nxt}-0",
        "decision": {},
    }
    rt.r.hset(rt.plans.k.plan(first), "state", "PAUSED")
    assert rt.plans.create(second, {}) == "stale_attempt"
    rt.r.hset(rt.plans.k.plan(first), mapping={"state": "EXPIRED", "v": NEWER})
    assert rt.plans.create(second, {}) == "stale_attempt"
    rt.r.hset(rt.plans.k.plan(first), "v", SCHEMA["plan"])
    assert rt.plans.create(second, {}) is None
    assert rt.plans.get(nxt).attempt == 1
