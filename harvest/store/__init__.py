"""Redis persistence: plans and their life cycle, the position book, cached market state,
counters and heartbeats.

:meth:`PlanStore.transition` is the one place a plan changes state: a Lua script checks the
current state against :data:`harvest.domain.plans.TRANSITIONS` and, atomically, writes the new state,
takes the position's in-flight lock on approval and releases it on a terminal state, marks a
filled tier harvested in the book, observes the scan-to-fill latency, and appends the
transition (with the decision's inputs) to the results stream ``<ns>:stream:results``. One
script call per transition: what depends on the state moving moves with it.

Key layout (``<ns>`` = settings.namespace)::

    <ns>:plan:<plan_id>              hash   the plan
    <ns>:plans:open                  zset   non-terminal plan_ids by expires_at
    <ns>:plans:index                 zset   every plan_id by created_at
    <ns>:lineage:<lineage_id>        hash   attempt and plan_id of the decision's latest plan
    <ns>:state:recovered             string the state is known whole (set by harvest.services.recovery)
    <ns>:plans:recovered             set    plan_ids known only from the exchange's records
    <ns>:plans:archive               hash   terminal plans past their retention (JSON), still readable
    <ns>:trading                     hash   trading state: deployment (``*``) and per account
    <ns>:plans:archived              zset   their plan_ids by last change
    <ns>:stream:results              stream one entry per transition
    <ns>:inflight:<account>:<symbol> string plan_id holding the position (TTL = plan TTL)
    <ns>:book:<account>:<symbol>     hash   harvest's book of a position epoch
    <ns>:market:<symbol>             string MarketState JSON
    <ns>:counters                    hash   guard blocks, dedup skips, scans …
    <ns>:decisions                   hash   decisions retrying / abandoned at the last scan
    <ns>:heartbeat                   hash   name → last Unix time
    <ns>:metrics:*                   hashes plans by action|state, orders by result, sends by
                                            outcome, histograms (see harvest.ops.metrics)
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from typing import Any, Callable, Iterable

import redis

from harvest.domain.models import MarketState, Plan, PlanState, SendState, Side
from harvest.domain.plans import TERMINAL, LatestPlan, allowed_from
from harvest.store.counters import DEFERRED, scan_to_fill

log = logging.getLogger("harvest.plans")

# KEYS: 1 plan, 2 open plans, 3 plan index, 4 results stream, 5 plans-by-state gauge, 6 the
# lineage hash, 7 the set of plan_ids known only from the exchange's records, 8 the state-recovered
# marker (no plan is made while the state is not known whole). ARGV: 1 plan_id, 2 created_at,
# 3 expires_at, 4 stream maxlen, 5 symbol, 6 action, 7 data (JSON), 8 attempt, 9 plan key
# prefix, 10… the plan's field/value pairs.
# Reply: false when created; the existing plan's state for a true repeat; 'RECOVERED' for a plan
# whose order the exchange shows after a loss of state (the lineage records it FILLED, nothing
# is created, nothing is sent); 'STATE_NOT_RECOVERED' while the marker is missing; 'stale_attempt' when
# the attempt is not the lineage's next one (its latest plan is still in flight, or the
# attempt skips or repeats one).
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'state')
end
if redis.call('EXISTS', KEYS[8]) == 0 then return 'STATE_NOT_RECOVERED' end
if redis.call('SISMEMBER', KEYS[7], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[6], 'attempt', ARGV[8], 'plan_id', ARGV[1], 'state', 'FILLED',
             'reason', 'recovered_from_exchange', 'updated_at', ARGV[2])
  return 'RECOVERED'
end
local n = tonumber(ARGV[8])
local la = redis.call('HGET', KEYS[6], 'attempt')
if n == 0 then
  if la then return 'stale_attempt' end
else
  if not la or tonumber(la) ~= n - 1 then return 'stale_attempt' end
  local st = redis.call('HGET', ARGV[9] .. redis.call('HGET', KEYS[6], 'plan_id'), 'state')
  if st == 'PROPOSED' or st == 'APPROVED' or st == 'SUBMITTED' then return 'stale_attempt' end
end
local f = {}
for i = 10, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(f))
redis.call('HSET', KEYS[6], 'attempt', ARGV[8], 'plan_id', ARGV[1], 'updated_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'plan_id', ARGV[1], 'symbol', ARGV[5],
  'action', ARGV[6], 'from', '', 'to', 'PROPOSED', 'reason', 'proposed', 'ts', ARGV[2], 'data', ARGV[7])
redis.call('HINCRBY', KEYS[5], ARGV[6] .. '|PROPOSED', 1)
return false
"""

