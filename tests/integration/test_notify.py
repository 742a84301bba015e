"""Notifications (issue 22): a kill close that filled reaches a local webhook through apprise
(``json://``), once; a position without a stop is told and then throttled; a trading-state
change is told with who asked; a webhook that is down costs a count, not the pipeline."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harvest.domain.models import Action, PlanState
from harvest.domain.notices import Health, Notice, Throttle, from_health
from harvest.domain.plans import make_plan_id
from harvest.ops.metrics import HarvestCollector
from harvest.ops.notify import apprise_sender, notify_once
from harvest.ops.procs import ROOT, free_port
from harvest.ops.scorecard import build_scorecard, format_scorecard
from harvest.services.runtime import build_runtime
from harvest.store.trading import set_state
from settings import load_settings
from tests.pipeline_helpers import clean, full_close_plan

NS = os.environ["HARVEST_NAMESPACE"] + "-notify"


class Hook:
    """A local webhook: records every JSON body POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                hook.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()


@pytest.fixture()
def hook():
    h = Hook()
    yield h
    h.close()


@pytest.fixture()
def rt():
    r = build_runtime(load_settings(namespace=NS))
    clean(r)
    r.plans.beat("beat")
    r.plans.beat("scan")
    return r


def _kill_close_filled(rt) -> str:
    now = time.time()
    pid = make_plan_id(rt.settings.account, "BTCUSDT", "L1", Action.FULL_CLOSE_PROPOSED, "full")
    made = full_close_plan(rt.settings.account, "BTCUSDT", "L1", now)
    assert made.plan_id == pid
    rt.plans.create(made.record, {})
    for to, why in (
        (PlanState.APPROVED, "guard_passed"),
        (PlanState.SUBMITTED, "order_sent"),
        (PlanState.FILLED, "order_filled"),
    ):
        assert rt.plans.transition(pid, to, why)[0]
    return pid


def test_a_kill_close_reaches_the_webhook_once(rt, hook):
    send = apprise_sender(hook.url)
    throttle = Throttle(repeat_s=600, per_min=20)
    notify_once(rt, send, throttle)  # nothing yet: the pipeline is healthy
    assert hook.bodies == []
    pid = _kill_close_filled(rt)
    out = notify_once(rt, send, throttle)
    assert out["sent"] == 1 and len(hook.bodies) == 1
    body = hook.bodies[0]
    assert body["title"] == "harvest: BTCUSDT closed" and pid in body["message"] and "FILLED" in body["message"]
    assert body["type"] == "warning"
    notify_once(rt, send, throttle)  # the stream's cursor moved on: no repeat
    assert len(hook.bodies) == 1


def test_a_condition_is_told_then_throttled_and_trading_changes_are_told(rt, hook):
    send = apprise_sender(hook.url)
    throttle = Throttle(repeat_s=600, per_min=20)
    rt.r.hset(rt.plans.k.counters, f"acct:{rt.settings.account}:positions_unprotected", 2)
    notify_once(rt, send, throttle)
    notify_once(rt, send, throttle)
    told = [b for b in hook.bodies if b["title"] == "harvest: position without a stop"]
    assert len(told) == 1 and "2 open position(s)" in told[0]["message"] and told[0]["type"] == "failure"
    set_state(rt.r, rt.plans.k.trading, f"{NS}:stream:trading", "HALTED", None, "ops-alice", "exchange incident")
    notify_once(rt, send, throttle)
    halted = [b for b in hook.bodies if b["title"] == "harvest: trading HALTED"]
    assert len(halted) == 1 and "ops-alice" in halted[0]["message"] and "exchange incident" in halted[0]["message"]


def test_a_webhook_that_is_down_costs_a_count_not_the_pipeline(rt):
    send = apprise_sender(f"json://127.0.0.1:{free_port()}/nobody")
    _kill_close_filled(rt)
    t0 = time.monotonic()
    out = notify_once(rt, send, Throttle(repeat_s=600, per_min=20))
    assert out["sent"] == 0 and out["failed"] == 1 and time.monotonic() - t0 < 30
    assert rt.plans.counters().get("notify:failed") == 1


