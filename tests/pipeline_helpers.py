"""Helpers for pipeline tests: a clean namespace, deterministic positions and market states."""

from __future__ import annotations

from contextlib import contextmanager

from harvest.domain.models import Action, Decision, MarketState, Regime, Side
from harvest.domain.plans import TERMINAL, NewPlan, new_plan
from harvest.ops.loadgen import T0, clean  # noqa: F401  (one clean for tests, benchmarks and chaos)
from harvest.services.runtime import Runtime, build_runtime
from settings import load_settings
from tests.harness import wait_for


def state(
    symbol: str,
    regime: Regime = Regime.TREND,
    p: float = 0.9,
    ts: float = 0.5,
    sigma: float = 0.001,
    trend_dir: int = 1,
) -> MarketState:
    return MarketState(symbol=symbol, ts_time=T0, sigma=sigma, ts=ts, p_trend=p, regime=regime, trend_dir=trend_dir)


def open_position(
    rt: Runtime,
    symbol: str,
    side: str,
    qty: float,
    entry: float,
    stop: float,
    leverage: float = 10.0,
    mark: float | None = None,
    market: MarketState | None = None,
) -> None:
    rt.venue.set_position(symbol, side, qty, entry, leverage, opened_at=T0, stop_price=stop)
    rt.venue.set_mark(symbol, mark if mark is not None else entry)
    rt.market.put_many([market or state(symbol, trend_dir=1 if side == "LONG" else -1)])


def mark_for_r(
    entry: float, stop: float, qty: float, qty_at_open: float, r: float, side: str, fee: float = 0.0005
) -> float:
    """Mark price at which R_net = r (no funding): solves sign·(m − e)·q − fee·m·q = r·|e − s|·q0."""
    s = 1 if side == "LONG" else -1
    r_unit = abs(entry - stop) * qty_at_open
    # s·m·q − s·e·q − fee·m·q = r·R  →  m·q·(s − fee) = r·R + s·e·q
    return (r * r_unit + s * entry * qty) / (qty * (s - fee))


def epoch(rt: Runtime, symbol: str) -> str:
    entry = rt.book.get_many(rt.settings.account, [symbol])[0]
    assert entry is not None, f"no book entry for {symbol}"
    return entry["epoch"]


def wait_terminal(rt: Runtime, plan_id: str, timeout: float = 30.0):
    def done():
        p = rt.plans.get(plan_id)
        return p if p is not None and p.state in TERMINAL else None

    return wait_for(done, timeout, what=f"plan {plan_id} to reach a terminal state")


def wait_quiet(rt: Runtime, timeout: float = 30.0) -> None:
    """Wait until no plan is non-terminal."""
    wait_for(lambda: rt.plans.count_open() == 0, timeout, what="all plans terminal")


@contextmanager
def emulator(key: str, secret: str):
    """The fapi emulator on the test namespace's paper engine, accepting these credentials."""
    from harvest.services.runtime import build_runtime
    from harvest.venues.sim.emulator import Emulator
    from settings import load_settings

    s = load_settings()
    rt = build_runtime(s)
    e = Emulator(rt.r, s.namespace, s.account, key, secret, clock=rt.clock).start()
    try:
        yield e
    finally:
        e.stop()


def clean_paper_venue(namespace: str):
    """Generator for a fixture: the paper venue of a clean ``namespace`` (cleaned again
    after the test)."""
    rt = build_runtime(load_settings(namespace=namespace))
    clean(rt)
    yield rt.venue
    clean(rt)


def full_close_plan(
    account: str, symbol: str, epoch: str, now: float, ttl_s: float = 30.0, attempt: int = 0
) -> NewPlan:
    """A full close of ``account``'s ``symbol`` LONG (``epoch``), attempt ``attempt``, made
    ``now`` (Unix s) as propose makes it (:func:`harvest.domain.plans.new_plan`), expiring
    ``ttl_s`` later; store it with ``rt.plans.create(p.record, p.data)``."""
    d = Decision(
        account=account,
        symbol=symbol,
        epoch=epoch,
        side=Side.LONG,
        action=Action.FULL_CLOSE_PROPOSED,
        close_fraction=1.0,
        r_net=0.0,
        kill_score=0.0,
        mark_price=100.0,
        decided_at=now,
        attempt=attempt,
    )
    return new_plan(d, now, ttl_s)
