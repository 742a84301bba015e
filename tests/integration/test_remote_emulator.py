"""The emulator on another host of a paper deployment (issue 33, item 1): a non-loopback
``HARVEST_FAPI_URL`` is accepted only with ``HARVEST_VENUE=paper`` and only when the server
answers the emulator's handshake, proving the account's API secret, before any other request.

This machine's network is loopback only, so "another host" is a name that is not
``localhost``: ``harvest-emulator.test`` (RFC 6761's reserved ``.test``), resolved to
127.0.0.1 by patching ``socket.getaddrinfo`` for that one name. Everything else is real: the
settings, ``build_venue``'s start-up check, python-binance against the emulator over HTTP, and
plain ``http.server`` servers standing for a real exchange (a 404, a Binance-like JSON) and for
an impostor that copies the fixed handshake answer without the secret."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from harvest.services.runtime import build_venue
from harvest.venues.base import VenueError
from harvest.venues.binance import emulator_handshake, make_client
from harvest.venues.binance_streams import stream_url_of
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.emulator import HANDSHAKE, Emulator
from settings import SettingsError, is_loopback_url, load_settings
from tests.pipeline_helpers import T0

KEY, SECRET = "remote-emu-key", "remote-emu-secret"
HOST = "harvest-emulator.test"
NS = "emu-remote"


@pytest.fixture(autouse=True)
def resolve_host(monkeypatch):
    """``harvest-emulator.test`` resolves to 127.0.0.1 (the only network here); the URL's host
    is still a name that is not loopback to harvest (:func:`settings.is_loopback_url`)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *a, **kw):
        return real("127.0.0.1" if host == HOST else host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert not is_loopback_url(f"http://{HOST}:1/fapi")


@pytest.fixture()
def r(redis_url):
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    for k in c.scan_iter(f"{NS}:*"):
        c.delete(k)
    return c


@pytest.fixture()
def clock(r):
    c = MarketClock(r, NS, T0, 0.0)
    c.set(T0, 0.0)
    return c


def settings_for(port: int, redis_url: str, secret: str = SECRET, **kw):
    return load_settings(
        redis_url=redis_url,
        namespace=NS,
        venue="paper",
        fapi_url=f"http://{HOST}:{port}/fapi",
        api_key=KEY,
        api_secret=secret,
        venue_timeout_s=2.0,
        **kw,
    )


class _Recorder(BaseHTTPRequestHandler):
    """Records every request line; answers what the server's ``answer`` says."""

    def _any(self):
        self.server.seen.append(f"{self.command} {self.path.split('?')[0]}")
        status, headers, body = self.server.answer(self)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PUT = _any

    def log_message(self, *a):
        pass


@pytest.fixture()
def serve():
    servers = []

    def start(answer) -> ThreadingHTTPServer:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        srv.seen, srv.answer = [], answer
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def not_found(h):
    return 404, {"Content-Type": "text/html"}, b"<html><body>404 Not Found</body></html>"


def binance_like(h):
    # what fapi.binance.com answers an unknown path, and JSON that parses for every other one
    if h.path.startswith("/fapi/v1/time"):
        return 200, {"Content-Type": "application/json"}, b'{"serverTime": 1765000000000}'
    return (
        200,
        {"Content-Type": "application/json"},
        b'{"code": -5000, "msg": "Path /_emu/hello, Method GET is invalid"}',
    )


def impostor(h):
    # copies the fixed handshake answer; cannot compute the proof without the account's secret
    body = f'{{"emulator": "{HANDSHAKE}", "namespace": "harvest", "stream_url": null, "proof": "{"0" * 64}"}}'
    return 200, {"Content-Type": "application/json"}, body.encode()


def test_the_settings_accept_another_hosts_emulator_only_on_the_paper_venue(redis_url):
    s = settings_for(8790, redis_url)
    assert (s.venue, s.fapi_url) == ("paper", f"http://{HOST}:8790/fapi")
    for venue in ("testnet", "live"):
        with pytest.raises(SettingsError) as e:
            load_settings(
                venue=venue,
                live_trading_opt_in=True,
                fapi_url=f"http://{HOST}:8790/fapi",
                **{"api_key": KEY, "api_secret": SECRET},
            )
        assert "HARVEST_FAPI_URL" in str(e.value)


def test_an_emulator_on_another_host_is_accepted_and_trades(redis_url, r, clock):
    emu = Emulator(r, NS, "paper", KEY, SECRET, clock=clock, host="127.0.0.1").start()
    try:
        emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0, stop_price=99_000.0)
        emu.venue.set_mark("BTCUSDT", 101_000.0)
        s = settings_for(emu.port, redis_url)
        venue = build_venue(s, r, clock)  # start-up: the handshake proves the secret
        (pos,) = venue.positions()
        assert (pos.symbol, pos.qty) == ("BTCUSDT", pytest.approx(0.010))
        assert stream_url_of(s) == f"ws://{HOST}:{emu.streams.port}/"  # the streams on the same host
        answer = emulator_handshake(s.fapi_url, 2.0, KEY, SECRET)
        assert answer["emulator"] == HANDSHAKE and len(answer["proof"]) == 64
    finally:
        emu.stop()


