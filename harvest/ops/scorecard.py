"""The harvest scorecard from live state (the seeds' six questions, answered from Redis):
plans produced and executed by action and terminal state, orders, duplicate blocks, guard
blocks by reason, realized PnL per symbol, open plans, heartbeats, queue depths and queue lag.
A stopped pipeline shows as a growing beat/scan heartbeat age (beat down) or a growing queue
depth and lag (workers down)."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

from harvest.domain.models import PlanState
from harvest.domain.plans import TERMINAL
from harvest.domain.trading import effective
from harvest.ops.term import term_safe
from harvest.services.runtime import Runtime
from harvest.store.connect import sync
from harvest.store.counters import account_counter, account_decisions
from harvest.store.records import Unreadable, numeric_fields
from harvest.venues.base import VenueError
from harvest.venues.sim.paper import PaperVenue

KINDS = ("scan", "orders", "housekeeping")


def _redis_broker(rt: Runtime) -> bool:
    return (
        rt.settings.broker.startswith(("redis://", "rediss://", "redis+sentinel://", "unix://"))
        and rt.settings.broker == rt.settings.redis_url
    )


def queue_depths(rt: Runtime) -> dict[str, int]:
    """Messages waiting in each of the namespace's queues, by kind (``scan``, ``orders``,
    ``housekeeping``): LLEN on a Redis broker, a passive ``queue_declare`` (kombu) on AMQP.
    Raises the broker's connection error when it cannot be reached."""
    if _redis_broker(rt):
        p = rt.r.pipeline(transaction=False)
        for k in KINDS:
            p.llen(rt.settings.queue(k))
        return dict(zip(KINDS, (int(n) for n in p.execute()), strict=True))
    from kombu import Connection

    out = {}
    with Connection(rt.settings.broker, connect_timeout=5) as conn:
        for k in KINDS:
            try:
                out[k] = int(conn.channel().queue_declare(queue=rt.settings.queue(k), passive=True).message_count)
            except conn.channel_errors:  # not declared yet: nothing waiting
                out[k] = 0
    return out


def queue_lag(rt: Runtime) -> dict[str, float | None]:
    """Age (s) of the oldest message waiting in each queue: 0 when empty, None when the
    broker cannot be peeked (AMQP; see ``harvest_queue_wait_seconds`` there). Ages come from
    the ``sent_at`` header every harvest message carries."""
    if not _redis_broker(rt):
        return {k: None for k in KINDS}
    p = rt.r.pipeline(transaction=False)
    for k in KINDS:
        p.lindex(rt.settings.queue(k), -1)  # kombu LPUSHes and BRPOPs: the oldest is last
    now = time.time()
    out: dict[str, float | None] = {}
    for k, raw in zip(KINDS, p.execute(), strict=True):
        try:
            out[k] = round(max(0.0, now - float(json.loads(raw)["headers"]["sent_at"])), 3) if raw else 0.0
        except (ValueError, KeyError, TypeError):
            out[k] = None
    return out


def paper_engine(rt: Runtime) -> PaperVenue | None:
    """The paper engine's state in Redis (orders, PnL) on the paper venue, whether harvest
    reaches it in-process or through python-binance and the emulator; None on testnet/live."""
    if isinstance(rt.venue, PaperVenue):
        return rt.venue
    if rt.settings.venue == "paper" and rt.clock is not None:
        return PaperVenue(rt.r, rt.settings.namespace, rt.settings.account, rt.clock)
    return None


def _account_book(rt: Runtime) -> tuple[Counter, dict[str, dict], str]:
    """One account's harvest orders by ``<type>:<status>`` (a triggered stop's order by its
    ``origType``, STOP_MARKET), its PnL per symbol (USDT:
    ``realized``, ``commission``, ``funding``, ``stops_hit``) and where they were read."""
    orders: Counter = Counter()
    book = paper_engine(rt)
    in_process = book is rt.venue  # the in-process paper engine: its own records
    try:  # each order once; python-binance venues: allOrders, userTrades, income
        listed, venue_pnl = rt.venue.account_records(list(rt.settings.symbols))
        source = "paper engine" if in_process else "exchange (allOrders, userTrades, income)"
    except VenueError:
        listed, venue_pnl, source = [], {}, "exchange unavailable"
    paper_pnl = book.pnl() if book else {}  # the paper engine's own count of stops hit, when there is one
    book_pnl = {s: {**v, "stops_hit": paper_pnl.get(s, {}).get("stops_hit", 0)} for s, v in venue_pnl.items()}
    for o in listed:
        # a triggered stop's MARKET order: counted as the stop it was
        orders[f"{o.orig_type if o.orig_type not in (None, o.type) else o.type}:{o.status}"] += 1
    return orders, book_pnl, source


