"""The Lua scripts of the state store and how they are called: each runs atomically on the
Redis server (one round trip), so what depends on a plan's state moving moves with it.
:func:`run_script` sends one by ``EVALSHA`` (loading it once per connection)."""

from __future__ import annotations

import json
from typing import Any, Callable

import redis

from harvest.domain.models import PlanState
from harvest.domain.plans import TERMINAL
from harvest.store.counters import DEFERRED
from harvest.store.records import SCHEMA

# The state-recovered marker holds the run_id of the Redis server it was written on. A marker
# read on another server (the replica promoted by a failover, or this server restarted from
# its AOF) does not say the state is whole: writes the old server acknowledged may be missing.
# It is removed, so that recovery reads the exchange before anything more is sent.
KNOWN_WHOLE_LUA = """
local function server_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
local function known_whole(key)
  local v = redis.call('GET', key)
  if not v then return false end
  if v == server_id() then return true end
  redis.call('DEL', key)
  return false
end
"""

# A plan's ledger index: the ids of its entries on the results stream, in its hash's ``log``
# field (comma-separated, oldest first), so that a plan's transitions are read by plan whatever
# the stream's length (:meth:`harvest.store.plans.PlanStore.history`).
LEDGER_LUA = """
local function ledger(plan_key, xid)
  local prev = redis.call('HGET', plan_key, 'log')
  redis.call('HSET', plan_key, 'log', prev and (prev .. ',' .. xid) or xid)
end
"""

#: KEYS[1] the state-recovered marker: 1 when it names this server, else 0 (removed if stale).
STATE_KNOWN_LUA = KNOWN_WHOLE_LUA + "return known_whole(KEYS[1]) and 1 or 0"

#: KEYS[1] the state-recovered marker, ARGV[1] the run_id recovery began on ('' for any): set the
#: marker to this server's run_id and return it; false when the server changed meanwhile.
MARK_RECOVERED_LUA = (
    KNOWN_WHOLE_LUA
    + """
local id = server_id()
if ARGV[1] ~= '' and ARGV[1] ~= id then return false end
redis.call('SET', KEYS[1], id)
return id
"""
)

# KEYS: 1 plan, 2 open plans, 3 plan index, 4 results stream, 5 plans-by-state gauge, 6 the
# lineage hash, 7 the set of plan_ids known only from the exchange's records, 8 the state-recovered
# marker (no plan is made while the state is not known whole). ARGV: 1 plan_id, 2 created_at,
# 3 expires_at, 4 stream maxlen, 5 symbol, 6 action, 7 data (JSON), 8 attempt, 9 plan key
# prefix, 10… the plan's field/value pairs.
# Reply: false when created; the existing plan's state for a true repeat; 'RECOVERED' for a plan
# whose order the exchange shows after a loss of state (the lineage records it FILLED, nothing
# is created, nothing is sent); 'STATE_NOT_RECOVERED' while the marker is missing; 'stale_attempt' when
# the attempt is not the lineage's next one (its latest plan is still in flight, or the
# attempt skips or repeats one; or that plan is in a state this version does not know, or was
# written by a newer version: that version goes on with the lineage).
_CREATE_LUA = (
    (
        KNOWN_WHOLE_LUA
        + LEDGER_LUA
        + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'state')
end
if not known_whole(KEYS[8]) then return 'STATE_NOT_RECOVERED' end
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
  local last = redis.call('HMGET', ARGV[9] .. redis.call('HGET', KEYS[6], 'plan_id'), 'state', 'v')
  local ended = {@TERMINAL@}
  -- in flight, in a state of a newer version, or written by one: the lineage is not this call's to go on
  if last[1] and not ended[last[1]] then return 'stale_attempt' end
  if (tonumber(last[2] or '1') or math.huge) > @PLAN_V@ then return 'stale_attempt' end
end
local f = {}
for i = 10, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(f))
redis.call('HSET', KEYS[6], 'attempt', ARGV[8], 'plan_id', ARGV[1], 'updated_at', ARGV[2])
redis.call('HDEL', KEYS[6], 'retry')  -- an operator's retry is spent by the plan it made
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
ledger(KEYS[1], redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'v', '@LEDGER_V@', 'plan_id', ARGV[1],
  'symbol', ARGV[5], 'action', ARGV[6], 'from', '', 'to', 'PROPOSED', 'reason', 'proposed', 'ts', ARGV[2],
  'data', ARGV[7]))
