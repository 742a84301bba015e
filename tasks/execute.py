"""Stage 4, execute: the one place harvest sends an order.

The plan moves APPROVED → SUBMITTED by compare-and-set *before* the order is sent, so of any
number of deliveries of this task exactly one sends. A redelivery that finds the plan
SUBMITTED sends nothing and hands over to confirm, which looks the order up by its
clientOrderId (derived from the plan_id). An exchange rejection ends the plan REJECTED with
the exchange's code and message; an unknown outcome (timeout, 503 unknown) leaves it
SUBMITTED for confirm. No exception escapes to crash the worker.
"""

from __future__ import annotations

import logging

from harvest.models import Action
from harvest.runtime import get_runtime
from harvest.venue import VenueError
from tasks.app import app
from tasks.common import load_plan

log = logging.getLogger("harvest")


@app.task(name="harvest.execute", acks_late=True)
def execute(ref: dict | None) -> dict | None:
    """ref: ``{"plan_id": …}`` of an APPROVED plan. Returns the ref for confirm, or None."""
    rt = get_runtime()
    plan = load_plan(rt, "execute", ref)
    if plan is None:
        return None
    pid = plan.plan_id
    if plan.state == "SUBMITTED":
        return {"plan_id": pid}  # a redelivery: never re-send; confirm resolves it
    if plan.state != "APPROVED":
        return None
    ok, before = rt.plans.transition(pid, "SUBMITTED", "order_sent", fields={"step": 0},
                                     account=plan.account, symbol=plan.symbol)
    if not ok:
        return {"plan_id": pid} if before == "SUBMITTED" else None
    order_side = plan.side.close_order_side
    try:
        if plan.action is Action.PROFIT_LOCK_SL:
            rt.venue.move_stop(plan.symbol, order_side, plan.stop_price or "", plan.client_order_id)
        else:
            rt.venue.close_market(plan.symbol, order_side, plan.order_qty or "", plan.client_order_id)
    except VenueError as e:
        if e.unknown:
            log.warning("plan %s: order outcome unknown (%s); confirm will look it up", pid, e)
            return {"plan_id": pid}
        rt.plans.count(f"exchange_rejected:{e.code}")
        rt.plans.transition(pid, "REJECTED", f"exchange_rejected:{e.code}",
                            data={"code": e.code, "message": e.message},
                            fields={"error_code": e.code, "error_message": e.message},
                            account=plan.account, symbol=plan.symbol)
        return None
    except Exception as e:  # connection loss etc.: the order may or may not exist
        log.exception("plan %s: order outcome unknown (%s); confirm will look it up", pid, type(e).__name__)
        return {"plan_id": pid}
    return {"plan_id": pid}
