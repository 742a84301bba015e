"""Pydantic models of the domain: positions, market state, thresholds, decisions and plans.

Units everywhere (docs/design.md §1.2): money in USDT, prices in USDT per unit of the base asset,
quantities in base units, times in seconds since the Unix epoch (UTC), fractions 0..1.
"""

from __future__ import annotations

import math
from enum import Enum, StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Side(str, Enum):
    """Direction of a one-way futures position."""

    LONG = "LONG"
    SHORT = "SHORT"

    @property
    def sign(self) -> int:
        """+1 for LONG, -1 for SHORT: PnL = sign × (mark − entry) × qty."""
        return 1 if self is Side.LONG else -1

    @property
    def close_order_side(self) -> str:
        """Binance order side that reduces this position (SELL closes a LONG)."""
        return "SELL" if self is Side.LONG else "BUY"

    @property
    def open_order_side(self) -> str:
        """Binance order side that opens or adds to this position (BUY for a LONG)."""
        return "BUY" if self is Side.LONG else "SELL"

    @staticmethod
    def closed_by(order_side: str) -> "Side":
        """The position a reduce-only order of Binance side ``order_side`` closes (SELL closes a
        LONG): the ``positionSide`` that order needs in hedge mode."""
        return Side.LONG if order_side == "SELL" else Side.SHORT


class Regime(str, Enum):
    """Market regime (see :mod:`harvest.domain.market` for the classification rule)."""

    TREND = "TREND"
    CHOP = "CHOP"
    MR = "MR"


class Action(str, Enum):
    """Decision of the kernel for one position at one instant (docs/design.md §2.5)."""

    NONE = "NONE"
    PARTIAL_25 = "PARTIAL_25"
    PARTIAL_50 = "PARTIAL_50"
    PARTIAL_75 = "PARTIAL_75"
    FULL_CLOSE_PROPOSED = "FULL_CLOSE_PROPOSED"
    PROFIT_LOCK_SL = "PROFIT_LOCK_SL"
    #: Place the protective stop of a position that has no working one (none on the exchange,
    #: or one beyond the liquidation price): docs/design.md §5.8.
    PROTECT = "PROTECT"


#: Actions that place a stop (a closePosition STOP_MARKET), as opposed to closing quantity.
STOP_ACTIONS = frozenset({Action.PROFIT_LOCK_SL, Action.PROTECT})

#: Integer codes used by the batch kernel (numpy arrays cannot hold enums).
ACTION_CODES: tuple[Action, ...] = (
    Action.NONE,
    Action.PARTIAL_25,
    Action.PARTIAL_50,
    Action.PARTIAL_75,
    Action.FULL_CLOSE_PROPOSED,
    Action.PROFIT_LOCK_SL,
)
#: Tier index (1..3) of each partial action; 0 for the others.
ACTION_TIER = {Action.PARTIAL_25: 1, Action.PARTIAL_50: 2, Action.PARTIAL_75: 3}
#: Kill-score components, in the order of the batch arrays.
KILL_COMPONENTS: tuple[str, ...] = ("regime_flip", "sigma_spike", "ts_drop", "age_penalty")


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