def test_the_pipeline_stopping_and_the_rate_cap():
    h = Health({"beat": 3.0}, {"BTCUSDT": 200.0}, 0, {"attempts_exhausted": 1}, 0, 60.0, 15.0)
    keys = [n.key for n in from_health(h)]
    assert keys == ["heartbeat:scan", "market:BTCUSDT", "abandoned:attempts_exhausted"]
    t = Throttle(repeat_s=600, per_min=2)
    many = [Notice(f"plan:{i}", "info", "t", "b") for i in range(5)]
    assert len(t.admit(many, 0.0)) == 2 and t.suppressed == 3
    assert len(t.admit(many[2:], 61.0)) == 2  # a minute later: the window is free again


# Issue 31 finding 7: a failed send was counted in Redis and nowhere else, and `harvest notify`
# printed nothing. Now it is logged (masked), exported, on the scorecard and alerted (the rule's
# promtool test: deploy/prometheus/harvest-rules.test.yml), and `--test` probes the URLs.

TOKEN, PATH_SECRET = "tok-9f3c2a77e1", "hooksecret-51ab0e"


def _closed_url() -> str:
    """A json:// target on a local port nothing listens on, with a password and a path that
    stand for a service's token."""
    return f"json://ops:{TOKEN}@127.0.0.1:{free_port()}/{PATH_SECRET}/x"


def _cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "notify", *args],
        cwd=ROOT,
        env=dict(os.environ, HARVEST_NAMESPACE=NS, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_failed_send_is_logged_masked_exported_and_on_the_scorecard(rt, caplog):
    send = apprise_sender(_closed_url(), timeout_s=10)
    _kill_close_filled(rt)
    with caplog.at_level(logging.WARNING, logger="harvest.notify"):
        out = notify_once(rt, send, Throttle(repeat_s=600, per_min=20))
    assert out["failed"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "harvest.notify" and r.levelno == logging.WARNING]
    assert len(lines) == 1, lines
    assert "harvest: BTCUSDT closed" in lines[0] and "JSON json://127.0.0.1:" in lines[0]
    assert "Connection error" in lines[0]
    assert TOKEN not in caplog.text and PATH_SECRET not in caplog.text
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HarvestCollector(rt, dict))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    [sample] = families["harvest_notify_failures"].samples
    assert sample.name == "harvest_notify_failures_total" and sample.value == 1
    card = build_scorecard(rt)
    assert card["notify_failures"] == 1
    assert "notify failures: 1" in format_scorecard(card)


def test_harvest_notify_with_an_unreachable_url_says_so(rt):
    """The running command (one pass): the failure is a WARNING line on stderr, counted."""
    rt.r.hset(rt.plans.k.counters, f"acct:{rt.settings.account}:positions_unprotected", 1)
    done = _cli("--once", "--timeout", "10", HARVEST_NOTIFY_URLS=_closed_url())
    assert done.returncode == 0, done.stderr
    warned = [x for x in done.stderr.splitlines() if "WARNING harvest.notify: notice not delivered" in x]
    assert len(warned) == 1 and "position without a stop" in warned[0] and "json://127.0.0.1:" in warned[0]
    assert TOKEN not in done.stderr + done.stdout and PATH_SECRET not in done.stderr + done.stdout
    assert rt.plans.counters().get("notify:failed") == 1


def test_notify_test_says_delivered_when_the_webhook_took_it(hook):
    # Redis unreachable on purpose: a test notice needs only the URLs.
    done = _cli("--test", HARVEST_NOTIFY_URLS=hook.url, HARVEST_REDIS_URL="redis://127.0.0.1:1/0")
    assert done.returncode == 0, done.stderr
    assert f"JSON json://127.0.0.1:{hook.server.server_address[1]}: delivered" in done.stdout
    [body] = hook.bodies
    assert body["title"] == "harvest: test notice" and "it arrived" in body["message"]


def test_notify_test_says_not_delivered_and_why_for_an_unreachable_url(hook):
    url = _closed_url()
    done = _cli("--test", "--timeout", "10", HARVEST_NOTIFY_URLS=f"{hook.url},{url}")
    assert done.returncode == 1
    assert f"JSON json://127.0.0.1:{hook.server.server_address[1]}: delivered" in done.stdout
    [line] = [x for x in done.stderr.splitlines() if "NOT delivered" in x]
    assert f"json://127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in line and "Connection error" in line
    assert TOKEN not in done.stderr + done.stdout and PATH_SECRET not in done.stderr + done.stdout
    assert len(hook.bodies) == 1  # the reachable one still got its test notice
    alone = _cli("--test", "--timeout", "10", HARVEST_NOTIFY_URLS=url)
    assert alone.returncode == 1 and "NOT delivered" in alone.stderr and "delivered\n" not in alone.stdout
