"""The paper engine's settlement (see :mod:`harvest.venues.paper`): reading position rows with
their working stops, and settling them against the replayed market — stops triggered by a
kline crossing them, funding at each funding time, liquidation when the mark crosses the
liquidation price before the stop — plus the fills, trades and income records it writes."""

from __future__ import annotations

import json
import time

import numpy as np

from harvest.data import (
    SHIPPED_SYMBOLS,
    load_brackets_raw,
    load_funding,
    load_klines,
)
from harvest.domain.margin import Bracket, brackets_from_response, liquidation_price
from harvest.domain.models import Side
from harvest.venues.base import (
    OrderResult,
    VenuePosition,
)

#: Symbols with shipped klines and funding (synthetic listings trade like one of them).
SHIPPED = frozenset(SHIPPED_SYMBOLS)

TAKER_FEE_RATE = 0.0005


_BRACKETS: dict[str, tuple[Bracket, ...]] = {}


def brackets(source: str) -> tuple[Bracket, ...]:
    """Maintenance-margin brackets of a shipped symbol (the shipped leverageBracket table)."""
    if not _BRACKETS:
        _BRACKETS.update(brackets_from_response(load_brackets_raw()))
    return _BRACKETS.get(source) or _BRACKETS["BTCUSDT"]


def paper_liquidation(source: str, side: Side, qty: float, entry_price: float, leverage: float) -> float | None:
    """The paper engine's liquidation price (USDT): isolated margin on the shipped brackets
    (:func:`harvest.domain.margin.liquidation_price`; the more dangerous reading than cross)."""
    try:
        return liquidation_price(side, qty, entry_price, leverage, brackets(source))
    except ValueError:
        return None


#: The position-row fields a report needs, in the order :data:`_READ_POSITIONS_LUA` returns them.
_ROW_FIELDS = ("side", "qty", "entry_price", "leverage", "opened_at", "settled_at", "funding_paid")
_SIDES = {s.value: s for s in Side}

#: Every position row of an account with its working stop prices and mark override, in one
#: call: KEYS[1] the positions set; ARGV the pos, stops and mark key prefixes, then the row
#: fields to read (:data:`_ROW_FIELDS`). Returns ``[[symbol, [value or nil, …], [stop price,
#: …], override or nil], …]``. (The paper engine runs on one Redis, not a cluster: the
#: per-symbol keys are derived inside the script.)
_READ_POSITIONS_LUA = """
local out = {}
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = {s, redis.call('HMGET', ARGV[1] .. s, unpack(fields)), redis.call('HVALS', ARGV[2] .. s),
                   redis.call('GET', ARGV[3] .. s)}
end
return out
"""

#: One position's row, working stop prices, mark override, the market clock, the position
#: mode and whether a partial fill is armed, in one call: KEYS = pos, stops, mark, clock, dual,
#: partial-fill keys and, optionally, the orders hash (ARGV[1]: the clientOrderId to read from
#: it). Returns ``[[field, value, …], [stop price, …], override or nil, clock or nil, dual or
#: nil, order JSON or nil, partial-fill JSON or nil]``.
_SNAPSHOT_LUA = """
local order = false
if KEYS[7] then order = redis.call('HGET', KEYS[7], ARGV[1]) end
return {redis.call('HGETALL', KEYS[1]), redis.call('HVALS', KEYS[2]), redis.call('GET', KEYS[3]),
        redis.call('GET', KEYS[4]), redis.call('GET', KEYS[5]), order, redis.call('GET', KEYS[6])}
"""


