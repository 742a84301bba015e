"""Binance USDⓈ-M stream events, parsed and checked (issue 23). Pure, no I/O.

:func:`parse_event` turns one raw websocket message (a dict, as python-binance hands it over;
a combined stream's ``{"stream", "data"}`` wrapper is unwrapped) into one of:

* :class:`PositionUpdate` — per symbol of an ``ACCOUNT_UPDATE``'s ``a.P``: ``positionAmt``
  (``pa``, signed: > 0 LONG, < 0 SHORT, 0 flat) and entry price (``ep``) in one-way mode;
* :class:`TradeUpdate` — an ``ORDER_TRADE_UPDATE``: clientOrderId ``c``, side ``S``, status
  ``X``, last fill ``l`` @ ``L``, cumulative ``z``, average ``ap``, realized PnL ``rp``,
  commission ``n``, original type ``ot``;
* :class:`AlgoUpdate` — an ``ALGO_UPDATE`` (conditional orders): clientAlgoId ``caid``,
  status ``X`` (NEW, TRIGGERING, TRIGGERED, FINISHED, CANCELED, REJECTED, EXPIRED), trigger
  price ``tp``;
* :class:`MarkPrice` — a ``markPriceUpdate``: mark ``p``, funding rate ``r``, next funding
  ``T``;
* :class:`FundingFee` — an ``ACCOUNT_UPDATE`` of reason ``FUNDING_FEE``: the USDT balance
  change ``bc`` and the (isolated) positions it names;
* :class:`Kline` — a ``kline`` event of a 1m kline stream: open time ``k.t``, close ``k.c``,
  closed ``k.x``;
* :class:`ListenKeyExpired` — the user stream is over: a new listenKey is needed;
* :class:`StreamGap` — python-binance's ``{"e": "error"}``: the connection dropped (events
  may have been lost; only a REST resync closes the gap).

Anything else raises :class:`MalformedEvent` (recorded and ignored by the caller, never
applied). Field letters: Binance's "User Data Streams" and "Mark Price Stream" pages.

:func:`is_newer` is the ordering rule: an event applies only when its event time ``E`` (ms) is
not older than the last one applied to the same key (Binance: for one connection, events of
one type are ordered by ``E``; across reconnects they are not, so the rule is kept per key).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

ALGO_STATUSES = ("NEW", "TRIGGERING", "TRIGGERED", "FINISHED", "CANCELED", "REJECTED", "EXPIRED")


class MalformedEvent(ValueError):
    """A stream message that is not a well-formed event of a known type (the reason is the
    message)."""


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)
    event_ms: int


class PositionUpdate(_Event):
    """A position after an account change: ``amt`` signed base units (0 = flat), ``entry`` USDT."""

    symbol: str
    amt: float
    entry: float
    reason: str


class TradeUpdate(_Event):
    """An order's change: ``last_qty`` filled now at ``last_price``; ``cum_qty`` in all."""

    symbol: str
    client_id: str
    side: str
    status: str
    exec_type: str
    orig_type: str
    last_qty: float
    last_price: float
    cum_qty: float
    avg_price: float
    realized_pnl: float
    commission: float
    reduce_only: bool
    #: Binance's trade id ``t`` (0 when the event is no trade, or the id is missing).
    trade_id: int = 0
    #: Binance's orderId ``i`` (0 when missing).
    order_id: int = 0


class AlgoUpdate(_Event):
    """A conditional order's change (``status`` in :data:`ALGO_STATUSES`)."""

    symbol: str
    client_id: str
    status: str
    order_type: str
    trigger_price: float


class MarkPrice(_Event):
    """Mark price (USDT), funding rate (fraction per 8 h), next funding time (ms)."""

    symbol: str
    mark: float
    funding_rate: float
    next_funding_ms: int


class Kline(_Event):
    """A ``kline`` event of ``<symbol>@kline_1m``: the bar opened at ``open_ms`` (ms), its
    ``close`` (USDT) so far, and whether it is ``closed`` (``x``: final)."""

    symbol: str
    open_ms: int
    close: float
    closed: bool


class ListenKeyExpired(_Event):
    listen_key: str


class FundingFee(_Event):
    """An ``ACCOUNT_UPDATE`` of reason ``FUNDING_FEE``: the balance change ``change`` (USDT,
    ``bc`` of the USDT balance; negative when paid) and the ``symbols`` its ``P`` names
    (isolated positions only: for cross positions Binance names none, so the funding of each
    position must be read from REST income)."""

    change: float
    symbols: tuple[str, ...] = ()


class StreamGap(_Event):
    """The client library reported a dropped or failed connection (``kind``: its exception)."""

    kind: str


Event = PositionUpdate | TradeUpdate | AlgoUpdate | MarkPrice | Kline | ListenKeyExpired | FundingFee | StreamGap


def _num(d: dict[str, Any], k: str, what: str) -> float:
    try:
        v = float(d[k])
    except (KeyError, TypeError, ValueError):
        raise MalformedEvent(f"{what}: field {k!r} missing or not a number") from None
    if not math.isfinite(v):
        raise MalformedEvent(f"{what}: field {k!r} is not finite")
    return v


