"""What ``harvest <cmd>`` prints when an exception ends a command (:func:`explain_failure`):
one line naming what failed and how to fix it, every URL in it masked."""

from __future__ import annotations

import argparse
import os
import sys


def _redis_url_shown() -> str:
    """The state store's URL as it may be printed (password and tokens masked): the settings'
    ``redis_url`` or, when the settings cannot be read, ``HARVEST_REDIS_URL`` as given."""
    from settings import get_settings, mask_url

    try:
        url = get_settings().redis_url
    except BaseException:  # noqa: BLE001 (the settings are what failed: the variable as given)
        url = os.environ.get("HARVEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    return mask_url(url)


def _broker_url_shown() -> str:
    """The Celery broker's URL as it may be printed (masked), like :func:`_redis_url_shown`."""
    from settings import get_settings, mask_url

    try:
        url = get_settings().broker
    except BaseException:  # noqa: BLE001
        url = os.environ.get("HARVEST_BROKER_URL") or os.environ.get("HARVEST_REDIS_URL", "")
    return mask_url(url)


def _brief(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (a Redis or exchange
    error can be long), its type when it has none."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def explain_failure(e: BaseException, cmd: str, a: argparse.Namespace | None = None) -> tuple[str, int]:
    """What ``harvest <cmd>`` prints for an exception that ended it, and its exit status:
    ``(one line naming what failed and how to fix it, 2 for settings and usage or 1 for a
    failure at run time)``. The line is not yet escaped (:func:`term_safe`) and every URL in
    it is masked (:func:`settings.mask_url`).

    Known failures: invalid settings (:class:`settings.SettingsError`, 2); Redis refused the
    password (``redis.AuthenticationError``), has no such database (``ERR DB index is out of
    range``, a ``ResponseError`` at connect: the db of ``HARVEST_REDIS_URL`` is at or above the
    server's ``databases``, 16 by default), is a read-only replica, or cannot be reached
    (``redis.ConnectionError``/``TimeoutError``, a Sentinel naming no primary included); the
    Celery broker cannot be reached (``kombu.exceptions.OperationalError``); the exchange
    answered an error (:class:`harvest.venues.base.VenueError`); a port already taken or
    another OS error; an interrupt (Ctrl-C, 130). Anything else: its type and message and a
    pointer to ``--debug`` (1)."""
    import redis

    from harvest.venues.base import VenueError
    from settings import SettingsError, mask_url, redis_db

    where = f"harvest {cmd}" if cmd else "harvest"
    if isinstance(e, SettingsError):
        return f"{where}: {'; '.join(str(e).splitlines())}", 2
    if isinstance(e, SystemExit):  # a command's own refusal, e.g. `harvest demo --accounts 9`
        return f"{where}: {e.code}", 2
    if isinstance(e, KeyboardInterrupt):
        return f"{where}: interrupted", 130
    if isinstance(e, redis.AuthenticationError):
        return (
            f"{where}: Redis at {_redis_url_shown()} refused the credentials ({_brief(e)}): "
            "put the server's password in HARVEST_REDIS_URL (redis://:PASSWORD@host:port/db)",
            1,
        )
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):
        return (
            f"{where}: cannot reach Redis at {_redis_url_shown()} ({_brief(e)}): "
            "start redis-server or set HARVEST_REDIS_URL",
            1,
        )
    if isinstance(e, redis.ReadOnlyError):
        return (
            f"{where}: Redis at {_redis_url_shown()} is a read-only replica ({_brief(e)}): "
            "point HARVEST_REDIS_URL at the primary",
            1,
        )
    if isinstance(e, redis.ResponseError) and "db index is out of range" in str(e).lower():
        url = _redis_url_shown()
        try:
            db = redis_db(url)
        except ValueError:
            db = None
        return (
            f"{where}: Redis at {url} has no database {db if db is not None else '(of the URL)'} ({_brief(e)}): "
            "set HARVEST_REDIS_URL's db below the server's `databases` (16 by default), e.g. /0",
            1,
        )
    if isinstance(e, redis.RedisError):
        return f"{where}: Redis at {_redis_url_shown()} answered {type(e).__name__}: {_brief(e)}", 1
    kombu_exc = sys.modules.get("kombu.exceptions")
    if kombu_exc is not None and isinstance(e, kombu_exc.OperationalError):
        return (
            f"{where}: cannot reach the Celery broker at {_broker_url_shown()} ({mask_url(_brief(e))}): "
            "start it or set HARVEST_BROKER_URL",
            1,
        )
    if isinstance(e, VenueError):
        return (
            f"{where}: the exchange answered {_brief(e)} (HTTP {e.http_status}): nothing more was done; "
            "see the exchange's status and the settings HARVEST_VENUE / HARVEST_FAPI_URL",
            1,
        )
    if isinstance(e, OSError):
        port = getattr(a, "port", None)
        if e.errno in (98, 48, 10048) and port is not None:  # EADDRINUSE
            return (
                f"{where}: cannot listen on {getattr(a, 'host', '')}:{port} ({e.strerror}): "
                "stop what holds the port or choose another with --port",
                1,
            )
        what = f"{e.strerror or _brief(e)}" + (f": {e.filename}" if e.filename else "")
        return f"{where}: {what} ({type(e).__name__}; run with --debug for the traceback)", 1
    return f"{where}: unexpected {type(e).__name__}: {mask_url(_brief(e))} (run with --debug for the traceback)", 1


def debug_from_env() -> bool:
    """Whether ``HARVEST_DEBUG`` asks for tracebacks (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("HARVEST_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
