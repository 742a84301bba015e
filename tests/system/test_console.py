"""The operator's console end to end in a real browser (issue 22): headless Chromium from
Debian's package driven by Playwright, against ``harvest console`` watching a running ``harvest
demo`` (its worker, beat, emulator and python-binance). The page shows the positions and plans,
a plan's ledger opens one click away, the switch halts trading
(the next plan is blocked ``halted``) and resumes it; changes need the password and the form's
CSRF token; bad requests get a 4xx."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from harvest.ops.demo import demo_accounts
from harvest.ops.procs import free_port
from harvest.services.runtime import build_runtime
from settings import load_settings
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
NS = os.environ["HARVEST_NAMESPACE"] + "-console"
DEMO_NS = os.environ["HARVEST_NAMESPACE"] + "-demo"
#: a demo window whose first plans come a few market hours in (seconds of wall time)
DEMO_START, DEMO_HOURS, DEMO_SPEED = "2025-06-21T12:00:00Z", 12, 480
PASSWORD = "console-pw-27"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def _status(url: str, data: dict | None = None) -> int:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError:  # not listening (yet)
        return 0


@contextmanager
def _console(namespace: str, env: dict[str, str]):
    """``harvest console`` on ``namespace`` (a free loopback port); yields its URL."""
    port = free_port()
    env = {**env, "HARVEST_NAMESPACE": namespace, "HARVEST_CONSOLE_PASSWORD": PASSWORD}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvest.ops.cli", "console", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(url + "/plan/0000000000000000") == 404, 30, what="the console")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def console():
    with _console(NS, dict(os.environ)) as url:
        yield url


def _user_env() -> dict[str, str]:
    """The environment of a new user's shell: no HARVEST_* setting but the Redis to use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVEST_")}
    env["HARVEST_REDIS_URL"] = os.environ["HARVEST_REDIS_URL"]
    return env


@pytest.fixture()
def demo(tmp_path):
    """``harvest demo --namespace DEMO_NS`` as a user runs it (python-binance → the fapi
    emulator, a real worker and beat): a window whose first plans come within seconds. Yields
    (process, its output file); interrupted (SIGINT: it cleans up) if the test leaves it running."""
    out = tmp_path / "demo.out"
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harvest.ops.cli", "demo", "--namespace", DEMO_NS]
            + ["--start", DEMO_START, "--hours", str(DEMO_HOURS), "--speed", str(DEMO_SPEED)],
            cwd=ROOT,
            env=_user_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _profit_mark(p) -> float:
    """A mark far in a position's favour (10 % from entry: ≥ 20R at the demo's 0.5 % stop)."""
    return p.entry_price * (1.10 if p.side.value == "LONG" else 0.90)


