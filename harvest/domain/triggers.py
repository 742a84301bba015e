"""Event-driven exits: the mark price at which a position's next decision falls due (pure).

The beat scan decides on what it sees at its tick; a mark that crosses a partial tier or a
profit-lock level between two ticks waits up to a scan interval. :func:`next_trigger` gives,
for one position, the nearest mark price *beyond the current mark, in the position's favour*
at which the kernel (:mod:`harvest.domain.kernel`) decides something it does not decide at the
current mark: the next unharvested partial tier, or the first profit lock (or its next step).
``harvest streams`` compares every streamed mark with it and, once crossed, starts that
position's chain at once; the beat scan remains the safety net (and the only path for the kill
score and the time stop, which a mark alone does not move).
"""

from __future__ import annotations

import numpy as np

from harvest.domain.exit_ladder import ladder_targets
from harvest.domain.models import HarvestTheta, Position


def mark_for_r(pos: Position, r: float, theta: HarvestTheta) -> float:
    """The mark price (USDT) at which ``pos`` stands at ``r`` R net: the inverse of
    :func:`harvest.domain.kernel.compute_r_net`, whose R_net is linear in the mark:
    ``R(m) = (s·(m − e)·q − fee·m·q − F) / R_u`` with ``F = funding_paid·q/q0`` and
    ``R_u = |e − initial_stop|·q``, so ``m = (r·R_u + s·e·q + F) / (q·(s − fee))``."""
    s, q, e = pos.side.sign, pos.qty, pos.entry_price
    r_unit = abs(e - pos.initial_stop) * q
    funding = pos.funding_paid / pos.qty_at_open * q
    return (r * r_unit + s * e * q + funding) / (q * (s - theta.taker_fee_rate))


def next_trigger(pos: Position, theta: HarvestTheta) -> float | None:
    """The nearest mark price (USDT) strictly beyond ``pos.mark_price`` in the position's favour
    (above for a LONG, below for a SHORT) at which the kernel decides a partial close or a profit
    lock that it does not decide at the current mark; None when none lies ahead (every tier
    harvested and the lock can only follow the mark, which the next step covers).

    Candidates: each unharvested tier — ``r_ladder``: R_net = t1_r/t2_r/t3_r (:func:`mark_for_r`);
    ``lsf_ladder``: the exit ladder's take-profit prices (:func:`ladder_targets`) — and the profit
    lock, which needs both R_net ≥ lock_start_r and a stop ``e + lock_fraction·(m − e)`` that
    tightens the stop in force by ``lock_min_step_r`` R: ``s·(m − e) ≥ (min_step + s·(stop − e)) /
    lock_fraction``; the later of the two prices. A candidate at or behind the current mark is
    due now: the scan (or a chain in flight) owns it, and it is not a trigger."""
    s, e = pos.side.sign, pos.entry_price
    cands: list[float] = []
    if theta.policy == "r_ladder":
        tiers = (theta.t1_r, theta.t2_r, theta.t3_r)
        cands += [mark_for_r(pos, t, theta) for k, t in enumerate(tiers, start=1) if k > pos.harvested_tier]
    else:
        tp, _ = ladder_targets(np.array([e]), np.array([float(s)]), np.array([pos.leverage]), theta)
        cands += [float(tp[k - 1, 0]) for k in (1, 2, 3) if k > pos.harvested_tier]
    at_start = mark_for_r(pos, theta.lock_start_r, theta)
    min_step = theta.lock_min_step_r * abs(e - pos.initial_stop)
    at_step = e + s * (min_step + s * (pos.stop - e)) / theta.lock_fraction
    cands.append(at_start if s * at_start >= s * at_step else at_step)
    ahead = [c for c in cands if s * (c - pos.mark_price) > 0.0]
    return min(ahead, key=lambda c: s * c) if ahead else None
