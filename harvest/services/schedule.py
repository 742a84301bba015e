"""Beat's scheduler, and the beat schedule changed at runtime.

harvest's beat runs celery-redbeat's scheduler (:class:`HarvestScheduler`): the schedule
lives in Redis under ``<ns>:beat:``, and a Redis lock (``<ns>:beat::lock``, TTL
``BEAT_LOCK_TIMEOUT_S``) lets exactly one beat send. A second beat started by mistake (or as
a hot standby) waits on the lock and takes over within the lock TTL when the first one dies.

Intervals come from settings (``HARVEST_SCAN_INTERVAL_S`` …) and can be changed while beat
runs: :func:`set_interval` (``harvest schedule set scan 2``) stores an override in the hash
``<ns>:schedule:overrides`` and rewrites the live redbeat entry, with ``expires`` equal to the
new interval. The running beat reads its entries from Redis on every tick (at most
``beat_max_loop_interval`` = 1 s apart), so the new cadence starts with the next run; a
restarted beat keeps the override until :func:`reset_interval`.

Three failure cases redbeat alone does not cover are handled in :meth:`HarvestScheduler.tick`:
a Redis that restarted empty (the schedule is re-installed instead of beat going silent), a
lost lock (beat re-acquires it, or stands by when another beat holds it), and a Redis that
does not answer for a while (a restart, a Sentinel failover): the tick is skipped and tried
again a second later instead of beat exiting.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated, Any, Callable

import redis
from celery import Celery
from celery.schedules import schedule as interval_schedule
from pydantic import TypeAdapter, ValidationError
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, get_redis
from redis.exceptions import LockError

from settings import HarvestSettings
from settings.celery import BEAT_ENTRIES

log = logging.getLogger("harvest.beat")

#: Seconds beat waits before its next tick after Redis did not answer one.
REDIS_RETRY_S = 1.0


def overrides_key(namespace: str) -> str:
    """Redis hash of runtime interval overrides: entry name → seconds."""
    return f"{namespace}:schedule:overrides"


class HarvestScheduler(RedBeatScheduler):
    """redbeat's scheduler with settings-plus-override intervals, schedule re-install after a
    Redis restart, and lock recovery (see module docstring). Configured in
    :func:`settings.celery.celery_config` as ``beat_scheduler``."""

    def setup_schedule(self) -> None:
        ns = self.app.conf.harvest_namespace
        overrides = get_redis(self.app).hgetall(overrides_key(ns))
        sched = dict(self.app.redbeat_conf.schedule)
        for name, seconds in overrides.items():
            if name in sched:
                sched[name] = _with_interval(sched[name], float(seconds))
                log.info("beat: %s interval %ss (runtime override)", name, seconds)
        self.app.redbeat_conf.schedule = sched
        super().setup_schedule()

    def tick(self, min: Callable[..., Any] = min, **kwargs: Any) -> float:  # noqa: A002 - Celery's signature
        """One beat tick: keep (or regain) the lock, make sure the schedule exists, send what
        is due. Returns the seconds until the next tick (≤ ``max_interval``). A Redis that does
        not answer (restarting, or failing over: no primary yet) skips the tick, logged; beat
        keeps running and tries again after :data:`REDIS_RETRY_S` rather than exit."""
        try:
            return self._tick(min, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, redis.BusyLoadingError) as e:
            log.warning("beat: Redis unavailable (%s: %s); next try in %.0f s", type(e).__name__, e, REDIS_RETRY_S)
            return REDIS_RETRY_S

    def _tick(self, min: Callable[..., Any] = min, **kwargs: Any) -> float:  # noqa: A002
        if self.lock_key and self.lock is not None:
            try:
                self.lock.extend(int(self.lock_timeout))
            except LockError:
                if not self.lock.acquire(blocking=False):
                    log.warning("beat: the beat lock is held by another beat; standing by")
                    return self.max_interval
                log.warning("beat: lock lost (Redis restart?) and re-acquired")
        client = get_redis(self.app)
        if not client.exists(self.app.redbeat_conf.schedule_key):
            log.warning("beat: schedule missing in Redis (restart or flush); re-installing it")
            self.setup_schedule()
        remaining = []
        for entry in self.schedule.values():
            nxt = self.maybe_due(entry, **self._maybe_due_kwargs)
            if nxt:
                remaining.append(nxt)
        return min(remaining + [self.max_interval])


def _with_interval(entry: dict, seconds: float) -> dict:
    options = dict(entry.get("options") or {}, expires=seconds)
    return dict(entry, schedule=seconds, options=options)


def _field(name: str) -> str:
    """The settings field of beat entry ``name``; ValueError for an unknown entry."""
    if name not in BEAT_ENTRIES:
        raise ValueError(f"unknown schedule entry {name!r}; known: {', '.join(BEAT_ENTRIES)}")
    return BEAT_ENTRIES[name][1]


def _validate(settings: HarvestSettings, name: str, seconds: Any) -> float:
    """``seconds`` checked against the bounds of the entry's settings field. Raises
    ValueError naming the entry and the variable."""
    field = _field(name)
    info = HarvestSettings.model_fields[field]
    try:
        return float(TypeAdapter(Annotated[float, *info.metadata]).validate_python(seconds))
    except ValidationError as e:
        raise ValueError(
            f"invalid interval for {name} (HARVEST_{field.upper()}) {seconds!r}: {e.errors()[0]['msg']}"
        ) from None


def list_schedule(app: Celery, settings: HarvestSettings) -> list[dict]:
    """Every beat entry as beat sees it: ``[{"name", "task", "interval_s", "expires_s",
    "source" ("settings" | "override"), "last_run_at" (Unix s | None), "next_run_in_s",
    "installed" (bool: beat has written it to Redis)}]``."""
    r = get_redis(app)
    overrides = r.hgetall(overrides_key(settings.namespace))
    out = []
    for name, (task, field) in BEAT_ENTRIES.items():
        row: dict[str, Any] = {
            "name": name,
            "task": task,
            "interval_s": float(getattr(settings, field)),
            "expires_s": float(getattr(settings, field)),
            "installed": False,
            "source": "override" if name in overrides else "settings",
            "last_run_at": None,
            "next_run_in_s": None,
        }
        if name in overrides:
            row["interval_s"] = row["expires_s"] = float(overrides[name])
        try:
            e = RedBeatSchedulerEntry.from_key(RedBeatSchedulerEntry.generate_key(app, name), app=app)
        except KeyError:
            out.append(row)
            continue
        row["installed"] = True
        row["interval_s"] = e.schedule.run_every.total_seconds()
        row["expires_s"] = e.options.get("expires")
        if e.last_run_at is not None:
            row["last_run_at"] = e.last_run_at.timestamp()
            row["next_run_in_s"] = round(max(0.0, e.schedule.remaining_estimate(e.last_run_at).total_seconds()), 3)
        out.append(row)
    return out


def set_interval(app: Celery, settings: HarvestSettings, name: str, seconds: Any) -> float:
    """Change entry ``name``'s interval (and ``expires``) to ``seconds`` on the running beat and
    keep it across beat restarts. Returns the interval set. Raises ValueError for an unknown
    entry or an interval outside the settings field's bounds."""
    value = _validate(settings, name, seconds)
    get_redis(app).hset(overrides_key(settings.namespace), name, repr(value))
    _rewrite(app, name, value)
    log.info("schedule: %s interval set to %ss", name, value)
    return value


def reset_interval(app: Celery, settings: HarvestSettings, name: str) -> float:
    """Drop the override of entry ``name``: back to its settings value, on the running beat
    too. Returns that interval. Raises ValueError for an unknown entry."""
    value = float(getattr(settings, _field(name)))
    get_redis(app).hdel(overrides_key(settings.namespace), name)
    _rewrite(app, name, value)
    return value


def _rewrite(app: Celery, name: str, seconds: float) -> None:
    """Rewrite the live redbeat entry (definition and next due time), keeping its last run;
    nothing when beat has not installed it yet (it reads the override when it starts)."""
    try:
        e = RedBeatSchedulerEntry.from_key(RedBeatSchedulerEntry.generate_key(app, name), app=app)
    except KeyError:
        return
    e.schedule = interval_schedule(run_every=timedelta(seconds=seconds), app=app)
    e.options = dict(e.options or {}, expires=seconds)
    e.save()
