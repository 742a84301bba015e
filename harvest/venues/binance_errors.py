"""Reading Binance's answers: exchange errors classified (:func:`classify`), malformed answers
refused (:func:`answers`), order and algo-order records read (:func:`order_from`,
:func:`algo_from`), a position's opening found in its fills (:func:`opening_time`).

Errors are mapped to one :class:`~harvest.venues.base.VenueError` class each (:func:`classify`):
``unknown`` (read timeout, 503 "Unknown error…", -1006/-1007: look the order up, never
re-send blind), ``retryable`` (429/418 with ``Retry-After``, 503 "Service Unavailable." /
"Internal error…", a connection that never reached the server), or a rejection. A -1021 is
retried once after resynchronising the time offset with ``/fapi/v1/time``. The adapter never
sleeps: retries with backoff belong to the Celery task that called it.
"""

from __future__ import annotations

import functools
import math
import re
from decimal import Decimal
from typing import Any

import requests
from binance.exceptions import BinanceAPIException, BinanceRequestException

from harvest.venues import binance_facts as facts
from harvest.venues.base import OrderResult, VenueError

_ALGO_TO_ORDER_STATUS = {
    "NEW": "NEW",
    "TRIGGERING": "NEW",
    "TRIGGERED": "NEW",
    "FINISHED": "FILLED",
    "CANCELED": "CANCELED",
    "EXPIRED": "EXPIRED",
    "REJECTED": "REJECTED",
}


def classify(exc: Exception) -> VenueError:
    """Map a python-binance / requests exception to a :class:`VenueError` of one class.

    Only Binance's own JSON answers are taken at their word; anything else (an HTML page
    from a load balancer, a truncated or garbled body) says nothing about whether an order
    ran, so it is ``unknown`` (look the order up before anything is sent again):

    * HTTP 429 / 418 with a JSON body → retryable, ``retry_after`` from ``Retry-After`` (s);
    * JSON code -1006/-1007 or message "Unknown error…" → unknown;
    * JSON message "Service Unavailable." or "Internal error…", or code -1001 / -1008 →
      retryable (not executed);
    * any other HTTP 5xx, and any error body that is not JSON → unknown;
    * ``requests`` ConnectTimeout / refused connection (the request never left) → retryable;
      ReadTimeout and every other transport error (a body cut short included) → unknown;
    * ``BinanceRequestException`` (2xx that is not JSON) → unknown;
    * any other BinanceAPIException with a JSON body → a rejection with Binance's code and message.
    """
    if isinstance(exc, BinanceAPIException):
        status = int(exc.status_code or 0)
        code = int(exc.code or 0)
        msg = str(exc.message or "")
        if msg.startswith("Invalid JSON error message"):  # python-binance's wording for a non-JSON body
            return facts.venue_error(
                code,
                f"non-JSON answer, HTTP {status}: {msg[len('Invalid JSON error message from Binance: ') :][:200]}",
                status,
                unknown=True,
            )
        headers = getattr(exc.response, "headers", None) or {}
        if status in (429, 418):
            try:
                ra = float(headers.get("Retry-After", "1"))
            except ValueError:
                ra = 1.0
            return facts.venue_error(code or -1003, msg, status, retryable=True, retry_after=ra)
        if code in (-1006, -1007) or "Unknown error" in msg:
            return facts.venue_error(code, msg, status, unknown=True)
        if msg.startswith(("Service Unavailable", "Internal error")) or code in (-1001, -1008):
            return facts.venue_error(code, msg, status, retryable=True)
        if status >= 500:
            return facts.venue_error(code, msg, status, unknown=True)
        return facts.venue_error(code, msg, status)
    if isinstance(exc, BinanceRequestException):
        return facts.venue_error(0, str(exc)[:300], 200, unknown=True)
    if isinstance(exc, requests.exceptions.ConnectTimeout) or _never_connected(exc):
        return facts.venue_error(
            0, f"connection failed before the request was sent: {type(exc).__name__}", 0, retryable=True
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return facts.venue_error(0, f"no answer ({type(exc).__name__}); outcome unknown", 0, unknown=True)
    raise TypeError(f"not an exchange error: {exc!r}")


def _never_connected(exc: Exception) -> bool:
    """Whether a requests ConnectionError is a refused / unresolvable connection (nothing was
    sent), as opposed to a connection dropped after the request went out."""
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return type(reason).__name__ in ("NewConnectionError", "NameResolutionError")


#: What reading a malformed answer raises (a missing field, a wrong type, a non-number;
#: pydantic's ValidationError is a ValueError).
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, ArithmeticError)
#: Order statuses of Binance's order model; any other is a malformed answer.
ORDER_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "EXPIRED", "EXPIRED_IN_MATCH"})


