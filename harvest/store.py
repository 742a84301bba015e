"""Redis persistence: plans and their life cycle, the position book, cached market state,
counters and heartbeats.

:meth:`PlanStore.transition` is the one place a plan changes state: a Lua script checks the
current state against :data:`harvest.plans.TRANSITIONS` and, atomically, writes the new state,
releases the position's in-flight lock on a terminal state and appends the transition (with
the decision's inputs) to the results stream ``<ns>:stream:results``.

Key layout (``<ns>`` = settings.namespace)::

    <ns>:plan:<plan_id>              hash   the plan
    <ns>:plans:open                  zset   non-terminal plan_ids by expires_at
    <ns>:plans:index                 zset   every plan_id by created_at
    <ns>:stream:results              stream one entry per transition
    <ns>:inflight:<account>:<symbol> string plan_id holding the position (TTL = plan TTL)
    <ns>:book:<account>:<symbol>     hash   harvest's book of a position epoch
    <ns>:market:<symbol>             string MarketState JSON
    <ns>:counters                    hash   guard blocks, dedup skips, scans …
    <ns>:heartbeat                   hash   name → last Unix time
    <ns>:metrics:*                   hashes plans by action|state, orders by result, sends by
                                            outcome, histograms (see harvest.metrics)
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from typing import Any, Iterable

import redis

from harvest.metrics import DEFERRED, scan_to_fill
from harvest.models import MarketState, Plan, Side
from harvest.plans import TERMINAL, allowed_from

log = logging.getLogger("harvest.plans")

_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'state')
end
local f = {}
for i = 8, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(f))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'plan_id', ARGV[1], 'symbol', ARGV[5],
  'action', ARGV[6], 'from', '', 'to', 'PROPOSED', 'reason', 'proposed', 'ts', ARGV[2], 'data', ARGV[7])
redis.call('HINCRBY', KEYS[5], ARGV[6] .. '|PROPOSED', 1)
return false
"""

_TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
local nfrom = tonumber(ARGV[8])
local ok = false
for i = 9, 8 + nfrom do if ARGV[i] == cur then ok = true end end
if not ok then return {0, cur} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[3], 'reason', ARGV[4])
local action = redis.call('HGET', KEYS[1], 'action')
redis.call('HINCRBY', KEYS[5], action .. '|' .. cur, -1)
redis.call('HINCRBY', KEYS[5], action .. '|' .. ARGV[2], 1)
if cur == 'SUBMITTED' and ARGV[6] == '1' then redis.call('HINCRBY', KEYS[6], ARGV[2], 1) end
local first = 9 + nfrom
if #ARGV >= first then
  local f = {}
  for i = first, #ARGV do f[#f + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(f))
end
if ARGV[6] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'plan_id', ARGV[1],
  'symbol', redis.call('HGET', KEYS[1], 'symbol'), 'action', action,
  'from', cur, 'to', ARGV[2], 'reason', ARGV[4], 'ts', ARGV[3], 'data', ARGV[7])
return {1, cur, action, redis.call('HGET', KEYS[1], 'scanned_at') or redis.call('HGET', KEYS[1], 'created_at')}
"""

# Send bookkeeping of a SUBMITTED plan (no state change): KEYS[1] plan, KEYS[2] results stream,
# KEYS[3] send-outcome counts (metrics).
# mark: ARGV = plan_id, step, outcome, now, maxlen, data, field/value pairs…
_MARK_SEND_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'SUBMITTED' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'step') or '0') ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'send', ARGV[3], 'updated_at', ARGV[4])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
if #ARGV >= 7 then
  local f = {}
  for i = 7, #ARGV do f[#f + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(f))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'plan_id', ARGV[1],
  'symbol', redis.call('HGET', KEYS[1], 'symbol'), 'action', redis.call('HGET', KEYS[1], 'action'),
  'from', 'SUBMITTED', 'to', 'SUBMITTED', 'reason', 'send_' .. ARGV[3], 'ts', ARGV[4], 'data', ARGV[6])
return 1
"""

