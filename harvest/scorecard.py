"""The harvest scorecard from live state (the seeds' six questions, answered from Redis):
plans produced and executed by action and terminal state, orders, duplicate blocks, guard
blocks by reason, realized PnL per symbol, open plans, heartbeats and queue depths."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from harvest.paper import PaperVenue
from harvest.plans import TERMINAL
from harvest.runtime import Runtime
from harvest.venue import VenueError


def queue_depths(rt: Runtime) -> dict[str, int]:
    """Messages waiting in each of the namespace's queues (Redis broker lists)."""
    return {k: int(rt.r.llen(rt.settings.queue(k))) for k in ("scan", "orders", "housekeeping")}


def paper_engine(rt: Runtime) -> PaperVenue | None:
    """The paper engine's state in Redis (orders, PnL) on the paper venue, whether harvest
    reaches it in-process or through python-binance and the emulator; None on testnet/live."""
    if isinstance(rt.venue, PaperVenue):
        return rt.venue
    if rt.settings.venue == "paper" and rt.clock is not None:
        return PaperVenue(rt.r, rt.settings.namespace, rt.settings.account, rt.clock)
    return None


def build_scorecard(rt: Runtime) -> dict:
    """Scorecard as a JSON-ready dict. PnL in USDT: ``realized`` (gross), ``commission``,
    ``funding`` (paid; negative when received) and ``net = realized − commission − funding``."""
    by = defaultdict(Counter)
    non_terminal = 0
    plans = 0
    for p in rt.plans.all_plans():
        plans += 1
        by[p.action.value][p.state] += 1
        if p.state not in TERMINAL:
            non_terminal += 1
    counters = rt.plans.counters()
    orders: Counter = Counter()
    book = paper_engine(rt)
    for o in book.orders(harvest_only=True) if book else []:
        orders[f"{o.type}:{o.status}"] += 1
    pnl = {}
    total = 0.0
    for sym, v in sorted(book.pnl().items()) if book else []:
        net = v.get("realized", 0.0) - v.get("commission", 0.0) - v.get("funding", 0.0)
        pnl[sym] = {"realized": round(v.get("realized", 0.0), 4), "commission": round(v.get("commission", 0.0), 4),
                    "funding": round(v.get("funding", 0.0), 4), "net": round(net, 4),
                    "stops_hit": int(v.get("stops_hit", 0))}
        total += net
    now = time.time()
    return {
        "plans": plans,
        "plans_by_action": {a: dict(c) for a, c in sorted(by.items())},
        "executed": sum(c.get("FILLED", 0) + c.get("PARTIALLY_FILLED", 0) for c in by.values()),
        "non_terminal": non_terminal,
        "orders": dict(sorted(orders.items())),
        "guard_blocks": {k.split(":", 1)[1]: v for k, v in sorted(counters.items()) if k.startswith("guard:")},
        "duplicates_blocked": counters.get("scan:duplicates_skipped", 0)
        + sum(v for k, v in counters.items() if k.startswith("dedup:")),
        "malformed": {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("malformed:")},
        "scans": counters.get("scan:runs", 0),
        "chains_started": counters.get("scan:chains_started", 0),
        "realized_pnl": pnl,
        "realized_pnl_total": round(total, 4),
        "positions_open": _positions_open(rt),
        "queue_depth": queue_depths(rt),
        "heartbeat_age_s": {k: round(now - v, 3) for k, v in sorted(rt.plans.heartbeats().items())},
    }


def _positions_open(rt: Runtime) -> int | None:
    try:
        return len(rt.venue.positions())
    except VenueError:
        return None


def format_scorecard(card: dict) -> str:
    """Human-readable scorecard (the same figures as the JSON form)."""
    lines = [f"plans: {card['plans']}  executed: {card['executed']}  non-terminal: {card['non_terminal']}"
             f"  duplicates blocked: {card['duplicates_blocked']}  scans: {card['scans']}"]
    lines.append("plans by action and state:")
    for a, states in card["plans_by_action"].items():
        lines.append(f"  {a:<22} " + "  ".join(f"{s}={n}" for s, n in sorted(states.items())))
    lines.append("orders: " + ("  ".join(f"{k}={v}" for k, v in card["orders"].items()) or "none"))
    lines.append("guard blocks: " + ("  ".join(f"{k}={v}" for k, v in card["guard_blocks"].items()) or "none"))
    if card["malformed"]:
        lines.append("malformed messages: " + "  ".join(f"{k}={v}" for k, v in card["malformed"].items()))
    lines.append("realized PnL (USDT): net total %.2f" % card["realized_pnl_total"])
    for sym, v in card["realized_pnl"].items():
        lines.append(f"  {sym:<9} net {v['net']:>10.2f}  realized {v['realized']:>10.2f}  fees {v['commission']:>8.2f}"
                     f"  funding {v['funding']:>7.2f}  stops hit {v['stops_hit']}")
    lines.append(f"positions open: {card['positions_open']}  queue depth: "
                 + "  ".join(f"{k}={v}" for k, v in card["queue_depth"].items()))
    if card.get("heartbeat_age_s"):
        lines.append("heartbeat age (s): " + "  ".join(f"{k}={v}" for k, v in card["heartbeat_age_s"].items()))
    return "\n".join(lines)
