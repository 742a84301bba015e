"""The paper venue's market clock: the replay of the shipped 1-minute klines,
``market_time = anchor_market + (wall − anchor_wall) × speed``, held in Redis (``<ns>:clock``)
so every process sees the same market time. Exchanges (testnet, live) need none."""

from __future__ import annotations

import json
import time
from typing import cast

import redis


class MarketClock:
    """Shared market clock for the replay (Unix seconds of market time)."""

    def __init__(self, r: redis.Redis, ns: str, default_start: float, default_speed: float):
        self.r = r
        self.key = f"{ns}:clock"
        self.default = (default_start, default_speed)

    def set(self, market_start: float, speed: float, end: float | None = None, wall: float | None = None) -> None:
        """Anchor the clock: market time ``market_start`` now, advancing ``speed`` market
        seconds per wall second, never beyond ``end``."""
        self.r.set(
            self.key,
            json.dumps(
                {
                    "anchor_wall": time.time() if wall is None else wall,
                    "anchor_market": market_start,
                    "speed": speed,
                    "end": end,
                }
            ),
        )

    def now(self, raw: str | None = None) -> float:
        """Current market time (s). Anchors at the settings' default on first use. ``raw``:
        the clock key's value when the caller already read it (one round trip fewer)."""
        if raw is None:
            raw = cast(str | None, self.r.get(self.key))
        if raw is None:
            start, speed = self.default
            self.r.set(
                self.key,
                json.dumps({"anchor_wall": time.time(), "anchor_market": start, "speed": speed, "end": None}),
                nx=True,
            )
            raw = cast(str, self.r.get(self.key))  # set just now, if it was not
        c = json.loads(raw)
        t = c["anchor_market"] + (time.time() - c["anchor_wall"]) * c["speed"]
        return min(t, c["end"]) if c.get("end") is not None else t

    def speed(self, raw: str | None = None) -> float:
        """Market seconds per wall second of the replay now (the default speed before the clock
        is anchored; 0 once it reached its ``end``): what turns a wall duration (a request's
        transit, a ``recvWindow``) into market time. ``raw``: as for :meth:`now`."""
        if raw is None:
            raw = cast(str | None, self.r.get(self.key))
        if raw is None:
            return float(self.default[1])
        c = json.loads(raw)
        if c.get("end") is not None and self.now(raw) >= c["end"]:
            return 0.0
        return float(c["speed"])
