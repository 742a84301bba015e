"""Sending an order and resolving it from exchange truth: the service behind stage 4, execute
(:func:`send_first`, :func:`send_next`: the one place harvest sends an order, and records that
the exchange accepted it), and stage 5, confirm, the sweeper and reconciliation
(:func:`resolve_submitted`: look the order up by clientOrderId and end its plan when the
outcome is known; nothing is re-sent blind). Each send returns a typed :class:`SendOutcome`."""

from __future__ import annotations

import enum
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from harvest.domain.models import STOP_ACTIONS, Plan, PlanState, SendState, VenuePosition
from harvest.domain.plans import client_order_id
from harvest.domain.stream_events import conclusive
from harvest.services.recovery import durable_cached
from harvest.services.rejected import account_runtime, record_rejected
from harvest.services.runtime import Runtime
from harvest.store.plans import NOT_REPLICATED
from harvest.store.streams import StreamCache, streamed_order_of, streamed_order_reads
from harvest.venues.base import OrderResult, VenueError, VenueReason

log = logging.getLogger("harvest")

#: :func:`resolve_submitted`'s answer while the order's outcome is not known yet.
PENDING = "pending"

#: An order's stream events as read beside its plan: ``(clientOrderId, folded events or None,
#: whether harvest streams is alive)`` (:func:`harvest.store.streams.streamed_order_of`).
Streamed = tuple[str, dict[str, Any] | None, bool]

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
        rt.counters.count("unknown_account")
        return PENDING
    if streamed is not None and streamed[0] == plan.client_order_id:
        o, held = _order_result(plan, streamed[1]), streamed[2]
    else:
        o, held = streamed_order(rt, plan)
    vp, position_read = None, False
    if o is not None:
        rt.counters.count("confirm:from_stream")
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


def _order_result(plan: Plan, d: dict[str, Any] | None) -> OrderResult | None:
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


def _stop_outcome(o: OrderResult) -> tuple[PlanState, str]:
    """A stop move's end by its algo order's status: working or triggered → FILLED."""
    if o.status in ("NEW", "FILLED"):
        return PlanState.FILLED, "stop_working"
    if o.status in ("CANCELED", "EXPIRED"):
        return PlanState.CANCELED, f"stop_{o.status.lower()}"
    return PlanState.REJECTED, "stop_rejected"


def _resolve(
    rt: Runtime, plan: Plan, final: bool, o: OrderResult, vp: VenuePosition | None, position_read: bool
) -> str:
    """:func:`resolve_submitted` with the order read (REST or stream): end the plan by it."""
    if plan.action in STOP_ACTIONS:
        to, reason = _stop_outcome(o)
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
    fields: dict[str, Any] = {
        "executed_qty": o.executed_qty,
        "avg_price": o.avg_price,
        "order_status": o.status,
        "realized_pnl": o.realized_pnl - o.commission,
        "commission": o.commission,
    }
    if position_read:  # the order's outcome is known; the position size is only informative
        fields["position_qty_after"] = vp.qty if vp is not None else 0.0
    book: dict[str, Any] | None = None
    fill: tuple[float, str] | None = None
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


class Send(enum.Enum):
    """What a send step came to (:class:`SendOutcome`)."""

    SENT = "sent"  # the exchange accepted the order (recorded ``send=accepted``): confirm reads the fill
    UNKNOWN = "unknown"  # the order may or may not exist (or a redelivery found it SUBMITTED): confirm looks it up
    NOT_EXECUTED = "not_executed"  # known not placed; the next step may be sent in ``retry_in`` s
    REFUSED = "refused"  # nothing sent; the plan ended (or was never ours): ``reason``
    NEWER = "newer"  # the plan was written by a newer version: left for a newer worker


@dataclass(frozen=True)
class SendOutcome:
    """The outcome of one send step (:func:`send_first`, :func:`send_next`).

    ``plan_id`` (None when the message named no plan), ``step`` (≥ 0), ``acked_at`` (Unix s,
    when SENT), ``retry_in`` (s before send ``step + 1``, when NOT_EXECUTED), ``reason``
    (why nothing was sent, when REFUSED or NEWER; "" for a plain repeat)."""

    kind: Send
    plan_id: str | None = None
    step: int = 0
    acked_at: float | None = None
    retry_in: float = 0.0
    reason: str = ""

    def ref(self) -> dict[str, Any] | None:
        """The ref execute hands to confirm: ``{"plan_id", "step", "acked_at"}`` after an
        accepted send, ``{"plan_id"}`` when the outcome is to be looked up, else None."""
        if self.kind is Send.SENT:
            return {"plan_id": self.plan_id, "step": self.step, "acked_at": self.acked_at}
        if self.kind is Send.UNKNOWN:
            return {"plan_id": self.plan_id}
        return None


