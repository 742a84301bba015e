"""Load and decide (the service behind stage 1, evaluate): exchange truth + book + market state
→ decisions, and each decision's next attempt.

:func:`load_positions`, :func:`decide` and :func:`decide_and_plan` serve the batch scan
(:mod:`tasks.scan`), the single-position ``harvest.evaluate`` task that heads the five-stage
chain on demand, reconciliation and the chaos harness's audit; :func:`chain_payload` is the
one place a decision becomes the first message of its chain.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pydantic import ValidationError

from harvest.domain.book import (
    is_new_epoch,
    new_book_entry,
    position_row,
    protective_stop,
    to_position,
    unprotected,
    valid_rows,
)
from harvest.domain.kernel import PositionBatch, evaluate_batch, reason_codes
from harvest.domain.models import (
    ACTION_CODES,
    KILL_COMPONENTS,
    Action,
    Decision,
    HarvestTheta,
    MarketState,
    Position,
    VenuePosition,
)
from harvest.domain.plans import NextAttempt, lineage_of, next_attempt, plan_id_for
from harvest.domain.triggers import next_trigger
from harvest.services.runtime import Runtime
from harvest.store.streams import StreamCache

#: One open position as the scan sees it: exchange truth, harvest's book entry (decoded, see
#: :class:`harvest.store.BookStore`) and the symbol's market state now.
Row = tuple[VenuePosition, dict[str, Any], MarketState]


_READER: tuple[int, ThreadPoolExecutor] | None = None


def _reader() -> ThreadPoolExecutor:
    """The scan's second reader: one thread per process (a pool process runs one scan at a
    time), made in the process that uses it — never inherited across a fork. Its commands
    share the process's Redis connection (one command at a time); what overlaps is Redis
    answering them while the scan's own thread turns the venue's rows into positions."""
    global _READER
    if _READER is None or _READER[0] != os.getpid():
        _READER = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="harvest-scan-read"))
    return _READER[1]


def _booked(rt: Runtime, acct: str) -> tuple[dict[str, dict[str, Any] | None], dict[str, MarketState | None]]:
    """Book entries (the scan's fields) and cached market states of every symbol in the
    account's book: ``({symbol: entry or None}, {symbol: state or None})``."""
    syms = sorted(rt.book.symbols(acct))
    return (
        dict(zip(syms, rt.book.get_many(acct, syms, rt.book.SCAN_FIELDS), strict=True)),
        dict(zip(syms, rt.market.get_many(syms), strict=True)),
    )


def venue_positions(rt: Runtime, from_streams: bool = True) -> list[VenuePosition]:
    """The account's open positions: from ``harvest streams``' cache when ``from_streams`` and
    the cache may stand in for positionRisk (:meth:`harvest.store.streams.StreamCache.snapshot`
    within ``settings.streams_max_age_s``; no request weight), else from the venue (REST).
    A read from the cache is counted (``positions:streams``), one that could not be by why
    (``streams:fallback:<why>``, :meth:`StreamCache.count_fallback`)."""
    if from_streams:
        cache = StreamCache(rt.r, rt.settings.namespace, rt.settings.account)
        age = rt.settings.streams_max_age_s
        # harvest streams beats once a second: its heartbeat may be up to ~3 s old while alive
        cached = cache.snapshot(age, max(age, 3.0))
        if cached is not None:
            rt.counters.count("positions:streams")
            return cached
        cache.count_fallback(rt.counters)
    return rt.venue.positions()


def load_positions(
    rt: Runtime,
    symbols: set[str] | None = None,
    from_streams: bool = True,
    vps: list[VenuePosition] | None = None,
) -> tuple[list[Row], float]:
    """Open positions with their book entry and the market state of their symbol, and the
    market time (positions: :func:`venue_positions`; ``from_streams`` False reads REST; ``vps``:
    the venue's positions as the caller already read them, e.g. reconcile from the stream
    cache). Starts a new book epoch where the venue shows a new opening; drops ghost book
    entries (only on a full scan, ``symbols`` None). Positions without a cached market state
    are skipped and counted. Reads are batched: one venue call and, beside it in another
    thread, one book read and one market read; one write of moved peaks/troughs."""
    acct = rt.settings.account
    now = rt.market_now()
    if symbols is None:
        # Harvest's own reads (book entries and market states of every booked position) run
        # in a second thread while the venue's positions are read and parsed here.
        ahead = _reader().submit(_booked, rt, acct)
        vps = venue_positions(rt, from_streams) if vps is None else vps
        booked, booked_markets = ahead.result()
    else:
        vps = [v for v in (venue_positions(rt, from_streams) if vps is None else vps) if v.symbol in symbols]
        booked, booked_markets = {}, {}
    syms = [v.symbol for v in vps]
    ghosts = set(booked) - set(syms)  # in the book, not on the venue (full scans only)
    new = [s for s in syms if s not in booked]  # first sight (or a partial scan): read them now
    booked.update(zip(new, rt.book.get_many(acct, new, rt.book.SCAN_FIELDS), strict=True))
    booked_markets.update(zip(new, rt.market.get_many(new), strict=True))
    entries = [booked[s] for s in syms]
    markets = [booked_markets[s] for s in syms]
    rows: list[Row] = []
    epochs: dict[str, dict[str, Any]] = {}  # new book entries, written in one transaction
    extremes: dict[str, dict[str, float]] = {}  # peak/trough moves, written in one pipeline
    for vp, booked_entry, m in zip(vps, entries, markets, strict=True):
        if m is None:
            rt.counters.count("scan:no_market_state")
            continue
        entry: dict[str, Any]
        if booked_entry is None or is_new_epoch(vp, booked_entry):
            entry = epochs[vp.symbol] = new_book_entry(vp, m, now, rt.settings.theta_for(vp.symbol))
        elif vp.mark_price > (booked_entry.get("peak_price") or 0) or vp.mark_price < (
            booked_entry.get("trough_price") or float("inf")
        ):
            extremes[vp.symbol] = {
                "peak_price": max(booked_entry.get("peak_price") or 0, vp.mark_price),
                "trough_price": min(booked_entry.get("trough_price") or float("inf"), vp.mark_price),
            }
            entry = {**booked_entry, **extremes[vp.symbol]}
        else:
            entry = booked_entry
        rows.append((vp, entry, m))
    rt.book.put_many(acct, epochs)
    rt.book.update_many(acct, extremes)
    if symbols is None:
        for ghost in ghosts:
            rt.book.drop(acct, ghost)
            rt.counters.count("reconcile:ghost_dropped")
    return rows, now


def make_decision(
    pos: Position,
    m: MarketState,
    now: float,
    action: Action,
    tier: int,
    fraction: float,
    new_stop: float | None,
    r_net: float,
    kill: float,
    comps: dict[str, float],
    reasons: list[str] | None = None,
    time_stop: bool = False,
) -> Decision:
    """A :class:`Decision` (the propose payload) from one evaluated position; ``reasons``
    replace the kernel's reason codes (protection decisions); ``time_stop``: a close by age."""
    return Decision(
        account=pos.account,
        symbol=pos.symbol,
        epoch=pos.epoch,
        side=pos.side,
        action=action,
        tier=tier,
        close_fraction=fraction,
        new_stop=new_stop,
        r_net=r_net,
        kill_score=kill,
        components=comps,
        reason_codes=reasons if reasons is not None else reason_codes(action, comps, time_stop),
        mark_price=pos.mark_price,
        regime=m.regime,
        decided_at=now,
    )


def _fresh(rt: Runtime, rows: list[Row]) -> list[Row]:
    """The rows with a stale market state (older than ``market_stale_s``) stripped of their
    entry state: the kill score's market components are then 0 (no decision is made from a
    state that stopped refreshing; age still counts). Counted ``scan:market_stale``."""
    since = time.time() - rt.settings.market_stale_after_s
    stale = {i for i, (_, _, m) in enumerate(rows) if m.computed_at is not None and m.computed_at < since}
    if not stale:
        return rows  # the usual case: nothing copied
    rt.counters.count("scan:market_stale", len(stale))
    return [(vp, {**e, "entry_state": None}, m) if i in stale else (vp, e, m) for i, (vp, e, m) in enumerate(rows)]


def protection(
    vp: VenuePosition, entry: dict[str, Any], theta: HarvestTheta, action: Action
) -> tuple[Action, float | None, list[str]] | None:
    """What an unprotected position (:func:`harvest.domain.book.unprotected`) does instead of the
    kernel's ``action``: None to keep it (a kill close, or a profit lock, which places a stop
    itself); else PROTECT at :func:`harvest.domain.book.protective_stop`, or a full close
    ``stop_breached`` when the mark is already through that stop."""
    if action in (Action.FULL_CLOSE_PROPOSED, Action.PROFIT_LOCK_SL):
        return None
    stop, through = protective_stop(vp, entry, theta)
    why = "stop_beyond_liquidation" if vp.stop_price is not None else "no_stop"
    if through:
        return Action.FULL_CLOSE_PROPOSED, None, ["stop_breached", why]
    return Action.PROTECT, stop, ["protect", why]


def decide(rt: Runtime, rows: list[Row], now: float) -> list[Decision]:
    """Batch-evaluate positions (one :func:`harvest.domain.kernel.evaluate_batch` call over arrays
    built straight from the rows); a Decision for each one that needs action, and for every
    position without a stop that can trigger (:func:`protection`). Only those get a validated
    :class:`Position` model; rows it would reject are left out and counted
    (``scan:invalid_position``), found by the vectorized :func:`harvest.domain.book.valid_rows`. A
    stale market state makes no kill decision (:func:`_fresh`). Symbols with theta overrides
    (``symbol_theta``, :meth:`settings.HarvestSettings.theta_for`) are evaluated in a batch of
    their own theta."""
    if not rows:
        return []
    rows = _fresh(rt, rows)
    s = rt.settings
    if not s.symbol_theta:
        return _decide(rt, rows, now, s.theta)
    groups: dict[HarvestTheta, list[Row]] = {}
    for row in rows:
        groups.setdefault(s.theta_for(row[0].symbol), []).append(row)
    return [d for theta, part in groups.items() for d in _decide(rt, part, now, theta)]


def _decide(rt: Runtime, rows: list[Row], now: float, theta: HarvestTheta) -> list[Decision]:
    """:func:`decide` on rows that share one ``theta``."""
    acct = rt.settings.account
    batch = PositionBatch.from_rows([position_row(vp, e, m) for vp, e, m in rows])
    ok = valid_rows(batch, np.array([vp.leverage for vp, _, _ in rows], dtype=np.float64))
    idx = np.flatnonzero(ok)
    if len(idx) < len(rows):
        rt.counters.count("scan:invalid_position", len(rows) - len(idx))
    res = evaluate_batch(batch.select(idx), now, theta)
    naked = {k for k, i in enumerate(idx.tolist()) if unprotected(rows[i][0])}
    out = []
    for k in sorted(set(np.flatnonzero(res.action).tolist()) | naked):
        vp, entry, m = rows[int(idx[k])]
        try:
            pos = to_position(acct, vp, entry)
        except ValidationError:  # valid_rows is the model's rule set; this is a safety net
            rt.counters.count("scan:invalid_position")
            continue
        comps = {name: float(res.components[j, k]) for j, name in enumerate(KILL_COMPONENTS)}
        stop = float(res.new_stop[k])
        action, tier, fraction = ACTION_CODES[int(res.action[k])], int(res.tier[k]), float(res.close_fraction[k])
        new_stop, reasons = (None if np.isnan(stop) else stop), None
        if k in naked:
            alt = protection(vp, entry, theta, action)
            if alt is not None:
                action, new_stop, reasons = alt
                tier, fraction = 0, (1.0 if action is Action.FULL_CLOSE_PROPOSED else 0.0)
        if action is Action.NONE:
            continue
        out.append(
            make_decision(
                pos,
                m,
                now,
                action,
                tier,
                fraction,
                new_stop,
                float(res.r_net[k]),
                float(res.kill_score[k]),
                comps,
                reasons,
                bool(res.time_stop[k]),
            )
        )
    return out


def plan_decisions(rt: Runtime, decisions: list[Decision]) -> list[tuple[Decision, NextAttempt]]:
    """Each decision with what its lineage says (:func:`harvest.domain.plans.next_attempt`, one
    round trip for all): a decision that starts a chain carries its attempt (and, for a tier
    filled in part, the quantity still owed)."""
    s = rt.settings
    latest = rt.plans.latest_many([lineage_of(d) for d in decisions])
    wall = time.time()
    out = []
    for d, last in zip(decisions, latest, strict=True):
        nx = next_attempt(d.action, last, wall, s.attempt_backoff_s, s.attempt_backoff_max_s, s.max_decision_attempts)
        if nx.starts and (nx.attempt or nx.remaining_qty):
            d = d.model_copy(update={"attempt": nx.attempt, "remaining_qty": nx.remaining_qty if d.tier else None})
        out.append((d, nx))
    return out


def decide_and_plan(rt: Runtime, rows: list[Row], now: float) -> list[tuple[Decision, NextAttempt]]:
    """:func:`decide` and :func:`plan_decisions`, with one more step: a position whose
    partial tier is waiting for its next attempt or abandoned is evaluated again as if that
    tier were harvested, so a stuck partial never freezes the profit lock (or anything else
    the position calls for). A tier whose lineage says it was done (FILLED) while the book
    says otherwise — the book lost with the state, or read just before the fill — is marked
    harvested in the book and treated the same way. Returns every decision with its lineage
    verdict."""
    planned = plan_decisions(rt, decide(rt, rows, now))
    blocked = {
        d.symbol: d.tier
        for d, nx in planned
        if d.tier and (nx.kind in ("waiting", "abandoned") or (nx.kind == "repeat" and nx.reason == "done"))
    }
    if not blocked:
        return planned
    done = {
        d.symbol: {"harvested_tier": d.tier}
        for d, nx in planned
        if d.tier and nx.kind == "repeat" and nx.reason == "done"
    }
    if done:
        rt.book.update_many(rt.settings.account, done)
    again = [
        (vp, {**e, "harvested_tier": max(int(e.get("harvested_tier", 0)), blocked[vp.symbol])}, m)
        for vp, e, m in rows
        if vp.symbol in blocked
    ]
    return planned + plan_decisions(rt, [d for d in decide(rt, again, now) if not d.tier])


def chain_payload(d: Decision, scanned_at: float) -> tuple[dict[str, Any], str]:
    """The first message of a decision's chain and its plan_id: ``(Decision as a JSON dict with
    ``scanned_at`` (Unix s, the scan tick, for the scan-to-fill latency), plan_id)``."""
    payload = d.model_dump(mode="json")
    payload["scanned_at"] = scanned_at
    return payload, plan_id_for(d)


def write_triggers(rt: Runtime, rows: list[Row], pipe: Any = None) -> int:
    """Replace the account's triggers (:meth:`harvest.store.keys.Keys.triggers`) with those of
    ``rows``: for each position, :func:`harvest.domain.triggers.next_trigger` under its symbol's
    theta, as ``{"price": USDT, "side": 1 | -1}`` (a LONG fires at or above the price, a SHORT at
    or below). Written to ``pipe`` when given. Returns how many positions have one."""
    out = {}
    for vp, entry, _ in rows:
        try:
            pos = to_position(rt.settings.account, vp, entry)
        except ValidationError:
            continue
        price = next_trigger(pos, rt.settings.theta_for(vp.symbol))
        if price is not None:
            out[vp.symbol] = json.dumps({"price": price, "side": pos.side.sign})
    key = rt.plans.k.triggers(rt.settings.account)
    p = pipe if pipe is not None else rt.r.pipeline(transaction=False)
    p.delete(key)
    if out:
        p.hset(key, mapping=out)
        p.expire(key, max(30, int(4 * rt.settings.scan_interval_s)))  # a stopped scan's triggers lapse
    if pipe is None:
        p.execute()
    return len(out)
