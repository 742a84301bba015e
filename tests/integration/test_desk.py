"""The desk, hardened (issue 31): the console and the views read only harvest's own state and
write nothing (findings 1, 2), escape what they show (3), guard the switch (4, 5), read a plan's
ledger by plan (8) and go on past a record they cannot read (9). Each test fails on the code
before issue 31. The console runs as a real server (uvicorn in a thread) and is read over HTTP;
the browser test of 100 loads is in tests/system/test_console.py."""

from __future__ import annotations

import dataclasses
import http.cookiejar
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

import pytest
import redis
import uvicorn

from harvest.domain.models import Action, PlanState
from harvest.domain.plans import lineage_id, make_plan_id
from harvest.ops.console import make_app, password_problem
from harvest.ops.procs import free_port
from harvest.store.records import UnreadableRecord
from harvest.store.views import PositionsView
from tests.harness import wait_for
from tests.pipeline_helpers import open_position

PASSWORD = "desk-password-31"


def make_plan(rt, symbol: str = "BTCUSDT", key: str = "full", epoch: str = "L1") -> str:
    """A FULL_CLOSE plan made through PlanStore.create (PROPOSED); its plan_id."""
    now = time.time()
    acct = rt.settings.account
    pid = make_plan_id(acct, symbol, epoch, Action.FULL_CLOSE_PROPOSED, key)
    plan = {
        "lineage": lineage_id(acct, symbol, epoch, Action.FULL_CLOSE_PROPOSED, key),
        "attempt": 0,
        "plan_id": pid,
        "account": acct,
        "symbol": symbol,
        "epoch": epoch,
        "side": "LONG",
        "action": "FULL_CLOSE_PROPOSED",
        "tier": 0,
        "close_fraction": 1.0,
        "created_at": now,
        "expires_at": now + 30,
        "client_order_id": f"hv-{pid}-0",
    }
    assert rt.plans.create(plan, {}) is None
    return pid