class HarvestTheta(BaseModel):
    """Every threshold, weight, window and fee of the decision kernel (docs/design.md §2.8).

    Loaded from settings (``HARVEST_THETA__<FIELD>``); invalid values raise
    :class:`pydantic.ValidationError` naming the field, at start-up.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # Which ladder sets the partial closes (docs/design.md §4.5): ``r_ladder`` — tiers at R_net ≥ t1/t2/t3
    # closing 25/50/75 % of the remaining qty; ``lsf_ladder`` — tiers at the exit ladder's
    # tp1/tp2/tp3 prices closing its leverage scheme of the opening qty (the last one closes all);
    # ``learned_kill`` — r_ladder whose kill is the learned continuation value's
    # (harvest/domain/kill_model.py; the model file: HARVEST_KILL_MODEL, README "The policy lab").
    policy: Literal["r_ladder", "lsf_ladder", "learned_kill"] = "r_ladder"
    # Harvest tiers (R-multiples of R_net) and the fraction of the *remaining* qty each closes.
    t1_r: float = Field(2.0, gt=0, description="R_net that triggers PARTIAL_25")
    t2_r: float = Field(4.0, gt=0, description="R_net that triggers PARTIAL_50")
    t3_r: float = Field(6.0, gt=0, description="R_net that triggers PARTIAL_75")
    # Kill score (docs/design.md §2.3).
    # Defaults chosen in the policy lab (README "The policy lab"): tuned on 2023-01 … 2024-06 of
    # four large caps (5m klines), judged on 2024-07 … 2025-12; with them the score tops out at
    # 1 − e^(−1.69) = 0.82, below the threshold: the kill never fires on its own, the time stop
    # and the stops end a trade. docs/design.md §2.3's first values (threshold 0.6, weights 1/0.5/0.5/0.3)
    # did worse out of sample; set them with HARVEST_THETA__… to use the kill score.
    kill_threshold: float = Field(0.94, gt=0, lt=1)
    w_regime_flip: float = Field(0.45, ge=0)
    w_sigma_spike: float = Field(0.30, ge=0)
    w_ts_drop: float = Field(0.64, ge=0)
    w_age_penalty: float = Field(0.3, ge=0)
    max_age_s: float = Field(86_400.0, gt=0, description="age at which age_penalty = 1 (s)")
    sigma_spike_ratio: float = Field(2.0, gt=1, description="sigma_now / sigma_entry at which sigma_spike reaches 1")
    # Costs.
    taker_fee_rate: float = Field(0.0005, ge=0, lt=0.01, description="fraction of notional")
    # Profit lock (ratcheting stop).
    lock_start_r: float = Field(1.6, gt=0, description="R_net from which the stop is ratcheted")
    lock_fraction: float = Field(
        0.5, gt=0, lt=1, description="fraction of the open profit (mark − entry) the stop locks"
    )
    lock_min_step_r: float = Field(
        0.25, ge=0, description="a new stop must tighten by at least this many R (price distance)"
    )
    # Exit ladder (fractions of entry price), docs/design.md §4.1.
    base_tp: float = Field(0.02, gt=0, lt=1)
    base_sl: float = Field(0.01, gt=0, lt=1)
    sl_floor_cap: float = Field(
        0.05, gt=0, lt=1, description="largest stop distance (fraction of entry) the volatility floor may impose"
    )
    liquidation_buffer: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="a stop keeps this fraction of the entry→liquidation distance from the "
        "liquidation price (0: at it)",
    )
    stop_min_distance: float = Field(
        0.001,
        ge=0,
        lt=0.5,
        description="a new stop sits at least this fraction of the mark (plus one tick) "
        "away from the mark, on the loss side",
    )
    guard_r_tolerance: float = Field(
        0.25,
        ge=0,
        le=2,
        description="the guard accepts a partial whose R_net, re-read, is this many R "
        "below its tier (the mark moves between scan and guard)",
    )
    # Market state windows (1-minute bars) and the regime classifier.
    sigma_window: int = Field(60, ge=5, le=10_000)
    ts_window: int = Field(60, ge=5, le=10_000)
    ts_mid: float = Field(0.30, gt=0, lt=1, description="trend strength where p_trend = 0.5")
    ts_scale: float = Field(0.06, gt=0, lt=1, description="logistic scale of p_trend")
    trend_p: float = Field(0.5, gt=0, lt=1, description="p_trend at or above which regime = TREND")
    mr_autocorr: float = Field(
        -0.10, gt=-1, lt=0, description="lag-1 return autocorrelation at or below which regime = MR"
    )
    regime_confirm_bars: int = Field(
        5,
        ge=1,
        le=100,
        description="bars a regime flip must persist before regime_flip counts in full (1: at once); "
        "before that only the graded p_trend collapse counts",
    )
    # Time stop.
    max_hold_s: float = Field(
        7 * 86_400.0,
        gt=0,
        description="a position held this long (s, from its opening fill) is closed "
        "(time_stop): age alone can lift the kill score only to 1 − e^(−w_age)",
    )

    @model_validator(mode="after")
    def _tiers_increase(self) -> "HarvestTheta":
        if not (self.t1_r < self.t2_r < self.t3_r):
            raise ValueError(f"t1_r < t2_r < t3_r required, got {self.t1_r}, {self.t2_r}, {self.t3_r}")
        return self

    @property
    def closes_needed(self) -> int:
        """Closed bars a market state reads: the longer window + 1, and the bars back to confirm
        a regime (:func:`harvest.domain.market.market_state_from_closes`)."""
        return max(self.sigma_window, self.ts_window) + self.regime_confirm_bars

    @property
    def tier_r(self) -> tuple[float, float, float]:
        """R_net thresholds of tiers 1..3."""
        return (self.t1_r, self.t2_r, self.t3_r)


#: Fraction of the remaining qty closed by each tier (docs/design.md §2.5: 25 / 50 / 75 %).
TIER_FRACTION = {1: 0.25, 2: 0.50, 3: 0.75}


class MarketState(BaseModel):
    """Market state of one symbol at one instant (computed by :mod:`harvest.domain.market`).

    sigma: std of log returns per bar of ``interval_s`` seconds (fraction); ts: trend strength 0..1;
    p_trend: probability of a trending market 0..1; trend_dir: +1 up, -1 down, 0 flat.
    """

    model_config = ConfigDict(frozen=True)

    symbol: str
    ts_time: float = Field(description="market time the state describes (s)")
    sigma: float = Field(ge=0)
    ts: float = Field(ge=0, le=1)
    p_trend: float = Field(ge=0, le=1)
    regime: Regime
    trend_dir: int = Field(0, ge=-1, le=1)
    computed_at: float | None = Field(
        None,
        description="wall time (Unix s) the state was computed; the scan "
        "treats an older one than market_stale_s as stale (None: unknown, not aged)",
    )
    interval_s: int = Field(
        60, ge=1, le=86_400 * 7, description="seconds per bar of the closes it was computed from (sigma is per bar)"
    )
    regime_bars: int = Field(
        1,
        ge=1,
        le=10_000,
        description="bars the regime (with a TREND's direction) has held, "
        "up to theta.regime_confirm_bars; a flip counts in full only once confirmed",
    )

    @field_validator("sigma", "ts", "p_trend", "ts_time")
    @classmethod
    def _finite_fields(cls, v: float, info: ValidationInfo) -> float:
        return _finite(info.field_name or "?", v)


class Position(BaseModel):
    """One open position as harvest sees it: the venue's truth plus harvest's own book.

    qty > 0 in base units; prices in USDT; ``qty_at_open`` fixes 1R; ``harvested_tier``
    is the highest tier (0..3) already harvested in this ``epoch``; ``entry_state`` is the
    market state when harvest first saw this epoch (for the kill score).
    """

    model_config = ConfigDict(frozen=True)

    account: str = "paper"
    symbol: str
    side: Side
    qty: float = Field(gt=0)
    qty_at_open: float = Field(gt=0)
    entry_price: float = Field(gt=0)
    mark_price: float = Field(gt=0)
    leverage: float = Field(1.0, ge=1, le=125)
    initial_stop: float = Field(gt=0)
    current_stop: float | None = Field(None, gt=0)
    opened_at: float
    epoch: str = Field(min_length=1, max_length=64)
    peak_price: float | None = None
    trough_price: float | None = None
    harvested_tier: int = Field(0, ge=0, le=3)
    funding_paid: float = 0.0
    entry_state: MarketState | None = None

    @field_validator("qty", "qty_at_open", "entry_price", "mark_price", "initial_stop", "funding_paid")
    @classmethod
    def _finite_fields(cls, v: float, info: ValidationInfo) -> float:
        return _finite(info.field_name or "?", v)

    @model_validator(mode="after")
    def _stop_on_loss_side(self) -> "Position":
        if self.side is Side.LONG and self.initial_stop >= self.entry_price:
            raise ValueError("initial_stop of a LONG must be below entry_price")
        if self.side is Side.SHORT and self.initial_stop <= self.entry_price:
            raise ValueError("initial_stop of a SHORT must be above entry_price")
        return self

    @property
    def stop(self) -> float:
        """The stop in force: the ratcheted one when there is one, else the initial stop."""
        return self.current_stop if self.current_stop is not None else self.initial_stop

    @property
    def unrealized_pnl(self) -> float:
        """sign × (mark − entry) × qty, USDT."""
        return self.side.sign * (self.mark_price - self.entry_price) * self.qty


class KillScore(BaseModel):
    """Kill score (0..1) with its four components (each 0..1) and reason codes."""

    score: float
    components: dict[str, float]
    reasons: list[str]


class Proposal(BaseModel):
    """Output of :func:`harvest.domain.kernel.compute_harvest_proposal` for one position.

    ``close_fraction`` is of the remaining qty (0 when nothing closes, 1 for a full close);
    ``new_stop`` is set for PROFIT_LOCK_SL (USDT price, before tick rounding).
    """

    action: Action
    tier: int = 0
    close_fraction: float = 0.0
    new_stop: float | None = None
    r_net: float
    kill_score: float
    components: dict[str, float]
    reason_codes: list[str]


class Decision(BaseModel):
    """A proposal bound to one position epoch: the payload of the propose task.

    Small and JSON-only (it travels as a Celery task argument and shows in Flower).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no NaN/inf anywhere, components included

    account: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    symbol: str = Field(min_length=2, max_length=20, pattern=r"^[A-Z0-9]+$")
    epoch: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    side: Side
    action: Action
    tier: int = Field(0, ge=0, le=3)
    close_fraction: float = Field(0.0, ge=0, le=1)
    new_stop: float | None = Field(None, gt=0)
    r_net: float
    kill_score: float = Field(ge=0, le=1)
    components: dict[str, float] = Field({}, max_length=8)
    reason_codes: list[str] = Field([], max_length=16)
    mark_price: float = Field(gt=0)
    regime: Regime | None = None
    decided_at: float
    scanned_at: float | None = Field(
        None,
        ge=0,
        description="wall time (Unix s) of the scan tick that decided it; "
        "latency metrics only, not part of the plan's identity",
    )
    attempt: int = Field(0, ge=0, le=1_000_000, description="attempt of this decision (docs/design.md §5.6)")
    remaining_qty: float | None = Field(
        None,
        gt=0,
        description="base units still to close for a partial tier whose "
        "earlier attempt filled only in part (None: the tier's fraction)",
    )

    @field_validator("r_net", "mark_price", "decided_at", "close_fraction")
    @classmethod
    def _finite_fields(cls, v: float, info: ValidationInfo) -> float:
        return _finite(info.field_name or "?", v)

    @field_validator("reason_codes")
    @classmethod
    def _short_codes(cls, v: list[str]) -> list[str]:
        if any(len(c) > 64 for c in v):
            raise ValueError("a reason code is at most 64 characters")
        return v

    @field_validator("components")
    @classmethod
    def _short_names(cls, v: dict[str, float]) -> dict[str, float]:
        if any(len(k) > 32 for k in v):
            raise ValueError("a component name is at most 32 characters")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Decision":
        if self.action is Action.NONE:
            raise ValueError("a NONE decision makes no plan")
        if self.action in STOP_ACTIONS and self.new_stop is None:
            raise ValueError(f"{self.action.value} needs new_stop")
        if self.action in ACTION_TIER and self.tier != ACTION_TIER[self.action]:
            raise ValueError(f"{self.action.value} needs tier {ACTION_TIER[self.action]}")
        return self


