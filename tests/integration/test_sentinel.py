"""Redis that fails over (issue 23.5): a real primary, a replica and three Sentinels, with the
state store, the Celery broker (kombu's ``sentinel://``) and beat (celery-redbeat) all reached
through ``redis+sentinel://``.

* A failover under a running pipeline: the worker and beat follow the new primary, the state
  marker of the old server is not trusted (recovery reads the exchange before anything more
  is sent), and each decision's order is on the exchange once.
* A replica that does not acknowledge a plan's SUBMITTED: nothing is sent (a failover could
  lose the record of the send); once it answers again, the decision's next attempt fills.
"""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest

from harvest.domain.models import Action
from harvest.domain.plans import TERMINAL
from harvest.ops.loadgen import celery_app, env_for, mark_at_r, open_positions, runtime, start_worker
from harvest.ops.procs import CeleryProcess, SentinelCluster, wait_for

PASSWORD = "pw-" + uuid.uuid4().hex[:12]
SYM = "S00000USDT"


@pytest.fixture(scope="module")
def cluster():
    c = SentinelCluster(password=PASSWORD).start()
    yield c
    c.stop()


def _setup(cluster, **extra):
    ns = f"snt-{uuid.uuid4().hex[:6]}"
    env = env_for(
        cluster.url,
        ns,
        [SYM],
        HARVEST_SCAN_INTERVAL_S="0.5",
        HARVEST_RECONCILE_INTERVAL_S="2",
        HARVEST_THROWAWAY_STATE="false",  # the servers keep AOF: durable
        HARVEST_VENUE_TIMEOUT_S="1",
        HARVEST_ATTEMPT_BACKOFF_S="0.5",
        HARVEST_ATTEMPT_BACKOFF_MAX_S="1",
        HARVEST_MARKET_REFRESH_S="3600",  # the market states the test wrote stay: no kill
        **extra,
    )
    rt = runtime(env)
    open_positions(rt, [SYM], 2.2)  # clean namespace, state marked whole on this server
    return ns, env, rt


def _hv_fills(rt) -> list[str]:
    return [t["clientOrderId"] for t in rt.venue.trades() if t["clientOrderId"].startswith("hv-")]


def _filled(rt, action: Action):
    """The FILLED plan of ``action`` on the symbol, or None."""
    return next((p for p in rt.plans.all_plans() if p.action == action and p.state == "FILLED"), None)


def test_a_failover_under_a_running_pipeline_loses_no_plan_and_sends_nothing_twice(cluster):
    ns, env, rt = _setup(cluster)
    assert rt.settings.min_replicas == 1  # through Sentinel a send waits for one replica by default
    worker = start_worker(env, ns, "scan,orders,housekeeping", 2)
    beat = CeleryProcess("beat", env).start()
    try:
        worker.wait_ready()
        beat.wait_ready()
        first = wait_for(lambda: _filled(rt, Action.PARTIAL_25), 60, what="the first tier filled")
        took = cluster.fail_over()
        assert took < 30
        # The marker names the old server: scans hold and reconcile reads the exchange again.
        wait_for(lambda: rt.plans.counters().get("recovery:runs", 0) >= 1, 60, what="recovery after the failover")
        assert rt.plans.state_known()
        counters = rt.plans.counters()
        assert counters.get("scan:awaiting_recovery", 0) >= 1, counters
        # Worker and beat go on through the new primary: the next tier is decided and filled.
        rt.venue.set_mark(SYM, mark_at_r(rt, SYM, 4.5))
        second = wait_for(lambda: _filled(rt, Action.PARTIAL_50), 60, what="the second tier filled after the failover")
        fills = _hv_fills(rt)
        assert sorted(f.split("-")[1] for f in fills) == sorted([first.plan_id, second.plan_id]), fills
        # Celery's view of the configuration (Flower's worker pages) shows no password.
        conf = celery_app(env).control.inspect(timeout=10, limit=1).conf()
        assert conf and PASSWORD not in json.dumps(conf)
    finally:
        worker.stop()
        beat.stop()
    logs = worker.output() + beat.output()
    assert "harvest.execute" in logs and PASSWORD not in logs


def test_nothing_is_sent_while_no_replica_acknowledges_the_submitted_state(cluster):
    ns, env, rt = _setup(cluster, HARVEST_REDIS_REPLICA_WAIT_S="0.3")
    replica = next(x for x in cluster.servers if x.port != cluster.primary_port())
    worker = start_worker(env, ns, "scan,orders,housekeeping", 2)
    beat = CeleryProcess("beat", env).start()
    try:
        worker.wait_ready()
        beat.wait_ready()
        os.kill(replica.proc.pid, signal.SIGSTOP)  # connected, but acknowledges nothing
        try:
            refused = wait_for(
                lambda: next((p for p in rt.plans.all_plans() if p.reason == "state_not_replicated"), None),
                60,
                what="a plan refused for want of a replica",
            )
            assert refused.state == "FAILED" and _hv_fills(rt) == []
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        filled = wait_for(
            lambda: _filled(rt, Action.PARTIAL_25),
            60,
            what="the decision's next attempt filled once the replica answers",
        )
        assert filled.plan_id != refused.plan_id and len(_hv_fills(rt)) == 1
        assert rt.plans.counters().get("execute:state_not_replicated", 0) >= 1
        wait_for(lambda: all(p.state in TERMINAL for p in rt.plans.all_plans()), 30, what="every plan ended")
    finally:
        worker.stop()
        beat.stop()
