"""Stage 1, evaluate: exchange truth + book + market state → decisions.

:func:`load_positions` and :func:`decide` serve both the batch scan (:mod:`tasks.scan`) and
the single-position ``harvest.evaluate`` task that heads the five-stage chain on demand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError

from harvest.book import is_new_epoch, new_book_entry, to_position
from harvest.kernel import PositionBatch, compute_harvest_proposal, evaluate_batch, reason_codes
from harvest.models import ACTION_CODES, KILL_COMPONENTS, Action, Decision, MarketState, Position
from harvest.runtime import Runtime, get_runtime
from tasks.app import app
from tasks.common import record_rejected


def load_positions(rt: Runtime, symbols: set[str] | None = None) -> tuple[list[tuple[Position, MarketState]], float]:
    """Open positions as kernel inputs, with the market state of their symbol, and the market
    time. Starts a new book epoch where the venue shows a new opening; drops ghost book
    entries (only on a full scan, ``symbols`` None). Positions without a cached market state
    or with inconsistent data are skipped and counted."""
    acct = rt.settings.account
    now = rt.market_now()
    vps = rt.venue.positions()
    if symbols is not None:
        vps = [v for v in vps if v.symbol in symbols]
    syms = [v.symbol for v in vps]
    entries = rt.book.get_many(acct, syms)
    markets = rt.market.get_many(syms)
    pairs: list[tuple[Position, MarketState]] = []
    for vp, entry, m in zip(vps, entries, markets, strict=True):
        if m is None:
            rt.plans.count("scan:no_market_state")
            continue
        if is_new_epoch(vp, entry):
            entry = new_book_entry(vp, m, now, rt.settings.theta)
            rt.book.put(acct, vp.symbol, entry)
        elif vp.mark_price > (entry.get("peak_price") or 0) or vp.mark_price < (entry.get("trough_price") or float("inf")):
            rt.book.update(acct, vp.symbol, {"peak_price": max(entry.get("peak_price") or 0, vp.mark_price),
                                             "trough_price": min(entry.get("trough_price") or float("inf"), vp.mark_price)})
        try:
            pairs.append((to_position(acct, vp, entry), m))
        except ValidationError:
            rt.plans.count("scan:invalid_position")
    if symbols is None:
        for ghost in rt.book.symbols(acct) - set(syms):
            rt.book.drop(acct, ghost)
            rt.plans.count("reconcile:ghost_dropped")
    return pairs, now


def make_decision(pos: Position, m: MarketState, now: float, action: Action, tier: int, fraction: float,
                  new_stop: float | None, r_net: float, kill: float, comps: dict[str, float]) -> Decision:
    """A :class:`Decision` (the propose payload) from one evaluated position."""
    return Decision(
        account=pos.account, symbol=pos.symbol, epoch=pos.epoch, side=pos.side, action=action, tier=tier,
        close_fraction=fraction, new_stop=new_stop, r_net=r_net, kill_score=kill, components=comps,
        reason_codes=reason_codes(action, comps),
        mark_price=pos.mark_price, regime=m.regime, decided_at=now,
    )


def decide(rt: Runtime, pairs: list[tuple[Position, MarketState]], now: float) -> list[Decision]:
    """Batch-evaluate positions; a Decision for each one that needs action."""
    if not pairs:
        return []
    theta = rt.settings.theta
    res = evaluate_batch(PositionBatch.from_models(pairs), now, theta)
    out = []
    for i in np.flatnonzero(res.action).tolist():
        pos, m = pairs[i]
        comps = {k: float(res.components[j, i]) for j, k in enumerate(KILL_COMPONENTS)}
        stop = float(res.new_stop[i])
        out.append(make_decision(pos, m, now, ACTION_CODES[int(res.action[i])], int(res.tier[i]),
                                 float(res.close_fraction[i]), None if np.isnan(stop) else stop,
                                 float(res.r_net[i]), float(res.kill_score[i]), comps))
    return out


@app.task(name="harvest.evaluate", bind=True)
def evaluate(self, ref: dict[str, Any]) -> dict | None:
    """Evaluate one position on demand (single-position kernel form).

    ref: ``{"symbol": "BTCUSDT"}``. Returns the Decision as a dict, or None when the position
    needs nothing (or is not open); a malformed ref is recorded and yields None.
    """
    rt = get_runtime()
    if not isinstance(ref, dict) or not isinstance(ref.get("symbol"), str):
        record_rejected(rt, "evaluate", ref, "expected {'symbol': str}")
        return None
    pairs, now = load_positions(rt, {ref["symbol"]})
    if not pairs:
        return None
    pos, m = pairs[0]
    p = compute_harvest_proposal(pos, m, now, rt.settings.theta)
    if p.action is Action.NONE:
        return None
    d = make_decision(pos, m, now, p.action, p.tier, p.close_fraction, p.new_stop, p.r_net, p.kill_score, p.components)
    return d.model_dump(mode="json")
