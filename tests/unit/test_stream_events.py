"""Stream events parsed and checked (issue 23): Binance's field letters into typed events;
anything malformed is refused with its reason; the ordering rule."""

from __future__ import annotations

import pytest

from harvest.domain.stream_events import (
    AlgoUpdate,
    ListenKeyExpired,
    MalformedEvent,
    MarkPrice,
    PositionUpdate,
    StreamGap,
    TradeUpdate,
    is_newer,
    parse_event,
)

E = 1_750_000_000_000


def test_an_account_update_gives_one_position_per_symbol():
    raw = {
        "e": "ACCOUNT_UPDATE",
        "E": E,
        "T": E,
        "a": {
            "m": "ORDER",
            "B": [],
            "P": [
                {"s": "BTCUSDT", "pa": "-0.010", "ep": "103200.1", "ps": "BOTH"},
                {"s": "ETHUSDT", "pa": "0", "ep": "0", "ps": "BOTH"},
            ],
        },
    }
    got = parse_event(raw, 0)
    assert got == [
        PositionUpdate(event_ms=E, symbol="BTCUSDT", amt=-0.01, entry=103200.1, reason="ORDER"),
        PositionUpdate(event_ms=E, symbol="ETHUSDT", amt=0.0, entry=0.0, reason="ORDER"),
    ]


def test_trades_algo_updates_marks_expiry_and_gaps():
    o = {"s": "BTCUSDT", "c": "h-1", "S": "SELL", "X": "FILLED", "x": "TRADE", "ot": "STOP_MARKET"}
    o |= {"l": "0.01", "L": "100", "z": "0.01", "ap": "100", "rp": "-1.5", "n": "0.05", "R": True}
    (t,) = parse_event({"e": "ORDER_TRADE_UPDATE", "E": E, "o": o}, 0)
    assert isinstance(t, TradeUpdate) and t.orig_type == "STOP_MARKET" and t.realized_pnl == -1.5
    (a,) = parse_event({"e": "ALGO_UPDATE", "E": E, "o": {"s": "BTCUSDT", "caid": "c", "X": "TRIGGERED"}}, 0)
    assert isinstance(a, AlgoUpdate) and a.status == "TRIGGERED"
    mark = {"e": "markPriceUpdate", "E": E, "s": "BTCUSDT", "p": "100.5", "r": "0.0001", "T": E + 1}
    (m,) = parse_event({"stream": "btcusdt@markPrice@1s", "data": mark}, 0)
    assert m == MarkPrice(event_ms=E, symbol="BTCUSDT", mark=100.5, funding_rate=0.0001, next_funding_ms=E + 1)
    assert parse_event({"e": "listenKeyExpired", "E": E, "listenKey": "k"}, 0) == [
        ListenKeyExpired(event_ms=E, listen_key="k")
    ]
    assert parse_event({"e": "error", "type": "ConnectionClosedError", "m": "x"}, 7) == [
        StreamGap(event_ms=7, kind="ConnectionClosedError")
    ]


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("not json", "not a JSON object"),
        ({"E": E}, "no event type"),
        ({"e": "ACCOUNT_UPDATE", "E": "soon", "a": {"P": []}}, "'E'"),
        ({"e": "ACCOUNT_UPDATE", "E": E, "a": {"P": [{"s": "BTCUSDT", "pa": "NaN", "ep": "1"}]}}, "not finite"),
        ({"e": "ACCOUNT_UPDATE", "E": E, "a": {"P": [{"s": "BTCUSDT", "pa": "1", "ep": "-1"}]}}, "entry price"),
        ({"e": "ACCOUNT_UPDATE", "E": E, "a": {"P": [{"s": "X", "pa": "1", "ep": "1", "ps": "LONG"}]}}, "hedge"),
        ({"e": "markPriceUpdate", "E": E, "s": "BTCUSDT", "p": "0", "r": "0", "T": E}, "≤ 0"),
        ({"e": "ALGO_UPDATE", "E": E, "o": {"s": "BTCUSDT", "caid": "c", "X": "DONE"}}, "unknown algo status"),
        ({"e": "ORDER_TRADE_UPDATE", "E": E, "o": {"s": "BTCUSDT"}}, "'c'"),
        ({"e": "MARGIN_CALL", "E": E}, "unknown event type"),
        ({"stream": "x", "data": [1]}, "not an object"),
    ],
)
def test_malformed_events_are_refused_with_their_reason(raw, reason):
    with pytest.raises(MalformedEvent, match=reason):
        parse_event(raw, 0)


