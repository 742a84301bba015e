"""What the streams say, in Redis (issue 23): the position cache per account, fills and
algo-order updates, mark prices, and the stream's health. Written by ``harvest streams``
(:mod:`harvest.services.streams`), read by whoever wants exchange truth without REST weight.

Keys (``<ns>`` = settings.namespace, ``<a>`` = account)::

    <ns>:streams:<a>:positions   hash    symbol → {"amt", "entry", "event_ms", "row"} (JSON): row =
                                         the VenuePosition of the last REST read; amt 0 = flat
    <ns>:streams:<a>:health      hash    v (the cache's schema version, harvest.store.records.SCHEMA: a
                                         newer one is not read), synced_ms (last REST resync,
                                         exchange clock), trusted (1/0), dirty (1/0),
                                         why (the last distrust's cause), audited_at (wall s), last_event_ms,
                                         listen_keys (used so far), owner
    <ns>:streams:<a>:orders      hash    "algo:<clientAlgoId>" / "order:<clientOrderId>" → the working order
                                         (harvest.domain.stream_events.open_order_change; JSON with event_ms)
    <ns>:streams:<a>:events      stream  fills and algo-order updates, newest last (capped)
    <ns>:streams:order:<cid>     string  one order's outcome so far, its events folded in
                                         (harvest.domain.stream_events.fold_order; JSON, 1 day;
                                         a clientOrderId names its plan, so no account is needed)
    <ns>:streams:<a>:lease       string  the owner (host:pid) holding the account's streams (PX)
    <ns>:streams:audit_requests  set     accounts a reader asked to have audited now
    <ns>:streams:marks           hash    symbol → {"mark", "funding_rate", "event_ms", "at"} (JSON):
                                         event_ms the event's E (the exchange's clock: orders
                                         the events), at its arrival (wall s: its freshness)
    <ns>:streams:klines:<sym>    zset    closed 1m bars: member "<open_ms>:<close>", score open_ms
                                         (the last KLINES_KEPT; from kline streams and REST reads)

Streams are the truth, REST the audit (issue 32). The rows start as REST snapshots
(positionRisk with its stop, leverage, liquidation price, opening time and funding, as
:meth:`harvest.venues.base.Venue.positions` reads them) and the open orders as
``openOrders`` + ``openAlgoOrders`` read them, both stamped with the time the read started on
the exchange's clock (the replay's market clock on the emulator, wall time on Binance: the
clock of the events' E). From then on the user data stream is folded in with no REST read:

* ``ACCOUNT_UPDATE`` → :func:`harvest.domain.stream_events.fold_position`: a partial close or
  an addition moves the row's quantity and entry; a close makes it flat; an opening or a flip
  leaves the row without its REST fields (``row``) until the streams process has read that
  one symbol from REST (:meth:`StreamCache.resync_symbol`: leverage, liquidation price,
  opening time and funding are not in the event);
* ``ORDER_TRADE_UPDATE`` / ``ALGO_UPDATE`` → the order's folded outcome (confirm reads it)
  and the open-orders hash (:func:`harvest.domain.stream_events.open_order_change`); a
  position's stop is the working closePosition stop of that hash
  (:func:`harvest.domain.stream_events.working_stop`), as REST picks it;
* ``ACCOUNT_CONFIG_UPDATE`` → the row's leverage.

What the stream never says stands from the last REST read: the liquidation price (it moves
with the margin and, cross, with every other position: harvest does not recompute it; the
audit refreshes it, :meth:`StreamCache.refresh`) and the funding paid (a FUNDING_FEE event
marks the cache dirty and the streams process reads REST again).

An update applies only when its event time is not older than the one stored for its key
(:func:`harvest.domain.stream_events.is_newer`); the streams process holding the account's
lease is the only writer. :meth:`StreamCache.snapshot` and :meth:`StreamCache.view` serve
the rows, with the streamed mark price, only while the cache is trusted (resynced since the
last gap or audit disagreement), clean, its writer alive and its marks fresh (arrived within
the age, on the wall clock); otherwise None, and the reader uses REST.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import redis

from harvest.domain.models import VenuePosition
from harvest.domain.stream_events import (
    AlgoUpdate,
    AuditPosition,
    LeverageUpdate,
    MarkPrice,
    PositionUpdate,
    TradeUpdate,
    fold_order,
    fold_position,
    open_order_change,
    order_key_of,
    working_stop,
)
from harvest.store.connect import sync
from harvest.store.records import SCHEMA, check_version

EVENTS_MAXLEN = 10_000
#: How long an order's folded outcome is kept (s): confirm reads it within a plan's TTL.
ORDER_TTL_S = 86_400

#: KEYS[1] positions hash; ARGV: symbol, row JSON, event_ms → 1 applied, 0 older than stored
_APPLY = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local cur = cjson.decode(raw)
  if tonumber(cur['event_ms']) > tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: Closed 1m bars kept per symbol (Binance's klines endpoint gives at most 1500).
KLINES_KEPT = 1500
BAR_MS = 60_000


#: A ``harvest streams`` heartbeat at most this old (s) means events may still come.
STREAMS_ALIVE_S = 5.0


def order_key(ns: str, client_order_id: str) -> str:
    """The key of an order's folded stream events (module docstring)."""
    return f"{ns}:streams:order:{client_order_id}"


