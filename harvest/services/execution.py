"""Resolving a sent order from exchange truth (the service behind stage 5, confirm, the sweeper
and reconciliation): look the order up by clientOrderId and end its plan when the outcome is
known; nothing is re-sent blind."""

from __future__ import annotations

import time
from typing import Callable

from harvest.domain.models import STOP_ACTIONS, Plan, PlanState, SendState
from harvest.domain.stream_events import conclusive
from harvest.services.runtime import Runtime
from harvest.store.streams import StreamCache
from harvest.venues.base import OrderResult, VenueError, VenueReason

#: :func:`resolve_submitted`'s answer while the order's outcome is not known yet.
PENDING = "pending"

#: An order's stream events as read beside its plan: ``(clientOrderId, folded events or None,
#: whether harvest streams is alive)`` (:func:`harvest.store.streams.streamed_order_of`).
Streamed = tuple[str, dict | None, bool]

#: Starts the send of step ``step`` of a plan known not placed: ``(plan_id, step, symbol,
#: action) -> None`` (:func:`workflows.start_resend`; passed in, since services import no canvas).
Resend = Callable[[str, int, str, str], None]


def resolve_submitted(
    rt: Runtime,
    plan: Plan,
    final: bool,
    resend: Resend | None = None,
    wait_for_stream: bool = False,
    streamed: Streamed | None = None,
) -> str:
    """Look up a SUBMITTED plan's order by clientOrderId and end the plan when its outcome is
    known. ``final`` (at the TTL): an order that does not exist ends EXPIRED — it is never
    re-sent; a look-up that still fails one more TTL later ends EXPIRED ``lookup_failed``.
    Not final, an order proved not placed is sent again as the next step through ``resend``
    while attempts and the TTL allow (``"resent"``); without ``resend`` it is left to a caller
    that has one (``"pending"``). Returns the state written, ``"resent"`` or ``"pending"``.
    The order is looked up on the plan's own account (``pending`` for an account no longer
    configured, counted ``unknown_account``: an operator resolves it).

    While ``harvest streams`` holds the account, the order's own stream events are read first
    (:func:`streamed_order`): when they are its last word, no REST look-up is made (counted
    ``confirm:from_stream``). ``wait_for_stream``: when they are not (yet), return
    ``"pending"`` rather than look up by REST (confirm, just after the send, gives the events
    a moment to arrive). ``streamed``: the order's events already read (confirm reads them
    with the plan); used when they are of the plan's current clientOrderId."""
    try:
        rt = rt.for_account(plan.account)
    except KeyError:
        rt.plans.count("unknown_account")
        return PENDING
    if streamed is not None and streamed[0] == plan.client_order_id:
        o, held = _order_result(plan, streamed[1]), streamed[2]
    else:
        o, held = streamed_order(rt, plan)
    vp, position_read = None, False
    if o is not None:
        rt.plans.count("confirm:from_stream")
    elif held and wait_for_stream and not final:
        return PENDING
    else:
        try:
            o, vp, position_read = rt.venue.order_and_position(
                plan.symbol, plan.client_order_id, conditional=plan.action in STOP_ACTIONS
            )
        except VenueError as e:
            return _lookup_failed(rt, plan, final, resend, e)
    return _resolve(rt, plan, final, o, vp, position_read)


def streamed_order(rt: Runtime, plan: Plan) -> tuple[OrderResult | None, bool]:
    """The plan's order as the account's user data stream told it (``harvest streams``; see
    :meth:`harvest.store.streams.StreamCache.order`) when that is its last word
    (:func:`harvest.domain.stream_events.conclusive`: a final status with every trade seen),
    else None (look it up by REST); and whether ``harvest streams`` is alive (one round trip).
    ``rt``: the plan's account's runtime."""
    d, held = StreamCache(rt.r, rt.settings.namespace, rt.settings.account).order(plan.client_order_id)
    return _order_result(plan, d), held


def _order_result(plan: Plan, d: dict | None) -> OrderResult | None:
    if d is None or not conclusive(d) or d["symbol"] != plan.symbol:
        return None
    if d["kind"] == "algo":
        if plan.action not in STOP_ACTIONS:
            return None
        status = {"FINISHED": "FILLED", "TRIGGERED": "FILLED"}.get(d["status"], d["status"])
        return OrderResult(
            symbol=d["symbol"],
            client_order_id=plan.client_order_id,
            order_id=0,
            side=plan.side.close_order_side,
            type="STOP_MARKET",
            status=status,
            algo=True,
            stop_price=d.get("stop_price"),
        )
    if plan.action in STOP_ACTIONS:
        return None
    return OrderResult(
        symbol=d["symbol"],
        client_order_id=plan.client_order_id,
        order_id=int(d.get("order_id") or 0),
        side=d.get("side") or plan.side.close_order_side,
        type=d.get("type") or "MARKET",
        status=d["status"],
        executed_qty=d["cum_qty"],
        avg_price=d["avg_price"],
        realized_pnl=d["realized"],
        commission=d["commission"],
    )


