"""Stage 4, execute: the one place harvest sends an order.

The plan moves APPROVED → SUBMITTED by compare-and-set *before* the first send, so of any
number of deliveries of this task exactly one sends. A redelivery that finds the plan
SUBMITTED sends nothing and hands over to confirm, which looks the order up by its
clientOrderId (derived from the plan_id). Through Sentinel the SUBMITTED (and a re-send's
claim) must reach ``HARVEST_REDIS_MIN_REPLICAS`` replicas first (Redis ``WAIT``): a failover
then cannot lose the record of a send; when they do not acknowledge it in time nothing is
sent (``state_not_replicated``).

What an exchange answer does to the plan (error classes of :class:`harvest.venues.base.VenueError`):

* accepted → the ref handed to confirm carries the step and ``acked_at``; confirm records
  ``send=accepted`` in the round trip that reads the plan, then reads the fill;
* unknown (read timeout, 503 "Unknown error…", -1006/-1007, a crash of the connection) →
  ``send=unknown``; confirm looks the order up and only an ORDER_NOT_FOUND answer (Binance
  -2013: "not placed") lets a next step send again;
* not executed (429/418, 503 "Service Unavailable." / "Internal error…", a connection that
  never reached the server, the local weight budget) → ``send=not_executed`` and this task
  retries itself with backoff and jitter (honouring ``Retry-After``) as the next step, under
  the clientOrderId ``hv-<plan_id>-<step>``, at most ``max_send_attempts`` sends and never past
  the plan's TTL; then the plan ends FAILED with the exchange's code and message;
* rejected (-1111, -2022, -4164, -2019, -4003/-4004/-4005, -1021 after a resync, …) → the
  plan ends REJECTED, reason ``exchange_rejected:<VenueReason>`` (``precision``,
  ``reduce_only_rejected``, …: venue-neutral) with the exchange's code and message in its
  record (``error_code``, ``error_message``); no retry.

No exception escapes to crash the worker.
"""

from __future__ import annotations

import logging
import random
import time

from harvest.domain.models import STOP_ACTIONS, Plan, PlanState, SendState
from harvest.domain.plans import client_order_id
from harvest.services.recovery import durable_cached
from harvest.services.runtime import Runtime
from harvest.store.plans import NOT_REPLICATED
from harvest.venues.base import VenueError
from tasks.app import app
from tasks.common import NewerPlan, checked_ref, contract

log = logging.getLogger("harvest")


def retry_delay(step: int, base_s: float, cap_s: float, retry_after: float | None) -> float:
    """Delay (s) before send ``step + 1``: ``max(Retry-After, min(cap, base × 2^step))``
    with up to 25 % added jitter (so a fleet does not retry in lock-step)."""
    return max(retry_after or 0.0, min(cap_s, base_s * 2**step)) * random.uniform(1.0, 1.25)


def _send(rt: Runtime, plan: Plan, cid: str) -> None:
    side = plan.side.close_order_side
    if plan.action in STOP_ACTIONS:
        rt.venue.move_stop(plan.symbol, side, plan.stop_price or "", cid)
    else:
        rt.venue.close_market(plan.symbol, side, plan.order_qty or "", cid)


def _end(rt: Runtime, plan: Plan, to: str, reason: str, e: VenueError) -> None:
    rt.plans.count(f"exchange_{e.kind}:{e.code}")
    rt.plans.transition(
        plan.plan_id,
        to,
        reason,
        data={"code": e.code, "message": e.message, "step": plan.step},
        fields={"error_code": e.code, "error_message": e.message},
    )


def _state_refusal(rt: Runtime) -> str | None:
    """``state_not_durable`` when the state Redis keeps nothing across a restart and the
    deployment did not say it is throw-away (:func:`harvest.services.recovery.durable_cached`), else None."""
    if rt.settings.throwaway_state:
        return None
    ok, why = durable_cached(rt.r)
    if ok:
        return None
    log.error(
        "no order sent: the state Redis is not durable (%s); run it with AOF (appendfsync everysec) "
        "or set HARVEST_THROWAWAY_STATE=true for a throw-away setup",
        why,
    )
    return "state_not_durable"


