"""The loop helpers of ``harvest streams`` (:mod:`harvest.services.streams`,
:mod:`harvest.services.market_streams`): a socket read in its own task (:class:`Pump`), an
error logged with its traceback, counted and backed off (:func:`failed`), a wait that ends
early on stop, and one message parsed into events (:func:`parse_message`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from harvest.domain.stream_events import Event, MalformedEvent, parse_event
from harvest.store.streams import StreamCache, audit_requests_key
from harvest.venues.binance_streams import StreamClosed

log = logging.getLogger("harvest.streams")

#: What :meth:`Pump.get` gives once the socket's read loop has ended.
CLOSED = object()


class Pump:
    """Reads a python-binance socket in its own task into an ``asyncio.Queue``, so that waiting
    with a timeout never cancels the socket's ``recv()`` (a timed-out ``recv()`` is where a
    message could be lost or held back); ``get(timeout)`` gives a message, None after the
    timeout, or ``CLOSED`` once the socket's read loop has ended."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.q: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def __aenter__(self) -> "Pump":
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.closing = True
        # Python 3.11's asyncio.wait_for (inside python-binance's recv) can swallow a
        # cancellation that lands as a message arrives; cancel until the task has ended.
        while not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task], timeout=0.1)

    async def _run(self) -> None:
        try:
            while not self.closing:
                await self.q.put(await self.sock.recv())
        except StreamClosed:
            await self.q.put(CLOSED)

    def drain(self) -> list[Any]:
        """The messages already queued (none waited for); ``CLOSED``, if queued, stays queued."""
        out: list[Any] = []
        while not self.q.empty():
            msg = self.q.get_nowait()
            if msg is CLOSED:
                self.q.put_nowait(msg)
                break
            out.append(msg)
        return out

    async def get(self, timeout: float) -> Any:
        """The next message, None after ``timeout`` s, or :data:`CLOSED`."""
        try:
            return await asyncio.wait_for(self.q.get(), timeout)
        except asyncio.TimeoutError:
            return None


async def failed(cache: StreamCache, where: str, stop: asyncio.Event, backoff: float) -> float:
    """Inside an ``except``: log the error with its traceback, count it
    (``streams:errors:<where>``; ``/metrics`` ``harvest_streams_errors_total{where}``, alert
    HarvestStreamsErroring when it repeats), wait ``backoff`` s (or until ``stop``) and return
    the next backoff (doubled, at most 60 s)."""
    cache.count(f"errors:{where}")
    log.exception("streams (%s) failed; retrying in %.0f s", where, backoff)
    await wait(stop, backoff)
    return min(60.0, backoff * 2)


