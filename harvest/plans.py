"""Plan identity and life cycle (DESIGN §3). Pure, no I/O.

This module is the one place a plan_id is made (:func:`make_plan_id`) and where the legal
state transitions are defined (:data:`TRANSITIONS`); :class:`harvest.store.PlanStore`
applies them atomically in Redis.
"""

from __future__ import annotations

import hashlib
import re

from harvest.models import Action, Decision

#: Prefix of every clientOrderId harvest sends (exchange-side idempotency key).
CLIENT_ORDER_PREFIX = "hv-"
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")

#: Legal transitions: state → states it may move to. EXPIRED is reachable from every
#: non-terminal state; terminal states have no way out.
TRANSITIONS: dict[str, frozenset[str]] = {
    "PROPOSED": frozenset({"APPROVED", "REJECTED", "SHADOWED", "EXPIRED"}),
    "APPROVED": frozenset({"SUBMITTED", "FAILED", "EXPIRED"}),
    "SUBMITTED": frozenset({"FILLED", "PARTIALLY_FILLED", "CANCELED", "FAILED", "REJECTED", "EXPIRED"}),
    "REJECTED": frozenset(),
    "SHADOWED": frozenset(),
    "FILLED": frozenset(),
    "PARTIALLY_FILLED": frozenset(),
    "CANCELED": frozenset(),
    "FAILED": frozenset(),
    "EXPIRED": frozenset(),
}
TERMINAL: frozenset[str] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
NON_TERMINAL: frozenset[str] = frozenset(TRANSITIONS) - TERMINAL


def allowed_from(target: str) -> frozenset[str]:
    """States from which ``target`` may be entered. Raises KeyError for an unknown state."""
    if target not in TRANSITIONS:
        raise KeyError(f"unknown plan state {target!r}")
    return frozenset(s for s, nxt in TRANSITIONS.items() if target in nxt)


def decision_key(decision: Decision) -> str:
    """What distinguishes one decision from another on the same position epoch:
    the tier for partials, ``full`` for a full close, the new stop (rounded to 10
    significant digits, before tick rounding) for a profit lock."""
    if decision.action is Action.PROFIT_LOCK_SL:
        return f"stop={decision.new_stop:.10g}"
    if decision.action is Action.FULL_CLOSE_PROPOSED:
        return "full"
    return f"tier={decision.tier}"


def make_plan_id(account: str, symbol: str, epoch: str, action: Action | str, key: str) -> str:
    """plan_id = first 16 hex digits of SHA-256 over (account, symbol, epoch, action, key).

    Deterministic: the same decision on the same position epoch always yields the same
    plan_id (so it executes at most once); a new tier, stop or epoch yields a new one.
    Never depends on wall-clock time.
    """
    action = Action(action).value
    raw = "|".join((account, symbol, epoch, action, key))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def plan_id_for(decision: Decision) -> str:
    """plan_id of a :class:`Decision` (see :func:`make_plan_id`)."""
    return make_plan_id(decision.account, decision.symbol, decision.epoch, decision.action, decision_key(decision))


def client_order_id(plan_id: str, step: int = 0) -> str:
    """clientOrderId for the exchange: ``hv-<plan_id>-<step>`` (only ``[A-Za-z0-9_-]``,
    ≤ 36 chars). Raises ValueError when plan_id would break those rules."""
    cid = f"{CLIENT_ORDER_PREFIX}{plan_id}-{step}"
    if not _CLIENT_ID_RE.match(cid):
        raise ValueError(f"invalid clientOrderId {cid!r}")
    return cid