@contextmanager
def console(rt, password: str | None = PASSWORD, hosts: tuple[str, ...] = ()):
    """The console's app over ``rt`` served by uvicorn on a free loopback port (a thread)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(rt, password, hosts), host="127.0.0.1", port=port, log_level="error")
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    wait_for(lambda: server.started, 10, what="the console")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


def get(url: str, headers: dict[str, str] | None = None, opener=None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with (opener.open if opener else urllib.request.urlopen)(req, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def post(url: str, data: dict, headers: dict[str, str] | None = None, opener=None) -> int:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode(), headers=headers or {})
    try:
        with (opener.open if opener else urllib.request.urlopen)(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def snapshot(rt) -> dict[bytes, bytes]:
    """Every key of the namespace with its serialized value (DUMP), to show nothing changed."""
    r = redis.Redis.from_url(rt.settings.redis_url)
    try:
        return {k: r.dump(k) for k in r.scan_iter(f"{rt.settings.namespace}:*")}
    finally:
        r.close()


# ---------------------------------------------------------------- 8: the ledger by plan


def test_a_plans_ledger_is_read_by_plan_whatever_the_streams_length(rt):
    old = make_plan(rt, key="old")
    p = rt.r.pipeline(transaction=False)
    for i in range(12_000):  # more than the 10 000 records the ledger used to read
        p.xadd(rt.plans.k.results, {"plan_id": f"{i:016x}", "from": "A", "to": "B", "ts": "0"})
    p.execute()
    new = make_plan(rt, key="new")
    for to, why in ((PlanState.APPROVED, "guard_passed"), (PlanState.SUBMITTED, "order_sent")):
        assert rt.plans.transition(new, to, why)[0]
    assert rt.plans.mark_send(new, 0, "accepted")
    assert [t["to"] for t in rt.plans.history(new)] == ["PROPOSED", "APPROVED", "SUBMITTED"]
    assert [t["reason"] for t in rt.plans.history(new, sends=True)] == [
        "proposed",
        "guard_passed",
        "order_sent",
        "send_accepted",
    ]
    assert [t["to"] for t in rt.plans.history(old)] == ["PROPOSED"]
    with console(rt) as url:
        code, page, _ = get(f"{url}/plan/{new}")
        assert code == 200 and "guard_passed" in page and "send_accepted" in page


# ---------------------------------------------------------------- 9: a record a view cannot read


def test_a_malformed_plan_is_shown_as_unreadable_and_the_views_go_on(rt):
    good = make_plan(rt, key="good")
    bad = make_plan(rt, key="bad")
    rt.r.hset(rt.plans.k.plan(bad), mapping={"state": "FROM_A_NEWER_VERSION", "created_at": "not-a-time"})
    rt.r.hset(rt.plans.k.heartbeat, "scan", "yesterday")
    rt.r.set(rt.plans.k.market("BTCUSDT"), "{not json")
    rt.r.xadd(rt.plans.k.results, {"plan_id": bad, "from": "PROPOSED", "to": "FILLED", "ts": "soon", "data": "{"})
    unreadable: list = []
    assert [p.plan_id for p in rt.plans.all_plans(unreadable=unreadable)] == [good]
    assert [u.key for u in unreadable] == [rt.plans.k.plan(bad)]
    with pytest.raises(UnreadableRecord):
        rt.plans.get(bad)
    with console(rt) as url:
        code, page, _ = get(url + "/")
        assert code == 200, page
        assert good in page and rt.plans.k.plan(bad) in page and "Unreadable records" in page
        assert f"{rt.plans.k.heartbeat}#scan" in page
        code, page, _ = get(f"{url}/plan/{bad}")
        assert code == 200 and "unreadable" in page.lower() and rt.plans.k.plan(bad) in page


# ---------------------------------------------------------------- 1, 2: reading costs nothing, writes nothing


def test_the_console_reads_positions_as_the_scan_stored_them_and_writes_nothing(rt):
    from tasks.scan import scan_positions

    open_position(rt, "BTCUSDT", "LONG", 0.5, 100_000.0, 99_000.0, mark=100_500.0)
    open_position(rt, "ETHUSDT", "SHORT", 2.0, 3_000.0, 3_100.0, mark=2_990.0)
    scan_positions.run(rt.settings.account)
    seen = PositionsView(rt.r, rt.settings.namespace).get(rt.settings.account)
    assert sorted(v.symbol for v in seen.rows) == ["BTCUSDT", "ETHUSDT"]
    # a stale book entry the console used to drop as a ghost, and a position it must not read
    rt.book.put(rt.settings.account, "SOLUSDT", {"epoch": "ghost", "harvested_tier": 0})
    calls = []

    class Untouchable:
        def __getattr__(self, name):
            calls.append(name)
            raise AssertionError(f"the console called the venue: {name}")

    before = snapshot(rt)
    view = dataclasses.replace(rt, venue=Untouchable())
    with console(view) as url:
        for _ in range(5):
            code, page, _ = get(url + "/")
            assert code == 200, page
        assert "BTCUSDT" in page and "ETHUSDT" in page and "s ago" in page
    assert calls == []
    assert snapshot(rt) == before  # not a key changed: the ghost entry is still there
    assert rt.r.exists(f"{rt.plans.k.book_prefix}{rt.settings.account}:SOLUSDT")


# ---------------------------------------------------------------- 3: escaped


def test_a_transition_named_like_markup_reaches_the_page_escaped(rt):
    pid = make_plan(rt)
    evil = "TO<img src=x onerror=alert(1)>"
    rt.r.xadd(rt.plans.k.results, {"plan_id": pid, "from": "PROPOSED", "to": evil, "ts": repr(time.time())})
    rt.r.hset(rt.plans.k.plan(pid), "reason", "<script>alert(2)</script>")
    with console(rt) as url:
        code, page, headers = get(url + "/")
    assert code == 200
    assert "<img src=x" not in page and "<script>alert" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "script-src 'nonce-" in csp
    assert headers.get("x-content-type-options") == "nosniff" and headers.get("x-frame-options") == "DENY"


# ---------------------------------------------------------------- 4, 5: the switch


def test_a_weak_password_stops_the_console_at_start_up(rt):
    assert password_problem(" ") and password_problem("a") and password_problem("aaaaaaaaaaaaaaaa")
    assert password_problem(PASSWORD) is None
    with pytest.raises(ValueError, match="HARVEST_CONSOLE_PASSWORD"):
        make_app(rt, "a")


def _session(url: str):
    """A browser-like client: a cookie jar, the page's form token."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    code, page, _ = get(url + "/", opener=opener)
    assert code == 200
    return opener, re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_wrong_passwords_are_delayed_limited_and_logged(rt, caplog):
    with console(rt) as url:
        opener, csrf = _session(url)
        origin = {"Origin": url}
        t0 = time.monotonic()
        codes = [
            post(url + "/trading", {"csrf": csrf, "password": f"guess{i}", "state": "HALTED"}, origin, opener)
            for i in range(7)
        ]
        took = time.monotonic() - t0
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429], codes
        assert took >= 5 * 0.9  # each wrong password waited about a second
        # locked out: even the right password is refused until the window has passed
        assert post(url + "/trading", {"csrf": csrf, "password": PASSWORD, "state": "HALTED"}, origin, opener) == 429
    assert rt.r.hgetall(rt.plans.k.trading) == {}
    assert sum("wrong password from 127.0.0.1" in r.getMessage() for r in caplog.records) == 5


