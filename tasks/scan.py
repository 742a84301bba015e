"""The beat scan: evaluate every open position in one batch and start the
``propose → guard → execute → confirm`` chain only for positions that need action, skipping
decisions whose plan already exists (true repeats) and positions with a plan in flight."""

from __future__ import annotations

import logging
import time

from harvest.metrics import scan_duration
from harvest.plans import plan_id_for
from harvest.runtime import get_runtime
from harvest.venue import VenueError
from tasks.app import app
from tasks.evaluate import decide, load_positions
from workflows import action_chain

log = logging.getLogger("harvest")


@app.task(name="harvest.scan_positions")
def scan_positions() -> dict:
    """One scan. Returns ``{"positions", "actionable", "started", "duplicates", "busy",
    "seconds"}`` (counts; wall seconds)."""
    t0 = time.perf_counter()
    scanned_at = time.time()
    rt = get_runtime()
    try:
        pairs, now = load_positions(rt)
    except VenueError as e:  # the exchange did not answer: this tick is skipped, the next one retries
        rt.plans.count(f"scan:venue_error:{e.code}")
        log.warning("scan skipped: positions unavailable (%s)", e)
        return {"positions": 0, "actionable": 0, "started": 0, "duplicates": 0, "busy": 0,
                "seconds": time.perf_counter() - t0, "error": e.code}
    decisions = decide(rt, pairs, now)
    ids = [plan_id_for(d) for d in decisions]
    exists = rt.plans.exists_many(ids)
    holders = rt.plans.inflight_many(rt.settings.account, [d.symbol for d in decisions])
    started = dup = busy = 0
    for d, pid, ex, holder in zip(decisions, ids, exists, holders, strict=True):
        if ex:
            dup += 1
        elif holder is not None:
            busy += 1
        else:
            payload = d.model_dump(mode="json")
            payload["scanned_at"] = scanned_at
            action_chain(payload, pid).apply_async()
            started += 1
    p = rt.r.pipeline(transaction=False)
    k = rt.plans.k.counters
    p.hincrby(k, "scan:runs", 1)
    p.hincrby(k, "scan:chains_started", started)
    p.hincrby(k, "scan:duplicates_skipped", dup)
    p.hincrby(k, "scan:busy_skipped", busy)
    p.hset(rt.plans.k.heartbeat, "scan", repr(time.time()))
    seconds = time.perf_counter() - t0
    scan_duration(rt.r, rt.settings.namespace).observe(seconds, pipe=p)
    p.execute()
    return {"positions": len(pairs), "actionable": len(decisions), "started": started,
            "duplicates": dup, "busy": busy, "seconds": seconds}
