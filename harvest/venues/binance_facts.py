"""Binance USDⓈ-M futures facts, in one place: request weights (by endpoint *and* parameters),
order-count limits and headers, the error answers harvest meets (HTTP status, code, message),
the answer to an unknown path, kline intervals and the response field sets of the account
endpoints. The emulator (:mod:`harvest.venues.sim.emulator`) charges and answers from this module;
the adapter (:mod:`harvest.venues.binance`) budgets from it; a test fails when the two disagree
(``tests/integration/test_emulator_binance.py``).

Every fact names the page it was read from (``SOURCES``; Binance's developer documentation,
``https://developers.binance.com/docs/derivatives/usds-margined-futures/…``) and the date it was
read (:data:`READ_ON`). Where a page says nothing, the fact says where it comes from instead
(an observed answer, another Binance product's page) and takes the more dangerous reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harvest.venues.base import VenueError, VenueReason

#: The date the pages below were read (UTC).
READ_ON = "2026-12-06"
_DOCS = "https://developers.binance.com/docs/derivatives/usds-margined-futures"

#: The pages each fact comes from (key → URL), read on :data:`READ_ON`.
SOURCES: dict[str, str] = {
    "general": f"{_DOCS}/general-info",
    "errors": f"{_DOCS}/error-code",
    "rate_limits_faq": "https://www.binance.com/en/support/faq/rate-limits-on-binance-futures-281596e222414cdd9051664ea621cdc3",
    "klines": f"{_DOCS}/market-data/rest-api/Kline-Candlestick-Data",
    "mark_price": f"{_DOCS}/market-data/rest-api/Mark-Price",
    "exchange_info": f"{_DOCS}/market-data/rest-api/Exchange-Information",
    "time": f"{_DOCS}/market-data/rest-api/Check-Server-Time",
    "new_order": f"{_DOCS}/trade/rest-api/New-Order",
    "query_order": f"{_DOCS}/trade/rest-api/Query-Order",
    "cancel_order": f"{_DOCS}/trade/rest-api/Cancel-Order",
    "open_orders": f"{_DOCS}/trade/rest-api/Current-All-Open-Orders",
    "all_orders": f"{_DOCS}/trade/rest-api/All-Orders",
    "all_algo_orders": f"{_DOCS}/trade/rest-api/Query-All-Algo-Orders",
    "new_algo_order": f"{_DOCS}/trade/rest-api/New-Algo-Order",
    "query_algo_order": f"{_DOCS}/trade/rest-api/Query-Algo-Order",
    "cancel_algo_order": f"{_DOCS}/trade/rest-api/Cancel-Algo-Order",
    "open_algo_orders": f"{_DOCS}/trade/rest-api/Current-All-Algo-Open-Orders",
    "position_v2": f"{_DOCS}/trade/rest-api/Position-Information-V2",
    "position_v3": f"{_DOCS}/trade/rest-api/Position-Information-V3",
    "user_trades": f"{_DOCS}/trade/rest-api/Account-Trade-List",
    "leverage": f"{_DOCS}/trade/rest-api/Change-Initial-Leverage",
    "margin_type": f"{_DOCS}/trade/rest-api/Change-Margin-Type",
    "position_mode": f"{_DOCS}/account/rest-api/Get-Current-Position-Mode",
    "change_position_mode": f"{_DOCS}/trade/rest-api/Change-Position-Mode",
    "balance_v2": f"{_DOCS}/account/rest-api/Futures-Account-Balance-V2",
    "balance_v3": f"{_DOCS}/account/rest-api/Futures-Account-Balance-V3",
    "account_v3": f"{_DOCS}/account/rest-api/Account-Information-V3",
    "account_v2": f"{_DOCS}/account/rest-api/Account-Information-V2",
    "income": f"{_DOCS}/account/rest-api/Get-Income-History",
    "brackets": f"{_DOCS}/account/rest-api/Notional-and-Leverage-Brackets",
    "symbol_config": f"{_DOCS}/account/rest-api/Symbol-Config",
    "listen_key": f"{_DOCS}/user-data-streams/Start-User-Data-Stream",
    # not a documentation page: the answers observed for an unknown fapi path (production: HTTP
    # 404 with Binance's HTML error page; testnet: JSON -5000), reported in ccxt/node-binance-api#914
    # (2025-02) and ccxt/ccxt#18797 (2023-08).
    "unknown_path": "https://github.com/ccxt/node-binance-api/issues/914",
}


# ---------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class Endpoint:
    """One REST endpoint's request weight (``X-MBX-USED-WEIGHT-1M``, per IP).

    ``weight``: with a symbol (or for an endpoint without one); ``weight_no_symbol``: when the
    optional ``symbol`` parameter is omitted (None: the same); ``by_limit``: the weight follows
    the ``limit`` parameter's bands (:data:`KLINES_LIMIT_BANDS`); ``new_order``: the request
    counts on the account's ORDERS limits (:data:`ORDER_LIMITS`); ``source``: key of
    :data:`SOURCES`."""

    method: str
    path: str
    weight: int
    source: str
    weight_no_symbol: int | None = None
    by_limit: bool = False
    new_order: bool = False


_ENDPOINTS = (
    Endpoint("GET", "/fapi/v1/ping", 1, "general"),
    Endpoint("GET", "/fapi/v1/time", 1, "time"),
    Endpoint("GET", "/fapi/v1/exchangeInfo", 1, "exchange_info"),
    # "Request Weight 1" with or without a symbol (the COIN-M page charges 10; this page does not)
    Endpoint("GET", "/fapi/v1/premiumIndex", 1, "mark_price"),
    Endpoint("GET", "/fapi/v1/klines", 0, "klines", by_limit=True),
    # "1 on 10s order rate limit (X-MBX-ORDER-COUNT-10S); 1 on 1min order rate limit
    # (X-MBX-ORDER-COUNT-1M); 0 on IP rate limit (x-mbx-used-weight-1m)"
    Endpoint("POST", "/fapi/v1/order", 0, "new_order", new_order=True),
    Endpoint("GET", "/fapi/v1/order", 1, "query_order"),
    Endpoint("DELETE", "/fapi/v1/order", 1, "cancel_order"),
    Endpoint("POST", "/fapi/v1/algoOrder", 0, "new_algo_order", new_order=True),
    Endpoint("GET", "/fapi/v1/algoOrder", 1, "query_algo_order"),
    Endpoint("DELETE", "/fapi/v1/algoOrder", 1, "cancel_algo_order"),
    # "1 for a single symbol; 40 when the symbol parameter is omitted"
    Endpoint("GET", "/fapi/v1/openOrders", 1, "open_orders", weight_no_symbol=40),
    Endpoint("GET", "/fapi/v1/openAlgoOrders", 1, "open_algo_orders", weight_no_symbol=40),
    Endpoint("GET", "/fapi/v1/allOrders", 5, "all_orders"),
    Endpoint("GET", "/fapi/v1/allAlgoOrders", 5, "all_algo_orders"),
    Endpoint("GET", "/fapi/v1/userTrades", 5, "user_trades"),
    Endpoint("GET", "/fapi/v1/income", 30, "income"),
    Endpoint("GET", "/fapi/v2/positionRisk", 5, "position_v2"),
    Endpoint("GET", "/fapi/v3/positionRisk", 5, "position_v3"),
    Endpoint("GET", "/fapi/v2/balance", 5, "balance_v2"),
    Endpoint("GET", "/fapi/v3/balance", 5, "balance_v3"),
    Endpoint("GET", "/fapi/v3/account", 5, "account_v3"),
    Endpoint("GET", "/fapi/v2/account", 5, "account_v2"),
    Endpoint("POST", "/fapi/v1/leverage", 1, "leverage"),
    Endpoint("POST", "/fapi/v1/marginType", 1, "margin_type"),
    Endpoint("GET", "/fapi/v1/positionSide/dual", 30, "position_mode"),
    Endpoint("POST", "/fapi/v1/positionSide/dual", 1, "change_position_mode"),
    Endpoint("GET", "/fapi/v1/leverageBracket", 1, "brackets"),
    Endpoint("GET", "/fapi/v1/symbolConfig", 5, "symbol_config"),
    Endpoint("POST", "/fapi/v1/listenKey", 1, "listen_key"),
    Endpoint("PUT", "/fapi/v1/listenKey", 1, "listen_key"),
    Endpoint("DELETE", "/fapi/v1/listenKey", 1, "listen_key"),
)
#: (method, path) → :class:`Endpoint`.
ENDPOINTS: dict[tuple[str, str], Endpoint] = {(e.method, e.path): e for e in _ENDPOINTS}

#: klines' weight by ``limit`` (Kline/Candlestick Data page): [1,100) → 1, [100,500) → 2,
#: [500,1000] → 5, > 1000 → 10. Rows: (upper bound exclusive, weight).
KLINES_LIMIT_BANDS = ((100, 1), (500, 2), (1001, 5), (1_000_000_000, 10))
KLINES_DEFAULT_LIMIT = 500
KLINES_MAX_LIMIT = 1500


class UnknownEndpoint(KeyError):
    """A (method, path) Binance does not serve (see :data:`UNKNOWN_PATH` for its answer)."""


def klines_weight(limit: int) -> int:
    """Weight of ``GET /fapi/v1/klines`` for ``limit`` rows (:data:`KLINES_LIMIT_BANDS`)."""
    for upper, w in KLINES_LIMIT_BANDS:
        if limit < upper:
            return w
    return KLINES_LIMIT_BANDS[-1][1]


def request_weight(method: str, path: str, params: Mapping[str, object] | None = None) -> int:
    """The request weight Binance charges for ``method path`` with ``params`` (the request's
    parameters as sent; only ``symbol`` and ``limit`` matter). A ``limit`` that is not an
    integer is charged as the default. Raises :class:`UnknownEndpoint`."""
    e = ENDPOINTS.get((method.upper(), path))
    if e is None:
        raise UnknownEndpoint(f"{method} {path}")
    p = params or {}
    if e.by_limit:
        try:
            limit = int(str(p.get("limit", KLINES_DEFAULT_LIMIT)))
        except ValueError:
            limit = KLINES_DEFAULT_LIMIT
        return klines_weight(limit)
    if e.weight_no_symbol is not None and not p.get("symbol"):
        return e.weight_no_symbol
    return e.weight


# ---------------------------------------------------------------------------------- limits

#: The IP's request weight per minute (exchangeInfo ``rateLimits`` REQUEST_WEIGHT; rate-limits FAQ).
WEIGHT_LIMIT_1M = 2400
#: The account's new-order limits: (window in seconds, orders) — 300 per 10 s, 1200 per minute
#: (exchangeInfo ``rateLimits`` ORDERS; rate-limits FAQ, last updated 2024-12-27).
ORDER_LIMITS = ((10, 300), (60, 1200))
#: The response header carrying the account's order count of each window (General Info: "Order
#: responses contain X-MBX-ORDER-COUNT-(intervalNum)(intervalLetter)").
ORDER_COUNT_HEADERS = {10: "X-MBX-ORDER-COUNT-10S", 60: "X-MBX-ORDER-COUNT-1M"}
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


def order_count_header(window_s: int) -> str:
    """``X-MBX-ORDER-COUNT-<n><S|M|H|D>`` for a window of ``window_s`` seconds."""
    if window_s in ORDER_COUNT_HEADERS:
        return ORDER_COUNT_HEADERS[window_s]
    for unit, s in (("D", 86400), ("H", 3600), ("M", 60)):
        if window_s % s == 0:
            return f"X-MBX-ORDER-COUNT-{window_s // s}{unit}"
    return f"X-MBX-ORDER-COUNT-{window_s}S"


#: Timing security (General Info): ``recvWindow`` defaults to 5000 ms and may not exceed 60000.
RECV_WINDOW_DEFAULT_MS = 5000
RECV_WINDOW_MAX_MS = 60000
#: A signed request is accepted when ``timestamp < serverTime + 1000``.
TIMESTAMP_AHEAD_MS = 1000


# ---------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ErrorFact:
    """One error answer: HTTP status, Binance code, message (``%s`` filled by :meth:`fmt`)."""

    status: int
    code: int
    msg: str

    def fmt(self, *args: object) -> tuple[int, int, str]:
        """``(status, code, message)`` with the message's ``%s`` replaced by ``args``."""
        return self.status, self.code, (self.msg % args if args else self.msg)


