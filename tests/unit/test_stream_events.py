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
