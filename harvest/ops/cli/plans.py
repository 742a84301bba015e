"""``harvest plans`` (list plans) and ``harvest plan`` (a plan's ledger; cancel; retry)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from harvest.domain.models import PlanState
from harvest.ops.cli.common import say, who
from harvest.store.records import Unreadable, UnreadableRecord

if TYPE_CHECKING:
    from harvest.domain.models import Plan
    from harvest.ops.cli.common import Subparsers


def _plan_row(p: Plan) -> dict[str, Any]:
    """The fields of ``p`` that ``harvest plans`` lists (``--json``: one object a plan)."""
    return {
        "plan_id": p.plan_id,
        "symbol": p.symbol,
        "action": p.action.value,
        "tier": p.tier,
        "attempt": p.attempt,
        "state": p.state,
        "reason": p.reason,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "order_qty": p.order_qty,
        "stop_price": p.stop_price,
        "executed_qty": p.executed_qty,
        "realized_pnl": p.realized_pnl,
    }


def cmd_plans(a: argparse.Namespace) -> int:
    """``harvest plans``: the plans matching the filters, oldest first, unreadable ones after them."""
    from harvest.ops.demo import parse_time
    from harvest.services.runtime import get_runtime

    rt = get_runtime()
    since = parse_time(a.since) if a.since else None
    unreadable: list[Unreadable] = []  # plans that do not parse: listed after the others, never a crash
    rows = [
        _plan_row(p)
        for p in rt.plans.all_plans(unreadable=unreadable)
        if (a.account is None or p.account == a.account)
        and (a.symbol is None or p.symbol == a.symbol)
        and (a.state is None or p.state == a.state.upper())
        and (since is None or p.created_at >= since)
    ]
    if a.json:
        print(json.dumps(rows + [{"unreadable": u.key, "error": u.error} for u in unreadable]))
        return 0
    from datetime import datetime, timezone

    for r in rows:
        t = datetime.fromtimestamp(r["created_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        say(  # every field as stored: escaped, one plan per line whatever its reason holds
            f"{t}  {r['plan_id']}  {r['symbol']:<10} {r['action']:<20} #{r['attempt']:<2} "
            f"{r['state']:<16} {r['reason']}"
        )
    for u in unreadable:
        say(f"UNREADABLE  {u.key}: {u.error}")
    print(f"{len(rows)} plans" + (f", {len(unreadable)} unreadable" if unreadable else ""))
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    """``harvest plan show|cancel|retry``: 0 done, 1 not done (moved meanwhile, unreadable), 2 refused."""
    from harvest.services.runtime import get_runtime

    rt = get_runtime()
    try:
        plan = rt.plans.get(a.plan_id)
    except UnreadableRecord as e:
        say(f"harvest plan: {e}", file=sys.stderr)
        return 1
    if plan is None:
        print(f"harvest plan: no plan {a.plan_id!r}", file=sys.stderr)
        return 2
    if a.action == "cancel":
        if plan.state not in (PlanState.PROPOSED, PlanState.APPROVED):
            say(
                f"harvest plan: {a.plan_id} is {plan.state}: only a PROPOSED or APPROVED plan can be cancelled "
                "(a SUBMITTED one's order is with the exchange; confirm resolves it)",
                file=sys.stderr,
            )
            return 2
        ok, before = rt.plans.transition(a.plan_id, PlanState.REJECTED, "operator_cancel", data={"who": who()})
        done = "cancelled (REJECTED operator_cancel; its decision is not tried again this epoch)"
        say(f"{a.plan_id}: {done if ok else f'not cancelled: it moved to {before}'}")
        return 0 if ok else 1
    if a.action == "retry":
        from harvest.domain.plans import NON_TERMINAL

        if plan.state in NON_TERMINAL:
            say(f"harvest plan: {a.plan_id} is {plan.state}: still in flight, nothing to retry", file=sys.stderr)
            return 2
        if plan.state in (PlanState.FILLED, PlanState.SHADOWED):
            say(f"harvest plan: {a.plan_id} is {plan.state}: it took effect, nothing to retry", file=sys.stderr)
            return 2
        rt.plans.request_retry(plan, who())
        print(
            f"{a.plan_id}: retry requested (by {who()}): the next scan that makes this decision again gives it "
            "its next attempt at once, whatever its backoff or attempt bound"
        )
        return 0
    ledger: dict[str, Any] = {
        "plan": plan.model_dump(mode="json"),
        "transitions": rt.plans.history(a.plan_id, sends=True),
    }
    if a.json:
        print(json.dumps(ledger, default=str))
        return 0
    p = plan
    d = p.decision
    # Every field below was read from Redis (the exchange's error message among them): each line
    # is escaped whole, so a stored escape sequence or newline shows as text.
    say(
        f"plan {p.plan_id}  {p.symbol} {p.side.value} epoch {p.epoch}  {p.action.value} tier {p.tier} "
        f"attempt {p.attempt}  lineage {p.lineage}",
        f"state {p.state} ({p.reason})  clientOrderId {p.client_order_id}",
        f"decision: mark {d.get('mark_price')}  R_net {d.get('r_net')}  kill {d.get('kill_score')}  "
        f"regime {d.get('regime')}  reasons {d.get('reason_codes')}",
        f"components: {d.get('components')}",
        f"order: qty {p.order_qty}  stop {p.stop_price}  executed {p.executed_qty} @ {p.avg_price}  "
        f"realized PnL (net of fees) {p.realized_pnl}  error {p.error_code} {p.error_message or ''}",
    )
    for t in ledger["transitions"]:
        say(
            f"  {t.get('ts')}  {t.get('from') or '-':>9} → {t.get('to'):<16} {t.get('reason')}  "
            f"{str(t.get('data', ''))[:200]}"
        )
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``plans`` and ``plan`` parsers to ``sub``."""
    pl = sub.add_parser("plans", help="list plans (newest last)")
    pl.add_argument("--account")
    pl.add_argument("--symbol")
    pl.add_argument("--state")
    pl.add_argument("--since", help="ISO-8601 UTC or Unix seconds")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=cmd_plans)
    pn = sub.add_parser(
        "plan",
        help="a plan's ledger (show), cancel a PROPOSED/APPROVED plan, or retry the decision of a plan that "
        "ended without effect now",
    )
    pn.add_argument("action", choices=["show", "cancel", "retry"])
    pn.add_argument("plan_id")
    pn.add_argument("--json", action="store_true")
    pn.set_defaults(fn=cmd_plan)
