"""Deferred metric observations ride on a stage's own Redis round trip (real Redis)."""

from __future__ import annotations

from harvest.services.runtime import build_runtime
from harvest.store.counters import DEFERRED, queue_wait
from settings import load_settings
from tests.pipeline_helpers import clean


def test_queued_observations_are_written_with_the_next_plan_read_or_at_flush():
    rt = build_runtime(load_settings())
    clean(rt)
    hist = queue_wait(rt.r, rt.settings.namespace)
    DEFERRED.add(hist, 0.003, "q.orders")
    DEFERRED.add(hist, 0.2, "q.orders")
    assert hist.snapshot() == {}  # nothing written yet
    assert rt.plans.get("0123456789abcdef") is None  # a plan read (no such plan) carries them
    cum, total, count = hist.snapshot()["q.orders"]
    assert count == 2 and abs(total - 0.203) < 1e-9 and dict(cum)["0.005"] == 1 and dict(cum)["0.25"] == 2
    DEFERRED.add(hist, 1.5, "q.scan")
    DEFERRED.flush(rt.r)  # what task_postrun does when no round trip carried it
    DEFERRED.flush(rt.r)  # nothing left: no write
    assert hist.snapshot()["q.scan"][2] == 1
