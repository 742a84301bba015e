"""An instant in-memory stand-in for the exchange, for one decomposition in
:mod:`benchmarks.performance` only: the pipeline rounds "with the exchange's work removed".

A worker loads it with ``-I benchmarks.instant_venue`` and ``HARVEST_BENCH_INSTANT_VENUE=1``
in its environment. Each pool process then reads the paper positions once, at its start,
and replaces its runtime's venue with :class:`InstantVenue`: positions as read then, every
close accepted at once, every order look-up FILLED. The stages run unchanged, with their own
Redis round trips, but without the paper engine's reads, fills and order records (the
exchange's work, which a real exchange does on its own machines). harvest itself never
loads this module; its answers are not an exchange's and nothing must trade on them."""

from __future__ import annotations

import os
import time

from celery.signals import worker_process_init

from harvest.venues.base import OrderResult, VenuePosition
from harvest.venues.sim.paper_settlement import TAKER_FEE_RATE

ENV_FLAG = "HARVEST_BENCH_INSTANT_VENUE"


class InstantVenue:
    """Answers from memory: ``positions`` (symbol → VenuePosition, as read at start) and
    the paper engine's filters; anything else goes to the paper engine."""

    def __init__(self, paper):
        self._paper = paper
        self._positions: dict[str, VenuePosition] = {p.symbol: p for p in paper.positions()}
        self._filters: dict = {}

    def positions(self) -> list[VenuePosition]:
        return list(self._positions.values())

    def position(self, symbol: str) -> VenuePosition | None:
        """The position as read at start, at the mark the benchmark set since (one GET: the
        guard re-reads R_net from the mark, so a start-time mark would reject every plan)."""
        p = self._positions.get(symbol)
        if p is None:
            return None
        mark = self._paper.r.get(self._paper.k_mark(symbol))
        return p if mark is None else p.model_copy(update={"mark_price": float(mark)})

    def filters(self, symbol: str):
        if symbol not in self._filters:
            self._filters[symbol] = self._paper.filters(symbol)
        return self._filters[symbol]

    def close_market(self, symbol: str, side: str, qty: str, client_order_id: str) -> OrderResult:
        return self._filled(symbol, side, float(qty), client_order_id)

    def order_and_position(
        self, symbol: str, client_order_id: str, conditional: bool = False
    ) -> tuple[OrderResult, VenuePosition | None, bool]:
        p = self._positions[symbol]
        return self._filled(symbol, p.side.close_order_side, p.qty / 4, client_order_id), p, True

    def _filled(self, symbol: str, side: str, qty: float, cid: str) -> OrderResult:
        mark = self._positions[symbol].mark_price
        return OrderResult(
            symbol=symbol,
            client_order_id=cid,
            order_id=1,
            side=side,
            type="MARKET",
            status="FILLED",
            orig_qty=qty,
            executed_qty=qty,
            avg_price=mark,
            commission=qty * mark * TAKER_FEE_RATE,
            update_time=time.time(),
        )

    def __getattr__(self, name: str):
        return getattr(self._paper, name)


@worker_process_init.connect(weak=False)
def _install(**_):
    if os.environ.get(ENV_FLAG) != "1":
        return
    from harvest.services.runtime import get_runtime

    rt = get_runtime()
    rt.venue = InstantVenue(rt.venue)
