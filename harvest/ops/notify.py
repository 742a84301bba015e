"""``harvest notify``: tell a human when something needs one, through apprise (Telegram, Slack,
Discord, e-mail, webhooks… configured by URL in ``HARVEST_NOTIFY_URLS``).

A process of its own beside the workers, so a notification service that is slow or down never
slows or blocks the pipeline: it reads what the pipeline already writes — the results stream
(``<ns>:stream:results``), the trading switch's stream and the live checks (heartbeats, market
states, the scan's counters) — and sends what :mod:`harvest.domain.notices` makes of it, with
the throttle there. Its read position on each stream is kept in Redis (``<ns>:notify:cursor``),
so a restart neither repeats nor loses a plan's notice. A send that fails is logged (one WARNING
line naming the service and its masked address, never the URL's tokens), counted
(``notify:failed``: ``harvest_notify_failures_total`` in ``/metrics``, the scorecard's
``notify failures``, the alert ``HarvestNotifyFailing``) and never retried in a loop.
``harvest notify --test`` sends one test notice now and says whether each service took it
(:func:`send_test`).
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import unquote

from harvest.domain.notices import Health, Notice, Throttle, from_health, from_trading, from_transition
from harvest.services.runtime import Runtime
from harvest.store.connect import sync
from harvest.store.counters import account_counter, account_decisions

log = logging.getLogger("harvest.notify")
Sender = Callable[[list[Notice]], int]
#: Separators of an apprise URL's parts (user, password, host, path segments, query values).
_URL_PARTS = re.compile(r"[/:@?&=#,;]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Delivery:
    """What one notification service did with one message.

    ``target``: the service's name and its masked address (scheme and host part of apprise's
    privacy URL, e.g. ``"JSON json://127.0.0.1:8080"``, ``"Telegram tgram://1...5"``): safe to
    log and print. ``ok``: the service accepted the message (apprise's per-service SUCCESS: for
    a webhook an HTTP 2xx answer). ``reason``: why not (apprise's status and its first warning,
    tokens of the configured URLs masked), ``""`` when ``ok``.
    """

    target: str
    ok: bool
    reason: str = ""


class AppriseSender:
    """A :data:`Sender` to the comma-separated apprise ``urls`` (apprise >= 2.3: its
    ``AppriseResult`` reports each service's outcome).

    Calling it with notices sends each and returns how many every service accepted; a notice
    that a service did not take is logged as one WARNING line (services masked, see
    :class:`Delivery`). Each send is bounded by ``timeout_s`` seconds (apprise's call timeout;
    a service still unfinished then counts as not delivered).

    Raises ``ValueError`` (the message holds no URL, since URLs carry tokens) when ``urls`` holds
    a URL apprise does not know, or none at all.
    """

    def __init__(self, urls: str, timeout_s: float = 10.0):
        import apprise

        self._apprise = apprise
        # harvest logs each failure itself, once, with the URLs' tokens masked; apprise's own
        # lines (kept in its results) would repeat it unmasked.
        logging.getLogger("apprise").propagate = False
        self.timeout_s = timeout_s
        self.ap = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        raw = [u for u in (x.strip() for x in urls.split(",")) if u]
        for u in raw:
            if not self.ap.add(u):
                raise ValueError(
                    "HARVEST_NOTIFY_URLS holds a URL apprise does not know (not shown: it may hold a token)"
                )
        if not raw:
            raise ValueError("HARVEST_NOTIFY_URLS holds no URL")
        shown = " ".join(_target(s.service_name or "", s.url(privacy=True)) for s in self.ap)
        self._secrets = _secret_parts(raw, shown)
        self.kinds = {
            "info": apprise.NotifyType.INFO,
            "warning": apprise.NotifyType.WARNING,
            "failure": apprise.NotifyType.FAILURE,
        }

    def deliver(self, title: str, body: str, level: str = "info") -> tuple[bool, list[Delivery]]:
        """Send one message to every configured service now. Returns (every service accepted
        it, one :class:`Delivery` per service). Never raises for a service that is down."""
        status = self._apprise.AppriseResultStatus
        kind = self.kinds.get(level, self._apprise.NotifyType.INFO)
        with self.ap.notify(title=title, body=body, notify_type=kind, timeout=self.timeout_s) as res:
            out = []
            for r in res:
                if r.status == status.SUCCESS:
                    out.append(Delivery(_target(r.name, r.url), True))
                    continue
                said = next((e.message for e in r.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")), "")
                reason = r.status.name.lower() + (f": {self._mask(said)}" if said else "")
                out.append(Delivery(_target(r.name, r.url), False, reason))
            ok = bool(res)
        return ok, out

    def __call__(self, notices: list[Notice]) -> int:
        sent = 0
        for n in notices:
            ok, deliveries = self.deliver(n.title, n.body, n.level)
            if ok:
                sent += 1
                continue
            failed = [d for d in deliveries if not d.ok] or [Delivery("apprise", False, "no service was notified")]
            log.warning(
                "notice not delivered: %s — %s",
                self._mask(n.title),
                "; ".join(f"{d.target}: {d.reason}" for d in failed),
            )
        return sent

    def _mask(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return _CONTROL.sub("?", text)[:300]


def apprise_sender(urls: str, timeout_s: float = 10.0) -> AppriseSender:
    """A sender to the comma-separated apprise ``urls``; returns how many notices it sent
    (see :class:`AppriseSender`)."""
    return AppriseSender(urls, timeout_s)


def send_test(urls: str, timeout_s: float = 10.0) -> tuple[bool, list[Delivery]]:
    """``harvest notify --test``: one test notice to every service of ``urls`` now. Returns
    (every service accepted it, each service's :class:`Delivery`). Not counted as a failure
    of the pipeline's notices (``notify:failed``): a test is the operator's own probe.
    Raises ``ValueError`` as :class:`AppriseSender`."""
    send = AppriseSender(urls, timeout_s)
    at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return send.deliver(
        "harvest: test notice", f"harvest notify --test from {socket.gethostname()} at {at}: it arrived.", "info"
    )


def _target(name: str, private_url: str) -> str:
    """``"<service> <scheme>://<host part>"`` of apprise's privacy-masked URL: no path, query
    or user (apprise masks a host part that is a token, e.g. Telegram's bot token)."""
    scheme, _, rest = private_url.partition("://")
    host = re.split(r"[/?#]", rest, maxsplit=1)[0].rsplit("@", 1)[-1]
    return f"{name} {scheme}://{host}".strip()


def _secret_parts(urls: list[str], shown: str) -> list[str]:
    """Every part of the configured ``urls`` (3 characters or more, raw and percent-decoded)
    that the masked targets ``shown`` do not show: the strings a message must not carry,
    longest first."""
    parts: set[str] = set()
    for u in urls:
        for p in _URL_PARTS.split(u.partition("://")[2]):
            parts.update(x for x in (p, unquote(p)) if len(x) >= 3)
    return sorted(parts - set(_URL_PARTS.split(shown)), key=len, reverse=True)


def _health(rt: Runtime) -> Health:
    now = time.time()
    s = rt.settings
    beats = rt.heartbeats.read()
    counters = rt.counters.read()
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
    ``{"events", "sent", "failed"}``. A notice not delivered is logged (by the sender, or here
    when the sender raised: its exception's type only, a message may carry a URL), counted in
    ``notify:failed`` (``harvest_notify_failures_total``) and never retried."""
    ns = rt.settings.namespace
    cursor_key = f"{ns}:notify:cursor"
    streams = {rt.plans.k.results: "results", f"{ns}:stream:trading": "trading"}
    cursor = sync(rt.r.hgetall(cursor_key))
    notices: list[Notice] = []
    read = sync(rt.r.xread({k: cursor.get(v, "0-0") for k, v in streams.items()}, count=1000)) or []
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
            log.warning("%d notice(s) not sent: the sender raised %s", len(out), type(e).__name__)
        failed = len(out) - sent
        if failed:
            rt.counters.count("notify:failed", failed)
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
            info = sync(rt.r.xinfo_stream(key)) if rt.r.exists(key) else None
            rt.r.hset(cursor_key, kind, info["last-generated-id"] if info else "0-0")
    throttle = Throttle(rt.settings.notify_repeat_s, rt.settings.notify_max_per_min)
    while True:
        out = notify_once(rt, send, throttle)
        if out["sent"] or out["failed"]:
            log.info("notices: %s", out)
        if once:
            return 0
        time.sleep(interval_s)
