"""The real python-binance client against the fapi emulator over HTTP: every endpoint the
venue adapter uses, and every error class (in-process; the pipeline under faults is in
test_binance_pipeline.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from harvest.ops.procs import ROOT, free_port
from harvest.venues.base import VenueError
from harvest.venues.binance import BinanceVenue, make_client
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.emulator import Emulator
from settings import SettingsError, load_settings
from tests.kill_theta import KILL_SCORE_THETA
from tests.pipeline_helpers import T0

KEY, SECRET = "emu-test-key", "emu-test-secret"


def fresh(redis_url: str, ns: str) -> tuple[redis.Redis, MarketClock]:
    """An empty namespace and its market clock standing at T0."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for k in r.scan_iter(f"{ns}:*"):
        r.delete(k)
    clock = MarketClock(r, ns, T0, 0.0)
    clock.set(T0, 0.0)
    return r, clock


@pytest.fixture()
def emu(redis_url):
    r, clock = fresh(redis_url, "emu-unit")
    e = Emulator(r, "emu-unit", "paper", KEY, SECRET, clock=clock).start()
    yield e
    e.stop()


def venue_for(emu: Emulator, secret: str = SECRET, timeout: float = 1.0, limit: int = 1800) -> BinanceVenue:
    """The adapter as the runtime builds it for the emulator: with the shared market clock
    (its server clock)."""
    return BinanceVenue(
        emu.r, emu.ns, lambda: make_client(KEY, secret, emu.url, False, timeout, 5000), limit, clock=emu.clock
    )


@pytest.fixture()
def bv(emu):
    return venue_for(emu)


def hv_orders(emu: Emulator, prefix: str = "hv-") -> list:
    return [o for o in emu.venue.orders() if o.client_order_id.startswith(prefix)]


def test_every_endpoint_through_python_binance(emu, bv):
    eng = emu.venue
    eng.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0, stop_price=99_000.0)
    eng.set_mark("BTCUSDT", 101_000.0)
    f = bv.filters("BTCUSDT")  # exchangeInfo
    assert str(f.step_size) == "0.001" and str(f.tick_size) == "0.10"
    assert bv.mark_price("BTCUSDT") == 101_000.0  # premiumIndex
    [p] = bv.positions()  # v3 positionRisk + symbolConfig leverage + openAlgoOrders stop
    assert (p.symbol, p.side.value, p.qty, p.entry_price, p.leverage, p.stop_price) == (
        "BTCUSDT",
        "LONG",
        0.01,
        100_000.0,
        20.0,
        99_000.0,
    )
    o = bv.close_market("BTCUSDT", "SELL", "0.004", "hv-0123456789abcdef-0")  # RESULT response
    assert (o.status, o.executed_qty, o.avg_price) == ("FILLED", 0.004, 101_000.0)
    got = bv.get_order("BTCUSDT", "hv-0123456789abcdef-0")  # + userTrades for realized PnL
    assert got.realized_pnl == pytest.approx(4.0) and got.commission == pytest.approx(0.004 * 101_000 * 0.0005)
    engine_order = eng.get_order("BTCUSDT", "hv-0123456789abcdef-0")
    assert engine_order.reduce_only and engine_order.position_side == "BOTH"
    s = bv.move_stop("BTCUSDT", "SELL", "100500.0", "hv-00000000000000aa-0")  # algoOrder, then cancel old
    assert (s.algo, s.status, s.stop_price) == (True, "NEW", 100_500.0)
    assert bv.get_order("BTCUSDT", "hv-00000000000000aa-0", conditional=True).status == "NEW"
    assert bv.position("BTCUSDT").stop_price == 100_500.0
    assert [o.client_order_id for o in eng.open_orders("BTCUSDT", algo=True)] == ["hv-00000000000000aa-0"]
    kinds = [e["kind"] for e in emu.order_log() if e["kind"].startswith("STOP_")]
    assert kinds[-2:] == ["STOP_NEW", "STOP_CANCELED"]  # the new stop works before the old one goes
    with pytest.raises(VenueError) as e:
        bv.get_order("BTCUSDT", "hv-ffffffffffffffff-0")
    assert (e.value.code, e.value.kind) == (-2013, "rejected")
    # X-MBX-USED-WEIGHT-1M is read into the fleet's budget.
    assert bv.budget.used() >= 5