#: The latest plan of each lineage in KEYS (lineage hashes); ARGV[1] the plan key prefix:
#: ``[[attempt, state, reason, updated_at, order_qty, executed_qty, remaining_qty] or {}, …]``.
#: A lineage whose latest plan is known only from the exchange's records (state lost, see
#: :mod:`harvest.services.recovery`) answers with the state the lineage itself keeps.
_LATEST_LUA = """
local out = {}
for i, k in ipairs(KEYS) do
  local h = redis.call('HMGET', k, 'attempt', 'plan_id', 'state', 'reason', 'updated_at')
  if h[1] and h[2] then
    local p = redis.call('HMGET', ARGV[1] .. h[2], 'state', 'reason', 'updated_at', 'order_qty', 'executed_qty',
                         'remaining_qty')
    if not p[1] then p = {h[3], h[4], h[5], false, false, false} end  -- recovered from the exchange
    out[i] = {h[1], p[1] or '', p[2] or '', p[3] or '0', p[4] or '', p[5] or '', p[6] or ''}
  else
    out[i] = {}
  end
end
return out
"""

# KEYS: 1 plan, 2 open plans, 3 results stream, 4 plans-by-state gauge, 5 orders-by-result
# counter, 6 scan-to-fill histogram. The position's keys (in-flight lock, book entry) are made
# from the plan's own account and symbol: ARGV[9] and ARGV[10] are their prefixes.
# ARGV: 1 plan_id, 2 to, 3 now, 4 reason, 5 stream maxlen, 6 terminal ('1'/'0'), 7 data
# (JSON, for the stream), 8 options (JSON, see PlanStore.transition), 9 in-flight prefix,
# 10 book prefix, 11… field/value pairs.
# Reply: {applied, state before, action, symbol, plan (HGETALL after the write, option read)}.
_TRANSITION_LUA = """
local h = redis.call('HMGET', KEYS[1], 'state', 'action', 'symbol', 'epoch', 'account')
local cur, action = h[1], h[2]
if not cur then return {0, ''} end
local o = cjson.decode(ARGV[8])
local ok = false
for _, s in ipairs(o['from']) do if s == cur then ok = true end end
if not ok then return {0, cur, action, h[3]} end
if o['require'] and redis.call('EXISTS', o['require']) == 0 then return {0, 'STATE_NOT_RECOVERED', action, h[3]} end
if o['trading'] then
  local t = redis.call('HMGET', o['trading'], '*', h[5] or '')
  if t[1] == 'HALTED' or t[2] == 'HALTED' then return {0, 'HALTED', action, h[3]} end
end
local pos = (h[5] or '') .. ':' .. (h[3] or '')
local lock = ARGV[9] .. pos
if o['lock_ttl'] and not redis.call('SET', lock, ARGV[1], 'NX', 'EX', o['lock_ttl']) then
  local holder = redis.call('GET', lock)
  if holder ~= ARGV[1] then return {0, cur, action, h[3]} end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[3], 'reason', ARGV[4])
redis.call('HINCRBY', KEYS[4], action .. '|' .. cur, -1)
redis.call('HINCRBY', KEYS[4], action .. '|' .. ARGV[2], 1)
if cur == 'SUBMITTED' and ARGV[6] == '1' then redis.call('HINCRBY', KEYS[5], ARGV[2], 1) end
if #ARGV >= 11 then
  local f = {}
  for i = 11, #ARGV do f[#f + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(f))
end
if ARGV[6] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  if redis.call('GET', lock) == ARGV[1] then redis.call('DEL', lock) end
end
local b = o['book']
local book = ARGV[10] .. pos
if b and h[4] and redis.call('HGET', book, 'epoch') == h[4] then
  if b['tier'] and b['tier'] > tonumber(redis.call('HGET', book, 'harvested_tier') or '0') then
    redis.call('HSET', book, 'harvested_tier', b['tier'])
  end
  if b['set'] then redis.call('HSET', book, unpack(b['set'])) end
end
local hist = o['hist']
if hist then
  for _, f in ipairs(hist['incr']) do redis.call('HINCRBY', KEYS[6], f, 1) end
  redis.call('HINCRBYFLOAT', KEYS[6], hist['sum'][1], hist['sum'][2])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'plan_id', ARGV[1], 'symbol', h[3], 'action', action,
  'from', cur, 'to', ARGV[2], 'reason', ARGV[4], 'ts', ARGV[3], 'data', ARGV[7])
if o['read'] then return {1, cur, action, h[3], redis.call('HGETALL', KEYS[1])} end
return {1, cur, action, h[3]}
"""