# claim the next send: ARGV = plan_id, next step, its clientOrderId, now, maxlen
_CLAIM_RESEND_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'SUBMITTED' then return 0 end
if redis.call('HGET', KEYS[1], 'send') ~= 'not_executed' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'step') or '0') ~= tonumber(ARGV[2]) - 1 then return 0 end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'client_order_id', ARGV[3], 'send', 'sending', 'updated_at', ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'plan_id', ARGV[1],
  'symbol', redis.call('HGET', KEYS[1], 'symbol'), 'action', redis.call('HGET', KEYS[1], 'action'),
  'from', 'SUBMITTED', 'to', 'SUBMITTED', 'reason', 'resend_step_' .. ARGV[2], 'ts', ARGV[4],
  'data', cjson.encode({client_order_id = ARGV[3]}))
return 1
"""

_RAISE_TIER_LUA = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'harvested_tier') or '0')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], 'harvested_tier', ARGV[2]) return 1 end
return 0
"""

#: States in which a plan's order is acknowledged done (scan-to-fill latency is observed).
FILLED_STATES = ("FILLED", "PARTIALLY_FILLED")

_PLAN_FLOATS = ("close_fraction", "new_stop", "scanned_at", "acked_at", "created_at", "updated_at", "expires_at",
                "executed_qty", "avg_price", "realized_pnl", "position_qty_after")


