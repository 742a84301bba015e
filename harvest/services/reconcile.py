"""Reconciliation with the exchange and the sweep of stale plans (the services behind the
``harvest.reconcile`` and ``harvest.sweep_plans`` beat tasks and ``harvest reconcile``)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from harvest.domain.models import Plan, PlanState, SendState, VenuePosition
from harvest.domain.plans import parse_client_order_id
from harvest.services.decide import load_positions
from harvest.services.execution import PENDING, Resend, resolve_submitted
from harvest.services.recovery import ensure_recovered
from harvest.services.runtime import Runtime
from harvest.store.records import UnreadableRecord
from harvest.store.streams import StreamCache
from harvest.venues.base import OrderResult, VenueError

log = logging.getLogger("harvest")


def report(rt: Runtime, kind: str, **fields: Any) -> None:
    """One finding of reconciliation on ``<ns>:stream:reconcile`` (and a counter
    ``reconcile:<kind>``, a log line); ``harvest streams``' audit reports its disagreements here."""
    rt.r.xadd(
        f"{rt.settings.namespace}:stream:reconcile",
        {"kind": kind, "ts": repr(time.time()), **{k: str(v) for k, v in fields.items()}},
        maxlen=10_000,
        approximate=True,
    )
    rt.counters.count(f"reconcile:{kind}")
    log.warning("reconcile: %s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))


def reconcile_once(rt: Runtime, resend: Resend | None = None) -> dict:
    """Exchange truth against local state, once (the beat task and ``harvest reconcile``).

    0. State: when ``<ns>:state:recovered`` is missing (a Redis that restarted empty, a first
       start), the exchange's harvest orders are read first (:func:`harvest.services.recovery.recover`).
    1. Positions: new epochs started, ghost book entries (no position on the venue) dropped
       (:func:`harvest.services.decide.load_positions`).
    2. Plans of positions closed (or closed and re-opened) outside harvest: PROPOSED /
       APPROVED end EXPIRED (``position_closed_outside``, no order was sent); SUBMITTED ones
       are resolved by looking their order up, never by re-sending.
    3. Working orders carrying harvest's ``hv-<plan_id>-<step>`` clientOrderId: the plan is
       unknown to the store → reported (``unknown_order``, nothing is cancelled: an operator
       decides); the plan is APPROVED → adopted (SUBMITTED with that clientOrderId, send
       ``accepted``) and resolved; SUBMITTED → resolved.
    4. Plans past their TTL: :func:`sweep_once`.

    ``resend`` (:func:`workflows.start_resend`) sends again an order a look-up proved not placed.

    Returns counts: ``positions``, ``ghosts_dropped``, ``closed_outside``, ``unknown_orders``,
    ``adopted``, ``swept`` (state → n), ``open_plans``. Raises VenueError when the venue does
    not answer (nothing is changed then).
    """
    # First: a Redis that lost its state learns what was sent before anything else happens.
    recovered = ensure_recovered(rt, lambda ra: load_positions(ra, from_streams=False)[0])
    out: dict = {"positions": 0, "ghosts_dropped": 0, "closed_outside": 0, "unknown_orders": 0, "adopted": 0}
    per: dict[str, dict] = {}
    for name in rt.accounts:
        ra = rt.for_account(name)
        try:
            per[name] = _reconcile_account(ra, resend)
        except VenueError as e:
            if len(rt.accounts) == 1:
                raise
            # One account's exchange not answering holds up no other account.
            rt.counters.count(f"reconcile:venue_error:{e.code}")
            log.warning("reconcile of account %s skipped: venue unavailable (%s)", name, e)
            per[name] = {"error": e.code}
            continue
        for f in out:
            out[f] += per[name][f]
    swept = sweep_once(rt, time.time())
    check_clock(rt)
    return {
        **out,
        "swept": swept,
        "open_plans": rt.plans.count_open(),
        "recovered": recovered or {},
        **({"accounts": per} if len(rt.accounts) > 1 else {}),
    }


def streamed_view(rt: Runtime) -> tuple[list[VenuePosition], list[OrderResult]] | None:
    """The account's open positions and working orders from ``harvest streams``' cache, read
    together, when it may stand in for REST (:meth:`harvest.store.streams.StreamCache.view`:
    trusted, clean, its writer alive, its marks fresh, within ``settings.streams_max_age_s``);
    None otherwise (read REST)."""
    age = rt.settings.streams_max_age_s
    cache = StreamCache(rt.r, rt.settings.namespace, rt.settings.account)
    view = cache.view(age, max(age, 3.0))
    if view is None:
        cache.count_fallback(rt.counters)
        return None
    return view[0], [OrderResult.model_validate(o) for o in view[1]]


def _reconcile_account(rt: Runtime, resend: Resend | None) -> dict[str, int]:
    """Steps 1–3 of :func:`reconcile_once` on one account (``rt``: its runtime). Returns
    ``positions``, ``ghosts_dropped``, ``closed_outside``, ``unknown_orders``, ``adopted``,
    ``from_streams`` (1 when the stream cache stood in for REST). Raises VenueError when its
    venue does not answer.

    Streams are the truth, REST the audit (issue 32): while ``harvest streams`` holds the
    account and its cache is clean (:func:`streamed_orders`), positions and working orders
    come from the cache, read together (no request weight; counted
    ``reconcile:from_streams``); otherwise from REST. A plan whose
    outcome is unknown is still looked up on the exchange (:func:`resolve_submitted`)."""
    before = rt.counters.read().get("reconcile:ghost_dropped", 0)
    view = streamed_view(rt)
    if view is not None:
        rt.counters.count("reconcile:from_streams")
        rows, _ = load_positions(rt, vps=view[0])
    else:
        rows, _ = load_positions(rt, from_streams=False)  # exchange truth from REST
    ghosts = rt.counters.read().get("reconcile:ghost_dropped", 0) - before
    # Open positions by the book after ghosts were dropped: every symbol the venue shows open,
    # including any skipped for want of a market state (their plans are not "closed outside").
    acct = rt.settings.account
    open_syms = sorted(rt.book.symbols(acct))
    epochs = {
        s: (e or {}).get("epoch")
        for s, e in zip(open_syms, rt.book.get_many(acct, open_syms, ("side", "epoch")), strict=True)
    }
    open_orders = view[1] if view is not None else rt.venue.open_orders()
    plans = {p.plan_id: p for p in rt.plans.open_plans()}
    closed = _closed_outside(rt, plans, epochs)
    seen = Counter(_check_order(rt, o, plans, resend) for o in open_orders)
    unknown, adopted = seen["unknown"], seen["adopted"]
    rt.r.hset(rt.plans.k.counters, f"acct:{acct}:positions_open", str(len(rows)))
    return {
        "positions": len(rows),
        "ghosts_dropped": ghosts,
        "closed_outside": closed,
        "unknown_orders": unknown,
        "adopted": adopted,
        "from_streams": int(view is not None),
    }


def _closed_outside(rt: Runtime, plans: dict[str, Plan], epochs: dict[str, Any]) -> int:
    """End the open plans of ``rt``'s account whose position epoch is no longer open
    (``epochs``: symbol → the open epoch): PROPOSED or APPROVED → EXPIRED
    ``position_closed_outside``; SUBMITTED (not ``sending``) → a final look-up. Returns how many
    ended."""
    closed = 0
    for plan in plans.values():
        if plan.account != rt.settings.account or epochs.get(plan.symbol) == plan.epoch:
            continue
        if plan.state in (PlanState.PROPOSED, PlanState.APPROVED):
            ok, _ = rt.plans.transition(
                plan.plan_id, PlanState.EXPIRED, "position_closed_outside", data={"open_epoch": epochs.get(plan.symbol)}
            )
            closed += ok
        # "sending": execute owns it, or its send was accepted and execute has yet to record
        # that; confirm or the sweeper resolves it at the TTL.
        elif plan.state == PlanState.SUBMITTED and plan.send != SendState.SENDING:
            # Final look-up: with the position gone nothing more will fill; a plan whose
            # order closed the position itself reads FILLED here.
            closed += resolve_submitted(rt, plan, final=True) != PENDING
    return closed


def _check_order(rt: Runtime, o: OrderResult, plans: dict[str, Plan], resend: Resend | None) -> str | None:
    """One working order of ``rt``'s account against the plans: not harvest's, another
    account's plan or a plan lost with the state (None); harvest's without a plan
    (``"unknown"``, reported); an APPROVED plan's order (adopted: SUBMITTED, ``"adopted"``);
    a SUBMITTED plan's current order (looked up, None)."""
    parsed = parse_client_order_id(o.client_order_id)
    if parsed is None:
        return None  # not harvest's (a strategy's own stop, a manual order)
    pid, step = parsed
    try:
        plan = plans.get(pid) or rt.plans.get(pid)
    except UnreadableRecord as e:  # a newer version's plan (or a broken one): never adopted here
        log.warning("open order %s left alone: %s", o.client_order_id, e)
        return None
    if plan is not None and plan.account != rt.settings.account:
        return None  # another account's plan_id on this account's books: never adopted here
    if plan is None and rt.r.sismember(rt.plans.k.recovered_plans, pid):
        return None  # a plan lost with the state, known again from the exchange (harvest.services.recovery)
    if plan is None:
        report(
            rt,
            "unknown_order",
            client_order_id=o.client_order_id,
            symbol=o.symbol,
            type=o.type,
            status=o.status,
            side=o.side,
        )
        return "unknown"
    if plan.state == PlanState.APPROVED:
        return "adopted" if _adopt(rt, plan, o, step, resend) else None
    if plan.state == PlanState.SUBMITTED and plan.client_order_id == o.client_order_id:
        resolve_submitted(rt, plan, final=False, resend=resend)
    return None


def _adopt(rt: Runtime, plan: Plan, o: OrderResult, step: int, resend: Resend | None) -> bool:
    """An APPROVED plan whose order the exchange shows (its SUBMITTED was lost): SUBMITTED with
    ``send=accepted`` at the order's step, reported, and resolved by the order. Returns whether
    it was adopted here."""
    pid = plan.plan_id
    ok, _ = rt.plans.transition(
        pid,
        PlanState.SUBMITTED,
        "adopted_from_exchange",
        data={"client_order_id": o.client_order_id, "step": step},
        fields={"client_order_id": o.client_order_id, "step": step, "send": SendState.ACCEPTED},
    )
    if not ok:
        return False
    report(rt, "adopted_order", plan_id=pid, client_order_id=o.client_order_id, symbol=o.symbol)
    try:
        fresh = rt.plans.get(pid)
    except UnreadableRecord:  # rewritten meanwhile by a newer version: it resolves it
        fresh = None
    if fresh is not None:
        resolve_submitted(rt, fresh, final=False, resend=resend)
    return True


def check_clock(rt: Runtime) -> int | None:
    """The exchange's clock against harvest's reading of it (ms; one clock on both sides,
    :meth:`harvest.venues.binance.BinanceVenue.clock_offset_ms`): on Binance its serverTime
    against this machine's wall clock, on the emulator its serverTime (the replay's market
    clock) against the shared MarketClock — never a market time against wall time, which on a
    replay of 2025 would be a year "off" (docs/venues.md, "Clocks"). Beyond
    ``max_clock_offset_ms`` it is logged as an error and counted (``venue:clock_offset_exceeded``;
    ``/metrics`` ``harvest_clock_offset_seconds``). 0 on the in-process paper engine (it runs on
    harvest's clock: :meth:`harvest.venues.base.Venue.clock_offset_ms`); None when the exchange
    does not answer."""
    try:
        offset = rt.venue.clock_offset_ms()
    except VenueError as e:
        log.warning("exchange clock not read: %s", e)
        return None
    if abs(offset) > rt.settings.max_clock_offset_ms:
        rt.counters.count("venue:clock_offset_exceeded")
        log.error(
            "this machine's clock is %.1f s %s the exchange's (limit %d ms): fix NTP",
            abs(offset) / 1000,
            "behind" if offset > 0 else "ahead of",
            rt.settings.max_clock_offset_ms,
        )
    return offset


def sweep_once(rt: Runtime, now: float) -> dict[str, int]:
    """End every plan past its TTL: PROPOSED/APPROVED → EXPIRED (no order was sent);
    SUBMITTED → resolved by looking the order up (final: an order that does not exist ends
    the plan EXPIRED), never by re-sending; a plan this version cannot read (a newer version
    wrote it) is left alone (``"unreadable"``). Returns state written → count."""
    ended: dict[str, int] = {}
    for pid in rt.plans.expired_open(now):
        try:
            plan = rt.plans.get(pid)
        except UnreadableRecord as e:  # a newer version's plan is its own to end; a broken one is shown
            ended["unreadable"] = ended.get("unreadable", 0) + 1
            log.warning("sweep: %s; left alone", e)
            continue
        if plan is None:
            continue
        if plan.state in (PlanState.PROPOSED, PlanState.APPROVED):
            ok, _ = rt.plans.transition(pid, PlanState.EXPIRED, "ttl_expired")
            out = PlanState.EXPIRED if ok else "raced"
        elif plan.state == PlanState.SUBMITTED:
            try:
                out = resolve_submitted(rt, plan, final=True)
            except VenueError:  # resolve_submitted answers most venue errors itself
                out = PENDING
        else:
            continue
        ended[out] = ended.get(out, 0) + 1
    if ended:
        log.info("sweep ended stale plans: %s", ended)
    return ended
