"""Request weight as Binance charges it (issue 32): funding read once after each funding time,
separate budgets per egress address, the cheaper per-symbol reads — the real python-binance
client against the fapi emulator, whose weights are Binance's and counted per client IP."""

from __future__ import annotations

import time

import pytest

from harvest.data import load_funding
from harvest.venues.base import VenueError
from harvest.venues.binance import BinanceVenue, make_client, weight_spent
from harvest.venues.sim.emulator import Emulator
from settings.egress import Egress
from tests.integration.test_binance_venue import KEY, SECRET, fresh
from tests.pipeline_helpers import T0

NS = "emu-weight"
INCOME = "GET /fapi/v1/income"


def venue(emu: Emulator, limit: int = 1800, egress: Egress | None = None, account: str = "paper") -> BinanceVenue:
    """The adapter as the runtime builds it for the emulator (shared market clock; funding
    read by funding times: ``funding_poll_s`` not 0)."""
    return BinanceVenue(
        emu.r,
        emu.ns,
        lambda: make_client(KEY, SECRET, emu.url, False, 2.0, 5000, egress=egress),
        limit,
        clock=emu.clock,
        funding_poll_s=60.0,
        account=account,
        egress=egress.name if egress else "default",
    )


@pytest.fixture()
def emu(redis_url):
    r, clock = fresh(redis_url, NS)
    e = Emulator(r, NS, "paper", KEY, SECRET, clock=clock).start(streams=False)
    yield e
    e.stop()


def requests_to(emu: Emulator, endpoint: str) -> int:
    return emu.weight_by_endpoint().get(endpoint, (0, 0))[0]


def test_funding_is_read_once_after_a_funding_time(emu):
    """Over a span with one funding time, the income endpoint (weight 30) is asked exactly once
    after it, however many positions reads the scans make; before it, never (old: every 60 s)."""
    sym = "BTCUSDT"
    emu.clock.set(T0 + 60.0, 0.0)
    emu.venue.set_mark(sym, 100_000.0)
    emu.venue.open_position(sym, "LONG", 0.5, 10.0, stop_price=99_000.0, client_order_id="strategy-open-btc")
    ft, _ = load_funding(sym)
    funding_time = float(ft[ft > T0 + 60.0][0])
    bv = venue(emu)
    [p] = bv.positions()  # first sight of the epoch: its funding so far is read once
    assert requests_to(emu, INCOME) == 1 and p.funding_paid == 0.0
    emu.reset_tally()
    for t in range(120, int(funding_time - T0) - 60, 1800):  # scans until just before the funding time
        emu.clock.set(T0 + t, 0.0)
        bv.positions()
    assert requests_to(emu, INCOME) == 0
    scans_after = 0
    for dt in (60.0, 120.0, 600.0, 3600.0, 7200.0):  # scans after it (the next is 8 h later)
        emu.clock.set(funding_time + dt, 0.0)
        [p] = bv.positions()
        scans_after += 1
    assert requests_to(emu, INCOME) == 1
    assert p.funding_paid == pytest.approx(emu.venue.position(sym).funding_paid) and p.funding_paid != 0.0
    # a second process of the same account (another worker) does not read it again
    assert venue(emu).positions()[0].funding_paid == pytest.approx(p.funding_paid)
    assert requests_to(emu, INCOME) == 1
    # premiumIndex (weight 1 for every symbol) was read for the funding times, not per scan
    assert requests_to(emu, "GET /fapi/v1/premiumIndex") <= 1 < scans_after


def test_a_funding_fee_on_the_stream_makes_the_next_read_read_income(emu):
    sym = "ETHUSDT"
    emu.clock.set(T0 + 60.0, 0.0)
    emu.venue.set_mark(sym, 2_500.0)
    emu.venue.open_position(sym, "SHORT", 2.0, 10.0, stop_price=2_600.0, client_order_id="strategy-open-eth")
    bv = venue(emu)
    bv.positions()
    emu.reset_tally()
    bv.positions()
    assert requests_to(emu, INCOME) == 0
    bv.funding_settled()  # harvest streams saw ACCOUNT_UPDATE with reason FUNDING_FEE
    bv.positions()
    bv.positions()
    assert requests_to(emu, INCOME) == 1


