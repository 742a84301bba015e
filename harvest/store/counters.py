"""Metric storage in Redis, written by every worker (the exporter, :mod:`harvest.ops.metrics`,
reads it): :class:`RedisHistogram` — a histogram whose buckets are fields of one Redis hash
(``HINCRBY``; non-cumulative in Redis, cumulative at exposition) — and the process's deferred
observations, flushed after each task."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import redis

from harvest.store.connect import sync

if TYPE_CHECKING:
    from harvest.store.keys import Keys

#: Upper bounds (s) of the scan-duration buckets.
SCAN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Upper bounds (s) of the scan-to-fill latency buckets (scan tick → order acknowledged).
SCAN_TO_FILL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Upper bounds (s) of the queue-wait buckets (published → started by a worker).
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RedisHistogram:
    """A labelled histogram in one Redis hash ``key``: fields ``<label>|le=<bound>``,
    ``<label>|sum`` and ``<label>|count``. Bounds in seconds (or any unit), ascending."""

    def __init__(self, r: redis.Redis, key: str, buckets: Sequence[float]):
        self.r = r
        self.key = key
        self.buckets = tuple(buckets)

    def fields(self, value: float, label: str = "") -> tuple[list[str], tuple[str, str]]:
        """The hash fields one observation writes: ``([bucket field, count field],
        (sum field, value))`` — each of the first list is incremented by 1 (``HINCRBY``),
        the sum by the value (``HINCRBYFLOAT``). For writers outside redis-py (a Lua script)."""
        bound = next((b for b in self.buckets if value <= b), math.inf)
        return [f"{label}|le={bound!r}", f"{label}|count"], (f"{label}|sum", repr(float(value)))

    def observe(self, value: float, label: str = "", pipe: Any = None) -> None:
        """Record one observation (one round trip, or added to ``pipe``). NaN is ignored."""
        if value != value:  # NaN
            return
        incr, (sum_field, _) = self.fields(value, label)
        p = pipe if pipe is not None else self.r.pipeline(transaction=False)
        for f in incr:
            p.hincrby(self.key, f, 1)
        p.hincrbyfloat(self.key, sum_field, value)
        if pipe is None:
            p.execute()

    def snapshot(self) -> dict[str, tuple[list[tuple[str, float]], float, int]]:
        """label → (cumulative buckets ``[(le, count)]`` ending with ``+Inf``, sum, count)."""
        raw = sync(self.r.hgetall(self.key))
        per: dict[str, dict[str, str]] = {}
        for f, v in raw.items():
            label, _, kind = f.rpartition("|")
            per.setdefault(label, {})[kind] = v
        out = {}
        for label, fields in per.items():
            acc = 0.0
            cum = []
            for b in (*self.buckets, math.inf):
                acc += int(fields.get(f"le={b!r}", 0))
                cum.append(("+Inf" if b == math.inf else repr(b), acc))
            out[label] = (cum, float(fields.get("sum", 0.0)), int(fields.get("count", 0)))
        return out


class DeferredObservations:
    """Histogram observations of this process waiting for the next Redis round trip a stage
    makes anyway: :meth:`drain_into` adds them to that pipeline (the plan read that starts
    guard, execute and confirm), so a metric costs no round trip of its own. :meth:`flush`
    writes what is left at the end of a task (one round trip, only when nothing carried them).
    Per process, not thread-safe: Celery's prefork pool runs one task at a time per process."""

    def __init__(self) -> None:
        self._items: list[tuple[RedisHistogram, float, str]] = []

    @property
    def pending(self) -> bool:
        """Whether any observation is queued."""
        return bool(self._items)

    def add(self, hist: RedisHistogram, value: float, label: str = "") -> None:
        """Queue one observation (seconds) of ``hist`` under ``label``."""
        self._items.append((hist, value, label))

    def drain_into(self, pipe: Any) -> None:
        """Add every queued observation to ``pipe`` (a redis-py pipeline) and forget them."""
        items, self._items = self._items, []
        for hist, value, label in items:
            hist.observe(value, label, pipe=pipe)

    def flush(self, r: redis.Redis) -> None:
        """Write the queued observations now (one round trip; none when nothing is queued)."""
        if self.pending:
            p = r.pipeline(transaction=False)
            self.drain_into(p)
            p.execute()


#: This process's queued observations (see :class:`DeferredObservations`).
DEFERRED = DeferredObservations()


def scan_duration(r: redis.Redis, ns: str) -> RedisHistogram:
    """Wall seconds of each scan (observed by :func:`tasks.scan.scan_positions`)."""
    return RedisHistogram(r, f"{ns}:metrics:scan_duration", SCAN_BUCKETS)


def scan_to_fill(r: redis.Redis, ns: str) -> RedisHistogram:
    """Scan tick → FILLED seconds by action (observed by :meth:`harvest.store.PlanStore.transition`)."""
    return RedisHistogram(r, f"{ns}:metrics:scan_to_fill", SCAN_TO_FILL_BUCKETS)


def queue_wait(r: redis.Redis, ns: str) -> RedisHistogram:
    """Published → started seconds by queue (observed by the worker's task_prerun hook)."""
    return RedisHistogram(r, f"{ns}:metrics:queue_wait", QUEUE_WAIT_BUCKETS)


def account_counter(counters: dict[str, int], account: str, name: str) -> int:
    """The per-account counter ``name`` (field ``acct:<account>:<name>`` of the namespace's
    counters hash), 0 when absent."""
    return int(counters.get(f"acct:{account}:{name}", 0))


def account_decisions(r: redis.Redis, keys: Keys, accounts: Sequence[str]) -> dict[str, dict[str, int]]:
    """Each account's stuck decisions as its last scan saw them (``keys``: a
    :class:`harvest.store.keys.Keys`): ``{account: {"waiting": n, "abandoned:<reason>": n}}``,
    one round trip."""
    p = r.pipeline(transaction=False)
    for a in accounts:
        p.hgetall(keys.decisions(a))
    return {
        a: {f: int(v) for f, v in d.items() if f != "updated_at" and v.lstrip("-").isdigit()}
        for a, d in zip(accounts, p.execute(), strict=True)
    }