def _refused(reason: str, plan_id: str | None = None) -> SendOutcome:
    return SendOutcome(Send.REFUSED, plan_id, reason=reason)


def retry_delay(step: int, base_s: float, cap_s: float, retry_after: float | None) -> float:
    """Delay (s) before send ``step + 1``: ``max(Retry-After, min(cap, base × 2^step))``
    with up to 25 % added jitter (so a fleet does not retry in lock-step)."""
    return float(max(retry_after or 0.0, min(cap_s, base_s * 2**step)) * random.uniform(1.0, 1.25))


def state_refusal(rt: Runtime) -> str | None:
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


#: What the compare-and-set APPROVED → SUBMITTED answers instead of a state when it refused to
#: claim the send (:meth:`harvest.store.PlanStore.transition_and_get`) → the plan's end reason.
#: HALTED is :func:`harvest.domain.trading.halted` applied inside the script.
_CLAIM_REFUSALS = {
    NOT_REPLICATED: "state_not_replicated",  # a failover could lose the SUBMITTED
    "STATE_NOT_RECOVERED": "state_not_recovered",  # Redis lost its state: nothing is sent before recovery
    "HALTED": "halted",  # an operator halted trading after the guard approved it
}


def _fail(rt: Runtime, pid: str, reason: str) -> SendOutcome:
    """Nothing sent: count ``execute:<reason>``, end the plan FAILED ``reason``."""
    rt.counters.count(f"execute:{reason}")
    rt.plans.transition(pid, PlanState.FAILED, reason)
    if reason in ("state_not_recovered", "halted"):
        log.warning("plan %s not sent: %s", pid, reason)
    return _refused(reason, pid)


def _not_claimed(rt: Runtime, pid: str, before: str, payload: Any) -> SendOutcome:
    """The claim found the plan not APPROVED: newer, unknown, a redelivery or ended."""
    if before == "NEWER_VERSION" or (before and before not in PlanState.__members__):
        # written by a newer version (its v, or a state this one does not know): not ours
        rt.counters.count("newer_plan:execute")
        return SendOutcome(Send.NEWER, pid, reason=f"plan {pid} is {before}: written by a newer version")
    if before == "":
        record_rejected(rt, "execute", payload, "unknown plan_id")
        return _refused("unknown plan_id", pid)
    # SUBMITTED already: a redelivery, never re-sent (confirm resolves it).
    return SendOutcome(Send.UNKNOWN, pid) if before == PlanState.SUBMITTED else _refused("", pid)


def send_first(rt: Runtime, pid: str, payload: Any) -> SendOutcome:
    """Send step 0 of APPROVED plan ``pid`` (``payload``: the message, recorded if rejected).

    APPROVED → SUBMITTED before the send, by compare-and-set: of any number of deliveries
    exactly one sends. The same round trip reads the plan back and applies only while the
    state is known whole (:mod:`harvest.services.recovery`), trading is not HALTED, and (through
    Sentinel) the write reached ``HARVEST_REDIS_MIN_REPLICAS`` replicas; otherwise nothing is
    sent and the plan ends FAILED with the reason (as for a state Redis that is not durable)."""
    refusal = state_refusal(rt)
    if refusal is not None:
        return _fail(rt, pid, refusal)
    _, before, plan = rt.plans.transition_and_get(
        pid,
        PlanState.SUBMITTED,
        "order_sent",
        fields={"step": 0, "send": SendState.SENDING},
        require_recovered=True,
        replicas=rt.settings.min_replicas,
        replica_wait_s=rt.settings.redis_replica_wait_s,
    )
    if before in _CLAIM_REFUSALS:
        return _fail(rt, pid, _CLAIM_REFUSALS[before])
    if plan is None:
        return _not_claimed(rt, pid, before, payload)
    acct_rt = account_runtime(rt, "execute", payload, plan.account)
    if acct_rt is None:  # SUBMITTED by this call, nothing sent: it ends here
        rt.plans.transition(pid, PlanState.FAILED, "unknown_account")
        return _refused("unknown_account", pid)
    return _send_step(acct_rt, plan, 0, plan.client_order_id)