@app.task(bind=True, **contract("harvest.execute", acks_late=True, max_retries=None))
def execute(self, ref: dict | None, step: int = 0) -> dict | None:
    """ref: ``{"plan_id": …}`` of an APPROVED plan (``step`` > 0: a re-send after the
    previous send was known not executed). Returns the ref for confirm — ``{"plan_id", "step",
    "acked_at"}`` after an accepted send, ``{"plan_id"}`` otherwise — or None."""
    rt = self.rt
    if not isinstance(step, int) or step < 0:
        self.reject({"ref": ref, "step": step}, "step must be an int >= 0")
        return None
    if step == 0:
        # APPROVED → SUBMITTED before the send; the same round trip reads the plan back, and
        # applies only while the state is known whole (harvest.services.recovery).
        pid = checked_ref(rt, "execute", ref)
        if pid is None:
            return None
        refusal = _state_refusal(rt)
        if refusal is not None:
            rt.plans.count(f"execute:{refusal}")
            rt.plans.transition(pid, PlanState.FAILED, refusal)
            return None
        _, before, plan = rt.plans.transition_and_get(
            pid,
            PlanState.SUBMITTED,
            "order_sent",
            fields={"step": 0, "send": SendState.SENDING},
            require_recovered=True,
            replicas=rt.settings.min_replicas,
            replica_wait_s=rt.settings.redis_replica_wait_s,
        )
        if before == NOT_REPLICATED:  # a failover could lose the SUBMITTED: nothing is sent on it
            rt.plans.count("execute:state_not_replicated")
            rt.plans.transition(pid, PlanState.FAILED, "state_not_replicated")
            return None
        if before == "STATE_NOT_RECOVERED":  # Redis lost its state: nothing is sent before recovery
            rt.plans.count("execute:state_not_recovered")
            rt.plans.transition(pid, PlanState.FAILED, "state_not_recovered")
            log.warning("plan %s not sent: the state is not recovered from the exchange yet", pid)
            return None
        if before == "HALTED":  # an operator halted trading after the guard approved it
            rt.plans.count("execute:halted")
            rt.plans.transition(pid, PlanState.FAILED, "halted")
            log.warning("plan %s not sent: trading is halted", pid)
            return None
        if plan is None:
            if before == "NEWER_VERSION" or (before and before not in PlanState.__members__):
                # written by a newer version (its v, or a state this one does not know): not ours
                rt.plans.count("newer_plan:execute")
                raise NewerPlan(f"plan {pid} is {before}: written by a newer version")
            if before == "":
                self.reject(ref, "unknown plan_id")
            # SUBMITTED already: a redelivery, never re-sent (confirm resolves it).
            return {"plan_id": pid} if before == PlanState.SUBMITTED else None
        cid = plan.client_order_id
        acct_rt = self.for_account(plan.account, ref)
        if acct_rt is None:  # SUBMITTED by this call, nothing sent: it ends here
            rt.plans.transition(pid, PlanState.FAILED, "unknown_account")
            return None
        rt = acct_rt
    else:
        plan = self.plan(ref)
        if plan is None:
            return None
        pid = plan.plan_id
        cid = client_order_id(pid, step)
        acct_rt = self.for_account(plan.account, ref)
        if acct_rt is None:
            return None  # its sweep resolves it by exchange truth, never by a send
        rt = acct_rt
        claim = rt.plans.claim_resend(pid, step, cid, rt.settings.min_replicas, rt.settings.redis_replica_wait_s)
        if claim == "not_claimed":
            return {"plan_id": pid} if plan.state == PlanState.SUBMITTED else None
        if claim == NOT_REPLICATED:  # as a send not executed: the next step claims again
            rt.plans.count("execute:state_not_replicated")
            rt.plans.mark_send(pid, step, SendState.NOT_EXECUTED, {"reason": "state_not_replicated"})
            delay = retry_delay(step, rt.settings.retry_backoff_s, rt.settings.retry_backoff_max_s, None)
            if step + 1 < rt.settings.max_send_attempts and time.time() + delay < plan.expires_at:
                raise self.retry(args=(ref,), kwargs={"step": step + 1}, countdown=delay)
            rt.plans.transition(pid, PlanState.FAILED, "state_not_replicated")
            return None
    plan = plan.model_copy(update={"step": step, "client_order_id": cid})
    try:
        _send(rt, plan, cid)
    except VenueError as e:
        if e.unknown:
            rt.plans.mark_send(pid, step, SendState.UNKNOWN, {"code": e.code, "message": e.message})
            log.warning("plan %s step %d: order outcome unknown (%s); confirm will look it up", pid, step, e)
            return {"plan_id": pid}
        if e.retryable:
            rt.plans.mark_send(
                pid,
                step,
                SendState.NOT_EXECUTED,
                {"code": e.code, "message": e.message},
                fields={"error_code": e.code, "error_message": e.message},
            )
            delay = retry_delay(step, rt.settings.retry_backoff_s, rt.settings.retry_backoff_max_s, e.retry_after)
            if step + 1 < rt.settings.max_send_attempts and time.time() + delay < plan.expires_at:
                log.info("plan %s step %d not executed (%s); next send in %.2f s", pid, step, e, delay)
                raise self.retry(args=(ref,), kwargs={"step": step + 1}, countdown=delay) from e
            _end(rt, plan, PlanState.FAILED, f"not_executed:{e.code}", e)
            return None
        _end(rt, plan, PlanState.REJECTED, f"exchange_rejected:{e.reason.value}", e)
        return None
    except Exception as e:  # connection loss etc.: the order may or may not exist
        rt.plans.mark_send(pid, step, SendState.UNKNOWN, {"error": type(e).__name__})
        log.exception("plan %s: order outcome unknown (%s); confirm will look it up", pid, type(e).__name__)
        return {"plan_id": pid}
    # Accepted: confirm records it (send "accepted", acked_at) with its plan read, one round
    # trip instead of one here and one there. Until then the plan shows send "sending", as
    # after a crash between the send and this line; confirm resolves both by clientOrderId.
    return {"plan_id": pid, "step": step, "acked_at": time.time()}
