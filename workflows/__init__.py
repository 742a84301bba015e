"""Canvases of the pipeline (Celery chains), built from task names so that this package
imports no task module.

* :func:`action_chain` — ``propose → guard → execute → confirm`` for one decision; the beat
  scan starts one per position that needs action.
* :func:`full_chain` — ``evaluate → propose → guard → execute → confirm`` for one symbol, on
  demand or from an event.
* :func:`resend_chain` — ``execute(step) → confirm`` for a plan whose last send a look-up
  proved was not placed.

Every task of a chain carries ``expires`` = the plan TTL: a chain that sat in a queue past
it is dropped by the worker unexecuted (the sweeper then ends its plan EXPIRED).
"""

from __future__ import annotations

from celery import chain
from celery.canvas import Signature

from tasks.app import app, settings

_AFTER_PROPOSE = ("harvest.guard", "harvest.execute", "harvest.confirm")


def _sig(name: str, *args) -> Signature:
    return app.signature(name, args=args, expires=settings.plan_ttl_s)


def action_chain(decision: dict) -> Signature:
    """``propose(decision) | guard | execute | confirm``. decision: a Decision as a JSON dict."""
    return chain(_sig("harvest.propose", decision), *(_sig(n) for n in _AFTER_PROPOSE))


def full_chain(symbol: str) -> Signature:
    """``evaluate({"symbol": symbol}) | propose | guard | execute | confirm``."""
    return chain(_sig("harvest.evaluate", {"symbol": symbol}), _sig("harvest.propose"),
                 *(_sig(n) for n in _AFTER_PROPOSE))


def resend_chain(plan_id: str, step: int) -> Signature:
    """``execute({"plan_id"}, step=step) | confirm``: send step ``step`` of a SUBMITTED plan
    whose previous send was proved not placed (execute claims the step atomically)."""
    return chain(app.signature("harvest.execute", args=({"plan_id": plan_id},), kwargs={"step": step},
                               expires=settings.plan_ttl_s), _sig("harvest.confirm"))
