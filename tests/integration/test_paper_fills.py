"""Fills as Binance makes them (issue 30): stops triggered by the price their workingType
names and filled as a real MARKET order with slippage, found by ``allOrders`` and
``userTrades`` through the real python-binance client against the emulator; Binance's
acceptance checks (-4164, -2019, -2027) on the emulator and the in-process paper venue; the
stream's event order of a triggered stop; the fill model's arithmetic on klines made for it."""

from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pytest
import redis
from binance.exceptions import BinanceAPIException
from websockets.sync.client import connect

from harvest.data import Klines, load_klines, shipped_filters
from harvest.domain.models import Side
from harvest.venues.base import VenueError
from harvest.venues.binance import BinanceVenue, make_client
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.emulator import Emulator
from harvest.venues.sim.paper import PaperVenue
from harvest.venues.sim.paper_settlement import stop_fills, trigger_bar
from tests.harness import wait_for
from tests.pipeline_helpers import T0

KEY, SECRET = "fills-test-key", "fills-test-secret"
NS = "fills-test"
#: ETH fell 6 % into 2025-06-21 21:31 UTC (market time): a stop 2 % under the T0 price is crossed.
CRASH_END = 1750541520.0


def _fresh(redis_url: str) -> tuple[redis.Redis, MarketClock]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for k in r.scan_iter(f"{NS}:*"):
        r.delete(k)
    clock = MarketClock(r, NS, T0, 0.0)
    clock.set(T0, 0.0)
    return r, clock


@pytest.fixture()
def emu(redis_url):
    r, clock = _fresh(redis_url)
    e = Emulator(r, NS, "paper", KEY, SECRET, clock=clock).start(stream_tick_s=0.2)
    yield e
    e.stop()
    for k in r.scan_iter(f"{NS}:*"):
        r.delete(k)


@pytest.fixture()
def bv(emu):
    return BinanceVenue(emu.r, emu.ns, lambda: make_client(KEY, SECRET, emu.url, False, 5.0, 5000), 1800)


@pytest.fixture()
def paper(redis_url):
    r, clock = _fresh(redis_url)
    yield PaperVenue(r, NS, "inproc", clock)
    for k in r.scan_iter(f"{NS}:*"):
        r.delete(k)


def _first_mark_cross(symbol: str, t0: float, t1: float, stop: float) -> int:
    """Index of the first bar in [t0, t1] whose close (the engine's mark) is at or under ``stop``."""
    kl = load_klines(symbol)
    i0, i1 = kl.index_at(t0), kl.index_at(t1)
    return i0 + int(np.flatnonzero(kl.close[i0 : i1 + 1] <= stop)[0])


