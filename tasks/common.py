"""What every task shares: :class:`HarvestTask` (the base class: the process's runtime, the
task's contract, the load-or-reject plumbing), validation of the small task payloads and the
record of rejected (malformed) messages."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

from harvest.domain.models import MarketState, Plan
from harvest.domain.plans import PLAN_ID_RE
from harvest.services.execution import Streamed, read_for_confirm
from harvest.services.rejected import account_runtime, record_rejected
from harvest.services.runtime import Runtime, get_runtime
from harvest.store.records import MESSAGE_HEADER, NewerVersion, UnreadableRecord, check_version
from settings.celery import TIME_LIMITS_S

__all__ = ["account_runtime", "record_rejected"]  # re-exported: the services' record of rejected messages

log = logging.getLogger("harvest")


class MalformedMessage(ValueError):
    """A task payload that does not validate; it is recorded and never executed."""


#: How long a task waits before it offers a plan a newer version wrote to the queue again (s).
NEWER_RETRY_S = 2.0


class NewerPlan(Exception):
    """The plan a message names was written by a newer version of harvest (its ``v``, or a
    state this version does not know): this worker does nothing with it and hands the message
    back to the queue for a newer worker (:meth:`HarvestTask.__call__`), until it expires."""


def _unreadable_plan(rt: Runtime, stage: str, payload: Any, e: UnreadableRecord) -> None:
    """A stage met a plan it cannot read: one written by a newer version raises
    :class:`NewerPlan` (counted ``newer_plan:<stage>``); any other is recorded on the rejected
    stream (:func:`record_rejected`). Nothing is executed from either."""
    if e.record.newer:
        rt.counters.count(f"newer_plan:{stage}")
        raise NewerPlan(str(e)) from e
    record_rejected(rt, stage, payload, e)


def plan_ref(payload: Any) -> str | None:
    """plan_id from a ``{"plan_id": "<16 hex>"}`` payload; None for a None payload (an
    earlier stage stopped the chain). Raises MalformedMessage otherwise."""
    if payload is None:
        return None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("plan_id"), str)
        or not PLAN_ID_RE.match(payload["plan_id"])
    ):
        raise MalformedMessage(f"expected {{'plan_id': <16 hex digits>}}, got {str(payload)[:200]!r}")
    return payload["plan_id"]


def send_ack(payload: dict) -> tuple[int, float] | None:
    """``(step, acked_at)`` from the ref execute hands to confirm after the exchange accepted
    send ``step`` (``{"plan_id", "step": int >= 0, "acked_at": Unix s}``); None when the ref
    carries no acknowledgement. Raises MalformedMessage for a step or time that does not
    validate (a bool, a negative step, a time that is not finite or lies ahead of now)."""
    if "acked_at" not in payload and "step" not in payload:
        return None
    step, at = payload.get("step"), payload.get("acked_at")
    if (
        not isinstance(step, int)
        or isinstance(step, bool)
        or step < 0
        or not isinstance(at, (int, float))
        or isinstance(at, bool)
        or not 0 < at <= time.time() + 60
    ):
        raise MalformedMessage(f"expected step (int >= 0) and acked_at (Unix s) together, got {str(payload)[:200]!r}")
    return step, float(at)


def checked_ref(rt: Runtime, stage: str, payload: Any) -> str | None:
    """plan_id of a stage's ``{"plan_id": …}`` payload; None when the payload is None (an
    earlier stage stopped the chain) or malformed (recorded, see :func:`record_rejected`)."""
    try:
        return plan_ref(payload)
    except MalformedMessage as e:
        record_rejected(rt, stage, payload, e)
        return None


def load_plan(rt: Runtime, stage: str, payload: Any) -> Plan | None:
    """The plan a stage's ``{"plan_id": …}`` payload names; None when the payload is None (an
    earlier stage stopped the chain), malformed, names no plan or a plan that does not parse
    (recorded). Raises :class:`NewerPlan` for a plan a newer version wrote."""
    return load_plan_and_book(rt, stage, payload, book=False)[0]


def load_acknowledged_plan(rt: Runtime, stage: str, payload: Any) -> tuple[Plan | None, Streamed | None]:
    """:func:`load_plan` for confirm: when the ref carries execute's acknowledgement
    (:func:`send_ack`; execute recorded the acceptance), the order's stream events are read in
    the same round trip as the plan (:func:`harvest.services.execution.read_for_confirm`).
    Returns ``(plan, streamed)``: plan None as :func:`load_plan`; ``streamed`` the order's
    stream events and whether ``harvest streams`` is alive, or None when not read (no
    acknowledgement)."""
    pid = checked_ref(rt, stage, payload)
    if pid is None:
        return None, None
    try:
        ack = send_ack(payload)
    except MalformedMessage as e:
        record_rejected(rt, stage, payload, e)
        return None, None
    try:
        plan, streamed = read_for_confirm(rt, pid, None if ack is None else ack[0])
    except UnreadableRecord as e:
        _unreadable_plan(rt, stage, payload, e)
        return None, None
    if plan is None:
        record_rejected(rt, stage, payload, "unknown plan_id")
    return plan, streamed


#: A plan as the guard reads it: ``(plan, book entry, market state, trading states)``
#: (:meth:`harvest.store.PlanStore.get_with_book`); plan None when there is none to act on.
PlanRead = tuple[Plan | None, dict[str, Any] | None, MarketState | None, dict[str, str]]


def load_plan_and_book(rt: Runtime, stage: str, payload: Any, book: bool = True) -> PlanRead:
    """:func:`load_plan` and, with ``book``, the book entry of the plan's position (see
    :meth:`harvest.store.BookStore.decode`; None when there is none), its symbol's cached
    market state and the trading states (``{"*" or account: state}``), in one round trip."""
    pid = checked_ref(rt, stage, payload)
    if pid is None:
        return None, None, None, {}
    try:
        read: PlanRead = rt.plans.get_with_book(pid) if book else (rt.plans.get(pid), None, None, {})
    except UnreadableRecord as e:
        _unreadable_plan(rt, stage, payload, e)
        return None, None, None, {}
    if read[0] is None:
        record_rejected(rt, stage, payload, "unknown plan_id")
    return read


def contract(name: str, *, acks_late: bool, max_retries: int | None, stage: str | None = None) -> dict[str, Any]:
    """A task's reliability contract, for its ``@app.task`` decorator: its name, the base class
    :class:`HarvestTask`, ``acks_late`` (and ``reject_on_worker_lost`` with it: a message whose
    worker died is delivered again — only for stages that are idempotent by plan state), the
    retry bound ``max_retries`` (None: bounded by the plan TTL instead, the task's own rule),
    and its soft and hard time limits (s) from :data:`settings.celery.TIME_LIMITS_S`. Expiry
    is carried by each message (plan TTL, :mod:`workflows`; beat interval, :mod:`harvest.services.schedule`).
    ``stage``: the name its rejected messages are recorded under (default: the name's last part)."""
    soft, hard = TIME_LIMITS_S[name]
    return {
        "name": name,
        "base": HarvestTask,
        "acks_late": acks_late,
        "reject_on_worker_lost": acks_late,
        "max_retries": max_retries,
        "soft_time_limit": soft,
        "time_limit": hard,
        "stage": stage or name.rsplit(".", 1)[-1],
    }


class HarvestTask(Task):
    """Base class of every harvest task (``@app.task(**contract(...))``): the process's
    :class:`harvest.services.runtime.Runtime` as :attr:`rt`, and the stage's load-or-reject
    plumbing — a malformed or unknown payload is recorded on ``<ns>:stream:rejected`` under
    :attr:`stage` and the method answers None; it is never executed."""

    #: The stage name rejected messages are recorded under (set by :func:`contract`).
    stage: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task unless its message is of a newer schema version than this worker's
        (header :data:`~harvest.store.records.MESSAGE_HEADER`; none: written before versions
        existed, run as before): such a message is recorded on ``<ns>:stream:rejected`` with
        its arguments and counted ``newer_message:<stage>`` (a header that does not parse:
        ``malformed:<stage>``), and answers None: nothing of it runs, so nothing is sent.
        A task that meets a plan a newer version wrote (:class:`NewerPlan`) hands its message
        back to the queue (a retry in :data:`NEWER_RETRY_S`, its expiry kept) for a newer
        worker, and sends nothing."""
        raw = getattr(self.request, MESSAGE_HEADER, None)
        try:
            check_version("message", raw)
        except ValueError as e:
            payload = {"args": list(args), "kwargs": kwargs, MESSAGE_HEADER: raw}
            self.reject(payload, e, "newer_message" if isinstance(e, NewerVersion) else "malformed")
            return None
        try:
            return super().__call__(*args, **kwargs)
        except NewerPlan as e:
            log.warning("%s: %s; left for a newer worker", self.stage, e)
            if self.request.called_directly:
                return None
            raise self.retry(countdown=NEWER_RETRY_S, max_retries=None) from e

    @property
    def rt(self) -> Runtime:
        """This process's runtime (built once per process, :func:`get_runtime`)."""
        return get_runtime()

    def reject(self, payload: Any, error: Exception | str, counter: str = "malformed") -> None:
        """Record a malformed message (:func:`record_rejected`)."""
        record_rejected(self.rt, self.stage, payload, error, counter)

    def for_account(self, account: str, payload: Any) -> Runtime | None:
        """:func:`account_runtime` for this stage."""
        return account_runtime(self.rt, self.stage, payload, account)

    def plan(self, payload: Any) -> Plan | None:
        """:func:`load_plan` for this stage."""
        return load_plan(self.rt, self.stage, payload)

    def plan_and_book(self, payload: Any) -> PlanRead:
        """:func:`load_plan_and_book` for this stage."""
        return load_plan_and_book(self.rt, self.stage, payload)

    def acknowledged_plan(self, payload: Any) -> tuple[Plan | None, Streamed | None]:
        """:func:`load_acknowledged_plan` for this stage."""
        return load_acknowledged_plan(self.rt, self.stage, payload)