def build_scorecard(rt: Runtime) -> dict:
    """Scorecard as a JSON-ready dict. PnL in USDT: ``realized`` (gross), ``commission``,
    ``funding`` (paid; negative when received) and ``net = realized − commission − funding``.
    Figures are the deployment's, summed over its accounts; ``accounts`` has each account's
    own (mode, venue, plans, executed, plans by state, orders, net PnL, open positions, scans)."""
    by: defaultdict[str, Counter[str]] = defaultdict(Counter)
    non_terminal = 0
    plans = 0
    lineages: dict[str, int] = {}  # lineage → its latest attempt
    per: dict[str, dict] = {
        a: {"plans": 0, "executed": 0, "plans_by_state": Counter(), "non_terminal": 0} for a in rt.accounts
    }
    unreadable: list[Unreadable] = []
    for p in rt.plans.all_plans(unreadable=unreadable):
        plans += 1
        by[p.action.value][p.state] += 1
        mine = per.setdefault(p.account, {"plans": 0, "executed": 0, "plans_by_state": Counter(), "non_terminal": 0})
        mine["plans"] += 1
        mine["plans_by_state"][p.state] += 1
        mine["executed"] += p.state in (PlanState.FILLED, PlanState.PARTIALLY_FILLED)
        if p.state not in TERMINAL:
            non_terminal += 1
            mine["non_terminal"] += 1
        if p.lineage:
            lineages[p.lineage] = max(lineages.get(p.lineage, 0), p.attempt)
    counters = rt.counters.read()
    stuck: Counter[str] = Counter()
    for d in account_decisions(rt.r, rt.plans.k, rt.accounts).values():
        stuck.update(d)
    orders: Counter = Counter()
    book_pnl: dict[str, dict] = {}
    sources = set()
    for a in rt.accounts:
        ra = rt.for_account(a)
        a_orders, a_pnl, source = _account_book(ra)
        orders.update(a_orders)
        sources.add(source)
        for sym, v in a_pnl.items():
            row = book_pnl.setdefault(sym, {})
            for f, x in v.items():
                row[f] = row.get(f, 0) + x
        per[a].update(
            venue=ra.settings.venue + (" (emulator)" if ra.settings.fapi_url else ""),
            orders=dict(sorted(a_orders.items())),
            realized_pnl_total=round(
                sum(v.get("realized", 0.0) - v.get("commission", 0.0) - v.get("funding", 0.0) for v in a_pnl.values()),
                4,
            ),
            positions_open=_positions_open(ra),
            scans=account_counter(counters, a, "scan:runs"),
        )
    source = " + ".join(sorted(sources))
    states = sync(rt.r.hgetall(rt.plans.k.trading))
    for a in rt.accounts:
        per[a]["mode"] = effective(states, a, rt.for_account(a).settings.mode)
    pnl = {}
    total = 0.0
    for sym, v in sorted(book_pnl.items()):
        net = v.get("realized", 0.0) - v.get("commission", 0.0) - v.get("funding", 0.0)
        pnl[sym] = {
            "realized": round(v.get("realized", 0.0), 4),
            "commission": round(v.get("commission", 0.0), 4),
            "funding": round(v.get("funding", 0.0), 4),
            "net": round(net, 4),
            "stops_hit": int(v.get("stops_hit", 0)),
        }
        total += net
    now = time.time()
    return {
        "plans": plans,
        "plans_archived": int(sync(rt.r.zcard(rt.plans.k.archived))),
        "plans_by_action": {a: dict(c) for a, c in sorted(by.items())},
        "executed": sum(c.get(PlanState.FILLED, 0) + c.get(PlanState.PARTIALLY_FILLED, 0) for c in by.values()),
        "non_terminal": non_terminal,
        "orders": dict(sorted(orders.items())),
        "guard_blocks": {k.split(":", 1)[1]: v for k, v in sorted(counters.items()) if k.startswith("guard:")},
        "duplicates_blocked": counters.get("scan:duplicates_skipped", 0)
        + sum(v for k, v in counters.items() if k.startswith("dedup:")),
        "decisions": {
            "lineages": len(lineages),
            "retried": sum(1 for n in lineages.values() if n > 0),
            "retries_started": counters.get("scan:retries_started", 0),
            "retrying": stuck.get("waiting", 0),
            "abandoned": {k.split(":", 1)[1]: v for k, v in sorted(stuck.items()) if k.startswith("abandoned:")},
        },
        "market_state_age_s": _market_ages(rt, unreadable),
        "malformed": {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("malformed:")},
        "stale_dropped": {k.split(":", 2)[2]: v for k, v in sorted(counters.items()) if k.startswith("stale:expired:")},
        "reconcile": {
            k.split(":", 1)[1]: v
            for k, v in sorted(counters.items())
            if k.startswith("reconcile:") and not k.startswith("reconcile:venue_error")
        },
        "scans": counters.get("scan:runs", 0),
        "chains_started": counters.get("scan:chains_started", 0),
        "notify_failures": counters.get("notify:failed", 0),
        "weight": _weight(rt),
        "realized_pnl": pnl,
        "pnl_source": source,
        "realized_pnl_total": round(total, 4),
        "positions_open": _sum_or_none([per[a]["positions_open"] for a in rt.accounts]),
        "accounts": {
            a: {**v, "plans_by_state": dict(sorted(v["plans_by_state"].items()))} for a, v in sorted(per.items())
        },
        "queue_depth": _or_none(queue_depths, rt),
        "queue_lag_s": queue_lag(rt),
        "heartbeat_age_s": {
            k: round(now - v, 3)
            for k, v in sorted(
                numeric_fields(sync(rt.r.hgetall(rt.plans.k.heartbeat)), rt.plans.k.heartbeat, unreadable).items()
            )
        },
        "unreadable_records": [{"key": u.key, "error": u.error, "newer": u.newer} for u in unreadable],
    }