def test_a_mark_price_stop_fills_worse_than_its_trigger_as_a_real_order(emu, bv):
    """Done-when line 3: a stop triggered by the mark price fills worse than its trigger price,
    as a real order found by allOrders and userTrades (python-binance against the emulator)."""
    eng = emu.venue
    entry = eng.mark_price("ETHUSDT")
    eng.set_position("ETHUSDT", "LONG", 1.0, entry, 20.0, opened_at=T0)
    stop = round(entry * 0.98, 2)
    cid = "hv-00000000000000f1-0"
    placed = bv.move_stop("ETHUSDT", "SELL", f"{stop:.2f}", cid)  # workingType=MARK_PRICE, as harvest sends
    c = bv.client
    algo = c.futures_get_order(symbol="ETHUSDT", clientAlgoId=cid)
    assert (algo["algoStatus"], algo["workingType"], algo["actualOrderId"]) == ("NEW", "MARK_PRICE", "")
    created = algo["createTime"]

    emu.clock.set(CRASH_END, 0.0)  # the market crashes through the stop
    assert bv.position("ETHUSDT") is None  # the read settles: triggered and filled

    algo = c.futures_get_order(symbol="ETHUSDT", clientAlgoId=cid)
    j = _first_mark_cross("ETHUSDT", T0, CRASH_END, stop)
    kl = load_klines("ETHUSDT")
    assert algo["algoStatus"] == "FINISHED" and algo["algoId"] == placed.order_id
    assert algo["createTime"] == created  # kept; the trigger has its own time
    assert algo["triggerTime"] == int(kl.open_time[j]) * 1000 and algo["updateTime"] >= algo["triggerTime"]
    actual = int(algo["actualOrderId"])
    assert actual != placed.order_id

    rows = [o for o in c.futures_get_all_orders(symbol="ETHUSDT") if o["orderId"] == actual]
    assert len(rows) == 1, "the triggered stop's order is in allOrders"
    order = rows[0]
    assert (order["status"], order["type"], order["origType"], order["side"]) == (
        "FILLED",
        "MARKET",
        "STOP_MARKET",
        "SELL",
    )
    assert order["clientOrderId"] == cid and float(order["executedQty"]) == 1.0
    assert c.futures_get_order(symbol="ETHUSDT", orderId=actual)["orderId"] == actual

    trades = c.futures_account_trades(symbol="ETHUSDT", orderId=actual)
    assert trades and all(t["orderId"] == actual for t in trades)
    assert sum(float(t["qty"]) for t in trades) == pytest.approx(1.0)
    avg = sum(float(t["qty"]) * float(t["price"]) for t in trades)
    assert float(order["avgPrice"]) == pytest.approx(avg)
    # worse than the trigger: the stop less 10 % of the trigger bar's range (the default model)
    expected = float(
        shipped_filters()["ETHUSDT"].round_price(stop - 0.1 * (float(kl.high[j]) - float(kl.low[j])), "down")
    )
    assert avg < stop and avg == pytest.approx(expected)
    assert float(trades[0]["realizedPnl"]) == pytest.approx((expected - entry) * 1.0)
    # the adapter's own read of the stop agrees (FINISHED is reported as FILLED)
    assert bv.get_order("ETHUSDT", cid, conditional=True).status == "FILLED"


def test_mark_price_ignores_a_wick_that_contract_price_takes(paper, redis_url):
    """The same stop under a LONG, one MARK_PRICE and one CONTRACT_PRICE, over a window whose
    lows go through it but whose closes (the mark) never do: only the CONTRACT_PRICE one
    triggers, at its bar."""
    kl = load_klines("BTCUSDT")
    i0 = kl.index_at(T0)
    # the first bar after T0 whose low dips 20 USDT under every earlier low and every close up to
    # its own (a wick the mark never followed); the stop sits halfway into that dip
    floor = [min(kl.low[i0:i].min(), kl.close[i0 : i + 1].min()) for i in range(i0 + 1, i0 + 3000)]
    k = next(i for i, fl in zip(range(i0 + 1, i0 + 3000), floor, strict=True) if kl.low[i] < fl - 20)
    fl = float(min(kl.low[i0:k].min(), kl.close[i0 : k + 1].min()))
    stop = float(shipped_filters()["BTCUSDT"].round_price((float(kl.low[k]) + fl) / 2, "down"))
    other = PaperVenue(paper.r, NS, "inproc-contract", paper.clock)
    for v, wt in ((paper, "MARK_PRICE"), (other, "CONTRACT_PRICE")):
        v.set_position("BTCUSDT", "LONG", 0.01, float(kl.close[i0]), 10.0, opened_at=T0)
        v.place_stop("BTCUSDT", "SELL", f"{stop:.1f}", f"s-{wt}", working_type=wt)
    paper.clock.set(float(kl.open_time[k]) + 30, 0.0)
    assert paper.position("BTCUSDT") is not None, "the mark never crossed: the MARK_PRICE stop still works"
    assert paper.get_order("BTCUSDT", "s-MARK_PRICE", conditional=True).status == "NEW"
    assert other.position("BTCUSDT") is None
    algo = other.get_order("BTCUSDT", "s-CONTRACT_PRICE", conditional=True)
    assert algo.status == "FILLED" and algo.trigger_time == float(kl.open_time[k])
    assert algo.avg_price < stop


