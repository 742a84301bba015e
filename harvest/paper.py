"""The paper venue: a matching engine with Binance USDⓈ-M semantics, state in Redis.

* One-way positions (one per symbol per account); reduce-only MARKET orders fill at the mark
  price, capped at the position's size (as Binance reduces a reduce-only order).
* Symbol filters of the shipped exchangeInfo (MARKET_LOT_SIZE, PRICE_FILTER, MIN_NOTIONAL):
  a quantity that is not a stepSize multiple is rejected -1111, below minQty -4004, above
  maxQty -4005; reduce-only orders are exempt from minNotional, as on Binance.
* Taker fee on every fill (``commission``); ``realized_pnl`` is gross of fees, as Binance
  reports it.
* Protective stops are conditional (algo) orders: closePosition STOP_MARKETs, any number per
  position. The tightest working one triggers when a kline's low (LONG) or high (SHORT) since
  the last settlement crosses it and fills the whole position at the stop price (algoStatus
  FINISHED); the others, and every stop of a position closed to zero, end EXPIRED.
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
``<ns>:paper:<account>:dual``, ``<ns>:paper:<account>:trades`` (list: every fill, as
``/fapi/v1/userTrades`` reports it, market time), ``<ns>:paper:<account>:income`` (list: every
funding settlement, as ``/fapi/v1/income`` reports it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from decimal import Decimal
from operator import itemgetter

import numpy as np
import redis

from harvest.data import SHIPPED_SYMBOLS, SymbolFilters, load_brackets_raw, load_funding, load_klines, shipped_filters
from harvest.margin import Bracket, brackets_from_response, liquidation_price
from harvest.models import Side
from harvest.venue import (
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
    (:func:`harvest.margin.liquidation_price`; the more dangerous reading than cross)."""
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
#: by the id drawn here), realized PnL, commission, symbol, FILL log data, wall ts, market ts,
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
local trade = string.gsub(string.gsub(ARGV[14], '"orderId":0,', '"orderId":' .. id .. ',', 1), '"id":0,', '"id":' .. id .. ',', 1)
redis.call('RPUSH', KEYS[6], trade)
redis.call('HINCRBYFLOAT', KEYS[3], ARGV[10] .. ':realized', ARGV[8])
redis.call('HINCRBYFLOAT', KEYS[3], ARGV[10] .. ':commission', ARGV[9])
redis.call('XADD', KEYS[4], '*', 'kind', 'FILL', 'symbol', ARGV[10], 'ts', ARGV[12], 'market_ts', ARGV[13],
           'data', ARGV[11])
return id
"""
#: Attempts of a fill whose position row kept changing under it (settlements, other fills).
_FILL_ATTEMPTS = 8


def _tightest(prices: list[float], side: Side) -> float | None:
    """The stop that triggers first: the highest for a LONG, the lowest for a SHORT."""
    if not prices:
        return None
    return max(prices) if side is Side.LONG else min(prices)


def _trade_json(order_id: int, symbol: str, side: str, position_side: str, qty: float, price: float, pnl: float,
                fee: float, market_t: float, client_order_id: str) -> str:
    """One fill as the trade log keeps it (``/fapi/v1/userTrades``' fields, numbers as
    numbers; ``time`` in market seconds). ``order_id`` 0 is a placeholder the fill script
    replaces (``id`` too: one trade per order here)."""
    return json.dumps({"id": order_id, "orderId": order_id, "symbol": symbol, "side": side, "positionSide": position_side,
                       "qty": qty, "price": price, "realizedPnl": pnl, "commission": fee, "time": market_t,
                       "clientOrderId": client_order_id}, separators=(",", ":"))


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
            rng = self._ranges[(src, last)] = (float(kl.low[i0:i1 + 1].min()), float(kl.high[i0:i1 + 1].max()))
        return rng[0] <= stop if side is Side.LONG else rng[1] >= stop


class MarketClock:
    """Shared market clock for the replay (Unix seconds of market time)."""

    def __init__(self, r: redis.Redis, ns: str, default_start: float, default_speed: float):
        self.r = r
        self.key = f"{ns}:clock"
        self.default = (default_start, default_speed)

    def set(self, market_start: float, speed: float, end: float | None = None, wall: float | None = None) -> None:
        """Anchor the clock: market time ``market_start`` now, advancing ``speed`` market
        seconds per wall second, never beyond ``end``."""
        self.r.set(self.key, json.dumps({
            "anchor_wall": time.time() if wall is None else wall,
            "anchor_market": market_start, "speed": speed, "end": end,
        }))

    def now(self, raw: str | None = None) -> float:
        """Current market time (s). Anchors at the settings' default on first use. ``raw``:
        the clock key's value when the caller already read it (one round trip fewer)."""
        if raw is None:
            raw = self.r.get(self.key)
        if raw is None:
            start, speed = self.default
            self.r.set(self.key, json.dumps({"anchor_wall": time.time(), "anchor_market": start,
                                             "speed": speed, "end": None}), nx=True)
            raw = self.r.get(self.key)
        c = json.loads(raw)
        t = c["anchor_market"] + (time.time() - c["anchor_wall"]) * c["speed"]
        return min(t, c["end"]) if c.get("end") is not None else t


