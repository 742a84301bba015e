"""The state-recovered marker ``<ns>:state:recovered``: whether the state is known whole on
the Redis server answering now (see :mod:`harvest.services.recovery`, which sets it after it
read the exchange's records, and ``Keys.recovered``)."""

from __future__ import annotations

from typing import Any

import redis

from harvest.store.connect import sync
from harvest.store.keys import Keys
from harvest.store.scripts import MARK_RECOVERED_LUA, STATE_KNOWN_LUA


class RecoveryMarker:
    """Read and set the state-recovered marker (one Lua script each, atomic with the server's
    ``run_id``). ``r`` must be a ``redis.Redis`` created with ``decode_responses=True``."""

    def __init__(self, r: redis.Redis, ns: str) -> None:
        self.r = r
        self.key = Keys(ns).recovered
        self._state_known = r.register_script(STATE_KNOWN_LUA)
        self._mark_recovered = r.register_script(MARK_RECOVERED_LUA)

    def state_known(self) -> bool:
        """Whether the state is known whole: the state-recovered marker exists and names this
        Redis server (its ``run_id``). A marker from another server (a failover, a restart) is
        removed here, which starts recovery (:mod:`harvest.services.recovery`)."""
        return bool(self._state_known(keys=[self.key]))

    def state_known_in(self, p: redis.client.Pipeline) -> None:
        """Queue :meth:`state_known` on a pipeline by ``EVALSHA`` (a registered script on a
        pipeline would cost a ``SCRIPT EXISTS`` round trip at every execute); run the pipeline
        with ``raise_on_error=False`` and pass its reply to :meth:`state_known_of`."""
        p.evalsha(self._state_known.sha, 1, self.key)

    def state_known_of(self, reply: Any) -> bool:
        """:meth:`state_known` from the reply :meth:`state_known_in` queued: on a server that
        does not have the script yet (``NoScriptError``) it is run (and loaded) here. Raises
        any other error of the reply."""
        if isinstance(reply, redis.exceptions.NoScriptError):
            return self.state_known()
        if isinstance(reply, Exception):
            raise reply
        return bool(reply)

    def mark_recovered(self, since_run_id: str = "") -> bool:
        """Set the state-recovered marker to this server's ``run_id``; with ``since_run_id``
        only if the server is still that one (recovery read the exchange while it was), else
        False: the server changed meanwhile and recovery must run again."""
        return bool(self._mark_recovered(keys=[self.key], args=[since_run_id]))

    def server_id(self) -> str:
        """The ``run_id`` of the Redis server answering now (``INFO server``)."""
        return str(sync(self.r.info("server"))["run_id"])