# Send bookkeeping of a SUBMITTED plan (no state change): KEYS[1] plan, KEYS[2] results stream,
# KEYS[3] send-outcome counts (metrics).
# mark: ARGV = plan_id, step, outcome, now, maxlen, data, the send value the plan must still
# have ('' = any), field/value pairs…
_MARK_SEND_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'SUBMITTED' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'step') or '0') ~= tonumber(ARGV[2]) then return 0 end
if ARGV[7] ~= '' and redis.call('HGET', KEYS[1], 'send') ~= ARGV[7] then return 0 end
redis.call('HSET', KEYS[1], 'send', ARGV[3], 'updated_at', ARGV[4])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
if #ARGV >= 8 then
  local f = {}
  for i = 8, #ARGV do f[#f + 1] = ARGV[i] end
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


#: A plan, its position's book entry, its symbol's cached market state and the trading states
#: (ARGV[1]: the book key prefix ``<ns>:book:``, ARGV[2]: the market key prefix ``<ns>:market:``,
#: ARGV[3]: the trading hash): ``{plan HGETALL, book HGETALL, market JSON or false, trading
#: HGETALL}``; an empty plan when it does not exist.
_PLAN_AND_BOOK_LUA = """
local p = redis.call('HGETALL', KEYS[1])
local f = {}
for i = 1, #p, 2 do f[p[i]] = p[i + 1] end
local t = redis.call('HGETALL', ARGV[3])
if not (f['account'] and f['symbol']) then return {p, {}, false, t} end
return {p, redis.call('HGETALL', ARGV[1] .. f['account'] .. ':' .. f['symbol']),
        redis.call('GET', ARGV[2] .. f['symbol']), t}
"""

#: Archive the terminal plans, of the plan_ids in ARGV[3…], last changed before ARGV[1] (Unix s).
#: ARGV[2]: the plan key prefix. KEYS: 1 plan index, 2 archive hash, 3 archived index, 4 the
#: lineage key prefix (a prefix, not a key: the engine runs on one Redis). A plan's fields move
#: to the archive as one JSON object; its lineage keeps the state it ended in. Returns how many
#: were archived.
_ARCHIVE_LUA = """
local n = 0
for i = 3, #ARGV do
  local pid = ARGV[i]
  local key = ARGV[2] .. pid
  local h = redis.call('HGETALL', key)
  local f = {}
  for j = 1, #h, 2 do f[h[j]] = h[j + 1] end
  local st = f['state']
  local terminal = st and st ~= 'PROPOSED' and st ~= 'APPROVED' and st ~= 'SUBMITTED'
  if terminal and tonumber(f['updated_at'] or '0') < tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[2], pid, cjson.encode(f))
    redis.call('ZADD', KEYS[3], f['updated_at'], pid)
    redis.call('ZREM', KEYS[1], pid)
    redis.call('DEL', key)
    if f['lineage'] then
      local lk = KEYS[4] .. f['lineage']
      if redis.call('HGET', lk, 'plan_id') == pid then
        redis.call('HSET', lk, 'state', st, 'reason', f['reason'] or '', 'updated_at', f['updated_at'])
      end
    end
    n = n + 1
  end
end
return n
"""

#: States in which a plan's order is acknowledged done (scan-to-fill latency is observed,
#: a filled tier is marked harvested).
FILLED_STATES = (PlanState.FILLED, PlanState.PARTIALLY_FILLED)

