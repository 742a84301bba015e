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
  price ``tp``, side ``S``, closePosition ``cp``, algoId ``aid``;
* :class:`LeverageUpdate` — an ``ACCOUNT_CONFIG_UPDATE`` of a symbol's leverage (``ac.s``,
  ``ac.l``; the multi-assets form ``ai`` gives no event);
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
    """A conditional order's change (``status`` in :data:`ALGO_STATUSES`); ``side`` BUY/SELL
    (``S``; "" when missing), ``close_position`` (``cp``), ``algo_id`` (``aid``, 0 when
    missing)."""

    symbol: str
    client_id: str
    status: str
    order_type: str
    trigger_price: float
    side: str = ""
    close_position: bool = False
    algo_id: int = 0


class LeverageUpdate(_Event):
    """A symbol's leverage changed (``ACCOUNT_CONFIG_UPDATE`` ``ac``: ``s``, ``l``)."""

    symbol: str
    leverage: float


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


Event = (
    PositionUpdate
    | TradeUpdate
    | AlgoUpdate
    | LeverageUpdate
    | MarkPrice
    | Kline
    | ListenKeyExpired
    | FundingFee
    | StreamGap
)


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
                trigger_price=_num(o, "tp", kind) if o.get("tp") not in (None, "") else 0.0,
                side=str(o.get("S") or ""),
                close_position=o.get("cp") in (True, "true"),
                algo_id=_int_or_0(o.get("aid")),
            )
        ]
    if kind == "ACCOUNT_CONFIG_UPDATE":
        ac = raw.get("ac")
        if ac is None:
            return []  # the multi-assets mode form ("ai"): nothing harvest keeps
        if not isinstance(ac, dict):
            raise MalformedEvent(f"{kind}: 'ac' is not an object")
        lev = _num(ac, "l", kind)
        if lev < 1:
            raise MalformedEvent(f"{kind}: leverage {lev} < 1")
        return [LeverageUpdate(event_ms=e, symbol=_str(ac, "s", kind), leverage=lev)]
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


# --------------------------------------------------------------------------- the account's cache

#: Statuses of an order still working (ORDER_TRADE_UPDATE ``X``; an algo order: ALGO_UPDATE NEW).
WORKING_ORDER_STATUSES = ("NEW", "PARTIALLY_FILLED")


def fold_position(cur: dict[str, Any] | None, ev: PositionUpdate) -> tuple[dict[str, Any], bool]:
    """A symbol's cached row (``{"amt", "entry", "event_ms", "row"?}``: ``amt`` signed base
    units, ``entry`` USDT, ``row`` the VenuePosition fields of a REST read, JSON) after ``ev``,
    and whether REST must be read for the symbol. The event carries ``pa`` and ``ep`` only
    (Binance's ACCOUNT_UPDATE has no leverage, liquidation price, opening time or funding):

    * flat (``amt`` 0): the row is flat, nothing to read;
    * the same side as a row read from REST (a partial close, an addition): the row's
      ``qty`` and ``entry_price`` follow the event; its other fields stand (the liquidation
      price is refreshed by the next audit);
    * anything else (an opening, a flip, a row never read): the row has no ``row`` (readers
      fall back to REST) and REST must be read for the symbol.

    ``cur`` is not modified; the caller checks the event's order (:func:`is_newer`)."""
    new: dict[str, Any] = {"amt": ev.amt, "entry": ev.entry, "event_ms": ev.event_ms}
    if ev.amt == 0:
        return new, False
    row = (cur or {}).get("row")
    if row is None or float((cur or {}).get("amt", 0.0)) * ev.amt <= 0:
        return new, True
    return dict(new, row=dict(row, qty=abs(ev.amt), entry_price=ev.entry)), False


def order_key_of(client_id: str, algo: bool) -> str:
    """The key of an order in the account's open-orders cache (``algo:<id>`` or ``order:<id>``:
    a triggered stop's order may carry its clientAlgoId)."""
    return f"{'algo' if algo else 'order'}:{client_id}"


