"""Every Redis client of harvest is made here, from a URL: ``redis://``, ``rediss://``,
``unix://`` (redis-py's ``from_url``), or ``redis+sentinel://`` (redis-py's ``Sentinel``:
the client asks the Sentinels for the current primary on every new connection and after a
connection error, so it follows a failover; see :mod:`settings.sentinel`)."""

from __future__ import annotations

from typing import Any, Awaitable, TypeVar, cast

import redis
from redis.sentinel import Sentinel

from settings.sentinel import is_sentinel_url, parse_sentinel_url

T = TypeVar("T")


def sync(reply: Awaitable[T] | T) -> T:
    """A command's reply from a synchronous client, typed as such: redis-py types each
    command as answering ``Awaitable[T] | T`` (one signature for its sync and asyncio clients);
    every client harvest makes (:func:`redis_client`) is synchronous."""
    return cast(T, reply)


#: Per-connection socket timeouts of the Sentinel queries (s): a dead Sentinel is skipped fast.
SENTINEL_SOCKET_TIMEOUT_S = 1.0


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for ``url`` with ``options`` (``decode_responses``, ``retry``,
    ``single_connection_client``, …) passed to every connection to the primary. Through
    Sentinel, the client's connections go to whichever server the Sentinels name primary
    (``SentinelManagedConnection``); a read-only replica's answer makes it ask again. Raises
    ValueError for a malformed ``redis+sentinel://`` URL; connecting is lazy (a server that
    does not answer raises on the first command, redis.ConnectionError)."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    s = parse_sentinel_url(url)
    # No single connection through Sentinel: redis-py (7.4) reconnects a kept connection to
    # the address it had, the demoted primary, for ever; a connection taken from the pool asks
    # the Sentinels first (seen in tests/integration/test_sentinel.py).
    options.pop("single_connection_client", None)
    creds = {k: v for k, v in (("username", s.username), ("password", s.password)) if v is not None}
    sentinel = Sentinel(
        list(s.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        },
        **options,
    )
    return sentinel.master_for(s.service, db=s.db, **creds)