def test_a_thin_bar_fills_part_and_the_rest_on_the_next_bars(paper):
    """A bar fills at most ``participation`` × its volume; the rest fills on the next bars
    under the same order (PARTIALLY_FILLED, algo TRIGGERED) until the order is FILLED."""
    v = paper
    entry = v.mark_price("ETHUSDT")
    stop = round(entry * 0.98, 2)
    j = _first_mark_cross("ETHUSDT", T0, CRASH_END, stop)
    kl = load_klines("ETHUSDT")
    qty = 30.0
    part = float(qty / 2.5 / kl.volume[j])  # the trigger bar takes 40 % of the order
    v.set_fill_model(0.1, part)
    v.set_position("ETHUSDT", "LONG", qty, entry, 5.0, opened_at=T0)
    v.set_balance(10_000_000)
    v.place_stop("ETHUSDT", "SELL", f"{stop:.2f}", "thin")
    v.clock.set(float(kl.open_time[j]) + 1, 0.0)  # inside the trigger bar
    pos = v.position("ETHUSDT")
    algo = v.get_order("ETHUSDT", "thin", conditional=True)
    order = v.get_order("ETHUSDT", "thin")  # the actual order, by the algo's client id
    assert algo.status == "TRIGGERED" and order.order_id == algo.actual_order_id
    assert order.status == "PARTIALLY_FILLED" and 0 < order.executed_qty < qty
    assert pos is not None and pos.qty == pytest.approx(qty - order.executed_qty)
    v.clock.set(float(kl.open_time[j + 40]), 0.0)  # enough bars for the rest
    assert v.position("ETHUSDT") is None
    order = v.order_by_id("ETHUSDT", algo.actual_order_id)
    assert order.status == "FILLED" and order.executed_qty == pytest.approx(qty)
    assert v.get_order("ETHUSDT", "thin", conditional=True).status == "FILLED"
    fills = [t for t in v.trades() if t["orderId"] == order.order_id]
    assert len(fills) >= 2 and [t["time"] for t in fills] == sorted(t["time"] for t in fills)
    assert fills[0]["time"] == float(kl.open_time[j]) and fills[1]["time"] == float(kl.open_time[j + 1])
    assert sum(t["qty"] for t in fills) == pytest.approx(qty)
    assert v.pnl()["ETHUSDT"]["stops_hit"] == 1


def test_a_close_of_the_rest_ends_a_stop_order_still_filling(paper):
    """harvest's reduce-only close takes what a thin bar left: the stop's order ends EXPIRED
    with what it filled, its algo order FINISHED, and nothing fills after."""
    v = paper
    entry = v.mark_price("ETHUSDT")
    stop = round(entry * 0.98, 2)
    j = _first_mark_cross("ETHUSDT", T0, CRASH_END, stop)
    kl = load_klines("ETHUSDT")
    v.set_fill_model(0.1, float(12.0 / kl.volume[j]))  # the trigger bar fills 12 of 30 ETH
    v.set_position("ETHUSDT", "LONG", 30.0, entry, 5.0, opened_at=T0)
    v.place_stop("ETHUSDT", "SELL", f"{stop:.2f}", "thin2")
    v.clock.set(float(kl.open_time[j]) + 1, 0.0)
    rest = v.position("ETHUSDT").qty
    assert 0 < rest < 30.0
    close = v.close_market("ETHUSDT", "SELL", f"{rest:g}", "hv-close-rest")
    assert close.status == "FILLED" and v.position("ETHUSDT") is None
    algo = v.get_order("ETHUSDT", "thin2", conditional=True)
    order = v.order_by_id("ETHUSDT", algo.actual_order_id)
    assert (algo.status, order.status) == ("FILLED", "EXPIRED")
    assert order.executed_qty == pytest.approx(30.0 - rest)
    v.clock.set(float(kl.open_time[j + 40]), 0.0)
    assert v.position("ETHUSDT") is None
    assert sum(t["qty"] for t in v.trades() if t["orderId"] == order.order_id) == pytest.approx(30.0 - rest)


