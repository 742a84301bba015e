"""An account's history read from Binance USDⓈ-M futures (or the emulator) for ``harvest replay
--account``: fills, orders, conditional orders, funding, leverage and klines, through the
venue's python-binance client and its request-weight budget (read-only; nothing is sent).

Binance's rules it follows (:mod:`harvest.venues.binance_facts`, "history"):

* ``GET /fapi/v1/userTrades``, ``/fapi/v1/allOrders``, ``/fapi/v1/allAlgoOrders`` (weight 5
  each, a symbol per request): at most 7 days between ``startTime`` and ``endTime``, so a span
  is read in 7-day windows, each paged by time (``limit`` 1000; a full page is read again from
  its last row's time, rows de-duplicated by id). userTrades reaches back 6 months, the order
  lists 90 days (older orders are not answered: the stop of an older position is then unknown).
* ``GET /fapi/v1/income?incomeType=FUNDING_FEE`` (weight 30, every symbol at once) in the same
  windows; ``GET /fapi/v1/symbolConfig`` (weight 5) for the leverage (the account's *current*
  setting: Binance keeps no history of it).
* ``GET /fapi/v1/klines`` at ``limit`` 499 (weight 2: the cheapest rows per weight of the
  limit bands), the still-open bar dropped; whole UTC days are cached on disk
  (``<cache>/<venue>/<SYMBOL>-<interval>-<YYYY-MM-DD>.csv``, the 6-column kline layout
  :func:`harvest.data.read_klines` reads), so a second run reads only what is new.

Every request goes through :meth:`BinanceVenue._call` at the ``read`` priority: the fleet's
weight budget (:class:`harvest.venues.binance.WeightBudget`) is charged first, and when it
holds a read back (its share of the minute is spent, or a 429 set a back-off) the reader
waits the ``retry_after`` it names, at most ``max_wait_s`` in all, then raises. The weight it
spent is tallied by endpoint (:attr:`AccountHistory.spent`).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harvest.data import Klines
from harvest.venues import binance_facts as facts
from harvest.venues.base import VenueError
from harvest.venues.binance import BinanceVenue, _num, request_of, request_weight

DAY_MS = 86_400_000
#: klines rows per request: 499 costs weight 2 (the [100, 500) band), the fewest weight per row.
KLINES_PAGE = 499


class AccountHistory:
    """The history reads of one account (module docstring). ``venue``: the account's
    :class:`BinanceVenue`; ``sleep``: how to wait for the budget (``time.sleep``; tests pass
    their own); ``max_wait_s``: the longest total wait before a held-back read raises the
    budget's VenueError. Every method raises VenueError on an exchange error."""

    def __init__(self, venue: BinanceVenue, sleep: Callable[[float], None] = time.sleep, max_wait_s: float = 900.0):
        self.venue = venue
        self.sleep = sleep
        self.max_wait_s = max_wait_s
        self.waited_s = 0.0
        #: weight spent by endpoint path → [requests, weight] (Binance's price of each request sent)
        self.spent: dict[str, list[int]] = {}

    @property
    def weight_spent(self) -> int:
        """The weight of every request this reader sent (Binance's prices)."""
        return sum(w for _, w in self.spent.values())

    def _call(self, fn: str, label: str, **params: Any) -> Any:
        while True:
            try:
                out = self.venue._call(fn, label, "read", **params)
            except VenueError as e:
                wait = e.retry_after or 1.0
                if not e.retryable or e.http_status not in (429, 418) or self.waited_s + wait > self.max_wait_s:
                    raise
                self.sleep(wait)
                self.waited_s += wait
                continue
            path = request_of(fn, params)[1]
            row = self.spent.setdefault(path, [0, 0])
            row[0] += 1
            row[1] += request_weight(fn, params)
            return out

    def server_ms(self) -> int:
        """The exchange's clock (ms, ``GET /fapi/v1/time``, weight 1): market time on the emulator."""
        return int(_num(self._call("futures_time", "time")["serverTime"]))

    @staticmethod
    def windows(start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """``[start_ms, end_ms]`` cut into spans of at most 7 days (both ends inclusive)."""
        out, a = [], int(start_ms)
        while a <= end_ms:
            b = min(a + facts.HISTORY_WINDOW_MS - 1, int(end_ms))
            out.append((a, b))
            a = b + 1
        return out

    def _paged(self, fn: str, label: str, key: str, time_field: str, start_ms: int, end_ms: int, **params: Any) -> list:
        """Every row of a time-windowed history endpoint between ``start_ms`` and ``end_ms``,
        oldest first, de-duplicated by ``key``."""
        seen: dict[Any, dict] = {}
        for a, b in self.windows(start_ms, end_ms):
            t = a
            while True:
                page = self._call(fn, label, startTime=t, endTime=b, limit=facts.HISTORY_MAX_LIMIT, **params)
                for row in page:
                    seen.setdefault(row[key], row)
                if len(page) < facts.HISTORY_MAX_LIMIT:
                    break
                last = int(_num(page[-1][time_field]))
                if last <= t:  # a full page within one millisecond: nothing more to learn by time
                    break
                t = last
        return sorted(seen.values(), key=lambda r: (int(_num(r[time_field])), str(r[key])))

    def user_trades(self, symbol: str, start_ms: int, end_ms: int) -> list[dict]:
        """The account's fills of ``symbol`` (userTrades rows), oldest first."""
        return self._paged("futures_account_trades", "trades", "id", "time", start_ms, end_ms, symbol=symbol)

    def all_orders(self, symbol: str, start_ms: int, end_ms: int) -> list[dict]:
        """The account's orders of ``symbol`` (allOrders rows) created in the span."""
        return self._paged("futures_get_all_orders", "all_orders", "orderId", "time", start_ms, end_ms, symbol=symbol)

    def algo_orders(self, symbol: str, start_ms: int, end_ms: int) -> list[dict]:
        """The account's conditional orders of ``symbol`` (allAlgoOrders rows) created in the span."""
        return self._paged(
            "futures_get_all_algo_orders", "all_algo_orders", "algoId", "createTime", start_ms, end_ms, symbol=symbol
        )

    def funding(self, start_ms: int, end_ms: int) -> list[dict]:
        """Every FUNDING_FEE income row of the account (all symbols) in the span."""
        return self._paged(
            "futures_income_history", "income", "tranId", "time", start_ms, end_ms, incomeType="FUNDING_FEE"
        )

    def leverage(self, symbols: list[str]) -> dict[str, float]:
        """The account's current leverage of each symbol (``GET /fapi/v1/symbolConfig``, one
        request for every symbol: weight 5)."""
        rows = self._call("futures_symbol_config", "symbol_config")
        got = {x.get("symbol"): _num(x["leverage"]) for x in rows}
        return {s: got[s] for s in symbols if s in got}

    def klines(
        self, symbol: str, start_ms: int, end_ms: int, interval: str = "1m", cache: Path | None = None
    ) -> Klines:
        """Closed ``interval`` bars of ``symbol`` opened in ``[start_ms, end_ms]`` (the still-open
        bar dropped), whole UTC days read from ``cache`` (a folder) when there, the rest from
        ``GET /fapi/v1/klines`` and the closed days written back. Raises VenueError, or
        ValueError for an interval that is not fixed-length or a span without a closed bar."""
        step_s = facts.KLINE_INTERVALS.get(interval)
        if not step_s:
            raise ValueError(
                f"interval {interval!r}: one of {', '.join(k for k, v in facts.KLINE_INTERVALS.items() if v)}"
            )
        step = step_s * 1000
        now = self.server_ms()
        end_ms = min(int(end_ms), now - step)  # the last bar that has closed opens at or before this
        start_ms = int(start_ms) // step * step
        rows: list[list[float]] = []
        day = start_ms // DAY_MS * DAY_MS
        while day <= end_ms:
            a, b = max(day, start_ms), min(day + DAY_MS - 1, end_ms)
            whole = day + DAY_MS - step <= end_ms  # the day's last bar has closed: cacheable
            path = cache / f"{symbol}-{interval}-{_date(day)}.csv" if cache is not None else None
            got = _read_day(path) if path is not None and path.exists() else None
            if got is None:
                got = self._bars(symbol, interval, day if whole else a, day + DAY_MS - 1 if whole else b)
                if path is not None and whole and got:
                    _write_day(path, got)
            rows += [r for r in got if a <= r[0] <= b]
            day += DAY_MS
        if not rows:
            raise ValueError(f"{symbol}: no closed {interval} bar between {_date(start_ms)} and {_date(end_ms)}")
        arr = np.array(rows, dtype=np.float64)
        return Klines(
            symbol=symbol,
            open_time=(arr[:, 0] // 1000).astype(np.int64),
            open=arr[:, 1],
            high=arr[:, 2],
            low=arr[:, 3],
            close=arr[:, 4],
            volume=arr[:, 5],
        )

    def _bars(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> list[list[float]]:
        out: list[list[float]] = []
        t = start_ms
        while t <= end_ms:
            page = self._call(
                "futures_klines",
                "klines",
                symbol=symbol,
                interval=interval,
                startTime=t,
                endTime=end_ms,
                limit=KLINES_PAGE,
            )
            out += [[float(int(x[0])), *(_num(v) for v in x[1:6])] for x in page]
            if len(page) < KLINES_PAGE:
                break
            t = int(page[-1][0]) + 1
        return out


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d")


def _read_day(path: Path) -> list[list[float]] | None:
    """A cached day (``open_time ms,open,high,low,close,volume`` rows), or None when it does not read."""
    try:
        with open(path, newline="") as f:
            return [[float(x) for x in r[:6]] for r in csv.reader(f) if r and r[0].isdigit()]
    except (OSError, ValueError, IndexError):
        return None


def _write_day(path: Path, rows: list[list[float]]) -> None:
    """Write a closed day atomically (a half-written file is never read as the day)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["open_time", "open", "high", "low", "close", "volume"])
        for r in rows:
            w.writerow([int(r[0]), *(repr(x) for x in r[1:6])])
    tmp.replace(path)