def streamed_order_reads(p: Any, ns: str, client_order_id: str) -> None:
    """Queue on pipeline ``p`` the reads :func:`streamed_order_of` takes: the order's folded
    events and the ``streams`` heartbeat (two replies)."""
    p.get(order_key(ns, client_order_id))
    p.hget(f"{ns}:heartbeat", "streams")


def streamed_order_of(raw: str | None, beat: str | None, now: float | None = None) -> tuple[dict | None, bool]:
    """From the replies of :func:`streamed_order_reads`: the order's outcome as its stream
    events told it (:func:`harvest.domain.stream_events.fold_order`; None when none came) and
    whether a ``harvest streams`` process is alive (heartbeat within :data:`STREAMS_ALIVE_S`),
    so that events may still come."""
    now = time.time() if now is None else now
    alive = beat is not None and now - float(beat) <= STREAMS_ALIVE_S
    return (json.loads(raw) if raw else None), alive


class KlineCache:
    """Closed 1m bars per symbol (see module docstring), shared by every account: written by
    ``harvest streams`` from ``<symbol>@kline_1m`` and by the market refresh from its REST
    reads; read by the market refresh, which then needs no REST read."""

    def __init__(self, r: redis.Redis, ns: str):
        self.r, self.ns = r, ns

    def key(self, symbol: str) -> str:
        return f"{self.ns}:streams:klines:{symbol}"

    def put(self, symbol: str, bars: list[tuple[int, float]]) -> None:
        """Store closed bars ``[(open_ms, close USDT)]`` (a bar already stored is kept once)."""
        if not bars:
            return
        k = self.key(symbol)
        p = self.r.pipeline(transaction=False)
        p.zremrangebyscore(k, min(t for t, _ in bars), max(t for t, _ in bars))  # a bar stored again replaces
        p.zadd(k, {f"{t}:{c!r}": t for t, c in bars})
        p.zremrangebyrank(k, 0, -KLINES_KEPT - 1)
        p.execute()

    def closes(self, symbol: str, n: int, last_open_ms: int) -> np.ndarray | None:
        """The closes (USDT, shape (n,), oldest first) of the ``n`` bars up to the one opened at
        ``last_open_ms``, when every one of them is stored (no gap); None otherwise."""
        rows = sync(
            self.r.zrangebyscore(self.key(symbol), last_open_ms - (n - 1) * BAR_MS, last_open_ms, withscores=True)
        )
        if len(rows) != n or int(rows[-1][1]) != last_open_ms or int(rows[0][1]) != last_open_ms - (n - 1) * BAR_MS:
            return None
        return np.array([float(m.split(":", 1)[1]) for m, _ in rows], dtype=np.float64)


def audit_requests_key(ns: str) -> str:
    """The set of accounts whose stream cache a reader asked to have audited now
    (:meth:`StreamCache.request_audit`; taken by the ``harvest streams`` process holding them)."""
    return f"{ns}:streams:audit_requests"


