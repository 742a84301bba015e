"""Loaders for market data: Binance klines (every archive layout), funding and exchangeInfo.

I/O is limited to reading files; the parsed objects are plain numpy arrays and pydantic models.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent
KLINES_DIR = DATA_DIR / "klines"
FUNDING_DIR = DATA_DIR / "funding"
EXCHANGE_INFO = DATA_DIR / "exchange_info" / "fapi-exchangeInfo-2024-10-02.json"
#: Symbols the shipped data covers (klines, funding and filters).
SHIPPED_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT")
#: Market times (Unix s) the shipped klines of every symbol cover: from the first bar's open
#: (2025-06-14 00:00 UTC) to the earliest last bar's close (2025-06-24 10:32 UTC). Tested
#: against the files (tests/test_market_data.py).
SHIPPED_SPAN = (1749859200.0, 1750761120.0)


@dataclass(frozen=True)
class Klines:
    """Klines of one symbol at one interval: ``open_time`` in Unix seconds (int64, ascending),
    prices in USDT (float64), volume in base units, all of shape (n,). The bar interval
    (:attr:`interval_s`) is read from the data: the most common step between open times."""

    symbol: str
    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def index_at(self, t: float) -> int:
        """Index of the bar containing market time ``t`` (s): the last bar with
        open_time ≤ t. Raises ValueError when t is before the first bar."""
        i = int(np.searchsorted(self.open_time, t, side="right")) - 1
        if i < 0:
            raise ValueError(f"{self.symbol}: no kline at or before t={t}")
        return i

    def mark_at(self, t: float) -> float:
        """Mark price (USDT) at market time t: the close of the bar containing t."""
        return float(self.close[self.index_at(t)])

    @cached_property
    def interval_s(self) -> int:
        """Seconds per bar (60 for 1m, 300 for 5m, …): the most common step between open
        times (a gap in the data does not change it). 60 for a single bar."""
        steps = np.diff(self.open_time)
        if steps.size == 0:
            return 60
        vals, counts = np.unique(steps, return_counts=True)
        return int(vals[int(np.argmax(counts))])

    @property
    def start(self) -> float:
        return float(self.open_time[0])

    @property
    def end(self) -> float:
        """Close time of the last bar (s)."""
        return float(self.open_time[-1] + self.interval_s)

    def closed_by(self, t: float) -> int:
        """How many bars have closed by market time ``t`` (s): those with ``open_time +
        interval_s ≤ t`` (a bar still forming at ``t`` is not among them)."""
        return int(np.searchsorted(self.open_time, t - self.interval_s, side="right"))


def _to_seconds(ts: np.ndarray) -> np.ndarray:
    """Epoch timestamps in s, ms or µs (the archive's spot files switched to µs in 2025) → s."""
    ts = ts.astype(np.int64)
    if ts.size and ts.max() > 10**14:
        return ts // 1_000_000
    if ts.size and ts.max() > 10**11:
        return ts // 1000
    return ts


class KlineFileError(ValueError):
    """A file that is not klines: the message names the file, the line (1-based, in the CSV)
    and the problem."""


def _read_text(path: Path) -> tuple[str, str]:
    """The CSV text of a kline file and the name to report: ``.csv``, ``.csv.gz``, or a ``.zip``
    holding exactly one ``.csv`` (the layout of data.binance.vision). Raises KlineFileError."""
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                if len(names) != 1 or not names[0].endswith(".csv"):
                    raise KlineFileError(f"{path}: a kline archive holds one .csv, found {names[:5]}")
                return z.read(names[0]).decode("utf-8", errors="strict"), f"{path}!{names[0]}"
        except zipfile.BadZipFile as e:
            raise KlineFileError(f"{path}: not a zip archive ({e})") from e
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            return f.read(), str(path)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise KlineFileError(f"{path}: unreadable ({e})") from e


def read_klines(path: str | Path, symbol: str | None = None) -> Klines:
    """Read a kline file in any of Binance's layouts: the 6-column
    ``open_time,open,high,low,close,volume`` file, the public archive's 12-column file with a
    header (futures) or without (spot), as ``.csv``, ``.csv.gz`` or the archive's ``.zip``;
    open times in s, ms or µs. The symbol is ``symbol`` or the file name's first ``-`` part.

    Nothing is guessed: a file with too few columns, a value that is not a number, a NaN or
    infinite value, a price ≤ 0, a high below the low, the open or the close, a low above
    them, a negative volume, or open times that are not strictly increasing (unsorted or
    duplicate bars) is refused. Raises KlineFileError (a ValueError) naming the file, the line
    and the problem.
    """
    path = Path(path)
    text, name = _read_text(path)
    head = text[: text.find("\n") + 1 or len(text)]
    first = 1 if head.strip() and not head.strip().split(",")[0].strip().lstrip("-").isdigit() else 0
    try:  # the fast path: numpy's C parser over the whole table
        vals = np.loadtxt(io.StringIO(text), delimiter=",", usecols=range(6), skiprows=first, ndmin=2, dtype=np.float64)
    except ValueError:  # find the row and say what is wrong with it
        for i, r in enumerate(csv.reader(io.StringIO(text))):
            if i < first or not r:
                continue
            if len(r) < 6:
                raise KlineFileError(f"{name}, line {i + 1}: {len(r)} columns, a kline row has at least 6") from None
            try:
                [float(x) for x in r[:6]]
            except ValueError as e:
                raise KlineFileError(f"{name}, line {i + 1}: not a number ({e})") from None
        raise
    if vals.shape[0] == 0:
        raise KlineFileError(f"{name}: no kline rows")
    # 1-based file line of each row (blank lines are skipped by the parser)
    lines = np.flatnonzero([bool(x.strip()) for x in text.splitlines()])[first:] + 1

    def refuse(mask: Any, problem: str) -> None:
        if mask.any():
            k = int(np.argmax(mask))
            raise KlineFileError(f"{name}, line {lines[k]}: {problem}")

    refuse(~np.isfinite(vals).all(axis=1), "a value is NaN or infinite")
    o, h, lo, c, v = vals[:, 1], vals[:, 2], vals[:, 3], vals[:, 4], vals[:, 5]
    refuse((vals[:, 1:5] <= 0).any(axis=1), "a price is not positive")
    refuse((h < lo) | (h < o) | (h < c) | (lo > o) | (lo > c), "high/low do not bound the open and close")
    refuse(v < 0, "negative volume")
    times = _to_seconds(vals[:, 0])
    step = np.diff(times)
    if step.size:
        refuse(np.concatenate([[False], step == 0]), "duplicate open time")
        refuse(np.concatenate([[False], step < 0]), "open time before the previous row's (unsorted)")
    sym = symbol or path.name.split("-", 1)[0]
    return Klines(
        symbol=sym, open_time=times, open=o.copy(), high=h.copy(), low=lo.copy(), close=c.copy(), volume=v.copy()
    )


@lru_cache(maxsize=None)
def load_klines(symbol: str) -> Klines:
    """The shipped 1-minute klines of ``symbol`` (cached per process).
    Raises FileNotFoundError for a symbol the project ships no data for."""
    files = sorted(KLINES_DIR.glob(f"{symbol}-1m-*.csv*"))
    if not files:
        raise FileNotFoundError(f"no shipped klines for {symbol} in {KLINES_DIR}")
    return read_klines(files[0], symbol)


@lru_cache(maxsize=None)
def load_funding(symbol: str) -> tuple[np.ndarray, np.ndarray]:
    """Funding events of ``symbol``: (calc_time in s, rate as a fraction per period).
    Positive rate: longs pay shorts. Empty arrays when none is shipped."""
    files = sorted(FUNDING_DIR.glob(f"{symbol}-funding-*.csv"))
    if not files:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    with open(files[0]) as f:
        rows = [r for r in csv.reader(f)][1:]
    t = _to_seconds(np.array([int(r[0]) for r in rows], dtype=np.int64))
    return t, np.array([float(r[1]) for r in rows])


@dataclass(frozen=True)
class SymbolFilters:
    """Binance symbol filters (Decimal, as strings on the wire): PRICE_FILTER tickSize,
    MARKET_LOT_SIZE stepSize/minQty/maxQty (the ones MARKET orders obey), MIN_NOTIONAL
    notional (USDT)."""

    symbol: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal

    def round_qty(self, qty: float | Decimal) -> Decimal:
        """Quantity rounded *down* to stepSize (never closes more than asked)."""
        q = Decimal(str(qty))
        return (q / self.step_size).to_integral_value(rounding=ROUND_DOWN) * self.step_size

    def round_price(self, price: float | Decimal, direction: str = "down") -> Decimal:
        """Price rounded to tickSize, ``direction`` ``"down"`` or ``"up"``."""
        p = Decimal(str(price))
        mode = ROUND_DOWN if direction == "down" else ROUND_UP
        return (p / self.tick_size).to_integral_value(rounding=mode) * self.tick_size

    @staticmethod
    def fmt(d: Decimal) -> str:
        """Plain decimal string for the wire (never exponent notation such as ``1E-5``)."""
        return format(d.normalize(), "f")

    @staticmethod
    def fmt_float(x: float) -> str:
        """A float as a plain decimal string (shortest round-trip digits, no exponent)."""
        return SymbolFilters.fmt(Decimal(repr(float(x))))


def filters_from_exchange_info(info: dict[str, Any]) -> dict[str, SymbolFilters]:
    """Parse a raw ``/fapi/v1/exchangeInfo`` response into filters per symbol.
    Raises KeyError/ValueError on a response without the expected filters."""
    out: dict[str, SymbolFilters] = {}
    for s in info["symbols"]:
        f = {x["filterType"]: x for x in s["filters"]}
        lot = f.get("MARKET_LOT_SIZE") or f["LOT_SIZE"]
        out[s["symbol"]] = SymbolFilters(
            symbol=s["symbol"],
            tick_size=Decimal(f["PRICE_FILTER"]["tickSize"]),
            step_size=Decimal(lot["stepSize"]),
            min_qty=Decimal(lot["minQty"]),
            max_qty=Decimal(lot["maxQty"]),
            min_notional=Decimal(f["MIN_NOTIONAL"]["notional"]),
        )
    return out


@lru_cache(maxsize=1)
def load_exchange_info() -> dict[str, Any]:
    """The shipped raw exchangeInfo response (dict)."""
    with open(EXCHANGE_INFO) as f:
        info: dict[str, Any] = json.load(f)
    return info


@lru_cache(maxsize=1)
def shipped_filters() -> dict[str, SymbolFilters]:
    """Filters of the shipped exchangeInfo, by symbol."""
    return filters_from_exchange_info(load_exchange_info())


BRACKETS = DATA_DIR / "brackets" / "fapi-leverageBracket.json"


@lru_cache(maxsize=1)
def load_brackets_raw() -> list[dict[str, Any]]:
    """The shipped ``GET /fapi/v1/leverageBracket`` answer (see ``brackets/`` in the data
    README: modeled, not a snapshot)."""
    with open(BRACKETS) as f:
        rows: list[dict[str, Any]] = json.load(f)
    return rows