#: The error answers harvest meets, by Binance's name (Error Codes page unless noted). HTTP
#: status: 4XX for the sender's errors (400 unless noted), 401 for a rejected API key, 429 for
#: a rate limit, 418 for a ban (General Info, HTTP Return Codes).
ERRORS: dict[str, ErrorFact] = {
    "UNKNOWN": ErrorFact(500, -1000, "An unknown error occured while processing the request."),
    "DISCONNECTED": ErrorFact(503, -1001, "Internal error; unable to process your request. Please try again."),
    "TOO_MANY_REQUESTS": ErrorFact(
        429,
        -1003,
        "Too many requests; current limit is %s requests per minute. Please use the websocket for live "
        "updates to avoid polling the API.",
    ),
    "IP_BANNED": ErrorFact(
        418,
        -1003,
        "Way too many requests; IP banned until %s. Please use the websocket for live updates to avoid bans.",
    ),
    "TOO_MANY_ORDERS": ErrorFact(429, -1015, "Too many new orders; current limit is %s orders per %s."),
    "INVALID_TIMESTAMP": ErrorFact(400, -1021, "Timestamp for this request is outside of the recvWindow."),
    "INVALID_SIGNATURE": ErrorFact(400, -1022, "Signature for this request is not valid."),
    "ILLEGAL_CHARS": ErrorFact(400, -1100, "Illegal characters found in parameter '%s'; legal range is '%s'."),
    "MANDATORY_PARAM_EMPTY_OR_MALFORMED": ErrorFact(
        400, -1102, "Mandatory parameter '%s' was not sent, was empty/null, or malformed."
    ),
    "PARAM_NOT_REQUIRED": ErrorFact(400, -1106, "Parameter '%s' sent when not required."),
    "BAD_PRECISION": ErrorFact(400, -1111, "Precision is over the maximum defined for this asset."),
    "INVALID_ORDER_TYPE": ErrorFact(400, -1116, "Invalid orderType."),
    "INVALID_SIDE": ErrorFact(400, -1117, "Invalid side."),
    "INVALID_INTERVAL": ErrorFact(400, -1120, "Invalid interval."),
    "BAD_SYMBOL": ErrorFact(400, -1121, "Invalid symbol."),
    "INVALID_LISTEN_KEY": ErrorFact(400, -1125, "This listenKey does not exist."),
    "INVALID_PARAMETER": ErrorFact(400, -1130, "Data sent for parameter '%s' is not valid."),
    # The history endpoints' rules (HISTORY_WINDOW_MS, fromId with a time) are stated on their pages
    # without the answer to a request that breaks them: these are the Error Codes page's codes for it.
    "START_TIME_GREATER_THAN_END_TIME": ErrorFact(400, -1023, "Start time is greater than end time."),
    "INVALID_TIME_INTERVAL": ErrorFact(400, -1127, "More than %s hours between startTime and endTime."),
    "OPTIONAL_PARAMS_BAD_COMBO": ErrorFact(400, -1128, "Combination of optional parameters invalid."),
    # -1131 is on the SPOT Error Codes page ("recvWindow must be less than 60000", HTTP 400, since
    # 2019-08-15); the futures page lists none for it, General Info says the max is 60000: the spot
    # answer is taken (a request refused, never executed, is the dangerous side for a client).
    "BAD_RECV_WINDOW": ErrorFact(400, -1131, "'recvWindow' must be less than 60000."),
    "REJECTED_MBX_KEY": ErrorFact(401, -2015, "Invalid API-key, IP, or permissions for action."),
    "NO_SUCH_ORDER": ErrorFact(400, -2013, "Order does not exist."),
    "CANCEL_REJECTED": ErrorFact(400, -2011, "Unknown order sent."),
    "BALANCE_NOT_SUFFICIENT": ErrorFact(400, -2019, "Margin is insufficient."),
    "REDUCE_ONLY_REJECT": ErrorFact(400, -2022, "ReduceOnly Order is rejected."),
    "MAX_LEVERAGE_RATIO": ErrorFact(400, -2027, "Exceeded the maximum allowable position at current leverage."),
    "QTY_LESS_THAN_MIN_QTY": ErrorFact(400, -4004, "Quantity less than min quantity."),
    "INVALID_CLIENT_ORDER_ID": ErrorFact(400, -4015, "Client order id is not valid."),
    "INVALID_LEVERAGE": ErrorFact(400, -4028, "Leverage %s is not valid"),
    "NO_NEED_TO_CHANGE_MARGIN_TYPE": ErrorFact(400, -4046, "No need to change margin type."),
    "MARGIN_TYPE_CANNOT_BE_CHANGED": ErrorFact(400, -4048, "Margin type cannot be changed if there exists position."),
    "DUPLICATED_CLIENT_ORDER_ID": ErrorFact(400, -4116, "ClientOrderId is duplicated."),
    "REDUCE_ONLY_FAILED": ErrorFact(
        400, -4118, "ReduceOnly Order Failed. Please check your existing position and open orders"
    ),
    "STOP_ORDER_SWITCH_ALGO": ErrorFact(
        400, -4120, "Order type not supported for this endpoint. Please use the Algo Order API."
    ),
    "MIN_NOTIONAL": ErrorFact(
        400, -4164, "Order's notional must be no smaller than %s (unless you choose reduce only)."
    ),
}