def _lookup_failed(rt: Runtime, plan: Plan, final: bool, resend: Resend | None, e: VenueError) -> str:
    """:func:`resolve_submitted` when the REST look-up raised ``e``."""
    if e.reason is not VenueReason.ORDER_NOT_FOUND:
        # The look-up itself failed: try again — but not forever. A TTL past the plan's
        # own without one readable answer ends it EXPIRED with the error recorded (no
        # re-send: an operator reconciles the order by its clientOrderId).
        if final and time.time() >= plan.expires_at + rt.settings.plan_ttl_s:
            rt.plans.transition(
                plan.plan_id,
                PlanState.EXPIRED,
                "lookup_failed",
                data={"code": e.code, "message": e.message, "client_order_id": plan.client_order_id},
                fields={"error_code": e.code, "error_message": e.message[:500]},
            )
            return PlanState.EXPIRED
        return PENDING
    if plan.send in (SendState.UNKNOWN, SendState.NOT_EXECUTED):
        # Known not placed. Send again as the next step if attempts and time allow.
        rt.plans.mark_send(plan.plan_id, plan.step, SendState.NOT_EXECUTED, {"code": e.code, "looked_up": True})
        nxt = plan.step + 1
        if not final and nxt < rt.settings.max_send_attempts and time.time() < plan.expires_at:
            if resend is None:
                return PENDING
            resend(plan.plan_id, nxt, plan.symbol, plan.action.value)
            return "resent"
        rt.plans.transition(
            plan.plan_id,
            PlanState.FAILED,
            "not_placed",
            data={"code": e.code, "step": plan.step},
            fields={"error_code": e.code, "error_message": e.message},
        )
        return PlanState.FAILED
    if final:
        rt.plans.transition(plan.plan_id, PlanState.EXPIRED, "order_not_found_at_ttl", data={"code": e.code})
        return PlanState.EXPIRED
    return PENDING


def _resolve(rt: Runtime, plan: Plan, final: bool, o: OrderResult, vp, position_read: bool) -> str:
    """:func:`resolve_submitted` with the order read (REST or stream): end the plan by it."""
    if plan.action in STOP_ACTIONS:
        if o.status in ("NEW", "FILLED"):
            to, reason = PlanState.FILLED, "stop_working"
        elif o.status in ("CANCELED", "EXPIRED"):
            to, reason = PlanState.CANCELED, f"stop_{o.status.lower()}"
        else:
            to, reason = PlanState.REJECTED, "stop_rejected"
    elif o.status == "FILLED":
        to, reason = PlanState.FILLED, "order_filled"
    elif o.status in ("NEW", "PARTIALLY_FILLED") and not final:
        return PENDING
    elif o.executed_qty > 0:
        to, reason = PlanState.PARTIALLY_FILLED, f"order_{o.status.lower()}"
    elif o.status == "REJECTED":
        to, reason = PlanState.REJECTED, "order_rejected"
    else:
        to, reason = PlanState.CANCELED, f"order_{o.status.lower()}"
    fields: dict = {
        "executed_qty": o.executed_qty,
        "avg_price": o.avg_price,
        "order_status": o.status,
        "realized_pnl": o.realized_pnl - o.commission,
        "commission": o.commission,
    }
    if position_read:  # the order's outcome is known; the position size is only informative
        fields["position_qty_after"] = vp.qty if vp is not None else 0.0
    book, fill = None, None
    if to == PlanState.FILLED:  # the book follows only if the state moves (same script)
        # A tier is harvested only when its whole quantity filled; a partial fill's remainder
        # is the decision's next attempt (harvest.domain.plans.next_attempt).
        book = {"tier": plan.tier or None}
        if plan.action in STOP_ACTIONS and o.stop_price is not None:
            book["set"] = {"current_stop": o.stop_price}
    if to in (PlanState.FILLED, PlanState.PARTIALLY_FILLED):
        fill = (plan.scanned_at if plan.scanned_at is not None else plan.created_at, plan.action.value)
    rt.plans.transition(plan.plan_id, to, reason, data=fields, fields=fields, book=book, fill=fill)
    return to
