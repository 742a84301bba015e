"""Metrics kept in Redis by every worker and exposed in Prometheus format by one exporter
(``harvest metrics``), so that any number of worker processes on any number of hosts add up
to one consistent set of series (no per-process registries to merge).

* :class:`RedisHistogram` — a histogram whose buckets are fields of one Redis hash
  (``HINCRBY``; non-cumulative in Redis, cumulative at exposition).
* :class:`HarvestCollector` — a ``prometheus_client`` collector that reads the namespace's
  plans-by-state gauge, counters, histograms, heartbeats, queue depths and the exchange weight
  budget at scrape time. Series (all prefixed ``harvest_``):

  ==============================================  =========  ====================================
  name                                            type       labels
  ==============================================  =========  ====================================
  plans                                           gauge      action, state
  orders_total                                    counter    result (terminal state after a send)
  order_sends_total                               counter    outcome (accepted/unknown/not_executed)
  guard_blocks_total                              counter    reason
  duplicates_blocked_total                        counter    (true repeats)
  retries_started_total                           counter
  decisions                                       gauge      account, status (retrying/abandoned), reason
  market_state_age_seconds                        gauge      symbol
  sends_withheld_total                            counter    reason (state_not_durable/_recovered/_replicated, halted)
  malformed_messages_total                        counter    stage
  stale_messages_dropped_total                    counter    task
  reconcile_findings_total                        counter    kind (ghost_dropped, unknown_order, …)
  scans_total                                     counter    account
  chains_started_total                            counter
  scan_duration_seconds                           histogram
  scan_to_fill_seconds                            histogram  action
  queue_wait_seconds                              histogram  queue
  queue_depth                                     gauge      queue
  heartbeat_age_seconds                           gauge      component (beat, scan, market, …)
  exchange_weight_used / exchange_weight_limit    gauge      (the busiest egress's weight this minute / its limit)
  weight_used                                     gauge      egress (request weight this minute, per egress)
  weight_held_total                               counter    egress, priority (requests the budget held back)
  clock_offset_seconds                            gauge      (exchange minus local, last reconcile)
  positions_open                                  gauge      account
  positions_from_streams_total                    counter    (scan reads served by harvest streams)
  stream_gaps_total                               counter    cause (drop, listen_key_expired, …)
  stream_events_rejected_total                    counter    (malformed or out of order)
  streams_errors_total                            counter    where (session, user, market, fire: errors
                                                             harvest streams caught, logged and backed off)
  stream_audits_total                             counter    result (agreed, disagreed: REST audits of the cache)
  stream_audit_age_seconds                        gauge      account (since its cache's last audit that agreed;
                                                             trusted caches only: ≤ HARVEST_AUDIT_INTERVAL_S + a read)
  positions_unprotected                           gauge      account (no stop that can trigger, last scan)
  trading_state                                   gauge      scope (* or account), state (1 = in force)
  notify_failures_total                           counter    (notices harvest notify did not deliver)
  ==============================================  =========  ====================================
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from prometheus_client.exposition import ThreadingWSGIServer

from harvest.store.counter_names import (
    CHAINS_STARTED,
    DUPLICATES_BLOCKED,
    GUARD_BLOCKS,
    MALFORMED,
    NOTIFY_FAILURES,
    POSITIONS_FROM_STREAMS,
    POSITIONS_OPEN,
    POSITIONS_UNPROTECTED,
    RECONCILE_FINDINGS,
    RETRIES_STARTED,
    SCANS,
    SENDS_WITHHELD,
    STALE_DROPPED,
    STREAM_AUDITS,
    STREAM_EVENTS_REJECTED,
    STREAM_GAPS,
    STREAMS_ERRORS,
    Family,
    samples,
)
from harvest.store.counters import (  # noqa: F401  (re-exported: the exporter's series)
    DEFERRED,
    QUEUE_WAIT_BUCKETS,
    SCAN_BUCKETS,
    SCAN_TO_FILL_BUCKETS,
    DeferredObservations,
    RedisHistogram,
    account_counter,
    account_decisions,
    queue_wait,
    scan_duration,
    scan_to_fill,
)
from harvest.store.records import Unreadable, numeric_fields

log = logging.getLogger("harvest.metrics")

# The counters' families (harvest.store.counter_names.FAMILIES) in the order the exporter
# yields them among the other series; together they are every family of the registry.
BLOCKS_AND_REPEATS = (
    GUARD_BLOCKS,
    SENDS_WITHHELD,
    MALFORMED,
    STALE_DROPPED,
    RECONCILE_FINDINGS,
    DUPLICATES_BLOCKED,
    RETRIES_STARTED,
)
SCANS_AND_STREAMS = (
    SCANS,
    POSITIONS_FROM_STREAMS,
    STREAM_GAPS,
    STREAMS_ERRORS,
    STREAM_AUDITS,
)
REJECTED_AND_UNPROTECTED = (STREAM_EVENTS_REJECTED, NOTIFY_FAILURES, CHAINS_STARTED, POSITIONS_UNPROTECTED)
RECONCILED = (POSITIONS_OPEN,)


class HarvestCollector:
    """``prometheus_client`` collector of one namespace's live state (see module docstring).

    ``rt``: a :class:`harvest.services.runtime.Runtime`; ``queue_depths``: a callable returning
    ``{queue name: messages waiting}`` (broker-specific, see :func:`harvest.ops.scorecard.queue_depths`).
    Every scrape reads Redis in a handful of round trips; nothing is cached.
    """

    def __init__(self, rt, queue_depths: Callable[[], dict[str, int]]):
        from harvest.venues.binance import WeightBudget

        self.rt = rt
        limit = rt.settings.venue_weight_limit_1m
        self.budgets = [WeightBudget(rt.r, rt.settings.namespace, limit, e.name) for e in rt.settings.egresses]
        self.queue_depths = queue_depths
        ns = rt.settings.namespace
        self.scan = scan_duration(rt.r, ns)
        self.fill = scan_to_fill(rt.r, ns)
        self.wait = queue_wait(rt.r, ns)

    def describe(self) -> Iterable:  # no describe-time I/O
        return []

    def collect(self) -> Iterable:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        rt = self.rt
        k = rt.plans.k
        p = rt.r.pipeline(transaction=False)
        for key in (
            k.metrics_plans,
            k.metrics_orders,
            k.metrics_sends,
            k.counters,
            k.heartbeat,
            k.trading,
        ):
            p.hgetall(key)
        plans, orders, sends, counters, beats, switch = p.execute()
        # a field a view cannot read (not a number) is left out and listed, never a failed scrape
        bad: list[Unreadable] = []
        plans = numeric_fields(plans, k.metrics_plans, bad)
        orders = numeric_fields(orders, k.metrics_orders, bad)
        sends = numeric_fields(sends, k.metrics_sends, bad)
        beats = numeric_fields(beats, k.heartbeat, bad)
        counters = numeric_fields(counters, k.counters, bad, lambda v: int(float(v)))
        rt.plans.unreadable_open(bad)  # open plans a newer version wrote (a rolling upgrade)
        accounts = rt.accounts
        stuck = account_decisions(rt.r, k, accounts)

        g = GaugeMetricFamily(
            "harvest_plans", "Plans now in each state, by account and action", labels=["account", "action", "state"]
        )
        for (a, action, state), v in _by_account(plans, 3):
            g.add_metric([a, action, state], v)
        yield g
        c = CounterMetricFamily(
            "harvest_orders",
            "Plans that ended after an order was sent, by account and terminal state",
            labels=["account", "result"],
        )
        for (a, result), v in _by_account(orders, 2):
            c.add_metric([a, result], v)
        yield c
        c = CounterMetricFamily(
            "harvest_order_sends", "Order sends by account and outcome", labels=["account", "outcome"]
        )
        for (a, outcome), v in _by_account(sends, 2):
            c.add_metric([a, outcome], v)
        yield c
        yield from _counter_families(BLOCKS_AND_REPEATS, counters, accounts)
        g = GaugeMetricFamily(
            "harvest_decisions",
            "Decisions the last scan saw stuck: retrying (backing off) or abandoned, by reason",
            labels=["account", "status", "reason"],
        )
        for a in accounts:
            for f, v in sorted(stuck[a].items()):
                if f == "waiting":
                    g.add_metric([a, "retrying", ""], float(v))
                elif f.startswith("abandoned:"):
                    g.add_metric([a, "abandoned", f.split(":", 1)[1]], float(v))
        yield g
        g = GaugeMetricFamily(
            "harvest_market_state_age_seconds",
            "Wall seconds since each symbol's cached market "
            "state was computed (stale past market_stale_s: no kill decision from it)",
            labels=["symbol"],
        )
        syms = list(rt.settings.symbols)
        for sym, st in zip(syms, rt.market.get_readable(syms, bad), strict=True):
            if st is not None and st.computed_at is not None:
                g.add_metric([sym], max(0.0, time.time() - st.computed_at))
        yield g
        yield from _counter_families(SCANS_AND_STREAMS, counters, accounts)
        hp = rt.r.pipeline(transaction=False)
        for a in accounts:
            hp.hmget(f"{rt.settings.namespace}:streams:{a}:health", "trusted", "audited_at")
        age = GaugeMetricFamily(
            "harvest_stream_audit_age_seconds",
            "Seconds since the account's stream cache last agreed with a REST audit (trusted caches only)",
            labels=["account"],
        )
        now = time.time()
        for a, (trusted, at) in zip(accounts, hp.execute(), strict=True):
            try:
                if trusted == "1" and at is not None:
                    age.add_metric([a], max(0.0, now - float(at)))
            except ValueError:
                continue  # not a number: left out, never a failed scrape
        yield age
        yield from _counter_families(REJECTED_AND_UNPROTECTED, counters, accounts)
        from harvest.domain.trading import STATES

        g = GaugeMetricFamily(
            "harvest_trading_state",
            "The trading state of the deployment (scope *) and of each account with its own: 1 for the "
            "state in force (ACTIVE, REDUCING, SHADOW, HALTED)",
            labels=["scope", "state"],
        )
        for scope in sorted({"*", *switch}):
            now_state = switch.get(scope, "ACTIVE")
            for st_name in STATES:
                g.add_metric([scope, st_name], 1.0 if st_name == now_state else 0.0)
        yield g
        yield from _counter_families(RECONCILED, counters, accounts)

        yield from _histograms(
            HistogramMetricFamily,
            "harvest_scan_duration_seconds",
            "Wall time of one scan of every open position",
            self.scan,
            None,
        )
        yield from _histograms(
            HistogramMetricFamily,
            "harvest_scan_to_fill_seconds",
            "Scan tick to order acknowledged (FILLED), by action",
            self.fill,
            "action",
        )
        yield from _histograms(
            HistogramMetricFamily,
            "harvest_queue_wait_seconds",
            "Published to started by a worker, by queue",
            self.wait,
            "queue",
        )

        g = GaugeMetricFamily("harvest_queue_depth", "Messages waiting in each queue", labels=["queue"])
        try:
            for q, n in sorted(self.queue_depths().items()):
                g.add_metric([q], float(n))
        except Exception:  # broker unreachable: the series is absent, the scrape still answers
            pass
        yield g
        now = time.time()
        g = GaugeMetricFamily(
            "harvest_heartbeat_age_seconds", "Seconds since each component last reported", labels=["component"]
        )
        for name, ts in sorted(beats.items()):
            g.add_metric([name], max(0.0, now - float(ts)))
        yield g
        offset = rt.r.get(f"{rt.settings.namespace}:venue:clock_offset_ms")
        if offset is not None:
            yield GaugeMetricFamily(
                "harvest_clock_offset_seconds",
                "The exchange's clock minus this machine's, at the last reconcile",
                value=float(offset) / 1000,
            )
        g = GaugeMetricFamily(
            "harvest_unreadable_records",
            "Stored records (or fields) this exporter could not read and left out, by key",
            labels=["key"],
        )
        for u in bad:
            g.add_metric([u.key], 1.0)
        yield g
        yield GaugeMetricFamily(
            "harvest_newer_version_records",
            "Stored records a newer version of harvest wrote, which this one shows but does not act on",
            value=float(sum(u.newer for u in bad)),
        )
        yield from self._weight()

    def _weight(self) -> Iterable:
        """The request-weight budgets: each egress's weight this minute, the busiest one's as
        ``harvest_exchange_weight_used`` (against the per-egress limit), and the requests the
        budgets held back by egress and priority (:func:`harvest.venues.binance.held_back`)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from harvest.venues.binance import held_back

        budgets = self.budgets
        p = self.rt.r.pipeline(transaction=False)
        for b in budgets:
            p.get(b.key())
        used = [int(v) if v and v.isdigit() else 0 for v in p.execute()]
        yield GaugeMetricFamily(
            "harvest_exchange_weight_used",
            "Request weight used in the current minute by the busiest egress",
            value=float(max(used, default=0)),
        )
        yield GaugeMetricFamily(
            "harvest_exchange_weight_limit",
            "Request weight harvest may use per minute and egress",
            value=float(budgets[0].limit if budgets else 0),
        )
        g = GaugeMetricFamily("harvest_weight_used", "Request weight used in the current minute", labels=["egress"])
        for b, u in zip(budgets, used, strict=True):
            g.add_metric([b.egress], float(u))
        yield g
        c = CounterMetricFamily(
            "harvest_weight_held",
            "Requests the request-weight budget held back (nothing sent), by egress and priority",
            labels=["egress", "priority"],
        )
        for (egress, priority), n in sorted(held_back(self.rt.r, self.rt.settings.namespace).items()):
            c.add_metric([egress, priority], float(n))
        yield c


