"""What the streams say, in Redis (issue 23): the position cache per account, fills and
algo-order updates, mark prices, and the stream's health. Written by ``harvest streams``
(:mod:`harvest.services.streams`), read by whoever wants exchange truth without REST weight.

Keys (``<ns>`` = settings.namespace, ``<a>`` = account)::

    <ns>:streams:<a>:positions   hash    symbol → {"amt", "entry", "event_ms"} (JSON); amt 0 = flat
    <ns>:streams:<a>:health      hash    synced_ms (last REST resync), trusted (1/0), last_event_ms,
                                         listen_keys (how many the process has used), owner
    <ns>:streams:<a>:events      stream  fills and algo-order updates, newest last (capped)
    <ns>:streams:marks           hash    symbol → {"mark", "funding_rate", "event_ms"} (JSON)

A position update applies only when its event time is not older than the one stored for the
symbol (:func:`harvest.domain.stream_events.is_newer`, checked inside one Lua call); a REST
resync replaces the whole cache and stamps every row with the time the request started, so an
event older than the resync is ignored. The cache is *trusted* only between a resync and the
next gap.
"""

from __future__ import annotations

import json
import time

import redis

from harvest.domain.stream_events import AlgoUpdate, MarkPrice, PositionUpdate, TradeUpdate

EVENTS_MAXLEN = 10_000

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


class StreamCache:
    """The stream-fed state of one account (see module docstring). ``r``: decode_responses."""

    def __init__(self, r: redis.Redis, ns: str, account: str):
        self.r, self.ns, self.account = r, ns, account
        base = f"{ns}:streams:{account}"
        self.k_positions, self.k_health, self.k_events = f"{base}:positions", f"{base}:health", f"{base}:events"
        self.k_marks = f"{ns}:streams:marks"
        self.k_counters = f"{ns}:counters"
        self._apply = r.register_script(_APPLY)

    # ------------------------------------------------------------------ writers

    def resync(self, rows: dict[str, tuple[float, float]], started_ms: int) -> None:
        """Replace the cache with REST truth: ``rows`` symbol → (signed amt, entry USDT) of the
        open positions; ``started_ms``: when the REST request started. Marks the cache trusted."""
        p = self.r.pipeline(transaction=True)
        p.delete(self.k_positions)
        for sym, (amt, entry) in rows.items():
            p.hset(self.k_positions, sym, json.dumps({"amt": amt, "entry": entry, "event_ms": started_ms}))
        p.hset(self.k_health, mapping={"synced_ms": started_ms, "trusted": 1})
        p.hincrby(self.k_counters, "streams:resyncs", 1)
        p.execute()

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
        p.hset(self.k_health, "last_event_ms", ev.event_ms)
        if not done:
            p.hincrby(self.k_counters, "streams:out_of_order", 1)
        p.execute()
        return done

    def record(self, ev: TradeUpdate | AlgoUpdate) -> None:
        """Append a fill or algo-order update to the account's events stream (capped)."""
        fields = {"type": type(ev).__name__, "data": ev.model_dump_json()}
        p = self.r.pipeline(transaction=False)
        p.xadd(self.k_events, fields, maxlen=EVENTS_MAXLEN, approximate=True)
        p.hset(self.k_health, "last_event_ms", ev.event_ms)
        p.execute()

    def put_mark(self, ev: MarkPrice) -> None:
        """Store a mark price (newer than the stored one only: a reordered event is dropped)."""
        row = json.dumps({"mark": ev.mark, "funding_rate": ev.funding_rate, "event_ms": ev.event_ms})
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

    def marks(self, max_age_s: float | None = None, now: float | None = None) -> dict[str, float]:
        """Mark prices (USDT) by symbol; with ``max_age_s``, only those whose event is that
        recent (wall clock)."""
        now_ms = (time.time() if now is None else now) * 1000
        out = {}
        for s, v in self.r.hgetall(self.k_marks).items():
            d = json.loads(v)
            if max_age_s is None or now_ms - d["event_ms"] <= max_age_s * 1000:
                out[s] = d["mark"]
        return out

    def events(self, count: int = 100) -> list[dict]:
        """The newest fills and algo-order updates, oldest first (``type`` + the event's fields)."""
        rows = self.r.xrevrange(self.k_events, count=count)
        return [dict(json.loads(f["data"]), type=f["type"]) for _, f in reversed(rows)]
