"""Stage 4, execute: the one place harvest sends an order.

The plan moves APPROVED → SUBMITTED by compare-and-set *before* the first send, so of any
number of deliveries of this task exactly one sends. A redelivery that finds the plan
SUBMITTED sends nothing and hands over to confirm, which looks the order up by its
clientOrderId (derived from the plan_id). Through Sentinel the SUBMITTED (and a re-send's
claim) must reach ``HARVEST_REDIS_MIN_REPLICAS`` replicas first (Redis ``WAIT``): a failover
then cannot lose the record of a send; when they do not acknowledge it in time nothing is
sent (``state_not_replicated``).

What an exchange answer does to the plan (error classes of :class:`harvest.venues.base.VenueError`):

* accepted → ``send=accepted`` with ``acked_at`` is recorded; the ref handed to confirm
  carries the step and ``acked_at``, and confirm reads the fill;
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

No exception escapes to crash the worker. The send and its record are
:func:`harvest.services.execution.send_first` / :func:`~harvest.services.execution.send_next`;
this task decodes the message, calls one of them and acts on the :class:`SendOutcome`.
"""

from __future__ import annotations

from typing import Any

from harvest.services.execution import Send, SendOutcome, send_first, send_next
from tasks.app import app
from tasks.common import NewerPlan, checked_ref, contract


@app.task(bind=True, **contract("harvest.execute", acks_late=True, max_retries=None))
def execute(self: Any, ref: dict[str, Any] | None, step: int = 0) -> dict[str, Any] | None:
    """ref: ``{"plan_id": …}`` of an APPROVED plan (``step`` > 0: a re-send after the
    previous send was known not executed). Returns the ref for confirm — ``{"plan_id", "step",
    "acked_at"}`` after an accepted send, ``{"plan_id"}`` otherwise — or None."""
    if not isinstance(step, int) or step < 0:
        self.reject({"ref": ref, "step": step}, "step must be an int >= 0")
        return None
    out: SendOutcome
    if step == 0:
        pid = checked_ref(self.rt, "execute", ref)
        if pid is None:
            return None
        out = send_first(self.rt, pid, ref)
    else:
        plan = self.plan(ref)
        if plan is None:
            return None
        out = send_next(self.rt, plan, step, ref)
    if out.kind is Send.NEWER:
        raise NewerPlan(out.reason)
    if out.kind is Send.NOT_EXECUTED:
        raise self.retry(args=(ref,), kwargs={"step": step + 1}, countdown=out.retry_in)
    return out.ref()