#: HGETALL of every key in KEYS, in one call: ``[[field, value, …], …]`` in KEYS order.
_HGETALL_MANY_LUA = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HGETALL', k) end
return out
"""


@lru_cache(maxsize=65_536)
def market_state_from_json(raw: str) -> MarketState:
    """A stored :class:`MarketState` (frozen, so shared) from its JSON, parsed once per process
    per distinct value: a book entry's entry state is read on every scan but never changes.
    Raises pydantic.ValidationError for invalid JSON or values."""
    return MarketState.model_validate_json(raw)


def _enc(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, float):
        return repr(v)
    if hasattr(v, "value"):
        return str(v.value)
    return str(v)


def _flat(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        if v is None:
            continue
        out += [k, _enc(v)]
    return out


class Keys:
    """Key names under one namespace."""

    def __init__(self, ns: str):
        self.ns = ns

    def plan(self, plan_id: str) -> str:
        return f"{self.ns}:plan:{plan_id}"

    @property
    def open_plans(self) -> str:
        return f"{self.ns}:plans:open"

    @property
    def plan_index(self) -> str:
        return f"{self.ns}:plans:index"

    @property
    def results(self) -> str:
        return f"{self.ns}:stream:results"

    def inflight(self, account: str, symbol: str) -> str:
        return f"{self.ns}:inflight:{account}:{symbol}"

    def book(self, account: str, symbol: str) -> str:
        return f"{self.ns}:book:{account}:{symbol}"

    def books(self, account: str) -> str:
        return f"{self.ns}:books:{account}"

    def market(self, symbol: str) -> str:
        return f"{self.ns}:market:{symbol}"

    @property
    def counters(self) -> str:
        return f"{self.ns}:counters"

    @property
    def heartbeat(self) -> str:
        return f"{self.ns}:heartbeat"

    @property
    def metrics_plans(self) -> str:
        """hash ``<action>|<state>`` → plans now in that state (kept by the Lua scripts)."""
        return f"{self.ns}:metrics:plans"

    @property
    def metrics_orders(self) -> str:
        """hash terminal state → plans that ended there after an order was sent."""
        return f"{self.ns}:metrics:orders"

    @property
    def metrics_sends(self) -> str:
        """hash send outcome (accepted / unknown / not_executed) → sends."""
        return f"{self.ns}:metrics:sends"


def _log_transition(plan_id: str, symbol: str | None, action: str | None, frm: str, to: str, reason: str) -> None:
    """The one log line per plan transition (text: key=value; JSON: the same fields)."""
    log.info("plan_transition plan_id=%s symbol=%s action=%s from=%s state=%s reason=%s",
             plan_id, symbol, action, frm or "-", to, reason,
             extra={"event": "plan_transition", "plan_id": plan_id, "symbol": symbol, "action": action,
                    "from_state": frm or None, "state": to, "reason": reason})


class PlanStore:
    """Plans in Redis with atomic, audited transitions (see module docstring).

    ``r`` must be a ``redis.Redis`` created with ``decode_responses=True``.
    """

    def __init__(self, r: redis.Redis, ns: str, stream_maxlen: int = 100_000):
        self.r = r
        self.k = Keys(ns)
        self.maxlen = stream_maxlen
        self._create = r.register_script(_CREATE_LUA)
        self._transition = r.register_script(_TRANSITION_LUA)
        self._mark_send = r.register_script(_MARK_SEND_LUA)
        self._claim_resend = r.register_script(_CLAIM_RESEND_LUA)
        self.scan_to_fill = scan_to_fill(r, ns)

    def create(self, plan: dict[str, Any], data: dict[str, Any]) -> str | None:
        """Create a plan in state PROPOSED unless its plan_id exists.

        ``plan``: the plan's fields (plan_id, symbol, action, created_at, expires_at, …);
        ``data``: the decision's inputs recorded on the stream. Returns None when created,
        else the existing plan's state (a true repeat: nothing is written).
        """
        pid = plan["plan_id"]
        fields = dict(plan, state="PROPOSED", updated_at=plan["created_at"], reason="proposed")
        existing = self._create(
            keys=[self.k.plan(pid), self.k.open_plans, self.k.plan_index, self.k.results, self.k.metrics_plans],
            args=[pid, _enc(plan["created_at"]), _enc(plan["expires_at"]), self.maxlen,
                  plan["symbol"], _enc(plan["action"]), json.dumps(data, sort_keys=True, default=str),
                  *_flat(fields)],
        )
        if existing is None:
            _log_transition(pid, plan["symbol"], _enc(plan["action"]), "", "PROPOSED", "proposed")
        return existing

    def transition(
        self,
        plan_id: str,
        to: str,
        reason: str,
        data: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
        now: float | None = None,
        account: str | None = None,
        symbol: str | None = None,
    ) -> tuple[bool, str]:
        """Compare-and-set the plan's state to ``to`` if its current state may move there.

        ``fields`` are written to the plan in the same step; ``data`` goes on the stream.
        ``account``/``symbol`` name the in-flight lock released on a terminal state (read
        from the plan when omitted). Returns (applied, state before). Raises KeyError for
        an unknown target state.
        """
        frm = sorted(allowed_from(to))
        if account is None or symbol is None:
            account, symbol = self.r.hmget(self.k.plan(plan_id), ["account", "symbol"])
        now = time.time() if now is None else now
        res = self._transition(
            keys=[self.k.plan(plan_id), self.k.open_plans, self.k.results,
                  self.k.inflight(account or "", symbol or ""), self.k.metrics_plans, self.k.metrics_orders],
            args=[plan_id, to, _enc(now), reason, self.maxlen, "1" if to in TERMINAL else "0",
                  json.dumps(data or {}, sort_keys=True, default=str), len(frm), *frm,
                  *_flat(fields or {})],
        )
        applied = bool(int(res[0]))
        if applied:
            _log_transition(plan_id, symbol, res[2], res[1], to, reason)
            if to in FILLED_STATES and res[3]:
                DEFERRED.add(self.scan_to_fill, now - float(res[3]), res[2])
        return applied, res[1]

    def mark_send(self, plan_id: str, step: int, outcome: str, data: dict[str, Any] | None = None,
                  fields: dict[str, Any] | None = None) -> bool:
        """Record the outcome of send ``step`` of a SUBMITTED plan: ``accepted``,
        ``unknown`` (look the order up) or ``not_executed`` (may be sent again under the next
        step's clientOrderId). No state change; the stream gets a ``send_<outcome>`` entry.
        Returns False when the plan is no longer SUBMITTED at that step."""
        return bool(self._mark_send(
            keys=[self.k.plan(plan_id), self.k.results, self.k.metrics_sends],
            args=[plan_id, step, outcome, _enc(time.time()), self.maxlen,
                  json.dumps(data or {}, sort_keys=True, default=str), *_flat(fields or {})]))

    def claim_resend(self, plan_id: str, step: int, client_order_id: str) -> bool:
        """Claim send ``step`` (≥ 1) of a SUBMITTED plan whose previous send is known not
        executed; switches the plan to that step's clientOrderId. Exactly one caller wins."""
        return bool(self._claim_resend(keys=[self.k.plan(plan_id), self.k.results],
                                       args=[plan_id, step, client_order_id, _enc(time.time()), self.maxlen]))

    def get(self, plan_id: str) -> Plan | None:
        """The plan, or None when no such plan_id exists (queued metric observations ride
        along on the same round trip)."""
        if not DEFERRED.pending:
            h = self.r.hgetall(self.k.plan(plan_id))
        else:
            p = self.r.pipeline(transaction=False)
            p.hgetall(self.k.plan(plan_id))
            DEFERRED.drain_into(p)
            h = p.execute()[0]
        return self.parse(h) if h else None

    @staticmethod
    def parse(h: dict[str, str]) -> Plan:
        """A :class:`Plan` from a plan hash as stored."""
        d: dict[str, Any] = dict(h)
        for f in _PLAN_FLOATS:
            if f in d:
                d[f] = float(d[f])
        for f in ("tier", "error_code", "step"):
            if f in d:
                d[f] = int(d[f])
        d["decision"] = json.loads(d.get("decision", "{}"))
        return Plan.model_validate(d)

    def exists_many(self, plan_ids: list[str]) -> list[bool]:
        """Whether each plan_id exists (one round trip)."""
        if not plan_ids:
            return []
        p = self.r.pipeline(transaction=False)
        for pid in plan_ids:
            p.exists(self.k.plan(pid))
        return [bool(x) for x in p.execute()]

    def expired_open(self, now: float, limit: int = 1000) -> list[str]:
        """Non-terminal plan_ids whose expires_at ≤ now (oldest first)."""
        return self.r.zrangebyscore(self.k.open_plans, "-inf", now, start=0, num=limit)

    def count_open(self) -> int:
        """Number of non-terminal plans."""
        return int(self.r.zcard(self.k.open_plans))

    def get_many(self, plan_ids: list[str], batch: int = 500) -> Iterable[Plan]:
        """The plans of ``plan_ids`` that exist, in that order (one round trip per ``batch``)."""
        for i in range(0, len(plan_ids), batch):
            p = self.r.pipeline(transaction=False)
            for pid in plan_ids[i:i + batch]:
                p.hgetall(self.k.plan(pid))
            for h in p.execute():
                if h:
                    yield self.parse(h)

    def all_plans(self, batch: int = 500) -> Iterable[Plan]:
        """Every plan, oldest first."""
        return self.get_many(self.r.zrange(self.k.plan_index, 0, -1), batch)

    def open_plans(self) -> list[Plan]:
        """Every non-terminal plan."""
        return list(self.get_many(self.r.zrange(self.k.open_plans, 0, -1)))

    def history(self, plan_id: str, count: int = 10_000, sends: bool = False) -> list[dict[str, str]]:
        """State transitions of one plan from the results stream, oldest first (``sends``:
        also the send records of a SUBMITTED plan, ``from == to``, reason ``send_*`` /
        ``resend_step_*``)."""
        return [f for _, f in self.r.xrange(self.k.results, count=count)
                if f.get("plan_id") == plan_id and (sends or f.get("from") != f.get("to"))]

    def acquire_inflight(self, account: str, symbol: str, plan_id: str, ttl_s: float) -> str | None:
        """Take the position's in-flight lock for plan_id (re-entrant for the same plan).
        Returns None when held by this plan, else the plan_id that holds it."""
        key = self.k.inflight(account, symbol)
        if self.r.set(key, plan_id, nx=True, ex=max(1, int(ttl_s))):
            return None
        holder = self.r.get(key)
        return None if holder == plan_id else holder

    def inflight_many(self, account: str, symbols: list[str]) -> list[str | None]:
        """Holder plan_id of each position's in-flight lock (None when free)."""
        if not symbols:
            return []
        return self.r.mget([self.k.inflight(account, s) for s in symbols])

    def count(self, name: str, n: int = 1) -> None:
        """Add n to counter ``name`` (e.g. ``guard:ghost_position``)."""
        self.r.hincrby(self.k.counters, name, n)

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(self.k.counters).items()}

    def beat(self, name: str, now: float | None = None) -> None:
        """Record a heartbeat (Unix time) for ``name``."""
        self.r.hset(self.k.heartbeat, name, repr(time.time() if now is None else now))

    def heartbeats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.r.hgetall(self.k.heartbeat).items()}


