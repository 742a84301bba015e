"""A worker survives what it cannot decode (issue 19.4): items on its Redis queue that are not
a Celery message are recorded on the rejected stream and dropped once; the worker goes on
with the next message. Old main: ``Unrecoverable error: JSONDecodeError`` (6 of 6)."""

from __future__ import annotations

import os

from harvest.services.runtime import build_runtime
from settings import load_settings
from tasks.app import app
from tests.harness import wait_for, worker
from tests.pipeline_helpers import clean

NS = os.environ["HARVEST_NAMESPACE"] + "-p"


def test_poison_items_are_recorded_and_dropped_and_the_worker_goes_on():
    rt = build_runtime(load_settings(namespace=NS))
    clean(rt)
    w = worker({"HARVEST_NAMESPACE": NS}, NS, 1).start()
    try:
        w.wait_ready()
        for item in ("garbage", '{"body": "xx", "headers": {}, "properties": {}}', "[1, 2", '"just a string"'):
            rt.r.lpush(f"{NS}.orders", item)
        wait_for(lambda: rt.plans.counters().get("malformed:broker") == 4, 30, what="the four items recorded")
        assert w.proc.poll() is None  # still running
        entries = [f for _, f in rt.r.xrange(f"{NS}:stream:rejected")]
        assert [e["stage"] for e in entries] == ["broker"] * 4
        assert entries[0]["payload"] == "garbage" and "JSONDecodeError" in entries[0]["error"]
        # the next real message runs
        app.send_task("harvest.heartbeat", queue=f"{NS}.housekeeping")
        wait_for(lambda: "beat" in rt.plans.heartbeats(), 30, what="the heartbeat task to run")
        assert rt.r.llen(f"{NS}.orders") == 0  # dropped once, not redelivered
    finally:
        w.stop()
    assert "Unrecoverable error" not in w.output()