class StreamCache:
    """The stream-fed state of one account (see module docstring). ``r``: decode_responses."""

    def __init__(self, r: redis.Redis, ns: str, account: str):
        self.r, self.ns, self.account = r, ns, account
        base = f"{ns}:streams:{account}"
        self.k_positions, self.k_health, self.k_events = f"{base}:positions", f"{base}:health", f"{base}:events"
        self.k_lease, self.k_orders = f"{base}:lease", f"{base}:orders"
        self.k_marks = f"{ns}:streams:marks"
        self.k_counters = f"{ns}:counters"
        self.refused: str | None = None  # why the last view() could not stand in for REST
        self._apply = r.register_script(_APPLY)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    # ------------------------------------------------------------------ the lease

    def acquire(self, owner: str, ttl_s: float) -> bool:
        """Take the account's lease when nobody holds it (or ``owner`` already does)."""
        return bool(self.r.set(self.k_lease, owner, nx=True, px=int(ttl_s * 1000))) or self.renew(owner, ttl_s)

    def renew(self, owner: str, ttl_s: float) -> bool:
        """Extend the lease if ``owner`` still holds it; False when it was lost."""
        return bool(self._renew(keys=[self.k_lease], args=[owner, int(ttl_s * 1000)]))

    def renew_in(self, pipe: Any, owner: str, ttl_s: float) -> None:
        """Queue :meth:`renew` on ``pipe`` (a redis-py pipeline; its reply: 1 renewed, 0 lost)."""
        self._renew(keys=[self.k_lease], args=[owner, int(ttl_s * 1000)], client=pipe)

    def release(self, owner: str) -> None:
        """Give the lease up (only if ``owner`` holds it)."""
        self._release(keys=[self.k_lease], args=[owner])

    def lease_owner(self) -> str | None:
        return sync(self.r.get(self.k_lease))

    # ------------------------------------------------------------------ writers

    def resync(
        self, vps: list[VenuePosition], started_ms: int, clean: bool = True, orders: list[Any] | None = None
    ) -> None:
        """Replace the cache with REST truth: ``vps`` the open positions as the venue read
        them; ``orders`` the working orders (``OrderResult``s of ``openOrders`` and
        ``openAlgoOrders``; None: the open-orders hash is left as it is); ``started_ms``: when
        that read started. Marks the cache trusted and, with ``clean``, not dirty (the caller
        saw no change while it read)."""
        p = self.r.pipeline(transaction=True)
        p.delete(self.k_positions)
        for vp in vps:
            p.hset(self.k_positions, vp.symbol, json.dumps(_row(vp, started_ms)))
        if orders is not None:
            p.delete(self.k_orders)
            for o in orders:
                p.hset(self.k_orders, order_key_of(o.client_order_id, o.algo), json.dumps(_order_entry(o, started_ms)))
        health = {"synced_ms": started_ms, "trusted": 1, "v": SCHEMA["stream"], **({"dirty": 0} if clean else {})}
        p.hset(self.k_health, mapping=health)
        p.hincrby(self.k_counters, "streams:resyncs", 1)
        p.execute()

    def resync_symbol(self, symbol: str, vp: VenuePosition | None, started_ms: int) -> bool:
        """One symbol's row from a REST read of that symbol (``vp``; None: flat) that started at
        ``started_ms``, unless a stream event newer than the read is stored (then the next
        event or audit settles it). Counted ``streams:symbol_reads``. Returns whether it
        applied."""
        raw = sync(self.r.hget(self.k_positions, symbol))
        if raw is not None and int(json.loads(raw)["event_ms"]) > started_ms:
            return False
        row = _row(vp, started_ms) if vp is not None else {"amt": 0.0, "entry": 0.0, "event_ms": started_ms}
        p = self.r.pipeline(transaction=True)
        p.hset(self.k_positions, symbol, json.dumps(row))
        p.hincrby(self.k_counters, "streams:symbol_reads", 1)
        p.execute()
        return True

    def add_orders(self, orders: list[Any], started_ms: int) -> int:
        """Working orders (``OrderResult``) a discovering read that started at ``started_ms``
        found on symbols the cache did not know: each added unless its key is already there (a
        stream event is newer). Counted ``streams:discovered``. Returns how many were added."""
        if not orders:
            return 0
        p = self.r.pipeline(transaction=True)
        for o in orders:
            p.hsetnx(self.k_orders, order_key_of(o.client_order_id, o.algo), json.dumps(_order_entry(o, started_ms)))
        added = sum(int(x) for x in p.execute())
        if added:
            self.r.hincrby(self.k_counters, "streams:discovered", added)
        return added

    def request_audit(self) -> None:
        """Ask the ``harvest streams`` process holding this account to audit it now (one SADD):
        a reader found the exchange disagreeing with what a plan was made from (the guard's
        ``ghost_position``, ``side_mismatch``, ``epoch_changed``). Taken within a second by
        :class:`harvest.services.stream_loop.LeaseKeeper`; an account nobody holds is left in
        the set, harmless (it has no cache to audit)."""
        self.r.sadd(audit_requests_key(self.ns), self.account)

    def mark_dirty(self) -> None:
        """A change the rows cannot show from the stream (a funding settlement: which position
        paid is REST's): readers use REST until the next resync."""
        self.r.hset(self.k_health, "dirty", "1")

    def distrust(self, why: str) -> None:
        """A gap (dropped connection, expired listenKey, silence) or an audit disagreement:
        readers fall back to REST until the next resync. ``why`` is counted
        (``streams:gap:<why>``) and kept (health ``why``)."""
        p = self.r.pipeline(transaction=True)
        p.hset(self.k_health, mapping={"trusted": 0, "why": why})
        p.hincrby(self.k_counters, f"streams:gap:{why}", 1)
        p.execute()

    def apply_position(self, ev: PositionUpdate) -> tuple[bool, bool]:
        """Fold one position update into its row (:func:`harvest.domain.stream_events.fold_position`)
        unless an event or read newer than it is stored (counted ``streams:out_of_order``).
        Returns ``(applied, rest_needed)``: whether it applied and whether the symbol must be
        read from REST (:meth:`resync_symbol`; until then the cache serves no snapshot)."""
        raw = sync(self.r.hget(self.k_positions, ev.symbol))
        cur = json.loads(raw) if raw else None
        p = self.r.pipeline(transaction=False)
        p.hset(self.k_health, "last_event_ms", str(ev.event_ms))
        if cur is not None and int(cur["event_ms"]) > ev.event_ms:
            p.hincrby(self.k_counters, "streams:out_of_order", 1)
            p.execute()
            return False, False
        row, needed = fold_position(cur, ev)
        p.hset(self.k_positions, ev.symbol, json.dumps(row))
        p.execute()
        return True, needed

    def apply_leverage(self, ev: LeverageUpdate) -> None:
        """A symbol's new leverage into its row (a row without REST fields is left as is)."""
        raw = sync(self.r.hget(self.k_positions, ev.symbol))
        cur = json.loads(raw) if raw else None
        if cur is not None and "row" in cur:
            cur["row"]["leverage"] = ev.leverage
            self.r.hset(self.k_positions, ev.symbol, json.dumps(cur))

    def k_order(self, client_order_id: str) -> str:
        return order_key(self.ns, client_order_id)

    def record(self, ev: TradeUpdate | AlgoUpdate) -> None:
        """Append a fill or algo-order update to the account's events stream (capped), fold it
        into its order's outcome (:func:`harvest.domain.stream_events.fold_order`) and into the
        open-orders hash (:func:`harvest.domain.stream_events.open_order_change`; an event
        older than the order's last one changes no open order). The account's lease makes
        this process the only writer, so the read and the write need no transaction."""
        key = self.k_order(ev.client_id)
        raw = sync(self.r.get(key))
        cur = json.loads(raw) if raw else None
        folded = fold_order(cur, ev)
        fields: dict[Any, Any] = {"v": SCHEMA["stream"], "type": type(ev).__name__, "data": ev.model_dump_json()}
        okey, entry = open_order_change(ev)
        p = self.r.pipeline(transaction=False)
        p.xadd(self.k_events, fields, maxlen=EVENTS_MAXLEN, approximate=True)
        p.set(key, json.dumps(folded), ex=ORDER_TTL_S)
        p.hset(self.k_health, "last_event_ms", str(ev.event_ms))
        if cur is None or int(cur.get("event_ms", 0)) <= ev.event_ms:
            if entry is None:
                p.hdel(self.k_orders, okey)
            else:
                p.hset(self.k_orders, okey, json.dumps(entry))
        p.execute()

    def order(self, client_order_id: str) -> tuple[dict | None, bool]:
        """:func:`streamed_order_reads` and :func:`streamed_order_of` in one round trip."""
        p = self.r.pipeline(transaction=False)
        streamed_order_reads(p, self.ns, client_order_id)
        return streamed_order_of(*p.execute())

    def put_mark(self, ev: MarkPrice, at: float | None = None) -> None:
        """Store a mark price (newer than the stored one by its ``E``, the exchange's clock: a
        reordered event is dropped) with ``at``, its arrival (wall s, default now): its age is
        measured from arrival on this machine's clock, never by comparing the exchange's ``E``
        with wall time (on the emulator ``E`` is the replay's market time)."""
        at = time.time() if at is None else at
        row = json.dumps({"mark": ev.mark, "funding_rate": ev.funding_rate, "event_ms": ev.event_ms, "at": at})
        self._apply(keys=[self.k_marks], args=[ev.symbol, row, ev.event_ms])

    def count(self, name: str, n: int = 1) -> None:
        """Add to counter ``streams:<name>`` (malformed, unknown_symbol …)."""
        self.r.hincrby(self.k_counters, f"streams:{name}", n)

    def note(self, **fields: str | int | float) -> None:
        """Set health fields (owner, listen_keys …)."""
        self.r.hset(self.k_health, mapping=fields)

    # ------------------------------------------------------------------ readers

    def health(self) -> dict[str, str]:
        return sync(self.r.hgetall(self.k_health))

    def trusted(self) -> bool:
        """Whether the position cache holds exchange truth (resynced since the last gap)."""
        return sync(self.r.hget(self.k_health, "trusted")) == "1"

    def positions(self) -> dict[str, dict] | None:
        """Open positions (symbol → {"amt", "entry", "event_ms"}; flat ones left out) when the
        cache is trusted; None when it is not (read positionRisk instead)."""
        p = self.r.pipeline(transaction=True)
        p.hmget(self.k_health, ["trusted", "v"])
        p.hgetall(self.k_positions)
        (trusted, v), rows = p.execute()
        if trusted != "1" or not _readable(v):
            return None
        out = {s: json.loads(v) for s, v in rows.items()}
        return {s: v for s, v in out.items() if v["amt"] != 0}

    def count_fallback(self, counters: Any) -> None:
        """After a :meth:`view` that could not stand in for REST: count why
        (``streams:fallback:<why>`` on ``counters``, a :class:`harvest.store.health.CounterStore`),
        unless no ``harvest streams`` ever held the account (``absent``: REST is its only way)."""
        if self.refused not in (None, "absent"):
            counters.count(f"streams:fallback:{self.refused}")

    def snapshot(
        self, max_mark_age_s: float, max_beat_age_s: float, now: float | None = None
    ) -> list[VenuePosition] | None:
        """The open positions, each with the streamed mark price, when the cache may stand in
        for positionRisk (:meth:`view`); None otherwise (read REST)."""
        v = self.view(max_mark_age_s, max_beat_age_s, now)
        return None if v is None else v[0]

    def view(
        self, max_mark_age_s: float, max_beat_age_s: float, now: float | None = None
    ) -> tuple[list[VenuePosition], list[dict[str, Any]]] | None:
        """The open positions (each with the streamed mark price and the working stop of the
        open-orders hash) and the working orders (entries of
        :func:`harvest.domain.stream_events.open_order_change`), read in one transaction,
        when the cache may stand in for REST: trusted, not dirty, the ``streams`` heartbeat at
        most ``max_beat_age_s`` old, every open row read from REST once (an opening's row
        waits for its symbol's read) and every such position's mark at most
        ``max_mark_age_s`` old (wall s since it arrived: :meth:`put_mark`). None otherwise
        (read REST), and :attr:`refused` says why (:func:`_refusal`; ``row``: an open row not
        yet read from REST; ``mark``: a position's mark missing or older; None: it was usable)."""
        now = time.time() if now is None else now
        p = self.r.pipeline(transaction=True)
        p.hmget(self.k_health, ["trusted", "dirty", "v"])
        p.hget(f"{self.ns}:heartbeat", "streams")
        p.hgetall(self.k_positions)
        p.hgetall(self.k_marks)
        p.hgetall(self.k_orders)
        (trusted, dirty, v), beat, rows, marks, raw_orders = p.execute()
        self.refused = _refusal(trusted, dirty, v, beat, now, max_beat_age_s)
        if self.refused is not None:
            return None
        orders = [json.loads(v) for _, v in sorted(raw_orders.items())]
        out = []
        for sym, raw in sorted(rows.items()):
            d = json.loads(raw)
            if d["amt"] == 0:
                continue
            m = json.loads(marks[sym]) if sym in marks else None
            if "row" not in d or m is None or now - float(m.get("at", 0.0)) > max_mark_age_s:
                self.refused = "row" if "row" not in d else "mark"
                return None
            stop = working_stop(orders, sym, 1 if d["amt"] > 0 else -1)
            out.append(VenuePosition.model_validate(dict(d["row"], mark_price=m["mark"], stop_price=stop)))
        return out, orders

    # ------------------------------------------------------------------ the audit

    def audit_view(self, started_ms: int) -> tuple[dict[str, AuditPosition], set[str], set[str]]:
        """What an audit compares (:func:`harvest.domain.stream_events.audit_differences`):
        the cached open positions (symbol → (signed amount, entry, working stop)), the keys of
        the cached working orders, and the symbols and order keys a stream event touched at or
        after ``started_ms`` (the REST read's start, exchange clock)."""
        p = self.r.pipeline(transaction=True)
        p.hgetall(self.k_positions)
        p.hgetall(self.k_orders)
        rows, raw_orders = p.execute()
        orders = {k: json.loads(v) for k, v in raw_orders.items()}
        entries = list(orders.values())
        cached: dict[str, AuditPosition] = {}
        moved: set[str] = set()
        for sym, raw in rows.items():
            d = json.loads(raw)
            if int(d["event_ms"]) >= started_ms:
                moved.add(sym)
            if d["amt"] != 0:
                sign = 1 if d["amt"] > 0 else -1
                cached[sym] = (float(d["amt"]), float(d["entry"]), working_stop(entries, sym, sign))
        moved |= {k for k, o in orders.items() if int(o.get("event_ms", 0)) >= started_ms}
        return cached, set(orders), moved

    def known_symbols(self) -> set[str]:
        """The symbols of the cached open positions and working orders (what an audit asks
        REST about)."""
        p = self.r.pipeline(transaction=True)
        p.hgetall(self.k_positions)
        p.hvals(self.k_orders)
        rows, orders = p.execute()
        return {s for s, v in rows.items() if json.loads(v)["amt"] != 0} | {json.loads(v)["symbol"] for v in orders}

    def order_moved_since(self, keys: set[str], started_ms: int) -> set[str]:
        """Of open-orders keys (``algo:<id>`` / ``order:<id>``), those whose order had a stream
        event at or after ``started_ms`` (its folded outcome's time)."""
        ordered = sorted(keys)
        if not ordered:
            return set()
        raws = sync(self.r.mget([self.k_order(k.split(":", 1)[1]) for k in ordered]))
        return {
            k for k, raw in zip(ordered, raws, strict=True) if raw and int(json.loads(raw)["event_ms"]) >= started_ms
        }

    def refresh(self, vps: list[VenuePosition], started_ms: int, clean: bool = False) -> int:
        """After an audit that agreed: the REST-only fields (leverage, liquidation price,
        opening time, funding) of every row no stream event touched since ``started_ms`` come
        from ``vps``; with ``clean`` the cache is no longer dirty. Notes ``audited_at`` (wall
        s). Returns the rows refreshed."""
        rows = sync(self.r.hgetall(self.k_positions))
        p = self.r.pipeline(transaction=True)
        n = 0
        for vp in vps:
            raw = rows.get(vp.symbol)
            if raw is not None and int(json.loads(raw)["event_ms"]) < started_ms:
                p.hset(self.k_positions, vp.symbol, json.dumps(_row(vp, started_ms)))
                n += 1
        p.hset(self.k_health, mapping={"audited_at": repr(time.time()), **({"dirty": 0} if clean else {})})
        p.execute()
        return n

    def open_symbols(self) -> set[str]:
        """Symbols with an open position in the cache (trusted or not)."""
        return {s for s, v in sync(self.r.hgetall(self.k_positions)).items() if json.loads(v)["amt"] != 0}

    def marks(self, max_age_s: float | None = None, now: float | None = None) -> dict[str, float]:
        """Mark prices (USDT) by symbol; with ``max_age_s``, only those that arrived at most that
        long ago (wall s, ``now`` default the wall clock; :meth:`put_mark`)."""
        now = time.time() if now is None else now
        out = {}
        for s, v in sync(self.r.hgetall(self.k_marks)).items():
            d = json.loads(v)
            if max_age_s is None or now - float(d.get("at", 0.0)) <= max_age_s:
                out[s] = d["mark"]
        return out

    def events(self, count: int = 100) -> list[dict]:
        """The newest fills and algo-order updates, oldest first (``type`` + the event's fields)."""
        rows = sync(self.r.xrevrange(self.k_events, count=count))
        return [dict(json.loads(f["data"]), type=f["type"]) for _, f in reversed(rows) if _readable(f.get("v"))]