_PLAN_FLOATS = (
    "close_fraction",
    "new_stop",
    "scanned_at",
    "acked_at",
    "created_at",
    "updated_at",
    "expires_at",
    "executed_qty",
    "avg_price",
    "realized_pnl",
    "position_qty_after",
    "remaining_qty",
)


#: HGETALL of every key in KEYS, in one call: ``[[field, value, …], …]`` in KEYS order.
_HGETALL_MANY_LUA = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HGETALL', k) end
return out
"""


#: HMGET of the fields in ARGV from every key in KEYS, in one call: ``[[value or nil, …], …]``.
_HMGET_MANY_LUA = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HMGET', k, unpack(ARGV)) end
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


def _lua_opts(opts: dict[str, Any]) -> str:
    """Options of a Lua script as JSON, None values left out (``cjson.decode`` would make
    them ``cjson.null``, which Lua takes for true)."""
    return json.dumps({k: v for k, v in opts.items() if v is not None})


def run_script(
    r: redis.Redis, script, keys: list[str], args: list[Any], then: Callable[[Any], None] | None = None
) -> Any:
    """Run a registered Lua script (``r.register_script``) and, in the same round trip, write
    the metric observations this process has queued (:data:`harvest.ops.metrics.DEFERRED`).
    ``then`` queues more commands (reads) on the pipeline, to run right after the script.
    Returns the script's reply, or ``(reply, [replies of then's commands])`` with ``then``;
    raises what the script or those commands raise."""
    if not DEFERRED.pending and then is None:
        return script(keys=keys, args=args)
    p = r.pipeline(transaction=False)
    p.evalsha(script.sha, len(keys), *keys, *args)
    if then is not None:
        then(p)
    n_then = len(p) - 1
    DEFERRED.drain_into(p)
    out = p.execute(raise_on_error=False)
    res, extra = out[0], out[1 : 1 + n_then]
    if isinstance(res, redis.exceptions.NoScriptError):  # first call on this server: load it
        res = script(keys=keys, args=args)
        if then is not None:
            q = r.pipeline(transaction=False)
            then(q)
            extra = q.execute()
    elif isinstance(res, Exception):
        raise res
    for x in extra:
        if isinstance(x, Exception):
            raise x
    return res if then is None else (res, extra)


class Keys:
    """Key names under one namespace."""

    def __init__(self, ns: str):
        self.ns = ns

    def plan(self, plan_id: str) -> str:
        return f"{self.ns}:plan:{plan_id}"

    @property
    def plan_prefix(self) -> str:
        """``<ns>:plan:`` — a plan key is this + plan_id."""
        return f"{self.ns}:plan:"

    def lineage(self, lineage_id: str) -> str:
        return f"{self.ns}:lineage:{lineage_id}"

    @property
    def trading(self) -> str:
        """hash: trading state (ACTIVE, REDUCING, HALTED, SHADOW) for the deployment (field
        ``*``) and per account (field = account); see :mod:`harvest.domain.trading`."""
        return f"{self.ns}:trading"

    @property
    def archive(self) -> str:
        """hash: plan_id → the plan's fields as JSON, for terminal plans past their retention."""
        return f"{self.ns}:plans:archive"

    @property
    def archived(self) -> str:
        """zset: archived plan_ids by when they last changed."""
        return f"{self.ns}:plans:archived"

    @property
    def recovered(self) -> str:
        """string: present while the state is known whole — set by :mod:`harvest.services.recovery`
        after it read the exchange's records; a Redis that restarted empty lacks it, and
        execute sends nothing until it is back."""
        return f"{self.ns}:state:recovered"

    @property
    def recovered_plans(self) -> str:
        """set: plan_ids whose orders the exchange shows but the store had lost."""
        return f"{self.ns}:plans:recovered"

    @property
    def open_plans(self) -> str:
        return f"{self.ns}:plans:open"

    @property
    def plan_index(self) -> str:
        return f"{self.ns}:plans:index"

    @property
    def results(self) -> str:
        return f"{self.ns}:stream:results"

    @property
    def inflight_prefix(self) -> str:
        """``<ns>:inflight:`` — an in-flight lock key is this + ``<account>:<symbol>``."""
        return f"{self.ns}:inflight:"

    def inflight(self, account: str, symbol: str) -> str:
        return f"{self.inflight_prefix}{account}:{symbol}"

    @property
    def book_prefix(self) -> str:
        """``<ns>:book:`` — a book key is this + ``<account>:<symbol>``."""
        return f"{self.ns}:book:"

    def book(self, account: str, symbol: str) -> str:
        return f"{self.book_prefix}{account}:{symbol}"

    def books(self, account: str) -> str:
        return f"{self.ns}:books:{account}"

    def market(self, symbol: str) -> str:
        return f"{self.ns}:market:{symbol}"

    @property
    def counters(self) -> str:
        return f"{self.ns}:counters"

    @property
    def decisions(self) -> str:
        """hash: the decisions the last scan saw not starting — ``waiting`` (retrying after a
        backoff) and ``abandoned:<reason>`` counts — and ``updated_at`` (Unix s)."""
        return f"{self.ns}:decisions"

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
    log.info(
        "plan_transition plan_id=%s symbol=%s action=%s from=%s state=%s reason=%s",
        plan_id,
        symbol,
        action,
        frm or "-",
        to,
        reason,
        extra={
            "event": "plan_transition",
            "plan_id": plan_id,
            "symbol": symbol,
            "action": action,
            "from_state": frm or None,
            "state": to,
            "reason": reason,
        },
    )


