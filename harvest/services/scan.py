"""The scan's service (stage 1, the beat scan of one account): load the account's positions,
decide every one in one batch, start the chains of those that need action, and record what the
scan saw (counters, the decisions retrying and abandoned, the heartbeat, the positions view,
the triggers for ``harvest streams``) in one round trip. :func:`scan_account` returns a
:class:`ScanOutcome`; the task (:mod:`tasks.scan`) only fans out over accounts."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from harvest.domain.book import unprotected
from harvest.domain.models import Decision
from harvest.domain.plans import NextAttempt
from harvest.domain.trading import halted
from harvest.services.decide import Row, decide_and_plan, load_positions, write_triggers
from harvest.services.runtime import Runtime
from harvest.store.counters import scan_duration
from harvest.store.streams import StreamCache
from harvest.store.views import PositionsView
from harvest.venues.base import VenueError

log = logging.getLogger("harvest")

#: Starts a decision's chain (``propose → guard → execute → confirm``): ``(decision, scanned_at
#: (Unix s, the scan tick)) -> None``; passed in by the task, since services import no canvas.
StartChain = Callable[[Decision, float], None]
#: Starts recovery from the exchange (the reconcile task); passed in like :data:`StartChain`.
StartRecovery = Callable[[], None]


@dataclass(frozen=True)
class ScanOutcome:
    """One account's scan: ``positions`` (open positions read), ``actionable`` (decisions),
    ``kinds`` (decisions by what their lineage said: ``new``, ``retry``, ``repeat``,
    ``waiting``, ``abandoned``, and ``busy`` for a position another plan holds), ``seconds``
    (wall s); ``error`` (the venue's code, when the positions could not be read: nothing was
    decided) or ``held`` (``halted`` or ``awaiting_recovery``: the scan ran but started nothing)."""

    account: str
    positions: int = 0
    actionable: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    error: int | None = None
    held: str | None = None

    @property
    def started(self) -> int:
        """Chains started (new decisions and retries)."""
        return self.kinds["new"] + self.kinds["retry"]

    def result(self) -> dict[str, Any]:
        """The task's answer: ``{"account", "positions", "actionable", "started",
        "duplicates", "busy", "seconds"}``, with ``"retries", "waiting", "abandoned"`` after a
        full scan, ``"error"`` or ``<held>: True`` otherwise."""
        base = {
            "positions": self.positions,
            "actionable": self.actionable,
            "started": self.started,
            "duplicates": self.kinds["repeat"],
            "busy": self.kinds["busy"],
            "seconds": self.seconds,
        }
        if self.error is not None:
            return {**base, "error": self.error, "account": self.account}
        if self.held is not None:
            return {**base, self.held: True, "account": self.account}
        return {
            "account": self.account,
            **base,
            "retries": self.kinds["retry"],
            "waiting": self.kinds["waiting"],
            "abandoned": self.kinds["abandoned"],
        }


def scan_account(rt: Runtime, start_chain: StartChain, start_recovery: StartRecovery) -> ScanOutcome:
    """One scan of ``rt``'s account. A venue that does not answer skips this tick (counted
    ``scan:venue_error:<code>``; the next one retries). While trading is HALTED
    (:func:`harvest.domain.trading.halted`) or the state is not known whole (recovery is
    started, at most once every 2 s), the scan records that it ran and starts nothing."""
    t0 = time.perf_counter()
    scanned_at = time.time()
    acct = rt.settings.account
    try:
        rows, now = load_positions(rt)
    except VenueError as e:  # the exchange did not answer: this tick is skipped, the next one retries
        rt.counters.count(f"scan:venue_error:{e.code}")
        log.warning("scan skipped: positions unavailable (%s)", e)
        return ScanOutcome(acct, seconds=time.perf_counter() - t0, error=e.code)
    held, streamed = _gate(rt, acct, start_recovery)
    if held is not None:  # the scan ran (its heartbeat says so) but starts nothing
        _record_held(rt, acct, held, rows, scanned_at, now)
        return ScanOutcome(acct, len(rows), seconds=time.perf_counter() - t0, held=held)
    planned = decide_and_plan(rt, rows, now)
    kinds, stuck = _start(rt, acct, planned, lambda d: start_chain(d, scanned_at))
    seconds = _record_scan(rt, acct, rows, kinds, stuck, streamed, scanned_at, now, t0)
    return ScanOutcome(acct, len(rows), len(planned), kinds, seconds)


def _gate(rt: Runtime, acct: str, start_recovery: StartRecovery) -> tuple[str | None, bool]:
    """What holds the scan back, read in one round trip with whether ``harvest streams`` holds
    the account: ``("halted" | "awaiting_recovery" | None, streamed)``. The recovery marker
    names this server (a failover or restart since ends it)."""
    p = rt.r.pipeline(transaction=False)
    rt.recovery.state_known_in(p)
    p.hgetall(rt.plans.k.trading)
    p.exists(StreamCache(rt.r, rt.settings.namespace, acct).k_lease)
    recovered_reply, trading, streamed = p.execute(raise_on_error=False)
    recovered = rt.recovery.state_known_of(recovered_reply)
    for reply in (trading, streamed):
        if isinstance(reply, Exception):
            raise reply
    if halted(trading, acct, rt.settings.mode):
        return "halted", bool(streamed)  # no chain starts; stops resting on the exchange stay
    if not recovered:
        # The state was lost (or this is a first start): nothing starts until reconcile has
        # read the exchange's records (harvest.services.recovery); plan creation refuses it too.
        if rt.r.set(f"{rt.settings.namespace}:state:recovering", "1", nx=True, ex=2):
            log.warning("state not known whole: reconcile starts recovery from the exchange")
            start_recovery()
        return "awaiting_recovery", bool(streamed)
    return None, bool(streamed)


def _start(
    rt: Runtime, acct: str, planned: list[tuple[Decision, NextAttempt]], start_chain: Callable[[Decision], None]
) -> tuple[Counter[str], Counter[str]]:
    """Start the chain of each decision whose lineage says so and whose position no other plan
    holds. Returns ``(kinds, stuck)``: decisions by kind (``busy`` for a held position) and
    the decisions waiting or abandoned (``abandoned:<reason>``)."""
    starting = [d for d, nx in planned if nx.starts]
    holders = dict(
        zip([d.symbol for d in starting], rt.plans.inflight_many(acct, [d.symbol for d in starting]), strict=True)
    )
    kinds: Counter[str] = Counter()
    stuck: Counter[str] = Counter()
    for d, nx in planned:
        if not nx.starts:
            kinds[nx.kind] += 1
            if nx.kind == "waiting":
                stuck["waiting"] += 1
            elif nx.kind == "abandoned":
                stuck[f"abandoned:{nx.reason}"] += 1
        elif holders.get(d.symbol) is not None:
            kinds["busy"] += 1
        else:
            start_chain(d)
            kinds[nx.kind] += 1
    return kinds, stuck


def _record_held(rt: Runtime, acct: str, held: str, rows: list[Row], scanned_at: float, now: float) -> None:
    """A held scan's record: its runs and ``scan:<held>`` counted, its heartbeat, no triggers
    (no mark event may start a chain either), the positions view."""
    p = rt.r.pipeline(transaction=False)
    for name in ("scan:runs", f"acct:{acct}:scan:runs", f"scan:{held}"):
        rt.counters.count_in(p, name)
    rt.heartbeats.beat_in(p, "scan")
    p.delete(rt.plans.k.triggers(acct))
    PositionsView(rt.r, rt.settings.namespace).put(p, acct, [vp for vp, _, _ in rows], scanned_at, now)
    p.execute()


def _record_scan(
    rt: Runtime,
    acct: str,
    rows: list[Row],
    kinds: Counter[str],
    stuck: Counter[str],
    streamed: bool,
    scanned_at: float,
    now: float,
    t0: float,
) -> float:
    """A full scan's record in one round trip: counters, the positions unprotected and
    scanned, the decisions retrying and abandoned as this scan saw them
    (``<ns>:decisions:<account>``), the heartbeat, the triggers (while ``harvest streams``
    holds the account), the positions view and the scan's duration. Returns the duration (s)."""
    p = rt.r.pipeline(transaction=False)
    c = rt.counters
    c.count_in(p, "scan:runs")
    c.count_in(p, f"acct:{acct}:scan:runs")
    c.count_in(p, "scan:chains_started", kinds["new"] + kinds["retry"])
    c.count_in(p, "scan:retries_started", kinds["retry"])
    c.count_in(p, "scan:duplicates_skipped", kinds["repeat"])
    c.count_in(p, "scan:busy_skipped", kinds["busy"])
    naked = sum(1 for vp, _, _ in rows if unprotected(vp))
    c.set_in(p, {f"acct:{acct}:positions_unprotected": naked, f"acct:{acct}:positions_scanned": len(rows)})
    dk = rt.plans.k.decisions(acct)
    p.delete(dk)
    p.hset(dk, mapping={"updated_at": repr(time.time()), **{n: c for n, c in stuck.items()}})
    rt.heartbeats.beat_in(p, "scan")
    if streamed:
        write_triggers(rt, rows, pipe=p)
    PositionsView(rt.r, rt.settings.namespace).put(p, acct, [vp for vp, _, _ in rows], scanned_at, now)
    seconds = time.perf_counter() - t0
    scan_duration(rt.r, rt.settings.namespace).observe(seconds, pipe=p)
    p.execute()
    return seconds
