"""The decision kernel (docs/design.md §2): pure functions, no I/O.

Two forms that agree exactly: the single-position functions (:func:`compute_r_net`,
:func:`compute_kill_score`, :func:`determine_harvest_action`, :func:`compute_profit_lock`,
:func:`kernel_proposal`) and the batch functions on numpy arrays (:func:`r_net_batch`,
:func:`kill_batch`, :func:`r_tiers_batch`, :func:`kernel_batch`). Both use the same IEEE-754
operations in the same order, and ``numpy.exp`` for the one transcendental, so their results
are bit-identical (tested).

Where the partial tiers are is the exit policy's (docs/design.md §2.10,
:mod:`harvest.domain.policies`: ``r_ladder``'s R tiers, ``lsf_ladder``'s ladder prices): the
policy assembles these pieces into its scan and its one-position decision.
:func:`evaluate_batch` and :func:`compute_harvest_proposal` are those of the policy
``theta.policy`` names; this module has no policy branch.

Formulas (source: docs/design.md §2.1–§2.6, from seeds 000/001):

* ``R_unit = |entry_price − initial_stop| × qty``  (USDT; 1R of the quantity still open, so a
  partial close does not move R_net: docs/design.md §2.2)
* ``R_net = (unrealized_pnl − est_exit_fee − funding_on_open_qty) / R_unit`` with
  ``unrealized_pnl = sign × (mark − entry) × qty``, ``est_exit_fee = taker_fee_rate × mark × qty``
  and ``funding_on_open_qty = funding_paid / qty_at_open × qty`` (the epoch's funding per unit
  opened, times the open quantity)
* kill-score components, each clipped to 0..1:

  - ``regime_flip``: 1 when the regime was TREND at entry and now is CHOP/MR or a TREND
    against the position's side, *confirmed*: it has held for ``regime_confirm_bars`` bars
    (``MarketState.regime_bars``; a one-bar flicker is not a flip — on real klines an
    unconfirmed flip killed 62 of 63 positions opened in TREND within ~15 minutes);
    otherwise, when entry was TREND, the graded collapse ``(p_trend_entry − p_trend_now) /
    p_trend_entry``; 0 when entry was not TREND;
  - ``sigma_spike = (sigma_now / sigma_entry − 1) / (sigma_spike_ratio − 1)``;
  - ``ts_drop = (ts_entry − ts_now) / ts_entry``;
  - ``age_penalty = age / max_age``;

* ``kill_score = 1 − exp(−(w_rf·regime_flip + w_ss·sigma_spike + w_td·ts_drop + w_age·age_penalty))``
* time stop: ``now − opened_at ≥ max_hold_s`` → FULL_CLOSE_PROPOSED (``time_stop``), whatever
  the kill score (age alone lifts it to 1 − e^(−w_age) = 0.26 at most);
* action: ``kill_score ≥ kill_threshold`` → FULL_CLOSE_PROPOSED; else the highest tier reached
  (R_net ≥ t3/t2/t1 → PARTIAL_75/50/25) above the tier already harvested this epoch; else, at
  ``R_net ≥ lock_start_r``, PROFIT_LOCK_SL when the stop ``entry + lock_fraction·(mark − entry)``
  tightens the stop in force by at least ``lock_min_step_r`` R; else NONE. One decision per
  position per evaluation; a profit lock waits for the next scan after a partial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harvest.domain.models import (
    ACTION_CODES,
    KILL_COMPONENTS,
    TIER_FRACTION,
    Action,
    HarvestTheta,
    KillScore,
    MarketState,
    Position,
    Proposal,
    Regime,
)

_CODE = {a: i for i, a in enumerate(ACTION_CODES)}
_PARTIAL = {1: Action.PARTIAL_25, 2: Action.PARTIAL_50, 3: Action.PARTIAL_75}


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else (1.0 if x > 1.0 else x)


def compute_r_net(position: Position, theta: HarvestTheta) -> float:
    """R-multiple of the net open profit per unit still open (dimensionless).

    ``(sign·(mark − entry)·qty − taker_fee_rate·mark·qty − funding_paid/qty_at_open·qty) /
    (|entry − initial_stop|·qty)``. The denominator is positive by the Position model's
    validation (stop ≠ entry, qty > 0).
    """
    r_unit = abs(position.entry_price - position.initial_stop) * position.qty
    upnl = position.side.sign * (position.mark_price - position.entry_price) * position.qty
    fee = theta.taker_fee_rate * position.mark_price * position.qty
    funding = position.funding_paid / position.qty_at_open * position.qty
    return (upnl - fee - funding) / r_unit


def _regime_flip(entry: MarketState | None, now: MarketState, side_sign: int, confirm_bars: int) -> float:
    if entry is None or entry.regime is not Regime.TREND:
        return 0.0
    against = now.regime is Regime.TREND and now.trend_dir == -side_sign
    if (now.regime is not Regime.TREND or against) and now.regime_bars >= confirm_bars:
        return 1.0
    if entry.p_trend <= 0.0:
        return 0.0
    return _clip01((entry.p_trend - now.p_trend) / entry.p_trend)


def compute_kill_score(position: Position, market: MarketState, now: float, theta: HarvestTheta) -> KillScore:
    """Kill score 0..1 of one position (module docstring gives the formula).

    market: the symbol's state now; ``position.entry_state`` the state at entry (without it the
    three market components are 0); now: Unix seconds. Reason codes: ``kill_score_triggered``
    when the score reaches the threshold, then the name of every non-zero component.
    """
    entry = position.entry_state
    c_rf = _regime_flip(entry, market, position.side.sign, theta.regime_confirm_bars)
    if entry is None:
        c_ss = 0.0
        c_td = 0.0
    else:
        if entry.sigma > 0.0:
            c_ss = _clip01((market.sigma / entry.sigma - 1.0) / (theta.sigma_spike_ratio - 1.0))
        else:
            c_ss = 1.0 if market.sigma > 0.0 else 0.0
        c_td = _clip01((entry.ts - market.ts) / entry.ts) if entry.ts > 0.0 else 0.0
    c_age = _clip01((now - position.opened_at) / theta.max_age_s)
    return kill_score_from_components(c_rf, c_ss, c_td, c_age, theta)


def kill_score_from_components(
    regime_flip: float, sigma_spike: float, ts_drop: float, age_penalty: float, theta: HarvestTheta
) -> KillScore:
    """``1 − exp(−Σ wᵢ·cᵢ)`` over the four components (each 0..1), with reason codes.

    The seed plan's components 1.0 / 0.0 / 0.24159 / 0.04167 give 0.678 (docs/design.md §2.3).
    """
    x = (
        theta.w_regime_flip * regime_flip
        + theta.w_sigma_spike * sigma_spike
        + theta.w_ts_drop * ts_drop
        + theta.w_age_penalty * age_penalty
    )
    score = float(1.0 - np.exp(-x))
    comps = dict(zip(KILL_COMPONENTS, (regime_flip, sigma_spike, ts_drop, age_penalty), strict=True))
    reasons = ["kill_score_triggered"] if score >= theta.kill_threshold else []
    reasons += [k for k, v in comps.items() if v > 0.0]
    return KillScore(score=score, components=comps, reasons=reasons)


def determine_harvest_action(
    r_net: float,
    kill_score: float,
    harvested_tier: int,
    theta: HarvestTheta,
    age_s: float = 0.0,
    reached: int | None = None,
) -> tuple[Action, int, list[str]]:
    """Action, tier (0..3) and reason codes from R_net, the kill score, the tier already
    harvested this epoch (0..3) and the position's age (s; the time stop). ``reached``: the
    tier the price has reached when the policy's tiers are not R tiers (``lsf_ladder``:
    :func:`harvest.domain.policies.ladder_tier`). Never returns a tier ≤ ``harvested_tier``."""
    if age_s >= theta.max_hold_s:
        return Action.FULL_CLOSE_PROPOSED, 0, ["time_stop"]
    if kill_score >= theta.kill_threshold:
        return Action.FULL_CLOSE_PROPOSED, 0, ["kill_score_triggered"]
    if reached is None:
        reached = 3 if r_net >= theta.t3_r else (2 if r_net >= theta.t2_r else (1 if r_net >= theta.t1_r else 0))
    if reached > harvested_tier:
        action = _PARTIAL[reached]
        return action, reached, [f"harvest_{action.value.lower()}"]
    return Action.NONE, 0, []


def reason_codes(action: Action, components: dict[str, float], time_stop: bool = False) -> list[str]:
    """Reason codes of a decision: ``time_stop`` for a close by age, else
    ``kill_score_triggered`` plus the non-zero components for a full close,
    ``harvest_partial_25/50/75`` for a partial, ``profit_lock`` for a stop move."""
    if action is Action.FULL_CLOSE_PROPOSED:
        if time_stop:
            return ["time_stop"]
        return ["kill_score_triggered"] + [k for k, v in components.items() if v > 0.0]
    if action is Action.PROFIT_LOCK_SL:
        return ["profit_lock"]
    if action is Action.NONE:
        return []
    return [f"harvest_{action.value.lower()}"]


def compute_profit_lock(position: Position, r_net: float, theta: HarvestTheta) -> float | None:
    """New stop price (USDT) that locks ``lock_fraction`` of the open profit, or None.

    Proposed only at ``r_net ≥ lock_start_r`` and only when it tightens the stop in force by at
    least ``lock_min_step_r`` R (price distance ``lock_min_step_r·|entry − initial_stop|``), so
    the stop only ever tightens. Rounding to tickSize is the guard's job.
    """
    if r_net < theta.lock_start_r:
        return None
    candidate = position.entry_price + theta.lock_fraction * (position.mark_price - position.entry_price)
    step = position.side.sign * (candidate - position.stop)
    min_step = theta.lock_min_step_r * abs(position.entry_price - position.initial_stop)
    if step > 0.0 and step >= min_step:
        return candidate
    return None


def compute_harvest_proposal(position: Position, market: MarketState, now: float, theta: HarvestTheta) -> Proposal:
    """Full decision for one position under ``theta.policy`` (its one-position form,
    :meth:`harvest.domain.policies.ExitPolicy.decide`): R_net, kill score, action, tier, close
    fraction (of the remaining qty) and, for PROFIT_LOCK_SL, the new stop."""
    from harvest.domain.policies import policy_for

    return policy_for(theta).decide(position, market, now, theta)


def kernel_proposal(
    position: Position,
    now: float,
    theta: HarvestTheta,
    r_net: float,
    kill: KillScore,
    reached: int | None = None,
    cum: tuple[float, float, float, float] | None = None,
) -> Proposal:
    """The harvest kernel's decision for one position from its R_net and kill score, given the
    tier its policy says the price has reached (``reached``; None: the R tiers of theta) and
    the policy's cumulative close scheme (``cum``: fractions of the opening qty closed once
    tiers 0..3 are harvested; None: :data:`TIER_FRACTION` of the remaining qty). Priority:
    full close, then the highest unharvested tier (closing ``(cum[tier] − cum[h]) / (1 −
    cum[h])`` of the remaining qty under a scheme), then the profit lock."""
    action, tier, reasons = determine_harvest_action(
        r_net, kill.score, position.harvested_tier, theta, now - position.opened_at, reached
    )
    new_stop = None
    fraction = 0.0
    if action is Action.FULL_CLOSE_PROPOSED:
        fraction = 1.0
        if reasons != ["time_stop"]:
            reasons = kill.reasons
    elif tier and cum is not None:
        done = cum[min(max(position.harvested_tier, 0), 3)]
        fraction = (cum[tier] - done) / (1.0 - done) if 1.0 - done > 0.0 else 0.0
    elif tier:
        fraction = TIER_FRACTION[tier]
    else:
        new_stop = compute_profit_lock(position, r_net, theta)
        if new_stop is not None:
            action = Action.PROFIT_LOCK_SL
            reasons = ["profit_lock"]
    return Proposal(
        action=action,
        tier=tier,
        close_fraction=fraction,
        new_stop=new_stop,
        r_net=r_net,
        kill_score=kill.score,
        components=kill.components,
        reason_codes=reasons,
    )


# --------------------------------------------------------------------------- batch form


@dataclass
class PositionBatch:
    """Struct of arrays for :func:`evaluate_batch`; every array has shape (n,), float64 unless
    noted. ``side_sign`` ±1; ``stop`` the stop in force; ``has_entry`` (bool) whether an entry
    market state exists; ``*_trend`` (bool) regime == TREND; ``*_dir`` trend direction ±1/0;
    ``now_bars`` the bars the regime now has held (``MarketState.regime_bars``); ``leverage`` the
    position's (the ``lsf_ladder`` policy's take-profits depend on it)."""

    side_sign: np.ndarray
    qty: np.ndarray
    qty_at_open: np.ndarray
    entry_price: np.ndarray
    mark_price: np.ndarray
    initial_stop: np.ndarray
    stop: np.ndarray
    opened_at: np.ndarray
    harvested_tier: np.ndarray
    funding_paid: np.ndarray
    has_entry: np.ndarray
    entry_trend: np.ndarray
    entry_dir: np.ndarray
    entry_p: np.ndarray
    entry_sigma: np.ndarray
    entry_ts: np.ndarray
    now_trend: np.ndarray
    now_dir: np.ndarray
    now_p: np.ndarray
    now_sigma: np.ndarray
    now_ts: np.ndarray
    now_bars: np.ndarray
    leverage: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[tuple[float, ...]]) -> "PositionBatch":
        """Build the arrays from rows of :func:`batch_row` (one tuple per position, values in
        the order of the fields) with one array conversion."""
        a = np.array(rows, dtype=np.float64).reshape(len(rows), len(_BATCH_FIELDS))
        return cls(**{f: a[:, j].astype(_BATCH_DTYPES.get(f, np.float64)) for j, f in enumerate(_BATCH_FIELDS)})

    @classmethod
    def from_models(cls, pairs: list[tuple[Position, MarketState]]) -> "PositionBatch":
        """Build the arrays from (position, market state now) pairs."""
        return cls.from_rows(
            [
                batch_row(
                    p.side.sign,
                    p.qty,
                    p.qty_at_open,
                    p.entry_price,
                    p.mark_price,
                    p.initial_stop,
                    p.stop,
                    p.opened_at,
                    p.harvested_tier,
                    p.funding_paid,
                    p.entry_state,
                    m,
                    p.leverage,
                )
                for p, m in pairs
            ]
        )

    def select(self, idx: np.ndarray) -> "PositionBatch":
        """The rows at ``idx`` (integer indices or a boolean mask), as a new batch."""
        return PositionBatch(**{f: getattr(self, f)[idx] for f in _BATCH_FIELDS})


_BATCH_FIELDS: tuple[str, ...] = tuple(PositionBatch.__dataclass_fields__)
_BATCH_DTYPES = {"harvested_tier": np.int64, "has_entry": bool, "entry_trend": bool, "now_trend": bool}


def batch_row(
    side_sign: float,
    qty: float,
    qty_at_open: float,
    entry_price: float,
    mark_price: float,
    initial_stop: float,
    stop: float,
    opened_at: float,
    harvested_tier: int,
    funding_paid: float,
    entry_state: MarketState | None,
    m: MarketState,
    leverage: float = 1.0,
) -> tuple[float, ...]:
    """One position as a row of :class:`PositionBatch` values, in field order (prices USDT,
    qty base units, ``stop`` the stop in force, times s; ``entry_state`` the market state at
    the epoch's start, ``m`` the one now). The single definition of the column order."""
    e = entry_state
    return (
        side_sign,
        qty,
        qty_at_open,
        entry_price,
        mark_price,
        initial_stop,
        stop,
        opened_at,
        harvested_tier,
        funding_paid,
        e is not None,
        e is not None and e.regime is Regime.TREND,
        e.trend_dir if e is not None else 0,
        e.p_trend if e is not None else 0.0,
        e.sigma if e is not None else 0.0,
        e.ts if e is not None else 0.0,
        m.regime is Regime.TREND,
        m.trend_dir,
        m.p_trend,
        m.sigma,
        m.ts,
        m.regime_bars,
        leverage,
    )


@dataclass
class BatchResult:
    """Output of :func:`evaluate_batch`, arrays of shape (n,): ``action`` holds indices into
    :data:`harvest.domain.models.ACTION_CODES`; ``components`` has shape (4, n) in the order of
    :data:`harvest.domain.models.KILL_COMPONENTS`; ``new_stop`` is NaN where no lock is proposed;
    ``time_stop`` (bool) marks the full closes the time stop made."""

    action: np.ndarray
    tier: np.ndarray
    close_fraction: np.ndarray
    r_net: np.ndarray
    kill_score: np.ndarray
    components: np.ndarray
    new_stop: np.ndarray
    time_stop: np.ndarray

    def actions(self) -> list[Action]:
        """The action codes as :class:`Action` values."""
        return [ACTION_CODES[i] for i in self.action.tolist()]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num)
    with np.errstate(over="ignore"):  # a subnormal denominator gives inf, as float division does
        np.divide(num, den, out=out, where=den > 0.0)
    return out


