"""Event-driven exits: the mark price at which a position's next decision falls due (pure).

The beat scan decides on what it sees at its tick; a mark that crosses a partial tier or a
profit-lock level between two ticks waits up to a scan interval. :func:`next_trigger` gives,
for one position, the nearest mark price *beyond the current mark, in the position's favour*
at which the position's exit policy (:mod:`harvest.domain.policies`; under the harvest kernel:
:mod:`harvest.domain.kernel`) decides something it does not decide at the current mark: the next
unharvested partial tier, or the first profit lock (or its next step).
``harvest streams`` compares every streamed mark with it and, once crossed, starts that
position's chain at once; the beat scan remains the safety net (and the only path for the kill
score and the time stop, which a mark alone does not move).
"""

from __future__ import annotations

import math

from harvest.domain.models import HarvestTheta, Position

#: A candidate within this fraction of the mark is at the mark (rounding of R_net's inverse).
AT_MARK_REL = 1e-12


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
    (above for a LONG, below for a SHORT) at which ``theta.policy`` decides something it does
    not decide at the current mark (a partial close or a profit lock under the harvest kernel's
    policies); None when none lies ahead. The policy's own
    :meth:`harvest.domain.policies.ExitPolicy.next_trigger`."""
    from harvest.domain.policies import policy_for

    return policy_for(theta).next_trigger(pos, theta)


def lock_trigger(pos: Position, theta: HarvestTheta) -> float:
    """The mark (USDT) at which the profit lock next falls due: it needs both R_net ≥
    lock_start_r and a stop ``e + lock_fraction·(m − e)`` that tightens the stop in force by
    ``lock_min_step_r`` R: ``s·(m − e) ≥ (min_step + s·(stop − e)) / lock_fraction``; the later
    of the two prices (it may lie at or behind the mark)."""
    s, e = pos.side.sign, pos.entry_price
    at_start = mark_for_r(pos, theta.lock_start_r, theta)
    min_step = theta.lock_min_step_r * abs(e - pos.initial_stop)
    at_step = e + s * (min_step + s * (pos.stop - e)) / theta.lock_fraction
    return at_start if s * at_start >= s * at_step else at_step


def nearest_ahead(pos: Position, candidates: list[float]) -> float | None:
    """The candidate mark nearest to ``pos.mark_price`` strictly in the position's favour, or
    None. A candidate behind the current mark is due now: the scan (or a chain in flight) owns
    it, and it is not a trigger. One at the mark (within :data:`AT_MARK_REL` of it) gives the
    next representable price ahead (``math.nextafter``): the kernel may not act at the mark itself."""
    s, m = pos.side.sign, pos.mark_price
    # A candidate that equals the mark up to rounding (the inverse of R_net in floating point) is
    # due at the mark by the formula, but the kernel's own R_net may fall a hair short of it there:
    # its trigger is then the next representable price ahead, or nobody would act until the next.
    tol = AT_MARK_REL * abs(m)
    ahead = [c if s * (c - m) > 0.0 else math.nextafter(m, s * math.inf) for c in candidates if s * (c - m) > -tol]
    return min(ahead, key=lambda c: s * c) if ahead else None
