"""The paper engine's settlement (see :mod:`harvest.venues.sim.paper`): reading position rows with
their working stops, and settling them against the replayed market — stops triggered by the
price their ``workingType`` names and filled as MARKET orders with slippage (the fill model
below), funding at each funding time — plus the fills, trades and income records it writes.

**Fill model of a triggered stop** (STOP_MARKET / TAKE_PROFIT_MARKET closePosition, an algo
order). Binance triggers a conditional order when the price its ``workingType`` names crosses
the trigger price, then places a MARKET order in the matching engine, which fills at whatever
the book offers next (Binance, "Event: Algo Order Update": TRIGGERING → TRIGGERED → FINISHED).
The engine models that on the replayed 1-minute klines, deterministically (no randomness):

* **Trigger.** ``MARK_PRICE`` (what harvest sends): the engine's mark series — the close of
  each bar since the last settlement (the mark of a bar is its close,
  :meth:`harvest.data.Klines.mark_at`), or the mark override a test set. ``CONTRACT_PRICE``:
  the last price — the bar's low (a stop under a LONG) or high (over a SHORT). A wick that the
  mark never followed triggers a CONTRACT_PRICE stop, not a MARK_PRICE one. The first bar that
  crosses is the trigger bar; among stops crossed in the same bar the tightest triggers.
* **Price.** The MARKET order fills at the first price after the trigger: the trigger price, or
  the bar's open when the bar opened beyond it (a gap; the mark override itself when a test
  set one), moved against the position by ``slippage`` × the bar's range (high − low; with an
  override, the bar's range relative to its close × the override), kept within the bar's
  range, rounded to tickSize against the position. Default ``slippage`` 0.1
  (:data:`STOP_SLIPPAGE`).
* **Thin bars.** One bar fills at most ``participation`` × its volume (default 0.1,
  :data:`PARTICIPATION`; rounded down to stepSize). The rest fills on the next bars, each at
  its open moved by the same slippage; while some is left the order is PARTIALLY_FILLED and
  the algo order TRIGGERED, and it ends FILLED / FINISHED with the last fill.
* **A real order.** The trigger creates a MARKET order (``origType`` STOP_MARKET, a new
  orderId, the algo's clientAlgoId as its clientOrderId): ``actualOrderId`` on the algo
  record, in ``allOrders``, its trades in ``userTrades`` under its orderId. The algo record
  keeps its ``createTime`` and gains ``triggerTime``.

Both parameters are per namespace (:meth:`PaperFixtures.set_fill_model
<harvest.venues.sim.paper_fixtures.PaperFixtures.set_fill_model>`, key ``<ns>:paper:fill_model``),
so the emulator and every worker use the same. Ordinary MARKET orders (harvest's closes, a
strategy's openings) fill at the mark, as before: the engine had no slippage for them, and this
model does not change that.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import numpy as np

from harvest.data import (
    SHIPPED_SYMBOLS,
    SymbolFilters,
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
#: Adverse slippage of a triggered stop's MARKET fill: a fraction (0..1) of the bar's range.
STOP_SLIPPAGE = 0.1
#: The share (0..1) of a bar's volume one order fills in that bar; the rest fills on the next.
PARTICIPATION = 0.1
MARK_PRICE, CONTRACT_PRICE = "MARK_PRICE", "CONTRACT_PRICE"


def stop_value(price: str, working_type: str) -> str:
    """A working stop as the stops hash keeps it: the price, with `` C`` appended for a
    CONTRACT_PRICE stop (MARK_PRICE, harvest's, is the bare price)."""
    if working_type not in (MARK_PRICE, CONTRACT_PRICE):
        raise ValueError(f"workingType {working_type!r}: MARK_PRICE or CONTRACT_PRICE")
    return price + " C" if working_type == CONTRACT_PRICE else price


def parse_stop(v: str) -> tuple[float, str]:
    """(price USDT, workingType) of a stops-hash value (:func:`stop_value`)."""
    if v.endswith(" C"):
        return float(v[:-2]), CONTRACT_PRICE
    return float(v), MARK_PRICE


def _crosses(x, stop: float, side: Side):
    """Whether price(s) ``x`` cross a stop protecting a ``side`` position (at or through)."""
    return x <= stop if side is Side.LONG else x >= stop


def trigger_bar(kl, last: float, now: float, side: Side, stop: float, working_type: str) -> int | None:
    """Index of the first bar of ``kl`` in [bar of ``last``, bar of ``now``] whose price named by
    ``working_type`` crosses ``stop`` (MARK_PRICE: the close, the engine's mark; CONTRACT_PRICE:
    the low for a LONG, the high for a SHORT); None when none does."""
    i0, i1 = kl.index_at(last), kl.index_at(now)
    if working_type == MARK_PRICE:
        series = kl.close[i0 : i1 + 1]
    else:
        series = (kl.low if side is Side.LONG else kl.high)[i0 : i1 + 1]
    hit = np.flatnonzero(_crosses(series, stop, side))
    return i0 + int(hit[0]) if hit.size else None


def stop_fills(
    kl,
    f,
    side: Side,
    qty: Decimal,
    first: int,
    last_bar: int,
    t_first: float,
    base: float | None,
    override: float | None,
    slippage: float,
    participation: float,
) -> tuple[list[tuple[float, Decimal, float]], Decimal, int]:
    """The fills of a triggered stop's MARKET order of ``qty`` (base units) closing a ``side``
    position, bar by bar from bar ``first`` (at time ``t_first``, price ``base`` — the trigger
    price or the gap's open; None: the bar's open) through bar ``last_bar`` (the bar of market
    now), by the module's fill model. ``f``: the symbol's filters (tickSize, stepSize).
    Returns ``([(time s, qty, price USDT), …], qty left, the next bar to fill from)``. ``kl``
    None (a listed symbol without shipped klines): one fill of everything at the override."""
    if kl is None:
        px = override if override is not None else (base or 0.0)
        adverse_dir = "down" if side is Side.LONG else "up"
        return [(t_first, qty, float(f.round_price(px, adverse_dir)))], Decimal(0), first + 1
    fills: list[tuple[float, Decimal, float]] = []
    left = qty
    k = first
    adverse = "down" if side is Side.LONG else "up"  # a LONG is closed by a SELL: lower is worse
    while left > 0 and k <= last_bar:
        lo, hi = float(kl.low[k]), float(kl.high[k])
        if override is not None:
            b = override
            rng = (hi - lo) / float(kl.close[k]) * override
        else:
            b = base if (k == first and base is not None) else float(kl.open[k])
            rng = hi - lo
        px = b - side.sign * slippage * rng
        if override is None:
            px = min(max(px, lo), hi)
        price = float(f.round_price(px, adverse))
        if price <= 0:
            price = float(f.tick_size)
        cap = f.round_qty(Decimal(repr(participation * float(kl.volume[k]))))
        q = min(left, cap)
        if q > 0:
            fills.append((t_first if k == first else float(kl.open_time[k]), q, price))
            left -= q
        k += 1
    return fills, left, k


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
_ROW_FIELDS = ("side", "qty", "entry_price", "leverage", "opened_at", "settled_at", "funding_paid", "pending")
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
#: KEYS: position, orders, pnl, order log, order id sequence, trades, orders by id (the new order
#: and any earlier order of the same clientOrderId are kept there by orderId). ARGV: clientOrderId, qty,
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
if ex then redis.call('HSET', KEYS[7], string.format('%d', cjson.decode(ex)['order_id']), ex) end
redis.call('HSET', KEYS[1], 'qty', ARGV[6])
redis.call('HSET', KEYS[2], ARGV[1], order)
redis.call('HSET', KEYS[7], id, order)
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
    trade_id: int,
    symbol: str,
    side: str,
    position_side: str,
    qty: float,
    price: float,
    pnl: float,
    fee: float,
    market_t: float,
    client_order_id: str,
    order_id: int | None = None,
) -> str:
    """One fill as the trade log keeps it (``/fapi/v1/userTrades``' fields, numbers as
    numbers; ``time`` in market seconds). ``order_id``: the order the trade belongs to (default:
    ``trade_id``, one trade per order). 0 is a placeholder the fill script replaces (``id``
    too)."""
    return json.dumps(
        {
            "id": trade_id,
            "orderId": trade_id if order_id is None else order_id,
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

    def stop_hit(self, src: str, last: float, side: Side, stops: list[tuple[float, str]], override: str | None) -> bool:
        """Whether any of ``stops`` ((price, workingType), :func:`parse_stop`) triggers in
        [last, now]: the mark override crosses it, or else the price its workingType names —
        a bar close (MARK_PRICE) or a bar's low/high (CONTRACT_PRICE) — does
        (:func:`trigger_bar` is the exact rule; this is its cached yes/no)."""
        if override is not None:
            m = float(override)
            return any(_crosses(m, p, side) for p, _ in stops)
        rng = self._ranges.get((src, last))
        if rng is None:
            kl = load_klines(src)
            i0, i1 = kl.index_at(last), kl.index_at(self.now)
            rng = self._ranges[(src, last)] = (
                float(kl.close[i0 : i1 + 1].min()),
                float(kl.close[i0 : i1 + 1].max()),
                float(kl.low[i0 : i1 + 1].min()),
                float(kl.high[i0 : i1 + 1].max()),
            )
        for p, wt in stops:
            lo, hi = (rng[0], rng[1]) if wt == MARK_PRICE else (rng[2], rng[3])
            if _crosses(lo if side is Side.LONG else hi, p, side):
                return True
        return False


class PaperSettlement:
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
        side = _SIDES.get(side_s) or Side(side_s)  # Side() raises for anything else
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
        return _tightest([parse_stop(v)[0] for v in self.r.hvals(self.k_stops(symbol))], side)

    def fill_model(self) -> tuple[float, float]:
        """(slippage, participation) of triggered stops' fills (module docstring): the
        namespace's ``<ns>:paper:fill_model`` or the defaults."""
        raw = self.r.get(f"{self.ns}:paper:fill_model")
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

    def _end_pending(self, symbol: str, pending: str) -> None:
        """A triggered stop's MARKET order still filling when another order closed the rest of
        its position: its remainder EXPIRED (a reduce-only order with nothing left to reduce),
        its algo order FINISHED, the row's ``pending`` mark removed, STOP_FINISHED logged."""
        d = json.loads(pending)
        raw_o, raw_a = self.r.hget(self.k_by_id, str(d["oid"])), self.r.hget(self.k_orders, d["cid"])
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
            raw = self.r.hget(self.k_orders, cid)
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
        for k, v in self.r.hgetall(self.k_pnl).items():
            sym, what = k.split(":", 1)
            out.setdefault(sym, {})[what] = float(v)
        return out