def evaluate_batch(b: PositionBatch, now: float, theta: HarvestTheta) -> BatchResult:
    """Evaluate n positions at once under ``theta.policy`` (its batch form,
    :meth:`harvest.domain.policies.ExitPolicy.scan`); identical results to
    :func:`compute_harvest_proposal` applied to each (same operations, same order). ``now``:
    Unix seconds (a float, or an array of shape (n,))."""
    from harvest.domain.policies import policy_for

    return policy_for(theta).scan(b, now, theta)


def r_net_batch(b: PositionBatch, theta: HarvestTheta) -> np.ndarray:
    """:func:`compute_r_net` of every row, shape (n,)."""
    r_unit = np.abs(b.entry_price - b.initial_stop) * b.qty
    upnl = b.side_sign * (b.mark_price - b.entry_price) * b.qty
    fee = theta.taker_fee_rate * b.mark_price * b.qty
    funding = b.funding_paid / b.qty_at_open * b.qty
    r: np.ndarray = (upnl - fee - funding) / r_unit
    return r


def kill_batch(b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta) -> tuple[np.ndarray, np.ndarray]:
    """:func:`compute_kill_score` of every row: the scores, shape (n,), and the components,
    shape (4, n) in the order of :data:`harvest.domain.models.KILL_COMPONENTS`."""
    s = b.side_sign
    entry_trend = b.has_entry & b.entry_trend
    against = b.now_trend & (b.now_dir == -s)
    flipped = entry_trend & (~b.now_trend | against) & (b.now_bars >= theta.regime_confirm_bars)
    graded = np.clip(_safe_div(b.entry_p - b.now_p, b.entry_p), 0.0, 1.0)
    c_rf = np.where(flipped, 1.0, np.where(entry_trend, graded, 0.0))

    ratio_m1 = theta.sigma_spike_ratio - 1.0
    ss = np.clip((_safe_div(b.now_sigma, b.entry_sigma) - 1.0) / ratio_m1, 0.0, 1.0)
    ss_zero_entry = np.where(b.now_sigma > 0.0, 1.0, 0.0)
    c_ss = np.where(b.has_entry, np.where(b.entry_sigma > 0.0, ss, ss_zero_entry), 0.0)
    td = np.clip(_safe_div(b.entry_ts - b.now_ts, b.entry_ts), 0.0, 1.0)
    c_td = np.where(b.has_entry & (b.entry_ts > 0.0), td, 0.0)
    c_age = np.clip((now - b.opened_at) / theta.max_age_s, 0.0, 1.0)

    x = theta.w_regime_flip * c_rf + theta.w_sigma_spike * c_ss + theta.w_ts_drop * c_td + theta.w_age_penalty * c_age
    kill = 1.0 - np.exp(-x)
    return kill, np.vstack([c_rf, c_ss, c_td, c_age])


