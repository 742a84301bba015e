"""What harvest needs from a trading venue, and the errors a venue raises.

Every venue (the paper engine, later python-binance) implements :class:`Venue`. Orders are
identified by their clientOrderId, which harvest derives from the plan_id: that is the
exchange-side idempotency key, looked up before anything is re-sent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pydantic import BaseModel

from harvest.data import SymbolFilters
from harvest.domain.models import Side, VenuePosition  # noqa: F401  (the venue's position report)


class VenueError(Exception):
    """An exchange answer that is not a success: Binance ``code`` and ``msg``, HTTP status.

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
    ):
        super().__init__(f"{code}: {message}")
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


# Binance error codes used by the venues (reference/binance-fapi.md).
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
#: Position-mode rejections: the account's mode changed under a cached one; refresh and retry.
POSITION_MODE_CODES = (-4061, -4059)


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

    def open_orders(self, symbol: str | None = None, algo: bool | None = None) -> list[OrderResult]:
        """Working orders of the account (``symbol``: of one symbol; ``algo``: True only
        stops, False only regular orders, None both). Raises VenueError."""
        raise NotImplementedError

    def all_orders(self, symbols: list[str]) -> list[OrderResult]:
        """Every regular order of these symbols the venue still reports (working, filled,
        cancelled, expired; Binance: the last 1000 per symbol within its retention), for
        recovery after a loss of state (:mod:`harvest.services.recovery`). Raises VenueError."""
        raise NotImplementedError

    @abstractmethod
    def get_order(self, symbol: str, client_order_id: str, conditional: bool = False) -> OrderResult:
        """Look an order up by clientOrderId (``conditional``: a stop, by clientAlgoId).
        Raises VenueError -2013 when it does not exist."""

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
