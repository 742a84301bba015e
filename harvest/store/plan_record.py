"""A plan's record: its hash as stored (``<ns>:plan:<plan_id>``, or its archived JSON copy) read
back as a :class:`harvest.domain.models.Plan` (:func:`parse_plan`), and the one log line of each
of its transitions (:func:`log_transition`); its transitions read back from the results
stream (:func:`plan_history`)."""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable

import redis

from harvest.domain.models import Plan, PlanState
from harvest.store.connect import sync
from harvest.store.keys import Keys
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


def plan_history(r: redis.Redis, k: Keys, plan_id: str, sends: bool = False) -> list[dict[str, str]]:
    """State transitions of one plan from the results stream, oldest first (``sends``:
    also the send records of a SUBMITTED plan, ``from == to``, reason ``send_*`` /
    ``resend_step_*`` / ``operator_retry``). Read by plan, whatever the stream's length:
    the plan's hash (or its archived copy) lists its entries' ids (``log``, written by the
    Lua scripts that append them, :data:`harvest.store.scripts.LEDGER_LUA`), one ``XRANGE``
    each in one round trip; entries trimmed off the stream are gone. A plan written before
    the index existed is found by reading the whole stream in pages."""
    ids = sync(r.hget(k.plan(plan_id), "log"))
    if ids is None:
        raw = sync(r.hget(k.archive, plan_id))
        try:
            ids = json.loads(raw).get("log") if raw else None
        except (ValueError, AttributeError):
            ids = None
    if ids:
        p = r.pipeline(transaction=False)
        for xid in str(ids).split(","):
            p.xrange(k.results, xid, xid)
        rows = [f for got in p.execute() for _, f in got]
    else:
        rows = [f for f in _scan_results(r, k) if f.get("plan_id") == plan_id]
    return [f for f in rows if f.get("plan_id") == plan_id and (sends or f.get("from") != f.get("to"))]


def _scan_results(r: redis.Redis, k: Keys, page: int = 10_000) -> Iterable[dict[str, str]]:
    """Every entry of the results stream, oldest first, a page per round trip."""
    start = "-"
    while True:
        got = sync(r.xrange(k.results, start, "+", count=page))
        yield from (f for _, f in got)
        if len(got) < page:
            return
        start = "(" + got[-1][0]