def _weight(rt: Runtime) -> dict:
    """Request weight: each egress's this minute (``used_this_minute``, against ``limit``), the
    requests the budgets held back (``held``: ``"<egress>|<priority>"`` → n), and the weight per
    account per minute by endpoint over the last 10 complete minutes as the adapters spent it
    (:func:`harvest.venues.binance.weight_spent`)."""
    from harvest.venues.binance import WeightBudget, held_back, weight_spent

    ns, limit = rt.settings.namespace, rt.settings.venue_weight_limit_1m
    used = {e.name: WeightBudget(rt.r, ns, limit, e.name).used() for e in rt.settings.egresses}
    return {
        "limit": limit,
        "used_this_minute": used,
        "held": {f"{e}|{p}": n for (e, p), n in sorted(held_back(rt.r, ns).items())},
        **weight_spent(rt.r, ns),
    }


def _market_ages(rt: Runtime, unreadable: list[Unreadable]) -> dict[str, float | None]:
    """Wall seconds since each allowlisted symbol's cached market state was computed (None:
    none cached, unreadable — listed in ``unreadable`` —, or computed before states carried
    their time)."""
    now = time.time()
    syms = list(rt.settings.symbols)
    return {
        s: (round(now - m.computed_at, 1) if m is not None and m.computed_at is not None else None)
        for s, m in zip(syms, rt.market.get_readable(syms, unreadable), strict=True)
    }


def _or_none(fn, rt: Runtime):
    try:
        return fn(rt)
    except Exception as e:  # broker unreachable: the scorecard still answers from Redis
        return {"error": str(e)[:200]}


def _sum_or_none(xs: list[int | None]) -> int | None:
    return None if any(x is None for x in xs) else sum(x for x in xs if x is not None)


def _positions_open(rt: Runtime) -> int | None:
    try:
        return len(rt.venue.positions())
    except VenueError:
        return None


