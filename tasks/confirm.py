"""Stage 5, confirm: read the order's final state and the position's new size back from the
venue (exchange truth) and end the plan: FILLED, PARTIALLY_FILLED, CANCELED, REJECTED, or —
when the order is still unknown at the plan's TTL — EXPIRED. Realized PnL (net of the
commission, USDT) is recorded on the plan; a filled tier is marked harvested in the book.

While ``harvest streams`` holds the account, the order's stream events (ORDER_TRADE_UPDATE,
ALGO_UPDATE) resolve it without a REST look-up when they are its last word; confirm waits up
to :data:`STREAM_CONFIRM_WAIT_S` after the send for them, then reads REST.

After an unknown send outcome the look-up decides: the order exists → its state; reason
ORDER_NOT_FOUND (Binance's -2013 "Order does not exist.") → it was not placed, and a new send step goes through execute
(:func:`workflows.resend_chain`) while attempts and TTL allow. Nothing is re-sent blind.
"""

from __future__ import annotations

import time
from typing import Any

from harvest.domain.models import PlanState, SendState
from harvest.services.execution import PENDING, resolve_submitted
from tasks.app import app
from tasks.common import contract
from workflows import start_resend

#: How long after an accepted send confirm waits for the order's stream events (s), and how
#: often it looks meanwhile; then it looks the order up by REST.
STREAM_CONFIRM_WAIT_S = 1.0
STREAM_CONFIRM_POLL_S = 0.1


@app.task(bind=True, **contract("harvest.confirm", acks_late=True, max_retries=None))
def confirm(self: Any, ref: dict[str, Any] | None) -> str | None:
    """ref: ``{"plan_id": …}``, with ``"step"`` and ``"acked_at"`` when execute's send was
    accepted (execute recorded it; the order's stream events are read with the plan:
    :func:`tasks.common.load_acknowledged_plan`).
    Returns the terminal state written, or None when the plan is not SUBMITTED; retries every
    ``confirm_retry_s`` while the outcome is pending, until the plan's TTL, when the look-up
    is final."""
    rt = self.rt
    plan, streamed = self.acknowledged_plan(ref)
    if plan is None or plan.state != PlanState.SUBMITTED:
        return None
    if plan.send == SendState.NOT_EXECUTED:
        return None  # execute's own retry owns the next send
    final = time.time() >= plan.expires_at
    acked_at = (ref or {}).get("acked_at") if isinstance(ref, dict) else None
    # Just after an accepted send, the fill's own stream events (harvest streams) usually
    # arrive within tens of ms: wait for them a moment rather than spend REST weight.
    fresh = isinstance(acked_at, (int, float)) and time.time() - acked_at < STREAM_CONFIRM_WAIT_S
    out = resolve_submitted(rt, plan, final, resend=start_resend, wait_for_stream=fresh, streamed=streamed)
    if out == PENDING:
        raise self.retry(countdown=STREAM_CONFIRM_POLL_S if fresh else rt.settings.confirm_retry_s)
    return out
