"""The operator's switch and the plan commands (issue 22, part): `harvest trading halt` stops
every order before the next send — the scan starts nothing, a chain started anyway ends at the
guard with reason `halted` — and `resume` lets the decision through; `harvest plans`, `harvest
plan show` (the decision ledger) and `harvest plan cancel`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from harvest.domain.models import Action, Decision, Side
from harvest.domain.plans import NextAttempt, lineage_id, make_plan_id, new_plan, next_attempt
from harvest.domain.trading import effective
from harvest.ops.procs import ROOT
from harvest.services.runtime import build_runtime
from settings import load_settings
from tasks.app import app
from tests.harness import wait_for, worker
from tests.pipeline_helpers import clean, mark_for_r, open_position

NS = os.environ["HARVEST_NAMESPACE"] + "-t"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HARVEST_NAMESPACE": NS},
        timeout=60,
    )


def test_halt_blocks_the_next_plan_and_resume_lets_it_through():
    rt = build_runtime(load_settings(namespace=NS))
    clean(rt)
    w = worker({"HARVEST_NAMESPACE": NS, "HARVEST_ATTEMPT_BACKOFF_S": "0.2"}, NS, 2).start()
    try:
        w.wait_ready()
        out = cli("trading", "halt", "--reason", "test", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["deployment"] == "HALTED", out.stderr
        e, s = 100_000.0, 99_000.0
        open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
        app.send_task("harvest.scan_positions", queue=f"{NS}.scan")
        wait_for(lambda: rt.plans.counters().get("scan:halted", 0) >= 1, 20, what="a scan under the halt")
        assert not list(rt.plans.all_plans())  # the scan started nothing
        from workflows import (
            full_chain,  # an on-demand chain while halted: blocked at the guard
        )

        full_chain("BTCUSDT").apply_async(queue=f"{NS}.scan")
        blocked = wait_for(lambda: next(iter(rt.plans.all_plans()), None), 20, what="the on-demand plan")
        blocked = wait_for(
            lambda: (p := rt.plans.get(blocked.plan_id)) and p.state != "PROPOSED" and p, 20, what="the guard's verdict"
        )
        assert (blocked.state, blocked.reason) == ("REJECTED", "halted")
        assert rt.venue.position("BTCUSDT").qty == 1.0 and not [
            t for t in rt.venue.trades() if t["clientOrderId"].startswith("hv-")
        ]
        assert cli("trading", "resume").returncode == 0
        assert effective(rt.r.hgetall(rt.plans.k.trading), "paper") == "ACTIVE"

        def filled():
            app.send_task("harvest.scan_positions", queue=f"{NS}.scan")
            return next((p for p in rt.plans.all_plans() if p.state == "FILLED"), None)

        done = wait_for(filled, 30, 0.3, "the decision to go through after resume")
        assert done.action is Action.PARTIAL_25 and done.attempt == 1 and done.lineage == blocked.lineage
        changes = [f for _, f in rt.r.xrange(f"{NS}:stream:trading")]
        assert [c["state"] for c in changes] == ["HALTED", "ACTIVE"] and changes[0]["reason"] == "test"
        # the plan commands
        listed = json.loads(cli("plans", "--json").stdout)
        assert {blocked.plan_id, done.plan_id} <= {r["plan_id"] for r in listed}  # (a profit lock may follow)
        show = cli("plan", "show", done.plan_id)
        assert show.returncode == 0 and "PARTIAL_25" in show.stdout and "order_filled" in show.stdout
        ledger = json.loads(cli("plan", "show", done.plan_id, "--json").stdout)
        assert [t["to"] for t in ledger["transitions"] if t["from"] != t["to"]] == [
            "PROPOSED",
            "APPROVED",
            "SUBMITTED",
            "FILLED",
        ]
        assert cli("plan", "show", "0000000000000000").returncode == 2
    finally:
        w.stop()
        clean(rt)


def _full_close(now: float, attempt: int) -> Decision:
    """A full close of paper's ETHUSDT long (epoch L1), attempt ``attempt``, decided ``now``."""
    return Decision(
        account="paper",
        symbol="ETHUSDT",
        epoch="L1",
        side=Side.LONG,
        action=Action.FULL_CLOSE_PROPOSED,
        close_fraction=1.0,
        r_net=0.0,
        kill_score=0.0,
        mark_price=100.0,
        decided_at=now,
        attempt=attempt,
    )


def test_plan_cancel_is_final_and_recorded():
    rt = build_runtime(load_settings(namespace=NS))
    clean(rt)
    lid = lineage_id("paper", "ETHUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full")
    pid = make_plan_id("paper", "ETHUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full", 0)
    now = time.time()
    first = new_plan(_full_close(now, attempt=0), now, 30)
    assert (first.plan_id, first.record["lineage"]) == (pid, lid)
    rt.plans.create(first.record, {})
    out = cli("plan", "cancel", pid)
    assert out.returncode == 0 and "operator_cancel" in out.stdout
    assert rt.plans.get(pid).reason == "operator_cancel"
    [latest] = rt.plans.latest_many([lid])
    assert latest.reason == "operator_cancel"
    assert cli("plan", "cancel", pid).returncode == 2  # terminal: nothing to cancel
    # an operator asks for the decision again: recorded with who, and the next plan is attempt 1 at once
    out = cli("plan", "retry", pid)
    assert out.returncode == 0 and "retry requested" in out.stdout, out.stderr
    [latest] = rt.plans.latest_many([lid])
    assert latest.operator_retry
    assert next_attempt(Action.FULL_CLOSE_PROPOSED, latest, time.time(), 300, 300, 20) == NextAttempt(
        "retry", 1, "operator_retry"
    )
    assert [h["reason"] for h in rt.plans.history(pid, sends=True)][-1] == "operator_retry"  # in the ledger
    pid1 = make_plan_id("paper", "ETHUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full", 1)
    second = new_plan(_full_close(now, attempt=1), now, 30)
    assert second.plan_id == pid1
    rt.plans.create(second.record, {})
    [latest] = rt.plans.latest_many([lid])
    assert (latest.attempt, latest.operator_retry) == (1, False)  # the retry is spent by the plan it made
    assert cli("plan", "retry", pid1).returncode == 2  # in flight: nothing to retry
    clean(rt)