def send_next(rt: Runtime, plan: Plan, step: int, payload: Any) -> SendOutcome:
    """Send step ``step`` (≥ 1) of a SUBMITTED plan whose previous send is known not executed:
    claim the step (exactly one caller wins; through Sentinel the claim must reach the
    replicas, else it counts as a send not executed), then send under ``hv-<plan_id>-<step>``.
    A plan of an account no longer configured is left to its sweep (exchange truth, no send)."""
    pid = plan.plan_id
    cid = client_order_id(pid, step)
    acct_rt = account_runtime(rt, "execute", payload, plan.account)
    if acct_rt is None:
        return _refused("unknown_account", pid)
    rt = acct_rt
    claim = rt.plans.claim_resend(pid, step, cid, rt.settings.min_replicas, rt.settings.redis_replica_wait_s)
    if claim == "not_claimed":
        return SendOutcome(Send.UNKNOWN, pid) if plan.state == PlanState.SUBMITTED else _refused("", pid)
    if claim == NOT_REPLICATED:  # as a send not executed: the next step claims again
        rt.counters.count("execute:state_not_replicated")
        rt.plans.mark_send(pid, step, SendState.NOT_EXECUTED, {"reason": "state_not_replicated"})
        delay = retry_delay(step, rt.settings.retry_backoff_s, rt.settings.retry_backoff_max_s, None)
        if step + 1 < rt.settings.max_send_attempts and time.time() + delay < plan.expires_at:
            return SendOutcome(Send.NOT_EXECUTED, pid, step, retry_in=delay, reason="state_not_replicated")
        rt.plans.transition(pid, PlanState.FAILED, "state_not_replicated")
        return _refused("state_not_replicated", pid)
    return _send_step(rt, plan, step, cid)


def _place(rt: Runtime, plan: Plan, cid: str) -> None:
    """The order itself: the stop moved, or the position closed by a reduce-only market order."""
    side = plan.side.close_order_side
    if plan.action in STOP_ACTIONS:
        rt.venue.move_stop(plan.symbol, side, plan.stop_price or "", cid)
    else:
        rt.venue.close_market(plan.symbol, side, plan.order_qty or "", cid)


def _end(rt: Runtime, plan: Plan, to: str, reason: str, e: VenueError) -> SendOutcome:
    """The send was refused for good: count ``exchange_<kind>:<code>`` and end the plan."""
    rt.counters.count(f"exchange_{e.kind}:{e.code}")
    rt.plans.transition(
        plan.plan_id,
        to,
        reason,
        data={"code": e.code, "message": e.message, "step": plan.step},
        fields={"error_code": e.code, "error_message": e.message},
    )
    return _refused(reason, plan.plan_id)


def _send_step(rt: Runtime, plan: Plan, step: int, cid: str) -> SendOutcome:
    """Send ``plan``'s order as ``step`` under ``cid`` (``rt``: the plan's account's runtime)
    and record the outcome: accepted (``send=accepted``, ``acked_at``), unknown, not executed
    (with the delay before the next step, or FAILED when attempts or the TTL are spent), or
    rejected (REJECTED ``exchange_rejected:<VenueReason>``). No exception escapes."""
    pid = plan.plan_id
    plan = plan.model_copy(update={"step": step, "client_order_id": cid})
    try:
        _place(rt, plan, cid)
    except VenueError as e:
        return _venue_error(rt, plan, step, e)
    except Exception as e:  # connection loss etc.: the order may or may not exist
        rt.plans.mark_send(pid, step, SendState.UNKNOWN, {"error": type(e).__name__})
        log.exception("plan %s: order outcome unknown (%s); confirm will look it up", pid, type(e).__name__)
        return SendOutcome(Send.UNKNOWN, pid, step)
    acked_at = time.time()
    rt.plans.mark_accepted(pid, step, acked_at)
    return SendOutcome(Send.SENT, pid, step, acked_at=acked_at)


def _venue_error(rt: Runtime, plan: Plan, step: int, e: VenueError) -> SendOutcome:
    """:func:`_send_step` when the exchange answered ``e``."""
    pid = plan.plan_id
    if e.unknown:
        rt.plans.mark_send(pid, step, SendState.UNKNOWN, {"code": e.code, "message": e.message})
        log.warning("plan %s step %d: order outcome unknown (%s); confirm will look it up", pid, step, e)
        return SendOutcome(Send.UNKNOWN, pid, step)
    if not e.retryable:
        return _end(rt, plan, PlanState.REJECTED, f"exchange_rejected:{e.reason.value}", e)
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
        return SendOutcome(Send.NOT_EXECUTED, pid, step, retry_in=delay, reason=f"not_executed:{e.code}")
    return _end(rt, plan, PlanState.FAILED, f"not_executed:{e.code}", e)


def read_for_confirm(rt: Runtime, pid: str, step: int | None) -> tuple[Plan | None, Streamed | None]:
    """Confirm's one read: plan ``pid`` and, when execute's send ``step`` was accepted, the
    order's stream events (:func:`harvest.store.streams.streamed_order_reads`) and whether
    ``harvest streams`` is alive, in one round trip. Returns ``(plan or None, streamed or
    None)``. Raises :class:`harvest.store.records.UnreadableRecord` for a plan that does not parse."""
    if step is None:
        return rt.plans.get(pid), None
    cid = client_order_id(pid, step)
    plan, reads = rt.plans.get_with(pid, lambda p: streamed_order_reads(p, rt.settings.namespace, cid))
    return plan, (cid, *streamed_order_of(*reads))
