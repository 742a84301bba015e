"""Cached market states in Redis (:class:`MarketCache`): one JSON string per symbol."""

from __future__ import annotations

from functools import lru_cache

import redis

from harvest.domain.models import MarketState
from harvest.store.connect import sync
from harvest.store.keys import Keys
from harvest.store.records import Unreadable


@lru_cache(maxsize=65_536)
def market_state_from_json(raw: str) -> MarketState:
    """A stored :class:`MarketState` (frozen, so shared) from its JSON, parsed once per process
    per distinct value: a book entry's entry state is read on every scan but never changes.
    Raises pydantic.ValidationError for invalid JSON or values."""
    return MarketState.model_validate_json(raw)


class MarketCache:
    """Latest :class:`MarketState` per symbol, written by the refresh task."""

    def __init__(self, r: redis.Redis, ns: str):
        self.r = r
        self.k = Keys(ns)

    def put_many(self, states: list[MarketState]) -> None:
        p = self.r.pipeline(transaction=False)
        for s in states:
            p.set(self.k.market(s.symbol), s.model_dump_json())
        p.execute()

    def get_many(self, symbols: list[str]) -> list[MarketState | None]:
        if not symbols:
            return []
        raw = sync(self.r.mget([self.k.market(s) for s in symbols]))
        return [market_state_from_json(x) if x else None for x in raw]

    def get_readable(self, symbols: list[str], unreadable: list[Unreadable]) -> list[MarketState | None]:
        """:meth:`get_many` for a view: a state that does not parse reads None and is appended to
        ``unreadable`` (its key), never raised."""
        raw = sync(self.r.mget([self.k.market(s) for s in symbols])) if symbols else []
        out: list[MarketState | None] = []
        for sym, x in zip(symbols, raw, strict=True):
            try:
                out.append(market_state_from_json(x) if x else None)
            except ValueError as e:
                unreadable.append(Unreadable.of(self.k.market(sym), e))
                out.append(None)
        return out