def _obj(d: dict[str, Any], k: str, what: str) -> dict[str, Any]:
    """A field that must be a JSON object."""
    v = d.get(k)
    if not isinstance(v, dict):
        raise MalformedEvent(f"{what}: '{k}' missing")
    return v


def _positive(d: dict[str, Any], k: str, what: str, name: str) -> float:
    """A price field that must be a finite number > 0 (``name`` in the error)."""
    v = _num(d, k, what)
    if v <= 0:
        raise MalformedEvent(f"{what}: {name} {v} ≤ 0")
    return v


def _str(d: dict[str, Any], k: str, what: str) -> str:
    v = d.get(k)
    if not isinstance(v, str) or not v:
        raise MalformedEvent(f"{what}: field {k!r} missing or not a string")
    return v


def _ms(d: dict[str, Any], k: str, what: str) -> int:
    v = d.get(k)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise MalformedEvent(f"{what}: field {k!r} missing or not a time in ms")
    return v


def parse_event(raw: Any, now_ms: int) -> list[Event]:
    """The events of one stream message (an ``ACCOUNT_UPDATE`` yields one per position).
    ``now_ms``: the receiver's clock, stamped on a :class:`StreamGap`. Raises MalformedEvent."""
    if not isinstance(raw, dict):
        raise MalformedEvent("not a JSON object")
    if "stream" in raw and "data" in raw:
        raw = raw["data"]
        if not isinstance(raw, dict):
            raise MalformedEvent("combined stream: data is not an object")
    kind = raw.get("e")
    if kind == "error":
        return [StreamGap(event_ms=now_ms, kind=str(raw.get("type") or "error")[:80])]
    if not isinstance(kind, str):
        raise MalformedEvent("no event type 'e'")
    e = _ms(raw, "E", kind)
    if kind == "markPriceUpdate":
        return [
            MarkPrice(
                event_ms=e,
                symbol=_str(raw, "s", kind),
                mark=_positive(raw, "p", kind, "mark price"),
                funding_rate=_num(raw, "r", kind),
                next_funding_ms=_ms(raw, "T", kind),
            )
        ]
    if kind == "kline":
        k = _obj(raw, "k", kind)
        if k.get("i") != "1m":
            raise MalformedEvent(f"{kind}: interval {k.get('i')!r} (harvest reads 1m bars)")
        return [
            Kline(
                event_ms=e,
                symbol=_str(raw, "s", kind),
                open_ms=_ms(k, "t", kind),
                close=_positive(k, "c", kind, "close"),
                closed=k.get("x") is True,
            )
        ]
    if kind == "listenKeyExpired":
        return [ListenKeyExpired(event_ms=e, listen_key=str(raw.get("listenKey") or ""))]
    if kind == "ACCOUNT_UPDATE":
        a = raw.get("a")
        if not isinstance(a, dict) or not isinstance(a.get("P", []), list):
            raise MalformedEvent(f"{kind}: 'a' or 'a.P' missing")
        out: list[Event] = []
        for p in a.get("P", []):
            if not isinstance(p, dict):
                raise MalformedEvent(f"{kind}: a position is not an object")
            if p.get("ps", "BOTH") != "BOTH":
                raise MalformedEvent(f"{kind}: hedge-mode position side {p.get('ps')!r} (harvest runs one-way)")
            entry = _num(p, "ep", kind)
            if entry < 0:
                raise MalformedEvent(f"{kind}: entry price {entry} < 0")
            out.append(
                PositionUpdate(
                    event_ms=e,
                    symbol=_str(p, "s", kind),
                    amt=_num(p, "pa", kind),
                    entry=entry,
                    reason=str(a.get("m") or ""),
                )
            )
        if a.get("m") == "FUNDING_FEE":
            balances = a.get("B", [])
            if not isinstance(balances, list) or not all(isinstance(b, dict) for b in balances):
                raise MalformedEvent(f"{kind}: 'a.B' is not a list of balances")
            change = sum(_num(b, "bc", kind) for b in balances if b.get("a") == "USDT")
            named = tuple(x.symbol for x in out if isinstance(x, PositionUpdate))
            out.append(FundingFee(event_ms=e, change=change, symbols=named))
        return out
    if kind == "ORDER_TRADE_UPDATE":
        o = _obj(raw, "o", kind)
        return [
            TradeUpdate(
                event_ms=e,
                symbol=_str(o, "s", kind),
                client_id=_str(o, "c", kind),
                side=_str(o, "S", kind),
                status=_str(o, "X", kind),
                exec_type=_str(o, "x", kind),
                orig_type=str(o.get("ot") or o.get("o") or ""),
                last_qty=_num(o, "l", kind),
                last_price=_num(o, "L", kind),
                cum_qty=_num(o, "z", kind),
                avg_price=_num(o, "ap", kind),
                realized_pnl=_num(o, "rp", kind),
                commission=float(o.get("n") or 0.0),
                reduce_only=bool(o.get("R")),
                trade_id=_int_or_0(o.get("t")),
                order_id=_int_or_0(o.get("i")),
            )
        ]
    if kind == "ALGO_UPDATE":
        o = _obj(raw, "o", kind)
        status = _str(o, "X", kind)
        if status not in ALGO_STATUSES:
            raise MalformedEvent(f"{kind}: unknown algo status {status!r}")
        return [
            AlgoUpdate(
                event_ms=e,
                symbol=_str(o, "s", kind),
                client_id=_str(o, "caid", kind),
                status=status,
                order_type=str(o.get("o") or ""),
                trigger_price=float(o.get("tp") or 0.0),
            )
        ]
    raise MalformedEvent(f"unknown event type {kind!r}")


