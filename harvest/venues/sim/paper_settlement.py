"""The paper engine's settlement (see :mod:`harvest.venues.sim.paper`): reading position rows with
their working stops, and settling them against the replayed market — stops triggered by the
price their ``workingType`` names and filled as MARKET orders with slippage (the fill model:
:mod:`harvest.venues.sim.paper_fills`), funding at each funding time — plus the fills, trades
and income records it writes.

The fill model of a triggered stop, and the rules settlement shares with the order paths, are in
:mod:`harvest.venues.sim.paper_fills` (re-exported here).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import cast

from harvest.data import SymbolFilters, load_funding, load_klines
from harvest.domain.models import Side
from harvest.venues.base import OrderResult, VenuePosition
from harvest.venues.sim.paper_core import PaperCore
from harvest.venues.sim.paper_fills import (
    _FILL_ATTEMPTS,
    _FILL_LUA,
    _READ_POSITIONS_LUA,
    _ROW_FIELDS,
    _SIDES,
    _SNAPSHOT_LUA,
    CONTRACT_PRICE,
    MARK_PRICE,
    PARTICIPATION,
    SHIPPED,
    STOP_SLIPPAGE,
    TAKER_FEE_RATE,
    _crosses,
    _SettleProbe,
    _tightest,
    _trade_json,
    brackets,
    paper_liquidation,
    parse_stop,
    stop_fills,
    stop_value,
    trigger_bar,
)

__all__ = [
    "_FILL_ATTEMPTS",
    "_FILL_LUA",
    "_READ_POSITIONS_LUA",
    "_ROW_FIELDS",
    "_SNAPSHOT_LUA",
    "CONTRACT_PRICE",
    "MARK_PRICE",
    "PARTICIPATION",
    "SHIPPED",
    "STOP_SLIPPAGE",
    "TAKER_FEE_RATE",
    "PaperSettlement",
    "_SettleProbe",
    "_trade_json",
    "brackets",
    "paper_liquidation",
    "parse_stop",
    "stop_fills",
    "stop_value",
    "trigger_bar",
]


class PaperSettlement(PaperCore):
    """Settlement half of :class:`harvest.venues.sim.paper.PaperVenue` (a mixin: it uses the venue's
    keys, clock and scripts)."""

    def _report(
        self, sym: str, vals: list[str | None], stop_vals: list[str], override: str | None, probe: "_SettleProbe"
    ) -> VenuePosition | None:
        """A position as read (``vals``: the row's :data:`_ROW_FIELDS` values, None where
        absent; working stop prices; mark override), or — when a funding event or a stop hit
        is due since its last settlement — as settled. None for no row or qty ≤ 0."""
        side_s, qty_s, entry_s, leverage_s, opened_s, settled_s, funding_s, pending_s = vals
        if qty_s is None or (qty := float(qty_s)) <= 0:
            return None
        side = _SIDES.get(cast(str, side_s)) or Side(side_s)  # Side() raises for anything else
        src = self.source(sym)
        parsed = [parse_stop(v) for v in stop_vals]
        stop = _tightest([p for p, _ in parsed], side) if parsed else None
        last = min(float(settled_s), probe.now) if settled_s is not None else probe.now
        if (
            pending_s
            or probe.funding_due(src, last)
            or (stop is not None and probe.stop_hit(src, last, side, parsed, override))
        ):
            self._settle(sym)  # an event to settle: the transactional path
            return self._position(sym)
        entry, lev = float(cast(str, entry_s)), float(cast(str, leverage_s))
        return VenuePosition(
            symbol=sym,
            side=side,
            qty=qty,
            entry_price=entry,
            mark_price=float(override) if override is not None else probe.mark(src),
            leverage=lev,
            opened_at=float(cast(str, opened_s)),
            stop_price=stop,
            funding_paid=float(funding_s) if funding_s is not None else 0.0,
            liquidation_price=paper_liquidation(src, side, qty, entry, lev),
        )

    def _row(self, symbol: str) -> tuple[dict[str, str], VenuePosition | None, str | None, bool, bool]:
        """(position row as stored, the position as :meth:`position` reports it, the raw
        market clock, whether the account is in hedge mode, whether a partial fill is armed)
        in one Redis call when nothing is due. When a settlement ran, the row is the one read
        before it (a compare-and-set against it then fails and reads again)."""
        h, pos, clock_raw, dual, _, partial = self._read_row(symbol)
        return h, pos, clock_raw, dual, partial

    def _read_row(
        self, symbol: str, order_cid: str | None = None
    ) -> tuple[dict[str, str], VenuePosition | None, str | None, bool, str | None, bool]:
        """:meth:`_row`'s first four values, with ``order_cid`` that order's stored JSON (None
        when there is none), and whether a partial fill is armed, read in the same call."""
        keys = [
            self.k_pos(symbol),
            self.k_stops(symbol),
            self.k_mark(symbol),
            self.clock.key,
            self.k_dual,
            self.k_partial,
        ]
        flat, stop_vals, override, clock_raw, dual, order, partial = self._snapshot(
            keys=keys + ([self.k_orders] if order_cid is not None else []),
            args=[order_cid] if order_cid is not None else [],
        )
        probe = _SettleProbe(self.clock.now(clock_raw))
        h = dict(zip(flat[::2], flat[1::2], strict=True))
        pos = self._report(symbol, [h.get(f) for f in _ROW_FIELDS], stop_vals, override, probe)
        return h, pos, clock_raw, dual == "true", order, partial is not None

    def _position(self, symbol: str) -> VenuePosition | None:
        h = cast(dict[str, str], self.r.hgetall(self.k_pos(symbol)))
        if not h or float(h["qty"]) <= 0:
            return None
        side = Side(h["side"])
        qty, entry, lev = float(h["qty"]), float(h["entry_price"]), float(h["leverage"])
        return VenuePosition(
            symbol=symbol,
            side=side,
            qty=qty,
            entry_price=entry,
            mark_price=self.mark_price(symbol),
            leverage=lev,
            opened_at=float(h["opened_at"]),
            stop_price=self.working_stop(symbol, side),
            funding_paid=float(h.get("funding_paid", 0.0)),
            liquidation_price=paper_liquidation(self.source(symbol), side, qty, entry, lev),
        )

    def working_stop(self, symbol: str, side: Side) -> float | None:
        """The tightest working stop of a position (highest for LONG, lowest for SHORT)."""
        return _tightest([parse_stop(v)[0] for v in cast(list[str], self.r.hvals(self.k_stops(symbol)))], side)

    def fill_model(self) -> tuple[float, float]:
        """(slippage, participation) of triggered stops' fills (module docstring): the
        namespace's ``<ns>:paper:fill_model`` or the defaults."""
        raw = cast(str | None, self.r.get(f"{self.ns}:paper:fill_model"))
        if raw is None:
            return STOP_SLIPPAGE, PARTICIPATION
        d = json.loads(raw)
        return float(d["slippage"]), float(d["participation"])

    def _trigger(
        self, kl, last: float, now: float, side: Side, stops: dict[str, tuple[float, str]], override: str | None
    ) -> tuple[str, float, str, int, float, float | None] | None:
        """The stop that triggers first in [last, now] (module docstring): ``(clientAlgoId, its
        price, workingType, trigger bar, trigger time s, base price or None for the override)``,
        or None. Among stops crossed in the same bar (or by the override) the tightest wins."""
        if kl is None:  # no klines shipped: only a mark override can trigger, now
            hit = [
                (-side.sign * p, cid, p, wt)
                for cid, (p, wt) in stops.items()
                if override is not None and _crosses(float(override), p, side)
            ]
            if not hit:
                return None
            _, cid, price, wt = min(hit)
            return cid, price, wt, 0, now, None
        i0, i1 = kl.index_at(last), kl.index_at(now)
        best = None
        for cid, (price, wt) in stops.items():
            if override is not None:
                j = i1 if _crosses(float(override), price, side) else None
            else:
                j = trigger_bar(kl, last, now, side, price, wt)
            if j is None:
                continue
            key = (j, -side.sign * price)  # earlier bar first; then the tightest (highest under a LONG)
            if best is None or key < best[0]:
                best = (key, cid, price, wt, j)
        if best is None:
            return None
        _, cid, price, wt, j = best
        if override is not None:
            return cid, price, wt, j, now, None
        t = max(float(kl.open_time[j]), last)
        gap = j > i0 and bool(_crosses(float(kl.open[j]), price, side))
        return cid, price, wt, j, t, float(kl.open[j]) if gap else price

    def _settle(self, symbol: str) -> None:
        """Apply funding events, stop triggers and the fills of a triggered stop's MARKET order
        (module docstring) between the last settlement and now, in one transaction on the
        position row, with their trades, order records and order-log entries."""
        key = self.k_pos(symbol)
        k_stops = self.k_stops(symbol)
        now = self.clock.now()
        override = self.r.get(self.k_mark(symbol))
        src = self.source(symbol)
        slippage, participation = self.fill_model()
        f = self.filters(symbol)
        try:
            kl = load_klines(src)
        except FileNotFoundError:  # a symbol of exchangeInfo without shipped klines: a mark override prices it
            kl = None

        def tx(p):
            h = p.hgetall(key)
            stops = {cid: parse_stop(v) for cid, v in p.hgetall(k_stops).items()}
            if not h or Decimal(h["qty"]) <= 0:
                return None
            last = min(float(h.get("settled_at", now)), now)
            side = Side(h["side"])
            pos_q = Decimal(h["qty"])
            qty = float(pos_q)
            entry = float(h["entry_price"])
            # Funding at each calc_time in (last, now].
            ft, fr = load_funding(src)
            sel = (ft > last) & (ft <= now)
            funding = 0.0
            events = []
            if sel.any():
                events = [
                    (float(t), side.sign * r * qty * kl.mark_at(t)) for t, r in zip(ft[sel], fr[sel], strict=True)
                ]
                funding = float(sum(x for _, x in events))
            # A triggered stop's MARKET order still filling, or a stop triggering now.
            pending = json.loads(h["pending"]) if h.get("pending") else None
            i1 = kl.index_at(now) if kl is not None else 0
            ov = float(override) if override is not None else None
            trig = None
            fills: list[tuple[float, Decimal, float]] = []
            if pending is not None:
                want = min(Decimal(pending["left"]), pos_q)
                nb = int(pending["next"])  # the next bar: its fill is at the bar's open (or now, with an override)
                t_nb = now if ov is not None or kl is None else float(kl.open_time[min(nb, len(kl.open_time) - 1)])
                fills, left, nxt = stop_fills(kl, f, side, want, nb, i1, t_nb, None, ov, slippage, participation)
                raw_order, raw_algo = p.hget(self.k_by_id, str(pending["oid"])), p.hget(self.k_orders, pending["cid"])
                if raw_order is None or raw_algo is None:  # records gone (a test wiped them): nothing to fill
                    fills, left, pending = [], Decimal(0), None
                else:
                    order = OrderResult.model_validate_json(raw_order)
                    algo = OrderResult.model_validate_json(raw_algo)
            elif stops:
                trig = self._trigger(kl, last, now, side, stops, override)
                if trig is not None:
                    cid, sp, wt, j, t_trig, base = trig
                    fills, left, nxt = stop_fills(kl, f, side, pos_q, j, i1, t_trig, base, ov, slippage, participation)
                    algo = OrderResult.model_validate_json(p.hget(self.k_orders, cid))
                    oid = self._next_order_id()
                    order = OrderResult(
                        symbol=symbol,
                        client_order_id=cid,
                        order_id=oid,
                        side=side.close_order_side,
                        type="MARKET",
                        orig_type=algo.type,
                        status="NEW",
                        position_side=algo.position_side,
                        orig_qty=qty,
                        reduce_only=True,
                        close_position=True,
                        stop_price=sp,
                        update_time=t_trig,
                        create_time=t_trig,
                    )
                    algo = algo.model_copy(
                        update={
                            "status": "TRIGGERED",
                            "actual_order_id": oid,
                            "trigger_time": t_trig,
                            "update_time": t_trig,
                            "create_time": algo.create_time if algo.create_time is not None else algo.update_time,
                        }
                    )
            if not funding and trig is None and not fills and now == last:
                return None
            trade_ids = [self._next_order_id() for _ in fills]
            p.multi()
            p.hset(
                key,
                mapping={"settled_at": repr(now), "funding_paid": repr(float(h.get("funding_paid", 0.0)) + funding)},
            )
            if funding:
                p.hincrbyfloat(self.k_pnl, f"{symbol}:funding", funding)
                # the order log's FUNDING entry: the emulator streams it (ACCOUNT_UPDATE FUNDING_FEE)
                p.xadd(self.k_log, self._log_entry("FUNDING", symbol, {"income": -funding, "events": len(events)}))
            for i, (t, paid) in enumerate(events):  # /fapi/v1/income rows: income < 0 when paid
                p.rpush(
                    self.k_income,
                    json.dumps(
                        {
                            "symbol": symbol,
                            "incomeType": "FUNDING_FEE",
                            "income": -paid,
                            "time": t,
                            "tranId": tran_base + i,
                        }
                    ),
                )
            if trig is None and pending is None:
                return None
            if trig is not None:
                p.hincrby(self.k_pnl, f"{symbol}:stops_hit", 1)
                p.hdel(k_stops, order.client_order_id)
                p.xadd(
                    self.k_log,
                    self._log_entry(
                        "STOP_TRIGGERED",
                        symbol,
                        {
                            "clientAlgoId": order.client_order_id,
                            "algoId": algo.order_id,
                            "orderId": order.order_id,
                            "side": side.value,
                            "orderSide": order.side,
                            "qty": SymbolFilters.fmt(pos_q),
                            "stopPrice": order.stop_price,
                            "workingType": trig[2],
                            "positionSide": order.position_side,
                        },
                    ),
                )
            cum = Decimal(repr(order.executed_qty))
            cost = order.executed_qty * order.avg_price
            pnl_sum, fee_sum = order.realized_pnl, order.commission
            pos_left = pos_q - sum((q for _, q, _ in fills), Decimal(0))
            finished = left <= 0 or pos_left <= 0
            for n, ((t, q, price), tid) in enumerate(zip(fills, trade_ids, strict=True), 1):
                fq = float(q)
                pnl = side.sign * (price - entry) * fq
                fee = price * fq * self.fee_rate
                cum += q
                cost += price * fq
                pnl_sum += pnl
                fee_sum += fee
                done = finished and n == len(fills)
                p.hincrbyfloat(self.k_pnl, f"{symbol}:realized", pnl)
                p.hincrbyfloat(self.k_pnl, f"{symbol}:commission", fee)
                p.rpush(
                    self.k_trades,
                    _trade_json(
                        tid,
                        symbol,
                        order.side,
                        order.position_side,
                        fq,
                        price,
                        pnl,
                        fee,
                        t,
                        order.client_order_id,
                        order_id=order.order_id,
                    ),
                )
                p.xadd(
                    self.k_log,
                    self._log_entry(
                        "STOP_FILL",
                        symbol,
                        {
                            "clientOrderId": order.client_order_id,
                            "orderId": order.order_id,
                            "tradeId": tid,
                            "side": order.side,
                            "positionSide": order.position_side,
                            "origQty": order.orig_qty,
                            "qty": SymbolFilters.fmt(q),
                            "price": price,
                            "cumQty": SymbolFilters.fmt(cum),
                            "avgPrice": cost / float(cum),
                            "status": "FILLED" if done else "PARTIALLY_FILLED",
                            "realizedPnl": pnl,
                            "commission": fee,
                            "time": t,
                        },
                    ),
                )
            status = "FILLED" if finished else ("PARTIALLY_FILLED" if cum > 0 else "NEW")
            t_last = fills[-1][0] if fills else order.update_time
            order = order.model_copy(
                update={
                    "status": status,
                    "executed_qty": float(cum),
                    "avg_price": cost / float(cum) if cum > 0 else 0.0,
                    "realized_pnl": pnl_sum,
                    "commission": fee_sum,
                    "update_time": t_last,
                }
            )
            algo = algo.model_copy(
                update={
                    "status": "FILLED" if finished else "TRIGGERED",
                    "executed_qty": order.executed_qty,
                    "avg_price": order.avg_price,
                    "realized_pnl": pnl_sum,
                    "commission": fee_sum,
                    "update_time": t_last,
                }
            )
            p.hset(self.k_by_id, str(order.order_id), order.model_dump_json())
            p.hset(self.k_orders, order.client_order_id, algo.model_dump_json())
            p.hset(key, "qty", SymbolFilters.fmt(pos_left) if pos_left > 0 else "0")
            if finished:
                p.hdel(key, "pending")
                p.xadd(
                    self.k_log,
                    self._log_entry(
                        "STOP_FINISHED",
                        symbol,
                        {
                            "clientAlgoId": algo.client_order_id,
                            "algoId": algo.order_id,
                            "orderId": order.order_id,
                            "side": side.value,
                            "stopPrice": algo.stop_price,
                            "executedQty": order.executed_qty,
                            "avgPrice": order.avg_price,
                        },
                    ),
                )
            else:
                p.hset(
                    key,
                    "pending",
                    json.dumps(
                        {
                            "cid": order.client_order_id,
                            "oid": order.order_id,
                            "left": SymbolFilters.fmt(left),
                            "next": nxt,
                        }
                    ),
                )
            if pos_left <= 0:
                p.delete(k_stops)
                return [c for c in stops if c != order.client_order_id]
            return None

        tran_base = self._next_order_id() * 1000
        ended = self.r.transaction(tx, key, k_stops, value_from_callable=True)
        if ended:
            self._end_stops(symbol, ended)

    # ------------------------------------------------------------------ orders

    _TAKE_PARTIAL = """
    local raw = redis.call('GET', KEYS[1])
    if not raw then return false end
    local d = cjson.decode(raw)
    d['times'] = d['times'] - 1
    if d['times'] <= 0 then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], cjson.encode(d)) end
    return tostring(d['fraction'])
    """

    def _take_partial(self) -> float | None:
        """Consume one armed partial fill (:meth:`set_partial_fills`): its fraction, or None."""
        raw = cast(str | None, self.r.eval(self._TAKE_PARTIAL, 1, self.k_partial))
        return float(raw) if raw else None

    def trades(self) -> list[dict]:
        """Every fill in the order it happened — openings, reduce-only closes (a re-used
        clientOrderId's fills each counted: the orders hash keeps only the latest record per
        id) and triggered stops — as ``{"id", "orderId", "symbol", "side", "positionSide",
        "qty", "price", "realizedPnl", "commission", "time" (market s), "clientOrderId"}``.
        The emulator serves it as ``/fapi/v1/userTrades``; the chaos harness counts it."""
        return [json.loads(x) for x in cast(list[str], self.r.lrange(self.k_trades, 0, -1))]

    def income(self) -> list[dict]:
        """Every funding settlement, oldest first: ``{"symbol", "incomeType": "FUNDING_FEE",
        "income" (USDT, negative when paid), "time" (market s), "tranId"}``."""
        return [json.loads(x) for x in cast(list[str], self.r.lrange(self.k_income, 0, -1))]

    def _log(self, kind: str, symbol: str, data: dict) -> None:
        self.r.xadd(self.k_log, self._log_entry(kind, symbol, data))

    def _log_entry(self, kind: str, symbol: str, data: dict) -> dict:
        """One order-log entry's fields: kind (FILL, OPEN, STOP_NEW, STOP_CANCELED,
        STOP_EXPIRED, STOP_TRIGGERED, FUNDING, REJECT), symbol, wall and market ts, data JSON."""
        return {
            "kind": kind,
            "symbol": symbol,
            "ts": repr(time.time()),
            "market_ts": repr(self.clock.now()),
            "data": json.dumps(data, default=str),
        }

    def _end_pending(self, symbol: str, pending: str) -> None:
        """A triggered stop's MARKET order still filling when another order closed the rest of
        its position: its remainder EXPIRED (a reduce-only order with nothing left to reduce),
        its algo order FINISHED, the row's ``pending`` mark removed, STOP_FINISHED logged."""
        d = json.loads(pending)
        raw_o = cast(str | None, self.r.hget(self.k_by_id, str(d["oid"])))
        raw_a = cast(str | None, self.r.hget(self.k_orders, d["cid"]))
        self.r.hdel(self.k_pos(symbol), "pending")
        if raw_o is None or raw_a is None:
            return
        now = self.clock.now()
        o = OrderResult.model_validate_json(raw_o).model_copy(update={"status": "EXPIRED", "update_time": now})
        a = OrderResult.model_validate_json(raw_a).model_copy(update={"status": "FILLED", "update_time": now})
        self.r.hset(self.k_by_id, str(o.order_id), o.model_dump_json())
        self.r.hset(self.k_orders, a.client_order_id, a.model_dump_json())
        self._log(
            "STOP_FINISHED",
            symbol,
            {
                "clientAlgoId": a.client_order_id,
                "algoId": a.order_id,
                "orderId": o.order_id,
                "stopPrice": a.stop_price,
                "executedQty": o.executed_qty,
                "avgPrice": o.avg_price,
            },
        )

    def _end_stops(self, symbol: str, cids: list[str]) -> None:
        """Record the end of stops no longer working, their position gone: each still NEW one
        EXPIRED (Binance's system-led cancel of a closePosition order). A triggered stop's own
        record is written by :meth:`_settle`."""
        for cid in cids:
            raw = cast(str | None, self.r.hget(self.k_orders, cid))
            if raw is None:
                continue
            o = OrderResult.model_validate_json(raw)
            if o.status != "NEW":
                continue
            o = o.model_copy(update={"status": "EXPIRED", "update_time": self.clock.now()})
            self._log("STOP_EXPIRED", symbol, {"clientAlgoId": cid, "side": o.side})
            self.r.hset(self.k_orders, cid, o.model_dump_json())

    def pnl(self) -> dict[str, dict[str, float]]:
        """Per symbol: realized (gross), commission, funding (USDT) and stops_hit."""
        out: dict[str, dict[str, float]] = {}
        for k, v in cast(dict[str, str], self.r.hgetall(self.k_pnl)).items():
            sym, what = k.split(":", 1)
            out.setdefault(sym, {})[what] = float(v)
        return out
