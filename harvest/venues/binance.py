"""The Binance USDⓈ-M futures venue on python-binance's ``Client`` (testnet, live, and the
local fapi emulator that stands in for both in tests and in ``harvest demo``).

Facts used (``docs/reference/binance-fapi.md``, python-binance 1.0.37):

* one ``Client`` per process, ``ping=False`` (the constructor would ping spot on the
  internet), ``requests_params={"timeout": venue_timeout_s}``; for the emulator
  ``client.FUTURES_URL`` is overridden, for the testnet ``testnet=True``;
* positions from ``GET /fapi/v3/positionRisk`` (no leverage there: it comes from
  ``/fapi/v1/symbolConfig``, cached); working stops from ``/fapi/v1/openAlgoOrders``;
* closes are MARKET orders with ``newClientOrderId`` = the plan's clientOrderId and
  ``newOrderRespType=RESULT``; one-way mode sends ``reduceOnly=true``, hedge mode sends
  ``positionSide`` and no ``reduceOnly`` (Binance answers -1106 to it);
* a position's opening time (its epoch and age) from ``GET /fapi/v1/userTrades``: the fill
  that took it from flat (or through zero) is the opening, so a close and a same-side
  re-open between two scans is a new epoch (:func:`opening_time`; re-read only when
  positionAmt or entryPrice changed); funding per epoch from ``GET /fapi/v1/income``
  (``FUNDING_FEE`` rows at or after the opening, each applied once by ``tranId``; polled at
  most every ``funding_poll_s``);
* the protective stop is a closePosition STOP_MARKET through the algo-order endpoint
  (python-binance routes conditional types to ``/fapi/v1/algoOrder`` and replaces
  ``newClientOrderId`` with ``clientAlgoId``, so harvest passes ``clientAlgoId`` itself);
  a stop move places the new stop *before* cancelling the old one.

Errors are mapped to one :class:`~harvest.venues.base.VenueError` class each (:func:`classify`):
``unknown`` (read timeout, 503 "Unknown error…", -1006/-1007: look the order up, never
re-send blind), ``retryable`` (429/418 with ``Retry-After``, 503 "Service Unavailable." /
"Internal error…", a connection that never reached the server), or a rejection. A -1021 is
retried once after resynchronising the time offset with ``/fapi/v1/time``. The adapter never
sleeps: retries with backoff belong to the Celery task that called it.

Clocks (docs/venues.md, "Clocks"): every time the exchange answers (serverTime, orders,
trades, positions, income, klines, stream events) is the exchange's clock — wall time on
Binance, the replay's market clock on the emulator. Signed requests are stamped in it:
before each call the client's ``timestamp_offset`` is set to harvest's reading of the exchange
clock (:meth:`BinanceVenue.exchange_ms`: the shared MarketClock when ``clock`` is given, else
wall time) minus wall time, plus the correction a -1021 resync measured.

:class:`WeightBudget` keeps every worker of the fleet under the exchange's request-weight
limit through one Redis counter per minute, corrected from ``X-MBX-USED-WEIGHT-1M``; closes
may use the whole budget, stop moves and reads only a share of it (closes go first).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import time
from typing import Any, Callable

import numpy as np
import redis
import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException

from harvest.data import SymbolFilters, filters_from_exchange_info
from harvest.domain.models import Side
from harvest.domain.plans import CLIENT_ORDER_PREFIX
from harvest.venues import binance_facts as facts
from harvest.venues.base import (
    BAD_SYMBOL,
    OrderResult,
    Venue,
    VenueError,
    VenuePosition,
    VenueReason,
)
from harvest.venues.sim.clock import MarketClock
from settings.egress import Egress

log = logging.getLogger("harvest.venue")

#: The request python-binance 1.0.37 sends for each client method harvest calls: (HTTP method, path).
_REQUESTS: dict[str, tuple[str, str]] = {
    "futures_time": ("GET", "/fapi/v1/time"),
    "futures_exchange_info": ("GET", "/fapi/v1/exchangeInfo"),
    "futures_mark_price": ("GET", "/fapi/v1/premiumIndex"),
    "futures_klines": ("GET", "/fapi/v1/klines"),
    "futures_position_information": ("GET", "/fapi/v3/positionRisk"),
    "futures_symbol_config": ("GET", "/fapi/v1/symbolConfig"),
    "futures_get_position_mode": ("GET", "/fapi/v1/positionSide/dual"),
    "futures_account_trades": ("GET", "/fapi/v1/userTrades"),
    "futures_income_history": ("GET", "/fapi/v1/income"),
    "futures_get_all_orders": ("GET", "/fapi/v1/allOrders"),
    "futures_get_all_algo_orders": ("GET", "/fapi/v1/allAlgoOrders"),
    "futures_get_open_orders": ("GET", "/fapi/v1/openOrders"),
    "futures_get_order": ("GET", "/fapi/v1/order"),
    "futures_cancel_order": ("DELETE", "/fapi/v1/order"),
    "futures_create_order": ("POST", "/fapi/v1/order"),
    "futures_change_leverage": ("POST", "/fapi/v1/leverage"),
}
#: The methods python-binance routes to the algo-order endpoints for a conditional order
#: (``type`` a conditional type; ``conditional=True``, ``algoId`` or ``clientAlgoId``).
_ALGO_REQUESTS: dict[str, tuple[str, str]] = {
    "futures_get_open_orders": ("GET", "/fapi/v1/openAlgoOrders"),
    "futures_get_order": ("GET", "/fapi/v1/algoOrder"),
    "futures_cancel_order": ("DELETE", "/fapi/v1/algoOrder"),
    "futures_create_order": ("POST", "/fapi/v1/algoOrder"),
}
_CONDITIONAL_TYPES = ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")


def request_of(fn: str, params: dict[str, Any]) -> tuple[str, str]:
    """The (HTTP method, path) python-binance's ``fn`` sends with ``params`` (its routing of
    conditional orders to the algo endpoints included). Raises KeyError for a method harvest
    does not call."""
    if fn in _ALGO_REQUESTS:
        if fn == "futures_create_order":
            algo = str(params.get("type", "")).upper() in _CONDITIONAL_TYPES
        else:
            algo = bool(params.get("conditional")) or "algoId" in params or "clientAlgoId" in params
        if algo:
            return _ALGO_REQUESTS[fn]
    return _REQUESTS[fn]


def request_weight(fn: str, params: dict[str, Any]) -> int:
    """The request weight Binance charges for python-binance's ``fn`` with ``params``, by
    :func:`binance_facts.request_weight` (with or without ``symbol``, klines by ``limit``)."""
    method, path = request_of(fn, params)
    return facts.request_weight(method, path, params)


#: Each endpoint's weight with a symbol and Binance's default parameters (a summary; the budget
#: charges every call by :func:`request_weight`, from the parameters it sends).
WEIGHT = {fn: facts.request_weight(*request_of(fn, {"symbol": "BTCUSDT"}), {"symbol": "BTCUSDT"}) for fn in _REQUESTS}
#: exchangeInfo's filters parsed in this process, by Redis key: (version token, filters), shared
#: by every account's venue (a thousand accounts parse the answer once, not a thousand times).
_FILTERS: dict[str, tuple[str, dict[str, SymbolFilters]]] = {}
#: How long (s) the stops a positions() read found serve an open_orders(symbols=…) right after it
#: (an audit's two questions answered by one openAlgoOrders read; once, then read again).
RECENT_S = 1.0
#: Share of the weight budget each priority may use: closes go ahead of stop moves and reads.
PRIORITY_SHARE = {"close": 1.0, "stop": 0.85, "read": 0.7}
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


class WeightBudget:
    """One egress's request-weight budget for the current minute, in Redis (Binance's
    ``REQUEST_WEIGHT`` limit is per IP: every account leaving by one egress shares it).

    ``limit``: the exchange's ``REQUEST_WEIGHT`` per minute (2400 on Binance) times the
    fraction harvest may use; ``egress``: the egress's name (:mod:`settings.egress`;
    ``default``: the host's route). Keys:

    * ``<ns>:venue:weight:<egress>:<minute>`` — used weight, the larger of what harvest reserved
      and what the exchange reported (``X-MBX-USED-WEIGHT-1M``), expires after 120 s;
    * ``<ns>:venue:backoff_until:<egress>`` — Unix s, set by a 429/418 answer, honoured by every
      worker sending by this egress (another egress is not held);
    * ``<ns>:venue:weight_held`` — hash ``<egress>|<priority>`` → requests held back so far
      (``/metrics`` ``harvest_weight_held_total``);
    * ``<ns>:venue:spent:<minute>`` — hash ``<account>|<METHOD path>`` → weight reserved in that
      minute (the scorecard's "weight per account per minute" by endpoint), kept an hour.
    """

    _RESERVE = """
    local till = tonumber(redis.call('GET', KEYS[2]) or '0')
    local now = tonumber(ARGV[3])
    if till > now then
      redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
      return {0, tostring(till - now)}
    end
    local used = tonumber(redis.call('GET', KEYS[1]) or '0')
    if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
      redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
      return {0, tostring(60 - (now % 60))}
    end
    redis.call('INCRBY', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[1], 120)
    if ARGV[5] ~= '' then
      redis.call('HINCRBY', KEYS[4], ARGV[5], ARGV[1])
      redis.call('EXPIRE', KEYS[4], 3660)
    end
    return {1, '0'}
    """
    _OBSERVE = """
    local used = tonumber(redis.call('GET', KEYS[1]) or '0')
    if tonumber(ARGV[1]) > used then redis.call('SET', KEYS[1], ARGV[1], 'EX', 120) end
    return 1
    """
    _BACKOFF = """
    local till = tonumber(redis.call('GET', KEYS[1]) or '0')
    if tonumber(ARGV[1]) > till then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
    return 1
    """

    def __init__(self, r: redis.Redis, ns: str, limit: int, egress: str = "default"):
        self.r = r
        self.ns = ns
        self.limit = limit
        self.egress = egress
        self._reserve = r.register_script(self._RESERVE)
        self._observe = r.register_script(self._OBSERVE)
        self._backoff = r.register_script(self._BACKOFF)
        self.k_backoff = f"{ns}:venue:backoff_until:{egress}"
        self.k_held = f"{ns}:venue:weight_held"

    def key(self, now: float | None = None) -> str:
        """Redis key of this egress's minute containing ``now`` (Unix s; default: now)."""
        return f"{self.ns}:venue:weight:{self.egress}:{int((time.time() if now is None else now) // 60)}"

    def spent_key(self, now: float | None = None) -> str:
        """Redis key of the weight spent by account and endpoint in the minute of ``now``."""
        return f"{self.ns}:venue:spent:{int((time.time() if now is None else now) // 60)}"

    def reserve(self, weight: int, priority: str, spent: str = "") -> None:
        """Take ``weight`` from this minute's budget for a request of ``priority`` (close,
        stop, read); ``spent``: ``<account>|<METHOD path>``, the field the weight is tallied
        under (:meth:`spent_key`; empty: not tallied). Raises a retryable VenueError (code
        -1003, ``retry_after`` s) when the budget or this egress's back-off does not allow it;
        nothing is sent then, and the hold-back is counted (``<egress>|<priority>``)."""
        now = time.time()
        ceiling = int(self.limit * PRIORITY_SHARE[priority])
        ok, wait = self._reserve(
            keys=[self.key(now), self.k_backoff, self.k_held, self.spent_key(now)],
            args=[weight, ceiling, repr(now), f"{self.egress}|{priority}", spent],
        )
        if not int(ok):
            raise facts.venue_error(
                -1003,
                f"local request-weight budget of egress {self.egress}: {priority} request held back",
                429,
                retryable=True,
                retry_after=float(wait),
            )

    def observe(self, used_weight: int) -> None:
        """Record the exchange's ``X-MBX-USED-WEIGHT-1M`` for this minute."""
        self._observe(keys=[self.key()], args=[int(used_weight)])

    def back_off(self, seconds: float) -> None:
        """Hold this egress's requests, every worker's, for ``seconds`` (after a 429 / 418)."""
        until = time.time() + max(0.0, seconds)
        self._backoff(keys=[self.k_backoff], args=[repr(until), max(1, int(seconds) + 1)])

    def used(self) -> int:
        """Weight used so far in the current minute by this egress."""
        return int(self.r.get(self.key()) or 0)


def held_back(r: redis.Redis, ns: str) -> dict[tuple[str, str], int]:
    """Requests the weight budgets held back so far: ``{(egress, priority): n}``."""
    out: dict[tuple[str, str], int] = {}
    for f, v in r.hgetall(f"{ns}:venue:weight_held").items():
        egress, _, priority = f.rpartition("|")
        if egress and v.isdigit():
            out[(egress, priority)] = int(v)
    return out


def weight_spent(r: redis.Redis, ns: str, minutes: int = 10, now: float | None = None) -> dict[str, Any]:
    """The weight the adapters spent over the last ``minutes`` *complete* minutes (the current
    one left out), from the per-minute tallies of :meth:`WeightBudget.reserve`:
    ``{"minutes", "accounts": n accounts seen, "by_endpoint": {"GET /fapi/…": weight per account
    per minute}, "per_account_per_minute": the sum}``. Accounts that spent nothing in the window
    are not counted (an idle fleet reads as 0)."""
    minute = int((time.time() if now is None else now) // 60)
    p = r.pipeline(transaction=False)
    for m in range(minute - minutes, minute):
        p.hgetall(f"{ns}:venue:spent:{m}")
    total: dict[str, int] = {}
    accounts: set[str] = set()
    for h in p.execute():
        for f, v in h.items():
            account, _, endpoint = f.partition("|")
            if endpoint and v.lstrip("-").isdigit():
                accounts.add(account)
                total[endpoint] = total.get(endpoint, 0) + int(v)
    per = max(1, len(accounts)) * minutes
    by = {e: w / per for e, w in sorted(total.items(), key=lambda x: -x[1])}
    return {
        "minutes": minutes,
        "accounts": len(accounts),
        "by_endpoint": by,
        "per_account_per_minute": sum(by.values()),
    }


#: Binance's ORDERS limits per account when exchangeInfo has not been read yet: (window s, orders).
DEFAULT_ORDER_LIMITS = ((10, 300), (60, 1200))
#: The share of each order window a kind of order may use: closes first.
ORDER_SHARE = {"close": 1.0, "stop": 0.9}
_INTERVAL_S = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86_400}


def order_limits(info: dict) -> list[tuple[int, int]]:
    """The ``ORDERS`` rate limits of an exchangeInfo answer as ``[(window s, orders)]``
    (Binance: 300 per 10 s and 1200 per minute, per account). ValueError for a malformed entry."""
    out = []
    for x in info.get("rateLimits") or []:
        if x.get("rateLimitType") == "ORDERS":
            out.append((int(x["intervalNum"]) * _INTERVAL_S[x["interval"]], int(x["limit"])))
    return out


class OrderBudget:
    """One account's order-rate budget (Binance's ``ORDERS`` limits count new orders per
    account, not per IP), in Redis: a counter per window and bucket
    (``<ns>:venue:<account>:orders:<window s>:<bucket>``) and the account's own back-off
    (``<ns>:venue:<account>:orders_backoff_until``, set by a 429 ``-1015``; it holds this
    account's orders only — not its reads, not another account). Limits from exchangeInfo's
    ``rateLimits`` as :meth:`BinanceVenue.refresh_filters` stored them (``<ns>:venue:rate_limits``),
    else :data:`DEFAULT_ORDER_LIMITS`."""

    _RESERVE = """
    local now = tonumber(ARGV[1])
    local till = tonumber(redis.call('GET', KEYS[1]) or '0')
    if till > now then return {0, tostring(till - now)} end
    local n = (#ARGV - 1) / 3
    for i = 1, n do
      local used = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
      if used + 1 > tonumber(ARGV[1 + 3 * i - 1]) then return {0, ARGV[1 + 3 * i]} end
    end
    for i = 1, n do
      redis.call('INCR', KEYS[i + 1])
      redis.call('EXPIRE', KEYS[i + 1], tonumber(ARGV[1 + 3 * i - 2]) * 2)
    end
    return {1, '0'}
    """

    def __init__(self, r: redis.Redis, ns: str, account: str):
        self.r, self.ns, self.account = r, ns, account
        self._reserve = r.register_script(self._RESERVE)
        self.k_backoff = f"{ns}:venue:{account}:orders_backoff_until"
        self.k_limits = f"{ns}:venue:rate_limits"
        self._limits: tuple[float, list[tuple[int, int]]] | None = None

    def limits(self) -> list[tuple[int, int]]:
        """``[(window s, orders)]`` in force (re-read from Redis at most every 60 s)."""
        if self._limits is None or time.time() - self._limits[0] > 60:
            raw = self.r.get(self.k_limits)
            got = [tuple(x) for x in json.loads(raw)] if raw else []
            self._limits = (time.time(), [(int(w), int(n)) for w, n in got] or list(DEFAULT_ORDER_LIMITS))
        return self._limits[1]

    def reserve(self, priority: str) -> None:
        """Count one new order of ``priority`` (close, stop) against every window. Raises a
        retryable VenueError (-1015, ``retry_after`` s: the rest of the full window, or of the
        back-off) when a window is full for that priority or the account backs off; nothing is
        sent then."""
        now = time.time()
        keys, args = [self.k_backoff], [repr(now)]
        for window, limit in self.limits():
            bucket = int(now // window)
            keys.append(f"{self.ns}:venue:{self.account}:orders:{window}:{bucket}")
            args += [window, int(limit * ORDER_SHARE[priority]), repr((bucket + 1) * window - now)]
        ok, wait = self._reserve(keys=keys, args=args)
        if not int(ok):
            raise facts.venue_error(
                -1015,
                f"local order-rate budget of account {self.account}: {priority} order held back",
                429,
                retryable=True,
                retry_after=float(wait),
            )

    def back_off(self, seconds: float) -> None:
        """Hold this account's new orders for ``seconds`` (after a 429 -1015)."""
        until = time.time() + max(0.0, seconds)
        self.r.set(self.k_backoff, repr(until), ex=max(1, int(seconds) + 1))


class BinanceVenue(Venue):
    """:class:`~harvest.venues.base.Venue` on python-binance (see module docstring).

    ``client_factory`` builds the process's ``Client`` (lazily, again after a fork; bound to
    the account's egress, :func:`make_client`). ``cache_ttl_s``: how long exchangeInfo,
    leverage and position mode are reused (beat refreshes exchangeInfo, once for the
    deployment). ``account``: the harvest account the client's API key trades (its cached
    leverage, position mode, openings and funding are kept under it). ``egress``: the name of
    the way out its requests leave by (:mod:`settings.egress`); the request-weight budget and
    429/418 back-offs are that egress's (Binance's limit is per IP). ``funding_poll_s``: 0 reads
    funding on every positions read; otherwise funding is read once after each funding time
    (:meth:`_funding`), and ``funding_poll_s`` is only the interval for symbols whose funding
    time is not known. ``clock``: the replay's
    MarketClock when the venue is the emulator (its server clock; signed requests are stamped
    in it), None on Binance (wall time). Raises VenueError from every call; never sleeps.
    """

    def __init__(
        self,
        r: redis.Redis,
        ns: str,
        client_factory: Callable[[], Client],
        weight_limit: int,
        cache_ttl_s: float = 300.0,
        funding_poll_s: float = 60.0,
        max_clock_offset_ms: int = 1000,
        account: str = "paper",
        clock: MarketClock | None = None,
        egress: str = "default",
        funding_settle_s: float = 30.0,
        leverage_ttl_s: float = 3600.0,
    ):
        self.r = r
        self.ns = ns
        self.account = account
        self._factory = client_factory
        self._client: Client | None = None
        self._pid = 0
        self.egress = egress
        self.budget = WeightBudget(r, ns, weight_limit, egress)
        self.orders = OrderBudget(r, ns, account)
        self.cache_ttl_s = cache_ttl_s
        self._filters: dict[str, SymbolFilters] = {}
        self._filters_at = 0.0
        self.k_info = f"{ns}:venue:exchange_info"
        # What belongs to the exchange account (leverage, position mode, openings, funding) is
        # kept per account; the weight budget and exchangeInfo are the IP's and the market's.
        acct = f"{ns}:venue:{account}"
        self.k_leverage = f"{acct}:leverage"
        self.k_dual = f"{acct}:dual"
        self.k_opening = f"{acct}:opening"
        self.k_funding = f"{acct}:funding"
        self.k_funding_poll = f"{acct}:funding_polled"
        self.k_funding_due = f"{acct}:funding_due"
        self.k_funding_read = f"{acct}:funding_read"
        #: Each symbol's last and next funding time (ms), the deployment's (premiumIndex).
        self.k_funding_times = f"{ns}:venue:funding_times"
        self.k_info_refreshed = f"{ns}:venue:exchange_info:refreshed"
        self.funding_poll_s = funding_poll_s
        self.funding_settle_s = funding_settle_s
        self.leverage_ttl_s = leverage_ttl_s
        #: The stops positions() read last: (monotonic s, symbols read — None: every symbol's —,
        #: rows), reused once by open_orders(symbols=…) within RECENT_S (one audit).
        self._recent_algo: tuple[float, frozenset[str] | None, list[Any]] | None = None
        self.max_clock_offset_ms = max_clock_offset_ms
        self.clock = clock
        #: The exchange's clock minus harvest's reading of it (ms), from the last resync.
        self.correction_ms = 0

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> Client:
        """The process's python-binance Client (rebuilt after a fork)."""
        if self._client is None or self._pid != os.getpid():
            self._client = self._factory()
            self._pid = os.getpid()
        return self._client

    def _call(self, fn: str, label: str, priority: str, new_order: bool = False, **params: Any) -> Any:
        """One request: budget (request weight, the IP's, by :func:`request_weight` of ``fn``
        and the parameters sent; with ``new_order``, the account's order rate too), call,
        rate-limit bookkeeping, error classification, and one retry after a -1021 time resync.
        A 429/418 holds the scope it belongs to: ``-1015`` (too many new orders) this account's
        orders, any other the IP's requests. ``label``: the call's short name (for readers)."""
        method, path = request_of(fn, params)
        if method != "GET":  # an order sent or cancelled: stops read before it are not reused
            self._recent_algo = None
        self.budget.reserve(facts.request_weight(method, path, params), priority, f"{self.account}|{method} {path}")
        if new_order:
            self.orders.reserve(priority)
        for attempt in (0, 1):
            try:
                self.stamp()
                out = getattr(self.client, fn)(**dict(params))
                self._observe()
                return out
            except BinanceAPIException as e:
                self._observe()
                if e.code == -1021 and attempt == 0:
                    self.resync_time()
                    continue
                err = classify(e)
                if err.http_status in (429, 418) and err.code == -1015:
                    self.orders.back_off(err.retry_after or 1.0)
                elif err.http_status in (429, 418):
                    self.budget.back_off(err.retry_after or 1.0)
                raise err from None
            except (requests.exceptions.RequestException, BinanceRequestException) as e:
                raise classify(e) from None
        raise AssertionError("unreachable")

    def _observe(self) -> None:
        resp = getattr(self.client, "response", None)
        used = resp.headers.get("X-MBX-USED-WEIGHT-1M") if resp is not None else None
        if used is not None and used.isdigit():
            self.budget.observe(int(used))

    def exchange_ms(self) -> float:
        """Harvest's reading of the exchange's clock (ms), without asking it: the replay's
        market clock on the emulator (``clock``: the MarketClock it shares; its server clock
        IS that clock), wall time on Binance (whose server clock is wall time within NTP's
        error)."""
        return self.clock.now() * 1000 if self.clock is not None else time.time() * 1000

    def stamp(self) -> None:
        """Keep the client's ``timestamp_offset`` (ms; python-binance stamps a signed request
        ``time.time() × 1000 + timestamp_offset``) in step with the exchange's clock:
        :meth:`exchange_ms` − wall + :attr:`correction_ms`. On Binance that is the correction
        alone (0 until a -1021 resync); on the emulator, where the market clock runs at the
        replay's speed, it is recomputed before every call so the stamp is market time (the
        emulator allows the transit, scaled by the speed: ``Emulator.transit_ms``). Called before
        every request of the adapter; code using :attr:`client` directly calls it first."""
        off = self.correction_ms + (self.exchange_ms() - time.time() * 1000 if self.clock is not None else 0)
        self.client.timestamp_offset = int(off)

    @answers()
    def clock_offset_ms(self) -> int:
        """The exchange's clock minus harvest's reading of it (ms; :meth:`exchange_ms`: wall
        time on Binance, the shared market clock on the emulator, so both sides are one
        clock), from ``GET /fapi/v1/time`` (weight 1; the request's mid-point stands for the
        local reading: on the emulator the reading is uncertain by the replay's speed × half
        the round trip, e.g. ±150 ms for a 5 ms request at speed 60). Recorded in Redis
        (``<ns>:venue:clock_offset_ms``) for ``/metrics`` and the scorecard."""
        self.budget.reserve(request_weight("futures_time", {}), "read", f"{self.account}|GET /fapi/v1/time")
        t0 = self.exchange_ms()
        server = _num(self.client.futures_time()["serverTime"])
        t1 = self.exchange_ms()
        offset = int(server - (t0 + t1) / 2)
        self.r.set(f"{self.ns}:venue:clock_offset_ms", offset, ex=3600)
        return offset

    def resync_time(self) -> float:
        """Measure :meth:`clock_offset_ms` and sign with it from now on (:attr:`correction_ms`,
        applied by :meth:`stamp`); returns it. A large offset is absorbed for signing, but
        not hidden: it is logged as an error when it passes ``max_clock_offset_ms`` (and shows
        in ``/metrics``)."""
        offset = self.clock_offset_ms()
        self.correction_ms = offset
        self.stamp()
        level = logging.ERROR if abs(offset) > self.max_clock_offset_ms else logging.INFO
        log.log(
            level,
            "venue time offset resynced: %d ms (this machine's clock is %s by %.1f s)",
            offset,
            "behind" if offset > 0 else "ahead",
            abs(offset) / 1000,
        )
        return offset

    # ------------------------------------------------------------------ reference data

    @answers()
    def refresh_filters(self) -> int:
        """exchangeInfo (``GET /fapi/v1/exchangeInfo``, weight 1), once for the deployment: the
        first caller in 30 s fetches it into the shared cache (``<ns>:venue:exchange_info``, with
        the ORDERS rate limits), every other account and process within those 30 s loads that
        copy (beat's refresh walks every account in one pass: one request, not one per account).
        Cached in the process too, parsed once for every account's venue in it. Returns #symbols."""
        if not self.r.set(self.k_info_refreshed, "1", nx=True, ex=30) and self._load_shared():
            return len(self._filters)
        info = self._call("futures_exchange_info", "exchange_info", "read")
        filters = filters_from_exchange_info(info)
        token = os.urandom(8).hex()
        p = self.r.pipeline(transaction=True)
        p.set(self.k_info, json.dumps({"symbols": info["symbols"]}), ex=int(self.cache_ttl_s * 4))
        p.set(f"{self.k_info}:token", token, ex=int(self.cache_ttl_s * 4))
        p.execute()
        limits = order_limits(info)
        if limits:
            self.r.set(self.orders.k_limits, json.dumps(limits), ex=int(self.cache_ttl_s * 4))
        self._filters, self._filters_at = filters, time.time()
        _FILTERS[self.k_info] = (token, filters)
        return len(filters)

    def _load_shared(self) -> bool:
        """Take the deployment's cached exchangeInfo filters (Redis), parsed once per process
        and version (``<ns>:venue:exchange_info:token``, new at each fetch): every account's venue
        of the process shares the parse. False when Redis has none."""
        token = self.r.get(f"{self.k_info}:token")
        mine = _FILTERS.get(self.k_info)
        if token is not None and mine is not None and mine[0] == token:
            filters = mine[1]
        else:
            raw = self.r.get(self.k_info)
            if not raw:
                return False
            filters = filters_from_exchange_info(json.loads(raw))
            if token is not None:
                _FILTERS[self.k_info] = (token, filters)
        self._filters, self._filters_at = filters, time.time()
        return True

    @answers()
    def filters(self, symbol: str) -> SymbolFilters:
        if not self._filters or time.time() - self._filters_at > self.cache_ttl_s:
            if not self._load_shared():
                self.refresh_filters()
        try:
            return self._filters[symbol]
        except KeyError:
            raise facts.venue_error(*BAD_SYMBOL) from None

    @answers()
    def dual(self, priority: str = "read") -> bool:
        """Hedge mode (``dualSidePosition``) of the account, cached ``cache_ttl_s``."""
        raw = self.r.get(self.k_dual)
        if raw is None:
            d = bool(self._call("futures_get_position_mode", "dual", priority)["dualSidePosition"])
            self.r.set(self.k_dual, "true" if d else "false", ex=int(self.cache_ttl_s))
            return d
        return raw == "true"

    def _leverage(self, symbols: list[str]) -> dict[str, float]:
        """Leverage per symbol from ``GET /fapi/v1/symbolConfig`` (weight 5), cached
        ``leverage_ttl_s`` (an hour) and forgotten for a symbol whose position changed
        (:meth:`_openings`), after harvest opens one (:meth:`open_position`) and when the stream
        reports a change (:meth:`leverage_changed`): one call per missing symbol, or one call
        for every symbol when more than one is missing (a first sight of many positions)."""
        cached = dict(zip(symbols, self.r.hmget(self.k_leverage, symbols), strict=True)) if symbols else {}
        out = {s: float(v) for s, v in cached.items() if v is not None}
        missing = [s for s, v in cached.items() if v is None]
        if not missing:
            return out
        rows = self._call(
            "futures_symbol_config", "symbol_config", "read", **({"symbol": missing[0]} if len(missing) == 1 else {})
        )
        found = {x.get("symbol"): _num(x["leverage"]) for x in rows}
        fresh = {s: found.get(s, 1.0) for s in missing}
        out.update(fresh)
        p = self.r.pipeline(transaction=False)
        p.hset(self.k_leverage, mapping={s: repr(v) for s, v in fresh.items()})
        p.expire(self.k_leverage, int(self.leverage_ttl_s))
        p.execute()
        return out

    def leverage_changed(self, symbol: str | None = None) -> None:
        """Forget the cached leverage of ``symbol`` (None: every symbol's); the next positions
        read asks symbolConfig (``harvest streams`` on an ``ACCOUNT_CONFIG_UPDATE``)."""
        if symbol:
            self.r.hdel(self.k_leverage, symbol)
        else:
            self.r.delete(self.k_leverage)

    # ------------------------------------------------------------------ Venue

    @answers()
    def mark_price(self, symbol: str) -> float:
        return _num(self._call("futures_mark_price", "mark", "read", symbol=symbol)["markPrice"])

    @answers()
    def closed_closes(self, symbol: str, n: int) -> np.ndarray:
        """Closes (USDT, shape (≤ n,), oldest first) of the last ``n`` *closed* 1-minute
        bars from ``GET /fapi/v1/klines`` (the still-open bar is dropped)."""
        return self.closed_bars(symbol, n)[1]

    @answers()
    def closed_bars(self, symbol: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Open times (ms, int64) and closes (USDT, float64) of the last ``n`` *closed* 1-minute
        bars from ``GET /fapi/v1/klines``, each of shape (≤ n,), oldest first (the still-open
        bar is dropped)."""
        rows = self._call("futures_klines", "klines", "read", symbol=symbol, interval="1m", limit=min(1500, n + 1))
        rows = rows[:-1][-n:]
        return (
            np.array([int(x[0]) for x in rows], dtype=np.int64),
            np.array([_num(x[4]) for x in rows], dtype=np.float64),
        )

    @answers()
    def positions(self, symbol: str | None = None) -> list[VenuePosition]:
        """Open positions (positionAmt ≠ 0). In hedge mode a symbol with both legs open is
        not reported (harvest manages one leg per symbol) and is logged. The stops are read
        for the positions' symbols by the cheaper form (:meth:`per_symbol`) and kept a moment
        for an :meth:`open_orders` of the same audit."""
        params = {"symbol": symbol} if symbol else {}
        if not symbol:
            self._recent_algo = None
        rows = [
            x
            for x in self._call("futures_position_information", "positions", "read", **params)
            if _num(x["positionAmt"]) != 0.0
        ]
        by_sym: dict[str, list[dict]] = {}
        for x in rows:
            by_sym.setdefault(_sym(x["symbol"]), []).append(x)
        for s, legs in list(by_sym.items()):
            if len(legs) > 1:
                log.warning("hedge mode: %s has both legs open; harvest leaves it alone", s)
                del by_sym[s]
        if not by_sym:
            return []
        # The stops of the positions found: per symbol (weight 1 each) or all at once (40),
        # whichever Binance's table makes cheaper; only these symbols' stops are used below.
        algo = self._read_each(
            "futures_get_open_orders", [symbol] if symbol else sorted(by_sym), "read", conditional=True
        )
        if not symbol:  # kept for open_orders(symbols=...) in the same audit (RECENT_S)
            every = not self.per_symbol("futures_get_open_orders", sorted(by_sym), conditional=True)
            self._recent_algo = (time.monotonic(), None if every else frozenset(by_sym), algo)
        opened = self._openings({s: x for s, (x,) in by_sym.items()})
        lev = self._leverage(sorted(by_sym))
        funding = self._funding(opened)
        out = []
        for s, (x,) in sorted(by_sym.items()):
            amt = _num(x["positionAmt"])
            side = Side.LONG if amt > 0 else Side.SHORT
            stops = [
                _num(o["triggerPrice"])
                for o in algo
                if o.get("symbol") == s
                and o.get("closePosition") in (True, "true")
                and o.get("orderType", o.get("type")) == "STOP_MARKET"
                and o.get("side") == side.close_order_side
            ]
            liq = _num(x.get("liquidationPrice") or 0)
            out.append(
                VenuePosition(
                    symbol=s,
                    side=side,
                    qty=abs(amt),
                    entry_price=_num(x["entryPrice"]),
                    mark_price=_num(x["markPrice"]),
                    leverage=max(1.0, lev.get(s, 1.0)),
                    opened_at=opened.get(s),
                    stop_price=(max(stops) if side is Side.LONG else min(stops)) if stops else None,
                    liquidation_price=liq if liq > 0 else None,
                    funding_paid=funding.get(s, 0.0),
                )
            )
        return out

    def _openings(self, rows: dict[str, dict]) -> dict[str, float | None]:
        """Opening time (Unix s) of each open position (positionRisk rows by symbol), or None
        when the trades read do not reach back to it. Cached per symbol with the positionAmt and
        entryPrice it was found for; re-read from userTrades (weight 5) only when either moved —
        and then the symbol's cached leverage is forgotten too (a strategy sets the leverage as
        it opens or adds). A userTrades call that fails keeps the cached time (or None): the
        epoch is then kept."""
        if not rows:
            return {}
        syms = sorted(rows)
        cached = dict(zip(syms, self.r.hmget(self.k_opening, syms), strict=True))
        out: dict[str, float | None] = {}
        for s in syms:
            x = rows[s]
            key = f"{x['positionAmt']}|{x['entryPrice']}"
            c = json.loads(cached[s]) if cached[s] else None
            if c is not None and c.get("k") == key:
                out[s] = c.get("t")
                continue
            self.r.hdel(self.k_leverage, s)
            try:
                trades = self._call("futures_account_trades", "trades", "read", symbol=s, limit=1000)
                leg = x.get("positionSide", "BOTH")
                t = opening_time(
                    [tr for tr in trades if tr.get("positionSide", "BOTH") in (leg, "BOTH")], str(x["positionAmt"])
                )
            except VenueError as e:
                log.warning("opening of %s not read (%s); epoch kept", s, e)
                out[s] = c.get("t") if c else None
                continue
            if t is None and c is not None and (float(c.get("amt", 0)) > 0) == (_num(x["positionAmt"]) > 0):
                t = c.get("t")  # the opening is older than the trades read: the cached one stands
            out[s] = t
            self.r.hset(self.k_opening, s, json.dumps({"k": key, "t": t, "amt": str(x["positionAmt"])}))
        return out

    def funding_settled(self) -> None:
        """The next positions read reads ``/fapi/v1/income`` whatever the funding times say
        (``harvest streams`` calls it on an ``ACCOUNT_UPDATE`` FUNDING_FEE: a settlement the
        stream saw)."""
        self.r.set(self.k_funding_due, "1", ex=86_400)

    def funding_times(self, symbols: list[str]) -> dict[str, tuple[int, int]]:
        """Each symbol's last and next funding time (exchange ms; 0 when not known) from
        ``GET /fapi/v1/premiumIndex`` (``nextFundingTime``), kept for the deployment in Redis
        (``<ns>:venue:funding_times``, shared by every account) and read again only when a
        symbol's next funding time has passed, by one worker at a time: the all-symbol form
        (weight 1 for every symbol, Binance's table) — when the last read's next time passes it
        becomes the last funding time. At most one read a minute (wall) for the deployment; a
        failed read keeps what is stored."""
        if not symbols:
            return {}
        now = self.exchange_ms()
        raw = dict(zip(symbols, self.r.hmget(self.k_funding_times, symbols), strict=True))
        times = {s: tuple(json.loads(v)) if v else (0, 0) for s, v in raw.items()}
        stale = [s for s, (_, nxt) in times.items() if nxt <= now]
        # At most one read a minute for the whole deployment (the lock is left to expire).
        if stale and self.r.set(f"{self.k_funding_times}:lock", "1", nx=True, ex=60):
            try:
                rows = self._call("futures_mark_price", "premium_all", "read")
                rows = rows if isinstance(rows, list) else [rows]
                stored = {k: tuple(json.loads(v)) for k, v in self.r.hgetall(self.k_funding_times).items() if v}
                fresh: dict[str, str] = {}
                for x in rows:
                    sym, nxt = x.get("symbol"), int(_num(x.get("nextFundingTime") or 0))
                    last, old_next = stored.get(sym, (0, 0))
                    if old_next and old_next <= now:
                        last = old_next
                    fresh[sym] = json.dumps([int(last), nxt])
                    if sym in times:
                        times[sym] = (int(last), nxt)
                if fresh:
                    self.r.hset(self.k_funding_times, mapping=fresh)
            except (VenueError, *_MALFORMED) as e:
                log.warning("funding times not read (%s); the stored ones stand", e)
        return {s: (int(t[0]), int(t[1])) for s, t in times.items()}

    def _funding_due(self, symbols: list[str]) -> bool:
        """Whether this account reads income now: ``funding_poll_s`` ≤ 0 (every read), a
        settlement the stream reported (:meth:`funding_settled`), or a funding time of one of
        ``symbols`` passed ``funding_settle_s`` ago that this account has not read after — one
        Redis marker per funding time (``<ns>:venue:<account>:funding_read:<ms>``, SET NX: one
        read per funding time and account, whichever worker gets there first). A symbol whose
        funding time is not known (0) is read every ``funding_poll_s``."""
        if self.funding_poll_s <= 0 or self.r.getdel(self.k_funding_due):
            return True
        times = self.funding_times(symbols)
        settle_ms = self.funding_settle_s * 1000
        now = self.exchange_ms()
        passed = set()
        for last, nxt in times.values():
            if nxt and nxt + settle_ms <= now:
                passed.add(nxt)  # not yet rolled over (the premiumIndex read failed or is another's)
            elif last and last + settle_ms <= now:
                passed.add(last)
        due = False
        for t in sorted(passed):
            due |= bool(self.r.set(f"{self.k_funding_read}:{t}", "1", nx=True, ex=3 * 86_400))
        if any(nxt == 0 for _, nxt in times.values()):
            due |= bool(self.r.set(self.k_funding_poll, "1", nx=True, ex=max(1, int(self.funding_poll_s))))
        return due

    def _funding(self, opened: dict[str, float | None]) -> dict[str, float]:
        """Funding paid (USDT, negative when received) by each position since its opening, from
        ``GET /fapi/v1/income?incomeType=FUNDING_FEE`` (weight 30): every row at or after the
        epoch's opening, applied once (by ``tranId``). Read when an epoch is first seen and then
        once after each funding time of the account's symbols (:meth:`_funding_due`), never on a
        timer; between reads the stored sums stand. A failed read keeps them (funding is
        informative, never a reason to skip a scan) and is tried again at the next positions read."""
        known = {s: t for s, t in opened.items() if t is not None}
        if not known:
            return {}
        syms = sorted(known)
        state = {s: json.loads(v) if v else None for s, v in zip(syms, self.r.hmget(self.k_funding, syms), strict=True)}
        first_sight = False
        for s in syms:
            if state[s] is None or state[s].get("opened") != known[s]:
                state[s] = {"opened": known[s], "paid": 0.0, "last": -1}
                first_sight = True
        if first_sight | self._funding_due(syms):
            try:
                start = int(min(known.values()) * 1000)
                rows: list[dict] = []
                for _ in range(5):  # pages of 1000, oldest first
                    page = self._call(
                        "futures_income_history",
                        "income",
                        "read",
                        incomeType="FUNDING_FEE",
                        startTime=start,
                        limit=1000,
                    )
                    rows += page
                    if len(page) < 1000:
                        break
                    start = int(_num(page[-1]["time"])) + 1
                for row in sorted(rows, key=lambda r: int(_num(r["tranId"]))):
                    st = state.get(row.get("symbol"))
                    tran = int(_num(row["tranId"]))
                    if st is None or _num(row["time"]) < st["opened"] * 1000 or tran <= st["last"]:
                        continue
                    st["paid"] -= _num(row["income"])
                    st["last"] = tran
            except VenueError as e:
                log.warning("funding not read (%s); the last sums stand, read again next time", e)
                self.r.set(self.k_funding_due, "1", ex=86_400)
        self.r.hset(self.k_funding, mapping={s: json.dumps(st) for s, st in state.items()})
        return {s: float(st["paid"]) for s, st in state.items()}

    def position(self, symbol: str) -> VenuePosition | None:
        return next(iter(self.positions(symbol)), None)

    def _mode_refreshed(self, send: Callable[[bool], Any], priority: str) -> Any:
        """``send(dual)`` with the cached position mode; on a POSITION_MODE refusal (-4061,
        -4059, or -1106 for reduceOnly sent in hedge mode: the account's mode changed under the
        cache; the order was refused, nothing ran) the mode is read again from the exchange and
        the same request (same clientOrderId) is sent once more."""
        try:
            return send(self.dual(priority))
        except VenueError as e:
            if e.reason is not VenueReason.POSITION_MODE:
                raise
            self.r.delete(self.k_dual)
            log.warning("position mode changed under the cache (%s); refreshed, sending again", e)
            return send(self.dual(priority))

    @answers(sends=True)
    def close_market(self, symbol: str, side: str, qty: str, client_order_id: str) -> OrderResult:
        def send(dual: bool) -> Any:
            params: dict[str, Any] = {
                "symbol": symbol,
                "side": side,
                "type": "MARKET",
                "quantity": qty,
                "newClientOrderId": client_order_id,
                "newOrderRespType": "RESULT",
            }
            if dual:
                params["positionSide"] = Side.closed_by(side).value
            else:
                params["reduceOnly"] = "true"
            return self._call("futures_create_order", "order", "close", new_order=True, **params)

        return self._order(self._mode_refreshed(send, "close"))

    @answers(sends=True)
    def move_stop(self, symbol: str, side: str, stop_price: str, client_order_id: str) -> OrderResult:
        def send(dual: bool) -> Any:
            params: dict[str, Any] = {
                "symbol": symbol,
                "side": side,
                "type": "STOP_MARKET",
                "triggerPrice": stop_price,
                "closePosition": "true",
                "workingType": "MARK_PRICE",
                "clientAlgoId": client_order_id,
            }
            if dual:
                params["positionSide"] = Side.closed_by(side).value
            return self._call("futures_create_order", "order", "stop", new_order=True, **params)

        new = self._algo(self._mode_refreshed(send, "stop"))
        # The new stop works; only now are the older stops of this position cancelled. A
        # failure here is not the order's failure (it is placed): the older, looser stops stay
        # until the next move, and nothing is re-sent.
        try:
            working = self._call("futures_get_open_orders", "open_algo", "stop", symbol=symbol, conditional=True)
        except VenueError as e:
            log.warning("stops of %s not listed after the move (%s); older stops stay", symbol, e)
            return new
        for o in working:
            if (
                o.get("clientAlgoId") != client_order_id
                and o.get("side") == side
                and o.get("closePosition") in (True, "true")
            ):
                try:
                    self._call("futures_cancel_order", "cancel", "stop", symbol=symbol, clientAlgoId=o["clientAlgoId"])
                except VenueError as e:  # triggered or gone meanwhile; the new stop protects
                    log.warning("old stop %s of %s not cancelled: %s", o.get("clientAlgoId"), symbol, e)
        return new

    @staticmethod
    def per_symbol(fn: str, symbols: list[str] | None, **params: Any) -> bool:
        """Whether reading ``fn`` once per symbol of ``symbols`` costs less request weight, by
        Binance's table (:func:`request_weight`), than its all-symbol form (one request without
        ``symbol``): openOrders / openAlgoOrders cost 1 a symbol, 40 for all, so up to 39
        symbols are read one by one. ``symbols`` None (not known) → False: only the all-symbol
        form finds orders on symbols harvest does not know. A tie goes to the one request."""
        if symbols is None:
            return False
        each = sum(request_weight(fn, {**params, "symbol": s}) for s in set(symbols))
        return each < request_weight(fn, params)

    def _read_each(self, fn: str, symbols: list[str] | None, priority: str, **params: Any) -> list[Any]:
        """The rows of ``fn`` for at least ``symbols`` (None: every symbol), by the cheaper form
        (:meth:`per_symbol`): one request per symbol, or one without a symbol (which answers
        for every symbol: more rows than asked, never fewer)."""
        if not self.per_symbol(fn, symbols, **params):
            return list(self._call(fn, fn, priority, **params))
        rows: list[Any] = []
        for s in sorted(set(symbols or ())):
            rows += self._call(fn, fn, priority, symbol=s, **params)
        return rows

    @answers()
    def open_orders(
        self, symbol: str | None = None, algo: bool | None = None, symbols: list[str] | None = None
    ) -> list[OrderResult]:
        """Working orders: ``GET /fapi/v1/openOrders`` and ``/fapi/v1/openAlgoOrders`` (``algo``
        False/True: one of them only). ``symbol``: that symbol's (weight 1 each). ``symbols``:
        at least those symbols' orders, by the cheaper form (:meth:`per_symbol`: 1 a symbol, or
        40 for every symbol — then other symbols' orders come too). Neither: every symbol's
        (40 each), the read that discovers orders on symbols harvest does not know — reconcile's
        audit of harvest's own clientOrderIds and a resync after a stream gap need it; a caller
        whose question is about known symbols (the book's, the plans') passes them."""
        scope = [symbol] if symbol else symbols
        out: list[OrderResult] = []
        if algo is not True:
            out += [self._order(x) for x in self._read_each("futures_get_open_orders", scope, "read")]
        if algo is not False:
            recent, self._recent_algo = self._recent_algo, None
            fresh = recent is not None and symbols is not None and not symbol
            if fresh and recent is not None and time.monotonic() - recent[0] <= RECENT_S:
                # the stops positions() read a moment ago (the same audit), and the rest's
                rest = [] if recent[1] is None else sorted(set(symbols or ()) - recent[1])
                if self.per_symbol("futures_get_open_orders", rest, conditional=True):
                    rows = recent[2] + self._read_each("futures_get_open_orders", rest, "read", conditional=True)
                else:
                    rows = self._read_each("futures_get_open_orders", None, "read", conditional=True)
            else:
                rows = self._read_each("futures_get_open_orders", scope, "read", conditional=True)
            out += [self._algo(x) for x in rows]
        return out

    @answers()
    def all_orders(self, symbols: list[str]) -> list[OrderResult]:
        """``GET /fapi/v1/allOrders`` of each symbol (weight 5 each, the last 1000 orders)."""
        out: list[OrderResult] = []
        for s in symbols:
            out += [
                self._order(x) for x in self._call("futures_get_all_orders", "all_orders", "read", symbol=s, limit=1000)
            ]
        return out

    @answers()
    def account_records(self, symbols: list[str]) -> tuple[list[OrderResult], dict[str, dict[str, float]]]:
        """Exchange truth for the scorecard: harvest's orders (``GET /fapi/v1/allOrders``, the
        ``hv-`` clientOrderIds; weight 5 a symbol) and per symbol the realized PnL and commission
        of their fills (``GET /fapi/v1/userTrades``, weight 5 a symbol) and the funding paid
        (``GET /fapi/v1/income?incomeType=FUNDING_FEE``, weight 30; negative when received), as
        ``{symbol: {"realized", "commission", "funding", "trades"}}`` (USDT; the last 1000 rows of
        each). Raises VenueError."""
        orders = [o for o in self.all_orders(symbols) if o.client_order_id.startswith(CLIENT_ORDER_PREFIX)]
        ids = {o.order_id for o in orders}
        pnl: dict[str, dict[str, float]] = {}
        for s in symbols:
            rows = [
                x
                for x in self._call("futures_account_trades", "trades", "read", symbol=s, limit=1000)
                if x.get("orderId") in ids
            ]
            income = self._call(
                "futures_income_history", "income", "read", incomeType="FUNDING_FEE", symbol=s, limit=1000
            )
            if rows or income:
                pnl[s] = {
                    "realized": sum(_num(x.get("realizedPnl", 0)) for x in rows),
                    "commission": sum(_num(x.get("commission", 0)) for x in rows),
                    "funding": -sum(_num(x.get("income", 0)) for x in income),
                    "trades": float(len(rows)),
                }
        return orders, pnl

    @answers()
    def get_order(self, symbol: str, client_order_id: str, conditional: bool = False) -> OrderResult:
        if conditional:
            return self._algo(
                self._call("futures_get_order", "get_order", "close", symbol=symbol, clientAlgoId=client_order_id)
            )
        o = self._order(
            self._call("futures_get_order", "get_order", "close", symbol=symbol, origClientOrderId=client_order_id)
        )
        if o.executed_qty > 0:
            trades = self._call("futures_account_trades", "trades", "read", symbol=symbol, orderId=o.order_id)
            o = o.model_copy(
                update={
                    "realized_pnl": sum(_num(t.get("realizedPnl", 0)) for t in trades),
                    "commission": sum(_num(t.get("commission", 0)) for t in trades),
                }
            )
        return o

    @answers()
    def order_by_id(self, symbol: str, order_id: int, conditional: bool = False) -> OrderResult:
        """``GET /fapi/v1/order?orderId=`` (``conditional``: ``/fapi/v1/algoOrder?algoId=``;
        weight 1). Raises VenueError, reason ORDER_NOT_FOUND when there is none."""
        if conditional:
            return self._algo(self._call("futures_get_order", "get_order", "read", symbol=symbol, algoId=order_id))
        return self._order(self._call("futures_get_order", "get_order", "read", symbol=symbol, orderId=order_id))

    @answers(sends=True)
    def cancel_stop(self, symbol: str, client_order_id: str) -> OrderResult:
        """``DELETE /fapi/v1/algoOrder?clientAlgoId=`` (weight 1), then the stop as the
        exchange now reports it (the cancel's answer carries no status). Raises VenueError,
        reason CANCEL_REJECTED (-2011) when it is not working."""
        self._call("futures_cancel_order", "cancel", "stop", symbol=symbol, clientAlgoId=client_order_id)
        return self.get_order(symbol, client_order_id, conditional=True)

    @answers(sends=True)
    def open_position(
        self,
        symbol: str,
        side: Side | str,
        qty: float,
        leverage: float,
        stop_price: float | None = None,
        client_order_id: str | None = None,
    ) -> VenuePosition:
        """As a strategy opens a position: ``POST /fapi/v1/leverage`` (weight 1), a MARKET order
        without reduceOnly (hedge mode: ``positionSide``; Binance checks margin -2019, MIN_NOTIONAL
        -4164 and the bracket's cap -2027 here), then with ``stop_price`` a closePosition
        STOP_MARKET (:meth:`move_stop`, clientAlgoId ``open-<hex>``). Returns the position read
        back (positionRisk). Raises VenueError."""
        side = Side(side)
        f = self.filters(symbol)
        q = f.round_qty(qty)
        self._call("futures_change_leverage", "leverage", "stop", symbol=symbol, leverage=int(leverage))
        self.r.hdel(self.k_leverage, symbol)
        params: dict[str, Any] = {
            "symbol": symbol,
            "side": side.open_order_side,
            "type": "MARKET",
            "quantity": SymbolFilters.fmt(q),
            "newOrderRespType": "RESULT",
        }
        if client_order_id:
            params["newClientOrderId"] = client_order_id
        if self.dual("stop"):
            params["positionSide"] = side.value
        self._call("futures_create_order", "order", "stop", new_order=True, **params)
        if stop_price is not None:
            sp = f.round_price(stop_price, "down" if side is Side.LONG else "up")
            self.move_stop(symbol, side.close_order_side, SymbolFilters.fmt(sp), f"open-{os.urandom(8).hex()}")
        pos = self.position(symbol)
        if pos is None:
            raise VenueError(0, f"no {symbol} position after its opening order filled", 200, reason=VenueReason.OTHER)
        return pos

    def refresh_exchange_info(self) -> int:
        """Forget the cached position mode of the account (read again only when an order needs
        it), then :meth:`refresh_filters` (exchangeInfo, read once for the deployment). The
        leverage cache has a life of its own (:meth:`_leverage`). Returns #symbols."""
        self.r.delete(self.k_dual)
        return self.refresh_filters()

    # ------------------------------------------------------------------ parsing

    @staticmethod
    def _order(x: dict[str, Any]) -> OrderResult:
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

    @staticmethod
    def _algo(x: dict[str, Any]) -> OrderResult:
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
    from decimal import Decimal

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


def handshake_proof(api_secret: str, nonce: str) -> str:
    """The emulator's answer to a handshake challenge: HMAC-SHA256 (hex) of
    ``"harvest-fapi-emulator:<nonce>"`` keyed with the account's API secret (the secret the
    emulator checks request signatures with; Binance signs requests the same way). Only a
    server that holds the secret can compute it, so an impostor answering the fixed handshake
    JSON does not pass."""
    import hashlib
    import hmac

    from harvest.venues.sim.emulator import HANDSHAKE

    return hmac.new(api_secret.encode(), f"{HANDSHAKE}:{nonce}".encode(), hashlib.sha256).hexdigest()


def emulator_handshake(
    futures_url: str,
    timeout_s: float,
    api_key: str | None = None,
    api_secret: str | None = None,
    session: requests.Session | None = None,
    proxies: dict[str, str] | None = None,
) -> dict:
    """Check that ``futures_url`` (``HARVEST_FAPI_URL``) is harvest's fapi emulator before any
    other request goes there; returns its answer (``namespace``, ``stream_url``: its websocket
    streams or None).

    One request, ``GET /_emu/hello?nonce=<32 hex>`` with ``X-MBX-APIKEY: api_key`` (the key
    Binance gets on every request anyway; the secret is never sent), redirects not followed.
    The answer must carry ``"emulator": "harvest-fapi-emulator"``; on a non-loopback address
    (the emulator on another host of a paper deployment) it must also carry ``"proof"`` =
    :func:`handshake_proof` of the nonce with ``api_secret``, so neither a real exchange (a 404,
    another JSON) nor a server copying the fixed answer passes without the account's secret.

    ``session``/``proxies``: the account's egress (:func:`bind_session`), so the handshake leaves
    by the same address as the requests after it.

    Raises VenueError: a rejection (code -9001, message naming HARVEST_FAPI_URL) when the
    server answers as something else or, off loopback, no key and secret are given; retryable
    when nothing answers (connection refused, timeout: the emulator restarting) — either way
    nothing else is sent. The paper venue never reaches a real exchange, whatever its URL."""
    import hmac
    import secrets

    from harvest.venues.sim.emulator import HANDSHAKE
    from settings import is_loopback_url

    root = futures_url.rstrip("/").removesuffix("/fapi")
    remote = not is_loopback_url(futures_url)
    named = f"HARVEST_FAPI_URL={futures_url}"
    if remote and not (api_key and api_secret):
        raise VenueError(
            -9001, f"{named} is not on a loopback address: the emulator's handshake there needs the API key and secret"
        )
    nonce = secrets.token_hex(16)
    headers = {"X-MBX-APIKEY": api_key} if api_key else {}
    try:
        resp = (session or requests.Session()).get(
            f"{root}/_emu/hello",
            params={"nonce": nonce},
            headers=headers,
            timeout=timeout_s,
            allow_redirects=False,
            proxies=proxies,
        )
    except requests.exceptions.RequestException as e:  # not reachable now: nothing sent, try again later
        raise VenueError(
            0, f"{named} did not answer the emulator's handshake ({type(e).__name__})", 0, retryable=True
        ) from None
    try:
        answer = resp.json() if resp.status_code == 200 else f"HTTP {resp.status_code}"
    except ValueError:
        answer = f"HTTP {resp.status_code}, not JSON"
    if not isinstance(answer, dict) or answer.get("emulator") != HANDSHAKE:
        raise VenueError(
            -9001,
            f"{named} is not harvest's fapi emulator (handshake answer {str(answer)[:80]!r}); "
            "the paper venue sends nothing there",
        )
    if remote:
        proof = answer.get("proof")
        if not isinstance(proof, str) or not hmac.compare_digest(proof, handshake_proof(api_secret or "", nonce)):
            raise VenueError(
                -9001,
                f"{named} is not harvest's fapi emulator: its handshake does not prove the account's API secret "
                "(a non-loopback emulator must hold the same HARVEST_API_KEY/HARVEST_API_SECRET)",
            )
    return answer


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """A requests transport adapter whose connections leave from the local address ``source``
    (urllib3's ``source_address``; port 0: any), through a proxy too. The address must be one
    of this host's (a bind to another fails: a connection error, nothing sent)."""

    def __init__(self, source: str, **kwargs: Any):
        self.source_address = (source, 0)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = self.source_address
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["source_address"] = self.source_address
        return super().proxy_manager_for(proxy, **kwargs)


def bind_session(session: requests.Session, egress: Egress | None) -> None:
    """Bind ``session``'s connections to ``egress``'s local source address
    (:class:`SourceAddressAdapter` for http and https). A proxy egress is not the session's:
    :func:`make_client` passes it as python-binance's ``requests_params["proxies"]``, sent with
    every call (per-request proxies win over the environment's ``HTTPS_PROXY``; a session's
    would not). The default route changes nothing."""
    if egress is not None and egress.source:
        adapter = SourceAddressAdapter(egress.source)
        session.mount("https://", adapter)
        session.mount("http://", adapter)


def make_client(
    api_key: str,
    api_secret: str,
    futures_url: str | None,
    testnet: bool,
    timeout_s: float,
    recv_window_ms: int,
    egress: Egress | None = None,
) -> Client:
    """A python-binance ``Client`` for USDⓈ-M futures: ``ping=False``; ``futures_url``
    overrides ``FUTURES_URL`` (the emulator: its handshake is checked first,
    :func:`emulator_handshake`); ``testnet`` selects Binance's futures testnet; ``egress``: the
    way out every request of the client leaves by (:func:`bind_session`; None: the default
    route). Raises VenueError when ``futures_url`` is not the emulator."""
    proxies = {"http": egress.proxy, "https": egress.proxy} if egress and egress.proxy else None
    params: dict[str, Any] = {"timeout": timeout_s, **({"proxies": proxies} if proxies else {})}
    c = Client(api_key, api_secret, ping=False, testnet=testnet, requests_params=params)
    bind_session(c.session, egress)
    if futures_url:  # the first request of this client, by its egress
        emulator_handshake(futures_url, timeout_s, api_key, api_secret, session=c.session, proxies=proxies)
    if futures_url:
        c.FUTURES_URL = futures_url.rstrip("/")
    c.REQUEST_RECVWINDOW = recv_window_ms
    return c