def _by_account(h: dict[str, str], parts: int) -> list[tuple[tuple[str, ...], float]]:
    """The fields of a metrics hash kept by the Lua scripts (``<account>|…``, ``parts`` parts),
    split, sorted, with their values; fields of another shape (written before the account was
    counted) are left out."""
    out = []
    for f, v in sorted(h.items()):
        key = tuple(f.split("|"))
        if len(key) == parts:
            out.append((key, float(v)))
    return out


def _counter_families(families: Iterable[Family], counters: dict[str, int], accounts: list[str]) -> Iterable:
    """The registry's families (:mod:`harvest.store.counter_names`) from the counters hash as
    read: each with its samples (:func:`samples`), a family without labels as one value; a
    family :func:`samples` leaves out is not yielded."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for fam in families:
        got = samples(fam, counters, accounts)
        if got is None:
            continue
        cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
        if not fam.labels:
            yield cls(fam.name, fam.help, value=got[0][1])
            continue
        out = cls(fam.name, fam.help, labels=list(fam.labels))
        for labels, v in got:
            out.add_metric(list(labels), v)
        yield out


def _histograms(cls, name: str, doc: str, h: RedisHistogram, label: str | None):
    fam = cls(name, doc, labels=[label] if label else None)
    for lab, (buckets, total, _count) in sorted(h.snapshot().items()):
        fam.add_metric([lab] if label else [], buckets, total)
    yield fam


def serve_metrics(
    registry,
    host: str,
    port: int,
    basic_auth: str | None = None,
    *,
    max_connections: int = 16,
    read_timeout_s: float = 5.0,
    max_request_s: float = 15.0,
):
    """A WSGI server for ``registry``'s exposition on ``host:port`` (``/metrics`` and ``/``),
    not yet serving (call ``serve_forever``; ``server_close`` when done).

    ``basic_auth``: ``"user:password"`` every request must present (compared in constant time,
    before any work: a request without it reads no Redis), else 401. Bound to an address that
    is not loopback without ``basic_auth``, it logs a WARNING at start-up.

    Connections are bounded (:class:`BoundedWSGIServer`): at most ``max_connections`` are
    served at once, each with a socket timeout of ``read_timeout_s`` seconds (a client that
    sends nothing is dropped after it) and at most ``max_request_s`` seconds in all once the
    exporter is full (a client trickling bytes is cut off then). A connection beyond the
    bound waits in the listen backlog for a slot up to ``read_timeout_s`` + 1 s, then is closed
    unanswered.
    """
    import base64
    import hmac
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app

    inner = make_wsgi_app(registry)
    want = ("Basic " + base64.b64encode(basic_auth.encode()).decode()).encode() if basic_auth else None

    def app(environ, start_response):
        if want is not None and not hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", "").encode(), want):
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="harvest metrics"'), ("Content-Type", "text/plain")],
            )
            return [b"authentication required\n"]
        return inner(environ, start_response)

    class _Quiet(WSGIRequestHandler):
        timeout = read_timeout_s  # StreamRequestHandler.setup: the connection's socket timeout

        def log_message(self, *args):  # one line per scrape would drown the logs
            pass

    class _Server(BoundedWSGIServer):
        pass

    _Server.max_connections = max_connections
    _Server.slot_wait_s = read_timeout_s + 1.0
    _Server.max_request_s = max_request_s
    if ":" in host:  # an IPv6 address (``::``, ``::1``): wsgiref's server is IPv4 otherwise
        import socket

        _Server.address_family = socket.AF_INET6
    if basic_auth is None and not is_loopback(host):
        log.warning(
            "harvest metrics listens on %s without basic auth: anyone who can reach it reads the "
            "deployment's metrics; set HARVEST_METRICS_BASIC_AUTH or listen on 127.0.0.1",
            host,
        )
    return make_server(host, port, app, _Server, handler_class=_Quiet)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) means this machine only: every address it
    resolves to is a loopback one (127.0.0.0/8, ::1). ``0.0.0.0``, ``::`` and a name that does
    not resolve are not."""
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