def test_the_fill_model_on_klines_made_for_it():
    """:func:`stop_fills` and :func:`trigger_bar` by hand: slippage of 10 % of the range, a gap
    fills from the open, a fill never leaves the bar's range, a thin bar passes the rest on."""
    t = np.array([0, 60, 120, 180], dtype=np.int64)
    kl = Klines(
        "X",
        t,
        open=np.array([100.0, 99.0, 94.0, 93.0]),
        high=np.array([101.0, 99.5, 95.0, 94.0]),
        low=np.array([99.0, 97.0, 92.0, 90.0]),
        close=np.array([100.5, 98.0, 93.0, 91.0]),
        volume=np.array([100.0, 100.0, 5.0, 100.0]),
    )
    f = shipped_filters()["ETHUSDT"]  # tick 0.01, step 0.001
    # MARK_PRICE: bar 1's close (98) is the first at or under 98.5; CONTRACT_PRICE: bar 1's low too,
    # but at 99.0 only the low of bar 0 (a wick) reaches it.
    assert trigger_bar(kl, 0, 200, Side.LONG, 98.5, "MARK_PRICE") == 1
    assert trigger_bar(kl, 0, 200, Side.LONG, 99.0, "CONTRACT_PRICE") == 0
    assert trigger_bar(kl, 0, 200, Side.LONG, 99.0, "MARK_PRICE") == 1
    assert trigger_bar(kl, 0, 200, Side.LONG, 80.0, "MARK_PRICE") is None
    # in bar 1 from the trigger price 98.5: 98.5 − 0.1 × 2.5 = 98.25
    fills, left, nxt = stop_fills(kl, f, Side.LONG, Decimal("1"), 1, 3, 60.0, 98.5, None, 0.1, 0.1)
    assert fills == [(60.0, Decimal("1"), 98.25)] and left == 0 and nxt == 2
    # a gap: bar 2 opened at 94, under a 96 stop; 94 − 0.3 = 93.7; a SHORT's stop fills above
    fills, _, _ = stop_fills(kl, f, Side.LONG, Decimal("1"), 2, 3, 120.0, 94.0, None, 0.1, 1.0)
    assert fills[0][2] == pytest.approx(93.7)
    fills, _, _ = stop_fills(kl, f, Side.SHORT, Decimal("1"), 1, 3, 60.0, 99.0, None, 0.1, 1.0)
    assert fills[0][2] == pytest.approx(99.25)
    # never beyond the bar: slippage 100 % from 97.5 would be 95.0, the low is 97.0
    fills, _, _ = stop_fills(kl, f, Side.LONG, Decimal("1"), 1, 3, 60.0, 97.5, None, 1.0, 1.0)
    assert fills[0][2] == pytest.approx(97.0)
    # thin bar 2 (volume 5 × 0.1 = 0.5): 0.5 there, the rest in bar 3 from its open
    fills, left, nxt = stop_fills(kl, f, Side.LONG, Decimal("2"), 2, 3, 120.0, 94.0, None, 0.1, 0.1)
    assert [(x[0], x[1]) for x in fills] == [(120.0, Decimal("0.5")), (180.0, Decimal("1.5"))]
    assert fills[1][2] == pytest.approx(93.0 - 0.4) and left == 0
    # not all absorbed by the bar of now: the rest waits for the next bar
    fills, left, nxt = stop_fills(kl, f, Side.LONG, Decimal("20"), 2, 3, 120.0, 94.0, None, 0.1, 0.1)
    assert left == Decimal("20") - Decimal("0.5") - Decimal("10") and nxt == 4