def _refusal(
    trusted: str | None, dirty: str | None, v: str | None, beat: str | None, now: float, max_beat_age_s: float
) -> str | None:
    """Why a stream cache cannot stand in for REST, from its health fields and the ``streams``
    heartbeat: None when it can (so far); ``absent`` when there is no cache at all (no
    ``harvest streams`` has held the account); ``untrusted`` (a gap, a reconnection, a resync
    owed); ``dirty`` (a funding settlement not yet read); ``beat`` (the heartbeat missing or
    older than ``max_beat_age_s``); ``version`` (written by a newer version)."""
    if trusted is None:
        return "absent"
    if trusted != "1":
        return "untrusted"
    if dirty == "1":
        return "dirty"
    if beat is None or now - float(beat) > max_beat_age_s:
        return "beat"
    if not _readable(v):  # a cache a newer version's streams wrote: read REST
        return "version"
    return None


def _readable(v: str | None) -> bool:
    """Whether this version reads a stream record of version ``v`` (as stored; None: written
    before versions, read as before). A cache or an event a newer version's ``harvest streams``
    wrote is not used (its reader falls back to REST, exchange truth) — never misread."""
    try:
        check_version("stream", v)
    except ValueError:
        return False
    return True


def _row(vp: VenuePosition, started_ms: int) -> dict[str, Any]:
    """A cached row from a REST read of ``vp`` that started at ``started_ms``."""
    return {
        "amt": vp.qty * vp.side.sign,
        "entry": vp.entry_price,
        "event_ms": started_ms,
        "row": vp.model_dump(mode="json"),
    }


def _order_entry(o: Any, started_ms: int) -> dict[str, Any]:
    """An open-orders entry (:func:`harvest.domain.stream_events.open_order_change`'s shape)
    from a REST ``OrderResult``."""
    return {
        "symbol": o.symbol,
        "client_order_id": o.client_order_id,
        "order_id": o.order_id,
        "side": o.side,
        "type": o.orig_type or o.type if not o.algo else o.type,
        "status": o.status,
        "algo": o.algo,
        "close_position": o.close_position,
        "stop_price": o.stop_price,
        "event_ms": started_ms,
    }
