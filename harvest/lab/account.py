"""The desk's own positions rebuilt from its exchange history, and what it made on them
(``harvest replay --account``). Pure: the rows come in as Binance answered them
(:mod:`harvest.venues.binance_history` reads them), nothing is read here.

**Positions** (:func:`reconstruct`). The fills of each symbol and position side (``userTrades``
rows: ``side``, ``qty``, ``price``, ``realizedPnl``, ``commission``, ``time`` ms, ``id``,
``orderId``), in time order, walk the signed position in Decimal arithmetic: a fill from flat
opens a position; a fill on its side adds to it (entry = the volume-weighted price of every
opening fill, qty = their sum); a fill against it reduces it; the fill that takes it to zero
closes it, and one that takes it through zero closes it and opens the other side with the rest
(its commission split by quantity). Realized PnL is Binance's ``realizedPnl`` of the reducing
fills; fees every fill's ``commission``; funding the ``FUNDING_FEE`` income rows of the symbol
from the opening to the close (paid = −income). When the history starts inside a position (its
first fills realize PnL: they reduce something opened before), those fills are skipped and the
leg is taken as flat from its first fill that realizes nothing; such legs are counted
(:attr:`Reconstruction.partial_history`).

**The stop it had**: the first STOP_MARKET on the closing side (a conditional order,
``allAlgoOrders``: ``orderType``, ``triggerPrice``, ``createTime``; or a plain ``allOrders`` row
of type STOP_MARKET with ``stopPrice``, the API before December 2025) created from a minute
before the opening to the close, on the loss side of the entry. None when there is none (the
replay then gives the exit ladder's stop, as the live book does, and says so).

**How each close happened**: a reducing fill of an order a triggered conditional order became
(``actualOrderId``) or of an order of original type STOP_MARKET is ``stop`` (at the first stop's
trigger) or ``locked_stop`` (a moved stop); TAKE_PROFIT(_MARKET) ``take_profit``; a clientOrderId
with harvest's prefix ``hv-`` is ``harvest``; any other ``close``. The position's exit reason is
its last close's; the closes before it are partials.

**R**: net (realized − fees − funding, USDT) over ``|entry − stop| × qty``. Leverage: the
account's current setting of the symbol (Binance keeps no history of it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from harvest.domain.models import Side

#: harvest's clientOrderId prefix (:data:`harvest.domain.plans.CLIENT_ORDER_PREFIX`)
HARVEST_PREFIX = "hv-"
#: a stop placed up to this long before the opening fill still counts as the position's (ms)
STOP_LEAD_MS = 60_000


@dataclass
class DeskPosition:
    """One position as the desk ran it: ``symbol``, ``side``, ``opened_at``/``closed_at`` (Unix s;
    ``closed_at`` None while open), ``entry_price`` (USDT, VWAP of the opening fills), ``qty``
    (base units opened), ``leverage``, ``stop`` (USDT, the first stop it had, or None),
    ``closes`` ``[(time s, price, qty, kind)]``, ``realized_pnl``/``fees``/``funding`` (USDT;
    funding paid, negative when received), ``qty_open`` (what is still open)."""

    symbol: str
    side: Side
    opened_at: float
    entry_price: float
    qty: float
    leverage: float = 1.0
    stop: float | None = None
    closed_at: float | None = None
    closes: list[tuple[float, float, float, str]] = field(default_factory=list)
    realized_pnl: float = 0.0
    fees: float = 0.0
    funding: float = 0.0
    qty_open: float = 0.0
    position_side: str = "BOTH"

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def exit_reason(self) -> str:
        """The last close's kind, or ``open``."""
        return "open" if self.is_open or not self.closes else self.closes[-1][3]

    @property
    def partials(self) -> int:
        return max(0, len(self.closes) - (0 if self.is_open else 1))

    def net(self, mark: float | None = None) -> float:
        """Realized − fees − funding (USDT); an open position's remainder valued at ``mark``."""
        out = self.realized_pnl - self.fees - self.funding
        if self.is_open and mark is not None:
            out += self.side.sign * (mark - self.entry_price) * self.qty_open
        return out

    def r(self, stop: float | None = None, mark: float | None = None) -> float:
        """:meth:`net` in R of the opening quantity, 1R = ``|entry − stop|`` (``stop``: this one
        unless given); NaN without a stop."""
        s = self.stop if stop is None else stop
        if s is None or s == self.entry_price:
            return math.nan
        return self.net(mark) / (abs(self.entry_price - s) * self.qty)