def test_the_ordering_rule():
    assert is_newer(5, None) and is_newer(5, 5) and is_newer(6, 5) and not is_newer(4, 5)


def _trade(tid: int, last: float, cum: float, status: str, ms: int, n: float = 0.01, rp: float = 1.0) -> TradeUpdate:
    return TradeUpdate(
        event_ms=ms,
        symbol="BTCUSDT",
        client_id="hv-0123456789abcdef-0",
        side="SELL",
        status=status,
        exec_type="TRADE",
        orig_type="MARKET",
        last_qty=last,
        last_price=100.0 + tid,
        cum_qty=cum,
        avg_price=100.0 + tid / 2,
        realized_pnl=rp,
        commission=n,
        reduce_only=True,
        trade_id=tid,
        order_id=77,
    )


@pytest.mark.parametrize("seed", range(25))
def test_an_orders_outcome_is_the_same_whatever_the_order_and_repeats_of_its_events(seed):
    """A MARKET close filled in three trades: its events in any order, some twice, fold into
    one outcome (largest cumulative qty and its average, each trade's commission and realized
    PnL once); a final FILLED is not undone by a late PARTIALLY_FILLED; with a trade lost in a
    gap the outcome is not conclusive (confirm reads REST instead)."""
    import random

    from harvest.domain.stream_events import conclusive, fold_order

    new = TradeUpdate(**{**_trade(0, 0.0, 0.0, "NEW", E).model_dump(), "exec_type": "NEW", "trade_id": 0})
    events = [new, _trade(1, 0.2, 0.2, "PARTIALLY_FILLED", E + 1), _trade(2, 0.3, 0.5, "PARTIALLY_FILLED", E + 2)]
    events.append(_trade(3, 0.5, 1.0, "FILLED", E + 3))
    rng = random.Random(seed)
    shuffled = events + rng.sample(events, 2)
    rng.shuffle(shuffled)
    d = None
    for ev in shuffled:
        d = fold_order(d, ev)
    assert d is not None and d["status"] == "FILLED" and conclusive(d)
    assert d["cum_qty"] == 1.0 and d["avg_price"] == 101.5 and d["order_id"] == 77
    assert d["filled"] == pytest.approx(1.0) and d["commission"] == pytest.approx(0.03)
    assert d["realized"] == pytest.approx(3.0) and sorted(d["trades"]) == [1, 2, 3]
    lost = None
    for ev in shuffled:
        if ev.trade_id != 2:
            lost = fold_order(lost, ev)
    assert lost is not None and lost["status"] == "FILLED" and not conclusive(lost)
    partial = fold_order(fold_order(None, events[1]), events[2])
    assert partial["status"] == "PARTIALLY_FILLED" and not conclusive(partial)


def test_an_algo_orders_outcome_is_conclusive_once_working_or_final():
    from harvest.domain.stream_events import conclusive, fold_order

    def algo(status: str, ms: int) -> AlgoUpdate:
        return AlgoUpdate(
            event_ms=ms,
            symbol="BTCUSDT",
            client_id="hv-x-0",
            status=status,
            order_type="STOP_MARKET",
            trigger_price=95.0,
        )

    assert not conclusive(fold_order(None, algo("TRIGGERING", E)))
    working = fold_order(None, algo("NEW", E))
    assert conclusive(working) and working["stop_price"] == 95.0
    gone = fold_order(fold_order(None, algo("CANCELED", E + 5)), algo("NEW", E))  # NEW arrived late
    assert gone["status"] == "CANCELED" and conclusive(gone)
    assert not conclusive(None)


