"""The operator's console end to end in a real browser (issue 22): headless Chromium from
Debian's package driven by Playwright, against ``harvest console`` and a real worker. The page
shows the positions and plans, a plan's ledger opens one click away, the switch halts trading
(the next plan is blocked ``halted``) and resumes it; changes need the password and the form's
CSRF token; bad requests get a 4xx."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from harvest.ops.procs import free_port
from harvest.services.runtime import build_runtime
from settings import load_settings
from tests.harness import wait_for, worker
from tests.pipeline_helpers import clean, mark_for_r, open_position

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
NS = os.environ["HARVEST_NAMESPACE"] + "-console"
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


@pytest.fixture()
def console():
    port = free_port()
    env = {**os.environ, "HARVEST_NAMESPACE": NS, "HARVEST_CONSOLE_PASSWORD": PASSWORD}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvest.ops.cli", "console", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(url + "/plan/0000000000000000") == 404, 30, what="the console")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_console_in_a_browser(console, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from tasks.app import app
    from workflows import full_chain

    rt = build_runtime(load_settings(namespace=NS))
    clean(rt)
    w = worker({"HARVEST_NAMESPACE": NS}, NS, 2).start()
    try:
        w.wait_ready()
        e, s = 100_000.0, 99_000.0
        open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
        app.send_task("harvest.scan_positions", queue=f"{NS}.scan")
        first = wait_for(
            lambda: next((p for p in rt.plans.all_plans() if p.state == "FILLED"), None), 30, what="the tier's plan"
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(console + "/")
            expect(page.locator("#positions")).to_contain_text("BTCUSDT")
            expect(page.locator("#plans")).to_contain_text("PARTIAL_25")
            expect(page.locator("#trading")).to_have_text("ACTIVE")
            expect(page.locator("#states-chart svg polyline")).not_to_have_count(0)  # plans per state over time
            expect(page.locator("#pnl-chart")).to_contain_text("realized PnL")
            # HARVEST_TEST_CONSOLE_SCREENSHOT=docs/console.png: the README's picture, from this run
            shot = os.environ.get("HARVEST_TEST_CONSOLE_SCREENSHOT") or str(tmp_path / "console.png")
            page.screenshot(path=shot, full_page=True)
            page.click(f"text={first.plan_id}")
            expect(page.locator("#ledger")).to_contain_text(first.plan_id)
            expect(page.locator("#transitions")).to_contain_text("order_filled")
            page.go_back()
            # halt from the page: the next plan is blocked at the guard with reason `halted`
            page.select_option("#state", "HALTED")
            page.fill("#password", PASSWORD)
            page.click("#apply")
            expect(page.locator("#trading")).to_have_text("HALTED")
            full_chain("BTCUSDT").apply_async(queue=f"{NS}.scan")
            blocked = wait_for(
                lambda: next((p for p in rt.plans.all_plans() if p.reason == "halted"), None),
                30,
                what="the plan blocked by the halt",
            )
            assert blocked.state == "REJECTED"
            page.reload()
            expect(page.locator("#plans")).to_contain_text("halted")
            page.select_option("#state", "ACTIVE")
            page.fill("#password", PASSWORD)
            page.click("#apply")
            expect(page.locator("#trading")).to_have_text("ACTIVE")
            browser.close()
        assert rt.r.xlen(f"{NS}:stream:trading") == 2  # both changes recorded, by "console"
    finally:
        w.stop()
        clean(rt)


def test_changes_need_the_password_and_the_form_and_bad_requests_get_a_4xx(console):
    assert _status(console + "/plan/not-a-plan") == 400
    assert _status(console + "/plan/0123456789abcdef") == 404
    page = urllib.request.urlopen(console + "/", timeout=10).read().decode()
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert _status(console + "/trading", {"csrf": "forged", "password": PASSWORD, "state": "HALTED"}) == 403
    assert _status(console + "/trading", {"csrf": csrf, "password": "guess", "state": "HALTED"}) == 401
    assert _status(console + "/trading", {"csrf": csrf, "password": PASSWORD, "state": "PANIC"}) == 400
    assert PASSWORD not in page and "csrf" in page
    rt = build_runtime(load_settings(namespace=NS))
    assert rt.r.hgetall(rt.plans.k.trading) == {}  # nothing changed
