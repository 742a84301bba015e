"""What harvest needs from a trading venue, and the errors a venue raises.

Every venue (the paper engine, later python-binance) implements :class:`Venue`. Orders are
identified by their clientOrderId, which harvest derives from the plan_id: that is the
exchange-side idempotency key, looked up before anything is re-sent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum

import numpy as np
from pydantic import BaseModel

from harvest.data import SymbolFilters
from harvest.domain.models import Side, VenuePosition  # noqa: F401  (the venue's position report)


class VenueReason(str, Enum):
    """Why a venue refused or failed a request, in harvest's words: what services, tasks and
    guard rules test (never a venue's own error codes, which stay in its adapter). Each
    adapter maps its codes to these (:data:`harvest.venues.binance_facts.REASONS` for
    Binance's); the paper engine sets them directly. ``OTHER``: an error harvest has no rule
    for (read the ``code`` and ``message``)."""

    #: No such order (Binance -2013): a look-up proves the order was never placed.
    ORDER_NOT_FOUND = "order_not_found"
    #: A cancel of an order that is not working (Binance -2011): filled, cancelled or unknown.
    CANCEL_REJECTED = "cancel_rejected"
    #: A reduce-only order that would not reduce (Binance -2022, -4118): the position moved.
    REDUCE_ONLY_REJECTED = "reduce_only_rejected"
    #: Initial margin above the available balance (Binance -2019).
    MARGIN_INSUFFICIENT = "margin_insufficient"
    #: An opening order's notional under the symbol's minimum (Binance -4164).
    MIN_NOTIONAL = "min_notional"
    #: The position would pass the leverage bracket's cap (Binance -2027).
    MAX_NOTIONAL = "max_notional"
    #: A stop whose trigger the mark has already passed (Binance -2021).
    WOULD_TRIGGER = "would_trigger"
    #: A clientOrderId already in use (Binance -4116).
    DUPLICATE_CLIENT_ID = "duplicate_client_id"
    #: Too many requests or orders (Binance 429: -1003, -1015): retry after ``retry_after``.
    RATE_LIMITED = "rate_limited"
    #: The IP is banned for a while (Binance HTTP 418).
    IP_BANNED = "ip_banned"
    #: The account's position mode differs from the one the order assumed (Binance -4061, -4059).
    POSITION_MODE = "position_mode"
    #: A price or quantity with more decimals than the symbol allows (Binance -1111).
    PRECISION = "precision"
    #: A quantity of zero or under the symbol's minimum (Binance -4003, -4004).
    QTY_TOO_SMALL = "qty_too_small"
    #: A quantity over the symbol's maximum (Binance -4005).
    QTY_TOO_LARGE = "qty_too_large"
    #: A symbol the venue does not list (Binance -1121).
    BAD_SYMBOL = "bad_symbol"
    #: The request's timestamp is outside the venue's receive window (Binance -1021).
    CLOCK = "clock"
    #: The API key, its IP or its permissions were refused (Binance -2015, -1022).
    AUTH = "auth"
    #: The venue is busy or down (HTTP 5xx, Binance -1001, -1008, a connection not made).
    UNAVAILABLE = "unavailable"
    #: No answer, or one that says nothing about the order (a timeout, -1006/-1007, a
    #: malformed body): look the order up before anything is sent again.
    OUTCOME_UNKNOWN = "outcome_unknown"
    #: Any other refusal of the request (a parameter, a type, an unknown error code).
    OTHER = "other"


#: Refusals that cannot change by sending the same request again within a position's epoch
#: (the request itself is wrong for the symbol): a plan ending so is abandoned, not retried.
FINAL_REASONS: frozenset[VenueReason] = frozenset(
    {VenueReason.PRECISION, VenueReason.BAD_SYMBOL, VenueReason.QTY_TOO_SMALL, VenueReason.QTY_TOO_LARGE}
)


class VenueError(Exception):
    """An exchange answer that is not a success: the venue's ``code`` and ``msg`` (Binance's
    own for the Binance adapter and the paper engine; for logs, metrics labels and the plan's
    record), HTTP status, and harvest's :class:`VenueReason` (``reason``: what code outside an
    adapter tests).

    Exactly one class applies:

    * ``unknown`` — the order's fate is unknown (read timeout, 503 "Unknown error…",
      -1006/-1007): look it up by clientOrderId before anything is re-sent;
    * ``retryable`` — the request was not executed (429/418, 503 "Service Unavailable." or
      "Internal error…", a connection error before sending, the local weight budget): the
      same request may be sent again after ``retry_after`` seconds;
    * neither — a rejection (-1111, -2022, -4164, …): final, never retried.
    """

    def __init__(
        self,
        code: int,
        message: str,
        http_status: int = 400,
        unknown: bool = False,
        retryable: bool = False,
        retry_after: float | None = None,
        reason: VenueReason | None = None,
    ):
        super().__init__(f"{code}: {message}")
        #: Harvest's reason; a venue that sets none leaves OUTCOME_UNKNOWN, UNAVAILABLE or OTHER
        #: by the error's class.
        self.reason = (
            reason
            if reason is not None
            else VenueReason.OUTCOME_UNKNOWN
            if unknown
            else VenueReason.UNAVAILABLE
            if retryable
            else VenueReason.OTHER
        )
        self.code = code
        self.message = message
        self.http_status = http_status
        self.unknown = unknown
        self.retryable = retryable and not unknown
        self.retry_after = retry_after

    @property
    def kind(self) -> str:
        """``unknown``, ``retryable`` or ``rejected``."""
        return "unknown" if self.unknown else "retryable" if self.retryable else "rejected"


# Binance error codes used by the paper engine, which answers as Binance does
# (reference/binance-fapi.md); their reasons are binance_facts.REASONS'.
PRECISION = (-1111, "Precision is over the maximum defined for this asset.")
ORDER_NOT_FOUND = (-2013, "Order does not exist.")
REDUCE_ONLY_REJECTED = (-2022, "ReduceOnly Order is rejected.")
QTY_LE_ZERO = (-4003, "Quantity less than or equal to zero.")
QTY_LT_MIN = (-4004, "Quantity less than min quantity.")
QTY_GT_MAX = (-4005, "Quantity greater than max quantity.")
DUPLICATE_CID = (-4116, "ClientOrderId is duplicated.")
WOULD_TRIGGER = (-2021, "Order would immediately trigger.")
BAD_SYMBOL = (-1121, "Invalid symbol.")
UNKNOWN_ORDER = (-2011, "Unknown order sent.")
PARAM_NOT_REQUIRED = (-1106, "Parameter '%s' sent when not required.")
POSITION_SIDE_MISMATCH = (-4061, "Order's position side does not match user's setting.")


class OrderResult(BaseModel):
    """An order as the venue reports it (Binance's field meanings): status NEW, FILLED,
    PARTIALLY_FILLED, CANCELED, REJECTED or EXPIRED; quantities in base units (strings on the
    wire, floats here); avg_price USDT; realized_pnl and commission USDT. ``algo`` marks a
    conditional order of the algo-order service (its clientAlgoId in ``client_order_id``, its
    algoId in ``order_id``; algoStatus FINISHED is reported as FILLED). ``update_time``: Unix
    s of the exchange's clock (the paper engine's market clock)."""

    symbol: str
    client_order_id: str
    order_id: int
    side: str
    type: str
    status: str
    position_side: str = "BOTH"
    close_position: bool = False
    algo: bool = False
    orig_qty: float = 0.0
    executed_qty: float = 0.0
    avg_price: float = 0.0
    stop_price: float | None = None
    reduce_only: bool = True
    realized_pnl: float = 0.0
    commission: float = 0.0
    update_time: float = 0.0
    #: The order type it was created as, when not ``type`` (a triggered stop's MARKET order: STOP_MARKET).
    orig_type: str | None = None
    #: An algo order's triggered order (its orderId), Binance's ``actualOrderId``; None until triggered.
    actual_order_id: int | None = None
    #: Unix s (exchange clock) the order was created / an algo order triggered; None when unknown.
    create_time: float | None = None
    trigger_time: float | None = None
    #: A conditional order's trigger price type (MARK_PRICE or CONTRACT_PRICE); None when unknown.
    working_type: str | None = None


class Venue(ABC):
    """The operations harvest performs on an exchange account."""

    def funding_settled(self) -> None:
        """A funding settlement was streamed: the next :meth:`positions` reads funding from the
        exchange afresh instead of the sums it keeps between polls (no-op where funding is
        read with every position, as on the paper engine)."""
        return None

    @abstractmethod
    def positions(self) -> list[VenuePosition]:
        """Every open position (qty > 0)."""

    def position(self, symbol: str) -> VenuePosition | None:
        """The open position of one symbol, None when flat."""
        return next((p for p in self.positions() if p.symbol == symbol), None)

    @abstractmethod
    def filters(self, symbol: str) -> SymbolFilters:
        """Symbol filters (stepSize, tickSize, minQty, minNotional). Raises VenueError -1121."""

    @abstractmethod
    def mark_price(self, symbol: str) -> float:
        """Current mark price (USDT)."""

    @abstractmethod
    def close_market(self, symbol: str, side: str, qty: str, client_order_id: str) -> OrderResult:
        """Send a reduce-only MARKET order (``side`` BUY/SELL, ``qty`` a stepSize multiple as a
        string). Raises VenueError (``unknown`` set when the outcome is not known)."""

    @abstractmethod
    def move_stop(self, symbol: str, side: str, stop_price: str, client_order_id: str) -> OrderResult:
        """Place a closePosition STOP_MARKET at ``stop_price`` and then cancel the previous
        stop, so the position is never unprotected. Raises VenueError."""

    @abstractmethod
    def cancel_stop(self, symbol: str, client_order_id: str) -> OrderResult:
        """Cancel a working stop by its clientAlgoId; returns it CANCELED. Raises VenueError
        (reason CANCEL_REJECTED when it is not working: triggered, cancelled or never placed)."""

    @abstractmethod
    def open_orders(
        self, symbol: str | None = None, algo: bool | None = None, symbols: list[str] | None = None
    ) -> list[OrderResult]:
        """Working orders of the account (``symbol``: of one symbol; ``symbols``: at least those
        symbols', possibly more — a venue reads them by its cheapest form; neither: every
        symbol's; ``algo``: True only stops, False only regular orders, None both). Raises
        VenueError."""

    @abstractmethod
    def all_orders(self, symbols: list[str]) -> list[OrderResult]:
        """Every order of these symbols the venue still reports (working, filled, cancelled,
        expired; Binance: the regular orders, the last 1000 per symbol within its retention; the
        paper engine: its algo orders too), for recovery after a loss of state
        (:mod:`harvest.services.recovery`). Raises VenueError."""

    @abstractmethod
    def get_order(self, symbol: str, client_order_id: str, conditional: bool = False) -> OrderResult:
        """Look an order up by clientOrderId (``conditional``: a stop, by clientAlgoId).
        Raises VenueError, reason ORDER_NOT_FOUND when it does not exist."""

    @abstractmethod
    def order_by_id(self, symbol: str, order_id: int, conditional: bool = False) -> OrderResult:
        """Look an order up by the venue's orderId (``conditional``: a stop by its algoId).
        Raises VenueError, reason ORDER_NOT_FOUND when it does not exist."""

    @abstractmethod
    def account_records(self, symbols: list[str]) -> tuple[list[OrderResult], dict[str, dict[str, float]]]:
        """The venue's own record of harvest's orders (clientOrderId prefix ``hv-``; each order
        once: a triggered stop as its order, ``orig_type`` STOP_MARKET) and per symbol the PnL
        of their fills, ``{symbol: {"realized", "commission", "funding", ...}}`` (USDT; funding
        paid positive), for the scorecard. Raises VenueError."""

    @abstractmethod
    def open_position(
        self,
        symbol: str,
        side: Side | str,
        qty: float,
        leverage: float,
        stop_price: float | None = None,
        client_order_id: str | None = None,
    ) -> VenuePosition:
        """Open (or add to) a position as a strategy would — harvest itself never opens: the
        demo scenario and the venue contract suite do. ``qty`` base units (rounded down to the
        stepSize), ``leverage`` the symbol's leverage, ``stop_price`` (USDT) a closePosition
        STOP_MARKET placed after the fill. Returns the position after it. Raises VenueError
        (the paper engine's fixture skips the acceptance checks its order path makes)."""

    def closed_bars(self, symbol: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Open times (ms, int64) and closes (USDT, float64) of the last ``n`` closed 1-minute
        bars at the venue's clock, each of shape (≤ n,), oldest first. Raises VenueError."""
        raise NotImplementedError(f"{type(self).__name__} serves no klines")

    def source(self, symbol: str) -> str:
        """The symbol whose market data ``symbol``'s prices follow: itself on an exchange; on
        the paper engine a synthetic listing replays another symbol's shipped klines."""
        return symbol

    def clock_offset_ms(self) -> int:
        """The venue's clock minus this machine's (ms). 0 on a venue that runs on this
        machine's clock (the in-process paper engine). Raises VenueError."""
        return 0

    def refresh_exchange_info(self) -> int:
        """Re-read the venue's reference data (symbol filters, order limits) and forget the
        account settings it caches (leverage, position mode). Returns how many symbols the venue
        lists after it; 0 on a venue whose reference data is fixed (the paper engine's shipped
        exchangeInfo: nothing to refresh). Raises VenueError."""
        return 0

    def order_and_position(
        self, symbol: str, client_order_id: str, conditional: bool = False
    ) -> tuple[OrderResult, VenuePosition | None, bool]:
        """:meth:`get_order` and then the position of the same symbol, as confirm reads them
        after an order: ``(order, position or None when flat, whether the position was
        read)``. The order look-up raises as :meth:`get_order` does; a failed position read
        only leaves the position unread (it is informative). A venue that can read both in
        one request overrides this."""
        order = self.get_order(symbol, client_order_id, conditional)
        try:
            return order, self.position(symbol), True
        except VenueError:
            return order, None, False
