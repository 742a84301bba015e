"""The performance benchmark runs end to end (tiny sizes: this checks the harness, not the
speed; the figures come from the full run the README gives)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_performance_benchmark_runs_every_section(tmp_path):
    out = tmp_path / "perf.json"
    p = subprocess.run(
        [
            sys.executable,
            "benchmarks/performance.py",
            "--positions",
            "200",
            "--chains",
            "20",
            "--ticks",
            "5",
            "--evaluations",
            "2000",
            "--instant-rounds",
            "3",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode in (0, 1), p.stdout + p.stderr  # 1: a target missed at this toy size
    res = json.loads(out.read_text())
    assert set(res["met"]) == {"kernel", "scan", "pipeline", "latency", "memory"}
    pipe = res["pipeline"]
    # published here; started by the scan; published here to workers whose venue answers from memory
    assert (len(pipe["rounds"]), len(pipe["scan_rounds"]), len(pipe["instant_rounds"])) == (7, 2, 3)
    assert pipe["states"] == {"FILLED": 20 * 12}
    for side in ("harvest", "bare"):  # machine CPU per chain, by process
        cpu = pipe["cpu_ms_per_chain"][side]
        assert set(cpu) == {"redis", "benchmark", "scan_consumer", "scan_pool", "orders_consumer", "orders_pool"}
        assert all(v >= 0 for v in cpu.values()) and cpu["scan_pool"] + cpu["orders_pool"] > 0
    rounds = res["scan"]["rounds"]  # 1 % actionable: 2 new partials a round, nothing else
    assert [r["chains_published"] for r in rounds] == [2] * len(rounds)
    assert res["latency"]["acknowledged"] >= 5
    assert len(res["memory"]["samples"]) >= 2  # 2000 evaluations = 2 scans of 1000 positions
    for line in (
        "a. kernel",
        "b. scan",
        "c. pipeline",
        "machine CPU per chain",
        "chains started by the beat scan",
        "exchange's work removed",
        "d. latency",
        "e. memory",
    ):
        assert line in p.stdout


def test_stage_profile_runs_and_counts_round_trips(tmp_path):
    out = tmp_path / "stages.json"
    p = subprocess.run(
        [sys.executable, "benchmarks/stages.py", "--plans", "30", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["ends"] == {"FILLED": 30}
    st = res["stages"]
    # Redis round trips per plan, by stage (the README's figures; a change that adds one shows here).
    # execute records the exchange's acceptance itself since issue 34 (confirm did, in its read):
    # one round trip more there, 8 in all.
    assert {s: st[s]["round_trips"] for s in st} == {"propose": 1, "guard": 3, "execute": 4, "confirm": 3}
    assert all(st[s]["cpu_ms"] > 0 for s in st) and st["propose"]["exchange_cpu_ms"] == 0
    assert all(st[s]["exchange_cpu_ms"] > 0 for s in ("guard", "execute", "confirm"))
    assert res["redis_calls_per_plan"]["script transition"] == 3  # APPROVED, SUBMITTED, FILLED
    assert res["redis_cpu_us_per_plan"] > 0
    for line in ("propose", "guard", "execute", "confirm", "Redis server CPU per plan"):
        assert line in p.stdout


def test_replay_benchmark_runs(tmp_path):
    """The replay benchmark's harness end to end on a sparse grid (the figures come from the full
    run, benchmarks/README.md): it prints the batch rate and the ratio to the single loop."""
    out = tmp_path / "replay.json"
    p = subprocess.run(
        [sys.executable, "benchmarks/replay.py", "--every-minutes", "720", "--single-rows", "500", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode in (0, 1), p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["evaluations"] > 0 and res["single_loop_rows"] == 500 and res["ratio"] > 0
    assert "M/s" in p.stdout and "×" in p.stdout