#: A reduce-only fill, applied only if the position row is still as it was read (compare-and-
#: set on qty, side, entry price and settled_at; any settlement, fill or re-open changes one).
#: KEYS: position, orders, pnl, order log, order id sequence, trades. ARGV: clientOrderId, qty,
#: side, entry_price, settled_at (as read), qty after, order JSON (``"order_id":0,`` is replaced
#: by the id drawn here), realized PnL, commission, symbol, FILL log data (``"orderId": 0,`` replaced
#: likewise), wall ts, market ts,
#: trade JSON (``"orderId":0,`` replaced likewise; ``"id":0,`` by the same id).
#: Returns the order id (> 0), -1 for a clientOrderId of a still-working order, 0 when the row
#: changed. Binance keeps a clientOrderId unique only among *open* orders: the id of a filled
#: MARKET order is free again, and the engine fills it again (the more dangerous reading).
_FILL_LUA = """
local ex = redis.call('HGET', KEYS[2], ARGV[1])
if ex and string.find(ex, '"status":"NEW"', 1, true) then return -1 end
local row = redis.call('HMGET', KEYS[1], 'qty', 'side', 'entry_price', 'settled_at')
for i = 1, 4 do if (row[i] or '') ~= ARGV[i + 1] then return 0 end end
local id = redis.call('INCR', KEYS[5])
local order = string.gsub(ARGV[7], '"order_id":0,', '"order_id":' .. id .. ',', 1)
redis.call('HSET', KEYS[1], 'qty', ARGV[6])
redis.call('HSET', KEYS[2], ARGV[1], order)
local trade = string.gsub(ARGV[14], '"orderId":0,', '"orderId":' .. id .. ',', 1)
trade = string.gsub(trade, '"id":0,', '"id":' .. id .. ',', 1)
redis.call('RPUSH', KEYS[6], trade)
redis.call('HINCRBYFLOAT', KEYS[3], ARGV[10] .. ':realized', ARGV[8])
redis.call('HINCRBYFLOAT', KEYS[3], ARGV[10] .. ':commission', ARGV[9])
local logged = string.gsub(ARGV[11], '"orderId": 0,', '"orderId": ' .. id .. ',', 1)
redis.call('XADD', KEYS[4], '*', 'kind', 'FILL', 'symbol', ARGV[10], 'ts', ARGV[12], 'market_ts', ARGV[13],
           'data', logged)
return id
"""
#: Attempts of a fill whose position row kept changing under it (settlements, other fills).
_FILL_ATTEMPTS = 8


def _tightest(prices: list[float], side: Side) -> float | None:
    """The stop that triggers first: the highest for a LONG, the lowest for a SHORT."""
    if not prices:
        return None
    return max(prices) if side is Side.LONG else min(prices)


def _trade_json(
    order_id: int,
    symbol: str,
    side: str,
    position_side: str,
    qty: float,
    price: float,
    pnl: float,
    fee: float,
    market_t: float,
    client_order_id: str,
) -> str:
    """One fill as the trade log keeps it (``/fapi/v1/userTrades``' fields, numbers as
    numbers; ``time`` in market seconds). ``order_id`` 0 is a placeholder the fill script
    replaces (``id`` too: one trade per order here)."""
    return json.dumps(
        {
            "id": order_id,
            "orderId": order_id,
            "symbol": symbol,
            "side": side,
            "positionSide": position_side,
            "qty": qty,
            "price": price,
            "realizedPnl": pnl,
            "commission": fee,
            "time": market_t,
            "clientOrderId": client_order_id,
        },
        separators=(",", ":"),
    )