#: Binance's error codes → harvest's venue-neutral reasons (:class:`VenueReason`), from the
#: Error Codes page's meanings; a code not here is ``OTHER`` (or by its class: unknown,
#: retryable). Only the Binance adapter and the paper engine (which answers as Binance does) read it.
REASONS: dict[int, VenueReason] = {
    -1001: VenueReason.UNAVAILABLE,  # DISCONNECTED
    -1003: VenueReason.RATE_LIMITED,  # TOO_MANY_REQUESTS (HTTP 418: IP_BANNED, by status)
    -1006: VenueReason.OUTCOME_UNKNOWN,  # UNEXPECTED_RESP
    -1007: VenueReason.OUTCOME_UNKNOWN,  # TIMEOUT
    -1008: VenueReason.UNAVAILABLE,  # SERVER_BUSY
    -1015: VenueReason.RATE_LIMITED,  # TOO_MANY_ORDERS
    -1021: VenueReason.CLOCK,  # INVALID_TIMESTAMP
    -1022: VenueReason.AUTH,  # INVALID_SIGNATURE
    -1111: VenueReason.PRECISION,  # BAD_PRECISION
    -1121: VenueReason.BAD_SYMBOL,  # BAD_SYMBOL
    -2011: VenueReason.CANCEL_REJECTED,  # CANCEL_REJECTED
    -2013: VenueReason.ORDER_NOT_FOUND,  # NO_SUCH_ORDER
    -2014: VenueReason.AUTH,  # BAD_API_KEY_FMT
    -2015: VenueReason.AUTH,  # REJECTED_MBX_KEY
    -2019: VenueReason.MARGIN_INSUFFICIENT,  # MARGIN_NOT_SUFFICIEN
    -2021: VenueReason.WOULD_TRIGGER,  # ORDER_WOULD_IMMEDIATELY_TRIGGER
    -2022: VenueReason.REDUCE_ONLY_REJECTED,  # REDUCE_ONLY_REJECT
    -2027: VenueReason.MAX_NOTIONAL,  # MAX_LEVERAGE_RATIO
    -4003: VenueReason.QTY_TOO_SMALL,  # QTY_LESS_THAN_ZERO
    -4004: VenueReason.QTY_TOO_SMALL,  # QTY_LESS_THAN_MIN_QTY
    -4005: VenueReason.QTY_TOO_LARGE,  # QTY_GREATER_THAN_MAX_QTY
    -4059: VenueReason.POSITION_MODE,  # NO_NEED_TO_CHANGE_POSITION_SIDE
    -4061: VenueReason.POSITION_MODE,  # INVALID_POSITION_SIDE
    -4116: VenueReason.DUPLICATE_CLIENT_ID,  # DUPLICATED_CLIENT_ORDER_ID
    -4118: VenueReason.REDUCE_ONLY_REJECTED,  # REDUCE_ONLY_MARGIN_CHECK_FAILED
    -4164: VenueReason.MIN_NOTIONAL,  # MIN_NOTIONAL
}


