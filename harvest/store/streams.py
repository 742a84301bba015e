"""What the streams say, in Redis (issue 23): the position cache per account, fills and
algo-order updates, mark prices, and the stream's health. Written by ``harvest streams``
(:mod:`harvest.services.streams`), read by whoever wants exchange truth without REST weight.

Keys (``<ns>`` = settings.namespace, ``<a>`` = account)::

    <ns>:streams:<a>:positions   hash    symbol → {"amt", "entry", "event_ms", "row"} (JSON): row =
                                         the VenuePosition of the last REST read; amt 0 = flat
    <ns>:streams:<a>:health      hash    synced_ms (last REST resync, exchange clock), trusted (1/0), dirty (1/0),
                                         last_event_ms, listen_keys (used so far), owner
    <ns>:streams:<a>:events      stream  fills and algo-order updates, newest last (capped)
    <ns>:streams:order:<cid>     string  one order's outcome so far, its events folded in
                                         (harvest.domain.stream_events.fold_order; JSON, 1 day;
                                         a clientOrderId names its plan, so no account is needed)
    <ns>:streams:<a>:lease       string  the owner (host:pid) holding the account's streams (PX)
    <ns>:streams:marks           hash    symbol → {"mark", "funding_rate", "event_ms", "at"} (JSON):
                                         event_ms the event's E (the exchange's clock: orders
                                         the events), at its arrival (wall s: its freshness)
    <ns>:streams:klines:<sym>    zset    closed 1m bars: member "<open_ms>:<close>", score open_ms
                                         (the last KLINES_KEPT; from kline streams and REST reads)

The rows are REST snapshots (positionRisk with its stop, leverage, liquidation price, opening
time and funding, as :meth:`harvest.venues.base.Venue.positions` reads them); the user data
stream says *when* they change. A position update applies only when its event time is not older
than the one stored for the symbol (:func:`harvest.domain.stream_events.is_newer`, checked
inside one Lua call) and marks the cache *dirty* until the next resync; a resync replaces the
whole cache and stamps every row with the time its request started on the exchange's clock
(the replay's market clock on the emulator, wall time on Binance: the clock of the events' E),
so an event older than the resync is ignored. :meth:`StreamCache.snapshot` serves the rows,
with the streamed mark price, only while the cache is trusted (resynced since the last gap),
clean, its writer alive and its marks fresh (arrived within the age, on the wall clock);
otherwise None, and the reader uses REST.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import redis

from harvest.domain.models import VenuePosition
from harvest.domain.stream_events import AlgoUpdate, MarkPrice, PositionUpdate, TradeUpdate, fold_order

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
        rows = self.r.zrangebyscore(self.key(symbol), last_open_ms - (n - 1) * BAR_MS, last_open_ms, withscores=True)
        if len(rows) != n or int(rows[-1][1]) != last_open_ms or int(rows[0][1]) != last_open_ms - (n - 1) * BAR_MS:
            return None
        return np.array([float(m.split(":", 1)[1]) for m, _ in rows], dtype=np.float64)


class StreamCache:
    """The stream-fed state of one account (see module docstring). ``r``: decode_responses."""

    def __init__(self, r: redis.Redis, ns: str, account: str):
        self.r, self.ns, self.account = r, ns, account
        base = f"{ns}:streams:{account}"
        self.k_positions, self.k_health, self.k_events = f"{base}:positions", f"{base}:health", f"{base}:events"
        self.k_lease = f"{base}:lease"
        self.k_marks = f"{ns}:streams:marks"
        self.k_counters = f"{ns}:counters"
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

    def release(self, owner: str) -> None:
        """Give the lease up (only if ``owner`` holds it)."""
        self._release(keys=[self.k_lease], args=[owner])

    def lease_owner(self) -> str | None:
        return self.r.get(self.k_lease)

    # ------------------------------------------------------------------ writers

    def resync(self, vps: list[VenuePosition], started_ms: int, clean: bool = True) -> None:
        """Replace the cache with REST truth: ``vps`` the open positions as the venue read
        them; ``started_ms``: when that read started. Marks the cache trusted and, with
        ``clean``, not dirty (the caller saw no change while it read)."""
        p = self.r.pipeline(transaction=True)
        p.delete(self.k_positions)
        for vp in vps:
            row = {"amt": vp.qty * vp.side.sign, "entry": vp.entry_price, "event_ms": started_ms}
            p.hset(self.k_positions, vp.symbol, json.dumps(dict(row, row=vp.model_dump(mode="json"))))
        p.hset(self.k_health, mapping={"synced_ms": started_ms, "trusted": 1, **({"dirty": 0} if clean else {})})
        p.hincrby(self.k_counters, "streams:resyncs", 1)
        p.execute()

    def mark_dirty(self) -> None:
        """A change the rows do not show yet (a fill, a stop placed or cancelled): readers use
        REST until the next resync."""
        self.r.hset(self.k_health, "dirty", 1)

    def distrust(self, why: str) -> None:
        """A gap (dropped connection, expired listenKey, silence): readers fall back to REST
        until the next resync. ``why`` is counted (``streams:gap:<why>``)."""
        p = self.r.pipeline(transaction=True)
        p.hset(self.k_health, "trusted", 0)
        p.hincrby(self.k_counters, f"streams:gap:{why}", 1)
        p.execute()

    def apply_position(self, ev: PositionUpdate) -> bool:
        """Apply one position update unless an event or resync newer than it is stored; counts
        ``streams:out_of_order`` when it is ignored. Returns whether it applied."""
        row = json.dumps({"amt": ev.amt, "entry": ev.entry, "event_ms": ev.event_ms})
        done = bool(self._apply(keys=[self.k_positions], args=[ev.symbol, row, ev.event_ms]))
        p = self.r.pipeline(transaction=False)
        p.hset(self.k_health, mapping={"last_event_ms": ev.event_ms, **({"dirty": 1} if done else {})})
        if not done:
            p.hincrby(self.k_counters, "streams:out_of_order", 1)
        p.execute()
        return done

    def k_order(self, client_order_id: str) -> str:
        return order_key(self.ns, client_order_id)

    def record(self, ev: TradeUpdate | AlgoUpdate) -> None:
        """Append a fill or algo-order update to the account's events stream (capped) and fold
        it into its order's outcome (:func:`harvest.domain.stream_events.fold_order`). The
        account's lease makes this process the only writer, so the read and the write need
        no transaction."""
        key = self.k_order(ev.client_id)
        raw = self.r.get(key)
        folded = fold_order(json.loads(raw) if raw else None, ev)
        fields = {"type": type(ev).__name__, "data": ev.model_dump_json()}
        p = self.r.pipeline(transaction=False)
        p.xadd(self.k_events, fields, maxlen=EVENTS_MAXLEN, approximate=True)
        p.set(key, json.dumps(folded), ex=ORDER_TTL_S)
        p.hset(self.k_health, "last_event_ms", ev.event_ms)
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
        return self.r.hgetall(self.k_health)

    def trusted(self) -> bool:
        """Whether the position cache holds exchange truth (resynced since the last gap)."""
        return self.r.hget(self.k_health, "trusted") == "1"

    def positions(self) -> dict[str, dict] | None:
        """Open positions (symbol → {"amt", "entry", "event_ms"}; flat ones left out) when the
        cache is trusted; None when it is not (read positionRisk instead)."""
        p = self.r.pipeline(transaction=True)
        p.hget(self.k_health, "trusted")
        p.hgetall(self.k_positions)
        trusted, rows = p.execute()
        if trusted != "1":
            return None
        out = {s: json.loads(v) for s, v in rows.items()}
        return {s: v for s, v in out.items() if v["amt"] != 0}

    def snapshot(
        self, max_mark_age_s: float, max_beat_age_s: float, now: float | None = None
    ) -> list[VenuePosition] | None:
        """The open positions as of the last REST read, each with the streamed mark price, when
        the cache may stand in for positionRisk: trusted, not dirty, the ``streams`` heartbeat
        at most ``max_beat_age_s`` old and every such position's mark at most ``max_mark_age_s``
        old (wall s since it arrived: :meth:`put_mark`). None otherwise (read REST)."""
        now = time.time() if now is None else now
        p = self.r.pipeline(transaction=True)
        p.hmget(self.k_health, "trusted", "dirty")
        p.hget(f"{self.ns}:heartbeat", "streams")
        p.hgetall(self.k_positions)
        p.hgetall(self.k_marks)
        (trusted, dirty), beat, rows, marks = p.execute()
        if trusted != "1" or dirty == "1" or beat is None or now - float(beat) > max_beat_age_s:
            return None
        out = []
        for sym, raw in sorted(rows.items()):
            d = json.loads(raw)
            if d["amt"] == 0:
                continue
            m = json.loads(marks[sym]) if sym in marks else None
            if "row" not in d or m is None or now - float(m.get("at", 0.0)) > max_mark_age_s:
                return None
            out.append(VenuePosition.model_validate(dict(d["row"], mark_price=m["mark"])))
        return out

    def open_symbols(self) -> set[str]:
        """Symbols with an open position in the cache (trusted or not)."""
        return {s for s, v in self.r.hgetall(self.k_positions).items() if json.loads(v)["amt"] != 0}

    def marks(self, max_age_s: float | None = None, now: float | None = None) -> dict[str, float]:
        """Mark prices (USDT) by symbol; with ``max_age_s``, only those that arrived at most that
        long ago (wall s, ``now`` default the wall clock; :meth:`put_mark`)."""
        now = time.time() if now is None else now
        out = {}
        for s, v in self.r.hgetall(self.k_marks).items():
            d = json.loads(v)
            if max_age_s is None or now - float(d.get("at", 0.0)) <= max_age_s:
                out[s] = d["mark"]
        return out

    def events(self, count: int = 100) -> list[dict]:
        """The newest fills and algo-order updates, oldest first (``type`` + the event's fields)."""
        rows = self.r.xrevrange(self.k_events, count=count)
        return [dict(json.loads(f["data"]), type=f["type"]) for _, f in reversed(rows)]
