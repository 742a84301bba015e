"""Plan identity, lineage and life cycle (docs/design.md §5). Pure, no I/O.

This module is the one place a plan_id is made (:func:`make_plan_id`), where the legal
state transitions are defined (:data:`TRANSITIONS`; :class:`harvest.store.PlanStore`
applies them atomically in Redis), and where it is decided whether a decision that was
tried before gets another attempt (:func:`next_attempt`).

**Lineage.** One decision on one position epoch (account, symbol, epoch, action, key) is a
*lineage*; each try of it is a plan with its own plan_id, ``h(…, attempt)``. A plan that ended
without effect (FAILED, EXPIRED, CANCELED, REJECTED for a reason that can change, or a
partial fill's remainder) lets the next scan start attempt + 1 after a backoff; a rejection
that cannot change in this epoch (:data:`FINAL_REJECTIONS`) abandons the lineage, visibly.
Two scans that race compute the same next plan_id, so the dedup by plan_id still holds.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from harvest.domain.models import Action, Decision, PlanState

#: Prefix of every clientOrderId harvest sends (exchange-side idempotency key).
CLIENT_ORDER_PREFIX = "hv-"
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
#: A plan_id: 16 lowercase hex digits (:func:`make_plan_id`).
PLAN_ID_RE = re.compile(r"^[0-9a-f]{16}$")
#: harvest's clientOrderId, ``hv-<plan_id>-<step>`` (:func:`client_order_id`).
_HV_CID_RE = re.compile(rf"^{CLIENT_ORDER_PREFIX}([0-9a-f]{{16}})-(\d+)$")

#: Legal transitions: state → states it may move to. EXPIRED is reachable from every
#: non-terminal state; terminal states have no way out.
_S = PlanState
TRANSITIONS: dict[PlanState, frozenset[PlanState]] = {
    _S.PROPOSED: frozenset({_S.APPROVED, _S.REJECTED, _S.SHADOWED, _S.EXPIRED}),
    _S.APPROVED: frozenset({_S.SUBMITTED, _S.FAILED, _S.EXPIRED}),
    _S.SUBMITTED: frozenset({_S.FILLED, _S.PARTIALLY_FILLED, _S.CANCELED, _S.FAILED, _S.REJECTED, _S.EXPIRED}),
    **{
        s: frozenset()
        for s in (_S.REJECTED, _S.SHADOWED, _S.FILLED, _S.PARTIALLY_FILLED, _S.CANCELED, _S.FAILED, _S.EXPIRED)
    },
}
TERMINAL: frozenset[PlanState] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
NON_TERMINAL: frozenset[PlanState] = frozenset(TRANSITIONS) - TERMINAL


def allowed_from(target: str) -> frozenset[PlanState]:
    """States from which ``target`` may be entered. Raises KeyError for an unknown state."""
    if target not in TRANSITIONS:
        raise KeyError(f"unknown plan state {target!r}")
    return frozenset(s for s, nxt in TRANSITIONS.items() if target in nxt)


def decision_key(decision: Decision) -> str:
    """What distinguishes one decision from another on the same position epoch:
    the tier for partials, ``full`` for a full close, the new stop (rounded to 10
    significant digits, before tick rounding) for a profit lock (:func:`decision_key_of`)."""
    return decision_key_of(decision.action, decision.tier, decision.new_stop)


def decision_key_of(action: Action, tier: int, new_stop: float | None) -> str:
    """:func:`decision_key` on plain values (the replay's decisions use it too)."""
    if action is Action.PROFIT_LOCK_SL:
        return f"stop={new_stop:.10g}"
    if action is Action.FULL_CLOSE_PROPOSED:
        return "full"
    if action is Action.PROTECT:
        return "protect"
    return f"tier={tier}"


def lineage_id(account: str, symbol: str, epoch: str, action: Action | str, key: str) -> str:
    """Lineage id = first 16 hex digits of SHA-256 over (account, symbol, epoch, action, key):
    what every attempt of one decision shares. Never depends on wall-clock time."""
    raw = "|".join((account, symbol, epoch, Action(action).value, key))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def make_plan_id(account: str, symbol: str, epoch: str, action: Action | str, key: str, attempt: int = 0) -> str:
    """plan_id = first 16 hex digits of SHA-256 over (account, symbol, epoch, action, key,
    attempt).

    Deterministic: the same decision on the same position epoch at the same attempt always
    yields the same plan_id (so it executes at most once); a new tier, stop, epoch or
    attempt yields a new one. Never depends on wall-clock time.
    """
    raw = "|".join((account, symbol, epoch, Action(action).value, key, str(int(attempt))))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def plan_id_for(decision: Decision) -> str:
    """plan_id of a :class:`Decision` at its ``attempt`` (see :func:`make_plan_id`)."""
    return make_plan_id(
        decision.account, decision.symbol, decision.epoch, decision.action, decision_key(decision), decision.attempt
    )


def lineage_of(decision: Decision) -> str:
    """Lineage id of a :class:`Decision` (see :func:`lineage_id`)."""
    return lineage_id(decision.account, decision.symbol, decision.epoch, decision.action, decision_key(decision))


def client_order_id(plan_id: str, step: int = 0) -> str:
    """clientOrderId for the exchange: ``hv-<plan_id>-<step>`` (only ``[A-Za-z0-9_-]``,
    ≤ 36 chars). Raises ValueError when plan_id would break those rules."""
    cid = f"{CLIENT_ORDER_PREFIX}{plan_id}-{step}"
    if not _CLIENT_ID_RE.match(cid):
        raise ValueError(f"invalid clientOrderId {cid!r}")
    return cid


def parse_client_order_id(cid: str) -> tuple[str, int] | None:
    """``(plan_id, step)`` of a harvest clientOrderId (``hv-<plan_id>-<step>``); None for any
    other id (a strategy's own order, a manual one)."""
    m = _HV_CID_RE.match(cid)
    return (m.group(1), int(m.group(2))) if m else None


# --------------------------------------------------------------------------- lineage

#: Guard and exchange rejections that cannot change within the position epoch: the lineage
#: is abandoned (shown with its reason), never retried. Every other way a plan ends without
#: effect — FAILED, EXPIRED, CANCELED, a partial fill, a rejection that can change (the
#: position mode, a reduce-only order of a position that moved, a tier the mark fell back from,
#: the venue unavailable, the position busy) — gets the next attempt after a backoff.
FINAL_REJECTIONS: frozenset[str] = frozenset(
    {
        "symbol_not_allowed",
        "side_mismatch",
        "epoch_changed",
        "ghost_position",
        "below_min_qty",
        "tier_harvested",
        "stop_not_tighter",
        "stop_through_mark",
        "no_stop_inside_liquidation",
        "already_protected",
        "operator_cancel",
        # exchange rejections of the request itself (precision, symbol, quantity bounds), by
        # their venue-neutral reason (harvest.venues.base.FINAL_REASONS; tests/unit/test_rules.py
        # holds the two equal)
        "exchange_rejected:precision",
        "exchange_rejected:bad_symbol",
        "exchange_rejected:qty_too_small",
        "exchange_rejected:qty_too_large",
    }
)
#: Actions tried until they succeed, an operator cancels them or trading halts: a kill close
#: (until the position is flat) and the protective stop. Others give up after
#: ``max_attempts`` (``attempts_exhausted``).
PERSISTENT_ACTIONS: frozenset[Action] = frozenset({Action.FULL_CLOSE_PROPOSED, Action.PROTECT})


@dataclass(frozen=True)
class LatestPlan:
    """What the lineage's latest plan says (read from the store): its attempt, state, the
    reason of its last transition, when it last changed (Unix s), and for a close the qty
    sent (``order_qty``, base units), filled (``executed_qty``) and still owed
    (``remaining_qty``, the tier's remainder it was asked to close)."""

    attempt: int
    state: str
    reason: str
    updated_at: float
    order_qty: float | None = None
    executed_qty: float | None = None
    remaining_qty: float | None = None
    #: An operator asked for the next attempt now (``harvest plan retry``): no backoff, no bound.
    operator_retry: bool = False


@dataclass(frozen=True)
class NextAttempt:
    """What the scan does with a decision (:func:`next_attempt`).

    ``kind``: ``new`` (first attempt), ``retry`` (a further attempt now), ``repeat`` (a true
    repeat: the latest plan is in flight or took effect), ``waiting`` (ended without effect,
    backing off until ``next_at``), ``abandoned`` (``reason`` says why). ``attempt`` is the
    attempt to start (for new/retry) or the latest one; ``remaining_qty`` the base units a
    partial tier still owes (None: its fraction of the position)."""

    kind: str
    attempt: int
    reason: str = ""
    next_at: float | None = None
    remaining_qty: float | None = None

    @property
    def starts(self) -> bool:
        """Whether the scan starts a chain for it now."""
        return self.kind in ("new", "retry")


def attempt_backoff(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after attempt ``attempt`` (0-based) ended without effect before the
    next: ``min(cap, base × 2^attempt)`` (5 s doubling to 5 min by default)."""
    return min(cap_s, base_s * 2.0 ** min(attempt, 60))


def next_attempt(
    action: Action, latest: LatestPlan | None, now: float, base_s: float, cap_s: float, max_attempts: int
) -> NextAttempt:
    """Whether a decision the kernel made again gets a plan, and which attempt (rules in the
    module docstring). ``latest``: the lineage's latest plan, None when it has none; ``now``:
    Unix s; backoff :func:`attempt_backoff`; ``max_attempts`` bounds non-persistent actions."""
    if latest is None:
        return NextAttempt("new", 0)
    n = latest.attempt
    if latest.state in NON_TERMINAL:
        return NextAttempt("repeat", n, "in_flight")
    if latest.state not in PlanState.__members__:  # a state a newer version wrote: its plan, not ours to follow
        return NextAttempt("repeat", n, "newer_version")
    if latest.state == PlanState.SHADOWED:
        return NextAttempt("repeat", n, "shadowed")
    if latest.state == PlanState.FILLED and action is not Action.PROTECT:
        return NextAttempt("repeat", n, "done")
    remaining = latest.remaining_qty
    if latest.state == PlanState.PARTIALLY_FILLED and latest.order_qty and latest.executed_qty is not None:
        left = latest.order_qty - latest.executed_qty
        remaining = left if left > 0 else None
    if latest.operator_retry:  # asked for by an operator, recorded with who: now, whatever the bounds
        return NextAttempt("retry", n + 1, "operator_retry", remaining_qty=remaining)
    if latest.state == PlanState.REJECTED and latest.reason in FINAL_REJECTIONS:
        return NextAttempt("abandoned", n, latest.reason)
    # Ended without (full) effect; or a PROTECT whose stop is gone again (the decision recurs).
    if action not in PERSISTENT_ACTIONS and n + 1 >= max_attempts:
        return NextAttempt("abandoned", n, "attempts_exhausted")
    due = latest.updated_at + attempt_backoff(n, base_s, cap_s)
    if now < due:
        return NextAttempt("waiting", n, latest.reason or latest.state.lower(), next_at=due, remaining_qty=remaining)
    return NextAttempt("retry", n + 1, latest.reason or latest.state.lower(), remaining_qty=remaining)


@dataclass(frozen=True)
class NewPlan:
    """A plan about to be created (:func:`new_plan`): ``record`` is the plan hash's fields as
    :meth:`harvest.store.PlanStore.create` takes them (state PROPOSED is set there), ``data``
    the decision's figures recorded with the PROPOSED transition."""

    plan_id: str
    record: dict[str, Any]
    data: dict[str, Any]


def new_plan(d: Decision, now: float, ttl_s: float) -> NewPlan:
    """THE way a decision becomes a plan (propose, the on-demand chains and the tests use it):
    plan_id :func:`plan_id_for` ``d`` (never from time), lineage :func:`lineage_of`, created
    ``now`` (Unix s), expiring ``now + ttl_s`` (s), clientOrderId of send step 0, and the
    decision itself as JSON. ``scanned_at`` is capped at ``now`` (a clock ahead of this one
    cannot make a latency negative). Pure."""
    pid = plan_id_for(d)
    record: dict[str, Any] = {
        "plan_id": pid,
        "lineage": lineage_of(d),
        "attempt": d.attempt,
        "remaining_qty": d.remaining_qty,
        "account": d.account,
        "symbol": d.symbol,
        "epoch": d.epoch,
        "side": d.side,
        "action": d.action,
        "tier": d.tier,
        "close_fraction": d.close_fraction,
        "new_stop": d.new_stop,
        "scanned_at": None if d.scanned_at is None else min(d.scanned_at, now),
        "created_at": now,
        "expires_at": now + ttl_s,
        "client_order_id": client_order_id(pid),
        "decision": d.model_dump(mode="json"),
    }
    data = {
        "r_net": d.r_net,
        "kill_score": d.kill_score,
        "components": d.components,
        "mark_price": d.mark_price,
        "regime": d.regime.value if d.regime else None,
        "reason_codes": d.reason_codes,
        "epoch": d.epoch,
        "attempt": d.attempt,
        "remaining_qty": d.remaining_qty,
    }
    return NewPlan(pid, record, data)