def format_scorecard(card: dict) -> str:
    """Human-readable scorecard (the same figures as the JSON form)."""
    lines = [
        f"plans: {card['plans']}  executed: {card['executed']}  non-terminal: {card['non_terminal']}"
        f"  true repeats: {card['duplicates_blocked']}  scans: {card['scans']}"
    ]
    dec = card.get("decisions")
    if dec:
        ab = dec["abandoned"]
        lines.append(
            f"decisions: {dec['lineages']}  retried: {dec['retried']} ({dec['retries_started']} further "
            f"attempts)  retrying now: {dec['retrying']}  abandoned: {sum(ab.values())}"
            + (" (" + "  ".join(f"{k}={v}" for k, v in ab.items()) + ")" if ab else "")
        )
    lines.append("plans by action and state:")
    for a, states in card["plans_by_action"].items():
        lines.append(f"  {a:<22} " + "  ".join(f"{s}={n}" for s, n in sorted(states.items())))
    lines.append("orders: " + ("  ".join(f"{k}={v}" for k, v in card["orders"].items()) or "none"))
    lines.append("guard blocks: " + ("  ".join(f"{k}={v}" for k, v in card["guard_blocks"].items()) or "none"))
    if card["malformed"]:
        lines.append("malformed messages: " + "  ".join(f"{k}={v}" for k, v in card["malformed"].items()))
    if card.get("stale_dropped"):
        lines.append("stale messages dropped: " + "  ".join(f"{k}={v}" for k, v in card["stale_dropped"].items()))
    if card.get("reconcile"):
        lines.append("reconcile: " + "  ".join(f"{k}={v}" for k, v in card["reconcile"].items()))
    lines.append(f"notify failures: {card.get('notify_failures', 0)} (notices harvest notify did not deliver)")
    w = card.get("weight")
    if w:
        lines.append(
            f"request weight this minute (limit {w['limit']} per egress): "
            + "  ".join(f"{k}={v}" for k, v in w["used_this_minute"].items())
            + ("  held back: " + "  ".join(f"{k}={v}" for k, v in w["held"].items()) if w["held"] else "")
        )
        by = w.get("by_endpoint") or {}
        lines.append(
            f"weight per account per minute: {w['per_account_per_minute']:.2f} "
            f"({w['accounts']} accounts, last {w['minutes']} min)"
            + ("  " + "  ".join(f"{e}={v:.2f}" for e, v in by.items()) if by else "")
        )
    lines.append("realized PnL (USDT): net total %.2f" % card["realized_pnl_total"])
    for sym, v in card["realized_pnl"].items():
        lines.append(
            f"  {sym:<9} net {v['net']:>10.2f}  realized {v['realized']:>10.2f}  fees {v['commission']:>8.2f}"
            f"  funding {v['funding']:>7.2f}  stops hit {v['stops_hit']}"
        )
    accounts = card.get("accounts") or {}
    if len(accounts) > 1:
        lines.append("accounts:")
        for a, v in accounts.items():
            lines.append(
                f"  {a:<12} {v.get('mode', '?'):<8} plans {v['plans']:>4}  executed {v['executed']:>4}  "
                f"non-terminal {v['non_terminal']}  net PnL {v.get('realized_pnl_total', 0.0):>10.2f}  "
                f"open {v.get('positions_open')}  scans {v.get('scans', 0)}  "
                + " ".join(f"{s}={n}" for s, n in v["plans_by_state"].items())
            )
    lines.append(
        f"positions open: {card['positions_open']}  queue depth: "
        + "  ".join(f"{k}={v}" for k, v in card["queue_depth"].items())
    )
    if card.get("queue_lag_s"):
        lines.append(
            "queue lag (s, oldest waiting message): "
            + "  ".join(f"{k}={'n/a' if v is None else v}" for k, v in card["queue_lag_s"].items())
        )
    ages = card.get("market_state_age_s") or {}
    if ages:
        lines.append("market state age (s): " + "  ".join(f"{k}={'n/a' if v is None else v}" for k, v in ages.items()))
    if card.get("heartbeat_age_s"):
        lines.append("heartbeat age (s): " + "  ".join(f"{k}={v}" for k, v in card["heartbeat_age_s"].items()))
    for u in card.get("unreadable_records") or []:
        lines.append(f"unreadable record: {u['key']}: {u['error']}")
    return "\n".join(term_safe(line) for line in lines)  # a stored name or reason cannot forge a line
