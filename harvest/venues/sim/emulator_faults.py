"""The fapi emulator's fault plan (see "Faults" in :mod:`harvest.venues.sim.emulator`): the kinds
of fault, the load balancer's pages some of them answer with, and :class:`Faults`, the plan of
one emulator namespace in Redis."""

from __future__ import annotations

import json
from typing import cast

import redis

FAULT_KINDS = (
    "latency",
    "http_429",
    "http_418",
    "unavailable_503",
    "internal_503",
    "unknown_503",
    "unknown_503_after_accept",
    "timeout_after_accept",
    "timestamp_1021",
    "html_502",
    "html_503",
    "html_503_after_accept",
    "garbage_200",
    "garbage_200_after_accept",
    "truncated",
    "truncated_after_accept",
    "partial_fill",
)
#: What a load balancer in front of an exchange answers when it fails: a page, not Binance's JSON.
HTML_503 = (
    "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n"
)
HTML_502 = (
    "<html><body><h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete response.\n</body></html>\n"
)


class Faults:
    """Fault plan of one emulator namespace, in Redis (hash field = endpoint, value = JSON
    ``{"kind", "times", "latency_s", "retry_after"}``)."""

    def __init__(self, r: redis.Redis, ns: str):
        self.r = r
        self.key = f"{ns}:emu:faults"
        self.k_skew = f"{ns}:emu:skew_ms"
        self.k_fired = f"{ns}:emu:faults_fired"

    def inject(
        self,
        endpoint: str,
        kind: str,
        times: int = 1,
        latency_s: float = 0.0,
        retry_after: float = 1.0,
        fraction: float = 0.4,
    ) -> None:
        """Arm a fault. ``endpoint`` is ``"METHOD /fapi/vN/path"`` or ``"*"``; ``fraction``:
        the share a ``partial_fill`` fills (0..1). Raises ValueError for an unknown kind."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
        self.r.hset(
            self.key,
            endpoint,
            json.dumps(
                {
                    "kind": kind,
                    "times": int(times),
                    "latency_s": float(latency_s),
                    "retry_after": float(retry_after),
                    "fraction": float(fraction),
                }
            ),
        )

    def clear(self) -> None:
        """Disarm every fault and the clock skew (fired counts stay)."""
        self.r.delete(self.key, self.k_skew)

    def armed(self) -> dict[str, dict]:
        """Faults still armed: endpoint → ``{"kind", "times" left, "latency_s", "retry_after"}``."""
        return {k: json.loads(v) for k, v in cast(dict[str, str], self.r.hgetall(self.key)).items()}

    def fired(self) -> dict[str, int]:
        """How many times each fault kind has fired."""
        return {k: int(v) for k, v in cast(dict[str, str], self.r.hgetall(self.k_fired)).items()}

    def set_skew(self, ms: int) -> None:
        """Shift the emulator's server clock by ``ms`` milliseconds (a real clock skew)."""
        self.r.set(self.k_skew, int(ms))

    def skew_ms(self) -> int:
        """The server clock's offset from the replay's market clock (ms)."""
        return int(cast(str | None, self.r.get(self.k_skew)) or 0)

    _TAKE = """
    for _, f in ipairs({ARGV[1], '*'}) do
      local raw = redis.call('HGET', KEYS[1], f)
      if raw then
        local d = cjson.decode(raw)
        d['times'] = d['times'] - 1
        if d['times'] <= 0 then redis.call('HDEL', KEYS[1], f)
        else redis.call('HSET', KEYS[1], f, cjson.encode(d)) end
        redis.call('HINCRBY', KEYS[2], d['kind'], 1)
        return raw
      end
    end
    return false
    """

    def take(self, endpoint: str) -> dict | None:
        """Consume one firing of the fault armed for ``endpoint`` (or ``*``), atomically."""
        raw = cast(str | None, self.r.eval(self._TAKE, 2, self.key, self.k_fired, endpoint))
        return json.loads(raw) if raw else None