def test_conditional_order_on_the_order_endpoint_is_refused(emu, bv):
    emu.venue.set_position("ETHUSDT", "LONG", 1.0, 2500.0, 10.0, opened_at=T0)
    with pytest.raises(Exception) as e:  # python-binance itself never does this; the emulator checks Binance's rule
        bv.client._request_futures_api(
            "post",
            "order",
            True,
            data={
                "symbol": "ETHUSDT",
                "side": "SELL",
                "type": "STOP_MARKET",
                "stopPrice": "2400",
                "closePosition": "true",
            },
        )
    assert e.value.code == -4120


def test_hedge_mode_sends_position_side_not_reduce_only(emu, bv):
    eng = emu.venue
    eng.set_dual(True)
    eng.set_position("SOLUSDT", "SHORT", 10.0, 150.0, 5.0, opened_at=T0)
    eng.set_mark("SOLUSDT", 140.0)
    o = bv.close_market("SOLUSDT", "BUY", "3", "hv-00000000000000bb-0")
    assert o.status == "FILLED" and o.position_side == "SHORT"
    assert eng.position("SOLUSDT").qty == 7.0
    with pytest.raises(Exception) as e:  # reduceOnly in hedge mode: Binance's -1106
        bv.client.futures_create_order(
            symbol="SOLUSDT", side="BUY", type="MARKET", quantity="1", positionSide="SHORT", reduceOnly="true"
        )
    assert e.value.code == -1106
    s = bv.move_stop("SOLUSDT", "BUY", "145.000", "hv-00000000000000cc-0")
    assert s.position_side == "SHORT"


FAULTS = [
    # kind, extra, expected class, orders that exist afterwards
    ("http_429", {"retry_after": 3}, "retryable", 0),
    ("http_418", {"retry_after": 2}, "retryable", 0),
    ("unavailable_503", {}, "retryable", 0),
    ("internal_503", {}, "retryable", 0),
    ("unknown_503_after_accept", {}, "unknown", 1),
    ("timeout_after_accept", {"latency_s": 1.6}, "unknown", 1),
]


@pytest.mark.parametrize("kind,extra,cls,orders", FAULTS, ids=[f[0] for f in FAULTS])
def test_error_classes(emu, bv, kind, extra, cls, orders):
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    emu.venue.set_mark("BTCUSDT", 101_000.0)
    emu.faults.inject("POST /fapi/v1/order", kind, **extra)
    with pytest.raises(VenueError) as e:
        bv.close_market("BTCUSDT", "SELL", "0.004", "hv-0000000000000001-0")
    assert e.value.kind == cls
    assert len(hv_orders(emu)) == orders
    if kind in ("http_429", "http_418"):
        assert e.value.retry_after == extra["retry_after"]
        # The whole fleet backs off: the next request is held locally, nothing is sent.
        with pytest.raises(VenueError) as held:
            bv.mark_price("BTCUSDT")
        assert held.value.retryable and "budget" in held.value.message
    if cls == "unknown":  # the look-up by clientOrderId resolves it
        assert bv.get_order("BTCUSDT", "hv-0000000000000001-0").status == "FILLED"


def test_rejection_keeps_binance_code_and_message(emu, bv):
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    with pytest.raises(VenueError) as e:
        bv.close_market("BTCUSDT", "SELL", "0.0005", "hv-0000000000000002-0")
    assert (e.value.code, e.value.message, e.value.kind) == (
        -1111,
        "Precision is over the maximum defined for this asset.",
        "rejected",
    )
    with pytest.raises(VenueError) as e:
        bv.close_market("BTCUSDT", "BUY", "0.001", "hv-0000000000000003-0")
    assert (e.value.code, e.value.kind) == (-2022, "rejected")


def test_timestamp_1021_resyncs_once_then_is_a_clear_rejection(emu, bv):
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    emu.venue.set_mark("BTCUSDT", 101_000.0)
    emu.faults.set_skew(30_000)  # the server clock runs 30 s ahead: every signed call is -1021
    o = bv.close_market("BTCUSDT", "SELL", "0.001", "hv-0000000000000004-0")  # resync, one retry
    assert o.status == "FILLED" and abs(bv.correction_ms - 30_000) < 2_000
    # signed in the server clock: the market clock, 30 s ahead of it
    assert abs(bv.client.timestamp_offset - (emu.clock.now() * 1000 - time.time() * 1000 + 30_000)) < 2_000
    emu.faults.inject("POST /fapi/v1/order", "timestamp_1021", times=2)
    with pytest.raises(VenueError) as e:
        bv.close_market("BTCUSDT", "SELL", "0.001", "hv-0000000000000005-0")
    assert (e.value.code, e.value.kind) == (-1021, "rejected")
    assert "recvWindow" in e.value.message
    assert len(hv_orders(emu)) == 1