def reason_of(
    code: int, status: int = 400, unknown: bool = False, retryable: bool = False, message: str = ""
) -> VenueReason:
    """Harvest's reason for a Binance answer (``code``, HTTP ``status``, ``message``) of the error
    class ``unknown``/``retryable``: HTTP 418 is IP_BANNED and 429 RATE_LIMITED whatever the code;
    an answer that leaves the order's fate unknown is OUTCOME_UNKNOWN; -1106 naming
    ``reduceOnly`` is POSITION_MODE (Binance's answer to reduceOnly in hedge mode: the account's
    mode is not the one the order assumed); then :data:`REASONS`, and a code not there
    UNAVAILABLE when retryable, else OTHER."""
    if status == 418:
        return VenueReason.IP_BANNED
    if status == 429:
        return VenueReason.RATE_LIMITED
    if unknown:
        return VenueReason.OUTCOME_UNKNOWN
    if code == ERRORS["PARAM_NOT_REQUIRED"].code and "reduceOnly" in message:
        return VenueReason.POSITION_MODE
    return REASONS.get(code) or (VenueReason.UNAVAILABLE if retryable else VenueReason.OTHER)


def venue_error(
    code: int,
    message: str,
    status: int = 400,
    unknown: bool = False,
    retryable: bool = False,
    retry_after: float | None = None,
) -> VenueError:
    """Binance's answer (``code``, ``message``, HTTP ``status``, its error class) as a
    :class:`VenueError` carrying harvest's reason (:func:`reason_of`)."""
    return VenueError(
        code,
        message,
        status,
        unknown=unknown,
        retryable=retryable,
        retry_after=retry_after,
        reason=reason_of(code, status, unknown, retryable, message),
    )


