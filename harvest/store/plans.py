"""Plans in Redis: :class:`PlanStore`, where a plan changes state (:meth:`PlanStore.transition`,
one compare-and-set script), its lineage, sends, archive and the results stream."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterable

import redis

from harvest.domain.models import MarketState, Plan, PlanState, SendState
from harvest.domain.plans import TERMINAL, LatestPlan, allowed_from
from harvest.store.books import BookStore
from harvest.store.compat import PlanStoreDelegates
from harvest.store.connect import sync
from harvest.store.counters import DEFERRED, scan_to_fill
from harvest.store.keys import Keys
from harvest.store.market import market_state_from_json
from harvest.store.plan_record import log_transition, parse_plan, plan_history
from harvest.store.records import SCHEMA, NewerVersion, Unreadable, UnreadableRecord, check_version
from harvest.store.scripts import (
    _ARCHIVE_LUA,
    _CLAIM_RESEND_LUA,
    _CREATE_LUA,
    _LATEST_LUA,
    _MARK_SEND_LUA,
    _PLAN_AND_BOOK_LUA,
    _TRANSITION_LUA,
    LEDGER_LUA,
    _enc,
    _flat,
    _lua_opts,
    run_script,
)

log = logging.getLogger("harvest.plans")


#: The state before of a transition applied but not acknowledged by enough replicas.
NOT_REPLICATED = "NOT_REPLICATED"


def _wait_replicas(n: int, wait_s: float) -> Callable[[Any], None]:
    """``then`` for :func:`run_script`: Redis ``WAIT n timeout`` after the script, on its connection."""
    return lambda p: p.execute_command("WAIT", n, max(1, int(wait_s * 1000)))


class PlanStore(PlanStoreDelegates):
    """Plans in Redis with atomic, audited transitions (see module docstring). Counters,
    heartbeats and the recovery marker have their own stores (:mod:`harvest.store.health`,
    :mod:`harvest.store.recovery`); the methods of theirs still called here delegate.

    ``r`` must be a ``redis.Redis`` created with ``decode_responses=True``.
    """

    def __init__(self, r: redis.Redis, ns: str, stream_maxlen: int = 100_000) -> None:
        self.r = r
        self.k = Keys(ns)
        self.maxlen = stream_maxlen
        self._create = r.register_script(_CREATE_LUA)
        self._latest = r.register_script(_LATEST_LUA)
        self._archive = r.register_script(_ARCHIVE_LUA)
        self._transition = r.register_script(_TRANSITION_LUA)
        self._mark_send = r.register_script(_MARK_SEND_LUA)
        self._claim_resend = r.register_script(_CLAIM_RESEND_LUA)
        self._plan_and_book = r.register_script(_PLAN_AND_BOOK_LUA)
        self._init_delegates(r, ns)  # count, beat, state_known …: see harvest.store.compat
        self._ledger = r.register_script(
            LEDGER_LUA + "if redis.call('EXISTS', KEYS[1]) == 1 then ledger(KEYS[1], ARGV[1]) end"
        )  # noqa: E501
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
        fields["v"] = SCHEMA["plan"]  # the layout this version writes (harvest.store.records)
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
            log_transition(pid, plan["symbol"], _enc(plan["action"]), "", PlanState.PROPOSED, "proposed")
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
        replicas: int = 0,
        replica_wait_s: float = 1.0,
    ) -> tuple[bool, str, Plan | None]:
        """:meth:`transition`, and the plan as it is after the transition (None when it was
        not applied), in the same round trip: ``(applied, state before, plan)``. Execute uses
        it for APPROVED → SUBMITTED, which needs the plan only once it holds the send.
        ``require_recovered``: apply only while the state is known whole
        (:attr:`Keys.recovered` exists, see :mod:`harvest.services.recovery`); otherwise nothing is
        written and the state before reads ``STATE_NOT_RECOVERED``; and only while trading is not
        HALTED for the deployment or the plan's account (:attr:`Keys.trading`; else ``HALTED``).
        ``replicas`` > 0: the write must reach that many replicas within ``replica_wait_s``
        (Redis ``WAIT`` on the same connection, right after the script); when fewer acknowledge
        it, the transition stands but the result is ``(True, "NOT_REPLICATED", None)``: a
        failover could still lose it, so nothing may be sent on it."""
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
            wait=(replicas, replica_wait_s) if replicas > 0 else None,
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
        wait: tuple[int, float] | None = None,
    ) -> tuple[bool, str, Plan | None]:
        """The one call of :data:`_TRANSITION_LUA` (see :meth:`transition`)."""
        now = time.time() if now is None else now
        opts: dict[str, Any] = {
            "from": sorted(allowed_from(to)),
            "read": read or None,
            "require": require,
            "trading": trading,
            "v": SCHEMA["plan"],  # a plan a newer version wrote is never moved by this one
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
        then = None if wait is None else _wait_replicas(*wait)
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
            then=then,
        )
        acked = None
        if then is not None:
            res, (acked,) = res
        applied = bool(int(res[0]))
        if not applied:
            return False, res[1], None
        log_transition(plan_id, res[3], res[2], res[1], to, reason)
        if wait is not None and int(acked or 0) < wait[0]:
            log.error(
                "plan %s: %s reached %s of %d replicas within %.1f s; nothing is sent on it",
                plan_id,
                to,
                acked,
                wait[0],
                wait[1],
            )
            return True, NOT_REPLICATED, None
        flat = res[4] if read else []
        plan = self._parse_at(self.k.plan(plan_id), dict(zip(flat[::2], flat[1::2], strict=True))) if read else None
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

    def mark_accepted(self, plan_id: str, step: int, acked_at: float) -> bool:
        """Record that send ``step`` of a SUBMITTED plan was accepted by the exchange at
        ``acked_at`` (Unix s) — only while that send is still ``sending``, so a repeat records
        nothing. Returns whether it was recorded."""
        keys, args = self._mark_send_args(
            plan_id, step, SendState.ACCEPTED, None, {"acked_at": acked_at}, acked_at, only_from=SendState.SENDING
        )
        # the metric observations the task has queued ride along (no round trip of their own)
        return bool(run_script(self.r, self._mark_send, keys, args))

    def get_after_accepted(
        self, plan_id: str, step: int, acked_at: float, then: Callable[[Any], None] | None = None
    ) -> Any:
        """Record that send ``step`` of a SUBMITTED plan was accepted by the exchange at
        ``acked_at`` (Unix s, as execute measured it) — only while that send is still
        ``sending``, so a repeat records nothing — and read the plan back, in one round trip
        (with the queued metric observations). Confirm uses it: execute hands the
        acknowledgement on instead of spending a round trip of its own on it. Returns the
        plan, or None when no such plan_id exists; with ``then`` (more reads queued on the same
        pipeline) ``(plan or None, [their replies])``."""
        keys, args = self._mark_send_args(
            plan_id, step, SendState.ACCEPTED, None, {"acked_at": acked_at}, acked_at, only_from=SendState.SENDING
        )

        def reads(p: Any) -> None:
            p.hgetall(self.k.plan(plan_id))
            if then is not None:
                then(p)

        _, (h, *extra) = run_script(self.r, self._mark_send, keys, args, then=reads)
        plan = self._parse_at(self.k.plan(plan_id), h) if h else None
        return plan if then is None else (plan, extra)

    def claim_resend(
        self, plan_id: str, step: int, client_order_id: str, replicas: int = 0, replica_wait_s: float = 1.0
    ) -> str:
        """Claim send ``step`` (≥ 1) of a SUBMITTED plan whose previous send is known not
        executed; switches the plan to that step's clientOrderId. Exactly one caller wins:
        ``"claimed"``, else ``"not_claimed"``. ``replicas`` > 0: the claim must reach that
        many replicas within ``replica_wait_s`` (as :meth:`transition_and_get`), else
        ``"NOT_REPLICATED"`` (claimed, but nothing may be sent on it)."""
        keys = [self.k.plan(plan_id), self.k.results]
        args: list[Any] = [plan_id, step, client_order_id, _enc(time.time()), self.maxlen]
        if replicas <= 0:
            return "claimed" if self._claim_resend(keys=keys, args=args) else "not_claimed"
        won, (acked,) = run_script(
            self.r, self._claim_resend, keys, args, then=_wait_replicas(replicas, replica_wait_s)
        )
        if not won:
            return "not_claimed"
        return "claimed" if int(acked) >= replicas else NOT_REPLICATED

    def get(self, plan_id: str) -> Plan | None:
        """The plan, or None when no such plan_id exists (queued metric observations ride
        along on the same round trip)."""
        if not DEFERRED.pending:
            h = sync(self.r.hgetall(self.k.plan(plan_id)))
        else:
            p = self.r.pipeline(transaction=False)
            p.hgetall(self.k.plan(plan_id))
            DEFERRED.drain_into(p)
            h = p.execute()[0]
        if not h:
            return self.get_archived(plan_id)
        return self._parse_at(self.k.plan(plan_id), h)

    def get_archived(self, plan_id: str) -> Plan | None:
        """A plan moved to the archive after its retention (:meth:`archive_before`), or None.
        Raises :class:`UnreadableRecord` when the archived copy does not parse."""
        raw = sync(self.r.hget(self.k.archive, plan_id))
        if not raw:
            return None
        try:
            return parse_plan(json.loads(raw))
        except ValueError as e:
            raise UnreadableRecord(Unreadable.of(f"{self.k.archive}#{plan_id}", e)) from e

    def _parse_at(self, key: str, h: dict[str, str]) -> Plan:
        """:meth:`parse`, raising :class:`UnreadableRecord` (naming ``key``) when ``h`` does not parse."""
        try:
            return parse_plan(h)
        except ValueError as e:  # pydantic's ValidationError and json's JSONDecodeError are ValueErrors
            raise UnreadableRecord(Unreadable.of(key, e)) from e

    def archive_before(self, cutoff: float, limit: int = 1000) -> int:
        """Move terminal plans last changed before ``cutoff`` (Unix s) out of the live
        structures into the archive (their fields stay readable by :meth:`get`; their
        transitions stay on the results stream until it is trimmed; their lineage keeps the
        state each ended in). At most ``limit`` of the oldest plans are looked at per call.
        Returns how many were archived."""
        pids = sync(self.r.zrangebyscore(self.k.plan_index, "-inf", f"({cutoff!r}", start=0, num=limit))
        if not pids:
            return 0
        return int(
            self._archive(
                keys=[self.k.plan_index, self.k.archive, self.k.archived, f"{self.k.ns}:lineage:"],
                args=[repr(cutoff), self.k.plan_prefix, *pids],
            )
        )

    def get_with_book(
        self, plan_id: str
    ) -> tuple[Plan | None, dict[str, Any] | None, MarketState | None, dict[str, str]]:
        """The plan, the book entry of its position (decoded as by :meth:`BookStore.decode`;
        None when there is none), its symbol's cached market state (None when there is none or
        it does not parse) and the trading states (``{"*" or account: state}``, see
        :mod:`harvest.domain.trading`) in one round trip, which also carries the queued metric
        observations. ``(None, None, None, trading)`` when no such plan_id exists. Raises
        :class:`UnreadableRecord` when the plan does not parse (or a newer version wrote it)."""
        flat_plan, flat_book, market, flat_trading = run_script(
            self.r,
            self._plan_and_book,
            keys=[self.k.plan(plan_id)],
            args=[self.k.book_prefix, f"{self.k.ns}:market:", self.k.trading],
        )
        trading = dict(zip(flat_trading[::2], flat_trading[1::2], strict=True))
        if not flat_plan:
            return None, None, None, trading
        plan = self._parse_at(self.k.plan(plan_id), dict(zip(flat_plan[::2], flat_plan[1::2], strict=True)))
        entry = BookStore.decode(dict(zip(flat_book[::2], flat_book[1::2], strict=True))) if flat_book else None
        try:
            state = market_state_from_json(market) if market else None
        except ValueError:
            state = None
        return plan, entry, state, trading

    def get_with(self, plan_id: str, then: Callable[[Any], None]) -> tuple[Plan | None, list[Any]]:
        """The plan (None when no such plan_id exists) and the replies of the reads ``then``
        queues on the same pipeline, in one round trip with the queued metric observations.
        Raises :class:`UnreadableRecord` when the plan does not parse."""
        p = self.r.pipeline(transaction=False)
        p.hgetall(self.k.plan(plan_id))
        then(p)
        n = len(p)
        DEFERRED.drain_into(p)
        h, *extra = p.execute()[:n]
        plan = self._parse_at(self.k.plan(plan_id), h) if h else self.get_archived(plan_id)
        return plan, extra

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
            att, state, reason, upd, oq, eq, rq, retry = (*row, "")[:8]
            out.append(
                LatestPlan(
                    int(att),
                    state,
                    reason,
                    float(upd or 0),
                    float(oq) if oq else None,
                    float(eq) if eq else None,
                    float(rq) if rq else None,
                    operator_retry=bool(retry),
                )
            )
        return out

    def request_retry(self, plan: Plan, who: str) -> None:
        """Ask for the next attempt of ``plan``'s decision now (``harvest plan retry``): marks its
        lineage (the next plan the scan makes for the decision skips the backoff and the attempt
        bound, and spends the mark) and records who asked on the results stream."""
        p = self.r.pipeline(transaction=True)
        p.hset(self.k.lineage(plan.lineage), "retry", json.dumps({"who": who[:64], "ts": time.time()}))
        p.xadd(
            self.k.results,
            {
                "v": SCHEMA["ledger"],
                "plan_id": plan.plan_id,
                "symbol": plan.symbol,
                "action": plan.action.value,
                "from": plan.state,
                "to": plan.state,
                "reason": "operator_retry",
                "ts": repr(time.time()),
                "data": json.dumps({"who": who[:64]}),
            },
            maxlen=self.maxlen,
            approximate=True,
        )
        xid = p.execute()[-1]
        self._ledger(keys=[self.k.plan(plan.plan_id)], args=[xid])

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
        return sync(self.r.zrangebyscore(self.k.open_plans, "-inf", now, start=0, num=limit))

    def count_open(self) -> int:
        """Number of non-terminal plans."""
        return int(sync(self.r.zcard(self.k.open_plans)))

    def get_many(
        self, plan_ids: list[str], batch: int = 500, unreadable: list[Unreadable] | None = None
    ) -> Iterable[Plan]:
        """The plans of ``plan_ids`` that exist, in that order (one round trip per ``batch``).
        A plan that does not parse is left out, logged, and appended to ``unreadable`` when
        given (a view shows it as such and goes on)."""
        for i in range(0, len(plan_ids), batch):
            p = self.r.pipeline(transaction=False)
            chunk = plan_ids[i : i + batch]
            for pid in chunk:
                p.hgetall(self.k.plan(pid))
            for pid, h in zip(chunk, p.execute(), strict=True):
                if not h:
                    continue
                try:
                    yield self._parse_at(self.k.plan(pid), h)
                except UnreadableRecord as e:
                    log.warning("%s", e)
                    if unreadable is not None:
                        unreadable.append(e.record)

    def all_plans(self, batch: int = 500, unreadable: list[Unreadable] | None = None) -> Iterable[Plan]:
        """Every plan, oldest first (unreadable ones as in :meth:`get_many`)."""
        return self.get_many(sync(self.r.zrange(self.k.plan_index, 0, -1)), batch, unreadable)

    def open_plans(self, unreadable: list[Unreadable] | None = None) -> list[Plan]:
        """Every non-terminal plan (unreadable ones as in :meth:`get_many`)."""
        return list(self.get_many(sync(self.r.zrange(self.k.open_plans, 0, -1)), unreadable=unreadable))

    def unreadable_open(self, unreadable: list[Unreadable], limit: int = 10_000) -> None:
        """Append to ``unreadable`` each non-terminal plan (at most ``limit``, oldest expiry
        first) this version cannot read because a newer version wrote it (its ``v`` or its
        state), reading two fields a plan in one round trip: what ``/metrics`` shows on every
        scrape without parsing every plan."""
        pids = sync(self.r.zrange(self.k.open_plans, 0, limit - 1))
        if not pids:
            return
        p = self.r.pipeline(transaction=False)
        for pid in pids:
            p.hmget(self.k.plan(pid), ["v", "state"])
        for pid, (v, state) in zip(pids, p.execute(), strict=True):
            if state is None:
                continue
            try:
                check_version("plan", v)
                if state not in PlanState.__members__:
                    raise NewerVersion(f"plan state {state!r} unknown to this version (written by a newer version?)")
            except ValueError as e:
                unreadable.append(Unreadable.of(self.k.plan(pid), e))

    def history(self, plan_id: str, sends: bool = False) -> list[dict[str, str]]:
        """State transitions of one plan from the results stream, oldest first (``sends``: also
        its send records): :func:`harvest.store.plan_record.plan_history`."""
        return plan_history(self.r, self.k, plan_id, sends)

    def inflight_many(self, account: str, symbols: list[str]) -> list[str | None]:
        """Holder plan_id of each position's in-flight lock (None when free)."""
        if not symbols:
            return []
        return sync(self.r.mget([self.k.inflight(account, s) for s in symbols]))
