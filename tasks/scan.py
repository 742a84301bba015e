"""The beat scan: evaluate every open position in one batch and start the
``propose → guard → execute → confirm`` chain only for positions that need action.

Each decision's lineage (:func:`harvest.domain.plans.next_attempt`) says what to do with it: start
it (``new``, or ``retry`` — the next attempt of a decision whose last plan ended without
effect, after its backoff), or not: a true ``repeat`` (its plan is in flight or took effect),
``waiting`` for its backoff, or ``abandoned`` (a rejection that cannot change in the epoch).
A position whose in-flight lock another plan holds is skipped (``busy``). The counts of
decisions retrying and abandoned (by reason) are kept as the scan saw them last
(``<ns>:decisions:<account>``), for the scorecard and ``/metrics``.

A deployment with several accounts (``HARVEST_ACCOUNTS``) scans each on its own: beat's scan
starts a Celery group of ``harvest.scan_positions(account)`` on the scan queue, each expiring
with the beat interval, so that workers scan accounts in parallel: one task per account, or
— ``HARVEST_SCAN_ACCOUNTS_PER_TASK`` > 1, for a large fleet — Celery's ``chunks`` of that many
accounts per task (fewer messages per tick; a slow exchange then holds up its chunk-mates).

While ``harvest streams`` holds the account, the scan also leaves each position's trigger (the
mark at which its next decision falls due, :mod:`harvest.domain.triggers`) for it: a streamed
mark that crosses one starts that position's chain at once, between two ticks.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from celery import group

from harvest.domain.book import unprotected
from harvest.domain.trading import effective
from harvest.services.decide import chain_payload, decide_and_plan, load_positions, write_triggers
from harvest.services.runtime import get_runtime
from harvest.store.counters import scan_duration
from harvest.store.streams import StreamCache
from harvest.store.views import PositionsView
from harvest.venues.base import VenueError
from tasks.app import app
from tasks.common import account_runtime, contract
from workflows import action_chain

log = logging.getLogger("harvest")


@app.task(**contract("harvest.scan_positions", acks_late=True, max_retries=0))
def scan_positions(account: str | None = None) -> dict:
    """One scan of ``account`` (None: the deployment's only account, or — with several — a
    group of one scan per account, answered ``{"accounts": n}``). Returns ``{"account",
    "positions", "actionable", "started", "retries", "duplicates", "waiting", "abandoned",
    "busy", "seconds"}`` (counts; wall seconds); ``duplicates`` counts true repeats. An account
    the deployment does not manage is recorded as a malformed message (``{}``)."""
    t0 = time.perf_counter()
    scanned_at = time.time()
    base = get_runtime()
    if account is None and len(base.accounts) > 1:
        s = base.settings
        per = s.scan_accounts_per_task
        if per == 1:
            sigs = group(scan_positions.si(a) for a in base.accounts)
        else:  # Celery's chunks: each task scans ``per`` accounts in turn (fewer messages per tick)
            sigs = scan_positions.chunks(((a,) for a in base.accounts), per).group()
        sigs.apply_async(queue=s.queue("scan"), expires=s.scan_interval_s)
        return {"accounts": len(base.accounts)}
    rt = account_runtime(base, "scan_positions", {"account": account}, account or base.accounts[0])
    if rt is None:
        return {}
    acct = rt.settings.account
    try:
        rows, now = load_positions(rt)
    except VenueError as e:  # the exchange did not answer: this tick is skipped, the next one retries
        rt.plans.count(f"scan:venue_error:{e.code}")
        log.warning("scan skipped: positions unavailable (%s)", e)
        return {
            "positions": 0,
            "actionable": 0,
            "started": 0,
            "duplicates": 0,
            "busy": 0,
            "seconds": time.perf_counter() - t0,
            "error": e.code,
            "account": acct,
        }
    p = rt.r.pipeline(transaction=False)
    rt.plans.state_known_in(p)  # the marker names this server (a failover or restart since ends it)
    p.hgetall(rt.plans.k.trading)
    p.exists(StreamCache(rt.r, rt.settings.namespace, acct).k_lease)  # harvest streams holds the account
    recovered, trading, streamed = p.execute(raise_on_error=False)
    recovered = rt.plans.state_known_of(recovered)
    for reply in (trading, streamed):
        if isinstance(reply, Exception):
            raise reply
    held = None
    if effective(trading, acct, rt.settings.mode) == "HALTED":
        held = "halted"  # no chain starts; stops resting on the exchange stay
    elif not recovered:
        # The state was lost (or this is a first start): nothing starts until reconcile has
        # read the exchange's records (harvest.services.recovery); plan creation refuses it too.
        held = "awaiting_recovery"
        if rt.r.set(f"{rt.settings.namespace}:state:recovering", "1", nx=True, ex=2):
            log.warning("state not known whole: reconcile starts recovery from the exchange")
            app.send_task("harvest.reconcile", queue=rt.settings.queue("housekeeping"))
    if held is not None:  # the scan ran (its heartbeat says so) but starts nothing
        p = rt.r.pipeline(transaction=False)
        p.hincrby(rt.plans.k.counters, "scan:runs", 1)
        p.hincrby(rt.plans.k.counters, f"acct:{acct}:scan:runs", 1)
        p.hincrby(rt.plans.k.counters, f"scan:{held}", 1)
        p.hset(rt.plans.k.heartbeat, "scan", repr(time.time()))
        p.delete(rt.plans.k.triggers(acct))  # nothing starts: no mark event may start a chain either
        PositionsView(rt.r, rt.settings.namespace).put(p, acct, [vp for vp, _, _ in rows], scanned_at, now)
        p.execute()
        return {
            "positions": len(rows),
            "actionable": 0,
            "started": 0,
            "duplicates": 0,
            "busy": 0,
            "seconds": time.perf_counter() - t0,
            held: True,
            "account": acct,
        }
    planned = decide_and_plan(rt, rows, now)
    starting = [d for d, nx in planned if nx.starts]
    holders = dict(
        zip(
            [d.symbol for d in starting],
            rt.plans.inflight_many(acct, [d.symbol for d in starting]),
            strict=True,
        )
    )
    kinds: Counter[str] = Counter()
    stuck: Counter[str] = Counter()
    for d, nx in planned:
        if not nx.starts:
            kinds[nx.kind] += 1
            if nx.kind == "waiting":
                stuck["waiting"] += 1
            elif nx.kind == "abandoned":
                stuck[f"abandoned:{nx.reason}"] += 1
            continue
        if holders.get(d.symbol) is not None:
            kinds["busy"] += 1
            continue
        action_chain(*chain_payload(d, scanned_at)).apply_async()
        kinds[nx.kind] += 1
    started = kinds["new"] + kinds["retry"]
    p = rt.r.pipeline(transaction=False)
    k = rt.plans.k.counters
    p.hincrby(k, "scan:runs", 1)
    p.hincrby(k, f"acct:{acct}:scan:runs", 1)
    p.hincrby(k, "scan:chains_started", started)
    p.hincrby(k, "scan:retries_started", kinds["retry"])
    p.hincrby(k, "scan:duplicates_skipped", kinds["repeat"])
    p.hincrby(k, "scan:busy_skipped", kinds["busy"])
    naked = sum(1 for vp, _, _ in rows if unprotected(vp))
    p.hset(k, mapping={f"acct:{acct}:positions_unprotected": naked, f"acct:{acct}:positions_scanned": len(rows)})
    dk = rt.plans.k.decisions(acct)
    p.delete(dk)
    p.hset(dk, mapping={"updated_at": repr(time.time()), **{n: c for n, c in stuck.items()}})
    p.hset(rt.plans.k.heartbeat, "scan", repr(time.time()))
    if streamed:
        write_triggers(rt, rows, pipe=p)
    PositionsView(rt.r, rt.settings.namespace).put(p, acct, [vp for vp, _, _ in rows], scanned_at, now)
    seconds = time.perf_counter() - t0
    scan_duration(rt.r, rt.settings.namespace).observe(seconds, pipe=p)
    p.execute()
    return {
        "account": acct,
        "positions": len(rows),
        "actionable": len(planned),
        "started": started,
        "retries": kinds["retry"],
        "duplicates": kinds["repeat"],
        "waiting": kinds["waiting"],
        "abandoned": kinds["abandoned"],
        "busy": kinds["busy"],
        "seconds": seconds,
    }