def open_order_change(ev: TradeUpdate | AlgoUpdate) -> tuple[str, dict[str, Any] | None]:
    """The key (:func:`order_key_of`) of ``ev``'s order in the open-orders cache and its entry
    while it works — ``{"symbol", "client_order_id", "order_id", "side", "type", "status",
    "algo", "close_position", "stop_price", "event_ms"}`` (the fields of an ``OrderResult``,
    plus the event time) — or None once it no longer works (an algo order past NEW; an order
    in a final status)."""
    if isinstance(ev, AlgoUpdate):
        if ev.status != "NEW":
            return order_key_of(ev.client_id, True), None
        return order_key_of(ev.client_id, True), {
            "symbol": ev.symbol,
            "client_order_id": ev.client_id,
            "order_id": ev.algo_id,
            "side": ev.side,
            "type": ev.order_type or "STOP_MARKET",
            "status": "NEW",
            "algo": True,
            "close_position": ev.close_position,
            "stop_price": ev.trigger_price or None,
            "event_ms": ev.event_ms,
        }
    if ev.status not in WORKING_ORDER_STATUSES:
        return order_key_of(ev.client_id, False), None
    return order_key_of(ev.client_id, False), {
        "symbol": ev.symbol,
        "client_order_id": ev.client_id,
        "order_id": ev.order_id,
        "side": ev.side,
        "type": ev.orig_type or "MARKET",
        "status": ev.status,
        "algo": False,
        "close_position": False,
        "stop_price": None,
        "event_ms": ev.event_ms,
    }


def working_stop(orders: list[dict[str, Any]], symbol: str, sign: int) -> float | None:
    """The working closePosition STOP_MARKET of a position (``sign`` +1 LONG, -1 SHORT) among
    open-orders cache entries (:func:`open_order_change`), as REST's positions read picks it:
    the highest of a LONG's SELL stops, the lowest of a SHORT's BUY stops (an entry without
    a side counts); None when there is none."""
    close_side = "SELL" if sign > 0 else "BUY"
    stops = [
        float(o["stop_price"])
        for o in orders
        if o.get("symbol") == symbol
        and o.get("algo")
        and o.get("close_position")
        and o.get("type") == "STOP_MARKET"
        and o.get("side") in (close_side, "")
        and o.get("stop_price")
    ]
    if not stops:
        return None
    return max(stops) if sign > 0 else min(stops)


#: Position = (signed amount in base units, entry price USDT, working stop USDT or None).
AuditPosition = tuple[float, float, float | None]


def audit_differences(
    rest: dict[str, AuditPosition],
    cached: dict[str, AuditPosition],
    rest_orders: set[str],
    cached_orders: set[str],
    moved: set[str],
) -> list[dict[str, Any]]:
    """What a REST audit finds the stream cache got wrong: ``rest`` and ``cached`` the open
    positions by symbol, ``rest_orders`` and ``cached_orders`` the keys of working orders
    (:func:`order_key_of`), ``moved`` the symbols and order keys a stream event touched at
    or after the REST read started (the cache may be newer than REST there: not compared).
    Returns one ``{"kind", "symbol" | "order", "rest", "cached"}`` per difference, kind
    ``position_missed`` (open on REST, not in the cache), ``position_phantom`` (the reverse),
    ``position_qty``, ``position_entry`` (relative 1e-6), ``position_stop``,
    ``order_missed`` or ``order_phantom``; [] when they agree."""
    out: list[dict[str, Any]] = []
    for s in sorted((set(rest) | set(cached)) - moved):
        r, c = rest.get(s), cached.get(s)
        if r is None or c is None:
            kind = "position_missed" if c is None else "position_phantom"
        elif not math.isclose(r[0], c[0], rel_tol=1e-9, abs_tol=1e-12):
            kind = "position_qty"
        elif not math.isclose(r[1], c[1], rel_tol=1e-6):
            kind = "position_entry"
        elif (r[2] is None) != (c[2] is None) or (
            r[2] is not None and c[2] is not None and not math.isclose(r[2], c[2], rel_tol=1e-9)
        ):
            kind = "position_stop"
        else:
            continue
        out.append({"kind": kind, "symbol": s, "rest": r, "cached": c})
    for k in sorted((rest_orders ^ cached_orders) - moved):
        out.append({"kind": "order_missed" if k in rest_orders else "order_phantom", "order": k})
    return out
