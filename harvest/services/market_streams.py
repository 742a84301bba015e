"""The market streams of ``harvest streams``: mark prices and closed 1m bars of the held
symbols into Redis, and the event-driven exits (a mark that crosses a position's trigger fires
its chain). See :mod:`harvest.services.streams` for the process."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, cast

from harvest.domain.stream_events import Kline, MarkPrice
from harvest.domain.trading import halted
from harvest.services.runtime import Runtime
from harvest.services.stream_loop import CLOSED, Pump, failed, parse_message, wait
from harvest.store.streams import KlineCache, StreamCache
from harvest.venues.binance_streams import StreamClosed, mark_price_socket, socket_manager, stream_url_of

log = logging.getLogger("harvest.streams")


#: Starts a position's chain on an event: ``(account, symbol) -> None`` (an operator tool passes
#: one that publishes :func:`workflows.full_chain`; services import no canvas).
Fire = Callable[[str, str], None]


class MarketStreams:
    """The mark-price and 1m kline streams (``<symbol>@markPrice@1s``, ``<symbol>@kline_1m``;
    public: no credentials, no lease) of one ``harvest streams`` process: ``symbols`` and every
    symbol open in any of ``caches`` (the accounts it holds), into ``<ns>:streams:marks`` and,
    closed bars only, :class:`harvest.store.streams.KlineCache` (the market refresh reads them).
    ``silence_s``: how long a market stream may say nothing before it is reopened (wall s).

    Event-driven exits: with ``fire``, each mark is compared with the triggers the accounts'
    last scans left (:meth:`harvest.store.keys.Keys.triggers`, re-read every
    ``triggers_every_s``); a mark at or beyond a position's trigger calls ``fire(account,
    symbol)`` once for that trigger, records it on ``<ns>:streams:fired`` (account, symbol,
    trigger, mark, the event's time and when it was fired, ms) and counts
    ``streams:triggers_fired``; while trading is HALTED for the account none fires (counted
    ``streams:triggers_held``). What the chain does is the pipeline's: it re-reads the position
    from REST and every stage's rule applies, so a stale trigger costs one evaluate."""

    def __init__(
        self,
        rt: Runtime,
        symbols: list[str],
        caches: list[StreamCache],
        silence_s: float = 10.0,
        fire: Fire | None = None,
        triggers_every_s: float = 0.5,
    ):
        self.rt, self.symbols, self.caches, self.silence_s = rt, list(symbols), caches, silence_s
        self.cache = caches[0]
        self.klines = KlineCache(rt.r, rt.settings.namespace)
        self.fire, self.triggers_every_s = fire, triggers_every_s
        self._triggers: dict[str, list[tuple[str, float, int]]] = {}  # symbol → [(account, price, side)]
        self._read_at = 0.0
        self._fired: set[tuple[str, str, float]] = set()
        self._seen_mark = False  # a mark arrived on the market socket now held (its backoff resets)

    def _refresh_triggers(self) -> None:
        if time.monotonic() - self._read_at < self.triggers_every_s:
            return
        self._read_at = time.monotonic()
        p = self.rt.r.pipeline(transaction=False)
        for c in self.caches:
            p.hgetall(self.rt.plans.k.triggers(c.account))
        by_symbol: dict[str, list[tuple[str, float, int]]] = {}
        for c, rows in zip(self.caches, p.execute(), strict=True):
            for sym, raw in rows.items():
                try:
                    t = json.loads(raw)
                    by_symbol.setdefault(sym, []).append((c.account, float(t["price"]), int(t["side"])))
                except (ValueError, KeyError, TypeError):
                    self.cache.count("malformed_trigger")
        self._triggers = by_symbol
        live = {(a, s, px) for s, ts in by_symbol.items() for a, px, _ in ts}
        self._fired &= live  # a trigger the scan moved or dropped may fire again when it comes back

    def _halted(self, account: str) -> bool:
        """Whether trading is HALTED for ``account`` now (a chain would only be refused at the
        guard, its plan counted as an attempt)."""
        try:
            mode = self.rt.for_account(account).settings.mode
        except KeyError:
            return True
        return halted(cast(dict[str, str], self.rt.r.hgetall(self.rt.plans.k.trading)), account, mode)

    def _check(self, ev: MarkPrice, arrived: float | None = None) -> None:
        """Fire the chain of every held position whose trigger ``ev``'s mark reached; each firing
        is recorded (``<ns>:streams:fired``: ``event_ms`` the event's E on the exchange's clock,
        ``received_ms`` its arrival and ``fired_ms`` the firing, both wall ms: a latency is
        measured from ``received_ms``, never from E against wall time)."""
        arrived = time.time() if arrived is None else arrived
        if self.fire is None:
            return
        self._refresh_triggers()
        for account, price, side in self._triggers.get(ev.symbol, ()):
            if side * (ev.mark - price) < 0 or (account, ev.symbol, price) in self._fired:
                continue
            if self._halted(account):  # the next scan drops its triggers; until then none fires
                self.cache.count("triggers_held")
                continue
            self._fired.add((account, ev.symbol, price))
            try:
                self.fire(account, ev.symbol)
            except Exception:  # a broker that does not answer: the beat scan is the safety net
                self.cache.count("errors:fire")
                log.exception("trigger of %s %s not fired", account, ev.symbol)
                continue
            now_ms = int(time.time() * 1000)
            self.rt.r.xadd(
                f"{self.rt.settings.namespace}:streams:fired",
                {
                    "account": account,
                    "symbol": ev.symbol,
                    "trigger": repr(price),
                    "mark": repr(ev.mark),
                    "event_ms": ev.event_ms,
                    "received_ms": int(arrived * 1000),
                    "fired_ms": now_ms,
                },
                maxlen=10_000,
                approximate=True,
            )
            self.cache.count("triggers_fired")

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the market streams until ``stop``; errors are logged with their traceback,
        counted (``streams:errors:market_session``) and retried with backoff (1 s doubling to
        60 s)."""
        backoff = 1.0
        while not stop.is_set():
            try:
                url = await asyncio.to_thread(stream_url_of, self.rt.settings)
                client, bsm = socket_manager(self.rt.settings, url, public=True)
                task = asyncio.create_task(self._market(bsm, stop))
                try:
                    await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
                    # python-binance notices a close only when its 10 s read wait ends: bounded
                    # grace, then cancelled (as AccountStreams does)
                    await asyncio.wait([task], timeout=3.0)
                finally:
                    if not task.done():
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
                    await asyncio.wait_for(client.close_connection(), 3.0)
                backoff = 1.0
            except Exception:
                backoff = await failed(self.cache, "market_session", stop, backoff)

    def _wanted(self) -> list[str]:
        """The mark-price streams to hold: the configured symbols and every open position's."""
        return sorted(set(self.symbols).union(*(c.open_symbols() for c in self.caches)))

    async def _market(self, bsm: Any, halt: asyncio.Event) -> None:
        """Hold ``<symbol>@markPrice@1s`` for :meth:`_wanted`; reopen when that set changes
        (a position opened in a new symbol), when the stream is silent ``silence_s``, or after
        an error (with backoff; a mark seen resets it)."""
        backoff = 1.0
        while not halt.is_set():
            names = self._wanted()
            if not names:
                await wait(halt, 1.0)
                continue
            self._seen_mark, ended = False, "error"
            try:
                sock = mark_price_socket(bsm, names)
                async with sock, Pump(sock) as pump:
                    ended = await self._hold(pump, names, halt)
            except StreamClosed:
                self.cache.count("gap:market_closed")
            except Exception:
                self.cache.count("errors:market")
                log.exception("market stream failed")
            if self._seen_mark:
                backoff = 1.0
            if ended == "silent":
                self.cache.count("gap:market_silent")
            elif ended != "error":
                continue  # the wanted set changed (or halt): reopen at once
            if not halt.is_set():
                await wait(halt, backoff)
                backoff = min(60.0, backoff * 2)

    async def _hold(self, pump: Pump, names: list[str], halt: asyncio.Event) -> str:
        """Read one market socket until it is silent ``silence_s`` (``"silent"``), the wanted
        set changed or ``halt`` (``"reopen"``). Raises StreamClosed when the socket ends."""
        last = checked = time.monotonic()
        while not halt.is_set():
            if time.monotonic() - last >= self.silence_s:
                return "silent"
            if time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                if self._wanted() != names:
                    break  # a new symbol: reopen with it at once
            msg = await pump.get(1.0)
            if msg is CLOSED:
                raise StreamClosed
            if msg is not None and self._on_message(msg):
                last = time.monotonic()
        return "reopen"

    def _on_message(self, msg: Any) -> bool:
        """Store one market message's marks (checking the triggers) and closed bars; returns
        whether it carried a mark."""
        arrived = time.time()  # wall: the events' freshness (E is the exchange's clock)
        marked = False
        for ev in parse_message(self.cache, msg):
            if isinstance(ev, MarkPrice):
                self.cache.put_mark(ev, at=arrived)
                self._check(ev, arrived)
                marked = self._seen_mark = True
            elif isinstance(ev, Kline) and ev.closed:
                self.klines.put(ev.symbol, [(ev.open_ms, ev.close)])
        return marked
