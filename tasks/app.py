"""The Celery app, configured from settings (see :mod:`settings.celery`).

``celery -A tasks worker -Q harvest.scan,harvest.orders,harvest.housekeeping``,
``celery -A tasks beat``, ``celery -A tasks flower``.
"""

from __future__ import annotations

import logging
import time

from celery import Celery
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)

from harvest.store.records import MESSAGE_HEADER, SCHEMA
from settings import get_settings
from settings.celery import celery_config
from settings.logging import configure_logging

settings = get_settings()
app = Celery("harvest")
app.conf.update(celery_config(settings))

log = logging.getLogger("harvest")

# An item on a Redis queue that is not a Celery message is recorded and dropped, never a crash.
from tasks.poison import install as _install_poison_guard  # noqa: E402

_install_poison_guard(settings.redis_url, settings.namespace)

if settings.uses_binance:
    # Imported here, in the worker's main process, so that every pool process inherits it
    # at fork instead of paying ~0.3 s on its first order.
    import harvest.venues.binance  # noqa: F401,E402


@setup_logging.connect
def _setup_logging(loglevel=None, logfile=None, **_):
    """Workers and beat log through :func:`settings.logging.configure_logging`
    (``HARVEST_LOG_FORMAT``), with the Celery task id on every record from a task."""
    stream = open(logfile, "a", buffering=1) if logfile else None
    configure_logging(settings.log_format, loglevel or logging.INFO, stream)


@before_task_publish.connect
def _stamp_sent_at(headers=None, **_):
    """Every message carries ``sent_at`` (Unix s) for the queue-wait metric and queue lag, and
    its schema version (header :data:`harvest.store.records.MESSAGE_HEADER`; a retry keeps the
    version of the message it repeats): a worker refuses a message of a newer version."""
    if headers is not None:
        headers["sent_at"] = time.time()
        headers.setdefault(MESSAGE_HEADER, SCHEMA["message"])


@task_prerun.connect
def _observe_queue_wait(task=None, **_):
    """Seconds from publish to start, by queue (``harvest_queue_wait_seconds``); queued and
    written with the task's first plan read or write (:data:`harvest.ops.metrics.DEFERRED`), or
    at the task's end. Never fails a task."""
    try:
        sent = getattr(task.request, "sent_at", None)
        if sent is None:
            return
        from harvest.services.runtime import observe_queue_wait

        queue = (task.request.delivery_info or {}).get("routing_key") or "-"
        observe_queue_wait(queue, time.time() - float(sent))
    except Exception:  # pragma: no cover - metrics must not break the pipeline
        log.debug("queue-wait metric not recorded", exc_info=True)


@task_postrun.connect
def _flush_metrics(**_):
    """Write the metric observations no round trip of the task carried (none, usually)."""
    try:
        from harvest.services.runtime import flush_observations

        flush_observations()
    except Exception:  # pragma: no cover - metrics must not break the pipeline
        log.debug("metric observations not written", exc_info=True)


@worker_init.connect
def _check_venue(**_):
    """In the worker's main process, before its pool forks: another host's emulator
    (a non-loopback HARVEST_FAPI_URL) must answer its handshake, or the worker stops here with
    one line naming HARVEST_FAPI_URL (:func:`harvest.services.runtime.check_start_up`; a
    SettingsError is a SystemExit, which Celery's signal dispatch does not swallow)."""
    from harvest.services.runtime import check_start_up

    check_start_up(settings)


@worker_process_init.connect
def _warm_runtime(**_):
    """Build each pool process's runtime (settings, Redis client, venue) as the process
    starts, not inside its first task; a failure here is logged and retried by that task."""
    try:
        from harvest.services.runtime import get_runtime

        get_runtime()
    except Exception:  # pragma: no cover - the first task builds it again and reports
        log.warning("runtime not built at process start", exc_info=True)