#: What Binance answers for a path it does not serve: HTTP 404 with its HTML error page
#: (production, as observed; the testnet answers JSON ``{"code": -5000, "msg": "Path <path>,
#: Method <method> is invalid"}``, also 404). The HTML page is the more dangerous reading: a
#: client gets no code at all (python-binance: code 0, "Invalid JSON error message …").
UNKNOWN_PATH_STATUS = 404
UNKNOWN_PATH_HTML = (
    "<!DOCTYPE html>\n<!-- saved from url=(0032)https://www.binance.com/en/error -->\n<html>\n<head>\n"
    '  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8">\n  <title>Binance</title>\n'
    '</head>\n<body>\n  <div class="info"><h3>404</h3><p>Sorry! The page you\'re looking for cannot be found.</p>'
    "</div>\n</body>\n</html>\n"
)
UNKNOWN_PATH_TESTNET = ErrorFact(404, -5000, "Path %s, Method %s is invalid")


# ---------------------------------------------------------------------------------- history

#: The account's history endpoints (``userTrades``: Account Trade List; ``allOrders``: All Orders;
#: ``allAlgoOrders``: Query All Algo Orders): one request spans at most 7 days between
#: ``startTime`` and ``endTime`` ("cannot be longer than 7 days" / "must be less then 7 days"),
#: and without either the last 7 days are answered. userTrades' ``fromId`` cannot be sent with
#: ``startTime``/``endTime``; allOrders' ``orderId`` (allAlgoOrders' ``algoId``) answers the orders
#: from that id on. ``limit``: default 500, at most 1000. userTrades reaches back 6 months.
HISTORY_WINDOW_MS = 7 * 86_400_000
HISTORY_DEFAULT_LIMIT = 500
HISTORY_MAX_LIMIT = 1000
USER_TRADES_REACH_MS = 183 * 86_400_000
#: allOrders / allAlgoOrders do not answer an order CANCELED or EXPIRED without a fill created
#: more than 3 days ago, nor any order created more than 90 days ago.
ORDERS_UNFILLED_KEPT_MS = 3 * 86_400_000
ORDERS_KEPT_MS = 90 * 86_400_000


