"""What the worker's broker hooks record (:mod:`tasks.poison`: items on a queue that are not a
Celery message; :mod:`tasks.stale`: messages dropped as expired or revoked). They run in the
consumer before any runtime exists, so :class:`BrokerRecords` holds its own Redis client,
connected lazily from the URL. A record is informative: a Redis error is logged, never raised."""

from __future__ import annotations

import logging
import time

import redis

from harvest.store import Keys
from harvest.store.connect import redis_client

log = logging.getLogger("harvest")


class BrokerRecords:
    """The rejected stream and counters of namespace ``namespace`` on the Redis at ``redis_url``."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        self.url = redis_url
        self.ns = namespace
        self._r: redis.Redis | None = None

    def _client(self) -> redis.Redis:
        if self._r is None:
            self._r = redis_client(self.url)
        return self._r

    def rejected(self, error: str, text: str) -> None:
        """Record a dropped broker item on ``<ns>:stream:rejected`` (stage ``broker``) and count
        it ``malformed:broker``, in one round trip."""
        try:
            p = self._client().pipeline(transaction=False)
            p.xadd(
                f"{self.ns}:stream:rejected",
                {"stage": "broker", "error": error[:1000], "payload": text[:2000], "ts": repr(time.time())},
                maxlen=10_000,
                approximate=True,
            )
            p.hincrby(Keys(self.ns).counters, "malformed:broker", 1)
            p.execute()
        except redis.RedisError as e:  # the record is informative; the worker goes on
            log.warning("undecodable broker item not recorded (%s)", e)

    def count(self, counts: dict[str, int]) -> None:
        """Add ``counts`` (``{counter name: n}``) to the namespace's counters, one round trip."""
        if not counts:
            return
        try:
            p = self._client().pipeline(transaction=False)
            for k, n in counts.items():
                p.hincrby(Keys(self.ns).counters, k, n)
            p.execute()
        except redis.RedisError as e:  # the counts are informative; never break the consumer
            log.warning("stale-message counts not recorded (%s): %s", type(e).__name__, dict(counts))
