"""The processes of a chaos run (:mod:`harvest.ops.chaos`, :mod:`harvest.ops.hosts`): its
Celery workers, beat and ``harvest streams`` by role, restarted when one exits as systemd's
``Restart=always`` would (:class:`Procs`); a read that outlives a restarting state Redis
(:func:`redis_safe`); the run's RabbitMQ queues removed afterwards (:func:`delete_amqp_queues`)."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Callable, TypeVar

import redis

from harvest.ops.loadgen import start_worker
from harvest.ops.procs import CeleryProcess, HarvestProcess

T = TypeVar("T")


class Procs:
    """The run's Celery processes by role, restarted when one exits (counted)."""

    def __init__(self, env: dict[str, str], ns: str):
        self.env, self.ns = env, ns
        self.procs: dict[str, CeleryProcess] = {}
        self.restarts: Counter[str] = Counter()
        self.expected_down: set[str] = set()

    def start(self, role: str) -> CeleryProcess:
        if role == "scan_worker":
            p = start_worker(self.env, self.ns, "scan,housekeeping", 2)
        elif role == "orders_worker":
            p = start_worker(self.env, self.ns, "orders", 2)
        elif role == "streams":
            p = HarvestProcess("streams", self.env).start()
        else:  # beat, beat2
            p = CeleryProcess("beat", self.env).start()
        self.procs[role] = p
        return p

    def supervise(self) -> None:
        for role, p in list(self.procs.items()):
            if role not in self.expected_down and p.proc is not None and p.proc.poll() is not None:
                self.restarts[role] += 1
                p.stop()  # exited on its own: its log leaves its temporary file (into memory)
                self.start(role)

    def kill(self, role: str) -> None:
        """SIGKILL the role's whole process group (main process and pool)."""
        self.expected_down.add(role)
        self.procs[role].kill()

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.stop(15)


def redis_safe(fn: Callable[[], T], default: T) -> T:
    """``fn()``, or ``default`` while the state Redis is restarting."""
    try:
        return fn()
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return default


def delete_amqp_queues(broker: str, ns: str) -> None:
    """Remove the run's queues from RabbitMQ (they are named after its namespace)."""
    try:
        from kombu import Connection

        with Connection(broker, connect_timeout=5) as conn:
            ch = conn.channel()
            for k in ("scan", "orders", "housekeeping"):
                try:
                    ch.queue_delete(f"{ns}.{k}")
                except conn.channel_errors:
                    ch = conn.channel()
    except Exception as e:  # pragma: no cover - best effort clean-up
        print(f"chaos: queues of {ns} not removed from the broker: {e}", file=sys.stderr)
