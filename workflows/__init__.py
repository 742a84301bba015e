"""Canvases of the pipeline (Celery chains), built from task names on the current Celery app
(the ``tasks`` app in a worker, or whatever app the caller passes), so that this package
imports no task module and ``from workflows import full_chain`` works on its own.

* :func:`action_chain` — ``propose → guard → execute → confirm`` for one decision; the beat
  scan starts one per position that needs action.
* :func:`full_chain` — ``evaluate → propose → guard → execute → confirm`` for one symbol, on
  demand or from an event.
* :func:`resend_chain` — ``execute(step) → confirm`` for a plan whose last send a look-up
  proved was not placed.

Every task of a chain carries ``expires`` = the plan TTL: a chain that sat in a queue past
it is dropped by the worker unexecuted (the sweeper then ends its plan EXPIRED).

Every task also carries ``argsrepr`` — ``plan_id=… symbol=… action=…`` — which Celery puts in
its task events in place of the raw arguments, so Flower lists each stage by plan_id, symbol
and action. Task arguments never hold secrets (only decisions and ``{"plan_id"}`` refs).
"""

from __future__ import annotations

from celery import Celery, chain, current_app
from celery.canvas import Signature

from settings import get_settings

_AFTER_PROPOSE = ("harvest.guard", "harvest.execute", "harvest.confirm")


def label(**fields) -> str:
    """The ``argsrepr`` Flower shows: ``plan_id=… symbol=… action=…`` (None fields left out)."""
    return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)


def _sig(name: str, *args, argsrepr: str, app: Celery | None = None, **kwargs) -> Signature:
    """A signature of task ``name`` on ``app`` (default: the current app), expiring after the plan TTL."""
    return (app or current_app).signature(
        name, args=args, kwargs=kwargs, expires=get_settings().plan_ttl_s, argsrepr=argsrepr
    )


def action_chain(decision: dict, plan_id: str | None = None) -> Signature:
    """``propose(decision) | guard | execute | confirm``. decision: a Decision as a JSON dict;
    plan_id: its plan_id (:func:`harvest.domain.plans.plan_id_for`), shown in Flower."""
    shown = label(plan_id=plan_id, symbol=decision.get("symbol"), action=decision.get("action"))
    return chain(_sig("harvest.propose", decision, argsrepr=shown), *(_sig(n, argsrepr=shown) for n in _AFTER_PROPOSE))


def full_chain(symbol: str, app: Celery | None = None, account: str | None = None) -> Signature:
    """``evaluate({"symbol": symbol[, "account": account]}) | propose | guard | execute | confirm``
    on ``app`` (default: the current app; a client app publishes to another deployment's
    queues); ``account`` None: the deployment's first."""
    shown = label(account=account, symbol=symbol)
    ref = {"symbol": symbol, **({"account": account} if account else {})}
    return chain(
        _sig("harvest.evaluate", ref, argsrepr=shown, app=app),
        _sig("harvest.propose", argsrepr=shown, app=app),
        *(_sig(n, argsrepr=shown, app=app) for n in _AFTER_PROPOSE),
    )


def resend_chain(plan_id: str, step: int, symbol: str | None = None, action: str | None = None) -> Signature:
    """``execute({"plan_id"}, step=step) | confirm``: send step ``step`` of a SUBMITTED plan
    whose previous send was proved not placed (execute claims the step atomically)."""
    shown = label(plan_id=plan_id, symbol=symbol, action=action, step=step)
    return chain(
        _sig("harvest.execute", {"plan_id": plan_id}, argsrepr=shown, step=step),
        _sig("harvest.confirm", argsrepr=shown),
    )


def start_resend(plan_id: str, step: int, symbol: str, action: str) -> None:
    """Publish :func:`resend_chain` (the :data:`harvest.services.execution.Resend` that tasks and
    operator tools hand to the services)."""
    resend_chain(plan_id, step, symbol, action).apply_async()