def _api_error(fn) -> BinanceAPIException:
    with pytest.raises(BinanceAPIException) as e:
        fn()
    return e.value


CHECKS = {
    -4164: (400, "Order's notional must be no smaller than 5 (unless you choose reduce only)."),
    -2019: (400, "Margin is insufficient."),
    -2027: (400, "Exceeded the maximum allowable position at current leverage."),
}


def test_acceptance_checks_through_python_binance(emu, bv):
    """An opening the account cannot take is answered with Binance's code, HTTP status and
    message; a reduce-only close under MIN_NOTIONAL is not refused."""
    eng, c = emu.venue, bv.client
    # -4164: 10 DOGE ≈ 1.8 USDT, MIN_NOTIONAL 5
    e = _api_error(lambda: c.futures_create_order(symbol="DOGEUSDT", side="BUY", type="MARKET", quantity="10"))
    assert (e.code, (e.status_code, e.message)) == (-4164, CHECKS[-4164])
    # -2027: a 50x BTC position of 2.9 M USDT; the 50x bracket's cap is 3 M
    mark = eng.mark_price("BTCUSDT")
    eng.set_position("BTCUSDT", "LONG", 29.0, mark, 50.0, opened_at=T0)
    e = _api_error(lambda: c.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="1"))
    assert (e.code, (e.status_code, e.message)) == (-2027, CHECKS[-2027])
    assert eng.position("BTCUSDT").qty == 29.0  # nothing filled
    # within the cap it fills
    o = c.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01", newClientOrderId="add-1")
    assert o["status"] in ("NEW", "FILLED")
    # -2019: of a 60 k wallet the BTC position's margin takes 59.9 k (2.99 M / 50); 1 ETH at 10x needs ~250
    eng.set_balance(60_000)
    e = _api_error(lambda: c.futures_create_order(symbol="ETHUSDT", side="BUY", type="MARKET", quantity="1"))
    assert (e.code, (e.status_code, e.message)) == (-2019, CHECKS[-2019])
    assert eng.position("ETHUSDT") is None
    # a reduce-only close under MIN_NOTIONAL is exempt (Binance: "unless you choose reduce only")
    eng.set_position("DOGEUSDT", "LONG", 100.0, 0.18, 10.0, opened_at=T0)
    o = c.futures_create_order(
        symbol="DOGEUSDT", side="SELL", type="MARKET", quantity="10", reduceOnly="true", newOrderRespType="RESULT"
    )
    assert o["status"] == "FILLED"


def test_acceptance_checks_on_the_paper_venue(paper):
    v = paper
    for code, call in (
        (-4164, lambda: v.submit_market("DOGEUSDT", "BUY", "10", "o1", reduce_only=False)),
        (-2019, lambda: v.submit_market("BTCUSDT", "BUY", "10", "o2", reduce_only=False, leverage=10)),
        (-2027, lambda: v.submit_market("BTCUSDT", "BUY", "0.5", "o3", reduce_only=False, leverage=125)),
    ):
        with pytest.raises(VenueError) as e:
            call()
        assert (e.value.code, (e.value.http_status, e.value.message)) == (code, CHECKS[code])
    assert v.positions() == [] and v.trades() == []  # nothing filled, nothing recorded
    o = v.submit_market("BTCUSDT", "BUY", "0.4", "o4", reduce_only=False, leverage=125)  # 41 k < the 50 k cap
    assert o.status == "FILLED" and v.position("BTCUSDT").qty == pytest.approx(0.4)