def test_a_clock_offset_beyond_the_limit_is_an_error_not_absorbed_silently(emu, bv, caplog):
    """Old main: a 50-minute clock offset was absorbed by the -1021 resync without a word."""
    import logging

    from harvest.services.reconcile import check_clock

    class Rt:  # what check_clock reads of a runtime
        venue = bv
        settings = load_settings(max_clock_offset_ms=1000)

        class counters:  # noqa: N801
            counted: list[str] = []

            @classmethod
            def count(cls, name):
                cls.counted.append(name)

    emu.faults.set_skew(50 * 60 * 1000)
    with caplog.at_level(logging.ERROR, logger="harvest"):
        offset = check_clock(Rt)
    assert abs(offset - 3_000_000) < 2_000 and Rt.counters.counted == ["venue:clock_offset_exceeded"]
    assert any("clock is 3000" in r.getMessage() for r in caplog.records)
    assert int(emu.r.get(f"{emu.ns}:venue:clock_offset_ms")) == offset
    emu.faults.set_skew(200)
    assert abs(check_clock(Rt) - 200) < 150 and Rt.counters.counted == ["venue:clock_offset_exceeded"]


def test_bad_signature_is_a_clear_error(emu):
    bad = venue_for(emu, secret="not-the-secret")
    with pytest.raises(VenueError) as e:
        bad.positions()
    assert (e.value.code, e.value.message) == (-1022, "Signature for this request is not valid.")


def test_connection_refused_is_retryable(emu):
    port = free_port()
    v = BinanceVenue(
        emu.r, emu.ns, lambda: make_client(KEY, SECRET, f"http://127.0.0.1:{port}/fapi", False, 1.0, 5000), 1800
    )
    with pytest.raises(VenueError) as e:
        v.close_market("BTCUSDT", "SELL", "0.001", "hv-0000000000000006-0")
    assert e.value.kind == "retryable"


def test_weight_budget_puts_closes_ahead_of_reads(emu):
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    emu.venue.set_mark("BTCUSDT", 101_000.0)
    v = venue_for(emu, limit=10)  # reads may use 7 of 10 per minute, closes all 10
    v.budget.r.delete(v.budget.key())
    v.r.set(v.k_dual, "false")  # position mode known (beat refreshes it)
    for _ in range(7):
        v.mark_price("BTCUSDT")
    with pytest.raises(VenueError) as e:
        v.mark_price("BTCUSDT")
    assert e.value.retryable and e.value.code == -1003
    assert v.close_market("BTCUSDT", "SELL", "0.001", "hv-0000000000000007-0").status == "FILLED"


def test_live_venue_refuses_without_opt_in():
    with pytest.raises(SettingsError) as e:
        load_settings(venue="live", api_key="k", api_secret="s")
    assert "HARVEST_LIVE_TRADING_OPT_IN" in str(e.value)
    assert load_settings(venue="live", api_key="k", api_secret="s", live_trading_opt_in=True).venue == "live"
    with pytest.raises(SettingsError) as e:
        load_settings(venue="testnet")  # Binance's testnet is a non-local exchange too
    assert "HARVEST_LIVE_TRADING_OPT_IN" in str(e.value)
    with pytest.raises(SettingsError) as e:
        load_settings(venue="testnet", live_trading_opt_in=True)
    assert "HARVEST_API_KEY" in str(e.value)
    # The same refusal stops a real start-up, with the message and without the secret.
    env = {"HARVEST_VENUE": "live", "HARVEST_API_KEY": "AKIA-not-a-real-key", "HARVEST_API_SECRET": "sekrit-value"}
    import os

    out = subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "reconcile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert out.returncode != 0
    assert "HARVEST_LIVE_TRADING_OPT_IN" in out.stderr + out.stdout
    assert "sekrit-value" not in out.stderr + out.stdout and "AKIA-not-a-real-key" not in out.stderr + out.stdout