def _int_or_0(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


# --------------------------------------------------------------------------- an order's outcome

#: Order statuses after which nothing changes (ORDER_TRADE_UPDATE ``X``).
FINAL_ORDER_STATUSES = ("FILLED", "CANCELED", "EXPIRED", "REJECTED", "EXPIRED_IN_MATCH")
#: Algo statuses after which nothing changes (ALGO_UPDATE ``X``).
FINAL_ALGO_STATUSES = ("FINISHED", "CANCELED", "REJECTED", "EXPIRED")


def fold_order(cur: dict[str, Any] | None, ev: TradeUpdate | AlgoUpdate) -> dict[str, Any]:
    """An order's outcome so far, with one more of its stream events folded in (the events in
    any order, some twice): ``{"kind": "order" | "algo", "symbol", "status", "event_ms", …}``.

    An order (``TradeUpdate``) adds ``side``, ``type`` (``ot``), ``order_id``, ``cum_qty``
    (the largest ``z`` seen, base units) and ``avg_price`` (``ap`` of that event, USDT), and
    the sums over its distinct trades (by trade id ``t``; a trade seen twice counts once) of
    ``filled`` (``l``), ``commission`` (``n``) and ``realized`` (``rp``), with ``trades``
    (their ids) and ``untracked`` (a trade without an id: its sums cannot be trusted). An algo
    order (``AlgoUpdate``) adds ``stop_price`` (``tp``, USDT). The status is the latest
    event's, except that a final status (:data:`FINAL_ORDER_STATUSES`,
    :data:`FINAL_ALGO_STATUSES`) is never replaced by a non-final one (a reordered event).
    ``cur`` is not modified."""
    algo = isinstance(ev, AlgoUpdate)
    d: dict[str, Any] = dict(cur or {"kind": "algo" if algo else "order", "symbol": ev.symbol, "status": ""})
    final = FINAL_ALGO_STATUSES if algo else FINAL_ORDER_STATUSES
    if not (d["status"] in final and ev.status not in final):
        d["status"] = ev.status
    d["event_ms"] = max(int(d.get("event_ms", 0)), ev.event_ms)
    if isinstance(ev, AlgoUpdate):
        if ev.trigger_price > 0:
            d["stop_price"] = ev.trigger_price
        return d
    d.setdefault("trades", [])
    for k in ("cum_qty", "avg_price", "filled", "commission", "realized"):
        d.setdefault(k, 0.0)
    d.update(side=ev.side, type=ev.orig_type, order_id=ev.order_id or d.get("order_id", 0))
    if ev.exec_type == "TRADE" and ev.last_qty > 0:
        if ev.trade_id == 0:
            d["untracked"] = True
        if ev.trade_id == 0 or ev.trade_id not in d["trades"]:
            d["trades"] = [*d["trades"], ev.trade_id]
            d["filled"] += ev.last_qty
            d["commission"] += ev.commission
            d["realized"] += ev.realized_pnl
    if ev.cum_qty >= d["cum_qty"]:
        d["cum_qty"] = ev.cum_qty
        if ev.cum_qty > 0:
            d["avg_price"] = ev.avg_price
    return d


def conclusive(d: dict[str, Any] | None) -> bool:
    """Whether a folded outcome (:func:`fold_order`) is the order's last word, so that it may
    stand in for a REST look-up: a final status (an algo order also once working: NEW,
    TRIGGERED), and for an order every trade of its cumulative quantity seen (``filled`` =
    ``cum_qty`` within 1e-9 relative; an event lost in a gap leaves it short) with ids."""
    if not d:
        return False
    if d["kind"] == "algo":
        return d["status"] in (*FINAL_ALGO_STATUSES, "NEW", "TRIGGERED")
    if d["status"] not in FINAL_ORDER_STATUSES or d.get("untracked"):
        return False
    filled, cum = float(d["filled"]), float(d["cum_qty"])
    return abs(filled - cum) <= 1e-9 * max(1.0, cum)


def is_newer(event_ms: int, last_ms: int | None) -> bool:
    """Whether an event of time ``event_ms`` may be applied after one of ``last_ms`` (None:
    nothing applied yet). Equal times apply (Binance sends several events in one ms)."""
    return last_ms is None or event_ms >= last_ms