def test_every_trade_names_its_order_and_a_reused_id_keeps_the_old_order(emu, bv):
    """An opening's trade carries its order's id (userTrades?orderId= finds it); a clientOrderId
    re-used once its order filled gives a new order, the earlier one stays findable by orderId
    and in allOrders, and a look-up by clientOrderId answers the newest."""
    c = bv.client
    first = c.futures_create_order(
        symbol="ETHUSDT", side="BUY", type="MARKET", quantity="0.5", newClientOrderId="re-1", newOrderRespType="RESULT"
    )
    trades = c.futures_account_trades(symbol="ETHUSDT", orderId=first["orderId"])
    assert [(t["orderId"], float(t["qty"])) for t in trades] == [(first["orderId"], 0.5)]
    again = c.futures_create_order(
        symbol="ETHUSDT",
        side="SELL",
        type="MARKET",
        quantity="0.2",
        reduceOnly="true",
        newClientOrderId="re-1",
        newOrderRespType="RESULT",
    )
    assert again["orderId"] != first["orderId"]
    assert c.futures_get_order(symbol="ETHUSDT", origClientOrderId="re-1")["orderId"] == again["orderId"]
    old = c.futures_get_order(symbol="ETHUSDT", orderId=first["orderId"])
    assert (old["clientOrderId"], old["side"], old["status"]) == ("re-1", "BUY", "FILLED")
    ids = [o["orderId"] for o in c.futures_get_all_orders(symbol="ETHUSDT") if o["clientOrderId"] == "re-1"]
    assert sorted(ids) == sorted([first["orderId"], again["orderId"]])
    for o in (first, again):
        assert [t["orderId"] for t in c.futures_account_trades(symbol="ETHUSDT", orderId=o["orderId"])] == [
            o["orderId"]
        ]


def test_the_stream_tells_a_triggered_stop_in_binances_order(emu, bv):
    """ALGO_UPDATE TRIGGERING, TRIGGERED (with the actual order's id), ORDER_TRADE_UPDATE NEW
    then TRADE FILLED of that order, ACCOUNT_UPDATE, and ALGO_UPDATE FINISHED last."""
    eng = emu.venue
    mark = eng.mark_price("BTCUSDT")
    eng.set_position("BTCUSDT", "LONG", 0.01, mark, 10.0, opened_at=T0)
    cid = "hv-00000000000000f2-0"
    bv.move_stop("BTCUSDT", "SELL", f"{round(mark * 0.99, 1):.1f}", cid)
    key = bv.client.futures_stream_get_listen_key()
    seen: list[tuple] = []
    actual = ""
    with connect(f"{emu.stream_url}ws/{key}", open_timeout=5) as ws:
        # the server reads the order log's tip for this connection; only later entries are sent
        wait_for(lambda: eng.account in emu.streams._last, 5, what="the user stream's registration")
        eng.set_mark("BTCUSDT", mark * 0.98)  # the mark falls through: the stream's settler triggers it
        while not seen or seen[-1] != ("ALGO_UPDATE", "FINISHED"):
            ev = json.loads(ws.recv(timeout=10))
            o = ev.get("o", {})
            if ev["e"] == "ALGO_UPDATE" and o.get("caid") == cid:
                seen.append((ev["e"], o["X"]))
                if o["X"] in ("TRIGGERED", "FINISHED"):
                    actual = o["ai"]
            elif ev["e"] == "ORDER_TRADE_UPDATE" and o.get("c") == cid:
                seen.append((ev["e"], o["x"], o["X"], o["o"], o["ot"], str(o["i"])))
            elif ev["e"] == "ACCOUNT_UPDATE" and seen:
                seen.append((ev["e"],))
    assert actual
    assert seen == [
        ("ALGO_UPDATE", "TRIGGERING"),
        ("ALGO_UPDATE", "TRIGGERED"),
        ("ORDER_TRADE_UPDATE", "NEW", "NEW", "MARKET", "STOP_MARKET", actual),
        ("ORDER_TRADE_UPDATE", "TRADE", "FILLED", "MARKET", "STOP_MARKET", actual),
        ("ACCOUNT_UPDATE",),
        ("ALGO_UPDATE", "FINISHED"),
    ]
