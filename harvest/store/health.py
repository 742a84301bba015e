"""Counters and heartbeats of a namespace: :class:`CounterStore` (``<ns>:counters``, every
name checked against :mod:`harvest.store.counter_names`) and :class:`Heartbeats`
(``<ns>:heartbeat``). The exporter (:mod:`harvest.ops.metrics`) reads both."""

from __future__ import annotations

import logging
import os
import time
from functools import lru_cache
from typing import Any, Mapping

import redis

from harvest.store.connect import sync
from harvest.store.counter_names import CounterName, UnknownCounter, lookup
from harvest.store.keys import Keys

log = logging.getLogger("harvest.plans")

#: Environment variable: ``1`` makes a counter name outside the registry raise (the test suites set it).
STRICT_ENV = "HARVEST_TEST_STRICT_COUNTERS"


@lru_cache(maxsize=4096)
def _known(name: str) -> bool:
    try:
        lookup(name)
    except UnknownCounter:
        return False
    return True


def check_name(name: str) -> str:
    """``name`` when :func:`harvest.store.counter_names.lookup` knows it. An unknown name raises
    :class:`UnknownCounter` when ``HARVEST_TEST_STRICT_COUNTERS=1``; otherwise it is logged (once a
    name per process) and returned: a worker never fails on a metric."""
    if _known(name):
        return name
    if os.environ.get(STRICT_ENV) == "1":
        lookup(name)  # raises, naming the registry
    if name not in _warned:
        _warned.add(name)
        log.warning("counter %r is not in harvest.store.counter_names.COUNTERS (counted all the same)", name)
    return name


_warned: set[str] = set()


class CounterStore:
    """The namespace's counters hash ``<ns>:counters``: field → integer.

    ``r`` must be a ``redis.Redis`` created with ``decode_responses=True``."""

    def __init__(self, r: redis.Redis, ns: str) -> None:
        self.r = r
        self.key = Keys(ns).counters

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (a field of the registry, e.g. ``guard:ghost_position``);
        one round trip."""
        self.r.hincrby(self.key, check_name(name), n)

    def add(self, counter: CounterName, n: int = 1, **labels: object) -> None:
        """Add ``n`` to the field of registry entry ``counter`` for ``labels``
        (``add(entry("guard:{reason}"), reason="ghost_position")``). Raises
        :class:`UnknownCounter` for labels that do not fit its pattern."""
        self.r.hincrby(self.key, counter.field(**labels), n)

    def count_in(self, pipe: Any, name: str, n: int = 1) -> None:
        """Queue :meth:`count` on ``pipe`` (a redis-py pipeline)."""
        pipe.hincrby(self.key, check_name(name), n)

    def set_in(self, pipe: Any, values: Mapping[str, int]) -> None:
        """Queue setting gauge fields (``acct:<account>:positions_open`` …) on ``pipe``."""
        pipe.hset(self.key, mapping={check_name(f): v for f, v in values.items()})

    def read(self) -> dict[str, int]:
        """Every counter of the namespace; a field that is not an integer is left out (and logged)."""
        out = {}
        for k, v in sync(self.r.hgetall(self.key)).items():
            try:
                out[k] = int(v)
            except ValueError:
                log.warning("unreadable record %s#%s: %r is not a count", self.key, k, v[:40])
        return out


class Heartbeats:
    """The namespace's heartbeats ``<ns>:heartbeat``: component name → Unix seconds it last reported."""

    def __init__(self, r: redis.Redis, ns: str) -> None:
        self.r = r
        self.key = Keys(ns).heartbeat

    def beat(self, name: str, now: float | None = None) -> None:
        """Record a heartbeat (Unix time, default now) for ``name``."""
        self.r.hset(self.key, name, repr(time.time() if now is None else now))

    def beat_in(self, pipe: Any, name: str, now: float | None = None) -> None:
        """Queue :meth:`beat` on ``pipe`` (a redis-py pipeline)."""
        pipe.hset(self.key, name, repr(time.time() if now is None else now))

    def read(self) -> dict[str, float]:
        """Every heartbeat: ``{name: Unix seconds}``. Raises ValueError for a value that is not a number."""
        return {k: float(v) for k, v in sync(self.r.hgetall(self.key)).items()}
