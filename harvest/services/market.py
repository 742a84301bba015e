"""The market states the kernel reads: one per symbol, recomputed by beat's market refresh
(``harvest.refresh_market``) and cached in Redis (:class:`harvest.store.MarketCache`)."""

from __future__ import annotations

import logging
import time

from harvest.data import load_klines
from harvest.domain.market import market_state_at, market_state_from_closes
from harvest.services.runtime import Runtime
from harvest.store.streams import KlineCache
from harvest.venues.base import VenueError

log = logging.getLogger("harvest")


def refresh_market_states(rt: Runtime) -> int:
    """Recompute the market state of every symbol any account allows at the current market
    time and cache it (one state per symbol, shared by the accounts; from the deployment's
    theta windows). On python-binance venues (testnet, live, emulator) from the closed 1m
    bars: those ``harvest streams`` keeps from the kline streams when every bar needed is
    there (counted ``market:klines_streamed``: no request weight), else
    ``GET /fapi/v1/klines`` (``market:klines_rest``), whose bars are kept so that the streams'
    next bars complete them. On the in-process paper engine from the shipped klines. A symbol
    whose bars cannot be had is counted ``market:unavailable`` and keeps its last state.
    Returns how many symbols were refreshed."""
    now = rt.market_now()
    theta = (rt.deployment or rt.settings).theta  # the deployment's windows, not one account's overrides
    states = []
    stamp = {"computed_at": time.time()}
    symbols = dict.fromkeys(s for a in rt.accounts for s in rt.for_account(a).settings.symbols)
    klines = KlineCache(rt.r, rt.settings.namespace)
    last_bar_ms = (int(now // 60) - 1) * 60_000  # the open time of the last 1m bar closed by market now
    for sym in symbols:
        try:
            if rt.settings.uses_binance:
                closes = klines.closes(sym, theta.closes_needed, last_bar_ms)  # kline streams (harvest streams)
                if closes is None:  # a gap, no streams: REST, which fills the cache for the streams to go on
                    opens, closes = rt.venue.closed_bars(sym, theta.closes_needed)
                    klines.put(sym, [(int(t), float(c)) for t, c in zip(opens, closes, strict=True)])
                    rt.counters.count("market:klines_rest")
                else:
                    rt.counters.count("market:klines_streamed")
                states.append(market_state_from_closes(sym, closes, now, theta).model_copy(update=stamp))
            else:  # the paper engine: shipped klines (a synthetic listing uses its source's)
                src = rt.venue.source(sym)
                states.append(market_state_at(load_klines(src), now, theta).model_copy(update={"symbol": sym, **stamp}))
        except (FileNotFoundError, ValueError, VenueError) as e:
            rt.counters.count("market:unavailable")
            log.warning("market state for %s unavailable: %s", sym, e)
    rt.market.put_many(states)
    rt.heartbeats.beat("market")
    return len(states)