def test_an_emulator_holding_another_secret_is_refused(redis_url, r, clock):
    emu = Emulator(r, NS, "paper", KEY, "not-the-accounts-secret", clock=clock).start()
    try:
        with pytest.raises(SettingsError) as e:
            build_venue(settings_for(emu.port, redis_url), r, clock)
        assert "HARVEST_FAPI_URL" in str(e.value) and "does not prove" in str(e.value)
        assert emu.order_log() == []
    finally:
        emu.stop()


@pytest.mark.parametrize("answer", [not_found, binance_like, impostor], ids=["404", "binance-like", "impostor"])
def test_a_server_that_does_not_answer_the_handshake_is_refused_and_gets_nothing_else(
    answer, serve, redis_url, r, clock
):
    srv = serve(answer)
    port = srv.server_address[1]
    s = settings_for(port, redis_url)
    with pytest.raises(SettingsError) as e:
        build_venue(s, r, clock)
    msg = str(e.value)
    assert f"HARVEST_FAPI_URL=http://{HOST}:{port}/fapi" in msg and "not harvest's fapi emulator" in msg
    assert SECRET not in msg
    # the venue's client and the streams refuse it the same way, before any request of theirs
    with pytest.raises(VenueError) as ve:
        make_client(KEY, SECRET, s.fapi_url, False, 2.0, 5000)
    assert not ve.value.retryable
    with pytest.raises(VenueError):
        stream_url_of(s)
    assert srv.seen == ["GET /_emu/hello"] * 3  # the handshake, and nothing else


def test_a_redirect_is_not_followed(serve, redis_url, r, clock):
    target = serve(impostor)
    port = target.server_address[1]
    srv = serve(lambda h: (302, {"Location": f"http://{HOST}:{port}/_emu/hello"}, b""))
    with pytest.raises(SettingsError):
        build_venue(settings_for(srv.server_address[1], redis_url), r, clock)
    assert srv.seen == ["GET /_emu/hello"] and target.seen == []


def test_an_emulator_not_up_yet_delays_nothing_and_gets_no_order_until_it_answers(redis_url, r, clock, caplog):
    from harvest.ops.procs import free_port

    port = free_port()
    s = settings_for(port, redis_url)
    venue = build_venue(s, r, clock)  # start-up goes on, with a warning
    assert any("did not answer the emulator's handshake" in m for m in caplog.messages)
    with pytest.raises(VenueError) as e:
        venue.positions()
    assert e.value.retryable  # nothing sent; the task retries later
    emu = Emulator(r, NS, "paper", KEY, SECRET, clock=clock, port=port).start()
    try:
        assert venue.positions() == []  # the handshake passes now, then the request goes
    finally:
        emu.stop()


def test_loopback_keeps_working_without_the_proof(serve):
    # on loopback the fixed answer suffices, as before (the local machine is trusted)
    srv = serve(lambda h: (200, {"Content-Type": "application/json"}, f'{{"emulator": "{HANDSHAKE}"}}'.encode()))
    assert emulator_handshake(f"http://127.0.0.1:{srv.server_address[1]}/fapi", 2.0)["emulator"] == HANDSHAKE
    with pytest.raises(VenueError) as e:  # the same server on another host's name must prove the secret
        emulator_handshake(f"http://{HOST}:{srv.server_address[1]}/fapi", 2.0, KEY, SECRET)
    assert "does not prove" in e.value.message
    with pytest.raises(VenueError) as e:  # and is not even asked without a key
        emulator_handshake(f"http://{HOST}:{srv.server_address[1]}/fapi", 2.0)
    assert srv.seen == ["GET /_emu/hello", "GET /_emu/hello"]
