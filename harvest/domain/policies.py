"""Exit policies: one home per policy (docs/design.md §2.10). Pure, no I/O.

An :class:`ExitPolicy` holds everything one way of exiting a position decides:

* its **batch decision**, :meth:`ExitPolicy.scan` — the scan's form, numpy arrays of a
  :class:`harvest.domain.kernel.PositionBatch` in, a :class:`harvest.domain.kernel.BatchResult`
  out;
* its **one-position form**, :meth:`ExitPolicy.decide` — a :class:`Position` and its market
  state in, a :class:`Proposal` out; bit-equal to the batch row by row (same IEEE-754
  operations in the same order; tested for every registered policy by
  ``tests/unit/test_policies.py``);
* its **re-checks for the guard** (:meth:`ExitPolicy.recheck_tier`: is a partial's tier still
  reached; :meth:`ExitPolicy.kill_score`: the score a full close is confirmed against);
* its **next trigger**, :meth:`ExitPolicy.next_trigger` — the mark at which it next decides
  something (event-driven exits, :mod:`harvest.domain.triggers`);
* its **parameters**: :attr:`ExitPolicy.theta_fields` (the :class:`HarvestTheta` fields it
  reads) and its own dataclass fields (the baselines' knobs), both in :meth:`ExitPolicy.params`.

The registry (:data:`REGISTRY`, :func:`get_policy`, :func:`register`) names them:

* ``r_ladder`` (the default) and ``lsf_ladder`` — the harvest kernel
  (:class:`HarvestKernel`: time stop, kill score, partial tiers, profit lock; docs/design.md
  §2) with their tiers: R tiers of theta, or the exit ladder's take-profit prices and close
  scheme (docs/design.md §4.5);
* the lab's baselines: ``bracket`` (the stop and a take-profit at the ladder's tp3),
  ``trailing`` (a trailing stop, in price fractions or in R), ``time`` (a close after
  ``time_stop_s``), ``hold`` (the stop only). Their stops and take-profits rest on the exchange
  (the lab fills them within bars: :attr:`ExitPolicy.take_profit_tier`, :meth:`Trailing.trail`);
  their scan decides what a scan would (a close at the take-profit, a trailing stop's move,
  the time close).

``theta.policy`` picks the live pipeline's policy (:func:`policy_for`); the kernel's
:func:`harvest.domain.kernel.evaluate_batch` and
:func:`harvest.domain.kernel.compute_harvest_proposal` and
:func:`harvest.domain.triggers.next_trigger` are that policy's scan, decide and next trigger.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from harvest.domain.exit_ladder import ladder_targets
from harvest.domain.kernel import (
    BatchResult,
    PositionBatch,
    compute_kill_score,
    compute_r_net,
    kernel_batch,
    kernel_proposal,
    kill_batch,
    r_net_batch,
    r_tiers_batch,
)
from harvest.domain.models import (
    ACTION_CODES,
    KILL_COMPONENTS,
    Action,
    HarvestTheta,
    KillScore,
    MarketState,
    Position,
    Proposal,
)
from harvest.domain.triggers import lock_trigger, mark_for_r, nearest_ahead

_NONE = ACTION_CODES.index(Action.NONE)
_FULL = ACTION_CODES.index(Action.FULL_CLOSE_PROPOSED)
_LOCK = ACTION_CODES.index(Action.PROFIT_LOCK_SL)
_NO_COMPONENTS = dict.fromkeys(KILL_COMPONENTS, 0.0)
#: Cumulative close scheme: fractions (0..1) of the opening qty closed once tiers 0..3 are harvested.
Scheme = tuple[float, float, float, float]


def _r_or_none(position: Position, theta: HarvestTheta) -> float | None:
    try:
        return compute_r_net(position, theta)
    except ZeroDivisionError:  # a subnormal 1R
        return None


@dataclass(frozen=True)
class ExitPolicy(ABC):
    """One exit policy (module docstring). Subclasses are frozen dataclasses whose fields are
    the policy's own parameters (the baselines' knobs); theta carries the rest."""

    #: The registry's name.
    name: ClassVar[str]
    #: The :class:`HarvestTheta` fields the policy reads.
    theta_fields: ClassVar[tuple[str, ...]]
    #: Decides with the harvest kernel (R_net, kill score, tiers, profit lock): its scan needs a
    #: market state and its rows count as kernel evaluations in the lab.
    kernel: ClassVar[bool] = False
    #: Whether the lab runs the scan at each bar's close; False when the policy's exits are
    #: resting orders the lab fills within bars (the scan would find them filled already).
    scan_in_lab: ClassVar[bool] = True
    #: The exit ladder's take-profit (1..3) a resting TAKE_PROFIT_MARKET order of the whole
    #: position sits at, or None.
    take_profit_tier: ClassVar[int | None] = None

    @abstractmethod
    def scan(self, b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta) -> BatchResult:
        """The decisions for n positions at once (``now``: Unix s, a float or shape (n,))."""

    @abstractmethod
    def decide(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> Proposal:
        """The decision for one position (``market``: its symbol's state now; ``now``: Unix
        s); equal, bit for bit, to its row of :meth:`scan`."""

    def recheck_tier(self, position: Position | None, tier: int, theta: HarvestTheta) -> tuple[bool, dict[str, Any]]:
        """The guard's re-check of a partial: whether ``tier`` (1..3) is still reached at the
        position as read now (None: the position as read is inconsistent), within
        ``theta.guard_r_tolerance`` R, and what the results stream records (``r_net`` at
        least). A policy without tiers never reaches one."""
        r = None if position is None else _r_or_none(position, theta)
        return False, {"r_net": r, "policy": self.name}

    def kill_score(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> KillScore | None:
        """The score the guard confirms a kill close against (None: the policy has no kill)."""
        return None

    def next_trigger(self, position: Position, theta: HarvestTheta) -> float | None:
        """The nearest mark (USDT) strictly beyond ``position.mark_price`` in the position's
        favour at which the policy decides something it does not decide at the current mark;
        None when none lies ahead (or a mark does not move the policy's decisions)."""
        return None

    def params(self, theta: HarvestTheta) -> dict[str, Any]:
        """The policy's parameters: the theta fields it reads and its own fields."""
        out: dict[str, Any] = {f: getattr(theta, f) for f in self.theta_fields}
        out.update(dataclasses.asdict(self))
        return out


# --------------------------------------------------------------------------- the harvest kernel

_KERNEL_FIELDS = (
    "taker_fee_rate",
    "kill_threshold",
    "w_regime_flip",
    "w_sigma_spike",
    "w_ts_drop",
    "w_age_penalty",
    "max_age_s",
    "sigma_spike_ratio",
    "regime_confirm_bars",
    "max_hold_s",
    "lock_start_r",
    "lock_fraction",
    "lock_min_step_r",
    "guard_r_tolerance",
)


@dataclass(frozen=True)
class HarvestKernel(ExitPolicy):
    """The harvest kernel (docs/design.md §2): time stop, kill score, the policy's partial
    tiers, profit lock. Subclasses say where the tiers are (:meth:`tiers_batch`,
    :meth:`tiers_one`, :meth:`tier_marks`); the kill (:meth:`kill_batch`, :meth:`kill_one`) is
    the kill score of §2.3 unless a subclass replaces it."""

    kernel: ClassVar[bool] = True

    @abstractmethod
    def tiers_batch(
        self, b: PositionBatch, r_net: np.ndarray, theta: HarvestTheta
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The tier (0..3) each row has reached, shape (n,), and the cumulative close scheme
        (4, n), or None for :data:`harvest.domain.models.TIER_FRACTION` of the remaining qty."""

    @abstractmethod
    def tiers_one(self, position: Position, r_net: float, theta: HarvestTheta) -> tuple[int | None, Scheme | None]:
        """:meth:`tiers_batch` for one position (a tier of None: the R tiers of theta)."""

    @abstractmethod
    def tier_marks(self, position: Position, theta: HarvestTheta) -> tuple[float, float, float]:
        """The marks (USDT) at which tiers 1..3 are reached."""

    def kill_batch(
        self, b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta
    ) -> tuple[np.ndarray, np.ndarray]:
        """Kill scores (n,) and their components (4, n)."""
        return kill_batch(b, now, theta)

    def kill_one(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> KillScore:
        """:meth:`kill_batch` for one position."""
        return compute_kill_score(position, market, now, theta)

    def scan(self, b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta) -> BatchResult:
        r_net = r_net_batch(b, theta)
        kill, comps = self.kill_batch(b, now, theta)
        reached, cum = self.tiers_batch(b, r_net, theta)
        return kernel_batch(b, now, theta, r_net, kill, comps, reached, cum)

    def decide(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> Proposal:
        r_net = compute_r_net(position, theta)
        kill = self.kill_one(position, market, now, theta)
        reached, cum = self.tiers_one(position, r_net, theta)
        return kernel_proposal(position, now, theta, r_net, kill, reached, cum)

    def kill_score(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> KillScore | None:
        return self.kill_one(position, market, now, theta)

    def next_trigger(self, position: Position, theta: HarvestTheta) -> float | None:
        """Each unharvested tier's mark (:meth:`tier_marks`) and the profit lock's
        (:func:`harvest.domain.triggers.lock_trigger`); the nearest ahead. The kill score and
        the time stop are the scan's: a mark alone does not move them."""
        marks = self.tier_marks(position, theta)
        cands = [m for k, m in enumerate(marks, start=1) if k > position.harvested_tier]
        cands.append(lock_trigger(position, theta))
        return nearest_ahead(position, cands)


@dataclass(frozen=True)
class RLadder(HarvestKernel):
    """``r_ladder``, the default: tier k at R_net ≥ t_k (2/4/6 R), closing 25/50/75 % of the
    remaining qty (docs/design.md §2.5)."""

    name: ClassVar[str] = "r_ladder"
    theta_fields: ClassVar[tuple[str, ...]] = (*_KERNEL_FIELDS, "t1_r", "t2_r", "t3_r")

    def tiers_batch(
        self, b: PositionBatch, r_net: np.ndarray, theta: HarvestTheta
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return r_tiers_batch(r_net, theta), None

    def tiers_one(self, position: Position, r_net: float, theta: HarvestTheta) -> tuple[int | None, Scheme | None]:
        return None, None

    def tier_marks(self, position: Position, theta: HarvestTheta) -> tuple[float, float, float]:
        t1, t2, t3 = (mark_for_r(position, t, theta) for t in theta.tier_r)
        return t1, t2, t3

    def recheck_tier(self, position: Position | None, tier: int, theta: HarvestTheta) -> tuple[bool, dict[str, Any]]:
        """Reached when R_net re-read is at most ``guard_r_tolerance`` below the tier's R."""
        r = None if position is None else _r_or_none(position, theta)
        need = theta.tier_r[tier - 1] - theta.guard_r_tolerance
        return r is not None and r >= need, {"r_net": r, "tier_r": theta.tier_r[tier - 1]}


def ladder_tier(position: Position, theta: HarvestTheta) -> tuple[int, Scheme]:
    """The ``lsf_ladder`` tier the mark has reached (0..3: the highest take-profit price at or
    through which the mark is) and the cumulative close scheme ``(0, S1, S2, 1)`` (fractions of
    the opening qty closed once tiers 0..3 are harvested); :func:`ladder_targets` on one row."""
    tp, scheme = ladder_targets(
        np.array([position.entry_price]), np.array([float(position.side.sign)]), np.array([position.leverage]), theta
    )
    s = position.side.sign
    over = [bool(s * (position.mark_price - float(tp[k, 0])) >= 0.0) for k in range(3)]
    reached = 3 if over[2] else (2 if over[1] else (1 if over[0] else 0))
    s1 = float(scheme[0, 0])
    return reached, (0.0, s1, s1 + float(scheme[1, 0]), 1.0)


@dataclass(frozen=True)
class LsfLadder(HarvestKernel):
    """``lsf_ladder``: tier k when the mark is at or through the exit ladder's tp_k, closing its
    leverage scheme of the opening qty (docs/design.md §4.5)."""

    name: ClassVar[str] = "lsf_ladder"
    theta_fields: ClassVar[tuple[str, ...]] = (*_KERNEL_FIELDS, "base_tp")

    def tiers_batch(
        self, b: PositionBatch, r_net: np.ndarray, theta: HarvestTheta
    ) -> tuple[np.ndarray, np.ndarray | None]:
        s = b.side_sign
        tp, scheme = ladder_targets(b.entry_price, s, b.leverage, theta)
        over = s * (b.mark_price - tp) >= 0.0
        reached = np.where(over[2], 3, np.where(over[1], 2, np.where(over[0], 1, 0)))
        cum = np.vstack([np.zeros_like(r_net), scheme[0], scheme[0] + scheme[1], np.ones_like(r_net)])
        return reached, cum

    def tiers_one(self, position: Position, r_net: float, theta: HarvestTheta) -> tuple[int | None, Scheme | None]:
        return ladder_tier(position, theta)

    def tier_marks(self, position: Position, theta: HarvestTheta) -> tuple[float, float, float]:
        tp, _ = ladder_targets(
            np.array([position.entry_price]),
            np.array([float(position.side.sign)]),
            np.array([position.leverage]),
            theta,
        )
        return float(tp[0, 0]), float(tp[1, 0]), float(tp[2, 0])

    def recheck_tier(self, position: Position | None, tier: int, theta: HarvestTheta) -> tuple[bool, dict[str, Any]]:
        """Reached when the mark moved ``guard_r_tolerance`` R in the position's favour is at or
        through the tier's take-profit price."""
        r = None if position is None else _r_or_none(position, theta)
        reached = 0
        if position is not None:
            tol = position.side.sign * theta.guard_r_tolerance * abs(position.entry_price - position.initial_stop)
            mark = position.mark_price + tol
            if math.isfinite(mark) and mark > 0.0:
                reached = ladder_tier(position.model_copy(update={"mark_price": mark}), theta)[0]
        return reached >= tier, {"r_net": r, "policy": self.name}


# --------------------------------------------------------------------------- the lab's baselines


def _baseline_result(
    r_net: np.ndarray, action: np.ndarray, new_stop: np.ndarray, time_stop: np.ndarray | None = None
) -> BatchResult:
    full = action == _FULL
    return BatchResult(
        action=action,
        tier=np.zeros(r_net.shape, dtype=np.int64),
        close_fraction=np.where(full, 1.0, 0.0),
        r_net=r_net,
        kill_score=np.zeros_like(r_net),
        components=np.zeros((len(KILL_COMPONENTS), r_net.size)),
        new_stop=new_stop,
        time_stop=np.zeros(r_net.shape, dtype=bool) if time_stop is None else time_stop,
    )


def _baseline_proposal(r_net: float, action: Action, reasons: list[str], new_stop: float | None = None) -> Proposal:
    return Proposal(
        action=action,
        tier=0,
        close_fraction=1.0 if action is Action.FULL_CLOSE_PROPOSED else 0.0,
        new_stop=new_stop,
        r_net=r_net,
        kill_score=0.0,
        components=dict(_NO_COMPONENTS),
        reason_codes=reasons,
    )


@dataclass(frozen=True)
class Hold(ExitPolicy):
    """``hold``: the initial stop only; the scan decides nothing."""

    name: ClassVar[str] = "hold"
    theta_fields: ClassVar[tuple[str, ...]] = ("taker_fee_rate",)
    scan_in_lab: ClassVar[bool] = False

    def scan(self, b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta) -> BatchResult:
        r_net = r_net_batch(b, theta)
        return _baseline_result(r_net, np.full(r_net.shape, _NONE, dtype=np.int64), np.full(r_net.shape, np.nan))

    def decide(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> Proposal:
        return _baseline_proposal(compute_r_net(position, theta), Action.NONE, [])


@dataclass(frozen=True)
class Bracket(ExitPolicy):
    """``bracket``: the initial stop and one take-profit of the whole position at the exit
    ladder's tp3 (a resting order; the scan closes a position whose mark is at or through it)."""

    name: ClassVar[str] = "bracket"
    theta_fields: ClassVar[tuple[str, ...]] = ("taker_fee_rate", "base_tp")
    scan_in_lab: ClassVar[bool] = False
    take_profit_tier: ClassVar[int | None] = 3

    def scan(self, b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta) -> BatchResult:
        r_net = r_net_batch(b, theta)
        tp, _ = ladder_targets(b.entry_price, b.side_sign, b.leverage, theta)
        hit = b.side_sign * (b.mark_price - tp[2]) >= 0.0
        action = np.where(hit, _FULL, _NONE).astype(np.int64)
        return _baseline_result(r_net, action, np.full(r_net.shape, np.nan))

    def decide(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> Proposal:
        r_net = compute_r_net(position, theta)
        tp3 = LsfLadder().tier_marks(position, theta)[2]
        if position.side.sign * (position.mark_price - tp3) >= 0.0:
            return _baseline_proposal(r_net, Action.FULL_CLOSE_PROPOSED, ["take_profit"])
        return _baseline_proposal(r_net, Action.NONE, [])

    def next_trigger(self, position: Position, theta: HarvestTheta) -> float | None:
        """The take-profit (tp3), while ahead."""
        return nearest_ahead(position, [LsfLadder().tier_marks(position, theta)[2]])


@dataclass(frozen=True)
class Trailing(ExitPolicy):
    """``trailing``: freqtrade's ``trailing_stop_positive`` / ``trailing_stop_positive_offset``.
    Once the profit at the mark reaches ``offset`` (a fraction of entry), the stop trails the
    best price by ``positive`` (a fraction of it); or, with ``trail_r`` given, in R like every
    other level: armed at ``offset_r`` R of profit, ``trail_r`` R behind the best price (R: the
    entry's distance to its initial stop). The stop only tightens and stays behind the mark.
    Raises ValueError for a non-positive ``trail_r``."""

    name: ClassVar[str] = "trailing"
    theta_fields: ClassVar[tuple[str, ...]] = ("taker_fee_rate",)
    scan_in_lab: ClassVar[bool] = False

    positive: float = 0.01
    offset: float = 0.02
    trail_r: float | None = None
    offset_r: float = 1.0

    def __post_init__(self) -> None:
        if self.trail_r is not None and not self.trail_r > 0:
            raise ValueError(f"trail_r {self.trail_r!r}: the trailing distance in R must be positive")

    def trail(
        self,
        s: np.ndarray,
        e: np.ndarray,
        ru: np.ndarray,
        mark: np.ndarray,
        best: np.ndarray,
        stop: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Arrays of shape (n,): side ±1, entry, 1R per unit ``|entry − initial stop|``, the mark
        (arms the trail), the best price since the last look (the trail's anchor) and the stop in
        force (USDT). Returns (the rows whose stop tightens (bool), their candidate stops)."""
        if self.trail_r is not None:
            armed = s * (mark - e) / ru >= self.offset_r
            cand = best - s * self.trail_r * ru
        else:
            armed = s * (mark - e) / e >= self.offset
            cand = np.where(s > 0, best * (1 - self.positive), best * (1 + self.positive))
        tighter = armed & (s * (cand - stop) > 0) & (s * (mark - cand) > 0)
        return tighter, cand

    def scan(self, b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta) -> BatchResult:
        r_net = r_net_batch(b, theta)
        ru = np.abs(b.entry_price - b.initial_stop)
        move, cand = self.trail(b.side_sign, b.entry_price, ru, b.mark_price, b.mark_price, b.stop)
        action = np.where(move, _LOCK, _NONE).astype(np.int64)
        return _baseline_result(r_net, action, np.where(move, cand, np.nan))

    def decide(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> Proposal:
        r_net = compute_r_net(position, theta)
        s, e, m = position.side.sign, position.entry_price, position.mark_price
        ru = abs(e - position.initial_stop)
        if self.trail_r is not None:
            armed = s * (m - e) / ru >= self.offset_r
            cand = m - s * self.trail_r * ru
        else:
            armed = s * (m - e) / e >= self.offset
            cand = m * (1 - self.positive) if s > 0 else m * (1 + self.positive)
        if armed and s * (cand - position.stop) > 0 and s * (m - cand) > 0:
            return _baseline_proposal(r_net, Action.PROFIT_LOCK_SL, ["trailing_stop"], cand)
        return _baseline_proposal(r_net, Action.NONE, [])

    def next_trigger(self, position: Position, theta: HarvestTheta) -> float | None:
        """The mark that arms the trail, while ahead; once armed the stop follows every tick
        (the exchange's trailing order's job, not an event's)."""
        s, e = position.side.sign, position.entry_price
        if self.trail_r is not None:
            arm = e + s * self.offset_r * abs(e - position.initial_stop)
        else:
            arm = e * (1 + s * self.offset)
        return nearest_ahead(position, [arm])


@dataclass(frozen=True)
class TimeExit(ExitPolicy):
    """``time``: the initial stop, and a market close once the position is ``time_stop_s``
    seconds old (≥ 0). Raises ValueError otherwise."""

    name: ClassVar[str] = "time"
    theta_fields: ClassVar[tuple[str, ...]] = ("taker_fee_rate",)

    time_stop_s: float = 86_400.0

    def __post_init__(self) -> None:
        if not self.time_stop_s >= 0:
            raise ValueError(f"time_stop_s {self.time_stop_s!r}: the holding time in s must be a number >= 0")

    def scan(self, b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta) -> BatchResult:
        r_net = r_net_batch(b, theta)
        old = (now - b.opened_at) >= self.time_stop_s
        action = np.where(old, _FULL, _NONE).astype(np.int64)
        return _baseline_result(r_net, action, np.full(r_net.shape, np.nan), old)

    def decide(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> Proposal:
        r_net = compute_r_net(position, theta)
        if now - position.opened_at >= self.time_stop_s:
            return _baseline_proposal(r_net, Action.FULL_CLOSE_PROPOSED, ["time_stop"])
        return _baseline_proposal(r_net, Action.NONE, [])


# --------------------------------------------------------------------------- the registry

#: Every policy by name, with its default parameters.
REGISTRY: dict[str, ExitPolicy] = {}


def register(policy: ExitPolicy) -> ExitPolicy:
    """Add ``policy`` to :data:`REGISTRY` under its name (replacing one of the same name) and
    return it."""
    REGISTRY[policy.name] = policy
    return policy


for _p in (RLadder(), LsfLadder(), Bracket(), Trailing(), TimeExit(), Hold()):
    register(_p)


def get_policy(name: str, **params: Any) -> ExitPolicy:
    """The registered policy ``name`` with its own parameters replaced by ``params``. Raises
    ValueError naming the policy for an unknown name or parameter."""
    try:
        policy = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown exit policy {name!r}: one of {', '.join(REGISTRY)}") from None
    if not params:
        return policy
    known = {f.name for f in dataclasses.fields(policy)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"exit policy {name!r} has no parameter {unknown}: its parameters are {sorted(known)}")
    return dataclasses.replace(policy, **params)


def policy_for(theta: HarvestTheta) -> ExitPolicy:
    """The live pipeline's policy: the one ``theta.policy`` names."""
    return REGISTRY[theta.policy]
