"""The paper venue's Binance semantics (real Redis, shipped filters, klines and funding)."""

from __future__ import annotations

import pytest

from harvest.venues.base import VenueError
from tests.pipeline_helpers import T0, clean_paper_venue


@pytest.fixture()
def venue():
    yield from clean_paper_venue("paper-test")


def code(excinfo) -> int:
    return excinfo.value.code


def test_filters_and_reduce_only_codes(venue):
    venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 10.0, opened_at=T0)
    venue.set_mark("BTCUSDT", 100_000.0)
    with pytest.raises(VenueError) as e:
        venue.close_market("BTCUSDT", "SELL", "0.0005", "c1")  # not a stepSize (0.001) multiple
    assert code(e) == -1111
    with pytest.raises(VenueError) as e:
        venue.close_market("BTCUSDT", "SELL", "0", "c2")
    assert code(e) == -4003
    with pytest.raises(VenueError) as e:
        venue.close_market("BTCUSDT", "BUY", "0.001", "c3")  # would increase a LONG
    assert (code(e), e.value.message) == (-2022, "ReduceOnly Order is rejected.")
    with pytest.raises(VenueError) as e:
        venue.close_market("BTCUSDT", "SELL", "121", "c4")  # MARKET_LOT_SIZE maxQty 120
    assert code(e) == -4005
    # Reduce-only orders are exempt from minNotional (100 USDT for BTCUSDT), as on Binance.
    venue.set_mark("BTCUSDT", 50_000.0)
    o = venue.close_market("BTCUSDT", "SELL", "0.001", "c5")  # 50 USDT < minNotional
    assert o.status == "FILLED" and o.executed_qty == pytest.approx(0.001)
    assert o.realized_pnl == pytest.approx(-50.0) and o.commission == pytest.approx(50_000 * 0.001 * 0.0005)
    # Binance keeps a clientOrderId unique only among open orders: a filled MARKET order's id
    # is free again, and the engine fills a re-send again (the dangerous reading).
    again = venue.close_market("BTCUSDT", "SELL", "0.001", "c5")
    assert again.status == "FILLED" and again.order_id != o.order_id
    assert [t["clientOrderId"] for t in venue.trades()].count("c5") == 2
    # A reduce-only order larger than the position fills only the position.
    o = venue.close_market("BTCUSDT", "SELL", "1", "c6")
    assert o.executed_qty == pytest.approx(0.008) and venue.position("BTCUSDT") is None
    assert venue.get_order("BTCUSDT", "c6").status == "FILLED"
    with pytest.raises(VenueError) as e:
        venue.get_order("BTCUSDT", "nope")
    assert code(e) == -2013


def test_order_and_position_read_together(venue):
    """Confirm's read: the order and the position after it in one call; the order's -2013
    as get_order raises it; a venue without its own version reads the two one after the
    other and leaves an unreadable position unread."""
    venue.set_position("BTCUSDT", "LONG", 0.010, 100_000.0, 10.0, opened_at=T0)
    venue.set_mark("BTCUSDT", 101_000.0)
    venue.close_market("BTCUSDT", "SELL", "0.004", "hv-part")
    o, vp, read = venue.order_and_position("BTCUSDT", "hv-part")
    assert (o.status, o.executed_qty, read) == ("FILLED", pytest.approx(0.004), True)
    assert vp.qty == pytest.approx(0.006) and vp.mark_price == pytest.approx(101_000.0)
    for sym, cid, conditional in (
        ("BTCUSDT", "nope", False),
        ("ETHUSDT", "hv-part", False),
        ("BTCUSDT", "hv-part", True),
    ):
        with pytest.raises(VenueError) as e:
            venue.order_and_position(sym, cid, conditional)
        assert code(e) == -2013
    venue.close_market("BTCUSDT", "SELL", "0.006", "hv-rest")
    assert venue.order_and_position("BTCUSDT", "hv-rest")[1:] == (None, True)  # flat after the close

    from harvest.venues.base import Venue

    class PositionDown(type(venue)):  # the base class's version, with a failing position read
        order_and_position = Venue.order_and_position

        def position(self, symbol):
            raise VenueError(-1001, "Internal error", 503, retryable=True)

    slow = PositionDown(venue.r, venue.ns, venue.account, venue.clock)
    o, vp, read = slow.order_and_position("BTCUSDT", "hv-part")
    assert (o.client_order_id, vp, read) == ("hv-part", None, False)


def test_below_min_qty_rejected_with_binance_code(venue):
    venue.set_position("SOLUSDT", "SHORT", 10.0, 150.0, 5.0, opened_at=T0)
    venue.set_mark("SOLUSDT", 140.0)
    with pytest.raises(VenueError) as e:
        venue.open_position("SOLUSDT", "SHORT", 0.5, 5.0)  # SOL stepSize 1, minQty 1 → rounds to 0
    assert code(e) == -4004


def test_stop_moves_and_triggers_on_the_kline_path(venue):
    rt_clock = venue.clock
    rt_clock.set(T0, 0.0)
    pos = venue.open_position("ETHUSDT", "LONG", 1.0, 20.0, stop_price=1.0)
    assert pos.entry_price == pytest.approx(venue.mark_price("ETHUSDT"))
    with pytest.raises(VenueError) as e:
        venue.move_stop("ETHUSDT", "SELL", "100000", "s1")  # above the mark: would trigger
    assert code(e) == -2021
    with pytest.raises(VenueError) as e:
        venue.move_stop("ETHUSDT", "SELL", "2400.001", "s2")  # tickSize 0.01
    assert code(e) == -1111
    # ETH fell 6 % into 2025-06-21 21:31 UTC: a stop 2 % under the T0 price is crossed on the way.
    stop = round(pos.entry_price * 0.98, 2)
    venue.move_stop("ETHUSDT", "SELL", f"{stop:.2f}", "s3")
    assert venue.position("ETHUSDT").stop_price == pytest.approx(stop)
    rt_clock.set(1750541520.0, 0.0)
    assert venue.position("ETHUSDT") is None
    # The mark (a bar's close) first crosses the stop in the 1-minute bar that fell from 2387.12 to
    # 2303.20 (high 2387.50, low 2300.00): the stop fills as a MARKET order at the stop less 10 %
    # of that bar's range (the fill model's default slippage), 8.75 USDT per ETH worse than the
    # stop — Binance's fill; the old engine filled at the stop itself, which was kinder.
    fill = 2354.89 - 0.1 * (2387.50 - 2300.00)
    pnl = venue.pnl()["ETHUSDT"]
    assert stop == 2354.89
    assert pnl["stops_hit"] == 1 and pnl["realized"] == pytest.approx((fill - pos.entry_price) * 1.0)
    assert venue.trades()[-1]["price"] == pytest.approx(fill)


def test_funding_is_paid_at_each_calc_time(venue):
    venue.clock.set(T0, 0.0)
    venue.open_position("BTCUSDT", "LONG", 0.1, 10.0)
    venue.clock.set(T0 + 24 * 3600, 0.0)  # three 8-hour funding events
    p = venue.position("BTCUSDT")
    from harvest.data import load_funding, load_klines

    t, r = load_funding("BTCUSDT")
    sel = (t > T0) & (t <= T0 + 24 * 3600)
    assert sel.sum() == 3
    kl = load_klines("BTCUSDT")
    expected = sum(rate * 0.1 * kl.mark_at(x) for x, rate in zip(t[sel], r[sel], strict=True))
    assert p.funding_paid == pytest.approx(expected)