# ---------------------------------------------------------------------------------- klines

#: Kline intervals (Public Endpoints Info, ENUM definitions) → length in seconds; ``1M`` is a
#: calendar month (UTC), None here. Weeks open on Monday 00:00 UTC.
KLINE_INTERVALS: dict[str, int | None] = {
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
    "3d": 259200,
    "1w": 604800,
    "1M": None,
}


# ---------------------------------------------------------------------------------- field sets

#: ``GET /fapi/v3/positionRisk`` row fields (Position Information V3 page).
POSITION_RISK_V3_FIELDS = (
    "symbol",
    "positionSide",
    "positionAmt",
    "entryPrice",
    "breakEvenPrice",
    "markPrice",
    "unRealizedProfit",
    "liquidationPrice",
    "isolatedMargin",
    "notional",
    "marginAsset",
    "isolatedWallet",
    "initialMargin",
    "maintMargin",
    "positionInitialMargin",
    "openOrderInitialMargin",
    "adl",
    "bidNotional",
    "askNotional",
    "updateTime",
)
#: ``GET /fapi/v2/positionRisk`` row fields (Position Information V2 page).
POSITION_RISK_V2_FIELDS = (
    "symbol",
    "positionAmt",
    "entryPrice",
    "breakEvenPrice",
    "markPrice",
    "unRealizedProfit",
    "liquidationPrice",
    "leverage",
    "maxNotionalValue",
    "marginType",
    "isolatedMargin",
    "isAutoAddMargin",
    "positionSide",
    "notional",
    "isolatedWallet",
    "updateTime",
)
#: ``GET /fapi/v2/balance`` (and v3) row fields (Futures Account Balance V2 page).
BALANCE_FIELDS = (
    "accountAlias",
    "asset",
    "balance",
    "crossWalletBalance",
    "crossUnPnl",
    "availableBalance",
    "maxWithdrawAmount",
    "marginAvailable",
    "updateTime",
)
#: ``GET /fapi/v3/account`` (Account Information V3 page, single-asset mode): top-level
#: fields, each ``assets`` row's and each ``positions`` row's.
ACCOUNT_V3_FIELDS = (
    "totalInitialMargin",
    "totalMaintMargin",
    "totalWalletBalance",
    "totalUnrealizedProfit",
    "totalMarginBalance",
    "totalPositionInitialMargin",
    "totalOpenOrderInitialMargin",
    "totalCrossWalletBalance",
    "totalCrossUnPnl",
    "availableBalance",
    "maxWithdrawAmount",
    "assets",
    "positions",
)
ACCOUNT_V3_ASSET_FIELDS = (
    "asset",
    "walletBalance",
    "unrealizedProfit",
    "marginBalance",
    "maintMargin",
    "initialMargin",
    "positionInitialMargin",
    "openOrderInitialMargin",
    "crossWalletBalance",
    "crossUnPnl",
    "availableBalance",
    "maxWithdrawAmount",
    "updateTime",
)
ACCOUNT_V3_POSITION_FIELDS = (
    "symbol",
    "positionSide",
    "positionAmt",
    "unrealizedProfit",
    "isolatedMargin",
    "notional",
    "isolatedWallet",
    "initialMargin",
    "maintMargin",
    "updateTime",
)
#: ``GET /fapi/v2/account`` (Account Information V2 page, single-asset mode; python-binance's
#: ``futures_account``): the v3 fields and the account's flags; assets add ``marginAvailable``;
#: positions carry leverage, entry price, max notional and the order-side notionals.
ACCOUNT_V2_FIELDS = (
    "feeTier",
    "feeBurn",
    "canTrade",
    "canDeposit",
    "canWithdraw",
    "updateTime",
    "multiAssetsMargin",
    "tradeGroupId",
    *ACCOUNT_V3_FIELDS,
)
ACCOUNT_V2_ASSET_FIELDS = (*ACCOUNT_V3_ASSET_FIELDS, "marginAvailable")
ACCOUNT_V2_POSITION_FIELDS = (
    "symbol",
    "initialMargin",
    "maintMargin",
    "unrealizedProfit",
    "positionInitialMargin",
    "openOrderInitialMargin",
    "leverage",
    "isolated",
    "entryPrice",
    "maxNotional",
    "bidNotional",
    "askNotional",
    "positionSide",
    "positionAmt",
    "updateTime",
)
#: ``POST /fapi/v1/leverage`` answer fields (Change Initial Leverage page); leverage 1..125
#: (the symbol's brackets cap it).
LEVERAGE_FIELDS = ("leverage", "maxNotionalValue", "symbol")
#: ``marginType`` values a client sends (Change Margin Type page) and how positionRisk v2 spells them.
MARGIN_TYPES = {"ISOLATED": "isolated", "CROSSED": "cross"}
