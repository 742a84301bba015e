"""Stage 2, propose: a Decision becomes a plan in state PROPOSED, under a plan_id derived
from the decision and its attempt (never from time). A true repeat finds its plan already there
and stops; an attempt that is not its lineage's next (a stale or forged one) stops too."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from harvest.domain.models import Decision
from harvest.domain.plans import new_plan
from tasks.app import app
from tasks.common import contract


@app.task(bind=True, **contract("harvest.propose", acks_late=True, max_retries=0))
def propose(self: Any, decision: dict[str, Any] | None) -> dict[str, Any] | None:
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
    new = new_plan(d, time.time(), rt.settings.plan_ttl_s)
    existing = rt.plans.create(new.record, new.data)
    if existing is not None:
        rt.counters.count(f"dedup:{existing}")
        return None
    return {"plan_id": new.plan_id}
