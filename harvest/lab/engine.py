"""The replay: every entry managed by one policy over real bars, with a stated fill model.

**Fill model** (also in ``harvest replay --help`` and every report):

* An entry opens at its price (generated: the bar's open) and pays the taker fee.
* The harvest policies decide at each bar's close (the scan), on the bar's close as the mark
  and the market state of the bars closed by then, with the batch kernel the live scan runs
  (:func:`harvest.domain.kernel.evaluate_batch`). A decision acts at the open of the next bar
  after ``scan_delay_s`` (the bar containing close + delay); one decision per position at a
  time, as the live position lock allows.
* A close is a MARKET order at that open, its quantity rounded down to stepSize with a
  remainder below minQty/minNotional folded in, as the guard does
  (:func:`harvest.domain.guard_rules.close_quantity_of`; symbols without shipped filters are
  not rounded); taker fee on every fill.
* A stop (the initial one, a ladder's, or a profit lock's) fills at its price, or at the bar's
  open when the bar opened through it; a take-profit fills at its price, or at the open when
  the bar opened beyond it. When one bar reaches both, the stop fills (the dangerous reading).
* Liquidation (isolated margin, Binance's brackets) when the bar reaches the liquidation price
  and no stop lies between it and the mark: closed at the liquidation price.
* Funding at each funding time within a bar, on the quantity open, at the bar's close
  (positive rate: longs pay).
* A position still open at the end of its data closes at the last close (``end_of_data``).

**Policies**: ``default`` (the harvest kernel: partials at R tiers, profit lock, kill score,
time stop), ``lsf_ladder`` (DESIGN §2: take-profits at the exit ladder's tp1..tp3 closing its
leverage scheme of the opening qty, the ladder's stop, and the kernel's kill score and time
stop), ``bracket`` (the stop and one take-profit at the ladder's tp3), ``trailing``
(freqtrade's ``trailing_stop_positive`` / ``trailing_stop_positive_offset``: once the profit
reaches the offset, the stop trails the bar's best price by ``positive``), ``time`` (the stop,
and a market close after ``time_stop_s``), ``hold`` (the stop only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from harvest.data import shipped_filters
from harvest.domain.exit_ladder import compute_levels
from harvest.domain.guard_rules import close_quantity_of
from harvest.domain.kernel import PositionBatch, evaluate_batch
from harvest.domain.margin import brackets_from_response, liquidation_price
from harvest.domain.models import ACTION_CODES, Action, HarvestTheta, Side
from harvest.lab.entries import Entry
from harvest.lab.market import ReplayMarket

POLICIES = ("default", "lsf_ladder", "bracket", "trailing", "time", "hold")
_FULL = ACTION_CODES.index(Action.FULL_CLOSE_PROPOSED)
_LOCK = ACTION_CODES.index(Action.PROFIT_LOCK_SL)
_NONE, _P_FULL, _P_PART, _P_STOP = 0, 1, 2, 3  # pending kinds


@dataclass(frozen=True)
class FillModel:
    """Knobs of the fill model and the baselines: ``scan_delay_s`` (s from a bar's close to
    the decision's order), the trailing stop's ``trailing_positive`` and
    ``trailing_offset`` (fractions of price), the time stop ``time_stop_s`` (s)."""

    scan_delay_s: float = 0.0
    trailing_positive: float = 0.01
    trailing_offset: float = 0.02
    time_stop_s: float = 86_400.0


@dataclass
class Trades:
    """One policy's trades, arrays of shape (n,) in entry order: ``symbol`` (str), ``side``
    (±1), ``entry_time``/``exit_time`` (s), ``entry_price``, ``qty`` (opening, base units),
    ``initial_stop`` (USDT), ``net`` (USDT: realized PnL − fees − funding), ``r`` (net in R of
    the opening quantity, ``|entry − initial_stop| × qty``), ``mae_r``/``mfe_r`` (worst and best
    excursion per unit, in R), ``fees``, ``funding`` (USDT paid), ``exit_reason`` (str),
    ``partials`` (closes before the last); ``events``: per recorded trade, ``[(time, kind,
    price, qty)]``; ``evaluations``: kernel rows evaluated."""

    policy: str
    symbol: np.ndarray
    side: np.ndarray
    entry_time: np.ndarray
    exit_time: np.ndarray
    entry_price: np.ndarray
    qty: np.ndarray
    initial_stop: np.ndarray
    net: np.ndarray
    r: np.ndarray
    mae_r: np.ndarray
    mfe_r: np.ndarray
    fees: np.ndarray
    funding: np.ndarray
    exit_reason: np.ndarray
    partials: np.ndarray
    events: dict[int, list[tuple[float, str, float, float]]] = field(default_factory=dict)
    evaluations: int = 0


_BRACKETS: dict = {}


def _liq(symbol: str, side: Side, qty: float, price: float, lev: float) -> float:
    if not _BRACKETS:
        from harvest.data import load_brackets_raw

        _BRACKETS.update(brackets_from_response(load_brackets_raw()))
    try:
        out = liquidation_price(side, qty, price, lev, _BRACKETS.get(symbol) or _BRACKETS["BTCUSDT"])
    except ValueError:
        out = None
    return math.nan if out is None else out


def simulate(
    m: ReplayMarket,
    entries: list[Entry],
    policy: str,
    theta: HarvestTheta,
    fill: FillModel = FillModel(),
    record: int = 0,
) -> Trades:
    """Manage every entry with ``policy`` (module docstring) until it is closed. ``record``:
    keep the order events of the first ``record`` entries (for the report's charts).
    Raises ValueError for an unknown policy or no entries."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: one of {', '.join(POLICIES)}")
    n = len(entries)
    if n == 0:
        raise ValueError("no entries to replay")
    ser, fee = m.series, theta.taker_fee_rate
    filters = shipped_filters()
    bar0 = np.array([x.bar for x in entries], dtype=np.int64)
    sym_idx = m.symbol_of_bar(bar0)
    last = np.array([m.end_bar[m.symbols[i]] for i in sym_idx], dtype=np.int64)
    interval = np.array([m.interval_s[i] for i in sym_idx], dtype=np.float64)
    s = np.array([x.side.sign for x in entries], dtype=np.float64)
    e = np.array([x.price for x in entries])
    q0 = np.array([x.qty for x in entries])
    liq = np.array([_liq(x.symbol, x.side, x.qty, x.price, x.leverage) for x in entries])
    ent = bar0 - 1  # the market state known at entry: after the previous bar closed
    has_entry = ser.valid[ent] & (ent >= np.array([m.start[m.symbols[i]] for i in sym_idx]))
    stop0 = np.empty(n)
    tps = np.empty((n, 3))
    scheme = np.empty((n, 3))
    for i, x in enumerate(entries):
        lv = compute_levels(
            x.price,
            x.side,
            x.leverage,
            theta,
            sigma=float(ser.sigma[ent[i]]) if has_entry[i] else None,
            liquidation_price=None if math.isnan(liq[i]) else float(liq[i]),
            interval_s=int(interval[i]),
        )
        stop0[i] = x.stop if x.stop is not None else lv.sl_price
        tps[i], scheme[i] = lv.tp_prices, lv.close_scheme
    ru = np.abs(e - stop0)  # 1R per unit (USDT)
    opened_at = m.open_time[bar0]

    qty, stop = q0.copy(), stop0.copy()
    tier = np.zeros(n, dtype=np.int64)
    tp_done = np.zeros(n, dtype=np.int64)
    realized, fees, funding = np.zeros(n), fee * e * q0, np.zeros(n)
    is_open = np.ones(n, dtype=bool)
    exit_bar = np.full(n, -1, dtype=np.int64)
    reason = np.full(n, "", dtype=object)
    partials = np.zeros(n, dtype=np.int64)
    mae, mfe = np.zeros(n), np.zeros(n)
    pend = np.zeros(n, dtype=np.int64)
    pend_due = np.full(n, -1, dtype=np.int64)
    pend_frac, pend_stop = np.zeros(n), np.zeros(n)
    pend_tier = np.zeros(n, dtype=np.int64)
    pend_reason = np.full(n, "", dtype=object)
    delay_bars = np.floor(fill.scan_delay_s / interval).astype(np.int64)
    events: dict[int, list[tuple[float, str, float, float]]] = {i: [] for i in range(min(record, n))}
    for i in events:
        events[i].append((float(opened_at[i]), "entry", float(e[i]), float(q0[i])))
        events[i].append((float(opened_at[i]), "stop", float(stop0[i]), 0.0))
    evaluations = 0
    harvest_like = policy in ("default", "lsf_ladder")

    def close(idx: np.ndarray, b: np.ndarray, price: np.ndarray, q: np.ndarray, why: str | np.ndarray) -> None:
        """Close ``q`` of the trades ``idx`` at ``price`` in bar ``b``; a trade whose qty reaches
        zero ends with ``why``."""
        if idx.size == 0:
            return
        realized[idx] += s[idx] * (price - e[idx]) * q
        fees[idx] += fee * price * q
        qty[idx] -= q
        done = qty[idx] <= q0[idx] * 1e-12
        qty[idx[done]] = 0.0
        is_open[idx[done]] = False
        exit_bar[idx[done]] = b[done]
        reason[idx[done]] = why[done] if isinstance(why, np.ndarray) else why
        partials[idx[~done]] += 1
        for j, i in enumerate(idx.tolist()):
            if i in events:
                label = (why[j] if isinstance(why, np.ndarray) else why) if done[j] else "partial"
                events[i].append((float(m.open_time[b[j]]), str(label), float(price[j]), float(q[j])))

    alive = np.arange(n)
    k = 0
    while alive.size:
        b = bar0[alive] + k
        o, h, lo, c = m.open[b], m.high[b], m.low[b], m.close[b]
        sa = s[alive]
        # (1) the decision due at this bar's open
        due = alive[pend_due[alive] == b]
        if due.size:
            bd = bar0[due] + k
            od = m.open[bd]
            full = due[pend[due] == _P_FULL]
            close(full, bar0[full] + k, m.open[bar0[full] + k], qty[full].copy(), pend_reason[full].astype(str))
            for i in due[pend[due] == _P_PART].tolist():
                bi = bar0[i] + k
                f = filters.get(m.symbols[sym_idx[i]])
                if f is not None:
                    qd, _ = close_quantity_of(f, qty[i], float(m.open[bi]), False, float(pend_frac[i]))
                    qc = float(qd) if qd is not None else 0.0
                else:
                    qc = qty[i] * pend_frac[i]
                tier[i] = pend_tier[i]
                if qc > 0:
                    close(np.array([i]), np.array([bi]), np.array([m.open[bi]]), np.array([qc]), "partial_close")
            mv = due[pend[due] == _P_STOP]
            if mv.size:
                om = m.open[bar0[mv] + k]
                ok = (s[mv] * (pend_stop[mv] - stop[mv]) > 0) & (s[mv] * (om - pend_stop[mv]) > 0)
                stop[mv[ok]] = pend_stop[mv[ok]]
                for i in mv[ok].tolist():
                    if i in events:
                        events[i].append((float(m.open_time[bar0[i] + k]), "stop", float(stop[i]), 0.0))
            del od
            pend[due], pend_due[due] = _NONE, -1
        # (2) liquidation, stop, take-profits within the bar
        op = is_open[alive]
        worst = np.where(sa > 0, lo, h)
        best = np.where(sa > 0, h, lo)
        lq = liq[alive]
        st = stop[alive]
        hit_liq = op & ~np.isnan(lq) & (sa * (worst - lq) <= 0) & (sa * (st - lq) <= 0)
        hit_stop = op & ~hit_liq & (sa * (worst - st) <= 0)
        idx = alive[hit_liq]
        close(idx, b[hit_liq], lq[hit_liq], qty[idx].copy(), "liquidation")
        idx = alive[hit_stop]
        px = np.where(sa * (o - st) <= 0, o, st)[hit_stop]
        why = np.where(stop[idx] == stop0[idx], "stop", "locked_stop")
        close(idx, b[hit_stop], px, qty[idx].copy(), why)
        if policy in ("bracket", "lsf_ladder"):
            for lvl in (2,) if policy == "bracket" else (0, 1, 2):
                op = is_open[alive]
                tp = tps[alive, lvl]
                hit = op & (sa * (best - tp) >= 0) & (tp_done[alive] <= lvl)
                if not hit.any():
                    continue
                idx = alive[hit]
                px = np.where(sa[hit] * (o[hit] - tp[hit]) >= 0, o[hit], tp[hit])
                if policy == "bracket" or lvl == 2:
                    q = qty[idx].copy()
                else:
                    q = np.minimum(qty[idx], scheme[idx, lvl] * q0[idx])
                tp_done[idx] = lvl + 1
                close(idx, b[hit], px, q, "take_profit")
        # (3) funding on what is open through the bar
        op = is_open[alive]
        fr = m.funding[b]
        paying = op & (fr != 0)
        if paying.any():
            idx = alive[paying]
            funding[idx] += sa[paying] * fr[paying] * qty[idx] * c[paying]
        # (4) excursions
        mae[alive] = np.minimum(mae[alive], sa * (worst - e[alive]) / ru[alive])
        mfe[alive] = np.maximum(mfe[alive], sa * (best - e[alive]) / ru[alive])
        # (5) the scan at the bar's close
        op = is_open[alive] & (pend[alive] == _NONE) & (b < last[alive])
        now = m.open_time[b] + interval[alive]
        if op.any() and harvest_like:
            idx, bi = alive[op], b[op]
            valid = ser.valid[bi]
            idx, bi = idx[valid], bi[valid]
            if idx.size:
                eb = ent[idx]
                he = has_entry[idx]
                batch = PositionBatch(
                    side_sign=s[idx],
                    qty=qty[idx],
                    qty_at_open=q0[idx],
                    entry_price=e[idx],
                    mark_price=m.close[bi],
                    initial_stop=stop0[idx],
                    stop=stop[idx],
                    opened_at=opened_at[idx],
                    harvested_tier=tier[idx],
                    funding_paid=funding[idx],
                    has_entry=he,
                    entry_trend=he & (ser.regime[eb] == 0),
                    entry_dir=np.where(he, ser.trend_dir[eb], 0).astype(np.float64),
                    entry_p=np.where(he, ser.p_trend[eb], 0.0),
                    entry_sigma=np.where(he, ser.sigma[eb], 0.0),
                    entry_ts=np.where(he, ser.ts[eb], 0.0),
                    now_trend=ser.regime[bi] == 0,
                    now_dir=ser.trend_dir[bi].astype(np.float64),
                    now_p=ser.p_trend[bi],
                    now_sigma=ser.sigma[bi],
                    now_ts=ser.ts[bi],
                    now_bars=ser.regime_bars[bi].astype(np.float64),
                )
                res = evaluate_batch(batch, m.open_time[bi] + interval[idx], theta)  # type: ignore[arg-type]
                evaluations += idx.size
                due_b = bi + 1 + delay_bars[idx]
                kill = res.action == _FULL
                sel = idx[kill]
                pend[sel], pend_due[sel] = _P_FULL, due_b[kill]
                pend_reason[sel] = np.where(res.time_stop[kill], "time_stop", "kill_score")
                if policy == "default":
                    part = (res.action >= 1) & (res.action <= 3)
                    sel = idx[part]
                    pend[sel], pend_due[sel] = _P_PART, due_b[part]
                    pend_frac[sel], pend_tier[sel] = res.close_fraction[part], res.tier[part]
                    lock = res.action == _LOCK
                    sel = idx[lock]
                    pend[sel], pend_due[sel], pend_stop[sel] = _P_STOP, due_b[lock], res.new_stop[lock]
        elif op.any() and policy == "trailing":
            idx = alive[op]
            profit = s[idx] * (c[op] - e[idx]) / e[idx]
            armed = profit >= fill.trailing_offset
            cand = np.where(
                s[idx] > 0, best[op] * (1 - fill.trailing_positive), best[op] * (1 + fill.trailing_positive)
            )
            tighter = armed & (s[idx] * (cand - stop[idx]) > 0) & (s[idx] * (c[op] - cand) > 0)
            stop[idx[tighter]] = cand[tighter]
        elif op.any() and policy == "time":
            idx = alive[op]
            old = (now[op] - opened_at[idx]) >= fill.time_stop_s
            sel = idx[old]
            pend[sel], pend_due[sel], pend_reason[sel] = _P_FULL, b[op][old] + 1 + delay_bars[sel], "time_stop"
        # (6) the end of the data
        end = is_open[alive] & (b >= last[alive])
        idx = alive[end]
        close(idx, b[end], c[end], qty[idx].copy(), "end_of_data")
        alive = alive[is_open[alive]]
        k += 1

    net = realized - fees - funding
    xb = np.where(exit_bar >= 0, exit_bar, last)
    return Trades(
        policy=policy,
        symbol=np.array([m.symbols[i] for i in sym_idx], dtype=object),
        side=s,
        entry_time=opened_at,
        exit_time=m.open_time[xb] + interval,
        entry_price=e,
        qty=q0,
        initial_stop=stop0,
        net=net,
        r=net / (ru * q0),
        mae_r=mae,
        mfe_r=mfe,
        fees=fees,
        funding=funding,
        exit_reason=reason,
        partials=partials,
        events=events,
        evaluations=evaluations,
    )