class PlanState(StrEnum):
    """A plan's life-cycle state (docs/design.md §5.3; the legal moves are
    :data:`harvest.domain.plans.TRANSITIONS`). A ``str``: stored in Redis and compared as its
    name."""

    PROPOSED = "PROPOSED"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    SHADOWED = "SHADOWED"
    SUBMITTED = "SUBMITTED"
    FILLED = "FILLED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class SendState(StrEnum):
    """The outcome of a plan's current send (``Plan.send``): ``sending`` (sent or being sent;
    an accepted send stays ``sending`` until execute records it), ``accepted``, ``unknown``
    (no answer that says whether the order exists: a look-up decides) or ``not_executed``
    (known not placed: the next step may send again)."""

    SENDING = "sending"
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    NOT_EXECUTED = "not_executed"


class Plan(BaseModel):
    """A plan as stored in Redis (one hash per plan_id); see :mod:`harvest.domain.plans`.

    ``step``/``client_order_id``: the current send (``hv-<plan_id>-<step>``); a new step is
    taken only after the previous send is known not executed. ``send``: outcome of the
    current send — ``sending`` (sent or being sent; an accepted send stays ``sending`` until
    execute records it), ``accepted``, ``unknown`` or ``not_executed``."""

    plan_id: str
    account: str
    symbol: str
    epoch: str
    side: Side
    action: Action
    tier: int = 0
    close_fraction: float = 0.0
    new_stop: float | None = None
    state: PlanState
    reason: str = ""
    scanned_at: float | None = None
    acked_at: float | None = Field(None, description="wall time (Unix s) the exchange acknowledged the order")
    created_at: float
    updated_at: float
    expires_at: float
    client_order_id: str
    order_qty: str | None = None
    stop_price: str | None = None
    executed_qty: float | None = None
    avg_price: float | None = None
    realized_pnl: float | None = None
    position_qty_after: float | None = None
    error_code: int | None = None
    error_message: str | None = None
    step: int = 0
    send: SendState | None = None
    lineage: str = Field("", description="the decision's lineage id: every attempt of one decision shares it")
    attempt: int = 0
    remaining_qty: float | None = None
    decision: dict[str, Any] = {}


class VenuePosition(BaseModel):
    """A position as the venue reports it (exchange truth). qty > 0 in base units; prices in
    USDT; ``opened_at`` (s) when the venue knows it; ``stop_price`` of the working
    closePosition stop, if any; ``funding_paid`` USDT paid (negative when received);
    ``liquidation_price`` (USDT) when the venue reports one (Binance's ``liquidationPrice``,
    ``"0"`` meaning none)."""

    symbol: str
    side: Side
    qty: float
    entry_price: float
    mark_price: float
    leverage: float
    opened_at: float | None = None
    stop_price: float | None = None
    funding_paid: float = 0.0
    liquidation_price: float | None = None
