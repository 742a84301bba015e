"""The positions a replay manages: generated on the data, or read from the desk's own CSV.

Every entry opens at the *open* of the bar that contains its time (the generated ones at a
bar's open price; a CSV row at its own price), with a taker fee. Generated entries need the
market state at entry (the longer window of closed bars before them) and are spread over each
symbol's span:

* ``grid``: every ``every_s`` seconds, one LONG and one SHORT (a paired, side-neutral sample);
* ``random``: ``n`` entries per symbol at seeded random bars, random side;
* ``demo``: every ``every_s`` seconds, the side of the last hour's move (the demo's rule).

Size: ``margin`` USDT at ``leverage`` (qty = margin × leverage / price). A CSV has the columns
``symbol,side,entry_time,entry_price,qty,leverage[,stop]`` (time ISO-8601 UTC or Unix s/ms);
a row with an unknown symbol, a time outside the data (or without the history a market state
needs), a non-positive number or a stop on the profit side of entry is refused naming the line.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from harvest.domain.models import HarvestTheta, Side
from harvest.lab.market import ReplayMarket


class EntriesError(ValueError):
    """An entries file or request that cannot be replayed (file, line and problem named)."""


@dataclass(frozen=True)
class Entry:
    """One position to replay: symbol, side, the global bar it opens in, entry price (USDT),
    qty (base units), leverage (≥ 1) and the stop it came with (USDT) or None (the exit ladder
    gives one, as the live book does)."""

    symbol: str
    side: Side
    bar: int
    price: float
    qty: float
    leverage: float
    stop: float | None = None


def _warm(m: ReplayMarket, symbol: str, theta: HarvestTheta) -> tuple[int, int]:
    """First and last global bar a generated entry may open in (market state known; one bar
    left to act in)."""
    s, n = m.start[symbol], m.count[symbol]
    return s + max(theta.sigma_window, theta.ts_window) + 1, s + n - 2


def generate(
    m: ReplayMarket,
    theta: HarvestTheta,
    rule: str = "grid",
    every_s: float = 3600.0,
    n: int = 500,
    seed: int = 7,
    margin: float = 100.0,
    leverage: float = 10.0,
    start: float | None = None,
    end: float | None = None,
) -> list[Entry]:
    """Entries on every symbol of ``m`` by ``rule`` (module docstring), opening between
    ``start`` and ``end`` (market time, s) when given. Raises EntriesError for an unknown rule."""
    if rule not in ("grid", "random", "demo"):
        raise EntriesError(f"unknown entry rule {rule!r}: grid, random or demo")
    out: list[Entry] = []
    rng = np.random.default_rng(seed)
    for sym in m.symbols:
        lo, hi = _warm(m, sym, theta)
        ot = m.open_time
        bars = np.arange(lo, hi + 1)
        if start is not None:
            bars = bars[ot[bars] >= start]
        if end is not None:
            bars = bars[ot[bars] < end]
        if bars.size == 0:
            continue
        step = max(1, int(round(every_s / m.interval_of(sym))))
        if rule == "random":
            pick = np.sort(rng.choice(bars, size=min(n, bars.size), replace=False))
            sides = rng.integers(0, 2, size=pick.size)
            chosen = [(int(b), Side.LONG if sd else Side.SHORT) for b, sd in zip(pick, sides, strict=True)]
        else:
            grid = bars[(bars - bars[0]) % step == 0]
            if rule == "grid":
                chosen = [(int(b), sd) for b in grid for sd in (Side.LONG, Side.SHORT)]
            else:
                back = max(1, int(round(3600 / m.interval_of(sym))))
                chosen = []
                for b in grid:
                    prev = max(m.start[sym], int(b) - back)
                    chosen.append((int(b), Side.LONG if m.close[b - 1] >= m.close[prev] else Side.SHORT))
        for b, sd in chosen:
            price = float(m.open[b])
            out.append(Entry(sym, sd, b, price, margin * leverage / price, leverage))
    return out


def _time(text: str) -> float:
    text = text.strip()
    if text.replace(".", "", 1).isdigit():
        v = float(text)
        return v / 1000 if v > 10**11 else v
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def read_entries(path: str | Path, m: ReplayMarket, theta: HarvestTheta) -> list[Entry]:
    """Entries from the desk's CSV (module docstring). Raises EntriesError naming the line."""
    path = Path(path)
    out: list[Entry] = []
    with open(path) as f:
        rows = list(csv.reader(f))
    if not rows:
        raise EntriesError(f"{path}: empty")
    head = [h.strip().lower() for h in rows[0]]
    need = ["symbol", "side", "entry_time", "entry_price", "qty", "leverage"]
    if head[:6] != need:
        raise EntriesError(f"{path}, line 1: columns must be {','.join(need)}[,stop], got {','.join(head)}")
    for i, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        where = f"{path}, line {i}"
        try:
            sym, side = r[0].strip().upper(), Side(r[1].strip().upper())
            t, price, qty, lev = _time(r[2]), float(r[3]), float(r[4]), float(r[5])
            stop = float(r[6]) if len(r) > 6 and r[6].strip() else None
        except (ValueError, IndexError) as e:
            raise EntriesError(f"{where}: {e}") from e
        if sym not in m.start:
            raise EntriesError(f"{where}: unknown symbol {sym} (the data holds {', '.join(m.symbols)})")
        if not all(math.isfinite(x) and x > 0 for x in (price, qty)) or not (1 <= lev <= 125):
            raise EntriesError(f"{where}: entry price and qty must be positive, leverage 1..125")
        try:
            b = m.bar_of(sym, t)
        except ValueError as e:
            raise EntriesError(f"{where}: {e}") from e
        lo, hi = _warm(m, sym, theta)
        if not lo <= b <= hi:
            raise EntriesError(f"{where}: {sym} at {r[2].strip()} has too little history before it or no bar after it")
        if stop is not None and (not math.isfinite(stop) or stop <= 0 or side.sign * (price - stop) <= 0):
            raise EntriesError(f"{where}: stop {stop} is not on the loss side of entry {price} for a {side.value}")
        out.append(Entry(sym, side, b, price, qty, lev, stop))
    if not out:
        raise EntriesError(f"{path}: no entries")
    return out
