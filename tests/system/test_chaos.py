"""``harvest chaos`` at small size, on both brokers: real worker and beat processes, a
persistent Redis restarted mid-run, the emulator's exchange faults, SIGKILLed workers, a
second beat, duplicate scans, a 503 storm longer than a plan's TTL — and still one order per
plan at most, no plan lost, every plan terminal, nothing unachieved; and with ten accounts fed by
``harvest streams``, under stream faults too (dropped connections, expired listenKeys, delayed,
reordered and lost events, the streams process SIGKILLed); and with the state Redis behind
Sentinel, its primary failed over twice. (The 1000-plan runs are in the README.)"""

from __future__ import annotations

import json
import subprocess
import sys

from harvest.ops.chaos import STREAM_FAULTS, WAVES, run_chaos
from harvest.ops.procs import ROOT

PLANS = 30


def _check_streams(rep: dict) -> None:
    """A run with ten accounts: every stream fault injected, scans served from the stream cache."""
    assert rep["accounts"] == 10
    assert set(rep["faults_injected"]) >= set(STREAM_FAULTS), rep["faults_injected"]
    assert rep["positions_from_streams"] > 0
    assert rep["restarts"].get("streams", 0) >= 1  # the SIGKILLed streams process came back


def _check(rep: dict, failovers: int = 0) -> None:
    assert rep["duplicate_orders"] == 0 and rep["orders_per_plan_max"] == 1, rep
    assert rep["duplicate_fills_per_decision"] == 0, rep
    assert rep["orders_without_plan"] == 0, rep
    assert rep["lost_plans"] == 0 and rep["non_terminal"] == 0 and rep["terminal"] == rep["plans"], rep
    assert rep["unachieved"] == 0, rep  # the 503 storm outlasted the plans' TTL; their next attempts filled
    # every position made actionable had its partial close on the exchange (plans made before
    # the state Redis came back empty are gone from the store; their orders are not)
    assert rep["orders"] >= PLANS and (rep["plans_lost_with_state"] > 0 or failovers)
    assert rep["ok"] is True
    # Every fault kind was injected at least once (through Sentinel the restarts are failovers).
    kinds = set(WAVES) - {"none"}
    if failovers:
        kinds = kinds - {"redis_restart", "redis_restart_empty"} | {"failover"}
        assert rep["failovers"] == rep["faults_injected"]["failover"] == failovers, rep
    assert set(rep["faults_injected"]) >= kinds, rep["faults_injected"]
    assert rep["orders"] >= rep["states"].get("FILLED", 0) > 0


def test_chaos_cli_on_redis():
    """``harvest chaos --json`` as an operator runs it (the run's own Redis as broker)."""
    out = subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "chaos", "--plans", str(PLANS), "--plan-ttl", "20", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rep = json.loads(out.stdout)
    assert rep["broker"] == "redis"
    _check(rep)


def test_chaos_with_ten_accounts_and_stream_faults_on_redis():
    rep = run_chaos(plans=PLANS, plan_ttl_s=20.0, accounts=10)
    assert rep["broker"] == "redis"
    _check(rep)
    _check_streams(rep)


def test_chaos_with_ten_accounts_and_stream_faults_on_rabbitmq(amqp_url):
    rep = run_chaos(plans=PLANS, broker=amqp_url, plan_ttl_s=20.0, accounts=10)
    assert rep["broker"] == "amqp"
    _check(rep)
    _check_streams(rep)


def test_chaos_with_failovers_through_sentinel():
    """The state Redis and the broker behind three Sentinels; the primary SIGKILLed twice under
    load (a replica promoted each time, the old primary back as a replica): as everywhere else,
    no order twice, no plan lost, nothing unachieved."""
    rep = run_chaos(plans=PLANS, plan_ttl_s=20.0, sentinel=True)
    assert rep["broker"] == "redis+sentinel"
    _check(rep, failovers=2)
