"""The fapi emulator's websocket streams (issue 23): Binance's USDⓈ-M user data stream and
mark-price market streams, over real websockets (the ``websockets`` library), served from the
paper engine's state in Redis.

Paths, as python-binance 1.0.37's :class:`binance.ws.streams.BinanceSocketManager` builds them
when its ``FSTREAM_URL`` is :attr:`StreamServer.url` (Binance's routed form, and the legacy one):

=================================================  ==========================================
path                                               what
=================================================  ==========================================
``/private/ws?listenKey=K``, ``/ws/K``             the account's user data stream
``/market/ws/<symbol>@markPrice@1s``, ``/ws/…``    one market stream (raw events; also ``@kline_1m``)
``/market/stream?streams=a/b``, ``/stream?…``      combined: ``{"stream": name, "data": event}``
=================================================  ==========================================

**listenKey** (REST, API key only, weight 1; :class:`ListenKeys`): ``POST /fapi/v1/listenKey``
returns the account's one active key and extends it to ``ttl_s`` (Binance: 60 min); ``PUT``
extends it or answers -1125 "This listenKey does not exist."; ``DELETE`` closes it. When a
connected key expires the stream sends ``{"e": "listenKeyExpired", …}`` and closes.

**User events**, from the paper engine's order log (``<ns>:paper:<account>:orderlog``), in
its order, ``E``/``T`` in milliseconds of the market clock (the server clock, like every time the
emulator answers: the market time the entry was logged at; mark, kline and listenKeyExpired
events carry the server clock when sent; see "One clock" in :mod:`harvest.venues.sim.emulator`):

* a fill (harvest's MARKET close, a strategy's opening) → ``ORDER_TRADE_UPDATE`` (``x`` TRADE,
  ``X`` FILLED or EXPIRED for a partial fill) then ``ACCOUNT_UPDATE`` (``m`` ORDER, the
  symbol's position after it: ``pa``, ``ep``, ``up``);
* a stop placed / cancelled / expired → ``ALGO_UPDATE`` ``X`` NEW / CANCELED / EXPIRED;
* a stop triggered → ``ALGO_UPDATE`` TRIGGERING, ``ALGO_UPDATE`` TRIGGERED (``ai`` the actual
  order's id), ``ORDER_TRADE_UPDATE`` ``x`` NEW of that actual order (``o`` MARKET, ``ot``
  STOP_MARKET, ``c`` the clientAlgoId); then per fill ``ORDER_TRADE_UPDATE`` ``x`` TRADE (``X``
  PARTIALLY_FILLED, or FILLED for the last; ``i`` the actual orderId, ``t`` the trade id)
  and ``ACCOUNT_UPDATE``; then ``ALGO_UPDATE`` FINISHED (``ai``, ``ap``, ``aq``). Binance's
  order ("Event: Algo Order Update": TRIGGERING — forwarded to the matching engine,
  TRIGGERED — placed there, FINISHED — filled or cancelled there). A fill of a thin bar's
  remainder comes with a later settlement, FINISHED after it.

The position in an ``ACCOUNT_UPDATE`` is read when the event is sent, so it may already include
a later change: the dangerous reading (a client must take the REST position as the truth
after any gap, never add up deltas). Funding settled → ``ACCOUNT_UPDATE`` ``m`` FUNDING_FEE with
the USDT balance change ``bc`` and, as for a cross-margin position, no position named (the
dangerous reading: which position paid must come from REST ``income``).

**Market events**: ``markPriceUpdate`` every second per subscribed symbol (``p`` the paper
engine's mark, ``r`` the funding rate in force, ``T`` the next funding time); ``kline`` of
``<symbol>@kline_1m``: each 1m bar of the replay once it has closed by market time (``x``
true; a new connection gets the last :data:`KLINE_CATCH_UP`), no updates of the open bar.

**Settlement**: while a user stream is connected, the server settles that account's paper
engine (stops, liquidations, funding) every ``tick_s`` wall seconds at most, as the exchange
would without a REST poll; a stop that triggers is pushed without anybody asking. Many
accounts: one reader tails every streamed account's order log (one blocking XREAD), and the
settlement runs apart from the mark ticks.

**Faults** (:data:`STREAM_FAULT_KINDS`, armed with :meth:`StreamServer.inject`, each fires once
per ``times``): ``drop`` closes every connection of a kind (``user`` or ``market``) without a
close frame's courtesy; ``expire`` expires the listenKey now; ``delay`` holds the next user
events for ``latency_s``; ``reorder`` swaps the next two user events; ``gap`` drops the next
user event silently (only a REST resync can close it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import redis
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from harvest.data import SymbolFilters, load_klines
from harvest.venues.sim.emulator_answers import _algo
from harvest.venues.sim.emulator_types import (
    LISTEN_KEY_TTL_S,
    EmulatedAccount,
    ListenKeyMissing,
    ListenKeys,
    StreamHost,
)
from harvest.venues.sim.paper import PaperVenue

__all__ = ["LISTEN_KEY_TTL_S", "STREAM_FAULT_KINDS", "ListenKeyMissing", "ListenKeys", "StreamServer"]

log = logging.getLogger("harvest.emulator.streams")

STREAM_FAULT_KINDS = ("drop", "expire", "delay", "reorder", "gap", "malformed")


class StreamServer:
    """The websocket side of one emulator (see module docstring). ``start()`` serves on
    127.0.0.1 (``port`` 0: any free port) in a daemon thread with its own event loop; ``url``
    is the value for python-binance's ``BinanceSocketManager.FSTREAM_URL``."""

    def __init__(self, emu: StreamHost, host: str = "127.0.0.1", port: int = 0, tick_s: float = 1.0):
        self.emu, self.host, self._port, self.tick_s = emu, host, port, tick_s
        self.k_faults = f"{emu.ns}:emu:stream_faults"
        # The order log is tailed with XREAD BLOCK on a pool of its own: the emulator's client
        # may hold one connection for all its threads (harvest's runtime client does), and a
        # blocking read on it would hold up every other command for the block's length.
        kw = dict(emu.r.connection_pool.connection_kwargs)
        self._tail = redis.Redis(connection_pool=emu.r.connection_pool.__class__(**kw))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._users: dict[ServerConnection, tuple[str, EmulatedAccount]] = {}  # → (listenKey, account)
        self._queues: dict[ServerConnection, asyncio.Queue] = {}  # a user connection's events to send
        self._last: dict[str, str] = {}  # account → the last order-log entry read (accounts streamed)
        self._markets: dict[ServerConnection, tuple[list[str], bool]] = {}  # → (streams, combined)
        self._bars_sent: dict[tuple[ServerConnection, str], int] = {}  # kline stream → last bar sent (open ms)
        self.sent = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``ws://<host>:<port>/`` (127.0.0.1 when serving on every address): python-binance's
        ``FSTREAM_URL`` on this machine."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"ws://{host}:{self._port}/"

    @property
    def user_connections(self) -> int:
        """How many user data streams are connected now."""
        return len(self._users)

    def start(self) -> StreamServer:
        """Serve in a daemon thread; returns self once listening."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="fapi-streams", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the emulator's stream server did not start")
        return self

    def stop(self) -> None:
        """Close every connection and stop serving."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def inject(self, kind: str, times: int = 1, latency_s: float = 0.0, target: str = "user") -> None:
        """Arm a stream fault (:data:`STREAM_FAULT_KINDS`); ``target``: ``user`` or ``market``
        (``drop`` only). Raises ValueError for an unknown kind or target."""
        if kind not in STREAM_FAULT_KINDS or target not in ("user", "market"):
            raise ValueError(f"unknown stream fault {kind!r}/{target!r}; kinds {STREAM_FAULT_KINDS}")
        self.emu.r.hset(self.k_faults, f"{target}:{kind}", json.dumps({"times": int(times), "latency_s": latency_s}))

    def _take(self, target: str, kind: str) -> dict | None:
        field = f"{target}:{kind}"
        raw = cast(str | None, self.emu.r.hget(self.k_faults, field))
        if raw is None:
            return None
        d = json.loads(raw)
        if d["times"] <= 1:
            self.emu.r.hdel(self.k_faults, field)
        else:
            self.emu.r.hset(self.k_faults, field, json.dumps(dict(d, times=d["times"] - 1)))
        self.emu.r.hincrby(f"{self.emu.ns}:emu:faults_fired", f"stream_{kind}", 1)
        return d

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._serve, self.host, self._port, process_request=self._check, compression=None) as server:
            self._port = server.sockets[0].getsockname()[1] if self._port == 0 else self._port
            self._ready.set()
            tasks = [asyncio.create_task(c) for c in (self._ticker(), self._tailer(), self._settler())]
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            server.close()

    # ------------------------------------------------------------------ connections

    @staticmethod
    def _route(path: str) -> tuple[str, list[str], bool] | None:
        """(kind, names, combined) of a request path; None when it is not a stream path."""
        parts = urlsplit(path)
        p = parts.path.rstrip("/")
        for prefix in ("/private", "/market", "/public"):
            if p.startswith(prefix + "/") or p == prefix:
                p = p[len(prefix) :]
                break
        q = parse_qs(parts.query)
        if p == "/ws" and "listenKey" in q:
            return "user", [q["listenKey"][0]], False
        if p == "/stream" and "streams" in q:
            return "market", [s for s in q["streams"][0].split("/") if s], True
        if p.startswith("/ws/"):
            name = p[len("/ws/") :]
            return ("market", [name], False) if "@" in name else ("user", [name], False)
        return None

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        route = self._route(request.path)
        if route is None:
            return conn.respond(404, "unknown stream path\n")
        kind, names, _ = route
        if kind == "user" and self._owner(names[0]) is None:
            return conn.respond(400, "invalid listenKey\n")
        if kind == "market" and not all(_market_stream(n) or _kline_stream(n) for n in names):
            return conn.respond(400, "unknown market stream\n")
        return None

    async def _serve(self, conn: ServerConnection) -> None:
        route = self._route(conn.request.path if conn.request else "")
        assert route is not None  # _check refused the others
        kind, names, combined = route
        if kind == "user":
            acct = self._owner(names[0])
            if acct is None:  # expired between the handshake and now
                return
            self._users[conn] = (names[0], acct)
            try:
                await self._user(conn, acct)
            finally:
                self._users.pop(conn, None)
        else:
            self._markets[conn] = (names, combined)
            try:
                await conn.wait_closed()
            finally:
                self._markets.pop(conn, None)
                for key in [k for k in self._bars_sent if k[0] is conn]:
                    del self._bars_sent[key]

    def _owner(self, key: str) -> EmulatedAccount | None:
        """The account whose live listenKey ``key`` is (None: no account's)."""
        return next((a for a in list(self.emu.accounts.values()) if a.listen_keys.valid(key)), None)

    async def _user(self, conn: ServerConnection, acct: EmulatedAccount) -> None:
        """Send the account's events from now on (read by :meth:`_tailer`), in order, with the
        user-stream faults; events of a time without a connection are never replayed."""
        if not any(a.name == acct.name for c, (_, a) in self._users.items() if c is not conn):
            self._last[acct.name] = await asyncio.to_thread(self._log_tip, acct.venue)
        q: asyncio.Queue = asyncio.Queue()
        self._queues[conn] = q
        try:
            while True:
                try:
                    batch = await asyncio.wait_for(q.get(), 0.5)
                except asyncio.TimeoutError:
                    if conn.state.name in ("CLOSING", "CLOSED"):
                        return
                    continue
                if self._take("user", "gap"):
                    batch = []
                if self._take("user", "malformed"):
                    bad = {"s": "BTCUSDT", "pa": "NaN", "ep": "1", "ps": "BOTH"}
                    batch.insert(0, {"e": "ACCOUNT_UPDATE", "E": self.emu.server_ms(), "a": {"m": "ORDER", "P": [bad]}})
                if len(batch) >= 2 and self._take("user", "reorder"):
                    batch[0], batch[1] = batch[1], batch[0]
                delay = self._take("user", "delay")
                if delay:
                    await asyncio.sleep(delay["latency_s"])
                for ev in batch:
                    try:
                        await conn.send(json.dumps(ev))
                        self.sent += 1
                    except ConnectionClosed:
                        return
        finally:
            self._queues.pop(conn, None)
            if not any(a.name == acct.name for c, (_, a) in self._users.items() if c is not conn):
                self._last.pop(acct.name, None)

    async def _tailer(self) -> None:
        """Tail the order logs of every account with a user connection in one blocking XREAD
        (one reader for any number of accounts) and queue each entry's events for the
        account's connections."""
        while True:
            try:
                accts = {a.name: a for _, a in list(self._users.values()) if a.name in self._last}
                if not accts:
                    await asyncio.sleep(0.05)
                    continue
                by_key = {a.venue.k_log: a for a in accts.values()}
                after: dict[Any, Any] = {k: self._last[a.name] for k, a in by_key.items()}
                got = cast(list[Any], await asyncio.to_thread(self._tail.xread, after, count=100, block=200))
                for key, rows in got or []:
                    acct = by_key[key]
                    if acct.name not in self._last:
                        continue  # its last connection went meanwhile
                    self._last[acct.name] = rows[-1][0]
                    events = await asyncio.to_thread(self._events_of_rows, acct.venue, rows)
                    if events:
                        for conn, (_, a) in list(self._users.items()):
                            if a.name == acct.name and conn in self._queues:
                                self._queues[conn].put_nowait(list(events))
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed read must not end the streams
                log.exception("order-log tail failed")
                await asyncio.sleep(0.2)

    async def _settler(self) -> None:
        """Settle the paper engine of every account with a user connection (stops trigger,
        liquidations, funding: pushed without a REST poll), one pass every ``tick_s`` at most,
        apart from the mark ticks (many accounts must not hold the mark prices back)."""
        while True:
            await asyncio.sleep(self.tick_s)
            venues = list({a.name: a.venue for _, a in list(self._users.values())}.values())
            if venues:
                try:
                    await asyncio.to_thread(_settle, venues)
                except Exception:
                    log.exception("stream settlement failed")

    def _events_of_rows(self, venue: PaperVenue, rows: list[Any]) -> list[dict[str, Any]]:
        """The events of order-log ``rows`` (``[(id, fields), …]``) of ``venue``'s account."""
        return [ev for _, f in rows for ev in self._events_of(venue, f)]

    def _log_tip(self, venue: PaperVenue) -> str:
        last = cast(list[Any], self.emu.r.xrevrange(venue.k_log, count=1))
        return last[0][0] if last else "0-0"

    # ------------------------------------------------------------------ events

    def _events_of(self, venue: PaperVenue, f: dict) -> list[dict]:
        """The user-stream events of one order-log entry (none for HTTP and REJECT)."""
        kind, sym = f.get("kind"), f.get("symbol", "")
        try:
            d = json.loads(f.get("data") or "{}")
        except ValueError:
            return []
        # E and T: the market time the entry was logged at (the server clock, as every time the
        # emulator answers; the entry's "ts" is wall time, for the order log's readers).
        now = int(float(f.get("market_ts") or self.emu.clock.now()) * 1000)
        if kind in ("FILL", "OPEN"):
            side = d.get("side")
            side = side if side in ("BUY", "SELL") else ("BUY" if side == "LONG" else "SELL")
            return [
                self._trade(sym, d.get("clientOrderId") or f"open-{now}", side, d, "MARKET", now),
                self._account(venue, sym, now),
            ]
        if kind == "FUNDING":  # the cross-margin reading: the balance change, no position named
            return [
                {
                    "e": "ACCOUNT_UPDATE",
                    "E": now,
                    "T": now,
                    "a": {
                        "m": "FUNDING_FEE",
                        "B": [{"a": "USDT", "wb": "0", "cw": "0", "bc": str(d.get("income") or 0)}],
                        "P": [],
                    },
                }
            ]
        if kind in ("STOP_NEW", "STOP_CANCELED", "STOP_EXPIRED"):
            status = {"STOP_NEW": "NEW", "STOP_CANCELED": "CANCELED", "STOP_EXPIRED": "EXPIRED"}[kind]
            return [_algo(sym, d.get("clientAlgoId", ""), status, d.get("stopPrice", "0"), now, S=d.get("side") or "")]
        if kind == "STOP_TRIGGERED":
            cid, stop, oid = d.get("clientAlgoId", ""), d.get("stopPrice", "0"), int(d.get("orderId") or 0)
            extra = {
                "aid": int(d.get("algoId") or 0),
                "ai": str(oid),
                "wt": d.get("workingType") or "MARK_PRICE",
                "S": d.get("orderSide") or "",
            }
            new = {"qty": d.get("qty"), "price": "0", "orderId": oid, "status": "NEW", "exec": "NEW", "cum": "0"}
            return [
                _algo(sym, cid, "TRIGGERING", stop, now, **dict(extra, ai="")),
                _algo(sym, cid, "TRIGGERED", stop, now, **extra, tt=now),
                self._trade(sym, cid, d.get("orderSide") or "SELL", new, "STOP_MARKET", now),
            ]
        if kind == "STOP_FILL":
            fill = {
                "qty": d.get("qty"),
                "price": d.get("price"),
                "avg": d.get("avgPrice"),
                "cum": d.get("cumQty"),
                "origQty": d.get("origQty"),
                "realizedPnl": d.get("realizedPnl"),
                "commission": d.get("commission"),
                "orderId": d.get("orderId"),
                "tradeId": d.get("tradeId"),
                "status": d.get("status"),
                "ps": d.get("positionSide"),
            }
            return [
                self._trade(sym, d.get("clientOrderId", ""), d.get("side") or "SELL", fill, "STOP_MARKET", now),
                self._account(venue, sym, now),
            ]
        if kind == "STOP_FINISHED":
            return [
                _algo(
                    sym,
                    d.get("clientAlgoId", ""),
                    "FINISHED",
                    d.get("stopPrice", "0"),
                    now,
                    aid=int(d.get("algoId") or 0),
                    ai=str(d.get("orderId") or ""),
                    ap=SymbolFilters.fmt_float(float(d.get("avgPrice") or 0.0)),
                    aq=SymbolFilters.fmt_float(float(d.get("executedQty") or 0.0)),
                )
            ]
        return []

    def _trade(self, sym: str, cid: str, side: str, d: dict, orig_type: str, now: int) -> dict:
        """An ``ORDER_TRADE_UPDATE`` from an order-log entry's data: a fill (``qty``, ``price``;
        optional ``avg``/``cum``/``origQty`` of the order so far, ``status``, ``tradeId``) or,
        with ``exec`` NEW, the order's acceptance (nothing filled)."""
        qty, price = str(d.get("qty", "0")), str(d.get("price", "0"))
        status = d.get("status") or ("EXPIRED" if d.get("expired") else "FILLED")
        new = d.get("exec") == "NEW"
        cum = str(d.get("cum") if d.get("cum") is not None else ("0" if new else qty))
        avg = d.get("avg")
        avg = SymbolFilters.fmt_float(float(avg)) if avg is not None else ("0" if new else price)
        oid = int(d.get("orderId") or 0)
        return {
            "e": "ORDER_TRADE_UPDATE",
            "E": now,
            "T": now,
            "o": {
                "s": sym,
                "c": cid,
                "S": side,
                "o": "MARKET",
                "f": "GTC",
                "q": str(d.get("origQty") or qty),
                "p": "0",
                "ap": avg,
                "sp": "0",
                "x": "NEW" if new else "TRADE",
                "X": status,
                "i": oid,
                "l": "0" if new else qty,
                "z": cum,
                "L": "0" if new else price,
                "n": "0" if new else str(d.get("commission") or 0),
                "N": "USDT",
                "T": now,
                "t": 0 if new else int(d.get("tradeId") or oid),
                "R": orig_type != "MARKET" or bool(d.get("clientOrderId")),
                "ps": d.get("ps") or "BOTH",
                "rp": str(d.get("realizedPnl") or 0),
                "ot": orig_type,
            },
        }

    def _account(self, venue: PaperVenue, sym: str, now: int) -> dict:
        vp = venue.position(sym)
        amt = (vp.qty * vp.side.sign) if vp else 0.0
        entry = vp.entry_price if vp else 0.0
        mark = vp.mark_price if vp else venue.mark_price(sym)
        return {
            "e": "ACCOUNT_UPDATE",
            "E": now,
            "T": now,
            "a": {
                "m": "ORDER",
                "B": [{"a": "USDT", "wb": "0", "cw": "0", "bc": "0"}],
                "P": [
                    {
                        "s": sym,
                        "pa": SymbolFilters.fmt_float(amt),
                        "ep": SymbolFilters.fmt_float(entry),
                        "bep": SymbolFilters.fmt_float(entry),
                        "cr": "0",
                        "up": SymbolFilters.fmt_float((mark - entry) * amt),
                        "mt": "isolated",
                        "iw": "0",
                        "ps": "BOTH",
                    }
                ],
            },
        }

    # ------------------------------------------------------------------ the clock

    async def _ticker(self) -> None:
        """Every ``tick_s``: send mark prices, end streams whose listenKey expired, fire
        ``drop``/``expire`` faults (settlement: :meth:`_settler`)."""
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._tick()
            except Exception:  # a tick that fails must not end the server
                log.exception("stream tick failed")

    async def _tick(self) -> None:
        if self._take("user", "expire"):
            for a in list(self.emu.accounts.values()):
                a.listen_keys.delete()  # as after 60 minutes without a keepalive
        for target, conns in (("user", self._users), ("market", self._markets)):
            if conns and self._take(target, "drop"):
                for c in list(conns):
                    c.transport.abort()  # no close frame: a dropped connection
        if self._users:
            now = self.emu.server_ms()
            for c, (key, acct) in list(self._users.items()):
                if not acct.listen_keys.valid(key):
                    try:
                        await c.send(json.dumps({"e": "listenKeyExpired", "E": now, "listenKey": key}))
                    except ConnectionClosed:
                        pass
                    await c.close(1000, "listenKey expired")
        if self._markets:
            syms = {_market_stream(n) for names, _ in self._markets.values() for n in names}
            marks = await asyncio.to_thread(lambda: {s: self._mark_event(s) for s in syms if s})
            ksyms = {k for names, _ in self._markets.values() for n in names if (k := _kline_stream(n))}
            bars = await asyncio.to_thread(self._closed_bars, ksyms)
            for c, (names, combined) in list(self._markets.items()):
                for n in names:
                    if (ks := _kline_stream(n)) is not None:
                        evs = self._new_bars(c, n, bars.get(ks, []))
                    else:
                        ev = marks.get(_market_stream(n) or "")
                        evs = [ev] if ev is not None else []
                    try:
                        for ev in evs:
                            await c.send(json.dumps({"stream": n, "data": ev} if combined else ev))
                            self.sent += 1
                    except ConnectionClosed:
                        break

    def _closed_bars(self, syms: set[str]) -> dict[str, list[tuple[int, float]]]:
        """The last closed 1m bars of each symbol by market now: ``[(open_ms, close)]``, oldest
        first (at most :data:`KLINE_CATCH_UP` of them)."""
        out: dict[str, list[tuple[int, float]]] = {}
        now = self.emu.clock.now()
        for sym in syms:
            try:
                kl = load_klines(self.emu.venue.source(sym))
                i = kl.index_at(now)  # the bar still open
            except (FileNotFoundError, ValueError):
                continue
            lo = max(0, i - KLINE_CATCH_UP)
            out[sym] = [(int(kl.open_time[j]) * 1000, float(kl.close[j])) for j in range(lo, i)]
        return out

    def _new_bars(self, conn: ServerConnection, name: str, bars: list[tuple[int, float]]) -> list[dict]:
        """``kline`` events (``x`` true) of the closed bars this connection's stream has not had."""
        last = self._bars_sent.get((conn, name), -1)
        fresh = [(t, c) for t, c in bars if t > last]
        if fresh:
            self._bars_sent[(conn, name)] = fresh[-1][0]
        now = self.emu.server_ms()
        sym = _kline_stream(name) or ""
        return [
            {
                "e": "kline",
                "E": now,
                "s": sym,
                "k": {"t": t, "T": t + 59_999, "s": sym, "i": "1m", "c": SymbolFilters.fmt_float(c), "x": True},
            }
            for t, c in fresh
        ]

    def _mark_event(self, sym: str) -> dict:
        now = self.emu.server_ms()
        premium = self.emu._premium(sym)
        return {
            "e": "markPriceUpdate",
            "E": now,
            "s": sym,
            "p": premium["markPrice"],
            "i": premium["indexPrice"],
            "P": premium["estimatedSettlePrice"],
            "r": premium["lastFundingRate"],
            "T": premium["nextFundingTime"],
        }


def _settle(venues: list[PaperVenue]) -> None:
    """Settle each paper engine up to now (its positions read)."""
    for v in venues:
        v.positions()


#: Closed bars a kline stream sends at most when it catches up (a new connection, a jump of the clock).
KLINE_CATCH_UP = 3


def _market_stream(name: str) -> str | None:
    """The symbol of a ``<symbol>@markPrice[@1s]`` stream name (upper case); None otherwise."""
    sym, _, rest = name.partition("@")
    return sym.upper() if sym and rest in ("markPrice", "markPrice@1s") else None


def _kline_stream(name: str) -> str | None:
    """The symbol of a ``<symbol>@kline_1m`` stream name (upper case); None otherwise."""
    sym, _, rest = name.partition("@")
    return sym.upper() if sym and rest == "kline_1m" else None
