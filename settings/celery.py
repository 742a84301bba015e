"""The Celery configuration, built from :class:`settings.HarvestSettings`.

Queues by kind of work (declared with kombu), each scaled by its own workers:

* ``<ns>.scan``  — beat scans and the evaluate/propose/guard stages (CPU, batchable);
* ``<ns>.orders`` — execute and confirm (I/O; acks late, prefetch 1);
* ``<ns>.housekeeping`` — market-state refresh, reconcile, sweep, heartbeat.

Reliability choices: JSON only; ``task_acks_late`` with ``task_reject_on_worker_lost`` so
a message whose worker died is redelivered (every stage is idempotent by plan state, and
execute sends at most once by a compare-and-set in Redis); prefetch 1 so one slow order
does not hold others; the Redis visibility timeout is above every time limit; results are
not stored (plan state lives in Redis, not in the result backend); task events are on for
Flower. Beat entries carry ``expires`` equal to their interval: a scan that could not run
in its own tick is dropped, never replayed as a backlog.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from settings import HarvestSettings

#: Task name → kind of queue.
ROUTES: dict[str, str] = {
    "harvest.scan_positions": "scan",
    "harvest.evaluate": "scan",
    "harvest.propose": "scan",
    "harvest.guard": "scan",
    "harvest.execute": "orders",
    "harvest.confirm": "orders",
    "harvest.refresh_market": "housekeeping",
    "harvest.reconcile": "housekeeping",
    "harvest.sweep_plans": "housekeeping",
    "harvest.heartbeat": "housekeeping",
    "harvest.refresh_exchange_info": "housekeeping",
}

#: Hard time limit of any task (s); the visibility timeout must stay above it.
TASK_TIME_LIMIT_S = 60
VISIBILITY_TIMEOUT_S = 3600


#: Beat entry name → (task, the settings field of its interval). ``harvest schedule set NAME
#: SECONDS`` changes one at runtime (see :mod:`tasks.beat`).
BEAT_ENTRIES: dict[str, tuple[str, str]] = {
    "scan": ("harvest.scan_positions", "scan_interval_s"),
    "market": ("harvest.refresh_market", "market_refresh_s"),
    "reconcile": ("harvest.reconcile", "reconcile_interval_s"),
    "sweep": ("harvest.sweep_plans", "sweep_interval_s"),
    "heartbeat": ("harvest.heartbeat", "heartbeat_interval_s"),
    "exchange_info": ("harvest.refresh_exchange_info", "exchange_info_interval_s"),
}

#: Longest beat sleep (s): a runtime interval change takes effect within it.
BEAT_MAX_LOOP_S = 1.0
#: TTL of the single-beat lock (s): a standby beat takes over at most this long after the
#: active one died. Beat extends it every tick (≤ BEAT_MAX_LOOP_S).
BEAT_LOCK_TIMEOUT_S = 10


def beat_schedule(s: HarvestSettings) -> dict:
    """Beat entries: name → {task, schedule (s), options(queue, expires = interval)}."""
    out = {}
    for name, (task, field) in BEAT_ENTRIES.items():
        interval = float(getattr(s, field))
        out[name] = {"task": task, "schedule": interval,
                     "options": {"queue": s.queue(ROUTES[task]), "expires": interval}}
    return out


def celery_config(s: HarvestSettings) -> dict:
    """The Celery app's configuration mapping (pass to ``app.conf.update``)."""
    exchange = Exchange(s.namespace, type="direct")
    kinds = ("scan", "orders", "housekeeping")
    return {
        "broker_url": s.broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "result_expires": None,  # no result backend: no celery.backend_cleanup beat entry
        "task_queues": [Queue(s.queue(k), exchange, routing_key=s.queue(k)) for k in kinds],
        "task_default_queue": s.queue("scan"),
        "task_default_exchange": s.namespace,
        "task_default_routing_key": s.queue("scan"),
        "task_routes": {name: {"queue": s.queue(kind), "routing_key": s.queue(kind)} for name, kind in ROUTES.items()},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT_S,
        "task_soft_time_limit": TASK_TIME_LIMIT_S - 10,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": beat_schedule(s),
        # One beat: celery-redbeat keeps the schedule in Redis and holds a lock there.
        "beat_scheduler": "tasks.beat:HarvestScheduler",
        "beat_max_loop_interval": BEAT_MAX_LOOP_S,
        "redbeat_redis_url": s.redis_url,
        "redbeat_key_prefix": f"{s.namespace}:beat:",
        "redbeat_lock_timeout": BEAT_LOCK_TIMEOUT_S,
        "redbeat_redis_options": {"retry_period": 30, "health_check_interval": 30},
        "harvest_namespace": s.namespace,
        "timezone": "UTC",
        "enable_utc": True,
    }