def test_a_funding_fee_update_gives_the_balance_change_and_the_positions_it_names():
    from harvest.domain.stream_events import FundingFee

    cross = {"e": "ACCOUNT_UPDATE", "E": E, "T": E, "a": {"m": "FUNDING_FEE", "B": [{"a": "USDT", "bc": "-0.25"}]}}
    assert parse_event(cross, E) == [FundingFee(event_ms=E, change=-0.25, symbols=())]
    isolated = {
        "e": "ACCOUNT_UPDATE",
        "E": E,
        "a": {
            "m": "FUNDING_FEE",
            "B": [{"a": "USDT", "bc": "0.5"}, {"a": "BNB", "bc": "9"}],
            "P": [{"s": "ETHUSDT", "pa": "-1", "ep": "2000", "ps": "BOTH"}],
        },
    }
    pos, fee = parse_event(isolated, E)
    assert isinstance(pos, PositionUpdate) and fee == FundingFee(event_ms=E, change=0.5, symbols=("ETHUSDT",))
    with pytest.raises(MalformedEvent, match="'bc'"):
        parse_event({**cross, "a": {"m": "FUNDING_FEE", "B": [{"a": "USDT", "bc": "x"}]}}, E)
    with pytest.raises(MalformedEvent, match="a.B"):
        parse_event({**cross, "a": {"m": "FUNDING_FEE", "B": "USDT"}}, E)


def test_a_kline_event_gives_its_bar_and_whether_it_closed():
    from harvest.domain.stream_events import Kline

    raw = {"e": "kline", "E": E, "s": "BTCUSDT", "k": {"t": E - 60_000, "i": "1m", "c": "101.5", "x": True}}
    assert parse_event(raw, E) == [Kline(event_ms=E, symbol="BTCUSDT", open_ms=E - 60_000, close=101.5, closed=True)]
    assert parse_event({**raw, "k": {**raw["k"], "x": False}}, E)[0].closed is False
    for k, why in [({**raw["k"], "i": "5m"}, "interval"), ({**raw["k"], "c": "0"}, "close"), (None, "'k'")]:
        with pytest.raises(MalformedEvent, match=why):
            parse_event({**raw, "k": k}, E)


# --------------------------------------------------------------------------- the account's cache (issue 32)


def _pu(amt: float, entry: float = 100.0, ms: int = 2) -> PositionUpdate:
    return PositionUpdate(event_ms=ms, symbol="BTCUSDT", amt=amt, entry=entry, reason="ORDER")


def test_a_position_update_folds_into_a_rest_row_or_asks_for_rest():
    from harvest.domain.stream_events import fold_position

    rest = {"amt": 1.0, "entry": 100.0, "event_ms": 1, "row": {"symbol": "BTCUSDT", "qty": 1.0, "entry_price": 100.0}}
    row, need = fold_position(rest, _pu(0.4))  # a partial close: the row follows, nothing to read
    assert not need and row["row"]["qty"] == 0.4 and row["row"]["entry_price"] == 100.0 and row["amt"] == 0.4
    assert rest["row"]["qty"] == 1.0  # not modified
    row, need = fold_position(rest, _pu(0.0))  # closed: flat, nothing to read
    assert not need and row["amt"] == 0 and "row" not in row
    row, need = fold_position(rest, _pu(-0.5))  # a flip: a new opening, REST's fields needed
    assert need and "row" not in row
    row, need = fold_position(None, _pu(0.2))  # an opening
    assert need and "row" not in row
    row, need = fold_position({"amt": 0.0, "entry": 0.0, "event_ms": 1}, _pu(0.2))  # reopened
    assert need