class _SettleProbe:
    """Whether a position has anything to settle between its last settlement and ``now``
    (market time, s), with per-scan caches keyed by data source and last settlement time:
    positions that share a source and a settlement time share one kline-range look-up."""

    def __init__(self, now: float):
        self.now = now
        self._marks: dict[str, float] = {}
        self._ranges: dict[tuple[str, float], tuple[float, float]] = {}
        self._funding: dict[tuple[str, float], bool] = {}

    def mark(self, src: str) -> float:
        m = self._marks.get(src)
        if m is None:
            m = self._marks[src] = load_klines(src).mark_at(self.now)
        return m

    def funding_due(self, src: str, last: float) -> bool:
        """A funding calc_time in (last, now]."""
        due = self._funding.get((src, last))
        if due is None:
            ft, _ = load_funding(src)
            i = int(np.searchsorted(ft, last, side="right"))
            due = self._funding[(src, last)] = bool(i < len(ft) and ft[i] <= self.now)
        return due

    def stop_hit(self, src: str, last: float, side: Side, stop: float, override: str | None) -> bool:
        """The mark override, or a kline low (LONG) / high (SHORT) in [last, now], crosses
        ``stop``. The one stop-trigger rule of the engine (:meth:`PaperVenue._settle` uses it)."""
        if override is not None:
            m = float(override)
            return m <= stop if side is Side.LONG else m >= stop
        rng = self._ranges.get((src, last))
        if rng is None:
            kl = load_klines(src)
            i0, i1 = kl.index_at(last), kl.index_at(self.now)
            rng = self._ranges[(src, last)] = (float(kl.low[i0 : i1 + 1].min()), float(kl.high[i0 : i1 + 1].max()))
        return rng[0] <= stop if side is Side.LONG else rng[1] >= stop


