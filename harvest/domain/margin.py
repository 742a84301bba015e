"""Margin arithmetic of a USDⓈ-M position: maintenance-margin brackets, the liquidation price,
and where a stop may sit so that it can trigger before liquidation. Pure, no I/O.

Liquidation price of one position in **isolated** margin (Binance's formula with no other
position in the wallet; source: Binance Futures "How to Calculate Liquidation Price of
USDⓈ-M Contracts")::

    LP = (WB + cum − s·Q·EP) / (Q·MMR − s·Q)

with ``WB`` the position's margin (``Q·EP / leverage``, USDT), ``Q`` the quantity (base
units), ``EP`` the entry price, ``s`` +1 for LONG and −1 for SHORT, and ``MMR`` / ``cum`` the
maintenance margin rate and amount of the bracket holding the position's notional ``Q·EP``.
Cross margin puts the liquidation price further away (the whole wallet backs the position);
the paper engine and the emulator use isolated margin, the more dangerous reading.

A stop can trigger only while it sits between the mark and the liquidation price. harvest
keeps every stop it places ``liquidation_buffer`` (a fraction of the entry→liquidation
distance) inside it: :func:`stop_bound` is the loosest such stop, :func:`clamp_stop` moves
a stop there when it lies beyond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harvest.domain.models import Side


@dataclass(frozen=True)
class Bracket:
    """One maintenance-margin tier: notional range [floor, cap) in USDT, the maintenance margin
    rate ``mmr`` (fraction), the maintenance amount ``cum`` (USDT) and the tier's largest
    leverage."""

    floor: float
    cap: float
    mmr: float
    cum: float
    max_leverage: float


def brackets_from_response(rows: list[dict[str, Any]]) -> dict[str, tuple[Bracket, ...]]:
    """Brackets per symbol from a ``GET /fapi/v1/leverageBracket`` answer (a list of
    ``{"symbol", "brackets": [{"notionalFloor", "notionalCap", "maintMarginRatio", "cum",
    "initialLeverage"}, …]}``). Raises KeyError/ValueError on another shape."""
    out: dict[str, tuple[Bracket, ...]] = {}
    for row in rows:
        tiers = sorted(
            (
                Bracket(
                    float(b["notionalFloor"]),
                    float(b["notionalCap"]),
                    float(b["maintMarginRatio"]),
                    float(b["cum"]),
                    float(b["initialLeverage"]),
                )
                for b in row["brackets"]
            ),
            key=lambda b: b.floor,
        )
        if not tiers:
            raise ValueError(f"{row['symbol']}: no brackets")
        out[str(row["symbol"])] = tuple(tiers)
    return out


def bracket_for(brackets: tuple[Bracket, ...], notional: float) -> Bracket:
    """The tier holding ``notional`` (USDT, ≥ 0); the last tier above every cap."""
    for b in brackets:
        if notional < b.cap:
            return b
    return brackets[-1]


def liquidation_price(
    side: Side, qty: float, entry_price: float, leverage: float, brackets: tuple[Bracket, ...]
) -> float | None:
    """Isolated-margin liquidation price (USDT; module docstring), or None when there is none
    (a LONG whose formula gives ≤ 0: at 1× a long is never liquidated). Raises ValueError for
    a non-positive qty, entry price or a leverage below 1."""
    if not (qty > 0 and entry_price > 0 and leverage >= 1) or not math.isfinite(qty * entry_price * leverage):
        raise ValueError(f"qty, entry_price > 0 and leverage >= 1 required, got {qty}, {entry_price}, {leverage}")
    s = side.sign
    b = bracket_for(brackets, qty * entry_price)
    wb = qty * entry_price / leverage
    lp = (wb + b.cum - s * qty * entry_price) / (qty * b.mmr - s * qty)
    return lp if lp > 0 else None


def stop_bound(side: Side, entry_price: float, liquidation: float | None, buffer: float) -> float | None:
    """The loosest stop (USDT) that keeps ``buffer`` (0..1) of the entry→liquidation distance
    between itself and the liquidation price: ``liq + buffer·(entry − liq)``. None when there
    is no liquidation price."""
    if liquidation is None:
        return None
    return liquidation + buffer * (entry_price - liquidation)


def beyond(side: Side, stop: float, bound: float | None) -> bool:
    """Whether ``stop`` lies beyond ``bound`` (below it for a LONG, above for a SHORT)."""
    if bound is None:
        return False
    return stop < bound if side is Side.LONG else stop > bound


def clamp_stop(side: Side, stop: float, entry_price: float, liquidation: float | None, buffer: float) -> float:
    """``stop`` moved inside the liquidation price with ``buffer`` when it lies beyond
    (:func:`stop_bound`); unchanged otherwise."""
    bound = stop_bound(side, entry_price, liquidation, buffer)
    return bound if bound is not None and beyond(side, stop, bound) else stop