def test_working_orders_and_the_stop_in_force_follow_order_and_algo_events():
    from harvest.domain.stream_events import AlgoUpdate, TradeUpdate, open_order_change, working_stop

    def algo(cid: str, status: str, tp: float, side: str = "SELL") -> AlgoUpdate:
        return AlgoUpdate(
            event_ms=5,
            symbol="BTCUSDT",
            client_id=cid,
            status=status,
            order_type="STOP_MARKET",
            trigger_price=tp,
            side=side,
            close_position=True,
        )

    orders: dict[str, dict] = {}
    for ev in (algo("a", "NEW", 95.0), algo("b", "NEW", 97.0), algo("c", "NEW", 105.0, "BUY")):
        k, e = open_order_change(ev)
        orders[k] = e
    assert set(orders) == {"algo:a", "algo:b", "algo:c"}
    assert working_stop(list(orders.values()), "BTCUSDT", 1) == 97.0  # a LONG's highest SELL stop
    assert working_stop(list(orders.values()), "BTCUSDT", -1) == 105.0  # a SHORT's BUY stop
    assert working_stop(list(orders.values()), "ETHUSDT", 1) is None
    k, e = open_order_change(algo("b", "TRIGGERED", 97.0))
    assert (k, e) == ("algo:b", None)
    del orders[k]
    assert working_stop(list(orders.values()), "BTCUSDT", 1) == 95.0
    fill = dict(
        event_ms=6, symbol="BTCUSDT", client_id="b", side="SELL", exec_type="NEW", orig_type="STOP_MARKET",
        last_qty=0.0, last_price=0.0, cum_qty=0.0, avg_price=0.0, realized_pnl=0.0, commission=0.0, reduce_only=True,
    )  # fmt: skip
    k, e = open_order_change(TradeUpdate(status="NEW", **fill))
    assert k == "order:b" and e is not None and e["type"] == "STOP_MARKET" and not e["algo"]  # apart from the algo
    assert open_order_change(TradeUpdate(status="FILLED", **fill)) == ("order:b", None)


def test_the_audit_finds_what_the_cache_got_wrong_and_skips_what_moved_during_the_read():
    from harvest.domain.stream_events import audit_differences

    rest = {"BTCUSDT": (1.0, 100.0, 95.0), "ETHUSDT": (-2.0, 3000.0, None), "SOLUSDT": (3.0, 150.0, 140.0)}
    same = dict(rest)
    assert audit_differences(rest, same, {"algo:a"}, {"algo:a"}, set()) == []
    missed = {k: v for k, v in rest.items() if k != "ETHUSDT"}
    [d] = audit_differences(rest, missed, set(), set(), set())
    assert (d["kind"], d["symbol"]) == ("position_missed", "ETHUSDT")
    assert audit_differences(rest, missed, set(), set(), {"ETHUSDT"}) == []  # an event during the read
    kinds = {
        d["kind"]
        for d in audit_differences(
            rest,
            {
                "BTCUSDT": (0.5, 100.0, 95.0),
                "ETHUSDT": (-2.0, 3100.0, None),
                "SOLUSDT": (3.0, 150.0, 141.0),
                "X": (1, 1, None),
            },
            {"algo:a"},
            {"algo:b"},
            set(),
        )
    }
    assert kinds == {
        "position_qty",
        "position_entry",
        "position_stop",
        "position_phantom",
        "order_missed",
        "order_phantom",
    }


def test_an_algo_update_carries_its_side_and_a_leverage_change_is_parsed():
    raw = {
        "e": "ALGO_UPDATE",
        "E": 10,
        "o": {
            "caid": "x",
            "aid": 7,
            "s": "BTCUSDT",
            "S": "SELL",
            "X": "NEW",
            "o": "STOP_MARKET",
            "tp": "95.5",
            "cp": True,
        },
    }
    [ev] = parse_event(raw, 0)
    assert (ev.side, ev.close_position, ev.algo_id, ev.trigger_price) == ("SELL", True, 7, 95.5)
    [lev] = parse_event({"e": "ACCOUNT_CONFIG_UPDATE", "E": 11, "ac": {"s": "BTCUSDT", "l": 20}}, 0)
    assert (lev.symbol, lev.leverage) == ("BTCUSDT", 20.0)
    assert parse_event({"e": "ACCOUNT_CONFIG_UPDATE", "E": 11, "ai": {"j": True}}, 0) == []
    with pytest.raises(MalformedEvent, match="leverage"):
        parse_event({"e": "ACCOUNT_CONFIG_UPDATE", "E": 11, "ac": {"s": "BTCUSDT", "l": 0}}, 0)
    with pytest.raises(MalformedEvent, match="tp"):
        parse_event(dict(raw, o=dict(raw["o"], tp="abc")), 0)