class PaperVenue(Venue):
    """Paper trading on one account (see module docstring). ``r``: redis.Redis with
    ``decode_responses=True``."""

    def __init__(self, r: redis.Redis, ns: str, account: str, clock: MarketClock,
                 fee_rate: float = TAKER_FEE_RATE):
        self.r = r
        self.ns = ns
        self.account = account
        self.clock = clock
        self.fee_rate = fee_rate
        self._filters = dict(shipped_filters())  # its own copy: listings are added to it
        self._read_positions = r.register_script(_READ_POSITIONS_LUA)
        self._snapshot = r.register_script(_SNAPSHOT_LUA)
        self._fill = r.register_script(_FILL_LUA)
        self._sources: dict[str, str] = {}  # synthetic listing → shipped symbol
        self._all_listings_read = False
        base = f"{ns}:paper:{account}"
        self.k_positions = f"{base}:positions"
        self.k_orders = f"{base}:orders"
        self.k_log = f"{base}:orderlog"
        self.k_pnl = f"{base}:pnl"
        self.k_seq = f"{base}:order_seq"
        self.k_dual = f"{base}:dual"
        self.k_trades = f"{base}:trades"
        self.k_income = f"{base}:income"
        self.k_partial = f"{base}:partial_fills"
        self._base = base

    # ------------------------------------------------------------------ market data

    def k_pos(self, symbol: str) -> str:
        return f"{self._base}:pos:{symbol}"

    def k_stops(self, symbol: str) -> str:
        return f"{self._base}:stops:{symbol}"

    def dual(self) -> bool:
        """Whether the account is in hedge mode (Binance's ``dualSidePosition``)."""
        return self.r.get(self.k_dual) == "true"

    def set_dual(self, on: bool) -> None:
        """Switch the account between one-way (False) and hedge mode (True)."""
        self.r.set(self.k_dual, "true" if on else "false")

    def k_mark(self, symbol: str) -> str:
        return f"{self.ns}:paper:mark:{symbol}"

    def set_mark(self, symbol: str, price: float | None) -> None:
        """Override the mark price of a symbol (None returns it to the kline replay)."""
        if price is None:
            self.r.delete(self.k_mark(symbol))
        else:
            self.r.set(self.k_mark(symbol), repr(float(price)))

    @property
    def k_listings(self) -> str:
        return f"{self.ns}:paper:listings"

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

    def listings(self) -> dict[str, str]:
        """Synthetic symbol → the shipped symbol it trades like."""
        return self.r.hgetall(self.k_listings)

    def source(self, symbol: str) -> str:
        """The shipped symbol whose data prices ``symbol`` (itself, or its listing's). A
        listing never changes, so listings are cached per process: the first symbol not yet
        cached reads every listing in one round trip (a worker that meets one synthetic symbol
        meets many), a later one only its own."""
        if symbol in SHIPPED:
            return symbol
        like = self._sources.get(symbol)
        if like is None and not self._all_listings_read:
            self._sources.update(self.listings())
            self._all_listings_read = True
            like = self._sources.get(symbol)
        if like is None:
            like = self.r.hget(self.k_listings, symbol)
            if like is None:
                return symbol  # not listed (yet): not cached
            self._sources[symbol] = like
        return like

    def filters(self, symbol: str) -> SymbolFilters:
        f = self._filters.get(symbol)
        if f is None:
            like = self.source(symbol)
            if like == symbol or like not in self._filters:
                raise VenueError(*BAD_SYMBOL)
            f = self._filters[symbol] = dataclasses.replace(self._filters[like], symbol=symbol)
        return f

    def mark_price(self, symbol: str) -> float:
        override = self.r.get(self.k_mark(symbol))
        if override is not None:
            return float(override)
        return load_klines(self.source(symbol)).mark_at(self.clock.now())

    # ------------------------------------------------------------------ positions

    def open_position(self, symbol: str, side: Side | str, qty: float, leverage: float,
                      stop_price: float | None = None, client_order_id: str | None = None) -> VenuePosition:
        """Open (or add to) a position at the mark price, as a strategy would; charges the
        taker fee and records the fill in the trade log. Used by the demo scenario and tests
        (harvest itself never opens)."""
        side = Side(side)
        f = self.filters(symbol)
        q = f.round_qty(qty)
        if q < f.min_qty:
            raise VenueError(*QTY_LT_MIN)
        mark = self.mark_price(symbol)
        now = self.clock.now()
        key = self.k_pos(symbol)

        def tx(p):
            cur = p.hgetall(key)
            if cur and Decimal(cur["qty"]) <= 0:
                cur = {}  # flat: a new opening, with its own opening time (a new epoch)
            if cur and cur["side"] != side.value:
                raise VenueError(-2019, "Opposite position open; close it first (paper venue is one-way).")
            old_q = Decimal(cur["qty"]) if cur else Decimal(0)
            new_q = old_q + q
            entry = (float(old_q) * float(cur["entry_price"]) + float(q) * mark) / float(new_q) if cur else mark
            p.multi()
            p.delete(key)
            p.hset(key, mapping={
                "symbol": symbol, "side": side.value, "qty": SymbolFilters.fmt(new_q),
                "entry_price": repr(entry), "leverage": repr(float(leverage)),
                "opened_at": cur.get("opened_at", repr(now)) if cur else repr(now),
                "settled_at": cur.get("settled_at", repr(now)) if cur else repr(now),
                "funding_paid": cur.get("funding_paid", "0.0") if cur else "0.0",
            })
            p.sadd(self.k_positions, symbol)
            p.hincrbyfloat(self.k_pnl, f"{symbol}:commission", float(q) * mark * self.fee_rate)
            p.rpush(self.k_trades, _trade_json(oid, symbol, side.open_order_side, "BOTH", float(q), mark, 0.0,
                                               float(q) * mark * self.fee_rate, now, client_order_id or f"paper-{oid}"))
            return None

        oid = self._next_order_id()
        self.r.transaction(tx, key, value_from_callable=True)
        self._log("OPEN", symbol, {"side": side.value, "qty": SymbolFilters.fmt(q), "price": mark})
        if stop_price is not None:
            sp = f.round_price(stop_price, "down" if side is Side.LONG else "up")
            self.place_stop(symbol, side.close_order_side, SymbolFilters.fmt(sp),
                            f"paper-{symbol}-{self._next_order_id()}", check_trigger=False)
        return self._position(symbol)

    def set_position(self, symbol: str, side: Side | str, qty: float, entry_price: float, leverage: float,
                     opened_at: float | None = None, stop_price: float | None = None) -> None:
        """Write a position as-is (tests: a known entry price; qty 0 makes a ghost row)."""
        now = self.clock.now() if opened_at is None else opened_at
        mapping = {"symbol": symbol, "side": Side(side).value, "qty": repr(float(qty)),
                   "entry_price": repr(float(entry_price)), "leverage": repr(float(leverage)),
                   "opened_at": repr(now), "settled_at": repr(now), "funding_paid": "0.0"}
        p = self.r.pipeline(transaction=True)
        p.delete(self.k_pos(symbol), self.k_stops(symbol))
        p.hset(self.k_pos(symbol), mapping=mapping)
        p.sadd(self.k_positions, symbol)
        p.execute()
        if stop_price is not None and qty > 0:
            self.place_stop(symbol, Side(side).close_order_side, repr(float(stop_price)),
                            f"paper-{symbol}-{self._next_order_id()}", check_trigger=False, check_tick=False)

    def seed_positions(self, rows: list[dict], marks: dict[str, float] | None = None) -> None:
        """Write many positions in one pipeline (benchmarks and load tests; what
        :meth:`set_position` does one at a time). rows: ``{"symbol", "side", "qty",
        "entry_price", "leverage", "opened_at", "stop_price" (optional)}``, prices USDT, times
        market seconds; ``marks``: mark overrides by symbol. A stop is a working closePosition
        STOP_MARKET with a ``paper-`` clientAlgoId, as a strategy would have placed."""
        first = int(self.r.incrby(self.k_seq, len(rows))) - len(rows) + 1
        p = self.r.pipeline(transaction=False)
        for i, row in enumerate(rows):
            sym, side = row["symbol"], Side(row["side"])
            t = repr(float(row["opened_at"]))
            p.delete(self.k_pos(sym), self.k_stops(sym))
            p.hset(self.k_pos(sym), mapping={
                "symbol": sym, "side": side.value, "qty": repr(float(row["qty"])),
                "entry_price": repr(float(row["entry_price"])), "leverage": repr(float(row["leverage"])),
                "opened_at": t, "settled_at": t, "funding_paid": "0.0"})
            p.sadd(self.k_positions, sym)
            if row.get("stop_price") is not None:
                cid = f"paper-{sym}-{first + i}"
                order = OrderResult(symbol=sym, client_order_id=cid, order_id=first + i,
                                    side=side.close_order_side, type="STOP_MARKET", status="NEW", position_side="BOTH",
                                    close_position=True, algo=True, stop_price=float(row["stop_price"]),
                                    reduce_only=True, update_time=self.clock.now())
                p.hset(self.k_stops(sym), cid, repr(float(row["stop_price"])))
                p.hset(self.k_orders, cid, order.model_dump_json())
        for sym, price in (marks or {}).items():
            p.set(self.k_mark(sym), repr(float(price)))
        p.execute()

    def raw_positions(self) -> list[dict]:
        """Position rows as stored, including rows with qty 0 (what a careless counter
        would count)."""
        syms = sorted(self.r.smembers(self.k_positions))
        p = self.r.pipeline(transaction=False)
        for s in syms:
            p.hgetall(self.k_pos(s))
        return [h for h in p.execute() if h]

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
        rows = self._read_positions(keys=[self.k_positions],
                                    args=[f"{self._base}:pos:", f"{self._base}:stops:", f"{self.ns}:paper:mark:",
                                          *_ROW_FIELDS])
        if any(r[0] not in SHIPPED and r[0] not in self._sources for r in rows):
            self._sources.update(self.listings())  # one read for every listing not yet cached
        probe = _SettleProbe(now)
        out = []
        for sym, vals, stop_vals, override in sorted(rows, key=itemgetter(0)):
            pos = self._report(sym, vals, stop_vals, override, probe)
            if pos is not None:
                out.append(pos)
        return out

    def _report(self, sym: str, vals: list[str | None], stop_vals: list[str], override: str | None,
                probe: "_SettleProbe") -> VenuePosition | None:
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
            symbol=sym, side=side, qty=qty, entry_price=entry,
            mark_price=float(override) if override is not None else probe.mark(src),
            leverage=lev, opened_at=float(opened_s), stop_price=stop,
            funding_paid=float(funding_s) if funding_s is not None else 0.0,
            liquidation_price=paper_liquidation(src, side, qty, entry, lev),
        )

    def position(self, symbol: str) -> VenuePosition | None:
        """One open position (None when flat), settled up to now when an event is due; one
        Redis call when none is."""
        return self._row(symbol)[1]

    def _row(self, symbol: str) -> tuple[dict[str, str], VenuePosition | None, str | None, bool, bool]:
        """(position row as stored, the position as :meth:`position` reports it, the raw
        market clock, whether the account is in hedge mode, whether a partial fill is armed)
        in one Redis call when nothing is due. When a settlement ran, the row is the one read
        before it (a compare-and-set against it then fails and reads again)."""
        h, pos, clock_raw, dual, _, partial = self._read_row(symbol)
        return h, pos, clock_raw, dual, partial

    def _read_row(self, symbol: str, order_cid: str | None = None) -> tuple[
            dict[str, str], VenuePosition | None, str | None, bool, str | None, bool]:
        """:meth:`_row`'s first four values, with ``order_cid`` that order's stored JSON (None
        when there is none), and whether a partial fill is armed, read in the same call."""
        keys = [self.k_pos(symbol), self.k_stops(symbol), self.k_mark(symbol), self.clock.key, self.k_dual,
                self.k_partial]
        flat, stop_vals, override, clock_raw, dual, order, partial = self._snapshot(
            keys=keys + ([self.k_orders] if order_cid is not None else []),
            args=[order_cid] if order_cid is not None else [])
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
            symbol=symbol, side=side, qty=qty, entry_price=entry,
            mark_price=self.mark_price(symbol), leverage=lev,
            opened_at=float(h["opened_at"]), stop_price=self.working_stop(symbol, side),
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
                events = [(float(t), side.sign * r * qty * kl.mark_at(t)) for t, r in zip(ft[sel], fr[sel], strict=True)]
                funding = float(sum(x for _, x in events))
            # Stop trigger on the path since the last settlement.
            stop = _tightest(list(stops.values()), side)
            trigger = stop if stop is not None and _SettleProbe(now).stop_hit(src, last, side, stop, override) else None
            if not funding and trigger is None and now == last:
                return None
            p.multi()
            p.hset(key, mapping={"settled_at": repr(now),
                                 "funding_paid": repr(float(h.get("funding_paid", 0.0)) + funding)})
            if funding:
                p.hincrbyfloat(self.k_pnl, f"{symbol}:funding", funding)
            for i, (t, paid) in enumerate(events):  # /fapi/v1/income rows: income < 0 when paid
                p.rpush(self.k_income, json.dumps({"symbol": symbol, "incomeType": "FUNDING_FEE", "income": -paid,
                                                   "time": t, "tranId": tran_base + i}))
            if trigger is not None:
                pnl = side.sign * (trigger - float(h["entry_price"])) * qty
                fee = trigger * qty * self.fee_rate
                hit_cid = next(c for c, v in stops.items() if v == trigger)
                p.hset(key, mapping={"qty": "0"})
                p.delete(k_stops)
                p.hincrbyfloat(self.k_pnl, f"{symbol}:realized", pnl)
                p.hincrbyfloat(self.k_pnl, f"{symbol}:commission", fee)
                p.hincrby(self.k_pnl, f"{symbol}:stops_hit", 1)
                p.rpush(self.k_trades, _trade_json(trade_id, symbol, side.close_order_side, "BOTH", qty, trigger, pnl,
                                                   fee, now, hit_cid))
                return side, qty, trigger, hit_cid, pnl, fee, list(stops)
            return None

        trade_id = self._next_order_id()
        tran_base = trade_id * 1000
        hit = self.r.transaction(tx, key, k_stops, value_from_callable=True)
        if hit is not None:
            side, qty, trigger, hit_cid, pnl, fee, cids = hit
            self._log("STOP_TRIGGERED", symbol, {"clientAlgoId": hit_cid, "side": side.value, "qty": qty, "price": trigger})
            self._end_stops(symbol, cids, filled=(hit_cid, qty, trigger, pnl, fee))

    # ------------------------------------------------------------------ orders

    def _next_order_id(self) -> int:
        return int(self.r.incr(self.k_seq))

    def _working(self, client_order_id: str) -> bool:
        """Whether an order with this clientOrderId is still working (status NEW): the only
        case in which Binance refuses the id (-4116)."""
        raw = self.r.hget(self.k_orders, client_order_id)
        return raw is not None and OrderResult.model_validate_json(raw).status == "NEW"

    def set_partial_fills(self, fraction: float, times: int = 1) -> None:
        """The next ``times`` reduce-only MARKET closes fill only ``fraction`` (0..1) of their
        quantity (rounded down to stepSize) and the rest expires (status EXPIRED with a
        partial executedQty), as price protection or a thin book in a cascade does."""
        if not 0 <= fraction < 1 or times < 1:
            raise ValueError("fraction in [0, 1) and times >= 1 required")
        self.r.set(self.k_partial, json.dumps({"fraction": fraction, "times": int(times)}))

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
        self.r.xadd(self.k_log, {"kind": kind, "symbol": symbol, "ts": repr(time.time()),
                                 "market_ts": repr(self.clock.now()), "data": json.dumps(data, default=str)})

    def _check_qty(self, f: SymbolFilters, qty: str) -> Decimal:
        try:
            q = Decimal(qty)
        except Exception:
            raise VenueError(-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.") from None
        if not q.is_finite() or q <= 0:
            raise VenueError(*QTY_LE_ZERO)
        if q % f.step_size != 0:
            raise VenueError(*PRECISION)
        if q < f.min_qty:
            raise VenueError(*QTY_LT_MIN)
        if q > f.max_qty:
            raise VenueError(*QTY_GT_MAX)
        return q

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
                o = o.model_copy(update={"status": "FILLED", "executed_qty": qty, "avg_price": price,
                                         "realized_pnl": pnl, "commission": fee, "update_time": self.clock.now()})
            else:
                o = o.model_copy(update={"status": "EXPIRED", "update_time": self.clock.now()})
                self._log("STOP_EXPIRED", symbol, {"clientAlgoId": cid})
            self.r.hset(self.k_orders, cid, o.model_dump_json())

    def _check_position_side(self, position_side: str | None, reduce_only: bool, dual: bool | None = None) -> str:
        dual = self.dual() if dual is None else dual
        ps = (position_side or "BOTH").upper()
        if dual:
            if reduce_only:
                raise VenueError(PARAM_NOT_REQUIRED[0], PARAM_NOT_REQUIRED[1] % "reduceOnly")
            if ps not in ("LONG", "SHORT"):
                raise VenueError(*POSITION_SIDE_MISMATCH)
        elif ps != "BOTH":
            raise VenueError(*POSITION_SIDE_MISMATCH)
        return ps

    def close_market(self, symbol: str, side: str, qty: str, client_order_id: str) -> OrderResult:
        """Reduce-only MARKET close (one-way) or the closing leg in hedge mode (a SELL closes
        the LONG leg, a BUY the SHORT one)."""
        row = self._row(symbol)  # the position and the position mode, one round trip
        dual = row[3]
        ps = ("LONG" if side == "SELL" else "SHORT") if dual else "BOTH"
        return self.submit_market(symbol, side, qty, client_order_id, reduce_only=not dual, position_side=ps, dual=dual,
                                  row=row)

    def submit_market(self, symbol: str, side: str, qty: str, client_order_id: str, reduce_only: bool,
                      position_side: str | None = None, leverage: float = 10.0,
                      dual: bool | None = None, row: tuple | None = None) -> OrderResult:
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
            raise VenueError(-1117, "Invalid side.")
        closing = reduce_only or (ps in ("LONG", "SHORT") and Side(ps).close_order_side == side)
        if not closing:
            self.position(symbol)  # settles a funding event or stop hit due since the last settlement
            if self._working(client_order_id):
                raise VenueError(*DUPLICATE_CID)
            open_side = Side.LONG if side == "BUY" else Side.SHORT
            if ps in ("LONG", "SHORT") and Side(ps) is not open_side:
                raise VenueError(*POSITION_SIDE_MISMATCH)
            mark = self.mark_price(symbol)
            self.open_position(symbol, open_side, float(q), leverage, client_order_id=client_order_id)
            order = OrderResult(symbol=symbol, client_order_id=client_order_id, order_id=self._next_order_id(),
                                side=side, type="MARKET", status="FILLED", position_side=ps, orig_qty=float(q),
                                executed_qty=float(q), avg_price=mark, reduce_only=False,
                                commission=float(q) * mark * self.fee_rate, update_time=self.clock.now())
            self.r.hset(self.k_orders, client_order_id, order.model_dump_json())
            return order

        fraction = None
        for attempt in range(_FILL_ATTEMPTS):
            h, now_pos, clock_raw, _, partial_armed = row if attempt == 0 and row is not None else self._row(symbol)
            pos_q = Decimal(h["qty"]) if h else Decimal(0)
            pos_side = Side(h["side"]) if h else None
            if pos_q <= 0 or pos_side is None or now_pos is None or pos_side.close_order_side != side \
                    or (ps != "BOTH" and Side(ps) is not pos_side):
                if self._working(client_order_id):
                    raise VenueError(*DUPLICATE_CID)
                self._log("REJECT", symbol, {"clientOrderId": client_order_id, "code": REDUCE_ONLY_REJECTED[0]})
                raise VenueError(*REDUCE_ONLY_REJECTED)
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
                symbol=symbol, client_order_id=client_order_id, order_id=0, side=side,
                type="MARKET", status=status, position_side=ps, orig_qty=float(q), executed_qty=float(fill_q),
                avg_price=mark, reduce_only=reduce_only, realized_pnl=pnl, commission=fee,
                update_time=self.clock.now(clock_raw),
            )
            log_data = {"clientOrderId": client_order_id, "side": side, "qty": SymbolFilters.fmt(fill_q),
                        "price": mark, "realizedPnl": pnl}
            oid = int(self._fill(
                keys=[self.k_pos(symbol), self.k_orders, self.k_pnl, self.k_log, self.k_seq, self.k_trades],
                args=[client_order_id, h.get("qty", ""), h.get("side", ""), h.get("entry_price", ""),
                      h.get("settled_at", ""), SymbolFilters.fmt(left) if left > 0 else "0", order.model_dump_json(),
                      repr(pnl), repr(fee), symbol, json.dumps(log_data, default=str), repr(time.time()),
                      repr(self.clock.now(clock_raw)),
                      _trade_json(0, symbol, side, ps, float(fill_q), mark, pnl, fee, self.clock.now(clock_raw),
                                  client_order_id)]))
            if oid == -1:
                raise VenueError(*DUPLICATE_CID)
            if oid > 0:
                order = order.model_copy(update={"order_id": oid})
                break
        else:
            raise VenueError(-1001, "Internal error; unable to process your request. Please try again.", 503,
                             retryable=True)  # nothing was filled
        if left <= 0:  # flat: its closePosition stops have nothing left to protect
            cids = list(self.r.hkeys(self.k_stops(symbol)))
            self.r.delete(self.k_stops(symbol))
            self._end_stops(symbol, cids)
        return order

    def place_stop(self, symbol: str, side: str, stop_price: str, client_algo_id: str,
                   position_side: str | None = None, check_trigger: bool = True,
                   check_tick: bool = True) -> OrderResult:
        """A closePosition STOP_MARKET (an algo order, status NEW) at ``stop_price``, working
        beside any other stop of the position. Raises VenueError -1111 (tickSize), -2021
        (would trigger immediately), -2022 (no position to protect on that side), -4116
        (clientAlgoId in use)."""
        f = self.filters(symbol)
        try:
            sp = Decimal(stop_price)
        except Exception:
            raise VenueError(-1102, "Mandatory parameter 'triggerPrice' was not sent, was empty/null, or malformed.") from None
        if not sp.is_finite() or sp <= 0 or (check_tick and sp % f.tick_size != 0):
            raise VenueError(*PRECISION)
        dual = self.dual()
        ps = (position_side or "BOTH").upper()
        if (dual and ps not in ("LONG", "SHORT")) or (not dual and ps != "BOTH"):
            raise VenueError(*POSITION_SIDE_MISMATCH)
        self._settle(symbol)
        key = self.k_pos(symbol)
        mark = self.mark_price(symbol) if check_trigger else 0.0

        def tx(p):
            raw = p.hget(self.k_orders, client_algo_id)
            if raw is not None and OrderResult.model_validate_json(raw).status == "NEW":
                raise VenueError(*DUPLICATE_CID)  # unique among open orders only
            h = p.hgetall(key)
            if not h or Decimal(h["qty"]) <= 0 or Side(h["side"]).close_order_side != side \
                    or (ps != "BOTH" and Side(ps).value != h["side"]):
                raise VenueError(*REDUCE_ONLY_REJECTED)
            pos_side = Side(h["side"])
            if check_trigger and ((pos_side is Side.LONG and float(sp) >= mark)
                                  or (pos_side is Side.SHORT and float(sp) <= mark)):
                raise VenueError(*WOULD_TRIGGER)
            order = OrderResult(
                symbol=symbol, client_order_id=client_algo_id, order_id=self._next_order_id(), side=side,
                type="STOP_MARKET", status="NEW", position_side=ps, close_position=True, algo=True,
                stop_price=float(sp), reduce_only=True, update_time=self.clock.now(),
            )
            p.multi()
            p.hset(self.k_stops(symbol), client_algo_id, SymbolFilters.fmt(sp))
            p.hset(self.k_orders, client_algo_id, order.model_dump_json())
            return order

        order = self.r.transaction(tx, key, self.k_orders, self.k_stops(symbol), value_from_callable=True)
        self._log("STOP_NEW", symbol, {"clientAlgoId": client_algo_id, "stopPrice": SymbolFilters.fmt(sp)})
        return order

    def cancel_order(self, symbol: str, client_order_id: str) -> OrderResult:
        """Cancel a working order (a stop). Raises VenueError -2011 when it is not open."""
        def tx(p):
            raw = p.hget(self.k_orders, client_order_id)
            if raw is None:
                raise VenueError(*UNKNOWN_ORDER)
            o = OrderResult.model_validate_json(raw)
            if o.symbol != symbol or o.status != "NEW":
                raise VenueError(*UNKNOWN_ORDER)
            o = o.model_copy(update={"status": "CANCELED", "update_time": self.clock.now()})
            p.multi()
            p.hset(self.k_orders, client_order_id, o.model_dump_json())
            p.hdel(self.k_stops(symbol), client_order_id)
            return o

        o = self.r.transaction(tx, self.k_orders, self.k_stops(symbol), value_from_callable=True)
        self._log("STOP_CANCELED", symbol, {"clientAlgoId": client_order_id})
        return o

    def open_orders(self, symbol: str | None = None, algo: bool | None = None) -> list[OrderResult]:
        """Orders still working (status NEW), optionally of one symbol / kind. Only stops can
        be working (MARKET orders fill at once), so this reads the per-symbol working-stop
        hashes, never the whole order history."""
        if algo is False:
            return []
        syms = [symbol] if symbol else sorted(self.r.smembers(self.k_positions))
        p = self.r.pipeline(transaction=False)
        for s in syms:
            p.hkeys(self.k_stops(s))
        cids = [c for keys in p.execute() for c in keys]
        raws = self.r.hmget(self.k_orders, cids) if cids else []
        return [o for o in (OrderResult.model_validate_json(x) for x in raws if x) if o.status == "NEW"]

    def move_stop(self, symbol: str, side: str, stop_price: str, client_order_id: str) -> OrderResult:
        """Place the new stop, then cancel the position's other stops (never unprotected)."""
        ps = ("LONG" if side == "SELL" else "SHORT") if self.dual() else None
        order = self.place_stop(symbol, side, stop_price, client_order_id, position_side=ps)
        for o in self.open_orders(symbol, algo=True):
            if o.client_order_id != client_order_id:
                try:
                    self.cancel_order(symbol, o.client_order_id)
                except VenueError:
                    pass  # already triggered or gone: nothing left to cancel
        return order

    def get_order(self, symbol: str, client_order_id: str, conditional: bool = False) -> OrderResult:
        return self._order(self.r.hget(self.k_orders, client_order_id), symbol, conditional)

    def order_and_position(self, symbol: str, client_order_id: str,
                           conditional: bool = False) -> tuple[OrderResult, VenuePosition | None, bool]:
        """The order and the position after it, read together in one Redis call (see
        :meth:`harvest.venue.Venue.order_and_position`)."""
        _, pos, _, _, raw, _ = self._read_row(symbol, client_order_id)
        return self._order(raw, symbol, conditional), pos, True

    @staticmethod
    def _order(raw: str | None, symbol: str, conditional: bool) -> OrderResult:
        """An order from its stored JSON; VenueError -2013 when there is none for that
        symbol and kind."""
        if raw is None:
            raise VenueError(*ORDER_NOT_FOUND)
        o = OrderResult.model_validate_json(raw)
        if o.symbol != symbol or o.algo != conditional:
            raise VenueError(*ORDER_NOT_FOUND)
        return o

    # ------------------------------------------------------------------ reporting

    def orders(self, harvest_only: bool = False) -> list[OrderResult]:
        """Every order of this account (``harvest_only``: those whose clientOrderId carries
        harvest's ``hv-`` prefix, i.e. not a strategy's opening stop)."""
        out = [OrderResult.model_validate_json(v) for v in self.r.hvals(self.k_orders)]
        return [o for o in out if o.client_order_id.startswith("hv-")] if harvest_only else out

    def all_orders(self, symbols: list[str]) -> list[OrderResult]:
        """Every order of these symbols the engine recorded (latest record per clientOrderId)."""
        want = set(symbols)
        return [o for o in self.orders() if o.symbol in want]

    def pnl(self) -> dict[str, dict[str, float]]:
        """Per symbol: realized (gross), commission, funding (USDT) and stops_hit."""
        out: dict[str, dict[str, float]] = {}
        for k, v in self.r.hgetall(self.k_pnl).items():
            sym, what = k.split(":", 1)
            out.setdefault(sym, {})[what] = float(v)
        return out