@dataclass
class Reconstruction:
    """:func:`reconstruct`'s answer: the positions in opening order, and what could not be used:
    ``partial_history`` (positions whose opening lies before the history read)."""

    positions: list[DeskPosition]
    partial_history: int = 0


def _f(x: object) -> float:
    return float(str(x)) if x not in (None, "") else 0.0


def _stops(algo: list[dict], orders: list[dict]) -> tuple[dict, dict]:
    """``(stops by symbol: [(created ms, side, trigger, id)], exit kind by orderId)`` from the
    conditional orders and the plain orders."""
    by_sym: dict[str, list[tuple[int, str, float, str]]] = defaultdict(list)
    kind: dict[int, tuple[str, float]] = {}
    for a in algo:
        typ = a.get("orderType") or a.get("type") or ""
        trig = _f(a.get("triggerPrice"))
        if typ == "STOP_MARKET" and trig > 0:
            by_sym[a["symbol"]].append((int(_f(a.get("createTime"))), a["side"], trig, f"algo:{a.get('algoId')}"))
        if a.get("actualOrderId") not in (None, "", "0", 0):
            kind[int(_f(a["actualOrderId"]))] = (typ, trig)
    for o in orders:
        typ = o.get("origType") or o.get("type") or ""
        sp = _f(o.get("stopPrice"))
        if typ in ("STOP_MARKET", "STOP", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"):
            kind.setdefault(int(_f(o["orderId"])), (typ, sp))
            if typ == "STOP_MARKET" and sp > 0 and o.get("type") == "STOP_MARKET":  # placed as a plain order
                by_sym[o["symbol"]].append((int(_f(o.get("time"))), o["side"], sp, f"order:{o.get('orderId')}"))
        elif str(o.get("clientOrderId", "")).startswith(HARVEST_PREFIX):
            kind.setdefault(int(_f(o["orderId"])), ("HARVEST", 0.0))
    for v in by_sym.values():
        v.sort()
    return by_sym, kind


def reconstruct(
    trades: list[dict],
    algo_orders: list[dict] | None = None,
    orders: list[dict] | None = None,
    funding: list[dict] | None = None,
    leverage: dict[str, float] | None = None,
) -> Reconstruction:
    """The desk's positions from its history rows (module docstring): ``trades`` (userTrades
    rows of any symbols), ``algo_orders`` (allAlgoOrders rows), ``orders`` (allOrders rows),
    ``funding`` (FUNDING_FEE income rows), ``leverage`` by symbol. Raises ValueError for a row
    without the fields it needs (naming it)."""
    stops, kinds = _stops(algo_orders or [], orders or [])
    client_ids = {int(_f(o["orderId"])): str(o.get("clientOrderId", "")) for o in orders or []}
    legs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for t in trades:
        try:
            legs[(t["symbol"], t.get("positionSide") or "BOTH")].append(t)
        except KeyError as e:
            raise ValueError(f"a userTrades row without {e}: {str(t)[:120]}") from None
    out: list[DeskPosition] = []
    partial = 0
    for (sym, leg), rows in sorted(legs.items()):
        rows.sort(key=lambda t: (int(_f(t["time"])), int(_f(t.get("id")))))
        pos = Decimal(0)  # the signed position of this leg
        cur: DeskPosition | None = None
        raw: list[tuple[float, float, float, str, float, str]] = []  # the current position's closes
        cost = opened = Decimal(0)  # Σ price × qty and Σ qty of its opening fills
        mine: list[tuple[DeskPosition, list]] = []
        skipping, skipped = True, False  # until a fill that realizes nothing (taken as from flat)
        for t in rows:
            try:
                q = Decimal(str(t["qty"]))
                px, ts = Decimal(str(t["price"])), _f(t["time"]) / 1000.0
                signed = q if t["side"] == "BUY" else -q
                fee, pnl = _f(t.get("commission")), _f(t.get("realizedPnl"))
                oid = int(_f(t.get("orderId")))
            except (KeyError, ValueError, ArithmeticError) as e:
                raise ValueError(f"a userTrades row that does not read ({e}): {str(t)[:120]}") from None
            if skipping and pnl != 0.0:  # closes what was opened before the history read
                skipped = True
                continue
            if skipping:
                skipping = False
                partial += int(skipped)
            if cur is None:  # from flat
                pos, cost, opened = signed, q * px, q
                cur, raw = _open(sym, leg, signed, px, ts, fee), []
                mine.append((cur, raw))
                continue
            if (signed > 0) == (pos > 0):  # adds to the position
                pos += signed
                cost += q * px
                opened += q
                cur.entry_price, cur.qty, cur.qty_open = float(cost / opened), float(opened), float(abs(pos))
                cur.fees += fee
                continue
            closing = min(q, abs(pos))
            share = float(closing / q)
            cur.realized_pnl += pnl
            cur.fees += fee * share
            typ, trig = kinds.get(oid, ("", 0.0))
            raw.append((ts, float(px), float(closing), typ, trig, client_ids.get(oid, "")))
            before = pos
            pos += signed
            if pos == 0 or (pos > 0) != (before > 0):
                cur.closed_at, cur.qty_open = ts, 0.0
                cur = None
                if pos != 0:  # through zero: the rest opens the other side
                    cost, opened = abs(pos) * px, abs(pos)
                    cur, raw = _open(sym, leg, pos, px, ts, fee * (1 - share)), []
                    mine.append((cur, raw))
            else:
                cur.qty_open = float(abs(pos))
        for p, closes in mine:
            p.stop = _stop_of(p, stops.get(sym, []))
            p.closes = [(ts, px, q, _kind(typ, trig, p.stop, cid)) for ts, px, q, typ, trig, cid in closes]
            out.append(p)
    for p in out:
        p.leverage = float((leverage or {}).get(p.symbol, 1.0))
    for row in funding or []:
        when = _f(row.get("time")) / 1000.0
        for p in out:
            if p.symbol == row.get("symbol") and p.opened_at <= when and (p.closed_at is None or when <= p.closed_at):
                p.funding -= _f(row.get("income"))
                break
    out.sort(key=lambda p: (p.opened_at, p.symbol))
    return Reconstruction(out, partial)


def _open(sym: str, leg: str, signed: Decimal, px: Decimal, ts: float, fee: float) -> DeskPosition:
    q = float(abs(signed))
    side = Side.LONG if signed > 0 else Side.SHORT
    return DeskPosition(sym, side, ts, float(px), q, qty_open=q, fees=fee, position_side=leg)


def _kind(typ: str, trig: float, stop: float | None, client_id: str) -> str:
    """How a close happened (module docstring), from the order's type and trigger."""
    if typ in ("STOP_MARKET", "STOP"):
        return "stop" if stop is None or trig == stop else "locked_stop"
    if typ.startswith("TAKE_PROFIT"):
        return "take_profit"
    if typ == "TRAILING_STOP_MARKET":
        return "trailing_stop"
    if typ == "HARVEST" or client_id.startswith(HARVEST_PREFIX):
        return "harvest"
    return "close"


def _stop_of(p: DeskPosition, stops: list[tuple[int, str, float, str]]) -> float | None:
    """The first STOP_MARKET on ``p``'s closing side created from :data:`STOP_LEAD_MS` before the
    opening to the close, on the loss side of the entry."""
    lo = p.opened_at * 1000 - STOP_LEAD_MS
    hi = math.inf if p.closed_at is None else p.closed_at * 1000
    for made, side, trig, _ in stops:
        if lo <= made <= hi and side == p.side.close_order_side and p.side.sign * (p.entry_price - trig) > 0:
            return trig
    return None
