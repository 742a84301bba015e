"""The Celery configuration, built from :class:`settings.HarvestSettings`.

Queues by kind of work (declared with kombu), each scaled by its own workers:

* ``<ns>.scan``  — beat scans and the evaluate/propose/guard stages (CPU, batchable);
* ``<ns>.orders`` — execute and confirm (I/O; acks late, prefetch 1);
* ``<ns>.housekeeping`` — market-state refresh, reconcile, sweep, heartbeat.

Reliability choices for orders (each is a key of :func:`celery_config`):

* **JSON only** (``task_serializer``/``accept_content``/``event_serializer``): a message
  in any other format is refused by kombu before a task sees it.
* **Acks late + reject on worker lost** (``task_acks_late``, ``task_reject_on_worker_lost``):
  a message is acknowledged after its task returned, so one whose worker process died
  (SIGKILL, OOM, hard time limit) is delivered again. That is safe because every stage is
  idempotent by plan state, and execute sends at most once: APPROVED → SUBMITTED is a
  compare-and-set in Redis taken *before* the send, and a redelivery that finds SUBMITTED
  hands over to confirm, which looks the order up by clientOrderId.
* **Prefetch 1** (``worker_prefetch_multiplier``): one slow order does not hold others
  reserved behind it, and a killed worker takes back at most one message per process.
* **Cancel long-running tasks on connection loss**
  (``worker_cancel_long_running_tasks_on_connection_loss``): with acks late, a message
  whose broker connection dropped is delivered again; the running copy is cancelled so the
  two never run side by side.
* **Time limits per stage** (:data:`TIME_LIMITS_S`, on each task's decorator): the hard
  limit kills the pool process (the message is then redelivered, see above); the soft
  limit comes first and raises inside the task, where execute records the send outcome as
  unknown and confirm looks it up.
* **Visibility timeout above every time limit and countdown**
  (:func:`visibility_timeout_s`): on Redis, a reserved message not acknowledged within it
  is given to another worker. Retries (execute's backoff, confirm's look-ups) are ETA
  messages held unacknowledged by the worker until due, and never later than the plan TTL,
  so the timeout is the plan TTL plus the longest time limit plus a margin: an ETA message
  is never handed out twice.
* **Retry delays set everywhere Celery reads one**: each retry passes ``countdown``
  explicitly; ``default_retry_delay`` of every task is set too (an uncounted retry waits
  that long, not Celery's 180 s); publishing retries with :data:`PUBLISH_RETRY_POLICY`;
  the broker connection is retried forever with the same bounded backoff.
* **Expires**: every plan task carries ``expires`` = the plan TTL (:mod:`workflows`) and
  every beat entry ``expires`` = its interval: a message that waited past it is dropped by
  the worker unexecuted (and counted, :mod:`tasks.stale`), never replayed as a backlog.
* **One beat**: celery-redbeat keeps the schedule in Redis and holds a lock there; a second
  beat stands by until the lock lapses.
* Results are not stored (plan state lives in Redis, not in the result backend); task
  events are on for Flower.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from kombu import Exchange, Queue

from settings import HarvestSettings, tls_options
from settings.sentinel import is_sentinel_url, kombu_broker, redbeat_options

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

#: Hard time limit of any task without its own entry in :data:`TIME_LIMITS_S` (s).
TASK_TIME_LIMIT_S = 60
#: Per stage: task → (soft, hard) time limit (s). The soft limit raises
#: ``SoftTimeLimitExceeded`` inside the task; the hard one kills its pool process. An order
#: stage is one exchange request (≤ ``venue_timeout_s``, at most 60 s) plus Redis writes.
TIME_LIMITS_S: dict[str, tuple[float, float]] = {
    "harvest.scan_positions": (20, 30),
    "harvest.evaluate": (10, 15),
    "harvest.propose": (10, 15),
    "harvest.guard": (20, 30),
    "harvest.execute": (75, 90),
    "harvest.confirm": (75, 90),
    "harvest.refresh_market": (50, 60),
    "harvest.reconcile": (50, 60),
    "harvest.sweep_plans": (50, 60),
    "harvest.heartbeat": (10, 15),
    "harvest.refresh_exchange_info": (50, 60),
}
#: Margin (s) of the visibility timeout above the longest countdown + time limit.
VISIBILITY_MARGIN_S = 60
#: Retry policy of publishing a message (and of reconnecting to the broker): attempts at
#: 0.2 s, 0.4 s, … up to 2 s apart, at most 10 attempts (~12 s), then the error propagates.
PUBLISH_RETRY_POLICY = {"max_retries": 10, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 2.0}


def visibility_timeout_s(s: HarvestSettings) -> float:
    """Redis visibility timeout (s): above the longest countdown a harvest message carries
    (every retry lands before the plan TTL, ``plan_ttl_s``; a retry delay is at most
    1.25 × ``retry_backoff_max_s``) plus the longest hard time limit, plus
    :data:`VISIBILITY_MARGIN_S`."""
    longest_countdown = max(s.plan_ttl_s, 1.25 * s.retry_backoff_max_s, s.confirm_retry_s)
    longest_limit = max([TASK_TIME_LIMIT_S, *(hard for _, hard in TIME_LIMITS_S.values())])
    return float(longest_countdown + longest_limit + VISIBILITY_MARGIN_S)


def default_retry_delay_s(s: HarvestSettings, task: str) -> float:
    """``default_retry_delay`` (s) of a task: confirm's look-up interval for confirm, the
    first backoff step for the others (each retry also passes its own countdown)."""
    return s.confirm_retry_s if task == "harvest.confirm" else s.retry_backoff_s


def task_annotations(s: HarvestSettings) -> dict[str, dict]:
    """Per-task attributes that depend on the settings, applied at registration: the retry
    delay. (Each task's time limits, acks and retry bound are declared on its decorator,
    :func:`tasks.common.contract`.)"""
    return {name: {"default_retry_delay": default_retry_delay_s(s, name)} for name in TIME_LIMITS_S}


#: Beat entry name → (task, the settings field of its interval). ``harvest schedule set NAME
#: SECONDS`` changes one at runtime (see :mod:`harvest.services.schedule`).
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
        out[name] = {
            "task": task,
            "schedule": interval,
            "options": {"queue": s.queue(ROUTES[task]), "expires": interval},
        }
    return out


def split_password(url: str) -> tuple[str, dict[str, str]]:
    """A Redis URL without its credentials, and the credentials as client options
    (``{"username", "password"}``, present ones only). Celery masks ``broker_url`` where it
    shows its configuration (``celery inspect conf``, Flower's worker pages) but not other keys
    holding a URL; a password passed as an option under a ``password`` key is masked."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url, {}
    creds = {k: unquote(v) for k, v in (("username", parts.username), ("password", parts.password)) if v}
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), creds