def test_market_state_from_the_venue_klines_matches_the_shipped_data(emu, bv):
    from harvest.data import load_klines
    from harvest.domain.market import market_state_at, market_state_from_closes
    from harvest.domain.models import HarvestTheta

    theta = HarvestTheta(**KILL_SCORE_THETA)
    emu.clock.set(T0 + 37 * 60 + 20, 0.0)  # mid-bar: the open bar is not used
    n = theta.closes_needed  # the windows and the bars back that confirm a regime
    closes = bv.closed_closes("ETHUSDT", n)
    kl = load_klines("ETHUSDT")
    end = kl.index_at(T0 + 37 * 60 + 20)
    assert list(closes) == list(kl.close[end - n : end])
    now = emu.clock.now()
    assert market_state_from_closes("ETHUSDT", closes, now, theta) == market_state_at(kl, now, theta)


def test_stop_move_is_one_order_even_when_the_cleanup_fails(emu, bv):
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0, stop_price=99_000.0)
    emu.venue.set_mark("BTCUSDT", 101_000.0)
    emu.faults.inject("GET /fapi/v1/openAlgoOrders", "unavailable_503")
    s = bv.move_stop("BTCUSDT", "SELL", "100000.0", "hv-00000000000000dd-0")  # placed; listing failed
    assert s.status == "NEW"
    working = sorted(o.stop_price for o in emu.venue.open_orders("BTCUSDT", algo=True))
    assert working == [99_000.0, 100_000.0]  # the older stop stays until the next move
    assert emu.venue.position("BTCUSDT").stop_price == 100_000.0  # the tighter one protects


def test_order_rate_is_each_accounts_own_and_a_1015_holds_only_that_account(redis_url):
    """Binance's ORDERS limits count new orders per account (exchangeInfo's rateLimits; here 2
    per 10 s): harvest holds an account's third order locally (-1015, nothing sent) while the
    other account's order goes out; a -1015 from the exchange holds that account's orders
    only — not its reads, not another account, not the IP."""
    ns = "emu-orders"
    r, clock = fresh(redis_url, ns)
    e = Emulator(r, ns, "a", "key-a", "sec-a", clock=clock, order_limits=[(10, 2)])
    e.add_account("b", "key-b", "sec-b")
    e.start(streams=False)
    try:
        a, b = (
            BinanceVenue(r, ns, lambda k=k, s=s: make_client(k, s, e.url, False, 2.0, 5000), 1800, account=n)
            for n, k, s in (("a", "key-a", "sec-a"), ("b", "key-b", "sec-b"))
        )
        for acct in ("a", "b"):
            eng = e.account(acct).venue
            eng.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0, stop_price=99_000.0)
            eng.set_mark("BTCUSDT", 101_000.0)
        assert a.refresh_filters() > 0  # reads the ORDERS limits too
        assert a.orders.limits() == [(10, 2)]
        a.close_market("BTCUSDT", "SELL", "0.001", "hv-00000000000000a1-0")
        a.close_market("BTCUSDT", "SELL", "0.001", "hv-00000000000000a2-0")
        sent = len(e.order_log("a"))
        with pytest.raises(VenueError) as held:
            a.close_market("BTCUSDT", "SELL", "0.001", "hv-00000000000000a3-0")
        assert held.value.code == -1015 and held.value.retryable and 0 < held.value.retry_after <= 10
        assert len(e.order_log("a")) == sent  # held here: nothing reached the exchange
        b.close_market("BTCUSDT", "SELL", "0.001", "hv-00000000000000b1-0")  # another account: its own limit
        # the exchange's own -1015 (a budget that did not know): that account's orders back off
        r.delete(*r.keys(f"{ns}:venue:a:orders:*"))
        with pytest.raises(VenueError) as refused:
            a.close_market("BTCUSDT", "SELL", "0.001", "hv-00000000000000a4-0")
        assert refused.value.code == -1015 and refused.value.http_status == 429
        assert float(r.get(a.orders.k_backoff)) > 0
        assert not r.exists(a.budget.k_backoff)  # the IP is not held
        assert a.positions() and b.positions()  # reads go on, for both accounts
        b.close_market("BTCUSDT", "SELL", "0.001", "hv-00000000000000b2-0")
    finally:
        e.stop()
