"""Housekeeping beat tasks: market-state refresh, reconcile with the exchange, sweep of stale
plans, heartbeat."""

from __future__ import annotations

import logging
import time

from harvest.data import load_klines
from harvest.market import market_state_at, market_state_from_closes
from harvest.runtime import get_runtime
from harvest.venue import VenueError
from tasks.app import app
from tasks.confirm import resolve_submitted
from tasks.evaluate import load_positions

log = logging.getLogger("harvest")


@app.task(name="harvest.refresh_market")
def refresh_market() -> int:
    """Recompute the market state of every allowlisted symbol at the current market time
    and cache it: from the venue's closed 1m klines on python-binance venues (testnet, live,
    emulator), from the shipped klines on the in-process paper engine. Returns how many
    symbols were refreshed."""
    rt = get_runtime()
    now = rt.market_now()
    theta = rt.settings.theta
    states = []
    for sym in rt.settings.symbols:
        try:
            if rt.settings.uses_binance:
                closes = rt.venue.closed_closes(sym, max(theta.sigma_window, theta.ts_window) + 1)  # type: ignore[attr-defined]
                states.append(market_state_from_closes(sym, closes, now, theta))
            else:  # the paper engine: shipped klines (a synthetic listing uses its source's)
                src = rt.venue.source(sym)  # type: ignore[attr-defined]
                states.append(market_state_at(load_klines(src), now, theta).model_copy(update={"symbol": sym}))
        except (FileNotFoundError, ValueError, VenueError) as e:
            rt.plans.count("market:unavailable")
            log.warning("market state for %s unavailable: %s", sym, e)
    rt.market.put_many(states)
    rt.plans.beat("market")
    return len(states)


@app.task(name="harvest.reconcile")
def reconcile() -> dict:
    """Exchange truth against the book: drops ghost entries, starts new epochs, and reports
    the open positions counted from the venue (never from key scans)."""
    rt = get_runtime()
    try:
        pairs, _ = load_positions(rt)
    except VenueError as e:
        rt.plans.count(f"reconcile:venue_error:{e.code}")
        log.warning("reconcile skipped: positions unavailable (%s)", e)
        return {"error": e.code}
    rt.r.hset(rt.plans.k.counters, "positions_open", len(pairs))
    rt.plans.beat("reconcile")
    return {"positions": len(pairs)}


@app.task(name="harvest.sweep_plans")
def sweep_plans() -> dict:
    """End every plan past its TTL: PROPOSED/APPROVED → EXPIRED (no order was sent);
    SUBMITTED → resolved by looking the order up, never by re-sending. Returns counts."""
    rt = get_runtime()
    now = time.time()
    ended: dict[str, int] = {}
    for pid in rt.plans.expired_open(now):
        plan = rt.plans.get(pid)
        if plan is None:
            continue
        if plan.state in ("PROPOSED", "APPROVED"):
            ok, _ = rt.plans.transition(pid, "EXPIRED", "ttl_expired", account=plan.account, symbol=plan.symbol)
            out = "EXPIRED" if ok else "raced"
        elif plan.state == "SUBMITTED":
            out = resolve_submitted(rt, plan, final=True)
        else:
            continue
        ended[out] = ended.get(out, 0) + 1
    if ended:
        log.info("sweep ended stale plans: %s", ended)
    rt.plans.beat("sweep")
    return ended


@app.task(name="harvest.refresh_exchange_info")
def refresh_exchange_info() -> int:
    """Refresh the venue's cached exchangeInfo filters, leverage and position mode (python-
    binance venues; the paper engine ships its filters). Returns #symbols, or -1 on error."""
    rt = get_runtime()
    refresh = getattr(rt.venue, "refresh_filters", None)
    if refresh is None:
        return 0
    try:
        rt.r.delete(rt.venue.k_leverage, rt.venue.k_dual)  # type: ignore[attr-defined]
        return refresh()
    except VenueError as e:
        rt.plans.count(f"venue:exchange_info_failed:{e.code}")
        log.warning("exchangeInfo refresh failed: %s", e)
        return -1


@app.task(name="harvest.heartbeat")
def heartbeat() -> float:
    """Record that beat and a housekeeping worker are alive (Unix time)."""
    now = time.time()
    get_runtime().plans.beat("beat", now)
    return now
