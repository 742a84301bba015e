"""The deployment across several hosts (issue 33, item 2): Linux network namespaces on this
machine, each host its own address on a bridge — state/broker (Redis), exchange (Redis and
``harvest emulator``), scan worker, orders worker, beat, streams — nothing between them over
loopback (:mod:`harvest.ops.hosts`).

* A paper deployment with the emulator on the exchange host carries plans to FILLED, counted
  on the exchange's own records.
* ``harvest chaos --hosts`` as an operator runs it: the orders host partitioned from the
  state/broker host for 30 s, its link at 50 ms ± 20 ms and 2 % loss, the exchange host out of
  reach for 60 s, the orders host killed (every process) and restarted, each under a batch of
  positions made actionable as it begins — and 0 duplicate orders, 0 lost plans, 0 unachieved
  decisions, every fault recovered (its time reported).

Both skip, with the reason, where network namespaces cannot be made (not root, no ``ip``,
no ``/dev/net/tun``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harvest.ops.hosts import FAULTS, HOSTS, run_hosts, sweep_stale, unavailable
from harvest.ops.procs import ROOT, wait_for

WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"network namespaces cannot be made here: {WHY}")


def _hv_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith("hv-")]


def _no_duplicates_nothing_lost(rep: dict) -> None:
    assert rep["duplicate_orders"] == 0 and rep["orders_per_plan_max"] == 1, rep
    assert rep["duplicate_fills_per_decision"] == 0 and rep["orders_without_plan"] == 0, rep
    assert rep["lost_plans"] == 0 and rep["non_terminal"] == 0 and rep["terminal"] == rep["plans"], rep
    assert rep["unachieved"] == 0, rep


def test_a_paper_deployment_across_hosts_fills_plans():
    """The emulator on the exchange host, workers, beat and streams each on their own: every
    position made actionable gets its order on the exchange, once, and its plan FILLED."""
    rep = run_hosts(plans=6, faults=(), plan_ttl_s=20.0, drain_timeout_s=180.0)
    assert set(rep["hosts"]) == set(HOSTS)
    assert len(set(rep["hosts"].values())) == len(HOSTS)
    assert not any(a.startswith("127.") for a in rep["hosts"].values())
    assert rep["states"].get("FILLED", 0) >= 6, rep  # each position's partial close at least
    assert rep["orders"] >= 6, rep  # counted on the exchange host's paper engine
    _no_duplicates_nothing_lost(rep)
    assert rep["positions_from_streams"] > 0  # the streams host fed the scans
    assert rep["ok"] is True
    assert not [ns for ns in _hv_namespaces() if ns.startswith(f"hv-{os.getpid()}-")]  # its namespaces are gone


def test_chaos_across_hosts_cli():
    """``harvest chaos --hosts --json``: every network fault, 0/0/0, each fault recovered."""
    out = subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "chaos", "--hosts", "--plans", "40", "--plan-ttl", "20", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rep = json.loads(out.stdout)
    _no_duplicates_nothing_lost(rep)
    assert rep["ok"] is True
    assert set(rep["faults_injected"]) == set(FAULTS), rep["faults_injected"]
    assert rep["fault_durations_s"]["partition"] == 30 and rep["fault_durations_s"]["exchange"] == 60
    assert set(rep["recovery_s"]) == set(FAULTS) and all(s >= 0 for s in rep["recovery_s"].values()), rep
    # the faults struck work: plans were open when the orders host was cut off and when it died
    assert rep["under_fault"]["partition"]["open_plans_at_heal"] > 0, rep["under_fault"]
    assert rep["under_fault"]["host_kill"]["open_plans_at_strike"] > 0, rep["under_fault"]
    assert rep["states"].get("FILLED", 0) > 0
    assert "hosts: orders host cut off from the state/broker host for 30 s" in out.stderr


def test_a_crashed_runs_namespaces_are_swept():
    """A run whose process is gone left a namespace: the next run's sweep removes it; a live
    process's namespaces are left alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = f"hv-{dead.stdout.strip()}-abcde-state", "hv-1-bcdef-state"  # pid 1 is alive
    for ns in (stale, live):
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        gone = sweep_stale()
        assert live not in gone  # (another run's sweep may have taken the stale one first)
        assert stale not in _hv_namespaces() and live in _hv_namespaces()
    finally:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _pids_in(namespaces: list[str]) -> list[int]:
    out: list[str] = []
    for ns in namespaces:
        out += subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout.split()
    return [int(x) for x in out]


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_run_killed_midway_is_cleaned_by_the_next():
    """``harvest chaos --hosts`` SIGKILLed once its hosts run: its wire relay ends with it, and
    the next run's sweep removes its namespaces, every process in them and its links."""
    p = subprocess.Popen(
        [sys.executable, "-m", "harvest.ops.cli", "chaos", "--hosts", "--plans", "4"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def mine() -> list[str]:
            return [ns for ns in _hv_namespaces() if ns.startswith(f"hv-{p.pid}-")]

        wait_for(lambda: len(mine()) == len(HOSTS) and _pids_in(mine()), 120, 0.2, "the run's hosts")
        run_id = mine()[0].split("-")[2]
        time.sleep(1.0)  # a moment for more of its processes to start (not a synchronisation)
        left = mine()
        orphans = _pids_in(left)  # what the crash leaves behind
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        assert len(left) == len(HOSTS) and orphans
        relay = ["pgrep", "-f", f"harvest.ops.hosts relay hv{run_id}t "]
        wait_for(lambda: subprocess.run(relay, capture_output=True).returncode == 1, 10, 0.1, "the relay to end")
        sweep_stale()  # (another run's sweep may have been first: either way they are gone)
        assert not mine()
        wait_for(lambda: not any(_running(q) for q in orphans), 10, 0.1, "its processes to end")
        assert f"hv{run_id}" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        sweep_stale()
