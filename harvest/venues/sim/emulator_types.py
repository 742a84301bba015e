"""Types the fapi emulator (:mod:`harvest.venues.sim.emulator`) and its websocket streams
(:mod:`harvest.venues.sim.emulator_streams`) share, so neither imports the other's module for
them: an emulated account, its listenKey, the error answer, the handshake's name, and
:class:`StreamHost`, what the stream server reads of the emulator."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis

from harvest.venues.base import VenueError
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.paper import PaperVenue

#: What ``GET /_emu/hello`` answers in ``"emulator"``: the paper venue sends orders through
#: python-binance only to a server on a loopback address that answers this (never by a name).
HANDSHAKE = "harvest-fapi-emulator"

LISTEN_KEY_TTL_S = 3600.0


class ListenKeyMissing(Exception):
    """PUT on a listenKey that does not exist (Binance -1125)."""


class ListenKeys:
    """An account's one listenKey, in Redis (``<ns>:emu:listenkey:<account>``, expiring
    ``ttl_s`` s after its last POST or PUT)."""

    def __init__(self, r: redis.Redis, ns: str, ttl_s: float = LISTEN_KEY_TTL_S, account: str = "paper"):
        self.r, self.key, self.ttl_ms = r, f"{ns}:emu:listenkey:{account}", int(ttl_s * 1000)

    def create(self) -> str:
        """POST: the active key (a new one when none), extended."""
        key = cast(str | None, self.r.get(self.key)) or secrets.token_urlsafe(48)[:64]
        self.r.set(self.key, key, px=self.ttl_ms)
        return key

    def keepalive(self) -> str:
        """PUT: extend the active key. Raises ListenKeyMissing when there is none."""
        key = cast(str | None, self.r.get(self.key))
        if key is None or not self.r.pexpire(self.key, self.ttl_ms):
            raise ListenKeyMissing
        return key

    def delete(self) -> None:
        """DELETE: close the key (its streams end)."""
        self.r.delete(self.key)

    def valid(self, key: str) -> bool:
        return bool(key) and self.r.get(self.key) == key


class ApiError(Exception):
    """An error answer: HTTP status, Binance code and message (or a plain-text body)."""

    def __init__(
        self, status: int, code: int | None, msg: str, headers: dict[str, str] | None = None, html: bool = False
    ):
        super().__init__(msg)
        self.status, self.code, self.msg, self.headers, self.html = status, code, msg, headers or {}, html

    @classmethod
    def of(cls, e: VenueError) -> "ApiError":
        return cls(e.http_status if e.http_status >= 400 else 400, e.code, e.message)


@dataclass
class EmulatedAccount:
    """One exchange account the emulator serves: its name (the paper engine's account), the
    API secret its requests are signed with, its paper engine and its listenKey."""

    name: str
    secret: bytes
    venue: PaperVenue
    listen_keys: ListenKeys


class StreamHost(Protocol):
    """What :class:`~harvest.venues.sim.emulator_streams.StreamServer` uses of the emulator
    (:class:`~harvest.venues.sim.emulator.Emulator` is one): its Redis and namespace, the
    market clock, the served accounts by API key, the current account's paper engine, the
    server clock (ms) and a symbol's premiumIndex answer."""

    r: redis.Redis
    ns: str
    clock: MarketClock
    accounts: dict[str, EmulatedAccount]

    @property
    def venue(self) -> PaperVenue: ...

    def server_ms(self) -> int: ...

    def _premium(self, symbol: str) -> dict[str, Any]: ...