class BookStore:
    """harvest's book of each position epoch (what the exchange does not know: initial stop,
    qty at open, entry market state, harvested tier, peak/trough), one hash per position."""

    FIELDS_FLOAT = ("opened_at", "entry_price", "qty_at_open", "initial_stop", "current_stop",
                    "peak_price", "trough_price", "leverage")

    def __init__(self, r: redis.Redis, ns: str):
        self.r = r
        self.k = Keys(ns)
        self._raise_tier = r.register_script(_RAISE_TIER_LUA)
        self._hgetall_many = r.register_script(_HGETALL_MANY_LUA)

    def get_many(self, account: str, symbols: list[str]) -> list[dict[str, Any] | None]:
        """Book entries (decoded) for the symbols, None where there is none (one Redis call)."""
        if not symbols:
            return []
        flats = self._hgetall_many(keys=[self.k.book(account, s) for s in symbols])
        return [self.decode(dict(zip(f[::2], f[1::2], strict=True))) if f else None for f in flats]

    def decode(self, h: dict[str, str]) -> dict[str, Any]:
        d: dict[str, Any] = dict(h)
        for f in self.FIELDS_FLOAT:
            if f in d:
                d[f] = float(d[f])
        d["harvested_tier"] = int(d.get("harvested_tier", 0))
        d["side"] = Side(d["side"])
        d["entry_state"] = market_state_from_json(d["entry_state"]) if d.get("entry_state") else None
        return d

    def put(self, account: str, symbol: str, entry: dict[str, Any]) -> None:
        """Write a whole book entry (a new epoch replaces the old one)."""
        self.put_many(account, {symbol: entry})

    def put_many(self, account: str, entries: dict[str, dict[str, Any]]) -> None:
        """:meth:`put` for many entries (symbol → entry), each replaced atomically, in one
        round trip."""
        if not entries:
            return
        p = self.r.pipeline(transaction=True)
        for symbol, entry in entries.items():
            key = self.k.book(account, symbol)
            e = dict(entry)
            if isinstance(e.get("entry_state"), MarketState):
                e["entry_state"] = e["entry_state"].model_dump_json()
            p.delete(key)
            p.hset(key, mapping={k: _enc(v) for k, v in e.items() if v is not None})
        p.sadd(self.k.books(account), *entries)
        p.execute()

    def update(self, account: str, symbol: str, fields: dict[str, Any]) -> None:
        """Update some fields of an entry (peak/trough, current stop)."""
        self.update_many(account, {symbol: fields})

    def update_many(self, account: str, updates: dict[str, dict[str, Any]]) -> None:
        """:meth:`update` for many entries in one pipeline: symbol → fields."""
        if not updates:
            return
        p = self.r.pipeline(transaction=False)
        for symbol, fields in updates.items():
            p.hset(self.k.book(account, symbol), mapping={k: _enc(v) for k, v in fields.items() if v is not None})
        p.execute()

    def raise_tier(self, account: str, symbol: str, epoch: str, tier: int) -> bool:
        """Mark tiers ≤ ``tier`` harvested for this epoch (never lowers; no-op on another
        epoch). Returns whether it changed."""
        return bool(self._raise_tier(keys=[self.k.book(account, symbol)], args=[epoch, tier]))

    def drop(self, account: str, symbol: str) -> None:
        """Remove a ghost entry (the venue has no such position)."""
        p = self.r.pipeline(transaction=True)
        p.delete(self.k.book(account, symbol))
        p.srem(self.k.books(account), symbol)
        p.execute()

    def symbols(self, account: str) -> set[str]:
        return set(self.r.smembers(self.k.books(account)))


class MarketCache:
    """Latest :class:`MarketState` per symbol, written by the refresh task."""

    def __init__(self, r: redis.Redis, ns: str):
        self.r = r
        self.k = Keys(ns)

    def put_many(self, states: list[MarketState]) -> None:
        p = self.r.pipeline(transaction=False)
        for s in states:
            p.set(self.k.market(s.symbol), s.model_dump_json())
        p.execute()

    def get_many(self, symbols: list[str]) -> list[MarketState | None]:
        if not symbols:
            return []
        raw = self.r.mget([self.k.market(s) for s in symbols])
        return [market_state_from_json(x) if x else None for x in raw]