def celery_config(s: HarvestSettings) -> dict:
    """The Celery app's configuration mapping (pass to ``app.conf.update``)."""
    exchange = Exchange(s.namespace, type="direct")
    kinds = ("scan", "orders", "housekeeping")
    broker_url, transport = s.broker, {"visibility_timeout": visibility_timeout_s(s)}
    if is_sentinel_url(broker_url):  # kombu's sentinel:// transport, told the primary's name
        broker_url, master = kombu_broker(broker_url)
        transport |= master
    if is_sentinel_url(s.redis_url):  # redbeat's own Sentinel form; the password as an option (masked)
        redbeat_url, redbeat_creds = redbeat_options(s.redis_url)
    else:
        redbeat_url, redbeat_creds = split_password(s.redis_url)
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,  # a worker keeps reconnecting; it never exits on a broker outage
        "broker_transport_options": transport,
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
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
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Celery's consumer with a guard: a broker outage never ends the worker (tasks/consumer.py).
        "worker_consumer": "tasks.consumer:HarvestConsumer",
        "task_time_limit": TASK_TIME_LIMIT_S,
        "task_soft_time_limit": TASK_TIME_LIMIT_S - 10,
        "task_annotations": task_annotations(s),
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": beat_schedule(s),
        # One beat: celery-redbeat keeps the schedule in Redis and holds a lock there.
        "beat_scheduler": "harvest.services.schedule:HarvestScheduler",
        "beat_max_loop_interval": BEAT_MAX_LOOP_S,
        "redbeat_redis_url": redbeat_url,  # credentials in the options, where Celery masks them
        # rediss:// (TLS): the certificate options of the URL's query, for kombu and redbeat.
        "broker_use_ssl": tls_options(s.broker),
        "redbeat_redis_use_ssl": tls_options(s.redis_url),
        "redbeat_key_prefix": f"{s.namespace}:beat:",
        "redbeat_lock_timeout": BEAT_LOCK_TIMEOUT_S,
        "redbeat_redis_options": {"retry_period": 30, "health_check_interval": 30, **redbeat_creds},
        "harvest_namespace": s.namespace,
        "timezone": "UTC",
        "enable_utc": True,
    }