class PaperSettlement:
    """Settlement half of :class:`harvest.venues.paper.PaperVenue` (a mixin: it uses the venue's
    keys, clock and scripts)."""

    def _report(
        self, sym: str, vals: list[str | None], stop_vals: list[str], override: str | None, probe: "_SettleProbe"
    ) -> VenuePosition | None:
        """A position as read (``vals``: the row's :data:`_ROW_FIELDS` values, None where
        absent; working stop prices; mark override), or — when a funding event or a stop hit
        is due since its last settlement — as settled. None for no row or qty ≤ 0."""
        side_s, qty_s, entry_s, leverage_s, opened_s, settled_s, funding_s = vals
        if qty_s is None or (qty := float(qty_s)) <= 0:
            return None
        side = _SIDES.get(side_s) or Side(side_s)  # Side() raises for anything else
        src = self.source(sym)
        stop = _tightest([float(v) for v in stop_vals], side) if stop_vals else None
        last = min(float(settled_s), probe.now) if settled_s is not None else probe.now
        if probe.funding_due(src, last) or (stop is not None and probe.stop_hit(src, last, side, stop, override)):
            self._settle(sym)  # an event to settle: the transactional path
            return self._position(sym)
        entry, lev = float(entry_s), float(leverage_s)
        return VenuePosition(
            symbol=sym,
            side=side,
            qty=qty,
            entry_price=entry,
            mark_price=float(override) if override is not None else probe.mark(src),
            leverage=lev,
            opened_at=float(opened_s),
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
        h = self.r.hgetall(self.k_pos(symbol))
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
        return _tightest([float(v) for v in self.r.hvals(self.k_stops(symbol))], side)

    def _settle(self, symbol: str) -> None:
        """Apply funding events and stop triggers between the last settlement and now."""
        key = self.k_pos(symbol)
        k_stops = self.k_stops(symbol)
        now = self.clock.now()
        override = self.r.get(self.k_mark(symbol))
        src = self.source(symbol)

        def tx(p):
            h = p.hgetall(key)
            stops = {cid: float(v) for cid, v in p.hgetall(k_stops).items()}
            if not h or float(h["qty"]) <= 0:
                return None
            last = min(float(h.get("settled_at", now)), now)
            side = Side(h["side"])
            qty = float(h["qty"])
            # Funding at each calc_time in (last, now].
            ft, fr = load_funding(src)
            sel = (ft > last) & (ft <= now)
            funding = 0.0
            events = []
            if sel.any():
                kl = load_klines(src)
                events = [
                    (float(t), side.sign * r * qty * kl.mark_at(t)) for t, r in zip(ft[sel], fr[sel], strict=True)
                ]
                funding = float(sum(x for _, x in events))
            # Stop trigger on the path since the last settlement.
            stop = _tightest(list(stops.values()), side)
            trigger = stop if stop is not None and _SettleProbe(now).stop_hit(src, last, side, stop, override) else None
            if not funding and trigger is None and now == last:
                return None
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
            if trigger is not None:
                pnl = side.sign * (trigger - float(h["entry_price"])) * qty
                fee = trigger * qty * self.fee_rate
                hit_cid = next(c for c, v in stops.items() if v == trigger)
                p.hset(key, mapping={"qty": "0"})
                p.delete(k_stops)
                p.hincrbyfloat(self.k_pnl, f"{symbol}:realized", pnl)
                p.hincrbyfloat(self.k_pnl, f"{symbol}:commission", fee)
                p.hincrby(self.k_pnl, f"{symbol}:stops_hit", 1)
                p.rpush(
                    self.k_trades,
                    _trade_json(trade_id, symbol, side.close_order_side, "BOTH", qty, trigger, pnl, fee, now, hit_cid),
                )
                return side, qty, trigger, hit_cid, pnl, fee, list(stops)
            return None

        trade_id = self._next_order_id()
        tran_base = trade_id * 1000
        hit = self.r.transaction(tx, key, k_stops, value_from_callable=True)
        if hit is not None:
            side, qty, trigger, hit_cid, pnl, fee, cids = hit
            self._log(
                "STOP_TRIGGERED",
                symbol,
                {
                    "clientAlgoId": hit_cid,
                    "side": side.value,
                    "qty": qty,
                    "price": trigger,
                    "realizedPnl": pnl,
                    "commission": fee,
                    "orderId": trade_id,
                },
            )
            self._end_stops(symbol, cids, filled=(hit_cid, qty, trigger, pnl, fee))

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
        raw = self.r.eval(self._TAKE_PARTIAL, 1, self.k_partial)
        return float(raw) if raw else None

    def trades(self) -> list[dict]:
        """Every fill in the order it happened — openings, reduce-only closes (a re-used
        clientOrderId's fills each counted: the orders hash keeps only the latest record per
        id) and triggered stops — as ``{"id", "orderId", "symbol", "side", "positionSide",
        "qty", "price", "realizedPnl", "commission", "time" (market s), "clientOrderId"}``.
        The emulator serves it as ``/fapi/v1/userTrades``; the chaos harness counts it."""
        return [json.loads(x) for x in self.r.lrange(self.k_trades, 0, -1)]

    def income(self) -> list[dict]:
        """Every funding settlement, oldest first: ``{"symbol", "incomeType": "FUNDING_FEE",
        "income" (USDT, negative when paid), "time" (market s), "tranId"}``."""
        return [json.loads(x) for x in self.r.lrange(self.k_income, 0, -1)]

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

    def _end_stops(self, symbol: str, cids: list[str], filled: tuple | None = None) -> None:
        """Record the end of stops no longer working: the triggered one FILLED (algoStatus
        FINISHED), every other one EXPIRED (its position is gone)."""
        for cid in cids:
            raw = self.r.hget(self.k_orders, cid)
            if raw is None:
                continue
            o = OrderResult.model_validate_json(raw)
            if o.status != "NEW":
                continue
            if filled is not None and cid == filled[0]:
                _, qty, price, pnl, fee = filled
                o = o.model_copy(
                    update={
                        "status": "FILLED",
                        "executed_qty": qty,
                        "avg_price": price,
                        "realized_pnl": pnl,
                        "commission": fee,
                        "update_time": self.clock.now(),
                    }
                )
            else:
                o = o.model_copy(update={"status": "EXPIRED", "update_time": self.clock.now()})
                self._log("STOP_EXPIRED", symbol, {"clientAlgoId": cid})
            self.r.hset(self.k_orders, cid, o.model_dump_json())

    def pnl(self) -> dict[str, dict[str, float]]:
        """Per symbol: realized (gross), commission, funding (USDT) and stops_hit."""
        out: dict[str, dict[str, float]] = {}
        for k, v in self.r.hgetall(self.k_pnl).items():
            sym, what = k.split(":", 1)
            out.setdefault(sym, {})[what] = float(v)
        return out
