"""Operating harvest with real processes: Flower (HTTP API, basic auth, read-only) next to a
worker that trades through python-binance against the emulator; the Prometheus exporter
(``harvest metrics``) scraped over HTTP; the worker's JSON logs, one line per transition."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harvest.domain.models import Action
from harvest.domain.plans import make_plan_id
from harvest.ops.procs import ROOT
from harvest.venues.binance import WeightBudget
from settings import load_settings
from tasks.app import app
from tests.harness import CeleryProcess, free_port, wait_for, worker
from tests.pipeline_helpers import (
    emulator,
    epoch,
    mark_for_r,
    open_position,
    wait_terminal,
)

KEY, SECRET = "ops-key-3b9d0c7e", "ops-secret-a41f77d2e0"
NS = os.environ["HARVEST_NAMESPACE"]
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-pw-8c1d"
STAGES = ("harvest.propose", "harvest.guard", "harvest.execute", "harvest.confirm")


@pytest.fixture(scope="module")
def emu():
    with emulator(KEY, SECRET) as e:
        yield e


@pytest.fixture(scope="module")
def ops_worker(emu):
    env = {
        "HARVEST_FAPI_URL": emu.url,
        "HARVEST_API_KEY": KEY,
        "HARVEST_API_SECRET": SECRET,
        "HARVEST_LOG_FORMAT": "json",
    }
    w = worker(env, NS).start()
    w.wait_ready()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def flower(ops_worker):
    port = free_port()
    # Credentials from the environment, as the README runs it: never in argv, where `ps` shows them.
    f = CeleryProcess(
        "flower",
        {"FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"},
        [f"--port={port}", "--address=127.0.0.1", "--read_only=True"],
    )
    f.start()
    assert FLOWER_PASSWORD not in open(f"/proc/{f.proc.pid}/cmdline").read()
    f.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    wait_for(lambda: _get(f.url + "/healthcheck", auth=False)[0] == 200, 30, 0.2, "Flower to answer")

    # Flower sees events from now on: wait until a task event of ours shows in its API.
    def seen():
        app.send_task("harvest.heartbeat", queue=f"{NS}.housekeeping")
        return any(t["name"] == "harvest.heartbeat" for t in _tasks(f.url).values())

    wait_for(seen, 30, 0.5, "Flower to receive task events")
    yield f
    f.stop()


@pytest.fixture()
def rt(ops_worker, emu, rt):
    """The shared clean runtime (tests/integration/conftest.py), once the processes run."""
    emu.faults.clear()
    return rt


def _get(url: str, auth: bool = True, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    if auth:
        token = base64.b64encode(f"{FLOWER_USER}:{FLOWER_PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def _tasks(base: str) -> dict:
    code, body = _get(base + "/api/tasks?limit=1000")
    return json.loads(body) if code == 200 else {}


def run_partial(rt) -> str:
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.1, "LONG"))
    app.send_task("harvest.scan_positions", queue=f"{NS}.scan")
    wait_for(lambda: rt.book.get_many(rt.settings.account, ["BTCUSDT"])[0], 20, what="book entry")
    pid = make_plan_id(rt.settings.account, "BTCUSDT", epoch(rt, "BTCUSDT"), Action.PARTIAL_25, "tier=1")
    assert wait_terminal(rt, pid).state == "FILLED"
    return pid


def test_flower_lists_every_stage_by_plan_id_and_is_read_only(rt, flower):
    pid = run_partial(rt)

    def stages():
        ts = [t for t in _tasks(flower.url).values() if pid in (t.get("args") or "")]
        return ts if {t["name"] for t in ts} >= set(STAGES) and all(t["state"] == "SUCCESS" for t in ts) else None

    ts = wait_for(stages, 20, 0.2, "Flower to list the plan's four stages")
    for t in ts:
        assert t["args"] == f"plan_id={pid} symbol=BTCUSDT action=PARTIAL_25"
    assert {t["routing_key"] for t in ts if t["name"] in ("harvest.execute", "harvest.confirm")} == {f"{NS}.orders"}

    # Nothing Flower holds or shows carries the exchange credentials.
    listing = _get(flower.url + "/api/tasks?limit=1000")[1]
    info = "".join(_get(f"{flower.url}/api/task/info/{t['uuid']}")[1] for t in ts)
    for text in (listing, info):
        assert KEY not in text and SECRET not in text

    # Basic auth is required; read-only refuses to send tasks or control workers.
    assert _get(flower.url + "/api/tasks", auth=False)[0] == 401
    before = rt.r.llen(f"{NS}.orders")
    code, _ = _get(f"{flower.url}/api/task/async-apply/harvest.execute", method="POST")
    assert code == 403
    assert _get(f"{flower.url}/api/worker/shutdown/{NS}@x", method="POST")[0] == 403
    assert rt.r.llen(f"{NS}.orders") == before
    assert ops_worker_alive(flower)


def ops_worker_alive(flower) -> bool:
    code, body = _get(flower.url + "/api/workers?refresh=1")
    return code == 200 and any(name.startswith(NS + "@") for name in json.loads(body))


def scrape(port: int) -> dict:
    code, body = _get(f"http://127.0.0.1:{port}/metrics", auth=False)
    assert code == 200, body
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_exporter_serves_the_pipeline(rt):
    # A position outside the allowlist, decided in the same scan: the guard blocks its plan.
    e, s = 0.10, 0.099
    open_position(rt, "ALGOUSDT", "LONG", 5000.0, e, s, mark=mark_for_r(e, s, 5000, 5000, 2.2, "LONG"))
    run_partial(rt)
    algo = make_plan_id(rt.settings.account, "ALGOUSDT", epoch(rt, "ALGOUSDT"), Action.PARTIAL_25, "tier=1")
    assert wait_terminal(rt, algo).reason == "symbol_not_allowed"
    # The worker spent request weight on the fleet's per-minute counters (they live 120 s).
    budget = WeightBudget(rt.r, NS, rt.settings.venue_weight_limit_1m)
    assert sum(int(rt.r.get(k) or 0) for k in rt.r.scan_iter(f"{NS}:venue:weight:*")) > 0
    rt.plans.count("execute:state_not_replicated", 2)  # as execute counts a send it withheld
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvest.ops.cli", "metrics", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/metrics", auth=False)[0] == 200, 30, 0.1, "the exporter")
        # The gauge is the current minute's counter, which may have rolled over since the
        # worker's sends: spend weight in this minute and scrape within it (a second try if
        # the minute turned in between).
        for _ in range(2):
            minute = budget.key()
            budget.reserve(1, "read")
            m = scrape(port)
            if budget.key() == minute:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    a = ("account", rt.settings.account)
    assert m[("harvest_plans", (a, ("action", "PARTIAL_25"), ("state", "FILLED")))] == 1
    assert m[("harvest_plans", (a, ("action", "PARTIAL_25"), ("state", "PROPOSED")))] == 0
    assert m[("harvest_orders_total", (a, ("result", "FILLED")))] == 1
    assert m[("harvest_order_sends_total", (a, ("outcome", "accepted")))] == 1
    assert m[("harvest_guard_blocks_total", (("reason", "symbol_not_allowed"),))] == 1
    assert m[("harvest_sends_withheld_total", (("reason", "state_not_replicated"),))] == 2
    assert m[("harvest_plans", (a, ("action", "PARTIAL_25"), ("state", "REJECTED")))] == 1
    assert m[("harvest_scans_total", (("account", rt.settings.account),))] >= 1
    assert m[("harvest_scan_duration_seconds_count", ())] >= 1
    assert m[("harvest_scan_to_fill_seconds_count", (("action", "PARTIAL_25"),))] == 1
    assert 0 < m[("harvest_scan_to_fill_seconds_sum", (("action", "PARTIAL_25"),))] < 30
    assert m[("harvest_queue_wait_seconds_count", (("queue", f"{NS}.orders"),))] >= 2
    for kind in ("scan", "orders", "housekeeping"):
        assert m[("harvest_queue_depth", (("queue", f"{NS}.{kind}"),))] == 0
    assert ("harvest_heartbeat_age_seconds", (("component", "scan"),)) in m
    # the exporter reads the fleet-wide counter of the minute it was scraped in
    assert m[("harvest_exchange_weight_limit", ())] == load_settings().venue_weight_limit_1m
    assert 1 <= m[("harvest_exchange_weight_used", ())] <= int(rt.r.get(minute) or 0)


def test_metrics_exporter_binds_loopback_and_can_require_basic_auth():
    """Old main: `harvest metrics` listened on 0.0.0.0 with no auth."""
    from harvest.ops.cli import main

    with pytest.raises(SystemExit):
        main(["metrics", "--help"])
    port = free_port()
    env = dict(os.environ, HARVEST_METRICS_BASIC_AUTH="prom:scrape-pw-31")
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvest.ops.cli", "metrics", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _status(f"http://127.0.0.1:{port}/metrics") == 401, 30, 0.1, "the exporter")
        token = base64.b64encode(b"prom:scrape-pw-31").decode()
        assert _status(f"http://127.0.0.1:{port}/metrics", f"Basic {token}") == 200
        assert _status(f"http://127.0.0.1:{port}/metrics", "Basic " + base64.b64encode(b"prom:wrong").decode()) == 401
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
        assert f"0.0.0.0:{port}" not in out and f"*:{port}" not in out
    finally:
        proc.terminate()
        proc.wait(10)


def _status(url: str, authorization: str | None = None) -> int:
    req = urllib.request.Request(url)
    if authorization:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_json_logs_one_line_per_plan_transition_with_task_id(rt, ops_worker):
    seen = len(ops_worker.output().splitlines())  # earlier tests' runs of the same plan_id
    pid = run_partial(rt)

    def lines():
        out = []
        for raw in ops_worker.output().splitlines()[seen:]:
            if raw.startswith("{"):
                rec = json.loads(raw)  # every log line of the worker is one JSON object
                if rec.get("event") == "plan_transition" and rec.get("plan_id") == pid:
                    out.append(rec)
        return out if len(out) >= 4 else None

    recs = wait_for(lines, 10, 0.1, "the transition log lines")
    assert [r["state"] for r in recs] == ["PROPOSED", "APPROVED", "SUBMITTED", "FILLED"]
    tasks = [r["task_name"] for r in recs]
    assert tasks == ["harvest.propose", "harvest.guard", "harvest.execute", "harvest.confirm"]
    for r in recs:
        assert r["symbol"] == "BTCUSDT" and r["action"] == "PARTIAL_25" and r["level"] == "INFO"
        assert len(r["task_id"]) == 36 and r["task_id"].count("-") == 4
    assert KEY not in ops_worker.output() and SECRET not in ops_worker.output()
