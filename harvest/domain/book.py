"""Merge exchange truth with harvest's book of each position epoch. Pure, no I/O.

Exchange truth wins: a position the venue does not report is a ghost and its book entry is
dropped; a venue position with no book entry, another side, or another opening time starts
a new epoch (tiers reset, 1R fixed from the stop in force or, without one, from the exit
ladder's stop).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harvest.domain.exit_ladder import compute_levels
from harvest.domain.kernel import PositionBatch, batch_row
from harvest.domain.margin import clamp_stop
from harvest.domain.models import (
    HarvestTheta,
    MarketState,
    Position,
    Side,
    VenuePosition,
)


def epoch_of(vp: VenuePosition, first_seen: float) -> str:
    """Epoch label of a position opening, from exchange truth only (never wall time, so the
    same opening gets the same label after a loss of state): side initial + the opening
    fill's time in whole seconds when the venue reports it, else side initial + ``p`` + the
    entry price. ``first_seen`` is not part of the label (it dates the epoch's age)."""
    if vp.opened_at is not None:
        return f"{vp.side.value[0]}{int(vp.opened_at)}"
    return f"{vp.side.value[0]}p{vp.entry_price!r}"[:64]


def is_new_epoch(vp: VenuePosition, entry: dict[str, Any] | None) -> bool:
    """Whether the venue position is another opening than the book entry describes."""
    if entry is None or entry["side"] is not vp.side:
        return True
    return vp.opened_at is not None and abs(vp.opened_at - entry["opened_at"]) > 1e-6


def new_book_entry(vp: VenuePosition, market: MarketState | None, now: float, theta: HarvestTheta) -> dict[str, Any]:
    """Book entry for a new epoch. The initial stop (hence 1R) is the venue's working stop when
    it is on the loss side of entry, else the LSF ladder's stop (with the capped volatility
    floor, kept inside the liquidation price the venue reports)."""
    s = vp.side.sign
    stop = vp.stop_price
    if stop is None or s * (vp.entry_price - stop) <= 0:
        stop = compute_levels(
            vp.entry_price,
            vp.side,
            vp.leverage,
            theta,
            sigma=market.sigma if market else None,
            liquidation_price=vp.liquidation_price,
            interval_s=market.interval_s if market else 60,
        ).sl_price
    opened = vp.opened_at if vp.opened_at is not None else now
    return {
        "symbol": vp.symbol,
        "side": vp.side,
        "epoch": epoch_of(vp, now),
        "opened_at": opened,
        "entry_price": vp.entry_price,
        "qty_at_open": vp.qty,
        "initial_stop": stop,
        "current_stop": vp.stop_price,
        "harvested_tier": 0,
        "peak_price": vp.mark_price,
        "trough_price": vp.mark_price,
        "leverage": vp.leverage,
        "entry_state": market,
    }


def to_position(account: str, vp: VenuePosition, entry: dict[str, Any]) -> Position:
    """The kernel's :class:`Position` from exchange truth (qty, entry, mark, stop, funding)
    and the book (epoch, 1R, tiers, entry state). Raises pydantic.ValidationError when the
    combination is inconsistent (e.g. a stop on the profit side of a changed entry)."""
    peak = max(entry.get("peak_price") or vp.mark_price, vp.mark_price)
    trough = min(entry.get("trough_price") or vp.mark_price, vp.mark_price)
    return Position(
        account=account,
        symbol=vp.symbol,
        side=vp.side,
        qty=vp.qty,
        qty_at_open=max(entry["qty_at_open"], vp.qty),
        entry_price=vp.entry_price,
        mark_price=vp.mark_price,
        leverage=vp.leverage,
        initial_stop=entry["initial_stop"],
        current_stop=vp.stop_price,
        opened_at=entry["opened_at"],
        epoch=entry["epoch"],
        peak_price=peak,
        trough_price=trough,
        harvested_tier=entry["harvested_tier"],
        funding_paid=vp.funding_paid,
        entry_state=entry.get("entry_state"),
    )


def position_row(vp: VenuePosition, entry: dict[str, Any], m: MarketState) -> tuple[float, ...]:
    """The :class:`harvest.domain.kernel.PositionBatch` row of what :func:`to_position` would build
    from the same inputs (same values, no model): the batch scan's per-position cost."""
    stop = vp.stop_price if vp.stop_price is not None else entry["initial_stop"]
    return batch_row(
        vp.side.sign,
        vp.qty,
        max(entry["qty_at_open"], vp.qty),
        vp.entry_price,
        vp.mark_price,
        entry["initial_stop"],
        stop,
        entry["opened_at"],
        entry["harvested_tier"],
        vp.funding_paid,
        entry.get("entry_state"),
        m,
        vp.leverage,
    )


def valid_rows(b: PositionBatch, leverage: np.ndarray) -> np.ndarray:
    """Boolean mask, shape (n,): the rows :func:`to_position` accepts — :class:`Position`'s
    constraints, vectorized (finite positive qty, qty at open, entry, mark and initial stop; a
    positive stop in force; finite funding; leverage 1..125; tier 0..3; the initial stop on
    the loss side of entry). ``leverage``: shape (n,). Tests hold it equal to the model."""

    def pos(x: np.ndarray) -> np.ndarray:
        m: np.ndarray = np.isfinite(x) & (x > 0)
        return m

    with np.errstate(invalid="ignore"):
        ok = (
            pos(b.qty)
            & pos(b.qty_at_open)
            & pos(b.entry_price)
            & pos(b.mark_price)
            & pos(b.initial_stop)
            & (b.stop > 0)
            & np.isfinite(b.funding_paid)
            & (leverage >= 1)
            & (leverage <= 125)
            & (b.harvested_tier >= 0)
            & (b.harvested_tier <= 3)
        )
        loss_side = np.where(b.side_sign > 0, b.initial_stop < b.entry_price, b.initial_stop > b.entry_price)
    out: np.ndarray = ok & loss_side
    return out


def unprotected(vp: VenuePosition) -> bool:
    """Whether the position has no stop that can trigger: none working on the venue, or the
    working one at or beyond the liquidation price (the position is liquidated first)."""
    stop = vp.stop_price
    if stop is None:
        return True
    liq = vp.liquidation_price
    if liq is None:
        return False
    return stop <= liq if vp.side is Side.LONG else stop >= liq


def protective_stop(vp: VenuePosition, entry: dict[str, Any], theta: HarvestTheta) -> tuple[float, bool]:
    """The stop a PROTECT plan places (USDT) and whether the mark is already through it.

    The book's initial stop (the epoch's 1R, from the strategy's stop or the exit ladder)
    moved inside the liquidation price with ``theta.liquidation_buffer``
    (:func:`harvest.domain.margin.clamp_stop`). A mark at or through it means the stop would have
    triggered: the position is closed instead (``stop_breached``)."""
    stop = clamp_stop(
        vp.side, float(entry["initial_stop"]), vp.entry_price, vp.liquidation_price, theta.liquidation_buffer
    )
    through = vp.mark_price <= stop if vp.side is Side.LONG else vp.mark_price >= stop
    return stop, through
