"""The compose stack's shape in real processes (issue 33, item 1): a Celery worker whose
``HARVEST_FAPI_URL`` names the emulator by a host name that is not loopback to harvest starts
and carries a plan to FILLED through it; pointed at a server that does not answer the
emulator's handshake (a 404), it stops at start-up, before its pool forks, with one line naming
HARVEST_FAPI_URL, and that server receives the handshake once and nothing else.

The network here is loopback only: the host name is this machine's own (``socket.gethostname()``,
which /etc/hosts resolves to a loopback address on a usual Linux install), so the worker
process resolves it itself, with nothing patched; where it does not resolve to loopback the
tests skip with that reason."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harvest.domain.models import Action
from harvest.domain.plans import make_plan_id
from harvest.venues.sim.emulator import Emulator
from settings import is_loopback_url
from tasks.app import app
from tests.harness import wait_for, worker
from tests.pipeline_helpers import epoch, mark_for_r, open_position, wait_terminal

KEY, SECRET = "remote-workers-key-3c1d", "remote-workers-secret-8e2b"
NS = os.environ["HARVEST_NAMESPACE"]


def _host() -> tuple[str, str]:
    name = socket.gethostname()
    try:
        addr = socket.gethostbyname(name)
    except OSError as e:
        pytest.skip(f"this machine's host name {name!r} does not resolve ({e})")
    if is_loopback_url(f"http://{name}/") or not ipaddress.ip_address(addr).is_loopback:
        pytest.skip(f"host name {name!r} resolves to {addr}: no non-loopback name for a loopback address here")
    return name, addr


@pytest.fixture(scope="module")
def host():
    return _host()


@pytest.fixture(scope="module")
def emu(host):
    from harvest.services.runtime import build_runtime
    from settings import load_settings

    s = load_settings()
    rt = build_runtime(s)
    e = Emulator(rt.r, s.namespace, s.account, KEY, SECRET, clock=rt.clock, host=host[1]).start()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def remote_worker(emu, host):
    url = f"http://{host[0]}:{emu.port}/fapi"
    assert not is_loopback_url(url)  # refused by the settings before issue 33
    env = {
        "HARVEST_FAPI_URL": url,
        "HARVEST_API_KEY": KEY,
        "HARVEST_API_SECRET": SECRET,
        "HARVEST_VENUE_TIMEOUT_S": "2.0",
    }
    w = worker(env, NS).start()
    w.wait_ready()
    yield w
    w.stop()


@pytest.fixture()
def rt(remote_worker, emu, rt):
    """The shared clean runtime (tests/integration/conftest.py), once the worker runs."""
    emu.faults.clear()
    return rt


def test_a_worker_reaches_another_hosts_emulator_and_fills_a_plan(rt, emu, remote_worker):
    e, s = 100_000.0, 99_000.0
    open_position(rt, "BTCUSDT", "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.1, "LONG"))
    app.send_task("harvest.scan_positions", queue=f"{NS}.scan")
    wait_for(lambda: rt.book.get_many(rt.settings.account, ["BTCUSDT"])[0], 30, what="book entry")
    pid = make_plan_id(rt.settings.account, "BTCUSDT", epoch(rt, "BTCUSDT"), Action.PARTIAL_25, "tier=1")
    plan = wait_terminal(rt, pid, timeout=40)
    assert plan.state == "FILLED", (plan.reason, plan.error_code, plan.error_message)
    orders = [o for o in emu.venue.orders() if o.client_order_id.startswith(f"hv-{pid}-")]
    assert len(orders) == 1 and orders[0].client_order_id == plan.client_order_id
    assert rt.venue.position("BTCUSDT").qty == pytest.approx(0.75)


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.seen.append(self.path.split("?")[0])
        self.send_error(404)

    do_POST = do_DELETE = do_PUT = do_GET

    def log_message(self, *a):
        pass


def test_a_worker_pointed_at_another_server_stops_at_start_up(host):
    srv = ThreadingHTTPServer((host[1], 0), _NotFound)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://{host[0]}:{srv.server_address[1]}/fapi"
    w = worker({"HARVEST_FAPI_URL": url, "HARVEST_API_KEY": KEY, "HARVEST_API_SECRET": SECRET}, NS, concurrency=1)
    try:
        w.start()
        wait_for(lambda: w.proc.poll() is not None, 60, 0.2, what="the worker to stop")
        assert w.proc.returncode != 0
        assert f"invalid setting HARVEST_FAPI_URL={url} is not harvest's fapi emulator" in w.output()
        assert SECRET not in w.output()
        assert "ready." not in w.output()  # stopped before its pool started
        assert srv.seen == ["/_emu/hello"]  # the handshake, once, and nothing else
    finally:
        w.stop()
        srv.shutdown()
        srv.server_close()
