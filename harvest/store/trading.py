"""The trading switch in Redis (``<ns>:trading``, changes on ``<ns>:stream:trading``); the states
and their order are :mod:`harvest.domain.trading`."""

from __future__ import annotations

import time

import redis

from harvest.domain.trading import _RANK, DEPLOYMENT, STATES
from harvest.store.connect import sync


def read(r: redis.Redis, key: str) -> dict[str, str]:
    """The trading hash: ``{"*" or account: state}``."""
    return sync(r.hgetall(key))


def set_state(
    r: redis.Redis, key: str, stream: str, state: str, account: str | None, who: str, reason: str = ""
) -> None:
    """Set the deployment's (``account`` None) or an account's trading state, recorded with
    ``who`` asked and why on ``stream``. Raises ValueError for an unknown state."""
    state = state.upper()
    if state not in _RANK:
        raise ValueError(f"unknown trading state {state!r}; one of {', '.join(STATES)}")
    field = account or DEPLOYMENT
    p = r.pipeline(transaction=True)
    if state == "ACTIVE":
        p.hdel(key, field)
    else:
        p.hset(key, field, state)
    p.xadd(
        stream,
        {"scope": field, "state": state, "who": who[:64], "reason": reason[:200], "ts": repr(time.time())},
        maxlen=10_000,
        approximate=True,
    )
    p.execute()
