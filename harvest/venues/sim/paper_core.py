"""The paper engine's common base (see :mod:`harvest.venues.sim.paper`): the account's Redis keys,
the market data every part reads (marks, listings, symbol filters) and the order id sequence.
:class:`~harvest.venues.sim.paper.PaperVenue` and its halves
(:class:`~harvest.venues.sim.paper_settlement.PaperSettlement`,
:class:`~harvest.venues.sim.paper_fixtures.PaperFixtures`) derive from it, so each declares the
attributes it uses."""

from __future__ import annotations

import dataclasses
from typing import cast

import redis

from harvest.data import SymbolFilters, load_klines, shipped_filters
from harvest.venues import binance_facts as facts
from harvest.venues.base import BAD_SYMBOL
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.paper_fills import (
    _FILL_LUA,
    _READ_POSITIONS_LUA,
    _SNAPSHOT_LUA,
    SHIPPED,
    TAKER_FEE_RATE,
)


class PaperCore:
    """Keys, market data and order ids of one paper account. ``r``: redis.Redis with
    ``decode_responses=True``; ``clock``: the namespace's market clock; ``fee_rate``: the taker
    fee (fraction of notional)."""

    def __init__(self, r: redis.Redis, ns: str, account: str, clock: MarketClock, fee_rate: float = TAKER_FEE_RATE):
        self.r = r
        self.ns = ns
        self.account = account
        self.clock = clock
        self.fee_rate = fee_rate
        self._filters = dict(shipped_filters())  # its own copy: listings are added to it
        self._read_positions = r.register_script(_READ_POSITIONS_LUA)
        self._snapshot = r.register_script(_SNAPSHOT_LUA)
        self._fill = r.register_script(_FILL_LUA)
        self._sources: dict[str, str] = {}  # synthetic listing → shipped symbol
        self._all_listings_read = False
        base = f"{ns}:paper:{account}"
        self.k_positions = f"{base}:positions"
        self.k_orders = f"{base}:orders"
        self.k_log = f"{base}:orderlog"
        self.k_pnl = f"{base}:pnl"
        self.k_seq = f"{base}:order_seq"
        self.k_dual = f"{base}:dual"
        self.k_trades = f"{base}:trades"
        self.k_income = f"{base}:income"
        self.k_partial = f"{base}:partial_fills"
        self.k_by_id = f"{base}:orders_by_id"
        self.k_balance = f"{base}:balance"
        self._base = base

    # ------------------------------------------------------------------ market data

    def k_pos(self, symbol: str) -> str:
        return f"{self._base}:pos:{symbol}"

    def k_stops(self, symbol: str) -> str:
        return f"{self._base}:stops:{symbol}"

    def dual(self) -> bool:
        """Whether the account is in hedge mode (Binance's ``dualSidePosition``)."""
        return self.r.get(self.k_dual) == "true"

    def k_mark(self, symbol: str) -> str:
        return f"{self.ns}:paper:mark:{symbol}"

    @property
    def k_listings(self) -> str:
        return f"{self.ns}:paper:listings"

    def listings(self) -> dict[str, str]:
        """Synthetic symbol → the shipped symbol it trades like."""
        return cast(dict[str, str], self.r.hgetall(self.k_listings))

    def source(self, symbol: str) -> str:
        """The shipped symbol whose data prices ``symbol`` (itself, or its listing's). A
        listing never changes, so listings are cached per process: the first symbol not yet
        cached reads every listing in one round trip (a worker that meets one synthetic symbol
        meets many), a later one only its own."""
        if symbol in SHIPPED:
            return symbol
        like = self._sources.get(symbol)
        if like is None and not self._all_listings_read:
            self._sources.update(self.listings())
            self._all_listings_read = True
            like = self._sources.get(symbol)
        if like is None:
            like = cast(str | None, self.r.hget(self.k_listings, symbol))
            if like is None:
                return symbol  # not listed (yet): not cached
            self._sources[symbol] = like
        return like

    def filters(self, symbol: str) -> SymbolFilters:
        f = self._filters.get(symbol)
        if f is None:
            like = self.source(symbol)
            if like == symbol or like not in self._filters:
                raise facts.venue_error(*BAD_SYMBOL)
            f = self._filters[symbol] = dataclasses.replace(self._filters[like], symbol=symbol)
        return f

    def mark_price(self, symbol: str) -> float:
        override = cast(str | None, self.r.get(self.k_mark(symbol)))
        if override is not None:
            return float(override)
        return load_klines(self.source(symbol)).mark_at(self.clock.now())

    def _next_order_id(self) -> int:
        return int(cast(int, self.r.incr(self.k_seq)))
