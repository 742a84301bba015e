"""The venue contract: what harvest relies on from every venue, asserted alike on the paper
engine, the emulator through python-binance and (opted in) Binance's testnet
(``tests/contract/conftest.py``). Where a venue legitimately differs, the test says so and why.

Errors are asserted by harvest's venue-neutral reason (:class:`harvest.venues.base.VenueReason`),
never by a venue's code: that is what services, tasks and guard rules test.
"""

from __future__ import annotations

import pytest

from harvest.data import SymbolFilters
from harvest.domain.models import Side
from harvest.venues import binance_facts as facts
from harvest.venues.base import VenueError, VenueReason
from tests.contract.conftest import VenueUnderTest

BTC, ETH = "BTCUSDT", "ETHUSDT"


def price(vut: VenueUnderTest, symbol: str, x: float, direction: str) -> str:
    """``x`` (USDT) on the symbol's tickSize, as the wire takes it."""
    return SymbolFilters.fmt(vut.venue.filters(symbol).round_price(x, direction))


def refused(fn, *args) -> VenueError:
    """The VenueError ``fn(*args)`` raises (the test fails when it raises none)."""
    with pytest.raises(VenueError) as e:
        fn(*args)
    return e.value


# ----------------------------------------------------------------------------- reference data


def test_reference_data_bars_and_the_clock(vut):
    v = vut.venue
    f = v.filters(BTC)
    assert f.step_size > 0 and f.tick_size > 0 and f.min_qty > 0 and f.min_notional > 0
    assert v.mark_price(BTC) > 0 and v.source(BTC) == BTC
    opens, closes = v.closed_bars(BTC, 30)
    assert opens.shape == closes.shape == (30,) and (closes > 0).all()
    assert (opens[1:] - opens[:-1] == 60_000).all()  # 1-minute bars, oldest first, no gap
    if vut.sim is not None:  # the replay's clock: the last bar is the last minute closed by it
        now = vut.sim.clock.now()
        assert opens[-1] == (int(now // 60) - 1) * 60_000
    # the venue's clock against harvest's reading of it: 0 on the in-process engine (this
    # machine's clock); a measured offset within the default limit on the others
    offset = v.clock_offset_ms()
    assert offset == 0 if vut.name == "paper" else abs(offset) < 1000
    # reference data refreshed: the listed symbols (the paper engine's exchangeInfo is shipped: 0)
    n = v.refresh_exchange_info()
    assert n == 0 if vut.name == "paper" else n >= len((BTC, ETH))


# ----------------------------------------------------------------------------- orders


def test_open_then_a_partial_reduce_only_close_found_by_client_id_and_by_order_id(vut):
    v = vut.venue
    p = v.open_position(BTC, Side.LONG, 0.010, 10)
    assert (p.symbol, p.side, p.qty) == (BTC, Side.LONG, 0.010)
    cid = vut.cid()
    o = v.close_market(BTC, "SELL", "0.004", cid)
    assert (o.client_order_id, o.status, o.executed_qty) == (cid, "FILLED", 0.004) and o.avg_price > 0
    assert v.position(BTC).qty == pytest.approx(0.006)  # reduced, not closed
    by_cid = v.get_order(BTC, cid)
    assert (by_cid.order_id, by_cid.status, by_cid.executed_qty) == (o.order_id, "FILLED", 0.004)
    assert by_cid.commission > 0  # the fill's fee, read with the order (Binance: userTrades)
    by_id = v.order_by_id(BTC, o.order_id)
    assert (by_id.client_order_id, by_id.status) == (cid, "FILLED")
    assert cid in [x.client_order_id for x in v.all_orders([BTC])]
    orders, pnl = v.account_records([BTC])  # the scorecard's reading: harvest's own orders (hv-)
    assert cid in [x.client_order_id for x in orders] and pnl[BTC]["commission"] > 0


def test_a_stop_is_placed_found_moved_and_cancelled(vut):
    v = vut.venue
    v.open_position(BTC, Side.LONG, 0.010, 10)
    mark = v.mark_price(BTC)
    sp, cid = price(vut, BTC, mark * 0.95, "down"), vut.cid()
    s = v.move_stop(BTC, "SELL", sp, cid)
    assert (s.algo, s.status, s.stop_price, s.client_order_id) == (True, "NEW", float(sp), cid)
    assert v.get_order(BTC, cid, conditional=True).status == "NEW"
    assert v.order_by_id(BTC, s.order_id, conditional=True).client_order_id == cid
    assert v.position(BTC).stop_price == float(sp)
    # a move places the new stop, then cancels the older one: never unprotected
    sp2, cid2 = price(vut, BTC, mark * 0.97, "down"), vut.cid()
    v.move_stop(BTC, "SELL", sp2, cid2)
    assert [o.client_order_id for o in v.open_orders(BTC, algo=True)] == [cid2]
    assert v.get_order(BTC, cid, conditional=True).status == "CANCELED"
    assert v.position(BTC).stop_price == float(sp2)
    c = v.cancel_stop(BTC, cid2)
    assert (c.client_order_id, c.status) == (cid2, "CANCELED")
    assert v.open_orders(BTC, algo=True) == [] and v.position(BTC).stop_price is None
    assert refused(v.cancel_stop, BTC, cid2).reason is VenueReason.CANCEL_REJECTED


def test_a_stop_triggers_when_the_mark_crosses_it_and_fills_as_a_real_order(vut):
    if vut.sim is None:
        pytest.skip("testnet: the mark cannot be moved from here; a stop's trigger is Binance's own")
    v = vut.venue
    v.open_position(BTC, Side.LONG, 0.010, 10)
    mark = v.mark_price(BTC)
    sp, cid = price(vut, BTC, mark * 0.95, "down"), vut.cid()
    v.move_stop(BTC, "SELL", sp, cid)
    vut.sim.set_mark(BTC, mark * 0.90)  # through the stop
    assert v.position(BTC) is None  # the stop closed the whole position (closePosition)
    algo = v.get_order(BTC, cid, conditional=True)
    assert algo.status == "FILLED" and algo.actual_order_id is not None
    filled = v.order_by_id(BTC, algo.actual_order_id)  # the order the trigger created
    assert (filled.status, filled.executed_qty, filled.orig_type) == ("FILLED", 0.010, "STOP_MARKET")
    assert 0 < filled.avg_price <= float(sp)  # a SELL stop fills at market: at or under its trigger
    assert v.open_orders(BTC, algo=True) == []


def test_a_position_mode_changed_under_the_venue_is_absorbed_by_a_close(vut):
    if vut.sim is None:
        pytest.skip("testnet: the account's position mode is the user's setting; the suite does not flip it")
    v = vut.venue
    v.open_position(BTC, Side.LONG, 0.010, 10)  # one-way mode (the Binance adapter caches it)
    vut.sim.set_dual(True)  # hedge mode now: reduceOnly is refused (-1106), positionSide needed
    o = v.close_market(BTC, "SELL", "0.004", vut.cid())
    assert (o.status, o.executed_qty, o.position_side) == ("FILLED", 0.004, "LONG")
    assert v.position(BTC).qty == pytest.approx(0.006)


# ----------------------------------------------------------------------------- refusals


def test_an_order_that_does_not_exist_is_order_not_found(vut):
    v = vut.venue
    for e in (
        refused(v.get_order, BTC, vut.cid()),
        refused(v.get_order, BTC, vut.cid(), True),
        refused(v.order_by_id, BTC, 987_654_321),
    ):
        assert (e.reason, e.kind) == (VenueReason.ORDER_NOT_FOUND, "rejected")


def test_a_reduce_only_close_of_no_position_is_reduce_only_rejected(vut):
    assert vut.venue.position(ETH) is None
    e = refused(vut.venue.close_market, ETH, "SELL", "0.010", vut.cid())
    assert (e.reason, e.kind) == (VenueReason.REDUCE_ONLY_REJECTED, "rejected")


def test_a_quantity_off_the_step_is_precision_and_zero_is_too_small(vut):
    v = vut.venue
    v.open_position(BTC, Side.LONG, 0.010, 10)
    assert refused(v.close_market, BTC, "SELL", "0.0001", vut.cid()).reason is VenueReason.PRECISION
    assert refused(v.close_market, BTC, "SELL", "0", vut.cid()).reason is VenueReason.QTY_TOO_SMALL
    assert v.position(BTC).qty == 0.010  # nothing ran


def test_a_quantity_over_the_symbols_maximum_is_too_large(vut):
    v = vut.venue
    v.open_position(BTC, Side.LONG, 0.010, 10)
    assert refused(v.close_market, BTC, "SELL", "100000", vut.cid()).reason is VenueReason.QTY_TOO_LARGE
    assert v.position(BTC).qty == 0.010


def test_a_symbol_the_venue_does_not_list_is_bad_symbol(vut):
    v = vut.venue
    assert refused(v.filters, "NOPEUSDT").reason is VenueReason.BAD_SYMBOL
    assert refused(v.close_market, "NOPEUSDT", "SELL", "1", vut.cid()).reason is VenueReason.BAD_SYMBOL


def test_a_stop_through_the_mark_would_trigger(vut):
    v = vut.venue
    v.open_position(BTC, Side.LONG, 0.010, 10)
    sp = price(vut, BTC, v.mark_price(BTC) * 1.05, "up")  # a SELL stop above the mark
    assert refused(v.move_stop, BTC, "SELL", sp, vut.cid()).reason is VenueReason.WOULD_TRIGGER
    assert v.open_orders(BTC, algo=True) == []


def test_a_working_client_id_used_again_is_duplicate(vut):
    v = vut.venue
    v.open_position(BTC, Side.LONG, 0.010, 10)
    mark, cid = v.mark_price(BTC), vut.cid()
    v.move_stop(BTC, "SELL", price(vut, BTC, mark * 0.95, "down"), cid)
    e = refused(v.move_stop, BTC, "SELL", price(vut, BTC, mark * 0.94, "down"), cid)
    assert e.reason is VenueReason.DUPLICATE_CLIENT_ID
    assert [o.client_order_id for o in v.open_orders(BTC, algo=True)] == [cid]  # the first one stays


def test_an_opening_under_min_notional_is_refused(vut):
    # ETH: 0.001 at ~2 500 USDT is ~2.5 USDT, under its MIN_NOTIONAL of 20 (reduce-only exempt)
    e = refused(vut.open_order, ETH, Side.LONG, 0.001, 10)
    assert e.reason is VenueReason.MIN_NOTIONAL and vut.venue.position(ETH) is None


def test_an_opening_above_the_brackets_cap_is_max_notional(vut):
    # BTC at 125×: the first bracket's cap is 50 000 USDT; 1 BTC is about twice that
    e = refused(vut.open_order, BTC, Side.LONG, 1.0, 125)
    assert e.reason is VenueReason.MAX_NOTIONAL and vut.venue.position(BTC) is None


def test_an_opening_above_the_available_balance_is_margin_insufficient(vut):
    # 40 BTC at 1× is ~4 M USDT of initial margin (under the 1× bracket's 500 M cap): more than
    # the paper account's 100 000 USDT, and than a testnet account holds
    e = refused(vut.open_order, BTC, Side.LONG, 40.0, 1)
    assert e.reason is VenueReason.MARGIN_INSUFFICIENT and vut.venue.position(BTC) is None


# ----------------------------------------------------------------------------- rate limits


def _used_weight(vut: VenueUnderTest) -> int:
    return int(vut.headers()[facts.WEIGHT_HEADER])


def _weight_of(vut: VenueUnderTest, call, expected: int) -> int:
    """The X-MBX-USED-WEIGHT-1M moved by ``call()``; a minute turning between the two reads
    (the counter restarts) is read again, once."""
    for _ in range(2):
        vut.venue.mark_price(BTC)
        before = _used_weight(vut)
        call()
        after = _used_weight(vut)
        if after >= before:
            return after - before
    raise AssertionError("the weight counter restarted twice in a row")


def test_request_weight_and_order_counts_are_read_from_the_headers(vut):
    if not vut.binance:
        pytest.skip("paper: an in-process engine; no HTTP, no request weight or order counts to read")
    v = vut.venue
    mark_w = facts.request_weight("GET", "/fapi/v1/premiumIndex", {"symbol": BTC})
    all_open_w = facts.request_weight("GET", "/fapi/v1/openOrders", {}) + facts.request_weight(
        "GET", "/fapi/v1/openAlgoOrders", {}
    )
    assert all_open_w == 80  # 40 each without a symbol, as Binance charges
    got = {"mark": _weight_of(vut, lambda: v.mark_price(BTC), mark_w), "open": _weight_of(vut, v.open_orders, 80)}
    if vut.name == "testnet":  # other clients of this IP share the counter: at least ours
        assert got["mark"] >= mark_w and got["open"] >= all_open_w
    else:
        assert got == {"mark": mark_w, "open": all_open_w}
    assert v.budget.used() >= _used_weight(vut)  # the fleet's budget took the exchange's figure
    v.open_position(BTC, Side.LONG, 0.010, 10)
    counts = []
    for _ in range(2):
        v.close_market(BTC, "SELL", "0.001", vut.cid())
        h = vut.headers()
        assert {facts.order_count_header(w) for w, _ in facts.ORDER_LIMITS} <= set(h)
        counts.append(int(h[facts.order_count_header(60)]))
    # the account's orders this minute: one more per order (testnet: other orders of the account may add)
    assert counts[1] - counts[0] >= 1 if vut.name == "testnet" else counts[1] - counts[0] == 1
