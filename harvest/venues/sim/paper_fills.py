"""The paper engine's fill model and its shared parts (see :mod:`harvest.venues.sim.paper_settlement`,
which settles positions with them): the stops hash values, the trigger and fill rules of a
triggered stop, the maintenance-margin brackets and liquidation price, the settlement probe and
the Lua scripts the engine runs.
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
from decimal import Decimal

import numpy as np

from harvest.data import (
    SHIPPED_SYMBOLS,
    load_brackets_raw,
    load_funding,
    load_klines,
)
from harvest.domain.margin import Bracket, brackets_from_response, liquidation_price
from harvest.domain.models import Side

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
        self._ranges: dict[tuple[str, float], tuple[float, float, float, float]] = {}
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
