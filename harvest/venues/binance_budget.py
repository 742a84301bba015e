"""The request-weight and order-rate budgets of the Binance adapter, in Redis, and the weight
python-binance's calls cost (Binance's figures: :mod:`harvest.venues.binance_facts`).

:class:`WeightBudget` keeps every worker of the fleet under the exchange's request-weight
limit through one Redis counter per minute, corrected from ``X-MBX-USED-WEIGHT-1M``; closes
may use the whole budget, stop moves and reads only a share of it (closes go first).
:class:`OrderBudget` keeps each account under Binance's ``ORDERS`` limits.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from harvest.venues import binance_facts as facts

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
#: Share of the weight budget each priority may use: closes go ahead of stop moves and reads.
PRIORITY_SHARE = {"close": 1.0, "stop": 0.85, "read": 0.7}


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
        return int(cast(str | None, self.r.get(self.key())) or 0)


def held_back(r: redis.Redis, ns: str) -> dict[tuple[str, str], int]:
    """Requests the weight budgets held back so far: ``{(egress, priority): n}``."""
    out: dict[tuple[str, str], int] = {}
    for f, v in cast(dict[str, str], r.hgetall(f"{ns}:venue:weight_held")).items():
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
            raw = cast(str | None, self.r.get(self.k_limits))
            got = [tuple(x) for x in json.loads(raw)] if raw else []
            self._limits = (time.time(), [(int(w), int(n)) for w, n in got] or list(DEFAULT_ORDER_LIMITS))
        return self._limits[1]

    def reserve(self, priority: str) -> None:
        """Count one new order of ``priority`` (close, stop) against every window. Raises a
        retryable VenueError (-1015, ``retry_after`` s: the rest of the full window, or of the
        back-off) when a window is full for that priority or the account backs off; nothing is
        sent then."""
        now = time.time()
        keys: list[str] = [self.k_backoff]
        args: list[str | int] = [repr(now)]
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
