"""A worker survives a broker outage while a task runs (issue 19.4). Old main (celery 5.7.0):
``Unrecoverable error: AttributeError('NoneType' object has no attribute 'hostname')`` in 5
of 5 tries (the cause is in ``tasks/consumer.py``)."""

from __future__ import annotations

import uuid

import redis

from harvest.ops.loadgen import celery_app
from harvest.ops.procs import CeleryProcess, RedisServer, wait_for


def test_worker_survives_broker_outages_while_a_task_runs():
    srv = RedisServer(persistent=True).start()
    ns = f"out-{uuid.uuid4().hex[:6]}"
    env = {"HARVEST_REDIS_URL": srv.url, "HARVEST_NAMESPACE": ns}
    w = CeleryProcess(
        "worker",
        env,
        [
            "-Q",
            f"{ns}.orders",
            "-c",
            "2",
            "-n",
            f"{ns}@%h",
            "--without-mingle",
            "--without-gossip",
            "-I",
            "tests.slow_tasks",
        ],
    ).start()
    try:
        w.wait_ready()
        app = celery_app({"HARVEST_REDIS_URL": srv.url, "HARVEST_NAMESPACE": ns})
        r = redis.Redis.from_url(srv.url)
        started = f"{ns}:test:sleep_started"
        for trial in range(3):
            before = w.output().count("Task test.sleep[")
            n = int(r.get(started) or 0)
            app.send_task("test.sleep", args=[2.0], queue=f"{ns}.orders")
            wait_for(lambda n=n: int(r.get(started) or 0) > n, 30, what="the task to start")
            srv._terminate()  # the broker goes away for a while under a running task
            wait_for(
                lambda: "Connection to broker lost" in w.output()[-20000:] or w.proc.poll() is not None,
                30,
                what="the worker to see the outage",
            )
            srv.start()
            wait_for(
                lambda trial=trial: w.output().count("Connected to redis://") > trial + 1 or w.proc.poll() is not None,
                60,
                what="the worker to reconnect",
            )
            assert w.proc.poll() is None, w.output()[-3000:]
            assert w.output().count("Task test.sleep[") >= before
        assert "Unrecoverable error" not in w.output()
    finally:
        w.stop()
        srv.stop()