def test_host_origin_and_per_session_tokens(rt):
    with console(rt, hosts=("desk.example",)) as url:
        port = url.rsplit(":", 1)[1]
        assert get(url + "/", {"Host": f"attacker.example:{port}"})[0] == 400  # DNS rebinding
        assert get(url + "/", {"Host": f"desk.example:{port}"})[0] == 200
        a, token_a = _session(url)
        b, token_b = _session(url)
        assert token_a != token_b  # a token per session, not per process
        good = {"csrf": token_a, "password": PASSWORD, "state": "HALTED"}
        assert post(url + "/trading", good, {"Origin": "http://evil.example"}, a) == 403  # a foreign page
        assert post(url + "/trading", good, {}, a) == 403  # no Origin, no Referer
        assert post(url + "/trading", {**good, "csrf": token_b}, {"Origin": url}, a) == 403  # b's token, a's cookie
        assert post(url + "/trading", good, {"Origin": url}) == 403  # no session cookie
        assert rt.r.hgetall(rt.plans.k.trading) == {}
        assert post(url + "/trading", good, {"Origin": url}, a) in (200, 303)
        assert rt.r.hget(rt.plans.k.trading, "*") == "HALTED"


def test_the_positions_record_of_a_newer_version_is_shown_as_unreadable(rt):
    rt.r.set(PositionsView(rt.r, rt.settings.namespace).key(rt.settings.account), json.dumps({"v": 99, "rows": []}))
    with console(rt) as url:
        code, page, _ = get(url + "/")
    assert code == 200 and "written by a newer version (v=99)" in page


def test_malformed_records_leave_the_scorecard_and_metrics_answering(rt):
    from prometheus_client import CollectorRegistry, generate_latest

    from harvest.ops.metrics import HarvestCollector
    from harvest.ops.scorecard import build_scorecard, format_scorecard

    good = make_plan(rt, key="good")
    bad = make_plan(rt, key="bad")
    rt.r.hset(rt.plans.k.plan(bad), "decision", "{truncated")
    rt.r.hset(rt.plans.k.heartbeat, "scan", "yesterday")
    rt.r.hset(rt.plans.k.counters, "scan:runs", "many")
    rt.r.hset(rt.plans.k.metrics_plans, f"{rt.settings.account}|FULL_CLOSE_PROPOSED|FILLED", "x")
    rt.r.set(rt.plans.k.market("BTCUSDT"), "{not json")
    rt.r.hset(rt.plans.k.counters, "guard:evil\nplans: 999  executed: 999", 1)  # a name that forges a line
    card = build_scorecard(rt)
    assert card["plans"] == 1
    keys = {u["key"] for u in card["unreadable_records"]}
    assert {rt.plans.k.plan(bad), f"{rt.plans.k.heartbeat}#scan", rt.plans.k.market("BTCUSDT")} <= keys
    text = format_scorecard(card)
    assert f"unreadable record: {rt.plans.k.plan(bad)}" in text
    assert not any(line.startswith("plans: 999") for line in text.splitlines()) and "evil\\nplans" in text
    reg = CollectorRegistry()
    reg.register(HarvestCollector(rt, lambda: {}))
    text = generate_latest(reg).decode()
    assert f'harvest_unreadable_records{{key="{rt.plans.k.counters}#scan:runs"}} 1.0' in text
    assert f'harvest_unreadable_records{{key="{rt.plans.k.market("BTCUSDT")}"}} 1.0' in text
    assert good  # the good plan is counted in the gauge as before
    assert "harvest_plans{" in text


def test_harvest_plans_lists_an_unreadable_plan_and_goes_on(rt):
    import os
    import subprocess
    import sys

    from harvest.ops.procs import ROOT

    good = make_plan(rt, key="good")
    bad = make_plan(rt, key="bad")
    rt.r.hset(rt.plans.k.plan(bad), "state", "FROM_A_NEWER_VERSION")

    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HARVEST_NAMESPACE": rt.settings.namespace}
        return subprocess.run(
            [sys.executable, "-m", "harvest.ops.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = cli("plans")
    assert out.returncode == 0, out.stderr
    assert good in out.stdout and f"UNREADABLE  {rt.plans.k.plan(bad)}" in out.stdout and "1 unreadable" in out.stdout
    shown = cli("plan", "show", bad)
    assert shown.returncode == 1 and "unreadable record" in shown.stderr and "Traceback" not in shown.stderr
