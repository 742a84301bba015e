"""State that must not be lost, and what harvest does when it was (issue 19.3).

harvest's Redis holds the plans and their lineages, the book of each position epoch and the
in-flight locks. Lost, the next scan would decide the same exits again and send them a second
time: Binance keeps a clientOrderId unique only among *open* orders, so even the same
``hv-<plan_id>-0`` fills again. Two defences:

* **Durable state.** :func:`durability` reads the Redis's persistence (AOF with ``appendfsync``
  ``everysec`` or ``always``); execute sends nothing to a Redis without it
  (``state_not_durable``) unless the deployment says it is throw-away
  (``HARVEST_THROWAWAY_STATE=true``: the demo, the tests).
* **Replicated before any send** (Redis through Sentinel, ``HARVEST_REDIS_MIN_REPLICAS``):
  execute's APPROVED → SUBMITTED must be acknowledged by that many replicas (``WAIT``) before
  the order goes out, so the replica a failover promotes holds it; otherwise nothing is sent
  (``state_not_replicated``).
* **Recovery before any send.** The key ``<ns>:state:recovered`` says the state is known
  whole; it holds the ``run_id`` of the Redis server it was set on, and a marker read on
  another server (the replica a failover promoted, a server restarted from its AOF, which
  may lack the last writes it acknowledged) is removed when read
  (:data:`harvest.store.scripts.KNOWN_WHOLE_LUA`). A Redis that restarted empty (or a first
  start) lacks it; execute's
  APPROVED → SUBMITTED compare-and-set then fails (``state_not_recovered``) and the plan ends
  FAILED, to be tried again by its lineage. :func:`recover` — run by reconcile, which the scan
  starts when it sees the key missing, a grace period after the loss was first seen (a send
  under way then has reached the exchange's books) — reads the exchange's own records of the account
  (every order of each symbol in use, ``GET /fapi/v1/allOrders``, and the working stops), and
  every ``hv-<plan_id>-<step>`` order whose plan the store does not know joins
  ``<ns>:plans:recovered``: a decision that makes that plan_id again finds it there and is a
  true repeat (its lineage records it FILLED), so the lost plan's order is found, not repeated.
  Only then is the key set. Epoch labels come from the exchange (the opening fill's time, else
  the entry price), never from wall time, so the same decision makes the same plan_id after
  the loss.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, cast

import redis

from harvest.domain.models import PlanState, SendState
from harvest.domain.plans import parse_client_order_id
from harvest.venues.base import Venue, VenueError

if TYPE_CHECKING:  # the runtime module imports this one's callers; only its type is needed here
    from harvest.services.runtime import Runtime

#: An account's open positions as the scan loads them: ``(account runtime) -> rows``
#: (:func:`harvest.services.decide.load_positions`'s rows).
LoadRows = Callable[["Runtime"], list[Any]]

log = logging.getLogger("harvest")

#: How long a process trusts its last reading of the Redis's persistence (s).
DURABILITY_TTL_S = 60.0
_DURABLE: dict[int, tuple[float, bool, str]] = {}


def durability(r: redis.Redis) -> tuple[bool, str]:
    """Whether the Redis keeps what it is told across a restart: AOF on with ``appendfsync``
    ``everysec`` or ``always`` (``(True, "aof everysec")``), else ``(False, why)``. Where
    ``CONFIG`` is not allowed (a managed Redis), ``aof_enabled`` from ``INFO persistence``
    decides. Raises redis.RedisError when the Redis does not answer."""
    info = cast(dict[str, Any], r.info("persistence"))
    if int(info.get("aof_enabled", 0)) != 1:
        return False, "AOF is off (appendonly no)"
    try:
        fsync = cast(dict[str, str], r.config_get("appendfsync") or {}).get("appendfsync", "")
    except redis.ResponseError:  # CONFIG disabled: AOF on is all that can be read
        return True, "aof (appendfsync not readable)"
    if fsync not in ("everysec", "always"):
        return False, f"appendfsync {fsync!r} (everysec or always needed)"
    return True, f"aof {fsync}"


def durable_cached(r: redis.Redis) -> tuple[bool, str]:
    """:func:`durability`, read at most every :data:`DURABILITY_TTL_S` per process."""
    now = time.monotonic()
    hit = _DURABLE.get(os.getpid())
    if hit is None or now - hit[0] > DURABILITY_TTL_S:
        ok, why = durability(r)
        _DURABLE[os.getpid()] = hit = (now, ok, why)
    return hit[1], hit[2]


def harvest_order_ids(venue: Venue, symbols: list[str], orders: list | None = None) -> dict[str, str]:
    """plan_id → clientOrderId of every harvest order the exchange shows for these symbols:
    all orders (``Venue.all_orders``, or ``orders`` when already read) and the working ones.
    Raises VenueError."""
    out: dict[str, str] = {}
    for o in (venue.all_orders(symbols) if orders is None else orders) + venue.open_orders():
        parsed = parse_client_order_id(o.client_order_id)
        if parsed:
            out[parsed[0]] = o.client_order_id
    return out


def tiers_done(orders: list, symbol: str, side_close: str, opened_at: float) -> int:
    """How many partial tiers an epoch has had, at least, by the exchange's records: the
    distinct harvest plans whose MARKET orders on the closing side filled (in part or whole)
    since the epoch's opening (``opened_at``, Unix s of the exchange's clock), at most 3. A
    remainder's further attempt counts as another plan, so this can only overstate: a tier
    may be skipped after a loss of state, a close is never sent twice."""
    plans = set()
    for o in orders:
        parsed = parse_client_order_id(o.client_order_id)
        if (
            parsed
            and o.symbol == symbol
            and not o.algo
            and o.type == "MARKET"
            and o.side == side_close
            and o.executed_qty > 0
            and o.update_time >= opened_at
        ):
            plans.add(parsed[0])
    return min(3, len(plans))


def recover(rt: Runtime, load_rows: LoadRows) -> dict[str, Any]:
    """Make the state whole from the exchange's records (module docstring) and mark it so,
    reading every account of the deployment before the mark is set.
    ``rt``: a :class:`harvest.services.runtime.Runtime`; ``load_rows(account_rt)``: that account's
    open positions as the scan loads them (``harvest.services.decide.load_positions``: book
    entries made afresh where they were lost). Each one's harvested tier is raised to :func:`tiers_done` (a lost
    plan of a later attempt has a plan_id no decision remakes at attempt 0: the tier keeps
    it from being decided again); a plan the store holds APPROVED whose order the exchange shows
    moves to SUBMITTED (:func:`_resume_sent`). The marker is set to the server's run_id only if
    the server is the one recovery began on. Returns ``{"orders_seen", "plans_recovered",
    "plans_resumed", "tiers_restored", "symbols"}``, or ``{"server_changed": True}`` when the
    server changed meanwhile (the marker stays unset: recovery runs again). Raises VenueError
    when the exchange does not answer (the key stays unset: nothing is sent until a later run
    succeeds)."""
    k = rt.plans.k
    began_on = rt.recovery.server_id()  # the marker is set only if the server is still this one
    lost: list[str] = []
    resumed = 0
    seen = restored = n_symbols = 0
    for name in rt.accounts:
        ra = rt.for_account(name)
        rows = load_rows(ra)
        symbols = sorted(set(ra.settings.symbols) | {vp.symbol for vp, _, _ in rows})
        orders = ra.venue.all_orders(symbols)
        found = harvest_order_ids(ra.venue, symbols, orders)
        known = ra.plans.exists_many(list(found))
        lost += [pid for pid, ex in zip(found, known, strict=True) if not ex]
        resumed += _resume_sent(ra, {pid: cid for (pid, cid), ex in zip(found.items(), known, strict=True) if ex})
        tiers = {}
        for vp, entry, _ in rows:
            if vp.opened_at is None:
                continue  # the opening is older than the venue's records: no estimate
            done = tiers_done(orders, vp.symbol, vp.side.close_order_side, vp.opened_at)
            if done > int(entry.get("harvested_tier", 0)):
                tiers[vp.symbol] = {"harvested_tier": done}
        ra.book.update_many(name, tiers)
        seen, restored, n_symbols = seen + len(found), restored + len(tiers), n_symbols + len(symbols)
    if lost:
        rt.r.sadd(k.recovered_plans, *lost)
    if not rt.recovery.mark_recovered(began_on):  # a failover while reading: the next run starts over
        rt.counters.count("recovery:server_changed")
        log.warning("state not marked recovered: the state Redis changed server while recovery read the exchange")
        return {"server_changed": True}
    if lost:
        log.warning(
            "state recovered from the exchange: %d harvest orders had no plan in the store; a decision "
            "that makes one of those plan_ids again is a repeat, never a second order",
            len(lost),
        )
    rt.counters.count("recovery:runs")
    if lost:
        rt.counters.count("recovery:plans_recovered", len(lost))
    return {
        "orders_seen": seen,
        "plans_recovered": len(lost),
        "plans_resumed": resumed,
        "tiers_restored": restored,
        "symbols": n_symbols,
    }


def _resume_sent(ra: Runtime, found: dict[str, str]) -> int:
    """Plans the store knows that the exchange shows an order of, still APPROVED in the store:
    their SUBMITTED was lost with the state (a failover, a restart) after their order went
    out. Each moves to SUBMITTED with ``send=unknown`` at the order's step, for confirm and
    the sweeper to resolve by clientOrderId, never to be sent again. Returns how many."""
    if not found:
        return 0
    p = ra.r.pipeline(transaction=False)
    for pid in found:
        p.hget(ra.plans.k.plan(pid), "state")
    n = 0
    for (pid, cid), state in zip(found.items(), p.execute(), strict=True):
        if state == PlanState.APPROVED:
            step = int((parse_client_order_id(cid) or (pid, 0))[1])
            ok, _ = ra.plans.transition(
                pid, PlanState.SUBMITTED, "order_found_on_exchange", fields={"step": step, "send": SendState.UNKNOWN}
            )
            n += ok
        elif state == PlanState.PROPOSED:  # two lost writes; the exchange's order is never repeated:
            ra.counters.count("recovery:proposed_with_order")  # its guard finds the position's lock or the fill
    if n:
        ra.counters.count("recovery:plans_resumed", n)
        log.warning("state recovered: %d plans the store held APPROVED had orders on the exchange; now SUBMITTED", n)
    return n


def ensure_recovered(rt: Runtime, load_rows: LoadRows) -> dict[str, Any] | None:
    """:func:`recover` when the state is not known whole (``<ns>:state:recovered`` missing);
    None when it is. ``load_rows(account_rt)``: an account's open positions as the scan loads them. The records
    are read only a grace period (the venue timeout + 1 s) after the loss was first seen, so
    that an order whose send was under way when the state went is on the exchange's books by
    then; until then ``{"waiting_s": …}``. Raises VenueError as :func:`recover`."""
    if rt.recovery.state_known():
        return None
    now = time.time()
    k_seen = f"{rt.settings.namespace}:state:lost_seen_at"
    rt.r.set(k_seen, repr(now), nx=True, ex=3600)
    seen = float(cast("str | None", rt.r.get(k_seen)) or now)
    grace = rt.settings.venue_timeout_s + 1.0
    if now < seen + grace:
        return {"waiting_s": round(seen + grace - now, 2)}
    try:
        return recover(rt, load_rows)
    except VenueError:
        rt.counters.count("recovery:venue_error")
        raise


def mark_recovered(r: redis.Redis, namespace: str) -> None:
    """Mark a namespace's state whole without reading the exchange: for a namespace set up
    afresh against an exchange account harvest never traded (tests, benchmarks, the demo)."""
    from harvest.store import Keys
    from harvest.store.scripts import MARK_RECOVERED_LUA

    r.eval(MARK_RECOVERED_LUA, 1, Keys(namespace).recovered, "")
