"""Items on a Redis queue that are not a Celery message at all (``redis-cli lpush <ns>.orders
garbage``, a truncated write, another program's data): recorded and dropped once, never a
crash of the worker.

kombu's Redis transport pops an item with BRPOP and decodes its JSON envelope inside the
worker's event loop; an item that is not JSON (``JSONDecodeError``) or not an envelope (no
``properties.delivery_tag``) raised there and ended the worker with "Unrecoverable error" (6
of 6 tries; under a supervisor a redelivered poison item is a crash loop). kombu offers no
hook at that point, so this module wraps the transport's ``loads``: when the item popped by
``_brpop_read`` or ``_get`` does not decode to an envelope, it is recorded on
``<ns>:stream:rejected`` (stage ``broker``, counter ``malformed:broker``) and replaced by an
empty envelope of a content type the app does not accept, which Celery's own path for
undecodable messages acknowledges and drops ("Can't decode message body"). Every other use
of ``loads`` (restoring unacknowledged messages) is untouched. On RabbitMQ the envelope is
AMQP's; a body that is not JSON takes Celery's decode-error path there already.
"""

from __future__ import annotations

import logging
import sys
import uuid

import kombu.transport.redis as _kombu_redis

from harvest.services.broker_records import BrokerRecords

log = logging.getLogger("harvest")

#: The content type of the empty envelope an undecodable item becomes (never accepted).
UNDECODABLE = "application/x-harvest-undecodable"
_CALLERS = ("_brpop_read", "_get")


class PoisonRecorder:
    """Writes each dropped item to the namespace's rejected stream (lazily connected:
    :class:`harvest.services.broker_records.BrokerRecords`)."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        self.records = BrokerRecords(redis_url, namespace)

    def record(self, raw: object, error: str) -> None:
        text = raw if isinstance(raw, str) else repr(raw)
        log.error("dropped an item on the broker that is not a Celery message (%s): %r", error, text[:200])
        self.records.rejected(error, text)


_RECORDER: PoisonRecorder | None = None
_ORIGINAL_LOADS = _kombu_redis.loads


def _is_envelope(d: object) -> bool:
    props = d.get("properties") if isinstance(d, dict) else None
    return isinstance(props, dict) and "delivery_tag" in props and isinstance(props.get("delivery_info", {}), dict)


def tolerant_loads(s, *args, **kwargs):
    """kombu's ``loads`` for the Redis transport, which turns an item popped from a queue that
    is not a message envelope into an empty undecodable one (module docstring)."""
    try:
        d = _ORIGINAL_LOADS(s, *args, **kwargs)
        error = None if _is_envelope(d) else "not a kombu message envelope"
    except ValueError as e:
        if sys._getframe(1).f_code.co_name not in _CALLERS:
            raise
        d, error = None, f"{type(e).__name__}: {e}"
    if error is None or sys._getframe(1).f_code.co_name not in _CALLERS:
        return d
    if _RECORDER is not None:
        _RECORDER.record(s, error)
    return {
        "body": "",
        "content-type": UNDECODABLE,
        "content-encoding": "utf-8",
        "headers": {},
        "properties": {
            "delivery_tag": uuid.uuid4().hex,
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": ""},
        },
    }


def install(redis_url: str, namespace: str) -> None:
    """Wrap the Redis transport's ``loads`` (idempotent) and record drops under ``namespace``."""
    global _RECORDER
    _RECORDER = PoisonRecorder(redis_url, namespace)
    _kombu_redis.loads = tolerant_loads