async def wait(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or until ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


def parse_message(cache: StreamCache, msg: Any) -> list[Event]:
    """The events of one message; a malformed one is counted and logged, and gives none."""
    try:
        return parse_event(msg, int(time.time() * 1000))
    except MalformedEvent as e:
        cache.count("malformed")
        log.warning("malformed stream event ignored: %s", e)
        return []


#: New user-data-stream connections one ``harvest streams`` process opens: at most
#: :data:`CONNECT_BURST` at once, then :data:`CONNECTS_PER_S` a second. Binance limits new
#: WebSocket connections per IP (its WebSocket API pages: 300 per 5 minutes; the USDⓈ-M stream
#: pages name no figure, so harvest takes that reading, the more dangerous one).
CONNECTS_PER_S = 1.0
CONNECT_BURST = 300


class ConnectGate:
    """A token bucket for the process's new connections (one event loop; not thread-safe):
    ``burst`` tokens, refilled at ``rate_per_s``; :meth:`acquire` waits for one. A fleet's cold
    start, or every account reconnecting after a drop, then opens its streams at the exchange's
    pace instead of all at once (1000 handshakes at once timed out and, retried, starved the
    loop that renews the accounts' leases). Raises ValueError for a rate or burst ≤ 0."""

    def __init__(self, rate_per_s: float = CONNECTS_PER_S, burst: int = CONNECT_BURST) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError(f"connect gate: rate {rate_per_s}/s and burst {burst} must be > 0")
        self.rate, self.burst = float(rate_per_s), float(burst)
        self.tokens, self.at = float(burst), time.monotonic()
        self.waited = 0  # connections that had to wait for a token
        self._lock = asyncio.Lock()  # waiters queue in turn (first come, first served)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Take one token, waiting in turn while none is left (or until ``stop``: then False)."""
        async with self._lock:
            self._refill()
            waited = False
            while self.tokens < 1.0:
                waited = True
                await wait(stop, (1.0 - self.tokens) / self.rate)
                if stop.is_set():
                    return False
                self._refill()
            self.tokens -= 1.0
            self.waited += waited
            return True


class LeaseKeeper:
    """Renews the leases of every account one ``harvest streams`` process holds, and the
    process's ``streams`` heartbeat, in **one** Redis round trip every ``interval_s`` (a pipeline
    of :meth:`StreamCache.renew_in`), for the whole process: a thousand accounts each renewing
    on its own made three thousand blocking round trips a second on the event loop, which fell
    more than ``lease_s`` behind during a cold start and lost the leases (issue 32).

    :meth:`hold` registers an account (its lease already acquired) and gives an
    ``asyncio.Event`` set when the lease is lost (renewal answered 0: another owner, or expired)
    or could not be renewed for ``lease_s`` (Redis unreachable: the lease has expired there, so
    the account is given up rather than held blind). :meth:`drop` unregisters it. A Redis error
    is logged, never raised. The same round trip reads the accounts readers asked to have
    audited now (:meth:`StreamCache.request_audit`); those this process holds are taken (one
    SREM, only then) and :meth:`asked` tells their :class:`AccountStreams` once. ``r``: the
    process's Redis client (decode_responses); ``heartbeats``: :class:`harvest.store.health.Heartbeats`;
    ``owner``: host:pid."""

    def __init__(self, r: Any, heartbeats: Any, owner: str, lease_s: float, interval_s: float = 1.0) -> None:
        if not 0 < interval_s < lease_s:
            raise ValueError(f"lease keeper: interval {interval_s} s must be > 0 and < the lease {lease_s} s")
        self.r, self.heartbeats, self.owner = r, heartbeats, owner
        self.lease_s, self.interval_s = float(lease_s), float(interval_s)
        self.held: dict[str, tuple[StreamCache, asyncio.Event]] = {}
        self.renewals = 0  # round trips made (each renews every held lease)
        self._asked: set[str] = set()  # accounts held here whose audit a reader asked for
        self._ok_at = time.monotonic()

    def hold(self, cache: StreamCache) -> asyncio.Event:
        """Keep ``cache``'s lease (acquired by the caller) renewed; the event is set once it is lost."""
        lost = asyncio.Event()
        self.held[cache.account] = (cache, lost)
        return lost

    def drop(self, cache: StreamCache) -> None:
        """Stop renewing ``cache``'s lease (the caller releases it)."""
        self.held.pop(cache.account, None)

    def asked(self, account: str) -> bool:
        """Whether a reader asked for ``account``'s audit since the last call (then forgotten)."""
        if account in self._asked:
            self._asked.discard(account)
            return True
        return False

    def renew(self) -> int:
        """One round trip: every held lease renewed, the heartbeat written, the audit requests
        read (those of held accounts taken: a second round trip, only when there are some).
        Returns how many leases were lost (their events set). Raises redis.RedisError."""
        held = list(self.held.values())
        p = self.r.pipeline(transaction=False)
        for cache, _ in held:
            cache.renew_in(p, self.owner, self.lease_s)
        self.heartbeats.beat_in(p, "streams")
        requests = audit_requests_key(held[0][0].ns) if held else None
        if requests is not None:
            p.smembers(requests)
        replies = p.execute()
        self.renewals += 1
        if requests is not None:
            mine = set(replies[-1]) & set(self.held)  # r decodes responses, as StreamCache's does
            if mine:
                self.r.srem(requests, *sorted(mine))
                self._asked |= mine
        lost = 0
        for (cache, event), ok in zip(held, replies, strict=False):
            if not ok and not event.is_set():
                log.error("lost the lease of account %s: letting go of its streams", cache.account)
                event.set()
                lost += 1
        return lost

    async def run(self, stop: asyncio.Event) -> None:
        """Renew every ``interval_s`` until ``stop``. A failed round trip is logged; after
        ``lease_s`` without a successful one every held account is let go (its lease has
        expired in Redis)."""
        while not stop.is_set():
            try:
                self.renew()
                self._ok_at = time.monotonic()
            except Exception:  # Redis unreachable: the leases expire on their own
                log.exception("lease renewal failed")
                if time.monotonic() - self._ok_at >= self.lease_s:
                    for cache, event in list(self.held.values()):
                        if not event.is_set():
                            log.error("lease of %s not renewed for %.0f s: letting go", cache.account, self.lease_s)
                            event.set()
            await wait(stop, self.interval_s)
