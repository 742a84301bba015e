"""Stage 1, evaluate: one position on demand (the scan's rules on one row; the service is
:mod:`harvest.services.decide`)."""

from __future__ import annotations

from typing import Any

from harvest.services.decide import decide_and_plan, load_positions
from tasks.app import app
from tasks.common import contract


@app.task(bind=True, **contract("harvest.evaluate", acks_late=True, max_retries=0))
def evaluate(self, ref: dict[str, Any]) -> dict | None:
    """Evaluate one position on demand (the scan's rules on one row, lineage included).

    ref: ``{"symbol": "BTCUSDT"}``, with ``"account"`` when the deployment manages several
    (default: its first). Returns the Decision as a dict, or None when the position
    needs nothing (or is not open, or its decision is in flight, done, backing off or
    abandoned); a malformed ref is recorded and yields None.
    """
    rt = self.rt
    if not isinstance(ref, dict) or not isinstance(ref.get("symbol"), str):
        self.reject(ref, "expected {'symbol': str}")
        return None
    rt = self.for_account(str(ref.get("account") or rt.accounts[0]), ref)
    if rt is None:
        return None
    rows, now = load_positions(rt, {ref["symbol"]}, from_streams=False)  # on demand: exchange truth now
    for d, nx in decide_and_plan(rt, rows, now):
        if nx.starts:
            return d.model_dump(mode="json")
    return None
