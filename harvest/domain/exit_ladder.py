"""Leverage-aware exit ladder ("ExitBrain v3.5" of the seeds, docs/design.md §4). Pure, no I/O.

With L = leverage and LSF = 1 / (1 + ln(L + 1)) (the leverage scaling factor):

    tp1 = base_tp · (0.6 + LSF)      tp2 = base_tp · (1.2 + LSF / 2)
    tp3 = base_tp · (1.8 + LSF / 4)  sl  = base_sl · (1 + (1 − LSF) · 0.8)

all as fractions of the entry price (source: seed 000, exit_brain.py lines 132–140).
Close scheme by leverage (seed 000, lines 89–102): 1–10× → 30/30/40 %, 11–30× → 40/40/20 %,
31×+ → 50/30/20 %.

Volatility adjustment (applied here): the stop distance is floored at
``vol_floor_k · sigma · sqrt(3600 / interval_s)`` — ``vol_floor_k`` standard deviations of a
one-hour move, ``sigma`` being per bar of ``interval_s`` seconds —
so that a stop is never placed inside ordinary noise. It is applied only when ``sigma`` is given,
and the floor itself is capped at ``theta.sl_floor_cap`` (a cascade's volatility once made a
60 % stop). Funding is not used to move the levels; it enters the decision through R_net instead.

Liquidation: given the position's liquidation price, the stop is moved inside it, keeping
``theta.liquidation_buffer`` of the entry→liquidation distance (:func:`harvest.domain.margin.clamp_stop`):
a stop beyond the liquidation price never triggers (the default ladder's stop lies beyond it
from about 46× leverage up).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel

from harvest.domain.margin import clamp_stop
from harvest.domain.models import HarvestTheta, Side


class Levels(BaseModel):
    """Ladder for one position: fractions of entry, their prices (USDT), and the close scheme.

    ``close_scheme`` holds the fractions (0..1, summing to 1) of the opening qty closed at
    tp1, tp2 and tp3.
    """

    lsf: float
    tp_fractions: tuple[float, float, float]
    sl_fraction: float
    tp_prices: tuple[float, float, float]
    sl_price: float
    close_scheme: tuple[float, float, float]
    sl_clamped: bool = False


def leverage_scaling_factor(leverage: float) -> float:
    """LSF = 1 / (1 + ln(L + 1)) for leverage L ≥ 1 (dimensionless, in (0, 1)).

    Raises ValueError for L < 1 or a non-finite L.
    """
    if not math.isfinite(leverage) or leverage < 1:
        raise ValueError(f"leverage must be a finite number >= 1, got {leverage!r}")
    return 1.0 / (1.0 + math.log(leverage + 1.0))


def close_scheme(leverage: float) -> tuple[float, float, float]:
    """Fractions of the opening qty closed at tp1/tp2/tp3: 1–10× 30/30/40, 11–30× 40/40/20,
    31×+ 50/30/20 (leverage rounded to the nearest whole number first)."""
    lev = round(leverage)
    if lev <= 10:
        return (0.30, 0.30, 0.40)
    if lev <= 30:
        return (0.40, 0.40, 0.20)
    return (0.50, 0.30, 0.20)


def compute_levels(
    entry_price: float,
    side: Side | str,
    leverage: float,
    theta: HarvestTheta | None = None,
    sigma: float | None = None,
    vol_floor_k: float = 2.0,
    liquidation_price: float | None = None,
    interval_s: int = 60,
) -> Levels:
    """Exit ladder of one position.

    entry_price: USDT (> 0); side: LONG/SHORT; leverage: ≥ 1; sigma: optional std of
    log returns per bar of ``interval_s`` seconds (fraction) for the volatility floor of the
    stop (capped at ``theta.sl_floor_cap``); liquidation_price: optional (USDT), the stop is kept inside it
    (``sl_clamped`` says it was moved).
    Returns :class:`Levels` with prices on the profit side (tp) and loss side (sl) of entry.
    Raises ValueError on a non-positive entry price or invalid leverage.
    """
    theta = theta or HarvestTheta()
    side = Side(side)
    if not math.isfinite(entry_price) or entry_price <= 0:
        raise ValueError(f"entry_price must be a positive number, got {entry_price!r}")
    lsf = leverage_scaling_factor(leverage)
    tps = (
        theta.base_tp * (0.6 + lsf),
        theta.base_tp * (1.2 + lsf / 2.0),
        theta.base_tp * (1.8 + lsf / 4.0),
    )
    sl = theta.base_sl * (1.0 + (1.0 - lsf) * 0.8)
    if sigma is not None and sigma > 0 and math.isfinite(sigma):
        sl = max(sl, min(vol_floor_k * sigma * math.sqrt(3600.0 / interval_s), theta.sl_floor_cap))
    s = side.sign
    tp_prices = tuple(entry_price * (1.0 + s * f) for f in tps)
    raw_sl = entry_price * (1.0 - s * sl)
    sl_price = clamp_stop(side, raw_sl, entry_price, liquidation_price, theta.liquidation_buffer)
    if sl_price != raw_sl:
        sl = abs(entry_price - sl_price) / entry_price
    return Levels(
        lsf=lsf,
        tp_fractions=tps,
        sl_fraction=sl,
        tp_prices=tp_prices,
        sl_price=sl_price,
        close_scheme=close_scheme(leverage),
        sl_clamped=sl_price != raw_sl,
    )


def ladder_targets(
    entry_price: np.ndarray, side_sign: np.ndarray, leverage: np.ndarray, theta: HarvestTheta
) -> tuple[np.ndarray, np.ndarray]:
    """The ladder's take-profit prices and its close scheme for many positions (the
    ``lsf_ladder`` policy's tiers; arrays of shape (n,) in, (3, n) out): ``tp[k] = entry·(1 +
    side·f_k)`` with ``f`` of :func:`compute_levels`, and the fractions of the opening qty of
    :func:`close_scheme`. Uses ``numpy.log``, so the single-position kernel, which calls this on
    one-element arrays, agrees with the batch bit for bit."""
    lsf = 1.0 / (1.0 + np.log(leverage + 1.0))
    f = np.vstack([theta.base_tp * (0.6 + lsf), theta.base_tp * (1.2 + lsf / 2.0), theta.base_tp * (1.8 + lsf / 4.0)])
    tp = entry_price * (1.0 + side_sign * f)
    lev = np.round(leverage)
    scheme = np.where(
        lev <= 10, [[0.30], [0.30], [0.40]], np.where(lev <= 30, [[0.40], [0.40], [0.20]], [[0.50], [0.30], [0.20]])
    )
    return tp, scheme