_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")


def _num(v: Any) -> float:
    """A finite number from an exchange field (string or number); ValueError otherwise."""
    if isinstance(v, bool):
        raise ValueError(f"not a number: {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {v!r}")
    return x


def _sym(v: Any) -> str:
    """A symbol from an exchange field (``[A-Z0-9]{2,20}``); ValueError otherwise."""
    if not isinstance(v, str) or not _SYMBOL_RE.match(v):
        raise ValueError(f"not a symbol: {str(v)[:40]!r}")
    return v


def answers(sends: bool = False):
    """Decorator of a venue method: an exchange answer it cannot read (a missing field, a
    wrong type, NaN/inf) raises VenueError code 0 "malformed exchange answer" instead of a
    parsing error — ``unknown`` when the request sent an order (look it up before anything
    is sent again), a plain error otherwise. No worker crashes on a malformed answer."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except VenueError:
                raise
            except _MALFORMED as e:
                raise VenueError(
                    0,
                    f"malformed exchange answer to {fn.__name__}: {type(e).__name__}: {str(e)[:200]}",
                    200,
                    unknown=sends,
                ) from None

        return wrapper

    return deco


def order_from(x: dict[str, Any]) -> OrderResult:
    """An order answer (``/fapi/v1/order``, ``allOrders``, ``openOrders``) as an OrderResult;
    ValueError/KeyError/TypeError for a malformed one (an unknown status included)."""
    if x.get("status") not in ORDER_STATUSES:
        raise ValueError(f"unknown order status {str(x.get('status'))[:40]!r}")
    return OrderResult(
        symbol=_sym(x["symbol"]),
        client_order_id=x["clientOrderId"],
        order_id=int(_num(x["orderId"])),
        side=x["side"],
        type=x.get("type", "MARKET"),
        orig_type=x.get("origType") or None,
        status=x["status"],
        position_side=x.get("positionSide", "BOTH"),
        orig_qty=_num(x.get("origQty") or 0),
        executed_qty=_num(x.get("executedQty") or 0),
        avg_price=_num(x.get("avgPrice") or 0),
        reduce_only=bool(x.get("reduceOnly", False)),
        stop_price=_num(x["stopPrice"]) if _num(x.get("stopPrice") or 0) else None,
        update_time=_num(x.get("updateTime", 0)) / 1000,
    )


def algo_from(x: dict[str, Any]) -> OrderResult:
    """An algo-order answer (``/fapi/v1/algoOrder``, ``openAlgoOrders``) as an OrderResult (the
    algo status mapped to the order status it stands for); KeyError/ValueError for a malformed one."""
    return OrderResult(
        symbol=_sym(x["symbol"]),
        client_order_id=x["clientAlgoId"],
        order_id=int(_num(x["algoId"])),
        side=x["side"],
        type=x.get("orderType", "STOP_MARKET"),
        status=_ALGO_TO_ORDER_STATUS.get(x.get("algoStatus", ""), "NEW"),
        position_side=x.get("positionSide", "BOTH"),
        close_position=x.get("closePosition") in (True, "true"),
        algo=True,
        executed_qty=_num(x.get("executedQty") or 0),
        avg_price=_num(x.get("avgPrice") or 0),
        stop_price=_num(x["triggerPrice"]) if x.get("triggerPrice") else None,
        actual_order_id=int(_num(x["actualOrderId"])) if x.get("actualOrderId") else None,
        reduce_only=True,
        update_time=_num(x.get("updateTime", 0)) / 1000,
    )


def opening_time(trades: list[dict], position_amt: str) -> float | None:
    """When the position now ``position_amt`` (signed, base units, as positionRisk gives it)
    was opened (Unix s): walking the fills (userTrades rows: ``side``, ``qty``, ``time`` ms)
    back from the newest, the fill before which the position was flat, or on the other side,
    is its opening. None when the fills read do not reach back to it. Decimal arithmetic, so
    a round trip to exactly zero is seen."""
    pos = Decimal(position_amt)
    if pos == 0:
        return None
    for t in sorted(trades, key=lambda x: (int(_num(x["time"])), int(_num(x.get("id", 0)))), reverse=True):
        q = Decimal(str(t["qty"]))
        before = pos - (q if t["side"] == "BUY" else -q)
        if before == 0 or (before > 0) != (pos > 0):
            return _num(t["time"]) / 1000.0
        pos = before
    return None
