"""A plan's record: its hash as stored (``<ns>:plan:<plan_id>``, or its archived JSON copy) read
back as a :class:`harvest.domain.models.Plan` (:func:`parse_plan`), and the one log line of each
of its transitions (:func:`log_transition`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from harvest.domain.models import Plan, PlanState
from harvest.store.records import NewerVersion, check_version
from harvest.store.scripts import _PLAN_FLOATS

log = logging.getLogger("harvest.plans")


def log_transition(plan_id: str, symbol: str | None, action: str | None, frm: str, to: str, reason: str) -> None:
    """The one log line per plan transition (text: key=value; JSON: the same fields)."""
    log.info(
        "plan_transition plan_id=%s symbol=%s action=%s from=%s state=%s reason=%s",
        plan_id,
        symbol,
        action,
        frm or "-",
        to,
        reason,
        extra={
            "event": "plan_transition",
            "plan_id": plan_id,
            "symbol": symbol,
            "action": action,
            "from_state": frm or None,
            "state": to,
            "reason": reason,
        },
    )


def parse_plan(h: dict[str, str]) -> Plan:
    """A :class:`Plan` from a plan hash as stored. Raises :class:`NewerVersion` for a plan
    written by a newer version (its ``v`` above :data:`SCHEMA`'s, or a state this version
    does not know), ValueError for one that does not parse. A plan without ``v`` was
    written before versions existed and reads as before."""
    check_version("plan", h.get("v"))
    if isinstance(h.get("state"), str) and h["state"] not in PlanState.__members__:
        raise NewerVersion(f"plan state {h.get('state')!r} unknown to this version (written by a newer version?)")
    d: dict[str, Any] = dict(h)
    d.pop("v", None)
    for f in _PLAN_FLOATS:
        if f in d:
            d[f] = float(d[f])
    for f in ("tier", "error_code", "step", "attempt"):
        if f in d:
            d[f] = int(d[f])
    d["decision"] = json.loads(d.get("decision", "{}"))
    return Plan.model_validate(d)
