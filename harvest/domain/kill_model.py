"""The learned kill (issue 35, docs/design.md §2.11): a continuation value fitted in the policy lab, evaluated here.

The kill decision is an optimal-stopping problem: close now (value ``R_net``, the open profit per
unit still open in R, after the close's estimated fee and the funding paid, as
:func:`harvest.domain.kernel.compute_r_net` gives it) or hold under the rest of the policy (value:
the R the position goes on to make). :class:`KillModel` predicts the *gain of holding* per unit
still open, in R,

    ``gain = intercept + Σ coef_j · clip(f_j, lo_j, hi_j)``

on the small basis :data:`FEATURES` of the position's state, so the predicted continuation value
is ``R_net + gain``; the learned kill fires where ``R_net > R_net + gain + margin_r``, i.e. where
``gain < −margin_r``. The coefficients, the clip ranges (the training data's 0.5/99.5 %
quantiles: never extrapolate) and the margin are data (``harvest/data/kill_model.json``, fitted
by :mod:`harvest.lab.kill_model`); this module only checks and evaluates them: pure, no I/O.

Features (shape (n,) each, dimensionless unless said), from a
:class:`harvest.domain.kernel.PositionBatch`, the kernel's ``r_net`` and its four kill components:

* ``r_net``, ``r_net_sq`` (``r_net²``);
* ``regime_flip``, ``sigma_spike``, ``ts_drop``, ``age_penalty`` (the kill score's components);
* ``log_sigma_ratio``: ``ln(σ_now / σ_entry)`` (0 without both);
* ``p_trend``: now; ``trend_with``: ``side · trend_dir`` when the regime now is TREND, else 0;
* ``log_age_h``: ``ln(1 + age / 1 h)``;
* ``stop_sigma``: the distance from the mark to the stop in force, in σ of the mark
  (``side·(mark − stop) / (mark·σ_now)``; 0 without σ);
* ``tier_sigma``: the distance from R_net to the next R tier above the one harvested, in σ of
  the mark (``(t_next − R_net)·|entry − initial_stop| / (mark·σ_now)``; 0 once tier 3 is
  harvested or without σ);
* ``locked_r``: how far the stop in force has moved from the initial stop toward profit, in R;
* ``tier``: the tier harvested (0..3);
* ``funding_r``: the funding paid per unit opened, in R;
* ``to_funding_h``: hours to the next 8-hourly funding time (00/08/16 UTC; symbols on a 4 h or
  1 h schedule are not told apart: the kernel does not know the schedule).

The taker-buy share of the last bars is not a feature: the lab's klines carry no taker volume.

Both forms, :func:`gain_batch` (n positions) and :func:`gain_one` (one position), run the same
element-wise numpy operations in the same order, so they agree bit for bit (tested).

The policy :class:`LearnedKill` (``learned_kill``, an :class:`harvest.domain.policies.ExitPolicy`)
is ``r_ladder`` with this kill in place of the kill score's threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from harvest.domain.kernel import PositionBatch, compute_kill_score, compute_r_net, r_net_batch
from harvest.domain.kernel import kill_batch as score_kill_batch
from harvest.domain.models import HarvestTheta, KillScore, MarketState, Position
from harvest.domain.policies import RLadder, register

#: The basis's version: a model file fitted on another basis is refused at load.
BASIS_VERSION = "kill-basis-1"
#: The file's format tag.
FORMAT = "harvest.kill_model"
#: The features, in the order of the coefficients (module docstring).
FEATURES: tuple[str, ...] = (
    "r_net",
    "r_net_sq",
    "regime_flip",
    "sigma_spike",
    "ts_drop",
    "age_penalty",
    "log_sigma_ratio",
    "p_trend",
    "trend_with",
    "log_age_h",
    "stop_sigma",
    "tier_sigma",
    "locked_r",
    "tier",
    "funding_r",
    "to_funding_h",
)
#: What a model file's provenance must say (a file without one of these is refused).
PROVENANCE_FIELDS: tuple[str, ...] = (
    "symbols",
    "spans",
    "folds",
    "scores",
    "git_commit",
    "data_sha256",
    "command",
    "created",
)
_FUNDING_PERIOD_S = 28_800.0


class KillModelError(ValueError):
    """A kill model that does not load: the message names the field and what is wrong."""


@dataclass(frozen=True)
class KillModel:
    """A fitted continuation-value model (module docstring): ``intercept`` (R), ``coef`` (R per
    unit of each feature, shape (len(FEATURES),)), ``clip_lo``/``clip_hi`` (each feature's
    range, same shape), ``margin_r`` (R ≥ 0: how far the close-now value must beat the predicted
    continuation), ``provenance`` (the fit's symbols, spans, folds, scores, git commit, data
    hashes, command, time)."""

    intercept: float
    coef: tuple[float, ...]
    clip_lo: tuple[float, ...]
    clip_hi: tuple[float, ...]
    margin_r: float
    provenance: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Any) -> KillModel:
        """Check and load a model document (the JSON file's content). Raises KillModelError
        naming the field when the format, the basis version, the feature list, a length, a
        non-finite number, a clip range or a provenance field is wrong or missing."""
        if not isinstance(d, dict):
            raise KillModelError(f"kill model: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise KillModelError(f"kill model: format {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("basis") != BASIS_VERSION:
            raise KillModelError(
                f"kill model: basis {d.get('basis')!r} does not match this code's {BASIS_VERSION!r}: refit it "
                "(harvest replay --fit-kill)"
            )
        if tuple(d.get("features") or ()) != FEATURES:
            raise KillModelError(f"kill model: features {d.get('features')!r} differ from the code's {list(FEATURES)}")
        vec = {}
        for name in ("coef", "clip_lo", "clip_hi"):
            v = d.get(name)
            if not isinstance(v, list) or len(v) != len(FEATURES):
                raise KillModelError(f"kill model: {name} must be a list of {len(FEATURES)} numbers")
            try:
                vec[name] = tuple(float(x) for x in v)
            except (TypeError, ValueError) as e:
                raise KillModelError(f"kill model: {name} holds a non-number ({e})") from e
            if not all(math.isfinite(x) for x in vec[name]):
                raise KillModelError(f"kill model: {name} holds a non-finite number")
        if any(lo > hi for lo, hi in zip(vec["clip_lo"], vec["clip_hi"], strict=True)):
            raise KillModelError("kill model: a clip_lo exceeds its clip_hi")
        scalars = {}
        for name in ("intercept", "margin_r"):
            try:
                scalars[name] = float(d[name])
            except (KeyError, TypeError, ValueError) as e:
                raise KillModelError(f"kill model: {name} missing or not a number") from e
            if not math.isfinite(scalars[name]):
                raise KillModelError(f"kill model: {name} is not finite")
        if scalars["margin_r"] < 0:
            raise KillModelError(f"kill model: margin_r {scalars['margin_r']!r} must be ≥ 0")
        prov = d.get("provenance")
        if not isinstance(prov, dict):
            raise KillModelError("kill model: provenance missing")
        missing = [k for k in PROVENANCE_FIELDS if k not in prov or prov[k] in (None, "", [], {})]
        if missing:
            raise KillModelError(f"kill model: provenance lacks {', '.join(missing)}")
        return cls(
            intercept=scalars["intercept"],
            coef=vec["coef"],
            clip_lo=vec["clip_lo"],
            clip_hi=vec["clip_hi"],
            margin_r=scalars["margin_r"],
            provenance=dict(prov),
        )

    def to_dict(self) -> dict[str, Any]:
        """The model document :meth:`from_dict` reads."""
        return {
            "format": FORMAT,
            "basis": BASIS_VERSION,
            "features": list(FEATURES),
            "intercept": self.intercept,
            "coef": list(self.coef),
            "clip_lo": list(self.clip_lo),
            "clip_hi": list(self.clip_hi),
            "margin_r": self.margin_r,
            "provenance": self.provenance,
        }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num)
    with np.errstate(over="ignore"):
        np.divide(num, den, out=out, where=den > 0.0)
    return out


def features(
    b: PositionBatch, now: np.ndarray | float, r_net: np.ndarray, components: np.ndarray, theta: HarvestTheta
) -> list[np.ndarray]:
    """The basis :data:`FEATURES` as a list of arrays of shape (n,) (module docstring): ``b`` the
    positions, ``now`` Unix s (scalar or (n,)), ``r_net`` and ``components`` (shape (4, n)) as
    :func:`harvest.domain.kernel.evaluate_batch` returns them. Element-wise only."""
    s = b.side_sign
    n = r_net.shape[0]
    now_a = np.broadcast_to(np.asarray(now, dtype=np.float64), (n,))
    unit = np.abs(b.entry_price - b.initial_stop)
    both = (b.entry_sigma > 0.0) & (b.now_sigma > 0.0) & b.has_entry
    sig_ratio = np.where(both, _ratio(b.now_sigma, np.where(both, b.entry_sigma, 1.0)), 1.0)
    log_sig = np.log(sig_ratio)
    trend_with = np.where(b.now_trend, s * b.now_dir, 0.0)
    age_h = (now_a - b.opened_at) / 3600.0
    log_age = np.log1p(np.maximum(age_h, 0.0))
    mark_sigma = b.mark_price * b.now_sigma
    stop_sigma = _ratio(s * (b.mark_price - b.stop), mark_sigma)
    tiers = np.array([theta.t1_r, theta.t2_r, theta.t3_r, 0.0])
    h = np.clip(b.harvested_tier, 0, 3)
    nxt = tiers[h]
    tier_sigma = np.where(h < 3, _ratio((nxt - r_net) * unit, mark_sigma), 0.0)
    locked = _ratio(s * (b.stop - b.initial_stop), unit)
    funding_r = _ratio(b.funding_paid / b.qty_at_open, unit)
    to_funding = (_FUNDING_PERIOD_S - np.mod(now_a, _FUNDING_PERIOD_S)) / 3600.0
    return [
        r_net,
        r_net * r_net,
        components[0],
        components[1],
        components[2],
        components[3],
        log_sig,
        b.now_p,
        trend_with,
        log_age,
        stop_sigma,
        tier_sigma,
        locked,
        h.astype(np.float64),
        funding_r,
        to_funding,
    ]


def gain_batch(
    model: KillModel,
    b: PositionBatch,
    now: np.ndarray | float,
    r_net: np.ndarray,
    components: np.ndarray,
    theta: HarvestTheta,
) -> np.ndarray:
    """Predicted gain of holding per unit still open (R, shape (n,)); the continuation value is
    ``r_net + gain``. Arguments as :func:`features`."""
    out = np.full(r_net.shape, model.intercept)
    for f, c, lo, hi in zip(
        features(b, now, r_net, components, theta), model.coef, model.clip_lo, model.clip_hi, strict=True
    ):
        out = out + c * np.clip(f, lo, hi)
    return out


def kill_batch(
    model: KillModel,
    b: PositionBatch,
    now: np.ndarray | float,
    r_net: np.ndarray,
    components: np.ndarray,
    theta: HarvestTheta,
) -> np.ndarray:
    """Where the learned kill fires (bool, shape (n,)): the close-now value beats the predicted
    continuation by more than the margin, ``r_net > r_net + gain + margin_r``."""
    fires: np.ndarray = r_net > r_net + gain_batch(model, b, now, r_net, components, theta) + model.margin_r
    return fires


def gain_one(
    model: KillModel,
    position: Position,
    market: MarketState,
    now: float,
    r_net: float,
    components: dict[str, float],
    theta: HarvestTheta,
) -> float:
    """:func:`gain_batch` of one position (the guard's re-check): the same operations on one
    row, so the same bits. ``components`` the kill components by name
    (:data:`harvest.domain.models.KILL_COMPONENTS` order)."""
    b = PositionBatch.from_models([(position, market)])
    comps = np.array([[float(v)] for v in components.values()], dtype=np.float64)
    return float(gain_batch(model, b, now, np.array([r_net]), comps, theta)[0])


def kill_one(
    model: KillModel,
    position: Position,
    market: MarketState,
    now: float,
    r_net: float,
    components: dict[str, float],
    theta: HarvestTheta,
) -> bool:
    """:func:`kill_batch` of one position."""
    g = gain_one(model, position, market, now, r_net, components, theta)
    return bool(r_net > r_net + g + model.margin_r)


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class LearnedKill(RLadder):
    """``learned_kill``: ``r_ladder`` (R tiers, profit lock, time stop) whose kill is the learned
    continuation value's (:func:`kill_batch`) instead of the kill score's threshold. Its "kill
    score" is 1.0 where the learned kill fires and 0.0 elsewhere (so the kernel's
    ``score ≥ kill_threshold`` is exactly the learned rule); the components are the kill score's
    (the model's features). Reason codes of its kill: ``learned_kill`` and the non-zero
    components. ``model``: the fitted model (without one the policy refuses to decide:
    ValueError). It is in the registry once :func:`use_kill_model` put it there with a model;
    settings do it at start-up when ``theta.policy`` is ``learned_kill`` (``HARVEST_KILL_MODEL``,
    default the shipped file)."""

    name: ClassVar[str] = "learned_kill"
    model: KillModel | None = None

    def _model(self) -> KillModel:
        if self.model is None:
            raise ValueError("exit policy learned_kill: no kill model loaded (settings load HARVEST_KILL_MODEL)")
        return self.model

    def kill_batch(
        self, b: PositionBatch, now: float | np.ndarray, theta: HarvestTheta
    ) -> tuple[np.ndarray, np.ndarray]:
        """1.0 where the learned kill fires, else 0.0 (n,), and the kill score's components (4, n)."""
        _, comps = score_kill_batch(b, now, theta)
        fires = kill_batch(self._model(), b, now, r_net_batch(b, theta), comps, theta)
        return np.where(fires, 1.0, 0.0), comps

    def kill_one(self, position: Position, market: MarketState, now: float, theta: HarvestTheta) -> KillScore:
        """:meth:`kill_batch` for one position (the same bits)."""
        ks = compute_kill_score(position, market, now, theta)
        fires = kill_one(self._model(), position, market, now, compute_r_net(position, theta), ks.components, theta)
        reasons = ["learned_kill"] if fires else []
        reasons += [k for k, v in ks.components.items() if v > 0.0]
        return KillScore(score=1.0 if fires else 0.0, components=ks.components, reasons=reasons)


def use_kill_model(model: KillModel) -> LearnedKill:
    """Register ``learned_kill`` with ``model`` (:func:`harvest.domain.policies.register`) and return it."""
    policy = LearnedKill(model=model)
    register(policy)
    return policy
