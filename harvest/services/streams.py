"""``harvest streams``: hold an account's user data stream and the mark-price streams of its
symbols, and write what they say into Redis (:class:`harvest.store.streams.StreamCache`)
(issue 23, first step: one account per process).

Streams are the truth, REST the audit (issue 32). The order of trust: a user data stream is
only as good as its continuity, so

1. the stream is opened first (python-binance: POST listenKey, connect), then positions and
   working orders are read once from REST (positionRisk, openAlgoOrders, openOrders) into the
   cache, stamped with the request's start time: an event older than that is ignored, one
   newer applies. The orders are read for the symbols the cache knows and the open
   positions' (weight 1 a symbol; every symbol's, 40 + 40, only in the daily discovering
   audit, :data:`DISCOVERY_S`): a 1000-account cold start costs ~26 weight an account, not 96;
2. from then on the events are folded into the cache with no REST read
   (:mod:`harvest.store.streams`): ``ACCOUNT_UPDATE`` moves a position's quantity and entry,
   ``ORDER_TRADE_UPDATE`` / ``ALGO_UPDATE`` the working orders and stops (and each order's
   outcome, which confirm reads instead of REST), ``ACCOUNT_CONFIG_UPDATE`` the leverage.
   REST is read only where the stream lacks what harvest needs: a position opened or flipped
   (its leverage, liquidation price, opening time: positionRisk and openAlgoOrders *of that
   symbol*, ``settle_s`` later) and a funding settlement (``ACCOUNT_UPDATE`` FUNDING_FEE:
   Binance does not say which cross position paid; the full read includes the income
   endpoint). The liquidation price is not recomputed from the stream (for a cross position
   it moves with every other position and the wallet): it stands from the last REST read and
   the audit refreshes it;
3. the audit: at wall times ``(phase + k) × HARVEST_AUDIT_INTERVAL_S`` (each account of the
   deployment at its own phase, index / accounts: spread evenly, never a burst) the account's
   REST truth is read and compared with the cache; a disagreement distrusts the cache at once,
   is recorded as a reconcile finding (``audit_disagreement``) and the stream is reopened (as
   after a gap). Once a day (same phase) the audit reads every symbol's orders and adds those
   on symbols the cache did not know. A reader that finds the exchange disagreeing with what a
   plan was made from (the guard) asks for an audit now (:data:`ASKED_AUDIT_MIN_S`);
4. a drop (python-binance reports ``{"e": "error"}`` and reconnects), an expired listenKey, a
   stream that cannot be (re)opened, a resync whose REST read is refused (429/418, counted
   ``streams:rest_error:<code>``; retried on the same connection with backoff) or an audit
   disagreement marks the cache untrusted at once
   — readers fall back to REST — and it is trusted again only after the next REST resync on a
   live connection. A REST read refused between resyncs leaves what it was to bring owed (a
   symbol's row without its REST fields, a dirty cache: readers on REST) or, for an audit,
   the clean stream trusted, and is retried with backoff (1 s doubling to 60 s);
5. a malformed event is counted (``streams:malformed``) and logged, never applied; an error
   in a loop is logged with its traceback, counted (``streams:errors:<where>``) and retried
   with backoff (1 s doubling to 60 s).

The mark-price streams (``<symbol>@markPrice@1s``) go to ``<ns>:streams:marks``; a market
stream silent for ``silence_s`` is reopened. Nothing here sends an order: losing this process
loses only freshness (the cache turns stale and readers use REST).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import socket
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from harvest.domain.stream_events import (
    AlgoUpdate,
    Event,
    FundingFee,
    LeverageUpdate,
    ListenKeyExpired,
    PositionUpdate,
    StreamGap,
    TradeUpdate,
    audit_differences,
    order_key_of,
)
from harvest.services.market_streams import Fire, MarketStreams
from harvest.services.reconcile import report
from harvest.services.runtime import Runtime
from harvest.services.stream_loop import CLOSED, ConnectGate, LeaseKeeper, Pump, failed, parse_message, wait
from harvest.store.streams import StreamCache
from harvest.venues.base import VenueError
from harvest.venues.binance_streams import is_streaming, socket_manager, stream_url_of, user_socket

log = logging.getLogger("harvest.streams")

#: Each account's discovering read (every symbol's openOrders and openAlgoOrders, 40 + 40: the
#: one that finds orders placed before the stream on symbols the cache does not know) is made
#: once in this many seconds (wall), by the audit at the account's phase of it: spread over the
#: day like the audits, never at a (re)connection, whose resync reads the known symbols only.
DISCOVERY_S = 86_400.0


#: At most one audit a reader asked for (the guard found the exchange disagreeing with what a
#: plan was made from) per account in this many seconds: a silent gap is found within seconds
#: of harming a plan, not at the next scheduled audit, and a burst of refusals costs one audit.
ASKED_AUDIT_MIN_S = 30.0


def next_slot(now: float, phase: float, interval_s: float) -> float:
    """The first wall time (s) after ``now`` of the form ``(phase + k) × interval_s``."""
    return (math.floor(now / interval_s - phase) + 1 + phase) * interval_s


__all__ = ["AccountStreams", "Fire", "MarketStreams", "run_streams"]


class AccountStreams:
    """The user data stream of ``rt``'s account (see module docstring). ``keepalive_s``: listenKey PUT interval;
    ``settle_s``: how long after a change the stream cannot tell in full (an opening, a funding
    settlement) REST is read (one read for a burst of events); ``lease_s``: how long the
    account's lease outlives its last renewal (a dead owner's account is taken over within that).
    ``audit_interval_s`` (default ``settings.audit_interval_s``) and ``audit_phase`` (in [0, 1)):
    the audit runs at wall times ``(phase + k) × interval`` (:meth:`next_audit`), so that the
    accounts of a deployment, each at its own phase, are audited evenly over the interval.
    ``gate``: the process's :class:`~harvest.services.stream_loop.ConnectGate`, shared by its
    accounts (default: one of this account's own). ``keeper``: the process's
    :class:`~harvest.services.stream_loop.LeaseKeeper`, which renews every account's lease in one
    round trip a second (default: one of this account's own, run by :meth:`run`). ``rest``: the
    process's pool of threads for REST reads (default: the event loop's default executor):
    bounded, so that a cold start's hundreds of resyncs do not crowd out the loop."""

    def __init__(
        self,
        rt: Runtime,
        keepalive_s: float = 30 * 60,
        settle_s: float = 0.25,
        lease_s: float = 10.0,
        audit_interval_s: float | None = None,
        audit_phase: float = 0.0,
        gate: ConnectGate | None = None,
        keeper: LeaseKeeper | None = None,
        rest: Executor | None = None,
    ):
        self.rt = rt
        self.gate = gate or ConnectGate()
        self.keepalive_s = keepalive_s
        self.cache = StreamCache(rt.r, rt.settings.namespace, rt.settings.account)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._own_keeper = keeper is None
        self.keeper = keeper or LeaseKeeper(rt.r, rt.heartbeats, self.owner, lease_s)
        self.rest = rest
        self.listen_keys = 0
        self.settle_s = settle_s
        self.grace_s = 3.0
        self.lease_s = lease_s
        self.audit_interval_s = float(audit_interval_s or rt.settings.audit_interval_s)
        if not 0.0 <= audit_phase < 1.0:
            raise ValueError(f"audit_phase {audit_phase} not in [0, 1)")
        self.audit_phase = audit_phase
        self._next_audit: float | None = None
        self._next_discovery = math.inf
        self._asked, self._asked_at = False, -math.inf  # a reader's request for an audit now
        self._retry_s = 1.0  # backoff of a REST read refused between resyncs
        self._changed = False
        self._gap, self._full_due = False, False
        self._pending: set[str] = set()
        self._changed_at: float | None = None
        self._resync_at = 0.0  # monotonic time a refused resync is tried again
        self._reset()

    def _reset(self) -> None:
        """Nothing owed to REST: no gap, no symbol to read, no full resync due."""
        self._gap, self._full_due, self._pending, self._changed_at = False, False, set(), None

    def next_audit(self, now: float) -> float:
        """The first audit time (wall s) after ``now``: ``(phase + k) × interval``."""
        return next_slot(now, self.audit_phase, self.audit_interval_s)

    async def _io(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` (blocking I/O) on the process's REST threads (:attr:`rest`)."""
        return await asyncio.get_running_loop().run_in_executor(self.rest, functools.partial(fn, *args))

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the account's streams until ``stop`` is set, while this process holds the
        account's lease (:meth:`StreamCache.acquire`; another process waits, and takes over
        within ``lease_s`` of this one dying). Errors are logged with their traceback, counted
        (``streams:errors:session``) and retried with backoff (1 s doubling to 60 s), never
        raised."""
        backoff, waiting = 1.0, False
        keeping = asyncio.create_task(self.keeper.run(stop)) if self._own_keeper else None
        while not stop.is_set():
            if not self.cache.acquire(self.owner, self.lease_s):
                if not waiting:
                    log.info("account %s is held by %s; waiting", self.rt.settings.account, self.cache.lease_owner())
                    waiting = True
                await wait(stop, 1.0)
                continue
            waiting = False
            log.info("holding account %s (lease %s s)", self.rt.settings.account, self.lease_s)
            lost = self.keeper.hold(self.cache)  # renewed from now on, before any slow step
            try:
                await self._session(stop, lost)
                backoff = 1.0
            except Exception:  # the emulator's handshake or the client failed: retry
                backoff = await failed(self.cache, "session", stop, backoff)
            finally:
                self.keeper.drop(self.cache)
                self.cache.release(self.owner)
        if keeping is not None:
            await keeping

    async def _session(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """One holding of the lease: until ``stop`` or the lease is lost (``lost`` set by the
        :class:`LeaseKeeper`)."""
        self.cache.distrust("start")
        url = await self._io(stream_url_of, self.rt.settings)  # the emulator's handshake: blocking I/O
        client, bsm = socket_manager(self.rt.settings, url, self.keepalive_s)
        halt = asyncio.Event()
        self._next_audit = self.next_audit(time.time())
        self._next_discovery = next_slot(time.time(), self.audit_phase, DISCOVERY_S)
        self.cache.note(owner=self.owner)
        tasks = [asyncio.create_task(self._user(bsm, halt))]
        try:
            waits = [asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)  # stop, or the lease lost
            for w in waits:
                w.cancel()
            halt.set()
            # python-binance closes a socket once its read loop notices; a reconnection under
            # way can keep it from noticing, so the close gets a bounded grace, then is cancelled
            _, late = await asyncio.wait(tasks, timeout=self.grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        finally:
            self.cache.distrust("stop")
            await asyncio.wait_for(client.close_connection(), self.grace_s)

    # ------------------------------------------------------------------ user data stream

    async def _user(self, bsm: Any, stop: asyncio.Event) -> None:
        """Hold the user data stream: connect, resync from REST, fold events in. A drop, an
        expired listenKey, an audit disagreement or any error distrusts the cache (readers on
        REST) and reconnects with backoff (1 s doubling to 60 s; errors logged with their
        traceback and counted ``streams:errors:user``). The resync's REST read refused (429/418,
        the budget) keeps the cache untrusted and is retried on the same connection with
        backoff (:meth:`_owed`): reconnecting would cost a listenKey and a turn at the process's
        :class:`ConnectGate`, where each connection waits its turn."""
        backoff = 1.0
        while not stop.is_set():
            why = "connect"
            if not await self.gate.acquire(stop):  # the process's new connections, paced
                return
            try:
                sock = user_socket(bsm)
                async with sock:
                    self.listen_keys += 1
                    self.cache.note(listen_keys=self.listen_keys)
                    backoff = 1.0
                    why = await self._consume(sock, stop)  # its first step: the resync
            except Exception:  # an exchange or network error never ends the process
                self.cache.count("errors:user")
                log.exception("user data stream failed")
            if stop.is_set():
                return
            if why not in ("listen_key_expired", "audit"):  # those were recorded when they were seen
                self.cache.distrust(why)
            log.info("user data stream ended (%s); reopening in %.0f s", why, backoff)
            await wait(stop, backoff)
            backoff = min(60.0, backoff * 2)

    def _apply(self, ev: Event) -> str | None:
        """Fold one user-stream event into the cache; returns why the stream must end (an
        expired listenKey), else None."""
        if isinstance(ev, StreamGap):
            self.cache.distrust("drop")
            self._gap = True
        elif isinstance(ev, ListenKeyExpired):
            # untrusted now: closing python-binance's socket can take its 10 s read timeout
            self.cache.distrust("listen_key_expired")
            return "listen_key_expired"
        elif isinstance(ev, PositionUpdate):
            _, needed = self.cache.apply_position(ev)
            if needed:  # an opening or a flip: its leverage, liquidation price, opening time are REST's
                self._pending.add(ev.symbol)
                self._changed_at = self._changed_at or time.monotonic()
        elif isinstance(ev, (TradeUpdate, AlgoUpdate)):
            self.cache.record(ev)
        elif isinstance(ev, LeverageUpdate):
            self.cache.apply_leverage(ev)
            forget = getattr(self.rt.venue, "leverage_changed", None)  # the adapter's cached leverage
            if forget is not None:
                forget(ev.symbol)
        elif isinstance(ev, FundingFee):
            # Which position paid is not said (cross margin): the rows' funding comes from REST
            # income, read afresh by the audit this starts (readers on REST until then).
            self.rt.venue.funding_settled()
            self.cache.count("funding_events")
            self.cache.mark_dirty()
            self._full_due = True
            self._changed_at = self._changed_at or time.monotonic()
        self._changed = True
        return None

    async def _consume(self, sock: Any, stop: asyncio.Event) -> str:
        """Apply the stream's events until it ends; returns why it ended. REST is read only
        after a gap (once reconnected), for a symbol opened or flipped, after a funding
        settlement, and by the audit when it is due. The first thing owed is the resync of the
        new connection (events meanwhile wait in the pump, and those older than the read are
        ignored)."""
        self._reset()
        self._gap, self._resync_at, self._retry_s = True, 0.0, 1.0
        async with Pump(sock) as pump:
            while not stop.is_set():
                msg = await pump.get(self._poll_s())
                if msg is CLOSED:
                    return "closed"
                if msg is not None:
                    for ev in parse_message(self.cache, msg):
                        if why := self._apply(ev):
                            return why
                if await self._owed(sock, pump):
                    return "audit"
            return "stop"

    def _poll_s(self) -> float:
        """How long to wait for the next event before looking at what is owed: 0.1 s while a
        change settles, until a refused resync's retry (0.1..1 s) while a resync is owed, else 1 s."""
        if self._changed_at is not None:
            return 0.1
        if self._gap:
            return max(0.1, min(1.0, self._resync_at - time.monotonic()))
        return 1.0

    async def _owed(self, sock: Any, pump: Pump) -> bool:
        """Read from REST what is owed now: on a new connection or after a gap (once
        reconnected) a resync, ``settle_s`` after a change :meth:`_settle`, at its time the
        audit (:meth:`_audit_due`). Returns whether an audit disagreed (the stream must end). A
        resync refused (429/418, the budget) is counted (``streams:gap:rest_error``,
        ``streams:rest_error:<code>``), leaves the cache untrusted (readers on REST) and is
        retried with backoff (1 s doubling to 60 s) on the same connection."""
        if self._gap:
            if is_streaming(sock) and time.monotonic() >= self._resync_at:
                try:
                    await self._resync()  # what the connection (or the gap) did not say comes from REST
                    self._retry_s = 1.0
                except VenueError as e:
                    self.cache.distrust("rest_error")
                    self._refused(e)
                    self._resync_at = time.monotonic() + self._retry_s
                    self._retry_s = min(60.0, self._retry_s * 2)
            return False
        if self._changed_at is not None and time.monotonic() - self._changed_at >= self.settle_s:
            return await self._settle(pump)
        self._asked = self._asked or self.keeper.asked(self.cache.account)
        if self._next_audit is not None and (time.time() >= self._next_audit or self._asked_due()):
            return await self._audit_due(pump)
        return False

    def _asked_due(self) -> bool:
        """Whether a reader's request for an audit (:meth:`StreamCache.request_audit`) is to be
        served now: at most one asked audit every :data:`ASKED_AUDIT_MIN_S` (a request
        meanwhile waits for it)."""
        return self._asked and time.monotonic() - self._asked_at >= ASKED_AUDIT_MIN_S

    async def _settle(self, pump: Pump) -> bool:
        """``settle_s`` after a change the stream cannot tell in full: an audit after a funding
        settlement (it reads the rows, income with them), else each symbol opened or flipped
        from REST. Returns whether the audit disagreed (the stream must end). A REST read
        refused (429/418, the budget) leaves what it was to bring owed — the cache dirty or
        the row without its REST fields, so readers use REST — and is retried with backoff
        (never a reconnection: it would cost more)."""
        full, pending = self._full_due, set(self._pending)
        self._reset()
        try:
            if full:
                if await self._audit(pump, clean=True) is not None:
                    return True
            else:
                for sym in sorted(pending):
                    await self._resync_symbol(sym)
                    pending.discard(sym)
            self._retry_s = 1.0
        except VenueError as e:
            self._refused(e)
            self._full_due, self._pending = self._full_due or full, self._pending | pending
            self._changed_at = time.monotonic() + self._retry_s - self.settle_s
            self._retry_s = min(60.0, self._retry_s * 2)
        return False

    async def _audit_due(self, pump: Pump) -> bool:
        """The scheduled audit; returns whether it disagreed (the stream must end). An audit
        that could not read REST leaves the account on the stream (as clean as it was) and is
        retried with backoff, before its next slot. An audit a reader asked for
        (:meth:`_asked_due`) leaves the scheduled one where it was, and is counted
        ``streams:audits_asked``."""
        if self._asked_due():
            self._asked, self._asked_at = False, time.monotonic()
            self.cache.count("audits_asked")
        if self._next_audit is None or time.time() >= self._next_audit:
            self._next_audit = self.next_audit(time.time())
        discover = time.time() >= self._next_discovery
        try:
            if await self._audit(pump, discover=discover) is not None:
                return True
            self._retry_s = 1.0
            if discover:
                self._next_discovery = next_slot(time.time(), self.audit_phase, DISCOVERY_S)
        except VenueError as e:
            self._refused(e)
            self._next_audit = min(self._next_audit, time.time() + self._retry_s)
            self._retry_s = min(60.0, self._retry_s * 2)
        return False

    def _refused(self, e: VenueError) -> None:
        """A REST read of the streams process refused or failed: counted
        ``streams:rest_error:<code>`` and logged."""
        self.cache.count(f"rest_error:{e.code}")
        log.warning("account %s: REST read failed (%s); retrying in %.0f s", self.rt.settings.account, e, self._retry_s)

    def _rest(self, discover: bool = False) -> tuple[list, list, set[str]]:
        """The account's REST truth: positions (positionRisk with their stops, leverage,
        opening, funding), working orders (openOrders, openAlgoOrders) and the scope those
        orders answer for: the symbols the cache knows (:meth:`StreamCache.known_symbols`) and
        the open positions'. The orders are read for that scope by the cheaper form (the
        adapter: 1 a symbol, or 40 for every symbol): a clean stream delivers every symbol's
        order events, so the orders harvest can act on are on those symbols. With ``discover``
        every symbol's orders (80: the read that finds orders placed before the stream on
        symbols the cache does not know; :data:`DISCOVERY_S`). Blocking I/O; raises VenueError."""
        known = self.cache.known_symbols()
        vps = self.rt.venue.positions()
        scope = known | {vp.symbol for vp in vps}
        if discover:
            return vps, self.rt.venue.open_orders(), scope
        return vps, self.rt.venue.open_orders(symbols=sorted(scope)), scope

    async def _resync(self) -> None:
        # When the REST read started, on the exchange's clock (the replay's market clock on the
        # emulator): stream events (their E, that clock) older than it do not overwrite it.
        started = int(self.rt.market_now() * 1000)
        self._changed = False
        vps, orders, _ = await self._io(self._rest)
        self.cache.resync(vps, started, clean=not self._changed, orders=orders)
        self._reset()
        log.info("positions resynchronised from REST: %d open, %d working orders", len(vps), len(orders))

    async def _resync_symbol(self, symbol: str) -> None:
        """One symbol from REST (positionRisk and openAlgoOrders of that symbol)."""
        started = int(self.rt.market_now() * 1000)
        vp = await self._io(self.rt.venue.position, symbol)
        self.cache.resync_symbol(symbol, vp, started)

    async def _audit(self, pump: Pump, clean: bool = False, discover: bool = False) -> list[dict] | None:
        """Compare REST truth with the cache (:func:`harvest.domain.stream_events.audit_differences`).
        Events that arrived during the read are folded in first, and what they touched is not
        compared (the cache is newer there). Agreement: the REST-only fields are refreshed
        (:meth:`StreamCache.refresh`; with ``clean`` the cache is marked not dirty: after a
        funding settlement, whose funding the refreshed rows now carry), counted
        ``streams:audits``. A disagreement: the cache is
        distrusted at once (``streams:gap:audit``: readers on REST), each difference is a
        reconcile finding ``audit_disagreement`` (counter ``reconcile:audit_disagreement``),
        and the differences are returned (the caller reconnects, as after a gap). With
        ``discover`` (:data:`DISCOVERY_S`) every symbol's orders are read: those on the scope's
        symbols are compared, the others (placed before the stream, on symbols the cache did not
        know) are added to the cache when the audit agrees (:meth:`StreamCache.add_orders`). An
        untrusted cache is not audited (a resync is owed). A REST error propagates."""
        if not self.cache.trusted():
            return None
        started = int(self.rt.market_now() * 1000)
        vps, every, scope = await self._io(self._rest, discover)
        orders = [o for o in every if o.symbol in scope]
        for msg in pump.drain():
            for ev in parse_message(self.cache, msg):
                if self._apply(ev) is not None:
                    return None  # the stream ended meanwhile: the reconnection resyncs
        if self._gap:
            return None
        cached, cached_orders, moved = self.cache.audit_view(started)
        rest = {vp.symbol: (vp.qty * vp.side.sign, vp.entry_price, vp.stop_price) for vp in vps}
        rest_orders = {order_key_of(o.client_order_id, o.algo) for o in orders}
        moved |= self.cache.order_moved_since((rest_orders ^ cached_orders) - moved, started)
        diffs = audit_differences(rest, cached, rest_orders, cached_orders, moved)
        if not diffs:
            self.cache.refresh(vps, started, clean=clean)
            found = {order_key_of(o.client_order_id, o.algo): o for o in every if o.symbol not in scope}
            newer = self.cache.order_moved_since(set(found), started)  # a stream event said more since
            self.cache.add_orders([o for k, o in found.items() if k not in newer], started)
            self.cache.count("audits")
            return None
        self.cache.distrust("audit")
        for d in diffs:
            report(
                self.rt,
                "audit_disagreement",
                account=self.rt.settings.account,
                what=d["kind"],
                **{k: d[k] for k in ("symbol", "order", "rest", "cached") if k in d},
            )
        log.error(
            "audit of account %s: the stream cache disagrees with REST %s; account on REST",
            self.rt.settings.account,
            diffs,
        )
        return diffs


#: Threads of one ``harvest streams`` process for its REST reads (resyncs, audits, handshakes),
#: shared by its accounts: a cold start's hundreds of resyncs queue here (the weight budget is
#: the real limit) instead of taking the interpreter from the event loop that reads the streams.
REST_THREADS = 4


def run_streams(
    rt: Runtime,
    symbols: list[str] | None = None,
    lease_s: float = 10.0,
    accounts: list[str] | None = None,
    fire: Fire | None = None,
) -> None:
    """Until SIGINT/SIGTERM (``harvest streams``): an :class:`AccountStreams` for each of
    ``accounts`` (default: every account of the deployment; each held under its own lease, so
    that several processes share the accounts) and one :class:`MarketStreams` for ``symbols``
    (default: every symbol of those accounts), which starts a position's chain through ``fire``
    when a mark crosses its trigger (:class:`MarketStreams`; None: no event-driven exits).
    Raises KeyError for an account not configured."""
    import signal

    names = accounts or rt.accounts
    # each account's audit phase: its place among the deployment's accounts (spread evenly)
    every = sorted(rt.accounts)
    gate = ConnectGate()  # one pace for every account of the process: Binance counts per IP
    owner = f"{socket.gethostname()}:{os.getpid()}"
    keeper = LeaseKeeper(rt.r, rt.heartbeats, owner, lease_s)  # every lease in one round trip a second
    rest = ThreadPoolExecutor(REST_THREADS, thread_name_prefix="streams-rest")
    held = [
        AccountStreams(
            rt.for_account(a),
            lease_s=lease_s,
            audit_phase=every.index(a) / len(every) if a in every else 0.0,
            gate=gate,
            keeper=keeper,
            rest=rest,
        )
        for a in names
    ]
    wanted = symbols or list(dict.fromkeys(s for x in held for s in x.rt.settings.symbols))
    market = MarketStreams(held[0].rt, wanted, [x.cache for x in held], fire=fire)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.gather(keeper.run(stop), market.run(stop), *(x.run(stop) for x in held))

    try:
        asyncio.run(main())
    finally:
        rest.shutdown(wait=False, cancel_futures=True)