def test_the_console_in_a_browser_during_a_demo(demo, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from harvest.ops.loadgen import celery_app, runtime
    from workflows import full_chain

    proc, out = demo
    # the demo's three accounts: the console (and this test's view) are configured alike, as the
    # demo's "watch it" line says
    accounts = {"HARVEST_ACCOUNTS": json.dumps(demo_accounts(3))}
    env = {"HARVEST_REDIS_URL": os.environ["HARVEST_REDIS_URL"], "HARVEST_NAMESPACE": DEMO_NS, **accounts}
    rt = runtime(env)
    client = celery_app(env)  # publishes to the demo's queues
    wait_for(lambda: "watch it: " in out.read_text(), 60, what="the demo's watch line")
    assert accounts["HARVEST_ACCOUNTS"] in out.read_text()
    with _console(DEMO_NS, {**_user_env(), **accounts}) as console:
        first = wait_for(
            lambda: next((p for p in rt.plans.all_plans() if p.state == "FILLED"), None),
            120,
            what="the demo's first executed plan",
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(console + "/")
            # the demo's open positions (they close and re-open as the market runs)
            open_now = re.compile("|".join(p.symbol for p in rt.venue.positions()))
            expect(page.locator("#positions")).to_contain_text(open_now, timeout=15_000)
            expect(page.locator("#plans")).to_contain_text(first.plan_id, timeout=15_000)
            expect(page.locator("#trading")).to_have_text("ACTIVE")
            expect(page.locator("#states-chart svg polyline")).not_to_have_count(0)  # plans per state over time
            expect(page.locator("#pnl-chart")).to_contain_text("realized PnL")
            # HARVEST_TEST_CONSOLE_SCREENSHOT=docs/console.png: the README's picture, from this run
            shot = os.environ.get("HARVEST_TEST_CONSOLE_SCREENSHOT") or str(tmp_path / "console.png")
            page.screenshot(path=shot, full_page=True)
            page.click(f"text={first.plan_id}")
            expect(page.locator("#ledger")).to_contain_text(first.plan_id)
            for seen in ("proposed", "guard_passed", "order_sent", "FILLED"):  # the life cycle, sent and done
                expect(page.locator("#transitions")).to_contain_text(seen)
            page.go_back()
            # halt from the page; the beat's scans now start no chain, and a chain started on
            # demand for a position whose mark is far in profit is blocked at the guard: `halted`
            page.select_option("#state", "HALTED")
            page.fill("#password", PASSWORD)
            page.click("#apply")
            expect(page.locator("#trading")).to_have_text("HALTED")
            pos = rt.venue.positions()[0]
            rt.venue.set_mark(pos.symbol, _profit_mark(pos))
            try:
                full_chain(pos.symbol, app=client).apply_async(queue=f"{DEMO_NS}.scan")
                blocked = wait_for(
                    # (a chain of another position in flight at the halt may be blocked too)
                    lambda: next(
                        (p for p in rt.plans.all_plans() if p.reason == "halted" and p.symbol == pos.symbol), None
                    ),
                    30,
                    what="the plan blocked by the halt",
                )
            finally:
                rt.venue.set_mark(pos.symbol, None)  # back to the replay before trading resumes
            assert blocked.state == "REJECTED" and blocked.symbol == pos.symbol
            page.reload()
            expect(page.locator("#plans")).to_contain_text("halted")
            page.select_option("#state", "ACTIVE")
            page.fill("#password", PASSWORD)
            page.click("#apply")
            expect(page.locator("#trading")).to_have_text("ACTIVE")
            browser.close()
        assert rt.r.xlen(f"{DEMO_NS}:stream:trading") == 2  # both changes recorded, by "console"
        # the demo runs to its end and drains: every plan terminal, the halt in its scorecard
        assert proc.wait(timeout=DEMO_HOURS * 3600 / DEMO_SPEED + 120) == 0, out.read_text()[-3000:]
        # the chain started above, and any a streamed mark fired before the next scan dropped the
        # triggers (the mark set far in profit may cross one): all blocked, none sent
        assert re.search(r"guard blocks: .*\bhalted=\d+", out.read_text()), out.read_text()[-3000:]
    client.close()


def test_changes_need_the_password_and_the_form_and_bad_requests_get_a_4xx(console):
    import http.cookiejar

    assert _status(console + "/plan/not-a-plan") == 400
    assert _status(console + "/plan/0123456789abcdef") == 404
    # a browser's session: its cookie and the form token made for it; changes come from the page
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(console + "/", timeout=10).read().decode()
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]

    def change(data: dict) -> int:
        req = urllib.request.Request(
            console + "/trading", data=urllib.parse.urlencode(data).encode(), headers={"Origin": console}
        )
        try:
            with opener.open(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert change({"csrf": "forged", "password": PASSWORD, "state": "HALTED"}) == 403
    assert change({"csrf": csrf, "password": "guess", "state": "HALTED"}) == 401
    assert change({"csrf": csrf, "password": PASSWORD, "state": "PANIC"}) == 400
    assert _status(console + "/trading", {"csrf": csrf, "password": PASSWORD, "state": "HALTED"}) == 403  # no session
    assert PASSWORD not in page and "csrf" in page
    rt = build_runtime(load_settings(namespace=NS))
    assert rt.r.hgetall(rt.plans.k.trading) == {}  # nothing changed


def test_a_hundred_loads_in_a_minute_cost_the_exchange_no_weight(tmp_path):
    """Issue 31, finding 1: the console read positions from the exchange at every load (45
    weight by Binance's table) and 23 loads a minute held the scan's own reads back. Now it
    reads what the scan stored: 100 loads by a real browser, the emulator's weight counter and
    every key of the namespace unchanged."""
    from playwright.sync_api import expect, sync_playwright

    from harvest.ops.loadgen import clean, runtime, start_emulator
    from harvest.store.views import PositionsView

    ns = NS + "-weight"
    env = {**_user_env(), "HARVEST_NAMESPACE": ns}
    rt = runtime(env)
    clean(rt)
    emu = start_emulator(rt, env, streams=False)
    try:
        emu.venue.set_position("BTCUSDT", "LONG", 0.01, 100_000.0, 10.0, opened_at=1.7e9, stop_price=99_000.0)
        emu.venue.set_mark("BTCUSDT", 100_500.0)
        brt = runtime(env)  # python-binance through the emulator, as the scan reads it
        vps = brt.venue.positions()
        p = brt.r.pipeline()
        PositionsView(brt.r, ns).put(p, brt.settings.account, vps, time.time(), brt.market_now())
        p.execute()
        spent = emu.weight_spent()
        raw = redis.Redis.from_url(os.environ["HARVEST_REDIS_URL"])  # DUMP answers bytes

        def state() -> dict[bytes, bytes]:
            return {k: raw.dump(k) for k in raw.scan_iter(f"{ns}:*") if b":emu:" not in k}

        keys = state()
        with _console(ns, env) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            t0 = time.monotonic()
            for _ in range(100):
                page.goto(url + "/")
                expect(page.locator("#positions")).to_contain_text("BTCUSDT")
            took = time.monotonic() - t0
            browser.close()
        assert took < 60, took
        assert emu.weight_spent() == spent  # not one request weight
        assert state() == keys
    finally:
        emu.stop()