def r_tiers_batch(r_net: np.ndarray, theta: HarvestTheta) -> np.ndarray:
    """The R tier (0..3) each row's R_net has reached (``r_ladder``), shape (n,)."""
    reached: np.ndarray = np.where(
        r_net >= theta.t3_r, 3, np.where(r_net >= theta.t2_r, 2, np.where(r_net >= theta.t1_r, 1, 0))
    )
    return reached


def kernel_batch(
    b: PositionBatch,
    now: float | np.ndarray,
    theta: HarvestTheta,
    r_net: np.ndarray,
    kill: np.ndarray,
    components: np.ndarray,
    reached: np.ndarray,
    cum: np.ndarray | None = None,
) -> BatchResult:
    """The harvest kernel's decisions for n rows (the batch form of :func:`kernel_proposal`):
    from R_net and the kill scores (shape (n,)), their components (4, n), the tier each row's
    policy says the price has reached (n,) and the policy's cumulative close scheme ``cum``
    (4, n; None: :data:`TIER_FRACTION` of the remaining qty)."""
    s = b.side_sign
    timed = (now - b.opened_at) >= theta.max_hold_s
    killed = timed | (kill >= theta.kill_threshold)
    partial = ~killed & (reached > b.harvested_tier)
    tier = np.where(partial, reached, 0)

    candidate = b.entry_price + theta.lock_fraction * (b.mark_price - b.entry_price)
    step = s * (candidate - b.stop)
    min_step = theta.lock_min_step_r * np.abs(b.entry_price - b.initial_stop)
    lock = ~killed & ~partial & (r_net >= theta.lock_start_r) & (step > 0.0) & (step >= min_step)

    action = np.full(r_net.shape, _CODE[Action.NONE], dtype=np.int64)
    action = np.where(lock, _CODE[Action.PROFIT_LOCK_SL], action)
    action = np.where(partial, tier, action)  # codes 1..3 are PARTIAL_25/50/75
    action = np.where(killed, _CODE[Action.FULL_CLOSE_PROPOSED], action)
    if cum is not None:
        rows = np.arange(r_net.size)
        done = cum[np.clip(b.harvested_tier, 0, 3), rows]
        ladder = _safe_div(cum[tier, rows] - done, 1.0 - done)
        close_fraction = np.where(killed, 1.0, np.where(partial, ladder, 0.0))
    else:
        frac_by_tier = np.array([0.0, TIER_FRACTION[1], TIER_FRACTION[2], TIER_FRACTION[3]])
        close_fraction = np.where(killed, 1.0, frac_by_tier[tier])
    return BatchResult(
        action=action,
        tier=tier,
        close_fraction=close_fraction,
        r_net=r_net,
        kill_score=kill,
        components=components,
        new_stop=np.where(lock, candidate, np.nan),
        time_stop=timed,
    )
