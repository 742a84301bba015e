"""Market state of a symbol from closed bars (docs/design.md §3). Pure, no I/O.

Given the closes c₀..c_t of the bars closed at market time t (bars of ``interval_s``
seconds: 60 for the shipped 1m data; never a bar still forming):

* ``sigma``: sample standard deviation (ddof=1) of the last ``sigma_window`` log returns
  ``ln(cᵢ / cᵢ₋₁)`` — fraction per bar (``MarketState.interval_s`` says which).
* ``ts`` (trend strength, 0..1): Kaufman's efficiency ratio over ``ts_window`` bars,
  ``|c_t − c_{t−W}| / Σ|cᵢ − cᵢ₋₁|`` (net move over path length; 0 for a flat window).
* ``p_trend`` (0..1): logistic ``1 / (1 + exp(−(ts − ts_mid) / ts_scale))``.
* ``trend_dir``: sign of ``c_t − c_{t−W}``.
* ``regime``: TREND when ``p_trend ≥ trend_p``; otherwise MR (mean-reverting) when the lag-1
  autocorrelation of the window's log returns is ≤ ``mr_autocorr``; otherwise CHOP.
* ``regime_bars``: the bars (up to ``regime_confirm_bars``) the regime, and a TREND's
  direction, has held: the persistence the kernel asks of a regime flip.

On the shipped June 2025 data (W = 60) the efficiency ratio has median ≈ 0.10 and
90th percentile ≈ 0.25; the default ``ts_mid = 0.30`` makes TREND the top few percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harvest.data import Klines
from harvest.domain.models import HarvestTheta, MarketState, Regime


def _classify(c: np.ndarray, theta: HarvestTheta) -> tuple[float, float, float, int, Regime]:
    """(sigma, ts, p_trend, trend_dir, regime) of the closes ``c`` (the last window + 1)."""
    r = np.diff(np.log(c))
    sigma = float(np.std(r[-theta.sigma_window :], ddof=1))
    w = c[-(theta.ts_window + 1) :]
    net = w[-1] - w[0]
    path = float(np.sum(np.abs(np.diff(w))))
    ts = min(1.0, abs(net) / path) if path > 0 else 0.0
    p_trend = 1.0 / (1.0 + math.exp(-(ts - theta.ts_mid) / theta.ts_scale))
    trend_dir = int(np.sign(net))
    if p_trend >= theta.trend_p:
        regime = Regime.TREND
    else:
        rw = r[-theta.ts_window :]
        a, b = rw[:-1] - rw[:-1].mean(), rw[1:] - rw[1:].mean()
        den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
        ac = float(np.dot(a, b)) / den if den > 0 else 0.0
        regime = Regime.MR if ac <= theta.mr_autocorr else Regime.CHOP
    return sigma, ts, p_trend, trend_dir, regime


def market_state_from_closes(
    symbol: str, closes: np.ndarray, ts_time: float, theta: HarvestTheta, interval_s: int = 60
) -> MarketState:
    """Market state from closes (USDT, shape (n,), oldest first, n ≥ max window + 1) of bars
    of ``interval_s`` seconds. Windows count bars. ``regime_bars``: for how many of the last
    bars (up to ``theta.regime_confirm_bars``, as far as the closes reach) the regime — with
    its direction when TREND — has been the current one (the kernel counts a regime flip as
    full only once it has persisted that long: a one-bar flicker is not a flip).

    Raises ValueError when there are too few closes or a close is not a positive number.
    """
    need = max(theta.sigma_window, theta.ts_window) + 1
    all_c = np.asarray(closes, dtype=np.float64)[-(need + theta.regime_confirm_bars - 1) :]
    c = all_c[-need:]
    if c.size < need:
        raise ValueError(f"{symbol}: need {need} closes, got {c.size}")
    if not np.all(np.isfinite(all_c)) or np.any(all_c <= 0):
        raise ValueError(f"{symbol}: closes must be positive finite numbers")
    sigma, ts, p_trend, trend_dir, regime = _classify(c, theta)
    key = (regime, trend_dir if regime is Regime.TREND else 0)
    bars = 1
    while bars < theta.regime_confirm_bars and all_c.size - bars >= need:
        _, _, _, d, reg = _classify(all_c[: all_c.size - bars][-need:], theta)
        if (reg, d if reg is Regime.TREND else 0) != key:
            break
        bars += 1
    return MarketState(
        symbol=symbol,
        ts_time=ts_time,
        sigma=sigma,
        ts=ts,
        p_trend=p_trend,
        regime=regime,
        trend_dir=trend_dir,
        interval_s=interval_s,
        regime_bars=bars,
    )


def market_state_at(klines: Klines, t: float, theta: HarvestTheta) -> MarketState:
    """Market state at market time t (s) from the bars *closed* by t, whatever the klines'
    interval (no look-ahead: a 5-minute bar counts only once its five minutes are over).
    Raises ValueError when t has too little history before it."""
    return market_state_from_closes(klines.symbol, klines.close[: klines.closed_by(t)], t, theta, klines.interval_s)


#: Regime codes of :class:`MarketSeries` (index into this tuple).
REGIMES: tuple[Regime, ...] = (Regime.TREND, Regime.CHOP, Regime.MR)


@dataclass(frozen=True)
class MarketSeries:
    """The market state after each bar closes, for every bar of one symbol: the batch form of
    :func:`market_state_from_closes` (same formulas, numpy over all windows at once). Arrays of
    shape (n,) for bars 0..n-1; row ``i`` is the state at the close of bar ``i`` (from closes
    0..i), ``valid[i]`` False where fewer than the longer window + 1 closes exist. ``regime``
    holds indices into :data:`REGIMES`. Floats agree with the single form to rounding (sums
    over the same windows; the autocorrelation's dot product may round differently)."""

    sigma: np.ndarray
    ts: np.ndarray
    p_trend: np.ndarray
    trend_dir: np.ndarray
    regime: np.ndarray
    regime_bars: np.ndarray
    valid: np.ndarray

    def state(self, i: int, symbol: str, ts_time: float, interval_s: int) -> MarketState:
        """Row ``i`` as a :class:`MarketState`. Raises ValueError where the row is not valid."""
        if not self.valid[i]:
            raise ValueError(f"{symbol}: too little history at bar {i}")
        return MarketState(
            symbol=symbol,
            ts_time=ts_time,
            sigma=float(self.sigma[i]),
            ts=float(self.ts[i]),
            p_trend=float(self.p_trend[i]),
            regime=REGIMES[int(self.regime[i])],
            trend_dir=int(self.trend_dir[i]),
            interval_s=interval_s,
            regime_bars=int(self.regime_bars[i]),
        )


def market_series(closes: np.ndarray, theta: HarvestTheta) -> MarketSeries:
    """:class:`MarketSeries` of the closes (USDT, shape (n,), oldest first, positive).
    Raises ValueError when a close is not a positive finite number."""
    from numpy.lib.stride_tricks import sliding_window_view

    c = np.asarray(closes, dtype=np.float64)
    if not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ValueError("closes must be positive finite numbers")
    n = c.size
    need = max(theta.sigma_window, theta.ts_window) + 1
    out = {k: np.zeros(n) for k in ("sigma", "ts", "p_trend")}
    trend_dir = np.zeros(n, dtype=np.int64)
    regime = np.zeros(n, dtype=np.int64)
    bars = np.zeros(n, dtype=np.int64)
    valid = np.arange(n) >= need - 1
    if n >= need:
        r = np.diff(np.log(c))  # r[k] = ln(c[k+1]/c[k])
        sw, tw = theta.sigma_window, theta.ts_window
        end = np.arange(need - 1, n)  # bars with a full window: the state after bar `end`
        sig = np.std(sliding_window_view(r, sw), axis=1, ddof=1)  # window ending at r[j + sw - 1]
        out["sigma"][end] = sig[end - sw]
        w = sliding_window_view(c, tw + 1)[end - tw]  # closes end-tw .. end
        net = w[:, -1] - w[:, 0]
        path = np.sum(np.abs(np.diff(w, axis=1)), axis=1)
        ts = np.where(path > 0, np.minimum(1.0, np.abs(net) / np.where(path > 0, path, 1.0)), 0.0)
        p = 1.0 / (1.0 + np.exp(-(ts - theta.ts_mid) / theta.ts_scale))
        out["ts"][end], out["p_trend"][end] = ts, p
        trend_dir[end] = np.sign(net).astype(np.int64)
        rw = sliding_window_view(r, tw)[end - tw]  # the window's log returns
        a = rw[:, :-1] - rw[:, :-1].mean(axis=1, keepdims=True)
        b = rw[:, 1:] - rw[:, 1:].mean(axis=1, keepdims=True)
        den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
        ac = np.where(den > 0, np.einsum("ij,ij->i", a, b) / np.where(den > 0, den, 1.0), 0.0)
        code = np.where(p >= theta.trend_p, 0, np.where(ac <= theta.mr_autocorr, 2, 1))
        regime[end] = code
        # regime_bars: how many of the last bars (up to regime_confirm_bars, as far as full
        # windows reach) share this bar's (regime, direction when TREND)
        key = code * 3 + np.where(code == 0, trend_dir[end] + 1, 1)
        run = np.ones(end.size, dtype=np.int64)
        for k in range(1, theta.regime_confirm_bars):
            same = np.zeros(end.size, dtype=bool)
            same[k:] = key[k:] == key[:-k]
            run = np.where((run == k) & same, k + 1, run)
        bars[end] = run
    return MarketSeries(valid=valid, trend_dir=trend_dir, regime=regime, regime_bars=bars, **out)