def same_minute(fn):
    """Run ``fn``; skip when a minute boundary passed meanwhile (every weight counter restarts)."""
    minute = int(time.time() // 60)
    fn()
    if int(time.time() // 60) != minute:
        pytest.skip("a minute boundary passed during the test (the weight counters restarted)")


def test_two_egress_addresses_keep_separate_budgets(emu):
    """Accounts on 127.0.0.1 and 127.0.0.2 (Linux routes 127/8 to lo): each address has its own
    local budget and the emulator counts each address's weight apart, as Binance does per IP."""
    emu.venue.set_mark("BTCUSDT", 100_000.0)
    a = venue(emu, limit=10, egress=Egress("lo-1", source="127.0.0.1"), account="a")
    b = venue(emu, limit=10, egress=Egress("lo-2", source="127.0.0.2"), account="b")
    for v in (a, b):
        v.r.delete(v.budget.key())

    def run():
        for _ in range(7):  # reads may use 7 of 10 a minute
            a.mark_price("BTCUSDT")
        with pytest.raises(VenueError) as e:
            a.mark_price("BTCUSDT")
        assert e.value.code == -1003 and e.value.retryable
        for _ in range(7):  # the other egress's budget is whole
            b.mark_price("BTCUSDT")
        assert a.budget.used() == b.budget.used() == 7
        assert emu.weight_used("127.0.0.1") >= 7 and emu.weight_used("127.0.0.2") == 7

    same_minute(run)
    by_ip = emu.weight_by_ip()
    assert by_ip["127.0.0.2"] == (7, 7)  # every request of b left by its address
    held = a.r.hgetall(a.budget.k_held)
    assert held == {"lo-1|read": "1"}


def test_a_429_holds_only_the_egress_it_answered(redis_url):
    """The emulator's limit is per IP: the address that passed it gets 429 (and backs off, every
    worker of that egress), the other address is answered and not held."""
    r, clock = fresh(redis_url, NS)
    emu = Emulator(r, NS, "paper", KEY, SECRET, clock=clock, weight_limit_1m=5).start(streams=False)
    try:
        emu.venue.set_mark("BTCUSDT", 100_000.0)
        a = venue(emu, egress=Egress("lo-1", source="127.0.0.1"), account="a")
        b = venue(emu, egress=Egress("lo-2", source="127.0.0.2"), account="b")

        def run():
            with pytest.raises(VenueError) as e:
                for _ in range(6):
                    a.mark_price("BTCUSDT")
            assert e.value.http_status == 429 and e.value.retryable
            assert r.exists(a.budget.k_backoff) and not r.exists(b.budget.k_backoff)
            served = emu.weight_by_ip()["127.0.0.1"][0]
            with pytest.raises(VenueError):  # held here: nothing more reaches the exchange from a
                a.mark_price("BTCUSDT")
            assert emu.weight_by_ip()["127.0.0.1"][0] == served
            assert b.mark_price("BTCUSDT") == 100_000.0

        same_minute(run)
    finally:
        emu.stop()


def test_a_ten_position_account_reads_stops_per_symbol_and_its_weight_is_tallied(emu):
    """Ten positions: the stops are read per symbol (10 × 1) rather than for every symbol (40);
    the adapter's per-minute tally by account and endpoint (the scorecard's line) matches what
    the emulator charged."""
    syms = [f"W{i:03d}USDT" for i in range(10)]
    emu.venue.list_symbols({s: "BTCUSDT" for s in syms})  # ten symbols trading like BTCUSDT
    emu.clock.set(T0 + 60.0, 0.0)
    for s in syms:
        emu.venue.set_mark(s, 100_000.0)
        emu.venue.open_position(s, "LONG", 0.01, 5.0, stop_price=95_000.0)
    bv = venue(emu, account="ten")
    bv.positions()  # first sight: openings, leverage, funding
    emu.reset_tally()

    def run():
        assert len(bv.positions()) == len(syms)
        tally = emu.weight_by_endpoint()
        assert tally["GET /fapi/v1/openAlgoOrders"] == (len(syms), len(syms))
        assert tally["GET /fapi/v3/positionRisk"] == (1, 5)
        assert set(tally) == {"GET /fapi/v1/openAlgoOrders", "GET /fapi/v3/positionRisk"}
        spent = bv.r.hgetall(bv.budget.spent_key())
        assert int(spent["ten|GET /fapi/v1/openAlgoOrders"]) >= len(syms)

    same_minute(run)
    assert BinanceVenue.per_symbol("futures_get_open_orders", syms, conditional=True)
    assert not BinanceVenue.per_symbol("futures_get_open_orders", [f"S{i}USDT" for i in range(40)])
    assert not BinanceVenue.per_symbol("futures_get_open_orders", None)
    assert weight_spent(bv.r, NS, minutes=1, now=time.time() + 60)["accounts"] >= 1


def test_metrics_and_scorecard_show_each_egress_weight_and_the_holds(emu):
    """``/metrics`` ``harvest_weight_used{egress}`` and ``harvest_weight_held_total{egress,priority}``,
    the scorecard's weight lines (per egress, held back, per account per minute by endpoint)."""
    from harvest.ops.metrics import HarvestCollector
    from harvest.ops.scorecard import _weight, format_scorecard
    from harvest.services.runtime import build_runtime
    from settings import load_settings

    emu.venue.set_mark("BTCUSDT", 100_000.0)
    a = venue(emu, limit=10, egress=Egress("lo-1", source="127.0.0.1"), account="a")
    b = venue(emu, limit=10, egress=Egress("lo-2", source="127.0.0.2"), account="b")
    rt = build_runtime(load_settings(namespace=NS, egress="lo-1=127.0.0.1,lo-2=127.0.0.2", venue_weight_limit_1m=10))

    def run():
        for _ in range(3):
            b.mark_price("BTCUSDT")
        for _ in range(8):
            try:
                a.mark_price("BTCUSDT")
            except VenueError:
                pass
        fams = {f.name: f for f in HarvestCollector(rt, lambda: {}).collect()}
        used = {s.labels["egress"]: s.value for s in fams["harvest_weight_used"].samples}
        assert used == {"lo-1": 7.0, "lo-2": 3.0}
        held = {(s.labels["egress"], s.labels["priority"]): s.value for s in fams["harvest_weight_held"].samples}
        assert held == {("lo-1", "read"): 1.0}
        assert fams["harvest_exchange_weight_used"].samples[0].value == 7.0
        card = _weight(rt)
        assert card["used_this_minute"] == {"lo-1": 7, "lo-2": 3} and card["held"] == {"lo-1|read": 1}

    same_minute(run)
    later = weight_spent(rt.r, NS, minutes=1, now=time.time() + 60)  # the minute just spent, complete
    assert later["accounts"] == 2 and later["by_endpoint"] == {"GET /fapi/v1/premiumIndex": 5.0}
    text = format_scorecard({**_minimal_card(), "weight": _weight(rt)})
    assert "weight per account per minute" in text and "held back: lo-1|read=1" in text


def _minimal_card() -> dict:
    return {
        "plans": 0,
        "executed": 0,
        "non_terminal": 0,
        "duplicates_blocked": 0,
        "scans": 0,
        "plans_by_action": {},
        "orders": {},
        "guard_blocks": {},
        "malformed": {},
        "realized_pnl_total": 0.0,
        "realized_pnl": {},
        "positions_open": 0,
        "queue_depth": {},
    }


def test_an_audit_reads_the_stops_once_and_leverage_only_when_it_may_have_changed(emu):
    """positions() then open_orders(symbols=…) (an audit's two questions) read openAlgoOrders once;
    beat's exchangeInfo refresh no longer forgets the leverage (symbolConfig, 5) of every account;
    a position that changes has its leverage read again; an order sent in between is not hidden."""
    syms = [f"V{i:03d}USDT" for i in range(3)]
    emu.venue.list_symbols({s: "BTCUSDT" for s in syms})
    emu.clock.set(T0 + 60.0, 0.0)
    for s in syms:
        emu.venue.set_mark(s, 100_000.0)
        emu.venue.open_position(s, "LONG", 0.01, 5.0, stop_price=95_000.0)
    bv = venue(emu)
    bv.positions()
    emu.reset_tally()
    bv.positions()
    assert len(bv.open_orders(symbols=syms)) == 3  # the three stops
    assert requests_to(emu, "GET /fapi/v1/openAlgoOrders") == 3  # once per symbol, not twice
    assert bv.refresh_exchange_info() > 0
    emu.reset_tally()
    bv.positions()
    assert requests_to(emu, "GET /fapi/v1/symbolConfig") == 0
    emu.venue.open_position(syms[0], "LONG", 0.01, 5.0)  # the strategy adds to one position
    bv.positions()
    assert requests_to(emu, "GET /fapi/v1/symbolConfig") == 1
    bv.positions()
    bv.move_stop(syms[1], "SELL", "96000.0", "hv-00000000000000bb-0")  # a stop moved after the read
    assert {o.stop_price for o in bv.open_orders(symbols=[syms[1]])} == {96_000.0}


def test_an_audit_of_known_symbols_reads_only_the_stops_positions_did_not(emu):
    """open_orders(symbols=known ∪ positions) right after positions(): the positions' stops are
    not read again; a known symbol without a position (a plan's, where an orphan stop could be)
    is read by itself."""
    syms = [f"U{i:03d}USDT" for i in range(3)]
    emu.venue.list_symbols({s: "BTCUSDT" for s in syms})
    emu.clock.set(T0 + 60.0, 0.0)
    for s in syms[:2]:
        emu.venue.set_mark(s, 100_000.0)
        emu.venue.open_position(s, "LONG", 0.01, 5.0, stop_price=95_000.0)
    bv = venue(emu)
    bv.positions()
    emu.reset_tally()
    assert len(bv.positions()) == 2
    got = bv.open_orders(symbols=syms)
    assert sorted(o.symbol for o in got if o.algo) == syms[:2]
    tally = emu.weight_by_endpoint()
    assert tally["GET /fapi/v1/openAlgoOrders"] == (3, 3)  # 2 by positions, 1 for the third symbol
    assert tally["GET /fapi/v1/openOrders"] == (3, 3)


def test_exchange_info_is_read_once_for_the_deployment(emu):
    """Beat's refresh walks every account: one GET /fapi/v1/exchangeInfo for all of them (before:
    one per account), every account's filters from the shared copy."""
    venues = [venue(emu, account=f"acct{i}") for i in range(5)]
    emu.reset_tally()
    counts = {v.refresh_exchange_info() for v in venues}
    assert len(counts) == 1 and counts.pop() >= 6
    assert requests_to(emu, "GET /fapi/v1/exchangeInfo") == 1
    assert all(str(v.filters("BTCUSDT").step_size) == "0.001" for v in venues)
    assert requests_to(emu, "GET /fapi/v1/exchangeInfo") == 1


class _Proxy:
    """A minimal forwarding HTTP proxy on 127.0.0.1 (absolute-URI requests, plain http), counting
    what passes through it: an egress of the proxy kind, in miniature."""

    def __init__(self):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        proxy = self
        self.seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                u = urlsplit(self.path)
                proxy.seen.append(f"{self.command} {u.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                conn.request(self.command, u.path + (f"?{u.query}" if u.query else ""), body or None, headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = do_PUT = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_proxy_egress_carries_every_request_of_its_account(emu):
    """An account on an http:// proxy egress: the handshake and every request go through the
    proxy (python-binance's requests_params), none around it; its budget is the proxy's."""
    proxy = _Proxy()
    try:
        emu.venue.set_mark("BTCUSDT", 100_000.0)
        emu.venue.open_position("BTCUSDT", "LONG", 0.01, 5.0, stop_price=95_000.0)
        egress = Egress("px", proxy=proxy.url)
        bv = venue(emu, egress=egress, account="viaproxy")
        emu.reset_tally()
        bv.positions()
        assert bv.mark_price("BTCUSDT") == 100_000.0
        served = sum(n for n, _ in emu.weight_by_endpoint().values())
        assert "GET /_emu/hello" in proxy.seen  # the handshake too
        assert len([s for s in proxy.seen if s.startswith(("GET /fapi", "POST /fapi"))]) == served > 0
        assert bv.budget.used() > 0 and bv.budget.key().startswith(f"{NS}:venue:weight:px:")
    finally:
        proxy.stop()
