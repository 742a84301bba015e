"""How the fapi emulator writes its answers (see :mod:`harvest.venues.sim.emulator`): orders and
algo orders as Binance's JSON (and the streams' ALGO_UPDATE), Binance's error answers, decimal
strings, kline buckets, and the clientOrderId check."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import numpy as np

from harvest.data import SymbolFilters
from harvest.venues import binance_facts as facts
from harvest.venues.base import OrderResult
from harvest.venues.sim.emulator_types import ApiError

_ALGO_STATUS = {
    "NEW": "NEW",
    "CANCELED": "CANCELED",
    "FILLED": "FINISHED",
    "EXPIRED": "EXPIRED",
    "REJECTED": "REJECTED",
}


def _order_json(o: OrderResult) -> dict[str, Any]:
    """An order as /fapi/v1/order returns it (numbers as strings)."""
    return {
        "orderId": o.order_id,
        "clientOrderId": o.client_order_id,
        "symbol": o.symbol,
        "status": o.status,
        "side": o.side,
        "positionSide": o.position_side,
        "type": o.type,
        "origType": o.orig_type or o.type,
        "origQty": _dec(o.orig_qty),
        "executedQty": _dec(o.executed_qty),
        "cumQuote": _dec(o.executed_qty * o.avg_price),
        "avgPrice": _dec(o.avg_price),
        "price": "0",
        "stopPrice": _dec(o.stop_price or 0.0),
        "reduceOnly": o.reduce_only,
        "closePosition": o.close_position,
        "timeInForce": "GTC",
        "workingType": "CONTRACT_PRICE",
        "updateTime": int(o.update_time * 1000),
    }


def _queried_json(o: OrderResult) -> dict[str, Any]:
    """An order as Binance's queries answer it (GET order, openOrders, allOrders): the new-order
    answer's fields plus ``time``, the order's creation on the server clock (market ms; a
    MARKET order is created and filled in one step, so its update time when no creation time
    is kept)."""
    made = o.create_time if o.create_time is not None else o.update_time
    return dict(_order_json(o), time=int(made * 1000))


def _algo_json(o: OrderResult) -> dict[str, Any]:
    """A conditional order as /fapi/v1/algoOrder returns it."""
    return {
        "algoId": o.order_id,
        "clientAlgoId": o.client_order_id,
        "algoType": "CONDITIONAL",
        "orderType": o.type,
        "symbol": o.symbol,
        "side": o.side,
        "positionSide": o.position_side,
        "timeInForce": "GTC",
        "quantity": "0",
        "algoStatus": _ALGO_STATUS.get(o.status, o.status),
        "triggerPrice": _dec(o.stop_price or 0.0),
        "price": "0",
        "workingType": o.working_type or "MARK_PRICE",
        "closePosition": o.close_position,
        "priceProtect": False,
        "reduceOnly": True,
        "executedQty": _dec(o.executed_qty),
        "avgPrice": _dec(o.avg_price),
        "createTime": int((o.create_time if o.create_time is not None else o.update_time) * 1000),
        "updateTime": int(o.update_time * 1000),
        "triggerTime": int((o.trigger_time or 0.0) * 1000),
        "actualOrderId": str(o.actual_order_id) if o.actual_order_id is not None else "",
    }


def _err(name: str, *args: object, headers: dict[str, str] | None = None) -> ApiError:
    """Binance's answer ``name`` of :data:`binance_facts.ERRORS` (status, code, message with
    ``args``) as an :class:`ApiError` to raise."""
    status, code, msg = facts.ERRORS[name].fmt(*args)
    return ApiError(status, code, msg, headers)


def _dec(x: float) -> str:
    """A price, quantity or USDT amount as a plain decimal string of at most 8 decimals, trailing
    zeros dropped ("103200.1", not the float's "103200.09999999999"; "0" for zero)."""
    out = f"{float(x):.8f}".rstrip("0").rstrip(".")
    return "0" if out in ("", "-0") else out


def _fixed(x: float, places: int) -> str:
    """``x`` as a decimal string with exactly ``places`` decimals (no float noise, no "-0")."""
    out = f"{float(x):.{places}f}"
    return out[1:] if out.startswith("-") and not out.strip("-0.") else out


def _num_str(x: float) -> str:
    """A USDT figure as Binance writes a cap ("1000000", "0.5")."""
    return SymbolFilters.fmt_float(x)


_WEEK_OFFSET_S = 4 * 86400  # 1970-01-05, the first Monday after the epoch: weeks open on Mondays


def _bucket(open_s: np.ndarray, interval: str) -> np.ndarray:
    """The open time (s) of the ``interval`` bar each 1m open time (s, int64) falls in: fixed
    intervals count from the Unix epoch (3d included: the emulator's reading, Binance's pages do
    not say), weeks from Monday 1970-01-05, months from the 1st (UTC)."""
    if interval == "1M":
        months = open_s.astype("datetime64[s]").astype("datetime64[M]")
        return months.astype("datetime64[s]").astype(np.int64)
    step = facts.KLINE_INTERVALS[interval]
    assert step is not None
    off = _WEEK_OFFSET_S if interval == "1w" else 0
    return (open_s - off) // step * step + off


def _bucket_end(open_s: int, interval: str) -> int:
    """The open time (s) of the ``interval`` bar after the one opening at ``open_s``."""
    if interval == "1M":
        d = datetime.fromtimestamp(open_s, timezone.utc)
        nxt = d.replace(year=d.year + (d.month == 12), month=d.month % 12 + 1)
        return int(nxt.timestamp())
    step = facts.KLINE_INTERVALS[interval]
    assert step is not None
    return open_s + step


def _check_client_id(cid: str) -> None:
    if not re.fullmatch(r"[\.A-Z\:/a-z0-9_-]{1,36}", cid):
        raise _err("INVALID_CLIENT_ORDER_ID")


def _algo(sym: str, cid: str, status: str, stop: Any, now: int, **extra: Any) -> dict[str, Any]:
    """An ``ALGO_UPDATE`` of a closePosition STOP_MARKET; ``extra``: fields to set (``S`` the
    side, ``aid`` the algoId, ``ai`` the actual orderId, ``ap``/``aq`` its average price and filled quantity,
    ``tt`` the trigger time, ``wt`` the workingType)."""
    event: dict[str, Any] = {
        "e": "ALGO_UPDATE",
        "T": now,
        "E": now,
        "o": {
            "caid": cid,
            "aid": 0,
            "at": "CONDITIONAL",
            "o": "STOP_MARKET",
            "s": sym,
            "ps": "BOTH",
            "f": "GTE_GTC",
            "q": "0",
            "X": status,
            "tp": str(stop),
            "p": "0",
            "wt": "MARK_PRICE",
            "cp": True,
            "pP": False,
        },
    }
    o: dict[str, Any] = event["o"]
    o.update(extra)
    return event
