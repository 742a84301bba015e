"""PlanStore's former counter, heartbeat and recovery-marker methods (issue 34), kept for one
release as delegates to the stores that now own them: :class:`harvest.store.health.CounterStore`,
:class:`harvest.store.health.Heartbeats`, :class:`harvest.store.recovery.RecoveryMarker`
(``rt.counters``, ``rt.heartbeats``, ``rt.recovery``). New code calls those; these go once
no caller is left."""

from __future__ import annotations

from typing import Any

import redis

from harvest.store.health import CounterStore, Heartbeats
from harvest.store.recovery import RecoveryMarker


class PlanStoreDelegates:
    """Mixin of :class:`harvest.store.PlanStore`: each method calls the owning store's."""

    counts: CounterStore
    beats: Heartbeats
    recovery: RecoveryMarker

    def _init_delegates(self, r: redis.Redis, ns: str) -> None:
        self.counts = CounterStore(r, ns)
        self.beats = Heartbeats(r, ns)
        self.recovery = RecoveryMarker(r, ns)

    def count(self, name: str, n: int = 1) -> None:
        """:meth:`CounterStore.count`."""
        self.counts.count(name, n)

    def counters(self) -> dict[str, int]:
        """:meth:`CounterStore.read`."""
        return self.counts.read()

    def beat(self, name: str, now: float | None = None) -> None:
        """:meth:`Heartbeats.beat`."""
        self.beats.beat(name, now)

    def heartbeats(self) -> dict[str, float]:
        """:meth:`Heartbeats.read`."""
        return self.beats.read()

    def state_known(self) -> bool:
        """:meth:`RecoveryMarker.state_known`."""
        return self.recovery.state_known()

    def state_known_in(self, p: redis.client.Pipeline) -> None:
        """:meth:`RecoveryMarker.state_known_in`."""
        self.recovery.state_known_in(p)

    def state_known_of(self, reply: Any) -> bool:
        """:meth:`RecoveryMarker.state_known_of`."""
        return self.recovery.state_known_of(reply)

    def mark_recovered(self, since_run_id: str = "") -> bool:
        """:meth:`RecoveryMarker.mark_recovered`."""
        return self.recovery.mark_recovered(since_run_id)

    def server_id(self) -> str:
        """:meth:`RecoveryMarker.server_id`."""
        return self.recovery.server_id()
