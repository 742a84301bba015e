"""Stale work: messages that waited in a queue past their ``expires`` (after an outage, a
stopped worker, a beat that ran without workers).

Every scan message expires after its beat interval and every plan task after the plan TTL
(:mod:`settings.celery`, :mod:`workflows`). The worker's consumer drops such a message
before any task code runs — no stage executes, so no order can be sent — and acknowledges
it at once, so a backlog of thousands drains in seconds (measured in
``tests/test_stale.py``).

What this module adds is the operator's view of it: Celery logs two lines per dropped
message ("received" and "Discarding revoked task"); harvest logs **one summary line per
drained backlog** instead, and counts every drop in the namespace's counters
(``stale:expired:<task>``, ``stale:revoked:<task>``; scorecard, /metrics). Celery's
per-message "received" line is demoted to DEBUG (the task's own start/success lines and
Flower's task-received events carry the same); its "Discarding revoked task" line is
replaced by the summary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from celery.app.trace import LOG_RECEIVED
from celery.signals import task_revoked

from harvest.services.broker_records import BrokerRecords
from tasks.app import settings

log = logging.getLogger("harvest")

#: A backlog is over when no message was dropped for this long (s); its summary is logged then.
QUIET_S = 1.0
#: How often the drop counts are written to Redis while a backlog drains (s).
FLUSH_S = 0.25


class StaleDrops:
    """Drops seen by this worker process: counted to Redis every :data:`FLUSH_S` and summed
    up in one log line once a backlog is over (:data:`QUIET_S` without a drop)."""

    def __init__(self, redis_url: str, namespace: str):
        self._records = BrokerRecords(redis_url, namespace)
        self._lock = threading.Lock()
        self._unflushed: Counter[str] = Counter()
        self._backlog: Counter[str] = Counter()
        self._first = self._last = 0.0
        self._thread: threading.Thread | None = None

    def record(self, task_name: str, expired: bool) -> None:
        """Count one dropped message of ``task_name`` (expired, or revoked by id)."""
        key = f"stale:{'expired' if expired else 'revoked'}:{task_name}"
        now = time.monotonic()
        with self._lock:
            if not self._backlog:
                self._first = now
            self._last = now
            self._unflushed[key] += 1
            self._backlog[key] += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="harvest-stale", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_S)  # a background flusher's cadence, not a synchronisation
            with self._lock:
                counts, self._unflushed = self._unflushed, Counter()
                done = bool(self._backlog) and time.monotonic() - self._last >= QUIET_S
                summary = (self._backlog, self._last - self._first) if done else None
                if done:
                    self._backlog = Counter()
            self._flush(counts)
            if summary is not None:
                self._log(*summary)
                return

    def _flush(self, counts: Counter[str]) -> None:
        self._records.count(dict(counts))

    @staticmethod
    def _log(backlog: Counter[str], seconds: float) -> None:
        total = sum(backlog.values())
        parts = ", ".join(
            f"{k.split(':', 2)[2]} {n}" + ("" if k.startswith("stale:expired") else " (revoked)")
            for k, n in sorted(backlog.items())
        )
        log.warning(
            "dropped %d stale messages in %.1f s without running them (%s); no stage ran, no order was sent",
            total,
            seconds,
            parts,
        )


class StaleLogFilter(logging.Filter):
    """On Celery's worker loggers: the per-message "received" line goes to DEBUG and the
    per-message "Discarding revoked task" line is dropped (:class:`StaleDrops` logs the sum)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == LOG_RECEIVED:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return not (isinstance(record.msg, str) and record.msg.startswith("Discarding revoked task"))


DROPS = StaleDrops(settings.redis_url, settings.namespace)
for _name in ("celery.worker.strategy", "celery.worker.request"):
    logging.getLogger(_name).addFilter(StaleLogFilter())


@task_revoked.connect
def _on_revoked(sender=None, request=None, terminated=False, expired=False, **_):
    """A message the consumer dropped unexecuted (``terminated``: a running task was killed
    on request, which is not stale work)."""
    if not terminated:
        DROPS.record(getattr(sender, "name", None) or "unknown", bool(expired))
