"""Redis persistence: plans and their life cycle (:class:`PlanStore`), the position book,
cached market state, counters and heartbeats (:mod:`harvest.store.health`, every counter
named in :mod:`harvest.store.counter_names`) and the state-recovered marker
(:mod:`harvest.store.recovery`).

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
    <ns>:state:recovered             string the state is known whole: the run_id of the server it
                                            was set on (harvest.services.recovery)
    <ns>:plans:recovered             set    plan_ids known only from the exchange's records
    <ns>:plans:archive               hash   terminal plans past their retention (JSON), still readable
    <ns>:trading                     hash   trading state: deployment (``*``) and per account
    <ns>:plans:archived              zset   their plan_ids by last change
    <ns>:stream:results              stream one entry per transition
    <ns>:inflight:<account>:<symbol> string plan_id holding the position (TTL = plan TTL)
    <ns>:book:<account>:<symbol>     hash   harvest's book of a position epoch
    <ns>:market:<symbol>             string MarketState JSON
    <ns>:counters                    hash   guard blocks, dedup skips, scans … (harvest.store.counter_names)
    <ns>:decisions                   hash   decisions retrying / abandoned at the last scan
    <ns>:heartbeat                   hash   name → last Unix time
    <ns>:metrics:*                   hashes plans by action|state, orders by result, sends by
                                            outcome, histograms (see harvest.ops.metrics)
"""

from __future__ import annotations

from harvest.store.books import BookStore
from harvest.store.health import CounterStore, Heartbeats
from harvest.store.keys import Keys
from harvest.store.market import MarketCache, market_state_from_json
from harvest.store.plans import PlanStore
from harvest.store.recovery import RecoveryMarker
from harvest.store.scripts import FILLED_STATES, run_script

__all__ = [
    "BookStore",
    "CounterStore",
    "FILLED_STATES",
    "Heartbeats",
    "Keys",
    "MarketCache",
    "PlanStore",
    "RecoveryMarker",
    "market_state_from_json",
    "run_script",
]
