"""The replay's market: klines of one or more symbols laid end to end on one bar axis, their
funding per bar, and the market state after each bar closes.

Each symbol's bars occupy ``[start[s], start[s] + n[s])`` of the concatenated arrays, so a
trade is a bar index and the engine steps every open trade one bar at a time without looking
up its symbol. Funding: every funding event (``calc_time``, rate) is summed into the bar whose
open ≤ calc_time < close, and paid at that bar's close price (the mark). Files: klines through
:func:`harvest.data.read_klines` (strict: a file that is not klines is refused naming the line);
funding from a ``calc_time,funding_rate`` CSV beside a lab kline file (:func:`funding_for`:
the files that overlap the klines, beside a symlink or its target; a file that does not
overlap is refused).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import numpy as np

from harvest.data import MAX_LINE_CHARS, SHIPPED_SYMBOLS, Klines, load_funding, load_klines, read_klines
from harvest.domain.market import MarketSeries, market_series
from harvest.domain.models import HarvestTheta


class FundingFileError(ValueError):
    """A funding file that does not read: the message names the file, the line and the problem."""


#: The most rows a funding file may hold: 1 M (funding at most hourly: over a century).
MAX_FUNDING_ROWS = 1_000_000


def read_funding(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(calc_time s, rate fraction)`` from a ``calc_time,funding_rate`` CSV (the archive's
    ``fundingRate`` files and the lab's); times in s/ms/µs. At most :data:`MAX_FUNDING_ROWS`
    rows, read as a stream. Raises FundingFileError."""
    path = Path(path)
    times: list[int] = []
    rates: list[float] = []
    with open(path) as f:
        for i, r in _funding_rows(csv.reader(_short_lines(f, path)), path):
            if not r or (i == 0 and not r[0].strip().isdigit()):
                continue
            if len(times) >= MAX_FUNDING_ROWS:
                raise FundingFileError(f"{path}: more than {MAX_FUNDING_ROWS} funding rows (the loader's limit)")
            try:
                times.append(int(float(r[0])))
                rates.append(float(r[1 if len(r) < 3 else 2]) if len(r) >= 2 else float("nan"))
            except (ValueError, IndexError) as e:
                raise FundingFileError(f"{path}, line {i + 1}: not a funding row ({e})") from e
            if not np.isfinite(rates[-1]) or abs(rates[-1]) > 0.05:
                raise FundingFileError(f"{path}, line {i + 1}: funding rate {rates[-1]!r} is not a plausible fraction")
    t = np.array(times, dtype=np.int64)
    t = np.where(t > 10**14, t // 1_000_000, np.where(t > 10**11, t // 1000, t))
    if t.size > 1 and np.any(np.diff(t) <= 0):
        raise FundingFileError(f"{path}: calc_time not strictly increasing")
    return t, np.array(rates)


def _short_lines(f: TextIO, path: Path) -> Iterator[str]:
    """The lines of ``f``, each read at most :data:`harvest.data.MAX_LINE_CHARS` + 1 characters
    at a time: a longer line raises FundingFileError (never held whole)."""
    for i in itertools.count(1):
        line = f.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        if len(line) > MAX_LINE_CHARS:
            raise FundingFileError(f"{path}, line {i}: longer than {MAX_LINE_CHARS} characters")
        yield line


def _funding_rows(rows: Iterator[list[str]], path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(0-based line, row)`` of a csv reader; a line the reader refuses (a field over its
    131 072 characters, an unclosed quote) raises FundingFileError naming it."""
    i = 0
    while True:
        try:
            r = next(rows)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as e:
            raise FundingFileError(f"{path}, line {i + 1}: not a funding row ({e})") from e
        yield i, r
        i += 1


def _utc(t: float) -> str:
    return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M")


def funding_for(
    klines_path: str | Path, symbol: str, span: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The funding beside a lab kline file: every ``../funding/<SYMBOL>-funding-*.csv`` whose
    calc_times overlap ``span`` (the klines' first open and last close, market s; None: every
    file), merged in time order (a time in two files counted once). The folder is looked for
    beside the path as given first (a symlinked kline file finds the funding beside the link),
    then beside the file it resolves to. Returns ``(calc_time s, rate fraction)`` or None when
    no funding file exists for the symbol. Raises FundingFileError when funding files exist but
    none overlaps the klines (the message names both spans), or a file does not read."""
    path = Path(klines_path)
    files: list[Path] = []
    for where in (path.absolute(), path.resolve()):
        d = where.parent.parent / "funding"
        files = sorted(d.glob(f"{symbol}-funding-*.csv")) if d.is_dir() else []
        if files:
            break
    if not files:
        return None
    parts, seen = [], []
    for f in files:
        t, r = read_funding(f)
        seen.append(f"{f.name} ({_utc(t[0])} .. {_utc(t[-1])})" if t.size else f"{f.name} (no rows)")
        if t.size and (span is None or (t[0] <= span[1] and t[-1] >= span[0])):
            parts.append((t, r))
    if not parts:
        where_s = "" if span is None else f" {_utc(span[0])} .. {_utc(span[1])}"
        raise FundingFileError(
            f"{path}: no funding file of {symbol} overlaps the klines ({where_s.strip() or 'no span'}): "
            f"{', '.join(seen)} in {files[0].parent}"
        )
    t = np.concatenate([p[0] for p in parts])
    r = np.concatenate([p[1] for p in parts])
    order = np.argsort(t, kind="stable")
    t, r = t[order], r[order]
    keep = np.concatenate([[True], np.diff(t) > 0]) if t.size else np.zeros(0, dtype=bool)
    return t[keep], r[keep]


@dataclass
class ReplayMarket:
    """Every symbol's bars on one axis (see module docstring). Arrays of shape (N,) over all
    bars: ``open_time`` (s), ``open``/``high``/``low``/``close`` (USDT), ``funding`` (summed
    rate of the bar's funding events, fraction), and the market state after each bar
    (:class:`harvest.domain.market.MarketSeries` fields). ``start``/``count``: per symbol."""

    symbols: list[str]
    interval_s: list[int]
    start: dict[str, int]
    count: dict[str, int]
    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    funding: np.ndarray
    series: MarketSeries
    has_funding: dict[str, bool] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def bar_of(self, symbol: str, t: float) -> int:
        """Global index of the bar of ``symbol`` that contains market time ``t`` (s).
        Raises ValueError outside the symbol's data."""
        s, n = self.start[symbol], self.count[symbol]
        ot = self.open_time[s : s + n]
        i = int(np.searchsorted(ot, t, side="right")) - 1
        if i < 0 or t >= ot[-1] + self.interval_of(symbol):
            raise ValueError(f"{symbol}: time {t:.0f} outside the data ({ot[0]:.0f} .. {ot[-1]:.0f})")
        return s + i

    def interval_of(self, symbol: str) -> int:
        return self.interval_s[self.symbols.index(symbol)]

    def symbol_of_bar(self, b: np.ndarray) -> np.ndarray:
        """Symbol index of each global bar index."""
        starts = np.array([self.start[s] for s in self.symbols])
        return np.searchsorted(starts, b, side="right") - 1

    @property
    def end_bar(self) -> dict[str, int]:
        """Global index of each symbol's last bar."""
        return {s: self.start[s] + self.count[s] - 1 for s in self.symbols}


#: Window cells (bars × window length) :func:`market_series` is given at a time: its
#: temporaries are arrays of about this many float64 (4 MB each), whatever the bar count.
SERIES_BLOCK_CELLS = 500_000
# The lab's market state columns and their types: regime, direction and regime bars are small
# integers (REGIMES indices, −1..1, ≤ theta.regime_confirm_bars ≤ 100), kept as int8.
_SERIES_DTYPES = {
    "sigma": np.float64,
    "ts": np.float64,
    "p_trend": np.float64,
    "trend_dir": np.int8,
    "regime": np.int8,
    "regime_bars": np.int8,
    "valid": np.bool_,
}


def _empty_series(n: int) -> MarketSeries:
    return MarketSeries(**{f: np.empty(n, dtype=dt) for f, dt in _SERIES_DTYPES.items()})


def series_into(closes: np.ndarray, theta: HarvestTheta, out: MarketSeries, at: int) -> None:
    """Write :func:`harvest.domain.market.market_series` of ``closes`` (USDT, shape (n,)) into
    rows ``at .. at + n`` of ``out``, a block of bars at a time: each block with the bars before
    it that its windows and the regime confirmation read (``max(sigma_window, ts_window) + 1 +
    regime_confirm_bars``), so every row is the one the whole series would have (each row of
    market_series reads only its own windows; tested bit for bit, tests/unit/test_kline_limits.py).
    Memory: about :data:`SERIES_BLOCK_CELLS` float64 per temporary, not bars × window (the whole
    series of 5 M one-minute bars at windows of 60 took 10 GB). Raises ValueError as
    market_series does."""
    n = closes.size
    back = max(theta.sigma_window, theta.ts_window) + 1 + theta.regime_confirm_bars
    block = max(SERIES_BLOCK_CELLS // (max(theta.sigma_window, theta.ts_window) + 1), back)
    for b0 in range(0, max(n, 1), block):
        b1 = min(b0 + block, n)
        lo = max(b0 - back, 0)
        part = market_series(closes[lo:b1], theta)
        for f in _SERIES_DTYPES:
            getattr(out, f)[at + b0 : at + b1] = getattr(part, f)[b0 - lo :]


def build_market(
    data: list[tuple[Klines, tuple[np.ndarray, np.ndarray] | None, str]], theta: HarvestTheta
) -> ReplayMarket:
    """Lay ``(klines, funding or None, source)`` of each symbol end to end and compute the
    market state after every bar (window lengths of ``theta``). Raises ValueError when a
    symbol appears twice.

    Memory: the market's arrays are allocated once and filled symbol by symbol (one symbol's
    prices are the klines' own arrays, not copies), and the market state is computed in blocks
    (:func:`series_into`): 44 bytes a bar besides the klines (76 with several symbols)."""
    syms = [k.symbol for k, _, _ in data]
    if len(set(syms)) != len(syms):
        raise ValueError(f"a symbol appears twice: {syms}")
    total = sum(k.close.size for k, _, _ in data)
    one = len(data) == 1
    cols = {
        name: (
            np.asarray(getattr(data[0][0], name), dtype=np.float64) if one and name != "open_time" else np.empty(total)
        )
        for name in ("open_time", "open", "high", "low", "close")
    }
    funding = np.zeros(total)
    series = _empty_series(total)
    start, count, has_f, src, start_i = {}, {}, {}, {}, 0
    for k, fund, source in data:
        n = k.close.size
        start[k.symbol], count[k.symbol], src[k.symbol] = start_i, n, source
        for name in ("open_time", "open", "high", "low", "close"):
            if not (one and name != "open_time"):
                cols[name][start_i : start_i + n] = getattr(k, name)
        if fund is not None and fund[0].size:
            # the bar that ends at or after the funding time: paid by what is open until then
            idx = np.searchsorted(k.open_time, fund[0], side="left") - 1
            ok = (idx >= 0) & (fund[0] <= k.open_time[-1] + k.interval_s)
            np.add.at(funding, start_i + idx[ok], fund[1][ok])
        has_f[k.symbol] = fund is not None and fund[0].size > 0
        series_into(k.close, theta, series, start_i)
        start_i += n
    return ReplayMarket(
        symbols=syms,
        interval_s=[k.interval_s for k, _, _ in data],
        start=start,
        count=count,
        series=series,
        has_funding=has_f,
        sources=src,
        funding=funding,
        **cols,
    )


def load_market(paths: list[str], theta: HarvestTheta) -> ReplayMarket:
    """The market of kline files (any Binance archive layout; the symbol from each file name)
    with the funding file beside each lab file, or of the shipped data when ``paths`` is empty
    or holds ``shipped``. Raises KlineFileError / FundingFileError / ValueError."""
    data: list[tuple[Klines, tuple[np.ndarray, np.ndarray] | None, str]] = []
    if not paths or paths == ["shipped"]:
        for s in SHIPPED_SYMBOLS:
            data.append((load_klines(s), load_funding(s), "shipped"))
    else:
        for p in paths:
            path = Path(p)
            k = read_klines(path)
            span = (float(k.open_time[0]), float(k.open_time[-1] + k.interval_s))
            data.append((k, funding_for(path, k.symbol, span), str(path)))
    return build_market(data, theta)


def build_market_like(m: ReplayMarket, theta: HarvestTheta) -> ReplayMarket:
    """``m`` with its market states recomputed for ``theta``'s windows and regime parameters
    (the bars and funding unchanged)."""
    series = _empty_series(m.close.size)
    for s in m.symbols:
        series_into(m.close[m.start[s] : m.start[s] + m.count[s]], theta, series, m.start[s])
    return replace(m, series=series)
