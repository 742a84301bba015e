"""Housekeeping beat tasks: market-state refresh, reconcile with the exchange, sweep of stale
plans, heartbeat."""

from __future__ import annotations

import logging
import time

from harvest.services.market import refresh_market_states
from harvest.services.reconcile import reconcile_once, sweep_once
from harvest.services.runtime import get_runtime
from harvest.venues.base import VenueError
from tasks.app import app
from tasks.common import contract
from workflows import start_resend

log = logging.getLogger("harvest")


@app.task(**contract("harvest.refresh_market", acks_late=True, max_retries=0))
def refresh_market() -> int:
    """Recompute the market state of every symbol any account allows at the current market
    time and cache it (one state per symbol, shared by the accounts; from the deployment's
    theta windows): :func:`harvest.services.market.refresh_market_states`. Returns how many
    symbols were refreshed."""
    return refresh_market_states(get_runtime())


@app.task(**contract("harvest.reconcile", acks_late=True, max_retries=0))
def reconcile() -> dict:
    """Beat task: :func:`reconcile_once`; a venue that does not answer skips this run."""
    rt = get_runtime()
    try:
        out = reconcile_once(rt, resend=start_resend)
    except VenueError as e:
        rt.counters.count(f"reconcile:venue_error:{e.code}")
        log.warning("reconcile skipped: venue unavailable (%s)", e)
        return {"error": e.code}
    rt.heartbeats.beat("reconcile")
    return out


@app.task(**contract("harvest.sweep_plans", acks_late=True, max_retries=0))
def sweep_plans() -> dict:
    """Beat task: :func:`sweep_once` at the current time, then terminal plans past
    ``plan_retention_s`` to the archive (``archived``). Returns state written → count."""
    rt = get_runtime()
    now = time.time()
    ended = sweep_once(rt, now)
    archived = rt.plans.archive_before(now - rt.settings.plan_retention_s)
    if archived:
        ended["archived"] = archived
        log.info("archived %d terminal plans past their retention", archived)
    rt.heartbeats.beat("sweep")
    return ended


@app.task(**contract("harvest.refresh_exchange_info", acks_late=True, max_retries=0))
def refresh_exchange_info() -> int:
    """Refresh each account's cached exchangeInfo filters, leverage and position mode (python-
    binance venues; the paper engine ships its filters). Returns #symbols (of the last account
    refreshed), or -1 when any account's refresh failed."""
    base = get_runtime()
    out = 0
    for name in base.accounts:
        rt = base.for_account(name)
        try:
            n = rt.venue.refresh_exchange_info()
            out = out if out < 0 else n
        except VenueError as e:
            rt.counters.count(f"venue:exchange_info_failed:{e.code}")
            log.warning("exchangeInfo refresh of account %s failed: %s", name, e)
            out = -1
    return out


@app.task(**contract("harvest.heartbeat", acks_late=True, max_retries=0))
def heartbeat() -> float:
    """Record that beat and a housekeeping worker are alive (Unix time)."""
    now = time.time()
    get_runtime().heartbeats.beat("beat", now)
    return now
