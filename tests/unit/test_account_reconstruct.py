"""harvest.lab.account.reconstruct (issue 35, item 4) on hand-made exchange rows: a scale-in's
entry is the volume-weighted price, a fill through zero closes one position and opens the
other side, a history that starts inside a position leaves it out, each close's kind comes from
its order (the first stop, a moved stop, harvest's close, a plain close), the stop a position
had is the first on its closing side and loss side, funding is charged within the position's
life; the 7-day windows the reader cuts a span into."""

from __future__ import annotations

import math

import pytest

from harvest.lab.account import reconstruct
from harvest.venues.binance_facts import HISTORY_WINDOW_MS
from harvest.venues.binance_history import AccountHistory

T = 1_750_464_000_000  # ms


def fill(i, side, qty, price, t, pnl=0.0, fee=0.1, oid=None, sym="ETHUSDT", leg="BOTH"):
    return {
        "symbol": sym,
        "id": i,
        "orderId": oid if oid is not None else 100 + i,
        "side": side,
        "positionSide": leg,
        "qty": str(qty),
        "price": str(price),
        "realizedPnl": str(pnl),
        "commission": str(fee),
        "time": T + t * 60_000,
    }


def algo(aid, side, trigger, t, actual="", sym="ETHUSDT"):
    return {
        "symbol": sym,
        "algoId": aid,
        "orderType": "STOP_MARKET",
        "side": side,
        "triggerPrice": str(trigger),
        "createTime": T + t * 60_000,
        "actualOrderId": str(actual),
    }


def test_scale_in_partial_harvest_and_a_moved_stop():
    trades = [
        fill(1, "BUY", 1.0, 100.0, 0),
        fill(2, "BUY", 1.0, 110.0, 5),  # adds: entry 105, qty 2
        fill(3, "SELL", 0.5, 120.0, 10, pnl=7.5, oid=900),  # harvest's partial
        fill(4, "SELL", 1.5, 104.0, 20, pnl=-1.5, oid=901),  # the moved stop
    ]
    orders = [{"orderId": 900, "clientOrderId": "hv-00000000000000aa-0", "type": "MARKET", "symbol": "ETHUSDT"}]
    stops = [algo(1, "SELL", 95.0, 0), algo(2, "SELL", 104.5, 12, actual=901), algo(3, "BUY", 90.0, 1)]
    funding = [
        {"symbol": "ETHUSDT", "income": "-0.2", "time": T + 8 * 60_000},
        {"symbol": "ETHUSDT", "income": "-5", "time": T + 60 * 60_000},  # after the close
    ]
    (p,) = reconstruct(trades, stops, orders, funding, {"ETHUSDT": 20.0}).positions
    assert (p.side.value, p.entry_price, p.qty, p.leverage, p.stop) == ("LONG", 105.0, 2.0, 20.0, 95.0)
    assert [(q, k) for _, _, q, k in p.closes] == [(0.5, "harvest"), (1.5, "locked_stop")]
    assert p.exit_reason == "locked_stop" and p.partials == 1 and not p.is_open
    assert p.realized_pnl == 6.0 and p.fees == pytest.approx(0.4) and p.funding == pytest.approx(0.2)
    assert p.r() == pytest.approx((6.0 - 0.4 - 0.2) / (10.0 * 2.0))


def test_through_zero_closes_and_opens_the_other_side():
    trades = [
        fill(1, "SELL", 2.0, 50.0, 0),
        fill(2, "BUY", 3.0, 48.0, 10, pnl=4.0, fee=0.3, oid=77),  # closes the SHORT, opens a LONG of 1
    ]
    stops = [algo(1, "BUY", 52.0, 0, actual=77), algo(2, "SELL", 47.0, 10)]
    a, b = reconstruct(trades, stops).positions
    assert (a.side.value, a.qty, a.stop, a.exit_reason, a.realized_pnl) == ("SHORT", 2.0, 52.0, "stop", 4.0)
    assert a.fees == pytest.approx(0.1 + 0.2)
    assert (b.side.value, b.qty, b.entry_price, b.stop, b.is_open, b.exit_reason) == (
        "LONG",
        1.0,
        48.0,
        47.0,
        True,
        "open",
    )
    assert b.fees == pytest.approx(0.1) and b.net(mark=49.0) == pytest.approx(1.0 - 0.1)


def test_a_history_that_starts_inside_a_position_leaves_it_out_and_no_stop_is_nan_r():
    trades = [
        fill(1, "SELL", 1.0, 100.0, 0, pnl=3.0),  # closes something opened before the history
        fill(2, "BUY", 0.5, 101.0, 5),
        fill(3, "SELL", 0.5, 99.0, 9, pnl=-1.0),
    ]
    rec = reconstruct(trades, [algo(1, "SELL", 102.0, 5)])  # on the profit side: not a stop
    assert rec.partial_history == 1
    (p,) = rec.positions
    assert (p.entry_price, p.qty, p.stop, p.exit_reason) == (101.0, 0.5, None, "close")
    assert math.isnan(p.r()) and p.r(stop=100.0) == pytest.approx((-1.0 - 0.2) / 0.5)


def test_hedge_legs_are_apart():
    trades = [
        fill(1, "BUY", 1.0, 10.0, 0, leg="LONG"),
        fill(2, "SELL", 2.0, 10.0, 1, leg="SHORT"),
        fill(3, "SELL", 1.0, 11.0, 2, pnl=1.0, leg="LONG"),
    ]
    long_, short = sorted(reconstruct(trades).positions, key=lambda p: p.side.value)
    assert (long_.qty, long_.is_open, short.qty, short.is_open) == (1.0, False, 2.0, True)


def test_a_row_that_does_not_read_is_named():
    with pytest.raises(ValueError, match="userTrades row"):
        reconstruct([{"symbol": "ETHUSDT", "side": "BUY", "time": T}])


def test_spans_are_cut_in_windows_of_seven_days():
    w = AccountHistory.windows(0, 3 * HISTORY_WINDOW_MS)
    assert w[0] == (0, HISTORY_WINDOW_MS - 1) and w[-1][1] == 3 * HISTORY_WINDOW_MS and len(w) == 4
    assert all(b - a < HISTORY_WINDOW_MS for a, b in w) and all(w[i][1] + 1 == w[i + 1][0] for i in range(3))
