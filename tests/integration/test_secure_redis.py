"""Redis with a password, and with TLS (``rediss://``): the whole pipeline — worker, beat
(celery-redbeat), the stores — runs on it, and the password shows in no log line."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from harvest.domain.models import Action
from harvest.domain.plans import TERMINAL, make_plan_id
from harvest.ops.loadgen import (
    celery_app,
    env_for,
    open_positions,
    runtime,
    start_worker,
)
from harvest.ops.procs import CeleryProcess, RedisServer, wait_for

PASSWORD = "pw-" + uuid.uuid4().hex[:12]


@pytest.fixture(params=["password", "tls+password"])
def server(request):
    tls = request.param.startswith("tls")
    if tls and not shutil.which("openssl"):
        pytest.skip("openssl not found: it makes the TLS test certificate")
    s = RedisServer(password=PASSWORD, tls=tls).start()
    yield s
    s.stop()


def test_pipeline_runs_on_a_password_and_tls_redis_and_never_logs_the_password(server):
    assert server.url.startswith("rediss://" if server.tls else "redis://") and PASSWORD in server.url
    ns = f"sec-{uuid.uuid4().hex[:6]}"
    sym = "S00000USDT"
    env = env_for(server.url, ns, [sym], HARVEST_SCAN_INTERVAL_S="0.5")
    rt = runtime(env)
    open_positions(rt, [sym], 2.2)
    worker = start_worker(env, ns, "scan,orders,housekeeping", 1)
    beat = CeleryProcess("beat", env).start()
    try:
        worker.wait_ready()
        beat.wait_ready()
        epoch = wait_for(
            lambda: (rt.book.get_many(rt.settings.account, [sym])[0] or {}).get("epoch"),
            60,
            what="beat's scan to open the book epoch",
        )
        pid = make_plan_id(rt.settings.account, sym, epoch, Action.PARTIAL_25, "tier=1")
        plan = wait_for(
            lambda: (p := rt.plans.get(pid)) is not None and p.state in TERMINAL and p, 60, what="the plan to end"
        )
        assert plan.state == "FILLED"
        # What `celery inspect conf` and Flower's worker pages show: the configuration, masked.
        # (Old main showed redbeat_redis_url with the password.)
        conf = celery_app(env).control.inspect(timeout=10, limit=1).conf()
        assert conf and any("redbeat_redis_url" in c for c in conf.values()), conf
        assert PASSWORD not in json.dumps(conf)
    finally:
        worker.stop()
        beat.stop()
    logs = worker.output() + beat.output()
    assert "harvest.execute" in logs and "beat: Starting" in logs
    assert PASSWORD not in logs
