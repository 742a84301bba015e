"""The paper venue: a matching engine with Binance USDⓈ-M semantics, state in Redis.

* One-way positions (one per symbol per account); reduce-only MARKET orders fill at the mark
  price, capped at the position's size (as Binance reduces a reduce-only order).
* Symbol filters of the shipped exchangeInfo (MARKET_LOT_SIZE, PRICE_FILTER, MIN_NOTIONAL):
  a quantity that is not a stepSize multiple is rejected -1111, below minQty -4004, above
  maxQty -4005; reduce-only orders are exempt from minNotional, as on Binance.
* Taker fee on every fill (``commission``); ``realized_pnl`` is gross of fees, as Binance
  reports it.
* Protective stops are conditional (algo) orders: closePosition STOP_MARKETs, any number per
  position. A stop triggers when the price its ``workingType`` names crosses it (MARK_PRICE,
  harvest's: the mark series; CONTRACT_PRICE: the klines' low/high) and then fills as a MARKET
  order with slippage, over several bars when a bar is thin — a real order with its own
  orderId (the algo's ``actualOrderId``), its trades under that orderId (the fill model:
  :mod:`harvest.venues.sim.paper_settlement`). The others, and every stop of a position closed to
  zero, end EXPIRED.
* Checks at acceptance of an order that opens or adds (Binance's codes and messages): -4164
  notional under the symbol's MIN_NOTIONAL (reduce-only exempt), -2027 the position's notional
  after the order above the cap of the leverage's bracket (shipped leverageBracket table),
  -2019 initial margin (notional / leverage) above the available balance (wallet — default
  :data:`DEFAULT_BALANCE`, :meth:`set_balance` — plus realized PnL, less fees, funding paid,
  open positions' initial margin and their unrealized losses).
* Every order is kept by orderId (``orders_by_id``): a clientOrderId re-used once its order is
  no longer open (Binance allows it) finds the newest order by clientOrderId, every earlier one
  stays in allOrders and findable by orderId.
* Position mode: one-way (``reduceOnly``) by default; hedge mode (``set_dual(True)``) takes
  ``positionSide`` LONG/SHORT instead and rejects ``reduceOnly`` with -1106, as Binance does.
  The engine still holds one leg per symbol.
* Funding from the shipped funding files: at each ``calc_time`` the position pays
  ``side_sign × rate × qty × mark`` (positive rate: longs pay).
* Mark prices come from the :class:`MarketClock`, which replays the shipped 1-minute klines:
  ``market_time = anchor_market + (wall − anchor_wall) × speed``, held in Redis so every
  process sees the same market time; a per-symbol override (``set_mark``) serves tests.

Keys: ``<ns>:clock``, ``<ns>:paper:mark:<symbol>``, ``<ns>:paper:<account>:pos:<symbol>``,
``<ns>:paper:<account>:positions``, ``<ns>:paper:<account>:orders``,
``<ns>:paper:<account>:stops:<symbol>`` (working stop clientAlgoId → price),
``<ns>:paper:<account>:orderlog`` (stream), ``<ns>:paper:<account>:pnl``,
``<ns>:paper:<account>:dual``, ``<ns>:paper:<account>:orders_by_id`` (orderId → order JSON:
every regular order, and algo orders whose clientAlgoId was re-used),
``<ns>:paper:<account>:balance`` (wallet USDT), ``<ns>:paper:fill_model``,
``<ns>:paper:<account>:trades`` (list: every fill, as
``/fapi/v1/userTrades`` reports it, market time), ``<ns>:paper:<account>:income`` (list: every
funding settlement, as ``/fapi/v1/income`` reports it).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from operator import itemgetter
from typing import cast

import numpy as np

from harvest.data import (
    SymbolFilters,
    load_klines,
)
from harvest.domain.models import Side
from harvest.domain.plans import CLIENT_ORDER_PREFIX
from harvest.venues import binance_facts as facts
from harvest.venues.base import (
    BAD_SYMBOL,
    DUPLICATE_CID,
    ORDER_NOT_FOUND,
    PARAM_NOT_REQUIRED,
    POSITION_SIDE_MISMATCH,
    PRECISION,
    QTY_GT_MAX,
    QTY_LE_ZERO,
    QTY_LT_MIN,
    REDUCE_ONLY_REJECTED,
    UNKNOWN_ORDER,
    WOULD_TRIGGER,
    OrderResult,
    Venue,
    VenueError,
    VenuePosition,
)
from harvest.venues.sim.paper_fixtures import PaperFixtures
from harvest.venues.sim.paper_settlement import (
    _FILL_ATTEMPTS,
    _ROW_FIELDS,
    MARK_PRICE,
    SHIPPED,
    PaperSettlement,
    _SettleProbe,
    _trade_json,
    brackets,
    stop_value,
)


def _refusal(name: str, *args: object) -> VenueError:
    """Binance's answer ``name`` (:data:`harvest.venues.binance_facts.ERRORS`: code, message,
    HTTP status) as the VenueError the engine raises."""
    status, code, msg = facts.ERRORS[name].fmt(*args)
    return facts.venue_error(code, msg, status)


#: The paper account's wallet balance (USDT) until :meth:`PaperVenue.set_balance` sets one.
DEFAULT_BALANCE = 100_000.0


class PaperVenue(PaperFixtures, PaperSettlement, Venue):
    """Paper trading on one account (see module docstring). ``r``: redis.Redis with
    ``decode_responses=True``."""

    # ------------------------------------------------------------------ positions

    def positions(self) -> list[VenuePosition]:
        """Open positions, by symbol, after settling stops and funding up to the current market
        time. Rows with qty 0 are never reported (exchange truth has no ghosts).

        One Redis call reads every position row, its working stops and its mark override
        (:data:`_READ_POSITIONS_LUA`); only a position with a funding event or a stop hit since
        its last settlement goes through the per-position settlement transaction. A position
        with neither is reported as read and keeps its ``settled_at`` (the next settlement
        covers the whole interval; placing a stop settles first, so a stop never sees prices
        from before it existed)."""
        now = self.clock.now()
        rows = self._read_positions(
            keys=[self.k_positions],
            args=[f"{self._base}:pos:", f"{self._base}:stops:", f"{self.ns}:paper:mark:", *_ROW_FIELDS],
        )
        if any(r[0] not in SHIPPED and r[0] not in self._sources for r in rows):
            self._sources.update(self.listings())  # one read for every listing not yet cached
        probe = _SettleProbe(now)
        out = []
        for sym, vals, stop_vals, override in sorted(rows, key=itemgetter(0)):
            pos = self._report(sym, vals, stop_vals, override, probe)
            if pos is not None:
                out.append(pos)
        return out

    def position(self, symbol: str) -> VenuePosition | None:
        """One open position (None when flat), settled up to now when an event is due; one
        Redis call when none is."""
        return self._row(symbol)[1]

    def _working(self, client_order_id: str) -> bool:
        """Whether an order with this clientOrderId is still working (status NEW): the only
        case in which Binance refuses the id (-4116)."""
        raw = cast(str | None, self.r.hget(self.k_orders, client_order_id))
        return raw is not None and OrderResult.model_validate_json(raw).status == "NEW"

    def _check_qty(self, f: SymbolFilters, qty: str) -> Decimal:
        try:
            q = Decimal(qty)
        except Exception:
            raise facts.venue_error(
                -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."
            ) from None
        if not q.is_finite() or q <= 0:
            raise facts.venue_error(*QTY_LE_ZERO)
        if q % f.step_size != 0:
            raise facts.venue_error(*PRECISION)
        if q < f.min_qty:
            raise facts.venue_error(*QTY_LT_MIN)
        if q > f.max_qty:
            raise facts.venue_error(*QTY_GT_MAX)
        return q

    def _check_position_side(self, position_side: str | None, reduce_only: bool, dual: bool | None = None) -> str:
        dual = self.dual() if dual is None else dual
        ps = (position_side or "BOTH").upper()
        if dual:
            if reduce_only:
                raise facts.venue_error(PARAM_NOT_REQUIRED[0], PARAM_NOT_REQUIRED[1] % "reduceOnly")
            if ps not in ("LONG", "SHORT"):
                raise facts.venue_error(*POSITION_SIDE_MISMATCH)
        elif ps != "BOTH":
            raise facts.venue_error(*POSITION_SIDE_MISMATCH)
        return ps

    def available_balance(self) -> float:
        """Available balance (USDT) for a new opening: the wallet (:meth:`set_balance`, default
        :data:`DEFAULT_BALANCE`) plus realized PnL, less commissions and funding paid, less
        every open position's initial margin (qty × entry / leverage) and its unrealized loss
        (a profit is not counted: the more dangerous reading of Binance's cross-margin
        availableBalance)."""
        wallet = float(cast(str | None, self.r.get(self.k_balance)) or DEFAULT_BALANCE)
        for v in self.pnl().values():
            wallet += v.get("realized", 0.0) - v.get("commission", 0.0) - v.get("funding", 0.0)
        used = 0.0
        for vp in self.positions():
            used += vp.qty * vp.entry_price / vp.leverage
            used -= min(0.0, vp.side.sign * (vp.mark_price - vp.entry_price) * vp.qty)
        return wallet - used

    def _check_opening(self, symbol: str, f: SymbolFilters, q: Decimal, leverage: float) -> None:
        """Binance's acceptance checks of an order that opens or adds, at the mark: -4164 under
        MIN_NOTIONAL, -2027 the position's notional after it above the notionalCap of the
        brackets the leverage is allowed in (Binance: the largest cap among the brackets whose
        initialLeverage ≥ the leverage), -2019 its initial margin (notional / leverage) above
        :meth:`available_balance`. Raises VenueError (HTTP 400)."""
        mark = self.mark_price(symbol)
        notional = float(q) * mark
        if Decimal(repr(notional)) < f.min_notional:
            raise _refusal("MIN_NOTIONAL", SymbolFilters.fmt(f.min_notional))
        pos = self.position(symbol)
        lev = pos.leverage if pos is not None else leverage
        caps = [b.cap for b in brackets(self.source(symbol)) if b.max_leverage >= lev]
        after = notional + (pos.qty * mark if pos is not None else 0.0)
        if not caps or after > max(caps):
            raise _refusal("MAX_LEVERAGE_RATIO")
        if notional / lev > self.available_balance():
            raise _refusal("BALANCE_NOT_SUFFICIENT")

    def close_market(self, symbol: str, side: str, qty: str, client_order_id: str) -> OrderResult:
        """Reduce-only MARKET close (one-way) or the closing leg in hedge mode (a SELL closes
        the LONG leg, a BUY the SHORT one)."""
        row = self._row(symbol)  # the position and the position mode, one round trip
        dual = row[3]
        ps = Side.closed_by(side).value if dual else "BOTH"
        return self.submit_market(
            symbol, side, qty, client_order_id, reduce_only=not dual, position_side=ps, dual=dual, row=row
        )

    def submit_market(
        self,
        symbol: str,
        side: str,
        qty: str,
        client_order_id: str,
        reduce_only: bool,
        position_side: str | None = None,
        leverage: float = 10.0,
        dual: bool | None = None,
        row: tuple | None = None,
    ) -> OrderResult:
        """A MARKET order as /fapi/v1/order takes it. It closes when ``reduce_only`` (one-way)
        or when ``position_side`` names the position and ``side`` is its closing side (hedge);
        otherwise it opens or adds (strategy orders; harvest itself only closes). Raises
        VenueError with Binance's codes (-1111, -4003/-4004/-4005, -2022, -4116, -1106, -4061).
        ``dual``: the position mode when the caller already read it; ``row``: a
        :meth:`_row` the caller read just now (the first fill attempt uses it)."""
        f = self.filters(symbol)
        q = self._check_qty(f, qty)
        ps = self._check_position_side(position_side, reduce_only, dual)
        if side not in ("BUY", "SELL"):
            raise facts.venue_error(-1117, "Invalid side.")
        closing = reduce_only or (ps in ("LONG", "SHORT") and Side(ps).close_order_side == side)
        if not closing:
            self.position(symbol)  # settles a funding event or stop hit due since the last settlement
            if self._working(client_order_id):
                raise facts.venue_error(*DUPLICATE_CID)
            open_side = Side.LONG if side == "BUY" else Side.SHORT
            if ps in ("LONG", "SHORT") and Side(ps) is not open_side:
                raise facts.venue_error(*POSITION_SIDE_MISMATCH)
            self._check_opening(symbol, f, q, leverage)
            self.open_position(symbol, open_side, float(q), leverage, client_order_id=client_order_id, position_side=ps)
            return self.get_order(symbol, client_order_id)

        fraction = None
        for attempt in range(_FILL_ATTEMPTS):
            h, now_pos, clock_raw, _, partial_armed = row if attempt == 0 and row is not None else self._row(symbol)
            pos_q = Decimal(h["qty"]) if h else Decimal(0)
            pos_side = Side(h["side"]) if h else None
            if (
                pos_q <= 0
                or pos_side is None
                or now_pos is None
                or pos_side.close_order_side != side
                or (ps != "BOTH" and Side(ps) is not pos_side)
            ):
                if self._working(client_order_id):
                    raise facts.venue_error(*DUPLICATE_CID)
                self._log("REJECT", symbol, {"clientOrderId": client_order_id, "code": REDUCE_ONLY_REJECTED[0]})
                raise facts.venue_error(*REDUCE_ONLY_REJECTED)
            fill_q = min(q, pos_q)
            status = "FILLED"
            if attempt == 0 and partial_armed:  # seen armed by the snapshot read of this row
                fraction = self._take_partial()
            if fraction is not None:  # price protection / a thin book: the rest of the MARKET order expires
                fill_q = f.round_qty(fill_q * Decimal(repr(fraction)))
                status = "EXPIRED"
            mark = now_pos.mark_price
            pnl = pos_side.sign * (mark - float(h["entry_price"])) * float(fill_q)
            fee = mark * float(fill_q) * self.fee_rate
            left = pos_q - fill_q
            order = OrderResult(
                symbol=symbol,
                client_order_id=client_order_id,
                order_id=0,
                side=side,
                type="MARKET",
                status=status,
                position_side=ps,
                orig_qty=float(q),
                executed_qty=float(fill_q),
                avg_price=mark,
                reduce_only=reduce_only,
                realized_pnl=pnl,
                commission=fee,
                update_time=self.clock.now(clock_raw),
            )
            log_data = {  # "orderId":0 first: the fill script writes the order's id in
                "orderId": 0,
                "clientOrderId": client_order_id,
                "side": side,
                "qty": SymbolFilters.fmt(fill_q),
                "price": mark,
                "realizedPnl": pnl,
                "commission": fee,
            }
            oid = int(
                self._fill(
                    keys=[
                        self.k_pos(symbol),
                        self.k_orders,
                        self.k_pnl,
                        self.k_log,
                        self.k_seq,
                        self.k_trades,
                        self.k_by_id,
                    ],
                    args=[
                        client_order_id,
                        h.get("qty", ""),
                        h.get("side", ""),
                        h.get("entry_price", ""),
                        h.get("settled_at", ""),
                        SymbolFilters.fmt(left) if left > 0 else "0",
                        order.model_dump_json(),
                        repr(pnl),
                        repr(fee),
                        symbol,
                        json.dumps(log_data, default=str),
                        repr(time.time()),
                        repr(self.clock.now(clock_raw)),
                        _trade_json(
                            0,
                            symbol,
                            side,
                            ps,
                            float(fill_q),
                            mark,
                            pnl,
                            fee,
                            self.clock.now(clock_raw),
                            client_order_id,
                        ),
                    ],
                )
            )
            if oid == -1:
                raise facts.venue_error(*DUPLICATE_CID)
            if oid > 0:
                order = order.model_copy(update={"order_id": oid})
                break
        else:
            raise facts.venue_error(
                -1001, "Internal error; unable to process your request. Please try again.", 503, retryable=True
            )  # nothing was filled
        if left <= 0:  # flat: its closePosition stops have nothing left to protect
            cids = list(cast(list[str], self.r.hkeys(self.k_stops(symbol))))
            self.r.delete(self.k_stops(symbol))
            self._end_stops(symbol, cids)
            if h.get("pending"):  # a triggered stop's order still filling: nothing left for it
                self._end_pending(symbol, h["pending"])
        return order

    def place_stop(
        self,
        symbol: str,
        side: str,
        stop_price: str,
        client_algo_id: str,
        position_side: str | None = None,
        check_trigger: bool = True,
        check_tick: bool = True,
        working_type: str = MARK_PRICE,
    ) -> OrderResult:
        """A closePosition STOP_MARKET (an algo order, status NEW) at ``stop_price``, working
        beside any other stop of the position, triggered by ``working_type`` (MARK_PRICE, what
        harvest sends, or CONTRACT_PRICE). Raises VenueError -1111 (tickSize), -2021 (would
        trigger immediately), -2022 (no position to protect on that side), -4116 (clientAlgoId
        in use), -1116 (another workingType)."""
        if working_type not in ("MARK_PRICE", "CONTRACT_PRICE"):
            raise facts.venue_error(-1116, "Invalid workingType.")
        f = self.filters(symbol)
        try:
            sp = Decimal(stop_price)
        except Exception:
            raise facts.venue_error(
                -1102, "Mandatory parameter 'triggerPrice' was not sent, was empty/null, or malformed."
            ) from None
        if not sp.is_finite() or sp <= 0 or (check_tick and sp % f.tick_size != 0):
            raise facts.venue_error(*PRECISION)
        dual = self.dual()
        ps = (position_side or "BOTH").upper()
        if (dual and ps not in ("LONG", "SHORT")) or (not dual and ps != "BOTH"):
            raise facts.venue_error(*POSITION_SIDE_MISMATCH)
        self._settle(symbol)
        key = self.k_pos(symbol)
        mark = self.mark_price(symbol) if check_trigger else 0.0
        now = self.clock.now()

        def tx(p):
            raw = p.hget(self.k_orders, client_algo_id)
            if raw is not None and OrderResult.model_validate_json(raw).status == "NEW":
                raise facts.venue_error(*DUPLICATE_CID)  # unique among open orders only
            h = p.hgetall(key)
            if (
                not h
                or Decimal(h["qty"]) <= 0
                or Side(h["side"]).close_order_side != side
                or (ps != "BOTH" and Side(ps).value != h["side"])
            ):
                raise facts.venue_error(*REDUCE_ONLY_REJECTED)
            pos_side = Side(h["side"])
            if check_trigger and (
                (pos_side is Side.LONG and float(sp) >= mark) or (pos_side is Side.SHORT and float(sp) <= mark)
            ):
                raise facts.venue_error(*WOULD_TRIGGER)
            order = OrderResult(
                symbol=symbol,
                client_order_id=client_algo_id,
                order_id=self._next_order_id(),
                side=side,
                type="STOP_MARKET",
                status="NEW",
                position_side=ps,
                close_position=True,
                algo=True,
                stop_price=float(sp),
                reduce_only=True,
                update_time=now,
                create_time=now,
                working_type=working_type,
            )
            p.multi()
            if raw is not None:  # an earlier order of this (re-used) id stays findable by its id
                p.hset(self.k_by_id, str(OrderResult.model_validate_json(raw).order_id), raw)
            p.hset(self.k_stops(symbol), client_algo_id, stop_value(SymbolFilters.fmt(sp), working_type))
            p.hset(self.k_orders, client_algo_id, order.model_dump_json())
            return order

        order = cast(
            OrderResult, self.r.transaction(tx, key, self.k_orders, self.k_stops(symbol), value_from_callable=True)
        )
        self._log(
            "STOP_NEW", symbol, {"clientAlgoId": client_algo_id, "stopPrice": SymbolFilters.fmt(sp), "side": side}
        )
        return order

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderResult:
        """Cancel a working order (a stop). Raises VenueError -2011 when it is not open."""

        def tx(p):
            raw = p.hget(self.k_orders, client_order_id)
            if raw is None:
                raise facts.venue_error(*UNKNOWN_ORDER)
            o = OrderResult.model_validate_json(raw)
            if o.symbol != symbol or o.status != "NEW":
                raise facts.venue_error(*UNKNOWN_ORDER)
            o = o.model_copy(update={"status": "CANCELED", "update_time": self.clock.now()})
            p.multi()
            p.hset(self.k_orders, client_order_id, o.model_dump_json())
            p.hdel(self.k_stops(symbol), client_order_id)
            return o

        o = cast(OrderResult, self.r.transaction(tx, self.k_orders, self.k_stops(symbol), value_from_callable=True))
        self._log("STOP_CANCELED", symbol, {"clientAlgoId": client_order_id, "side": o.side})
        return o

    def open_orders(
        self, symbol: str | None = None, algo: bool | None = None, symbols: list[str] | None = None
    ) -> list[OrderResult]:
        """Orders still working (status NEW), optionally of one symbol / kind (``symbols``: every
        symbol's is read, a superset; the engine has no request weight). Only stops can be
        working (MARKET orders fill at once), so this reads the per-symbol working-stop hashes,
        never the whole order history."""
        if algo is False:
            return []
        syms = [symbol] if symbol else sorted(cast(set[str], self.r.smembers(self.k_positions)))
        p = self.r.pipeline(transaction=False)
        for s in syms:
            p.hkeys(self.k_stops(s))
        cids = [c for keys in p.execute() for c in keys]
        raws = cast(list[str | None], self.r.hmget(self.k_orders, cids)) if cids else []
        return [o for o in (OrderResult.model_validate_json(x) for x in raws if x) if o.status == "NEW"]

    def move_stop(self, symbol: str, side: str, stop_price: str, client_order_id: str) -> OrderResult:
        """Place the new stop, then cancel the position's other stops (never unprotected)."""
        ps = Side.closed_by(side).value if self.dual() else None
        order = self.place_stop(symbol, side, stop_price, client_order_id, position_side=ps)
        for o in self.open_orders(symbol, algo=True):
            if o.client_order_id != client_order_id:
                try:
                    self.cancel_order(symbol, o.client_order_id)
                except VenueError:
                    pass  # already triggered or gone: nothing left to cancel
        return order

    def get_order(self, symbol: str, client_order_id: str, conditional: bool = False) -> OrderResult:
        """The newest order of this clientOrderId (``conditional``: the algo order of this
        clientAlgoId; else the regular one — a triggered stop's actual order under its
        clientAlgoId). Raises VenueError -2013 when there is none."""
        return self._resolve(cast(str | None, self.r.hget(self.k_orders, client_order_id)), symbol, conditional)

    def order_by_id(self, symbol: str, order_id: int, conditional: bool = False) -> OrderResult:
        """An order by its orderId (``conditional``: an algo order by algoId), however its
        clientOrderId was re-used since. Raises VenueError -2013 when there is none."""
        for o in self.orders():
            if o.order_id == order_id and o.symbol == symbol and o.algo == conditional:
                return o
        raise facts.venue_error(*ORDER_NOT_FOUND)

    def _resolve(self, raw: str | None, symbol: str, conditional: bool) -> OrderResult:
        """:meth:`_order`, except that a regular look-up of a triggered algo order's id answers
        its actual order."""
        if raw is not None and not conditional:
            o = OrderResult.model_validate_json(raw)
            if o.algo and o.actual_order_id is not None:
                raw = cast(str | None, self.r.hget(self.k_by_id, str(o.actual_order_id)))
        return self._order(raw, symbol, conditional)

    def order_and_position(
        self, symbol: str, client_order_id: str, conditional: bool = False
    ) -> tuple[OrderResult, VenuePosition | None, bool]:
        """The order and the position after it, read together in one Redis call (see
        :meth:`harvest.venues.base.Venue.order_and_position`)."""
        _, pos, _, _, raw, _ = self._read_row(symbol, client_order_id)
        return self._resolve(raw, symbol, conditional), pos, True

    @staticmethod
    def _order(raw: str | None, symbol: str, conditional: bool) -> OrderResult:
        """An order from its stored JSON; VenueError -2013 when there is none for that
        symbol and kind."""
        if raw is None:
            raise facts.venue_error(*ORDER_NOT_FOUND)
        o = OrderResult.model_validate_json(raw)
        if o.symbol != symbol or o.algo != conditional:
            raise facts.venue_error(*ORDER_NOT_FOUND)
        return o

    # ------------------------------------------------------------------ reporting

    def orders(self, harvest_only: bool = False) -> list[OrderResult]:
        """Every order of this account, including earlier orders of a re-used clientOrderId and
        triggered stops' actual orders (``harvest_only``: those whose clientOrderId carries
        harvest's ``hv-`` prefix, i.e. not a strategy's opening stop)."""
        out = [OrderResult.model_validate_json(v) for v in cast(list[str], self.r.hvals(self.k_orders))]
        seen = {o.order_id for o in out}
        out += [
            o
            for o in (OrderResult.model_validate_json(v) for v in cast(list[str], self.r.hvals(self.k_by_id)))
            if o.order_id not in seen
        ]
        return [o for o in out if o.client_order_id.startswith(CLIENT_ORDER_PREFIX)] if harvest_only else out

    def all_orders(self, symbols: list[str]) -> list[OrderResult]:
        """Every regular and algo order of these symbols the engine recorded (every orderId)."""
        want = set(symbols)
        return [o for o in self.orders() if o.symbol in want]

    # ------------------------------------------------------------------ Venue (the rest of it)

    def cancel_stop(self, symbol: str, client_order_id: str) -> OrderResult:
        """:meth:`cancel_order` of a working stop (VenueError -2011, reason CANCEL_REJECTED,
        when it is not working)."""
        return self.cancel_order(symbol, client_order_id)

    def account_records(self, symbols: list[str]) -> tuple[list[OrderResult], dict[str, dict[str, float]]]:
        """Harvest's orders of these symbols as the engine recorded them (``hv-`` clientOrderIds;
        a triggered stop once, as its algo order: its MARKET order, ``orig_type`` STOP_MARKET,
        is left out) and :meth:`pnl` of these symbols (with ``stops_hit``)."""
        want = set(symbols)
        orders = [
            o
            for o in self.orders(harvest_only=True)
            if o.symbol in want and o.orig_type in (None, o.type)  # a stop's order: counted by its algo order
        ]
        return orders, {s: v for s, v in self.pnl().items() if s in want}

    def closed_bars(self, symbol: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Open times (ms, int64) and closes (USDT, float64) of the last ``n`` 1-minute bars
        of the shipped klines (of :meth:`source`) closed by the market clock, oldest first.
        Raises VenueError -1121 (BAD_SYMBOL) for a symbol with no shipped klines."""
        try:
            kl = load_klines(self.source(symbol))
        except FileNotFoundError:
            raise facts.venue_error(*BAD_SYMBOL) from None
        k = kl.closed_by(self.clock.now())
        lo = max(0, k - n)
        return (kl.open_time[lo:k].astype(np.int64) * 1000, kl.close[lo:k].astype(np.float64))
