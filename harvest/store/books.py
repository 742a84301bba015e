"""The position book in Redis: harvest's record of each position epoch (:class:`BookStore`)."""

from __future__ import annotations

from typing import Any

import redis

from harvest.domain.models import MarketState, Side
from harvest.store.connect import sync
from harvest.store.keys import Keys
from harvest.store.market import market_state_from_json
from harvest.store.scripts import _HGETALL_MANY_LUA, _HMGET_MANY_LUA, _enc


class BookStore:
    """harvest's book of each position epoch (what the exchange does not know: initial stop,
    qty at open, entry market state, harvested tier, peak/trough), one hash per position."""

    FIELDS_FLOAT = (
        "opened_at",
        "entry_price",
        "qty_at_open",
        "initial_stop",
        "current_stop",
        "peak_price",
        "trough_price",
        "leverage",
    )
    #: The fields the scan reads (:func:`harvest.services.decide.load_positions`): what the kernel, the
    #: epoch check and the peak/trough update use. ``side`` first: a missing entry has none.
    SCAN_FIELDS = (
        "side",
        "epoch",
        "opened_at",
        "qty_at_open",
        "initial_stop",
        "harvested_tier",
        "peak_price",
        "trough_price",
        "entry_state",
    )

    def __init__(self, r: redis.Redis, ns: str):
        self.r = r
        self.k = Keys(ns)
        self._hgetall_many = r.register_script(_HGETALL_MANY_LUA)
        self._hmget_many = r.register_script(_HMGET_MANY_LUA)

    def get_many(
        self, account: str, symbols: list[str], fields: tuple[str, ...] | None = None
    ) -> list[dict[str, Any] | None]:
        """Book entries (decoded) for the symbols, None where there is none (one Redis call).
        ``fields``: read only these (must include ``side``; e.g. :data:`SCAN_FIELDS`), which
        keeps a 10 000-position reply small."""
        if not symbols:
            return []
        keys = [self.k.book(account, s) for s in symbols]
        if fields is None:
            flats = self._hgetall_many(keys=keys)
            return [self.decode(dict(zip(f[::2], f[1::2], strict=True))) if f else None for f in flats]
        rows = self._hmget_many(keys=keys, args=list(fields))
        return [
            self.decode({k: v for k, v in zip(fields, row, strict=True) if v is not None})
            if row[0] is not None
            else None
            for row in rows
        ]

    @classmethod
    def decode(cls, h: dict[str, str]) -> dict[str, Any]:
        """A book entry from its hash as stored: floats, ``harvested_tier`` int, ``side`` a
        :class:`Side`, ``entry_state`` a :class:`MarketState` (or None)."""
        d: dict[str, Any] = dict(h)
        for f in cls.FIELDS_FLOAT:
            if f in d:
                d[f] = float(d[f])
        d["harvested_tier"] = int(d.get("harvested_tier", 0))
        d["side"] = Side(d["side"])
        d["entry_state"] = market_state_from_json(d["entry_state"]) if d.get("entry_state") else None
        return d

    def put(self, account: str, symbol: str, entry: dict[str, Any]) -> None:
        """Write a whole book entry (a new epoch replaces the old one)."""
        self.put_many(account, {symbol: entry})

    def put_many(self, account: str, entries: dict[str, dict[str, Any]]) -> None:
        """:meth:`put` for many entries (symbol → entry), each replaced atomically, in one
        round trip."""
        if not entries:
            return
        p = self.r.pipeline(transaction=True)
        for symbol, entry in entries.items():
            key = self.k.book(account, symbol)
            e = dict(entry)
            if isinstance(e.get("entry_state"), MarketState):
                e["entry_state"] = e["entry_state"].model_dump_json()
            p.delete(key)
            p.hset(key, mapping={k: _enc(v) for k, v in e.items() if v is not None})
        p.sadd(self.k.books(account), *entries)
        p.execute()

    def update(self, account: str, symbol: str, fields: dict[str, Any]) -> None:
        """Update some fields of an entry (peak/trough, current stop)."""
        self.update_many(account, {symbol: fields})

    def update_many(self, account: str, updates: dict[str, dict[str, Any]]) -> None:
        """:meth:`update` for many entries in one pipeline: symbol → fields."""
        if not updates:
            return
        p = self.r.pipeline(transaction=False)
        for symbol, fields in updates.items():
            p.hset(self.k.book(account, symbol), mapping={k: _enc(v) for k, v in fields.items() if v is not None})
        p.execute()

    def drop(self, account: str, symbol: str) -> None:
        """Remove a ghost entry (the venue has no such position)."""
        p = self.r.pipeline(transaction=True)
        p.delete(self.k.book(account, symbol))
        p.srem(self.k.books(account), symbol)
        p.execute()

    def symbols(self, account: str) -> set[str]:
        return set(sync(self.r.smembers(self.k.books(account))))
