"""The fapi emulator held to Binance's facts (:mod:`harvest.venues.binance_facts`), through the
real python-binance client (and plain signed ``requests`` where python-binance has no method):
request weights read from ``X-MBX-USED-WEIGHT-1M`` equal what the adapter's budget charges for
the same call; order-count headers; ``recvWindow`` > 60000 refused; positionRisk v2/v3, balance
and account with Binance's field sets and decimal strings; leverage and margin type; klines of
every interval; premiumIndex of every symbol; Binance's answer for an unknown path."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import datetime, timezone
from urllib.parse import urlencode

import pytest
import redis
import requests
from binance.exceptions import BinanceAPIException

from harvest.data import load_klines
from harvest.venues import binance_facts as facts
from harvest.venues.binance import BinanceVenue, make_client, request_weight
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.emulator import Emulator
from tests.pipeline_helpers import T0

KEY, SECRET = "emu-facts-key", "emu-facts-secret"
NS = "emu-facts"


@pytest.fixture()
def emu(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for k in r.scan_iter(f"{NS}:*"):
        r.delete(k)
    clock = MarketClock(r, NS, T0, 0.0)
    clock.set(T0, 0.0)
    e = Emulator(r, NS, "paper", KEY, SECRET, clock=clock).start(streams=False)
    yield e
    e.stop()


@pytest.fixture()
def client(emu):
    return make_client(KEY, SECRET, emu.url, False, 2.0, 5000)


def signed(emu: Emulator, method: str, path: str, **params) -> requests.Response:
    """A signed request as Binance's docs describe it (HMAC-SHA256 of the query string), for
    the endpoints python-binance has no method for."""
    q = dict(params)
    q.setdefault("timestamp", int(time.time() * 1000))
    q.setdefault("recvWindow", 5000)
    qs = urlencode(q)
    sig = hmac.new(SECRET.encode(), qs.encode(), hashlib.sha256).hexdigest()
    url = f"http://127.0.0.1:{emu.port}{path}?{qs}&signature={sig}"
    return requests.request(method, url, headers={"X-MBX-APIKEY": KEY}, timeout=2.0)


def used(client) -> int:
    return int(client.response.headers["X-MBX-USED-WEIGHT-1M"])


# ---------------------------------------------------------------------------------- weights


def test_emulator_weight_of_every_call_harvest_makes_equals_the_adapters(emu, client):
    """The weight each call adds to ``X-MBX-USED-WEIGHT-1M`` (a header delta of real requests)
    equals :func:`harvest.venues.binance.request_weight` of the same call, for every python-binance
    method the adapter calls and the parameters it sends; openOrders/openAlgoOrders without a
    symbol cost 40, klines by its limit band."""
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    emu.venue.set_mark("BTCUSDT", 101_000.0)
    calls = [
        ("futures_time", {}),
        ("futures_exchange_info", {}),
        ("futures_mark_price", {"symbol": "BTCUSDT"}),
        ("futures_klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 2}),
        ("futures_klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 100}),
        ("futures_klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 1000}),
        ("futures_klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 1001}),
        ("futures_klines", {"symbol": "BTCUSDT", "interval": "1m"}),
        ("futures_position_information", {}),
        ("futures_position_information", {"symbol": "BTCUSDT"}),
        ("futures_symbol_config", {}),
        ("futures_symbol_config", {"symbol": "BTCUSDT"}),
        ("futures_get_position_mode", {}),
        ("futures_get_open_orders", {}),
        ("futures_get_open_orders", {"symbol": "BTCUSDT"}),
        ("futures_get_open_orders", {"conditional": True}),
        ("futures_get_open_orders", {"conditional": True, "symbol": "BTCUSDT"}),
        ("futures_account_trades", {"symbol": "BTCUSDT", "limit": 1000}),
        ("futures_income_history", {"incomeType": "FUNDING_FEE", "limit": 1000}),
        ("futures_get_all_orders", {"symbol": "BTCUSDT", "limit": 1000}),
        (
            "futures_create_order",
            {
                "symbol": "BTCUSDT",
                "side": "SELL",
                "type": "MARKET",
                "quantity": "0.004",
                "reduceOnly": "true",
                "newClientOrderId": "hv-00000000000000aa-0",
                "newOrderRespType": "RESULT",
            },
        ),
        ("futures_get_order", {"symbol": "BTCUSDT", "origClientOrderId": "hv-00000000000000aa-0"}),
        (
            "futures_create_order",
            {
                "symbol": "BTCUSDT",
                "side": "SELL",
                "type": "STOP_MARKET",
                "triggerPrice": "99000.0",
                "closePosition": "true",
                "workingType": "MARK_PRICE",
                "clientAlgoId": "hv-00000000000000bb-0",
            },
        ),
        ("futures_get_order", {"symbol": "BTCUSDT", "clientAlgoId": "hv-00000000000000bb-0"}),
        ("futures_cancel_order", {"symbol": "BTCUSDT", "clientAlgoId": "hv-00000000000000bb-0"}),
    ]
    client.futures_ping()
    before = used(client)
    seen = {}
    for fn, params in calls:
        getattr(client, fn)(**dict(params))
        after = used(client)
        delta = after - before if after >= before else after  # a new minute window started
        before = after
        want = request_weight(fn, params)
        assert delta == want, (fn, params, delta, want)
        seen[(fn, tuple(sorted(params)))] = delta
    assert seen[("futures_get_open_orders", ())] == 40  # openOrders without a symbol
    assert seen[("futures_get_open_orders", ("conditional",))] == 40  # openAlgoOrders without one
    assert seen[("futures_get_open_orders", ("symbol",))] == 1
    assert [request_weight("futures_klines", {"limit": n}) for n in (99, 100, 499, 500, 1000, 1001)] == [
        1,
        2,
        2,
        5,
        5,
        10,
    ]


def test_the_adapters_budget_charges_the_same_weight_as_the_emulator(emu, monkeypatch):
    """What the adapter's budget reserves (its Redis counter, the exchange's header not folded
    in) equals what the emulator's header counts over a scan's reads; the stops of one position
    are read with its symbol (openAlgoOrders at 1, not 40 for every symbol: the cheaper form by
    Binance's table)."""
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0, stop_price=99_000.0)
    bv = BinanceVenue(emu.r, emu.ns, lambda: make_client(KEY, SECRET, emu.url, False, 2.0, 5000), 2400)
    monkeypatch.setattr(bv.budget, "observe", lambda used_weight: None)  # reservations only
    bv.client.futures_ping()
    start_emu, start_budget = used(bv.client), bv.budget.used()
    minute = int(time.time() // 60)
    emu.reset_tally()
    bv.positions()  # positionRisk (5) + openAlgoOrders of BTCUSDT (1) + symbolConfig (5) + userTrades (5)
    if int(time.time() // 60) != minute:
        pytest.skip("a minute boundary passed during the scan (both counters restarted)")
    assert used(bv.client) - start_emu == bv.budget.used() - start_budget
    assert emu.weight_by_endpoint()["GET /fapi/v1/openAlgoOrders"] == (1, 1)
    assert bv.budget.used() - start_budget == sum(w for _, w in emu.weight_by_endpoint().values()) >= 6


# ---------------------------------------------------------------------------------- orders


def test_order_answers_carry_the_accounts_order_counts(emu, client):
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    client.futures_create_order(
        symbol="BTCUSDT", side="SELL", type="MARKET", quantity="0.001", reduceOnly="true", newClientOrderId="c-1"
    )
    h1 = client.response.headers
    n10, n60 = int(h1["X-MBX-ORDER-COUNT-10S"]), int(h1["X-MBX-ORDER-COUNT-1M"])
    assert n10 >= 1 and n60 >= 1
    client.futures_create_order(
        symbol="BTCUSDT",
        side="SELL",
        type="STOP_MARKET",
        triggerPrice="99000.0",
        closePosition="true",
        clientAlgoId="c-2",
    )
    h2 = client.response.headers
    assert int(h2["X-MBX-ORDER-COUNT-1M"]) in (n60 + 1, 1)  # 1: a new minute window began
    assert int(h2["X-MBX-ORDER-COUNT-10S"]) in (n10 + 1, 1)
    client.futures_get_open_orders(symbol="BTCUSDT")  # not an order: no count
    assert "X-MBX-ORDER-COUNT-1M" not in client.response.headers


# ---------------------------------------------------------------------------------- signing


def test_recv_window_above_60000_is_refused_as_binance_does(emu, client):
    client.REQUEST_RECVWINDOW = 60_001
    with pytest.raises(BinanceAPIException) as ei:
        client.futures_position_information()
    assert (ei.value.status_code, ei.value.code) == (400, -1131)
    assert ei.value.message == facts.ERRORS["BAD_RECV_WINDOW"].msg
    client.REQUEST_RECVWINDOW = 60_000  # the largest accepted
    assert client.futures_position_information() == []


def test_an_unknown_path_answers_binances_404_not_an_auth_error(emu, client):
    for method in ("GET", "POST"):
        r = signed(emu, method, "/fapi/v1/noSuchEndpoint", symbol="BTCUSDT")
        assert r.status_code == 404
        assert r.headers["Content-Type"].startswith("text/html")
        with pytest.raises(ValueError):
            r.json()
    r = requests.get(f"http://127.0.0.1:{emu.port}/fapi/v2/order", timeout=2.0)  # no key either
    assert r.status_code == 404
    with pytest.raises(BinanceAPIException) as ei:  # python-binance: no code to go by
        client._request_futures_api("get", "noSuchEndpoint", True, data={})
    assert (ei.value.status_code, ei.value.code) == (404, 0)


# ---------------------------------------------------------------------------------- positions

_DEC = re.compile(r"^-?\d+(\.\d+)?$")


def _decimals(s: str) -> int:
    assert _DEC.match(s), s
    return len(s.split(".")[1]) if "." in s else 0


def test_position_risk_v3_and_v2_have_binances_fields_and_clean_decimals(emu, client):
    """positionRisk v3/v2 carry Binance's field sets; positionAmt at the symbol's
    quantityPrecision, prices and USDT amounts with 8 decimals; a mark of 103200.09999999999
    (a float's noise) reads "103200.10000000" there and "103200.1" in orders, trades and
    premiumIndex."""
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 103_200.1, 20.0, opened_at=T0)
    emu.venue.set_mark("BTCUSDT", 103_200.09999999999)
    [v3] = client.futures_position_information()
    assert set(v3) == set(facts.POSITION_RISK_V3_FIELDS)
    assert v3["positionAmt"] == "0.010"  # BTCUSDT quantityPrecision 3
    assert v3["markPrice"] == "103200.10000000" and v3["entryPrice"] == "103200.10000000"  # no float noise
    prices = ("markPrice", "entryPrice", "breakEvenPrice", "liquidationPrice")
    usdt = ("unRealizedProfit", "notional", "initialMargin", "maintMargin", "isolatedWallet", "isolatedMargin")
    for k in prices + usdt:
        assert _decimals(v3[k]) == 8, (k, v3[k])
    assert float(v3["liquidationPrice"]) > 0
    assert float(v3["positionInitialMargin"]) == pytest.approx(0.010 * 103_200.1 / 20, abs=1e-6)
    assert float(v3["isolatedWallet"]) == pytest.approx(0.010 * 103_200.1 / 20, abs=1e-6)  # ISOLATED default
    assert (v3["openOrderInitialMargin"], v3["bidNotional"], v3["askNotional"]) == ("0.00000000", "0", "0")
    assert isinstance(v3["adl"], int)
    # orders, trades and the mark carry no float noise either
    o = client.futures_create_order(
        symbol="BTCUSDT",
        side="SELL",
        type="MARKET",
        quantity="0.004",
        reduceOnly="true",
        newClientOrderId="c-1",
        newOrderRespType="RESULT",
    )
    [t] = client.futures_account_trades(symbol="BTCUSDT")
    assert (o["avgPrice"], t["price"], t["qty"]) == ("103200.1", "103200.1", "0.004")
    assert client.futures_mark_price(symbol="BTCUSDT")["markPrice"] == "103200.1"
    r = signed(emu, "GET", "/fapi/v2/positionRisk")
    [v2] = r.json()
    assert set(v2) == set(facts.POSITION_RISK_V2_FIELDS)
    assert (v2["leverage"], v2["marginType"], v2["isAutoAddMargin"]) == ("20", "isolated", "false")
    assert float(v2["maxNotionalValue"]) > 0


def test_leverage_and_margin_type_are_kept_per_account_and_symbol(emu, client):
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    out = client.futures_change_leverage(symbol="BTCUSDT", leverage=5)
    assert set(out) == set(facts.LEVERAGE_FIELDS) and out["leverage"] == 5 and out["symbol"] == "BTCUSDT"
    [v2] = signed(emu, "GET", "/fapi/v2/positionRisk", symbol="BTCUSDT").json()
    assert v2["leverage"] == "5" and v2["maxNotionalValue"] == out["maxNotionalValue"]
    [v3] = client.futures_position_information(symbol="BTCUSDT")
    assert float(v3["positionInitialMargin"]) == pytest.approx(abs(float(v3["notional"])) / 5, abs=1e-6)
    assert client.futures_symbol_config(symbol="BTCUSDT")[0]["leverage"] == 5
    with pytest.raises(BinanceAPIException) as ei:
        client.futures_change_leverage(symbol="BTCUSDT", leverage=500)
    assert ei.value.code == -4028
    # margin type: a symbol with a position cannot change; a flat one can, once
    with pytest.raises(BinanceAPIException) as ei:
        client.futures_change_margin_type(symbol="BTCUSDT", marginType="CROSSED")
    assert ei.value.code == -4048
    assert client.futures_change_margin_type(symbol="ETHUSDT", marginType="CROSSED")["code"] == 200
    with pytest.raises(BinanceAPIException) as ei:
        client.futures_change_margin_type(symbol="ETHUSDT", marginType="CROSSED")
    assert ei.value.code == -4046
    # another account on the same emulator keeps its own settings
    other = emu.add_account("other", "other-key", "other-secret")
    assert other.name == "other"
    oc = make_client("other-key", "other-secret", emu.url, False, 2.0, 5000)
    assert oc.futures_change_margin_type(symbol="ETHUSDT", marginType="CROSSED")["code"] == 200
    # a new opening takes the account's leverage
    client.futures_change_leverage(symbol="ETHUSDT", leverage=3)
    client.futures_create_order(symbol="ETHUSDT", side="BUY", type="MARKET", quantity="0.100", newClientOrderId="o-1")
    [row] = signed(emu, "GET", "/fapi/v2/positionRisk", symbol="ETHUSDT").json()
    assert (row["leverage"], row["marginType"]) == ("3", "cross")
    assert (emu.venue.position("ETHUSDT").leverage) == 3.0


def test_balance_and_account_follow_the_paper_ledger(emu, client):
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    emu.venue.set_mark("BTCUSDT", 101_000.0)
    emu.venue.set_balance(50_000.0)
    [b0] = client.futures_account_balance()  # python-binance: /fapi/v3/balance
    assert set(b0) == set(facts.BALANCE_FIELDS) and b0["asset"] == "USDT"
    assert 49_000.0 < float(b0["balance"]) <= 50_000.0  # the engine's wallet, less what it charged
    assert float(b0["availableBalance"]) == pytest.approx(emu.venue.available_balance(), abs=1e-6)
    [b2] = signed(emu, "GET", "/fapi/v2/balance").json()
    assert set(b2) == set(facts.BALANCE_FIELDS) and b2["balance"] == b0["balance"]
    client.futures_create_order(
        symbol="BTCUSDT", side="SELL", type="MARKET", quantity="0.004", reduceOnly="true", newClientOrderId="c-1"
    )
    [b1] = client.futures_account_balance()
    fee = 0.004 * 101_000 * emu.fee_rate
    assert float(b1["balance"]) - float(b0["balance"]) == pytest.approx(4.0 - fee, abs=1e-6)
    acct = signed(emu, "GET", "/fapi/v3/account").json()
    assert set(acct) == set(facts.ACCOUNT_V3_FIELDS)
    [usdt] = acct["assets"]
    assert set(usdt) == set(facts.ACCOUNT_V3_ASSET_FIELDS)
    [pos] = acct["positions"]
    assert set(pos) == set(facts.ACCOUNT_V3_POSITION_FIELDS) and pos["positionAmt"] == "0.006"
    assert acct["totalWalletBalance"] == b1["balance"]
    assert float(acct["totalUnrealizedProfit"]) == pytest.approx(0.006 * 1000.0, abs=1e-6)
    assert float(acct["totalMarginBalance"]) == pytest.approx(float(b1["balance"]) + 6.0, abs=1e-6)
    a2 = client.futures_account()  # python-binance: /fapi/v2/account
    assert set(a2) == set(facts.ACCOUNT_V2_FIELDS) and a2["totalWalletBalance"] == b1["balance"]
    assert set(a2["assets"][0]) == set(facts.ACCOUNT_V2_ASSET_FIELDS)
    [p2] = a2["positions"]
    assert set(p2) == set(facts.ACCOUNT_V2_POSITION_FIELDS)
    assert (p2["positionAmt"], p2["leverage"], p2["isolated"]) == ("0.006", "20", True)


# ---------------------------------------------------------------------------------- market data


def test_klines_of_every_interval_aggregate_the_1m_bars(emu, client):
    now = emu.clock.now()
    minute_rows = client.futures_klines(symbol="BTCUSDT", interval="1m", limit=1500)
    by_open = {int(x[0]): x for x in minute_rows}
    for interval, step in facts.KLINE_INTERVALS.items():
        rows = client.futures_klines(symbol="BTCUSDT", interval=interval, limit=3)
        assert 1 <= len(rows) <= 3, interval
        opens = [int(x[0]) for x in rows]
        assert opens == sorted(opens) and opens[-1] <= now * 1000
        if step is not None and interval != "1w":
            assert all(t % (step * 1000) == 0 for t in opens), interval
            assert all(int(x[6]) == int(x[0]) + step * 1000 - 1 for x in rows), interval
    # a closed 15m bar is the 1m bars it spans: open of the first, close of the last, high/low
    rows15 = client.futures_klines(symbol="BTCUSDT", interval="15m", limit=4)
    bar = rows15[-2]
    minutes = [by_open[int(bar[0]) + i * 60_000] for i in range(15)]
    assert float(bar[1]) == pytest.approx(float(minutes[0][1]))
    assert float(bar[4]) == pytest.approx(float(minutes[-1][4]))
    assert float(bar[2]) == pytest.approx(max(float(m[2]) for m in minutes))
    assert float(bar[3]) == pytest.approx(min(float(m[3]) for m in minutes))
    assert float(bar[5]) == pytest.approx(sum(float(m[5]) for m in minutes), rel=1e-6)
    # weeks open on Monday 00:00 UTC, months on the 1st
    [wk] = client.futures_klines(symbol="BTCUSDT", interval="1w", limit=1)
    d = datetime.fromtimestamp(int(wk[0]) / 1000, timezone.utc)
    assert (d.weekday(), d.hour, d.minute) == (0, 0, 0)
    [mo] = client.futures_klines(symbol="BTCUSDT", interval="1M", limit=1)
    d = datetime.fromtimestamp(int(mo[0]) / 1000, timezone.utc)
    assert (d.day, d.hour) == (1, 0)
    end = datetime.fromtimestamp((int(mo[6]) + 1) / 1000, timezone.utc)
    assert (end.day, end.month) == (1, d.month % 12 + 1)


def test_klines_honour_start_end_and_limit(emu, client):
    kl = load_klines("BTCUSDT")
    first = int(kl.open_time[0]) * 1000
    rows = client.futures_klines(symbol="BTCUSDT", interval="5m", startTime=first + 1, limit=3)
    assert [int(x[0]) for x in rows] == [first + 300_000 * i for i in (1, 2, 3)]  # open time ≥ startTime
    rows = client.futures_klines(symbol="BTCUSDT", interval="1m", startTime=first, endTime=first + 9 * 60_000)
    assert len(rows) == 10 and int(rows[-1][0]) == first + 9 * 60_000
    rows = client.futures_klines(symbol="BTCUSDT", interval="1m", endTime=first + 9 * 60_000, limit=4)
    assert [int(x[0]) for x in rows] == [first + 60_000 * i for i in (6, 7, 8, 9)]  # the last 4 up to endTime
    assert len(client.futures_klines(symbol="BTCUSDT", interval="1m", startTime=first, limit=5000)) == 1500
    with pytest.raises(BinanceAPIException) as ei:
        client.futures_klines(symbol="BTCUSDT", interval="7m")
    assert ei.value.code == -1120


def test_premium_index_without_a_symbol_lists_every_symbol_with_prices(emu, client):
    rows = client.futures_mark_price()
    syms = {x["symbol"] for x in rows}
    assert {"BTCUSDT", "ETHUSDT"} <= syms
    assert all(float(x["markPrice"]) > 0 for x in rows)


def test_error_answers_are_binance_facts(emu, client):
    """Each refusal the emulator makes is the (HTTP status, code, message) of binance_facts."""

    def answer(r: requests.Response) -> tuple[int, int, str]:
        d = r.json()
        return r.status_code, d["code"], d["msg"]

    bad_sig = requests.get(
        f"http://127.0.0.1:{emu.port}/fapi/v3/positionRisk?timestamp={int(time.time() * 1000)}&signature=00",
        headers={"X-MBX-APIKEY": KEY},
        timeout=2.0,
    )
    assert answer(bad_sig) == facts.ERRORS["INVALID_SIGNATURE"].fmt()
    no_key = requests.get(f"http://127.0.0.1:{emu.port}/fapi/v3/positionRisk?timestamp=1&signature=00", timeout=2.0)
    assert answer(no_key) == facts.ERRORS["REJECTED_MBX_KEY"].fmt()
    stale = signed(emu, "GET", "/fapi/v3/positionRisk", recvWindow=1000, timestamp=1)
    assert answer(stale) == facts.ERRORS["INVALID_TIMESTAMP"].fmt()
    cases = [
        (("GET", "/fapi/v1/userTrades"), {}, ("MANDATORY_PARAM_EMPTY_OR_MALFORMED", "symbol")),
        (("GET", "/fapi/v1/userTrades"), {"symbol": "NOPEUSDT"}, ("BAD_SYMBOL",)),
        (
            ("POST", "/fapi/v1/order"),
            {"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET", "stopPrice": "1", "closePosition": "true"},
            ("STOP_ORDER_SWITCH_ALGO",),
        ),
        (
            ("POST", "/fapi/v1/order"),
            {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.001", "newClientOrderId": "a b"},
            ("INVALID_CLIENT_ORDER_ID",),
        ),
        (("POST", "/fapi/v1/leverage"), {"symbol": "BTCUSDT", "leverage": "0"}, ("INVALID_LEVERAGE", "0")),
        (
            ("POST", "/fapi/v1/marginType"),
            {"symbol": "BTCUSDT", "marginType": "BOTH"},
            ("INVALID_PARAMETER", "marginType"),
        ),
        (("GET", "/fapi/v1/klines"), {"symbol": "BTCUSDT", "interval": "2d"}, ("INVALID_INTERVAL",)),
    ]
    for (method, path), params, (name, *args) in cases:
        assert answer(signed(emu, method, path, **params)) == facts.ERRORS[name].fmt(*args), (path, params)


def test_every_endpoint_is_charged_binances_weight(emu):
    """Every endpoint of binance_facts, called over HTTP, moves ``X-MBX-USED-WEIGHT-1M`` by
    ``binance_facts.request_weight`` of its method, path and parameters (with and without a
    symbol where that changes the weight)."""
    emu.venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 20.0, opened_at=T0)
    key = requests.post(f"http://127.0.0.1:{emu.port}/fapi/v1/listenKey", headers={"X-MBX-APIKEY": KEY}, timeout=2.0)
    assert key.status_code == 200
    params = {
        ("GET", "/fapi/v1/klines"): {"symbol": "BTCUSDT", "interval": "1m", "limit": 600},
        ("POST", "/fapi/v1/order"): {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "MARKET",
            "quantity": "0.001",
            "reduceOnly": "true",
            "newClientOrderId": "w-1",
        },
        ("GET", "/fapi/v1/order"): {"symbol": "BTCUSDT", "origClientOrderId": "w-1"},
        ("DELETE", "/fapi/v1/order"): {"symbol": "BTCUSDT", "origClientOrderId": "w-1"},
        ("POST", "/fapi/v1/algoOrder"): {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "algoType": "CONDITIONAL",
            "type": "STOP_MARKET",
            "triggerPrice": "90000",
            "closePosition": "true",
            "clientAlgoId": "w-2",
        },
        ("GET", "/fapi/v1/algoOrder"): {"symbol": "BTCUSDT", "clientAlgoId": "w-2"},
        ("DELETE", "/fapi/v1/algoOrder"): {"symbol": "BTCUSDT", "clientAlgoId": "w-2"},
        ("POST", "/fapi/v1/leverage"): {"symbol": "BTCUSDT", "leverage": "5"},
        ("POST", "/fapi/v1/marginType"): {"symbol": "ETHUSDT", "marginType": "CROSSED"},
        ("POST", "/fapi/v1/positionSide/dual"): {"dualSidePosition": "false"},
        ("GET", "/fapi/v1/userTrades"): {"symbol": "BTCUSDT"},
        ("GET", "/fapi/v1/allOrders"): {"symbol": "BTCUSDT"},
        ("GET", "/fapi/v1/allAlgoOrders"): {"symbol": "BTCUSDT"},
    }
    order = sorted(facts.ENDPOINTS, key=lambda mp: (mp[1], ["POST", "GET", "PUT", "DELETE"].index(mp[0])))
    variants = []
    for mp in order:
        variants.append((mp, params.get(mp, {})))
        if facts.ENDPOINTS[mp].weight_no_symbol is not None:
            variants.append((mp, {"symbol": "BTCUSDT"}))
    before = int(requests.get(f"http://127.0.0.1:{emu.port}/fapi/v1/ping", timeout=2.0).headers["X-MBX-USED-WEIGHT-1M"])
    for (method, path), p in variants:
        r = signed(emu, method, path, **p)
        assert r.status_code < 500, (method, path, r.text)
        after = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        delta = after - before if after >= before else after  # a new minute window started
        assert delta == facts.request_weight(method, path, p), (method, path, p, r.status_code, r.text[:200])
        before = after
    assert len(variants) == len(facts.ENDPOINTS) + 2
