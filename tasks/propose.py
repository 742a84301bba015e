"""Stage 2, propose: a Decision becomes a plan in state PROPOSED, under a plan_id derived
from the decision and its attempt (never from time). A true repeat finds its plan already there
and stops; an attempt that is not its lineage's next (a stale or forged one) stops too."""

from __future__ import annotations

import time

from pydantic import ValidationError

from harvest.domain.models import Decision
from harvest.domain.plans import client_order_id, lineage_of, plan_id_for
from tasks.app import app
from tasks.common import contract


@app.task(bind=True, **contract("harvest.propose", acks_late=True, max_retries=0))
def propose(self, decision: dict | None) -> dict | None:
    """decision: a :class:`harvest.domain.models.Decision` as a dict (None: nothing to do).

    Returns ``{"plan_id": …}`` for a new plan, None for a repeat (counted as
    ``dedup:<state>``; ``dedup:RECOVERED`` for a plan whose order the exchange showed after a
    loss of state), an attempt out of order (``dedup:stale_attempt``), a state not yet
    recovered (``dedup:STATE_NOT_RECOVERED``) or a malformed payload (recorded, never executed).
    """
    if decision is None:
        return None
    rt = self.rt
    try:
        d = Decision.model_validate(decision)
    except ValidationError as e:
        self.reject(decision, e)
        return None
    if self.for_account(d.account, decision) is None:
        return None
    pid = plan_id_for(d)
    now = time.time()
    plan = {
        "plan_id": pid,
        "lineage": lineage_of(d),
        "attempt": d.attempt,
        "remaining_qty": d.remaining_qty,
        "account": d.account,
        "symbol": d.symbol,
        "epoch": d.epoch,
        "side": d.side,
        "action": d.action,
        "tier": d.tier,
        "close_fraction": d.close_fraction,
        "new_stop": d.new_stop,
        "scanned_at": None if d.scanned_at is None else min(d.scanned_at, now),
        "created_at": now,
        "expires_at": now + rt.settings.plan_ttl_s,
        "client_order_id": client_order_id(pid),
        "decision": d.model_dump(mode="json"),
    }
    data = {
        "r_net": d.r_net,
        "kill_score": d.kill_score,
        "components": d.components,
        "mark_price": d.mark_price,
        "regime": d.regime.value if d.regime else None,
        "reason_codes": d.reason_codes,
        "epoch": d.epoch,
        "attempt": d.attempt,
        "remaining_qty": d.remaining_qty,
    }
    existing = rt.plans.create(plan, data)
    if existing is not None:
        rt.plans.count(f"dedup:{existing}")
        return None
    return {"plan_id": pid}
