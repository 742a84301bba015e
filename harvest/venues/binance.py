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

The adapter's parts: :mod:`harvest.venues.binance_errors` (errors classified, malformed answers
refused, order records read), :mod:`harvest.venues.binance_budget` (the request-weight and
order-rate budgets), :mod:`harvest.venues.binance_client` (the python-binance ``Client`` bound
to its egress, the emulator's handshake, and :class:`~harvest.venues.binance_client.BinanceConnection`:
budgeted calls, the exchange's clock, exchangeInfo), :mod:`harvest.venues.binance_account`
(:class:`~harvest.venues.binance_account.BinanceAccount`: position mode, leverage, openings and
funding, the base of :class:`BinanceVenue`). Their public names are re-exported here.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import numpy as np

from harvest.data import SymbolFilters
from harvest.domain.models import Side
from harvest.domain.plans import CLIENT_ORDER_PREFIX
from harvest.venues.base import OrderResult, Venue, VenueError, VenuePosition, VenueReason
from harvest.venues.binance_account import BinanceAccount
from harvest.venues.binance_budget import (
    DEFAULT_ORDER_LIMITS,
    ORDER_SHARE,
    PRIORITY_SHARE,
    WEIGHT,
    OrderBudget,
    WeightBudget,
    held_back,
    order_limits,
    request_of,
    request_weight,
    weight_spent,
)
from harvest.venues.binance_client import (
    SourceAddressAdapter,
    bind_session,
    emulator_handshake,
    handshake_proof,
    make_client,
)
from harvest.venues.binance_errors import (
    ORDER_STATUSES,
    _num,
    _sym,
    algo_from,
    answers,
    classify,
    opening_time,
    order_from,
)

__all__ = [
    "DEFAULT_ORDER_LIMITS",
    "ORDER_SHARE",
    "ORDER_STATUSES",
    "PRIORITY_SHARE",
    "RECENT_S",
    "WEIGHT",
    "BinanceVenue",
    "OrderBudget",
    "SourceAddressAdapter",
    "WeightBudget",
    "bind_session",
    "classify",
    "emulator_handshake",
    "handshake_proof",
    "held_back",
    "make_client",
    "opening_time",
    "order_limits",
    "request_of",
    "request_weight",
    "weight_spent",
]

log = logging.getLogger("harvest.venue")

#: How long (s) the stops a positions() read found serve an open_orders(symbols=…) right after it
#: (an audit's two questions answered by one openAlgoOrders read; once, then read again).
RECENT_S = 1.0


class BinanceVenue(BinanceAccount, Venue):
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
        params: dict[str, Any] = {"symbol": symbol} if symbol else {}
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

    _order = staticmethod(order_from)
    _algo = staticmethod(algo_from)
