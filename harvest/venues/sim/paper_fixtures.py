"""What tests, the demo and the load generator use to set the paper engine's world up: open and
seed positions, set marks, list synthetic symbols, switch the position mode, arm partial fills
(a mixin of :class:`harvest.venues.sim.paper.PaperVenue`; an exchange has no such calls)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from harvest.data import (
    SymbolFilters,
)
from harvest.domain.models import Side
from harvest.venues import binance_facts as facts
from harvest.venues.base import (
    QTY_LT_MIN,
    OrderResult,
    VenuePosition,
)
from harvest.venues.sim.paper_core import PaperCore
from harvest.venues.sim.paper_fills import SHIPPED, _trade_json


class PaperFixtures(PaperCore):
    """Set-up calls of :class:`harvest.venues.sim.paper.PaperVenue` (a mixin)."""

    if TYPE_CHECKING:  # defined by the settlement half and the venue

        def _position(self, symbol: str) -> VenuePosition | None: ...

        def _log(self, kind: str, symbol: str, data: dict[str, Any]) -> None: ...

        def place_stop(
            self,
            symbol: str,
            side: str,
            stop_price: str,
            client_algo_id: str,
            position_side: str | None = None,
            check_trigger: bool = True,
            check_tick: bool = True,
            working_type: str = ...,
        ) -> OrderResult: ...

    def set_dual(self, on: bool) -> None:
        """Switch the account between one-way (False) and hedge mode (True)."""
        self.r.set(self.k_dual, "true" if on else "false")

    def set_mark(self, symbol: str, price: float | None) -> None:
        """Override the mark price of a symbol (None returns it to the kline replay)."""
        if price is None:
            self.r.delete(self.k_mark(symbol))
        else:
            self.r.set(self.k_mark(symbol), repr(float(price)))

    def list_symbol(self, symbol: str, like: str) -> None:
        """List a synthetic symbol that trades with the filters, klines and funding of the
        shipped symbol ``like`` (load tests and benchmarks need more symbols than the shipped
        data has). Raises ValueError for a malformed name or an unknown ``like``."""
        self.list_symbols({symbol: like})

    def list_symbols(self, likes: dict[str, str]) -> None:
        """:meth:`list_symbol` for many symbols at once (synthetic symbol → shipped symbol)."""
        for symbol, like in likes.items():
            if not symbol.isalnum() or not symbol.isupper() or len(symbol) > 20:
                raise ValueError(f"invalid symbol {symbol!r}")
            if like not in SHIPPED:
                raise ValueError(f"{like!r} is not a shipped symbol")
        if likes:
            self.r.hset(self.k_listings, mapping=likes)

    def open_position(
        self,
        symbol: str,
        side: Side | str,
        qty: float,
        leverage: float,
        stop_price: float | None = None,
        client_order_id: str | None = None,
        order_id: int | None = None,
        position_side: str = "BOTH",
    ) -> VenuePosition:
        """Open (or add to) a position at the mark price, as a strategy would; charges the
        taker fee and records the MARKET order (FILLED, under ``client_order_id``, default
        ``paper-<orderId>``; ``order_id``: one already drawn) and its fill in the trade log
        under that orderId. Used by the demo scenario, tests and :meth:`submit_market`'s
        openings (harvest itself never opens). No acceptance checks here: a test's world is set
        up as it says (:meth:`submit_market` checks margin, MIN_NOTIONAL and brackets)."""
        side = Side(side)
        f = self.filters(symbol)
        q = f.round_qty(qty)
        if q < f.min_qty:
            raise facts.venue_error(*QTY_LT_MIN)
        mark = self.mark_price(symbol)
        now = self.clock.now()
        key = self.k_pos(symbol)

        def tx(p):
            cur = p.hgetall(key)
            if cur and Decimal(cur["qty"]) <= 0:
                cur = {}  # flat: a new opening, with its own opening time (a new epoch)
            if cur and cur["side"] != side.value:
                raise facts.venue_error(-2019, "Opposite position open; close it first (paper venue is one-way).")
            old_q = Decimal(cur["qty"]) if cur else Decimal(0)
            new_q = old_q + q
            entry = (float(old_q) * float(cur["entry_price"]) + float(q) * mark) / float(new_q) if cur else mark
            prev = p.hget(self.k_orders, cid)
            p.multi()
            if prev is not None:  # an earlier order of this (re-used) id stays findable by its id
                p.hset(self.k_by_id, str(OrderResult.model_validate_json(prev).order_id), prev)
            p.hset(self.k_orders, cid, order.model_dump_json())
            p.hset(self.k_by_id, str(oid), order.model_dump_json())
            p.delete(key)
            p.hset(
                key,
                mapping={
                    "symbol": symbol,
                    "side": side.value,
                    "qty": SymbolFilters.fmt(new_q),
                    "entry_price": repr(entry),
                    "leverage": repr(float(leverage)),
                    "opened_at": cur.get("opened_at", repr(now)) if cur else repr(now),
                    "settled_at": cur.get("settled_at", repr(now)) if cur else repr(now),
                    "funding_paid": cur.get("funding_paid", "0.0") if cur else "0.0",
                },
            )
            p.sadd(self.k_positions, symbol)
            p.hincrbyfloat(self.k_pnl, f"{symbol}:commission", float(q) * mark * self.fee_rate)
            p.rpush(
                self.k_trades,
                _trade_json(
                    oid,
                    symbol,
                    side.open_order_side,
                    position_side,
                    float(q),
                    mark,
                    0.0,
                    float(q) * mark * self.fee_rate,
                    now,
                    cid,
                ),
            )
            return None

        oid = self._next_order_id() if order_id is None else order_id
        cid = client_order_id or f"paper-{oid}"
        order = OrderResult(
            symbol=symbol,
            client_order_id=cid,
            order_id=oid,
            side=side.open_order_side,
            type="MARKET",
            status="FILLED",
            position_side=position_side,
            orig_qty=float(q),
            executed_qty=float(q),
            avg_price=mark,
            reduce_only=False,
            commission=float(q) * mark * self.fee_rate,
            update_time=now,
            create_time=now,
        )
        self.r.transaction(tx, key, self.k_orders, value_from_callable=True)
        self._log("OPEN", symbol, {"side": side.value, "qty": SymbolFilters.fmt(q), "price": mark})
        if stop_price is not None:
            sp = f.round_price(stop_price, "down" if side is Side.LONG else "up")
            self.place_stop(
                symbol,
                side.close_order_side,
                SymbolFilters.fmt(sp),
                f"paper-{symbol}-{self._next_order_id()}",
                check_trigger=False,
            )
        return cast(VenuePosition, self._position(symbol))  # just written with qty > 0

    def set_position(
        self,
        symbol: str,
        side: Side | str,
        qty: float,
        entry_price: float,
        leverage: float,
        opened_at: float | None = None,
        stop_price: float | None = None,
    ) -> None:
        """Write a position as-is (tests: a known entry price; qty 0 makes a ghost row)."""
        now = self.clock.now() if opened_at is None else opened_at
        mapping = {
            "symbol": symbol,
            "side": Side(side).value,
            "qty": repr(float(qty)),
            "entry_price": repr(float(entry_price)),
            "leverage": repr(float(leverage)),
            "opened_at": repr(now),
            "settled_at": repr(now),
            "funding_paid": "0.0",
        }
        p = self.r.pipeline(transaction=True)
        p.delete(self.k_pos(symbol), self.k_stops(symbol))
        p.hset(self.k_pos(symbol), mapping=mapping)
        p.sadd(self.k_positions, symbol)
        p.execute()
        if stop_price is not None and qty > 0:
            self.place_stop(
                symbol,
                Side(side).close_order_side,
                repr(float(stop_price)),
                f"paper-{symbol}-{self._next_order_id()}",
                check_trigger=False,
                check_tick=False,
            )

    def seed_positions(self, rows: list[dict], marks: dict[str, float] | None = None) -> None:
        """Write many positions in one pipeline (benchmarks and load tests; what
        :meth:`set_position` does one at a time). rows: ``{"symbol", "side", "qty",
        "entry_price", "leverage", "opened_at", "stop_price" (optional)}``, prices USDT, times
        market seconds; ``marks``: mark overrides by symbol. A stop is a working closePosition
        STOP_MARKET with a ``paper-`` clientAlgoId, as a strategy would have placed."""
        first = int(cast(int, self.r.incrby(self.k_seq, len(rows)))) - len(rows) + 1
        p = self.r.pipeline(transaction=False)
        for i, row in enumerate(rows):
            sym, side = row["symbol"], Side(row["side"])
            t = repr(float(row["opened_at"]))
            p.delete(self.k_pos(sym), self.k_stops(sym))
            p.hset(
                self.k_pos(sym),
                mapping={
                    "symbol": sym,
                    "side": side.value,
                    "qty": repr(float(row["qty"])),
                    "entry_price": repr(float(row["entry_price"])),
                    "leverage": repr(float(row["leverage"])),
                    "opened_at": t,
                    "settled_at": t,
                    "funding_paid": "0.0",
                },
            )
            p.sadd(self.k_positions, sym)
            if row.get("stop_price") is not None:
                cid = f"paper-{sym}-{first + i}"
                order = OrderResult(
                    symbol=sym,
                    client_order_id=cid,
                    order_id=first + i,
                    side=side.close_order_side,
                    type="STOP_MARKET",
                    status="NEW",
                    position_side="BOTH",
                    close_position=True,
                    algo=True,
                    stop_price=float(row["stop_price"]),
                    reduce_only=True,
                    update_time=self.clock.now(),
                )
                p.hset(self.k_stops(sym), cid, repr(float(row["stop_price"])))
                p.hset(self.k_orders, cid, order.model_dump_json())
        for sym, price in (marks or {}).items():
            p.set(self.k_mark(sym), repr(float(price)))
        p.execute()

    def raw_positions(self) -> list[dict]:
        """Position rows as stored, including rows with qty 0 (what a careless counter
        would count)."""
        syms = sorted(cast(set[str], self.r.smembers(self.k_positions)))
        p = self.r.pipeline(transaction=False)
        for s in syms:
            p.hgetall(self.k_pos(s))
        return [h for h in p.execute() if h]

    def set_balance(self, usdt: float) -> None:
        """The account's wallet balance (USDT) the margin check (-2019) starts from (default
        :data:`harvest.venues.sim.paper.DEFAULT_BALANCE`). Raises ValueError for a negative or
        non-finite amount."""
        if not (usdt >= 0 and usdt != float("inf")):
            raise ValueError("balance: a finite amount >= 0 (USDT)")
        self.r.set(self.k_balance, repr(float(usdt)))

    def set_fill_model(self, slippage: float, participation: float) -> None:
        """The namespace's fill model of triggered stops (see
        :mod:`harvest.venues.sim.paper_settlement`): ``slippage``, the adverse move as a fraction
        of the bar's range (0..1), and ``participation``, the share of a bar's volume one
        order fills in that bar (0 < x ≤ 1). Every process on the namespace (the emulator, the
        workers) uses it. Raises ValueError outside those ranges."""
        if not (0 <= slippage <= 1 and 0 < participation <= 1):
            raise ValueError("slippage in [0, 1] and participation in (0, 1] required")
        self.r.set(
            f"{self.ns}:paper:fill_model",
            json.dumps({"slippage": float(slippage), "participation": float(participation)}),
        )

    def set_partial_fills(self, fraction: float, times: int = 1) -> None:
        """The next ``times`` reduce-only MARKET closes fill only ``fraction`` (0..1) of their
        quantity (rounded down to stepSize) and the rest expires (status EXPIRED with a
        partial executedQty), as price protection or a thin book in a cascade does."""
        if not 0 <= fraction < 1 or times < 1:
            raise ValueError("fraction in [0, 1) and times >= 1 required")
        self.r.set(self.k_partial, json.dumps({"fraction": fraction, "times": int(times)}))
