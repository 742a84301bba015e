"""``harvest notify``: tell a human when something needs one, through apprise (Telegram, Slack,
Discord, e-mail, webhooks… configured by URL in ``HARVEST_NOTIFY_URLS``).

A process of its own beside the workers, so a notification service that is slow or down never
slows or blocks the pipeline: it reads what the pipeline already writes — the results stream
(``<ns>:stream:results``), the trading switch's stream and the live checks (heartbeats, market
states, the scan's counters) — and sends what :mod:`harvest.domain.notices` makes of it, with
the throttle there. Its read position on each stream is kept in Redis (``<ns>:notify:cursor``),
so a restart neither repeats nor loses a plan's notice. A send that fails is logged and counted
(``notify:failed``), never retried in a loop.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Callable

from harvest.domain.notices import Health, Notice, Throttle, from_health, from_trading, from_transition
from harvest.services.runtime import Runtime
from harvest.store.counters import account_counter, account_decisions

log = logging.getLogger("harvest.notify")
Sender = Callable[[list[Notice]], int]


def apprise_sender(urls: str, timeout_s: float = 10.0) -> Sender:
    """A sender to the comma-separated apprise ``urls``; returns how many notices it sent."""
    import apprise

    ap = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
    for u in (x.strip() for x in urls.split(",")):
        if u and not ap.add(u):
            raise ValueError("HARVEST_NOTIFY_URLS holds a URL apprise does not know (not shown: it may hold a token)")
    kinds = {
        "info": apprise.NotifyType.INFO,
        "warning": apprise.NotifyType.WARNING,
        "failure": apprise.NotifyType.FAILURE,
    }

    def send(notices: list[Notice]) -> int:
        sent = 0
        for n in notices:
            if ap.notify(title=n.title, body=n.body, notify_type=kinds.get(n.level, apprise.NotifyType.INFO)):
                sent += 1
        return sent

    return send


def _health(rt: Runtime) -> Health:
    now = time.time()
    s = rt.settings
    beats = rt.plans.heartbeats()
    counters = rt.plans.counters()
    stuck = account_decisions(rt.r, rt.plans.k, rt.accounts)
    decisions: Counter[str] = Counter()
    for d in stuck.values():
        decisions.update(d)
    markets = {}
    for sym, st in zip(s.symbols, rt.market.get_many(list(s.symbols)), strict=True):
        if st is not None and st.computed_at is not None:
            markets[sym] = max(0.0, now - st.computed_at)
    return Health(
        heartbeat_age_s={k: max(0.0, now - v) for k, v in beats.items()},
        market_age_s=markets,
        unprotected=sum(account_counter(counters, a, "positions_unprotected") for a in rt.accounts),
        abandoned={f.split(":", 1)[1]: int(v) for f, v in decisions.items() if f.startswith("abandoned:")},
        retrying=int(decisions.get("waiting", 0)),
        heartbeat_limit_s=max(60.0, 6 * max(s.scan_interval_s, s.heartbeat_interval_s)),
        market_limit_s=s.market_stale_after_s,
    )


def notify_once(rt: Runtime, send: Sender, throttle: Throttle, now: float | None = None) -> dict[str, Any]:
    """One pass: new stream entries and the live checks → notices → ``send``. Returns counts
    ``{"events", "sent", "failed"}``. A send that raises is logged and counted, never retried."""
    ns = rt.settings.namespace
    cursor_key = f"{ns}:notify:cursor"
    streams = {rt.plans.k.results: "results", f"{ns}:stream:trading": "trading"}
    cursor = rt.r.hgetall(cursor_key)
    notices: list[Notice] = []
    read = rt.r.xread({k: cursor.get(v, "0-0") for k, v in streams.items()}, count=1000) or []
    last: dict[str, str] = {}
    for key, entries in read:
        kind = streams[key]
        for entry_id, fields in entries:
            last[kind] = entry_id
            n = from_transition(fields) if kind == "results" else from_trading(fields)
            if n is not None:
                notices.append(n)
    notices += from_health(_health(rt))
    out = throttle.admit(notices, time.time() if now is None else now)
    sent = failed = 0
    if out:
        try:
            sent = send(out)
        except Exception as e:  # a notification service that is down: logged, counted, not retried
            log.warning("notices not sent: %s", type(e).__name__)
        failed = len(out) - sent
        if failed:
            rt.plans.count("notify:failed", failed)
    if last:
        rt.r.hset(cursor_key, mapping=last)
    return {"events": len(notices), "sent": sent, "failed": failed}


def run(rt: Runtime, send: Sender, interval_s: float = 2.0, once: bool = False) -> int:
    """Notify every ``interval_s`` until interrupted (``once``: one pass). Starts at the streams'
    ends on a first start (no flood of history)."""
    ns = rt.settings.namespace
    cursor_key = f"{ns}:notify:cursor"
    if not rt.r.exists(cursor_key):
        for key, kind in ((rt.plans.k.results, "results"), (f"{ns}:stream:trading", "trading")):
            info = rt.r.xinfo_stream(key) if rt.r.exists(key) else None
            rt.r.hset(cursor_key, kind, info["last-generated-id"] if info else "0-0")
    throttle = Throttle(rt.settings.notify_repeat_s, rt.settings.notify_max_per_min)
    while True:
        out = notify_once(rt, send, throttle)
        if out["sent"] or out["failed"]:
            log.info("notices: %s", out)
        if once:
            return 0
        time.sleep(interval_s)
