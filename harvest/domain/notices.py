"""What deserves a human's attention, and how often (issue 22): pure rules, no I/O.

``harvest notify`` (:mod:`harvest.ops.notify`) feeds these functions what it reads — the results
stream's plan transitions, the trading switch's changes, and a snapshot of the live checks —
and sends what they return through apprise.

Notices (each with a dedup ``key`` and a ``level``: info, warning, failure):

* a kill or time-stop close FILLED (and any partial FILLED), with the plan_id and the reason;
* a full close that ended without effect (FAILED / EXPIRED: its next attempt follows);
* decisions abandoned (attempts exhausted) or retrying;
* a position without a stop that can trigger;
* a market state older than the stale limit;
* the pipeline's heartbeat (beat, scan) missing;
* a trading-state change, with who asked and why.

:class:`Throttle` keeps a condition that holds from repeating more often than ``repeat_s`` and
caps notices per minute (what is over the cap is counted into one summary line).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Notice:
    """One message: ``key`` (what it is about: a repeat of the same key is throttled),
    ``level`` (``info``, ``warning`` or ``failure``), ``title`` and ``body``."""

    key: str
    level: str
    title: str
    body: str


def from_transition(entry: dict[str, str]) -> Notice | None:
    """The notice of one results-stream entry (``plan_id``, ``symbol``, ``action``, ``from``,
    ``to``, ``reason``), or None when it needs no human: closes and partials that filled, and full
    closes that ended without effect."""
    action, to, sym, pid = (
        entry.get("action", ""),
        entry.get("to", ""),
        entry.get("symbol", ""),
        entry.get("plan_id", ""),
    )
    reason = entry.get("reason", "")
    if action == "FULL_CLOSE_PROPOSED" and to == "FILLED":
        return Notice(
            f"plan:{pid}:{to}", "warning", f"harvest: {sym} closed", f"full close FILLED ({reason}) — plan {pid}"
        )
    if action == "FULL_CLOSE_PROPOSED" and to in ("FAILED", "EXPIRED"):
        return Notice(
            f"plan:{pid}:{to}",
            "failure",
            f"harvest: {sym} close not done",
            f"full close {to} ({reason}) — plan {pid}; its next attempt follows",
        )
    if action.startswith("PARTIAL_") and to in ("FILLED", "PARTIALLY_FILLED"):
        return Notice(
            f"plan:{pid}:{to}", "info", f"harvest: {sym} partial {to.lower()}", f"{action} {to} ({reason}) — plan {pid}"
        )
    return None


def from_trading(entry: dict[str, str]) -> Notice:
    """The notice of a trading-state change (``scope``, ``state``, ``who``, ``reason``)."""
    scope = "the deployment" if entry.get("scope") == "*" else f"account {entry.get('scope')}"
    state = entry.get("state", "?")
    return Notice(
        f"trading:{entry.get('scope')}:{entry.get('ts')}",
        "info" if state == "ACTIVE" else "warning",
        f"harvest: trading {state}",
        f"{scope} is {state} (by {entry.get('who', '?')}: {entry.get('reason') or 'no reason given'})",
    )


@dataclass(frozen=True)
class Health:
    """A snapshot of the live checks: heartbeat ages (s) by component, market-state ages (s) by
    symbol, positions without a stop that can trigger, decisions abandoned (by reason) and
    retrying, and the limits they are judged by (s)."""

    heartbeat_age_s: dict[str, float]
    market_age_s: dict[str, float]
    unprotected: int
    abandoned: dict[str, int]
    retrying: int
    heartbeat_limit_s: float
    market_limit_s: float


def from_health(h: Health) -> list[Notice]:
    """The notices of the conditions that hold now."""
    out = []
    for comp in ("beat", "scan"):
        age = h.heartbeat_age_s.get(comp)
        if age is None or age > h.heartbeat_limit_s:
            seen = "never reported" if age is None else f"silent for {age:.0f} s"
            out.append(Notice(f"heartbeat:{comp}", "failure", f"harvest: {comp} stopped", f"{comp} {seen}"))
    for sym, age in sorted(h.market_age_s.items()):
        if age > h.market_limit_s:
            out.append(
                Notice(
                    f"market:{sym}",
                    "warning",
                    f"harvest: {sym} market state stale",
                    f"{age:.0f} s old: no kill decision is made from it",
                )
            )
    if h.unprotected:
        out.append(
            Notice(
                "unprotected",
                "failure",
                "harvest: position without a stop",
                f"{h.unprotected} open position(s) without a stop that can trigger",
            )
        )
    for reason, n in sorted(h.abandoned.items()):
        if n:
            out.append(Notice(f"abandoned:{reason}", "warning", "harvest: decision abandoned", f"{n} ({reason})"))
    if h.retrying:
        out.append(Notice("retrying", "info", "harvest: decisions retrying", f"{h.retrying} backing off"))
    return out


@dataclass
class Throttle:
    """Which notices go out: a key at most once per ``repeat_s`` (plan events have unique keys,
    so they always pass), at most ``per_min`` per minute; the rest are counted in
    :attr:`suppressed` for the next summary."""

    repeat_s: float
    per_min: int
    last: dict[str, float] = field(default_factory=dict)
    window: list[float] = field(default_factory=list)
    suppressed: int = 0

    def admit(self, notices: list[Notice], now: float) -> list[Notice]:
        """The notices to send now (in order); updates the state."""
        out = []
        self.window = [t for t in self.window if now - t < 60.0]
        for n in notices:
            if now - self.last.get(n.key, -1e18) < self.repeat_s:
                continue
            if len(self.window) >= self.per_min:
                self.suppressed += 1
                continue
            self.last[n.key] = now
            self.window.append(now)
            out.append(n)
        return out