class BoundedWSGIServer(ThreadingWSGIServer):
    """prometheus_client's thread-per-connection WSGI server, bounded.

    At most ``max_connections`` connections are served at once (a semaphore taken before a
    thread is started). When all are taken, the accept loop waits up to ``slot_wait_s`` seconds
    for a slot, shutting down meanwhile every connection older than ``max_request_s`` seconds
    (a client trickling its request byte by byte, each within the read timeout); the connection
    is then closed unanswered (the rest wait in the kernel's listen backlog,
    ``request_queue_size``). A flood of connections can thus delay or refuse a scrape, never
    exhaust the exporter's threads: keep it behind a firewall as well. The handler's socket timeout drops a
    client that sends nothing. ``refused`` counts the connections closed for want of a slot.
    Timeouts and clients that go away are not logged; another error is one WARNING line.
    """

    max_connections = 16
    slot_wait_s = 6.0
    max_request_s = 15.0
    request_queue_size = 64
    block_on_close = False  # server_close does not wait for a silent client's timeout

    def __init__(self, *args, **kwargs):
        import threading

        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._open: dict = {}  # socket → monotonic seconds it was accepted
        self._open_lock = threading.Lock()
        self.refused = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            deadline = time.monotonic() + self.slot_wait_s
            while True:  # a slot frees when a client times out, ends, or is cut off here
                self._reap()
                left = deadline - time.monotonic()
                if left <= 0:
                    self.refused += 1
                    self.shutdown_request(request)
                    return
                if self._slots.acquire(timeout=min(0.25, left)):
                    break
        with self._open_lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back
            self._release(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        self._slots.release()

    def _reap(self) -> None:
        import socket

        now = time.monotonic()
        with self._open_lock:
            old = [s for s, t0 in self._open.items() if now - t0 > self.max_request_s]
        for s in old:
            try:
                s.shutdown(socket.SHUT_RDWR)  # its thread's read or write ends at once
            except OSError:
                pass

    def handle_error(self, request, client_address):
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (TimeoutError, ConnectionError)):
            return  # a client that sent nothing in time, or went away
        log.warning("metrics: a request failed: %s", type(exc).__name__)