redis.call('HINCRBY', KEYS[5], (redis.call('HGET', KEYS[1], 'account') or '') .. '|' .. ARGV[6] .. '|PROPOSED', 1)
return false
"""
    )
    .replace("@LEDGER_V@", str(SCHEMA["ledger"]))  # each ledger entry carries its schema version
    .replace("@PLAN_V@", str(SCHEMA["plan"]))
    .replace("@TERMINAL@", ", ".join(f"{s}=true" for s in sorted(TERMINAL)))
)

#: The latest plan of each lineage in KEYS (lineage hashes); ARGV[1] the plan key prefix:
#: ``[[attempt, state, reason, updated_at, order_qty, executed_qty, remaining_qty] or {}, …]``.
#: A lineage whose latest plan is known only from the exchange's records (state lost, see
#: :mod:`harvest.services.recovery`) answers with the state the lineage itself keeps.
_LATEST_LUA = """
local out = {}
for i, k in ipairs(KEYS) do
  local h = redis.call('HMGET', k, 'attempt', 'plan_id', 'state', 'reason', 'updated_at', 'retry')
  if h[1] and h[2] then
    local p = redis.call('HMGET', ARGV[1] .. h[2], 'state', 'reason', 'updated_at', 'order_qty', 'executed_qty',
                         'remaining_qty')
    if not p[1] then p = {h[3], h[4], h[5], false, false, false} end  -- recovered from the exchange
    out[i] = {h[1], p[1] or '', p[2] or '', p[3] or '0', p[4] or '', p[5] or '', p[6] or '', h[6] or ''}
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
# Reply: {applied, state before, action, symbol, plan (HGETALL after the write, option read)};
# state before 'NEWER_VERSION' when the plan's ``v`` is above the options' ``v`` (nothing written).
_TRANSITION_LUA = (
    KNOWN_WHOLE_LUA
    + LEDGER_LUA
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'action', 'symbol', 'epoch', 'account', 'v')
local cur, action = h[1], h[2]
if not cur then return {0, ''} end
local o = cjson.decode(ARGV[8])
-- a plan a newer version wrote (its v above this version's, or not a number) is left to it
if o['v'] and (tonumber(h[6] or '1') or math.huge) > o['v'] then return {0, 'NEWER_VERSION', action, h[3]} end
local ok = false
for _, s in ipairs(o['from']) do if s == cur then ok = true end end
if not ok then return {0, cur, action, h[3]} end
if o['require'] and not known_whole(o['require']) then return {0, 'STATE_NOT_RECOVERED', action, h[3]} end
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
local acct = (h[5] or '') .. '|'
redis.call('HINCRBY', KEYS[4], acct .. action .. '|' .. cur, -1)
redis.call('HINCRBY', KEYS[4], acct .. action .. '|' .. ARGV[2], 1)
if cur == 'SUBMITTED' and ARGV[6] == '1' then redis.call('HINCRBY', KEYS[5], acct .. ARGV[2], 1) end
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
ledger(KEYS[1], redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'v', '@LEDGER_V@', 'plan_id', ARGV[1],
  'symbol', h[3], 'action', action, 'from', cur, 'to', ARGV[2], 'reason', ARGV[4], 'ts', ARGV[3], 'data', ARGV[7]))
if o['read'] then return {1, cur, action, h[3], redis.call('HGETALL', KEYS[1])} end
return {1, cur, action, h[3]}
"""
).replace("@LEDGER_V@", str(SCHEMA["ledger"]))  # each ledger entry carries its schema version

# Send bookkeeping of a SUBMITTED plan (no state change): KEYS[1] plan, KEYS[2] results stream,
# KEYS[3] send-outcome counts (metrics).
# mark: ARGV = plan_id, step, outcome, now, maxlen, data, the send value the plan must still
# have ('' = any), field/value pairs…
_MARK_SEND_LUA = (
    LEDGER_LUA
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'SUBMITTED' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'step') or '0') ~= tonumber(ARGV[2]) then return 0 end
if ARGV[7] ~= '' and redis.call('HGET', KEYS[1], 'send') ~= ARGV[7] then return 0 end
redis.call('HSET', KEYS[1], 'send', ARGV[3], 'updated_at', ARGV[4])
redis.call('HINCRBY', KEYS[3], (redis.call('HGET', KEYS[1], 'account') or '') .. '|' .. ARGV[3], 1)
if #ARGV >= 8 then
  local f = {}
  for i = 8, #ARGV do f[#f + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(f))
end
ledger(KEYS[1], redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'v', '@LEDGER_V@', 'plan_id', ARGV[1],
  'symbol', redis.call('HGET', KEYS[1], 'symbol'), 'action', redis.call('HGET', KEYS[1], 'action'),
  'from', 'SUBMITTED', 'to', 'SUBMITTED', 'reason', 'send_' .. ARGV[3], 'ts', ARGV[4], 'data', ARGV[6]))
return 1
"""
).replace("@LEDGER_V@", str(SCHEMA["ledger"]))  # each ledger entry carries its schema version

# claim the next send: ARGV = plan_id, next step, its clientOrderId, now, maxlen
_CLAIM_RESEND_LUA = (
    LEDGER_LUA
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'SUBMITTED' then return 0 end
if redis.call('HGET', KEYS[1], 'send') ~= 'not_executed' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'step') or '0') ~= tonumber(ARGV[2]) - 1 then return 0 end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'client_order_id', ARGV[3], 'send', 'sending', 'updated_at', ARGV[4])
ledger(KEYS[1], redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'v', '@LEDGER_V@', 'plan_id', ARGV[1],
  'symbol', redis.call('HGET', KEYS[1], 'symbol'), 'action', redis.call('HGET', KEYS[1], 'action'),
  'from', 'SUBMITTED', 'to', 'SUBMITTED', 'reason', 'resend_step_' .. ARGV[2], 'ts', ARGV[4],
  'data', cjson.encode({client_order_id = ARGV[3]})))
return 1
"""
).replace("@LEDGER_V@", str(SCHEMA["ledger"]))  # each ledger entry carries its schema version


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
    r: redis.Redis,
    script: Any,
    keys: list[str],
    args: list[Any],
    then: Callable[[Any], None] | None = None,
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
        if then is None:
            res = script(keys=keys, args=args)
        else:  # the script and then's commands on one connection again (WAIT counts that connection's writes)
            r.script_load(script.script)
            q = r.pipeline(transaction=False)
            q.evalsha(script.sha, len(keys), *keys, *args)
            then(q)
            res, *extra = q.execute(raise_on_error=False)
            if isinstance(res, Exception):
                raise res
    elif isinstance(res, Exception):
        raise res
    for x in extra:
        if isinstance(x, Exception):
            raise x
    return res if then is None else (res, extra)
