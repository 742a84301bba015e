"""Beat with real processes: the scan interval changed at runtime (``harvest schedule set``)
changes the cadence of a running beat; a second beat stands by and takes over only when the
first dies. Cadence is read from the scan queue itself (BRPOP: each wait ends when beat's
message arrives, bounded by a timeout)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import pytest
import redis

from harvest.ops.procs import ROOT
from settings.celery import BEAT_MAX_LOOP_S
from tests.harness import CeleryProcess


@pytest.fixture()
def ns(redis_url):
    ns = "b" + uuid.uuid4().hex[:8]
    yield ns
    r = redis.Redis.from_url(redis_url)
    for pattern in (f"{ns}:*", f"{ns}.*"):
        keys = list(r.scan_iter(pattern, count=1000))
        if keys:
            r.delete(*keys)


def _env(ns: str, scan_s: float) -> dict[str, str]:
    # Long intervals for the other entries: only scans reach the scan queue while we watch.
    return {
        "HARVEST_NAMESPACE": ns,
        "HARVEST_SCAN_INTERVAL_S": str(scan_s),
        "HARVEST_MARKET_REFRESH_S": "600",
        "HARVEST_SWEEP_INTERVAL_S": "600",
        "HARVEST_HEARTBEAT_INTERVAL_S": "600",
        "HARVEST_RECONCILE_INTERVAL_S": "600",
    }


def _arrivals(r: redis.Redis, queue: str, n: int, timeout: float = 10.0) -> list[tuple[float, dict]]:
    """The next n scan messages beat publishes: (arrival time, headers)."""
    out = []
    for _ in range(n):
        got = r.brpop(queue, timeout=timeout)
        assert got is not None, f"no scan message within {timeout}s"
        msg = json.loads(got[1])
        out.append((time.monotonic(), msg["headers"]))
    return out


def _gaps(arrivals) -> list[float]:
    return [b[0] - a[0] for a, b in zip(arrivals[:-1], arrivals[1:], strict=True)]


def harvest_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_schedule_set_changes_the_cadence_of_a_running_beat(redis_url, ns):
    r = redis.Redis.from_url(redis_url)
    env = _env(ns, 1.0)
    beat = CeleryProcess("beat", env).start()
    try:
        beat.wait_ready()
        before = _arrivals(r, f"{ns}.scan", 4)
        assert statistics.median(_gaps(before)) == pytest.approx(1.0, abs=0.3)
        assert before[-1][1]["task"] == "harvest.scan_positions"

        out = harvest_cli(env, "schedule", "set", "scan", "0.25")
        assert out.returncode == 0, out.stderr
        _arrivals(r, f"{ns}.scan", 1)  # the run already due under the old interval
        after = _arrivals(r, f"{ns}.scan", 8)
        assert statistics.median(_gaps(after)) == pytest.approx(0.25, abs=0.12)
        # expires follows the interval: each message expires 0.25 s after beat sent it
        listed = json.loads(harvest_cli(env, "schedule", "list", "--json").stdout)
        scan = next(e for e in listed if e["name"] == "scan")
        assert scan["interval_s"] == 0.25 and scan["expires_s"] == 0.25 and scan["source"] == "override"

        # invalid values are refused with the variable named; the cadence is unchanged
        bad = harvest_cli(env, "schedule", "set", "scan", "0")
        assert bad.returncode == 2 and "HARVEST_SCAN_INTERVAL_S" in bad.stderr
        unknown = harvest_cli(env, "schedule", "set", "scna", "1")
        assert unknown.returncode == 2 and "unknown schedule entry 'scna'" in unknown.stderr
    finally:
        beat.stop()

    # A restarted beat keeps the override; reset goes back to the setting.
    beat = CeleryProcess("beat", env).start()
    try:
        beat.wait_ready()
        r.delete(f"{ns}.scan")
        again = _arrivals(r, f"{ns}.scan", 5)
        assert statistics.median(_gaps(again)) == pytest.approx(0.25, abs=0.12)
        assert harvest_cli(env, "schedule", "reset", "scan").returncode == 0
        # Beat re-reads the schedule at least every BEAT_MAX_LOOP_S: what it sent until then
        # (and what queued while the CLI ran) may still follow the override. Skip those.
        settled = time.monotonic() + BEAT_MAX_LOOP_S + 0.5
        first = _arrivals(r, f"{ns}.scan", 1)
        for _ in range(20):  # at the override's 0.25 s, ~6 messages; bounded either way
            if first[0][0] > settled:
                break
            first = _arrivals(r, f"{ns}.scan", 1)
        back = first + _arrivals(r, f"{ns}.scan", 3)
        assert statistics.median(_gaps(back)) == pytest.approx(1.0, abs=0.3)
    finally:
        beat.stop()


def test_second_beat_stands_by_and_takes_over_when_the_first_dies(redis_url, ns):
    r = redis.Redis.from_url(redis_url)
    env = _env(ns, 0.5)
    first = CeleryProcess("beat", env).start()
    second = CeleryProcess("beat", env)
    try:
        first.wait_ready()
        _arrivals(r, f"{ns}.scan", 1)
        second.start()
        second.wait_ready()
        # Two beats running: the cadence stays one scan per 0.5 s, not two. (Six gaps span
        # ~3 s with one beat, ~1.5 s with two; a single gap can be short when a message
        # published before the measurement was still queued.)
        r.delete(f"{ns}.scan")
        gaps = _gaps(_arrivals(r, f"{ns}.scan", 7))
        assert sum(gaps) > 2.4, gaps
        assert "Acquired lock" in first.output() and "Acquired lock" not in second.output()

        first.kill()  # SIGKILL: the lock is not released, it expires
        # The standby takes over within the lock TTL (10 s) and scans resume.
        _arrivals(r, f"{ns}.scan", 3, timeout=15)
        assert "Acquired lock" in second.output()
    finally:
        first.stop()
        second.stop()