class PlanStore:
    """Plans in Redis with atomic, audited transitions (see module docstring).

    ``r`` must be a ``redis.Redis`` created with ``decode_responses=True``.
    """

    def __init__(self, r: redis.Redis, ns: str, stream_maxlen: int = 100_000):
        self.r = r
        self.k = Keys(ns)
        self.maxlen = stream_maxlen
        self._create = r.register_script(_CREATE_LUA)
        self._latest = r.register_script(_LATEST_LUA)
        self._archive = r.register_script(_ARCHIVE_LUA)
        #: The trading states the last :meth:`get_with_book` read (``{"*" or account: state}``).
        self.last_trading: dict[str, str] = {}
        self._transition = r.register_script(_TRANSITION_LUA)
        self._mark_send = r.register_script(_MARK_SEND_LUA)
        self._claim_resend = r.register_script(_CLAIM_RESEND_LUA)
        self._plan_and_book = r.register_script(_PLAN_AND_BOOK_LUA)
        self.scan_to_fill = scan_to_fill(r, ns)

    def create(self, plan: dict[str, Any], data: dict[str, Any]) -> str | None:
        """Create a plan in state PROPOSED unless its plan_id exists.

        ``plan``: the plan's fields (plan_id, lineage, attempt, symbol, action, created_at,
        expires_at, …); ``data``: the decision's inputs recorded on the stream. The lineage's
        latest plan moves to it in the same step. Returns None when created, else the existing
        plan's state (a true repeat: nothing is written) or ``"stale_attempt"`` (the attempt is
        not the lineage's next: its latest plan is in flight, or attempts were skipped).
        """
        pid = plan["plan_id"]
        fields = dict(plan, state=PlanState.PROPOSED, updated_at=plan["created_at"], reason="proposed")
        existing = run_script(
            self.r,
            self._create,
            keys=[
                self.k.plan(pid),
                self.k.open_plans,
                self.k.plan_index,
                self.k.results,
                self.k.metrics_plans,
                self.k.lineage(plan["lineage"]),
                self.k.recovered_plans,
                self.k.recovered,
            ],
            args=[
                pid,
                _enc(plan["created_at"]),
                _enc(plan["expires_at"]),
                self.maxlen,
                plan["symbol"],
                _enc(plan["action"]),
                json.dumps(data, sort_keys=True, default=str),
                int(plan.get("attempt", 0)),
                self.k.plan_prefix,
                *_flat(fields),
            ],
        )
        if existing is None:
            _log_transition(pid, plan["symbol"], _enc(plan["action"]), "", PlanState.PROPOSED, "proposed")
        return existing

    def transition(
        self,
        plan_id: str,
        to: str,
        reason: str,
        data: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
        now: float | None = None,
        lock_ttl_s: float | None = None,
        book: dict[str, Any] | None = None,
        fill: tuple[float, str] | None = None,
    ) -> tuple[bool, str]:
        """Compare-and-set the plan's state to ``to`` if its current state may move there,
        in one Lua call with everything that must happen only if it does.

        ``fields`` are written to the plan in the same step; ``data`` goes on the stream.
        The position (its in-flight lock, released on a terminal state, and its book entry)
        is the plan's own account and symbol. Options, each applied only when the state moves:

        * ``lock_ttl_s``: take the position's in-flight lock for this plan (TTL, s) first;
          when another plan holds it nothing is written and the result is
          ``(False, <current state>)`` with the current state one ``to`` may be reached from;
        * ``book``: ``{"tier": n}`` raises the book's harvested tier to n (never lowers) and
          ``{"set": {field: value}}`` writes fields, both only while the book entry is the
          plan's epoch;
        * ``fill``: ``(since, action)``: the scan-to-fill latency ``now - since`` (since: Unix
          s of the plan's scan, or creation) is observed under the action's label in the
          same step, so a repeat observes nothing.

        Returns (applied, state before; ``""`` when no such plan exists). Raises KeyError
        for an unknown target state.
        """
        applied, before, _ = self._apply(plan_id, to, reason, data, fields, now, lock_ttl_s, book, fill, False)
        return applied, before

    def transition_and_get(
        self,
        plan_id: str,
        to: str,
        reason: str,
        fields: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        require_recovered: bool = False,
    ) -> tuple[bool, str, Plan | None]:
        """:meth:`transition`, and the plan as it is after the transition (None when it was
        not applied), in the same round trip: ``(applied, state before, plan)``. Execute uses
        it for APPROVED → SUBMITTED, which needs the plan only once it holds the send.
        ``require_recovered``: apply only while the state is known whole
        (:attr:`Keys.recovered` exists, see :mod:`harvest.services.recovery`); otherwise nothing is
        written and the state before reads ``STATE_NOT_RECOVERED``; and only while trading is not
        HALTED for the deployment or the plan's account (:attr:`Keys.trading`; else ``HALTED``)."""
        return self._apply(
            plan_id,
            to,
            reason,
            data,
            fields,
            None,
            None,
            None,
            None,
            True,
            require=self.k.recovered if require_recovered else None,
            trading=self.k.trading if require_recovered else None,
        )

    def _apply(
        self,
        plan_id: str,
        to: str,
        reason: str,
        data: dict[str, Any] | None,
        fields: dict[str, Any] | None,
        now: float | None,
        lock_ttl_s: float | None,
        book: dict[str, Any] | None,
        fill: tuple[float, str] | None,
        read: bool,
        require: str | None = None,
        trading: str | None = None,
    ) -> tuple[bool, str, Plan | None]:
        """The one call of :data:`_TRANSITION_LUA` (see :meth:`transition`)."""
        now = time.time() if now is None else now
        opts: dict[str, Any] = {
            "from": sorted(allowed_from(to)),
            "read": read or None,
            "require": require,
            "trading": trading,
        }
        if lock_ttl_s is not None:
            opts["lock_ttl"] = max(1, int(lock_ttl_s))
        if book:
            b = {"tier": book.get("tier") or None, "set": _flat(book.get("set") or {}) or None}
            opts["book"] = {k: v for k, v in b.items() if v is not None} or None
        if fill is not None:
            incr, total = self.scan_to_fill.fields(max(0.0, now - fill[0]), fill[1])
            opts["hist"] = {"incr": incr, "sum": list(total)}
        k = self.k
        res = run_script(
            self.r,
            self._transition,
            keys=[k.plan(plan_id), k.open_plans, k.results, k.metrics_plans, k.metrics_orders, self.scan_to_fill.key],
            args=[
                plan_id,
                to,
                _enc(now),
                reason,
                self.maxlen,
                "1" if to in TERMINAL else "0",
                json.dumps(data or {}, sort_keys=True, default=str),
                _lua_opts(opts),
                k.inflight_prefix,
                k.book_prefix,
                *_flat(fields or {}),
            ],
        )
        applied = bool(int(res[0]))
        if not applied:
            return False, res[1], None
        _log_transition(plan_id, res[3], res[2], res[1], to, reason)
        plan = self.parse(dict(zip(res[4][::2], res[4][1::2], strict=True))) if read else None
        return True, res[1], plan

    def _mark_send_args(
        self,
        plan_id: str,
        step: int,
        outcome: str,
        data: dict[str, Any] | None,
        fields: dict[str, Any] | None,
        now: float,
        only_from: str = "",
    ) -> tuple[list, list]:
        return (
            [self.k.plan(plan_id), self.k.results, self.k.metrics_sends],
            [
                plan_id,
                step,
                outcome,
                _enc(now),
                self.maxlen,
                json.dumps(data or {}, sort_keys=True, default=str),
                only_from,
                *_flat(fields or {}),
            ],
        )

    def mark_send(
        self,
        plan_id: str,
        step: int,
        outcome: str,
        data: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> bool:
        """Record the outcome of send ``step`` of a SUBMITTED plan: ``accepted``,
        ``unknown`` (look the order up) or ``not_executed`` (may be sent again under the next
        step's clientOrderId). No state change; the stream gets a ``send_<outcome>`` entry.
        Returns False when the plan is no longer SUBMITTED at that step."""
        keys, args = self._mark_send_args(plan_id, step, outcome, data, fields, time.time())
        return bool(self._mark_send(keys=keys, args=args))

    def get_after_accepted(self, plan_id: str, step: int, acked_at: float) -> Plan | None:
        """Record that send ``step`` of a SUBMITTED plan was accepted by the exchange at
        ``acked_at`` (Unix s, as execute measured it) — only while that send is still
        ``sending``, so a repeat records nothing — and read the plan back, in one round trip
        (with the queued metric observations). Confirm uses it: execute hands the
        acknowledgement on instead of spending a round trip of its own on it. Returns the
        plan, or None when no such plan_id exists."""
        keys, args = self._mark_send_args(
            plan_id, step, SendState.ACCEPTED, None, {"acked_at": acked_at}, acked_at, only_from=SendState.SENDING
        )
        _, (h,) = run_script(self.r, self._mark_send, keys, args, then=lambda p: p.hgetall(self.k.plan(plan_id)))
        return self.parse(h) if h else None

    def claim_resend(self, plan_id: str, step: int, client_order_id: str) -> bool:
        """Claim send ``step`` (≥ 1) of a SUBMITTED plan whose previous send is known not
        executed; switches the plan to that step's clientOrderId. Exactly one caller wins."""
        return bool(
            self._claim_resend(
                keys=[self.k.plan(plan_id), self.k.results],
                args=[plan_id, step, client_order_id, _enc(time.time()), self.maxlen],
            )
        )

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
        if not h:
            return self.get_archived(plan_id)
        return self.parse(h)

    def get_archived(self, plan_id: str) -> Plan | None:
        """A plan moved to the archive after its retention (:meth:`archive_before`), or None."""
        raw = self.r.hget(self.k.archive, plan_id)
        return self.parse(json.loads(raw)) if raw else None

    def archive_before(self, cutoff: float, limit: int = 1000) -> int:
        """Move terminal plans last changed before ``cutoff`` (Unix s) out of the live
        structures into the archive (their fields stay readable by :meth:`get`; their
        transitions stay on the results stream until it is trimmed; their lineage keeps the
        state each ended in). At most ``limit`` of the oldest plans are looked at per call.
        Returns how many were archived."""
        pids = self.r.zrangebyscore(self.k.plan_index, "-inf", f"({cutoff!r}", start=0, num=limit)
        if not pids:
            return 0
        return int(
            self._archive(
                keys=[self.k.plan_index, self.k.archive, self.k.archived, f"{self.k.ns}:lineage:"],
                args=[repr(cutoff), self.k.plan_prefix, *pids],
            )
        )

    def get_with_book(self, plan_id: str) -> tuple[Plan | None, dict[str, Any] | None, MarketState | None]:
        """The plan, the book entry of its position (decoded as by :meth:`BookStore.decode`;
        None when there is none) and its symbol's cached market state (None when there is
        none or it does not parse) in one round trip, which also carries the queued metric
        observations. ``(None, None, None)`` when no such plan_id exists. The trading states
        read in the same round trip are left in :attr:`last_trading`."""
        flat_plan, flat_book, market, trading = run_script(
            self.r,
            self._plan_and_book,
            keys=[self.k.plan(plan_id)],
            args=[self.k.book_prefix, f"{self.k.ns}:market:", self.k.trading],
        )
        self.last_trading = dict(zip(trading[::2], trading[1::2], strict=True))
        if not flat_plan:
            return None, None, None
        plan = self.parse(dict(zip(flat_plan[::2], flat_plan[1::2], strict=True)))
        entry = BookStore.decode(dict(zip(flat_book[::2], flat_book[1::2], strict=True))) if flat_book else None
        try:
            state = market_state_from_json(market) if market else None
        except ValueError:
            state = None
        return plan, entry, state

    @staticmethod
    def parse(h: dict[str, str]) -> Plan:
        """A :class:`Plan` from a plan hash as stored."""
        d: dict[str, Any] = dict(h)
        for f in _PLAN_FLOATS:
            if f in d:
                d[f] = float(d[f])
        for f in ("tier", "error_code", "step", "attempt"):
            if f in d:
                d[f] = int(d[f])
        d["decision"] = json.loads(d.get("decision", "{}"))
        return Plan.model_validate(d)

    def latest_many(self, lineage_ids: list[str]) -> list[LatestPlan | None]:
        """The latest plan of each lineage (None when the lineage has none), one round trip."""
        if not lineage_ids:
            return []
        rows = self._latest(keys=[self.k.lineage(x) for x in lineage_ids], args=[self.k.plan_prefix])
        out: list[LatestPlan | None] = []
        for row in rows:
            if not row:
                out.append(None)
                continue
            att, state, reason, upd, oq, eq, rq = row
            out.append(
                LatestPlan(
                    int(att),
                    state,
                    reason,
                    float(upd or 0),
                    float(oq) if oq else None,
                    float(eq) if eq else None,
                    float(rq) if rq else None,
                )
            )
        return out

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
            for pid in plan_ids[i : i + batch]:
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
        return [
            f
            for _, f in self.r.xrange(self.k.results, count=count)
            if f.get("plan_id") == plan_id and (sends or f.get("from") != f.get("to"))
        ]

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

    FIELDS_FLOAT = (
        "opened_at",
        "entry_price",
        "qty_at_open",
        "initial_stop",
        "current_stop",
        "peak_price",
        "trough_price",
        "leverage",
    )
    #: The fields the scan reads (:func:`harvest.services.decide.load_positions`): what the kernel, the
    #: epoch check and the peak/trough update use. ``side`` first: a missing entry has none.
    SCAN_FIELDS = (
        "side",
        "epoch",
        "opened_at",
        "qty_at_open",
        "initial_stop",
        "harvested_tier",
        "peak_price",
        "trough_price",
        "entry_state",
    )

    def __init__(self, r: redis.Redis, ns: str):
        self.r = r
        self.k = Keys(ns)
        self._hgetall_many = r.register_script(_HGETALL_MANY_LUA)
        self._hmget_many = r.register_script(_HMGET_MANY_LUA)

    def get_many(
        self, account: str, symbols: list[str], fields: tuple[str, ...] | None = None
    ) -> list[dict[str, Any] | None]:
        """Book entries (decoded) for the symbols, None where there is none (one Redis call).
        ``fields``: read only these (must include ``side``; e.g. :data:`SCAN_FIELDS`), which
        keeps a 10 000-position reply small."""
        if not symbols:
            return []
        keys = [self.k.book(account, s) for s in symbols]
        if fields is None:
            flats = self._hgetall_many(keys=keys)
            return [self.decode(dict(zip(f[::2], f[1::2], strict=True))) if f else None for f in flats]
        rows = self._hmget_many(keys=keys, args=list(fields))
        return [
            self.decode({k: v for k, v in zip(fields, row, strict=True) if v is not None})
            if row[0] is not None
            else None
            for row in rows
        ]

    @classmethod
    def decode(cls, h: dict[str, str]) -> dict[str, Any]:
        """A book entry from its hash as stored: floats, ``harvested_tier`` int, ``side`` a
        :class:`Side`, ``entry_state`` a :class:`MarketState` (or None)."""
        d: dict[str, Any] = dict(h)
        for f in cls.FIELDS_FLOAT:
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
