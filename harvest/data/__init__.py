"""Loaders for market data: Binance klines (every archive layout), funding and exchangeInfo.

I/O is limited to reading files; the parsed objects are plain numpy arrays and pydantic models.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import io
import json
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from functools import cached_property, lru_cache
from pathlib import Path
from typing import IO, Any, TextIO, cast

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
        if self.open_time.size < 2:
            return 60
        tally: dict[int, int] = {}
        for s in range(0, self.open_time.size - 1, 1 << 20):  # a block at a time: no array of n
            vals, counts = np.unique(np.diff(self.open_time[s : s + (1 << 20) + 1]), return_counts=True)
            for v, c in zip(vals.tolist(), counts.tolist(), strict=True):
                tally[v] = tally.get(v, 0) + c
        return min(tally, key=lambda v: (-tally[v], v))  # the most common; the shortest of equals

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


def _to_seconds_in_place(raw: np.ndarray) -> np.ndarray:
    """:func:`_to_seconds` of float64 epoch times (shape (n,), n ≥ 1), as int64 in ``raw``'s
    own memory (converted a block at a time): no second array of n."""
    t = raw.view(np.int64)
    for s in range(0, raw.size, 1 << 20):
        t[s : s + (1 << 20)] = raw[s : s + (1 << 20)]  # overlapping: numpy buffers the block
    top = int(t.max())
    if top > 10**14:
        t //= 1_000_000
    elif top > 10**11:
        t //= 1000
    return t


class KlineFileError(ValueError):
    """A file that is not klines, or one past the loader's limits: the message names the file,
    the line (1-based, in the CSV) or the limit, and the problem."""


#: The most CSV one kline file may hold once decompressed (bytes): 2 GiB. The lab's largest
#: real file (three years of 5-minute BTCUSDT bars) holds 17 MB; :data:`MAX_KLINE_ROWS` rows
#: of the archive's 12-column layout are about 1.2 GB.
MAX_CSV_BYTES = 2 * 1024**3
#: The most a compressed kline file (the ``.zip``'s member, a ``.csv.gz``) may expand: 200
#: times its compressed size, plus 1 MiB for tiny files. Kline CSVs expand 2.8 to 5.2 times
#: under gzip (measured on the 206 files of the lab set, ../shared/data/lab), 8 to 12 times
#: when generated with constant prices (only the times change); a deflate bomb about 1000.
MAX_EXPANSION = 200
#: The most kline rows one file may hold: 8 M, 15 years of 1-minute bars (Binance's oldest
#: pair, spot BTCUSDT since 2017-08, has about 4.9 M). The loader keeps 48 bytes per row (the
#: open time and five float64 columns), so at most 384 MB.
MAX_KLINE_ROWS = 8_000_000
#: The longest line a kline file may hold (characters); a row of the archive's 12-column
#: layout with microsecond times has under 200.
MAX_LINE_CHARS = 4096
_BLOCK_CHARS = 1024 * 1024  # text parsed at a time: about 10 000 rows
_MiB = 1024 * 1024
_CSV_LIMIT = f"{MAX_CSV_BYTES} bytes ({MAX_CSV_BYTES / 1024**3:g} GiB)"


def _expansion_limit(compressed: int) -> int:
    """Bytes of CSV a compressed member of ``compressed`` bytes may yield (:data:`MAX_EXPANSION`)."""
    return min(MAX_CSV_BYTES, MAX_EXPANSION * compressed + _MiB)


class _Capped(io.RawIOBase):
    """A binary stream read through, counting the bytes it hands out; past ``limit`` it raises
    KlineFileError (``why`` says which limit). Declared sizes can lie: this counts."""

    def __init__(self, raw: IO[bytes], limit: int, name: str, why: str) -> None:
        self._raw, self._limit, self._name, self._why = raw, limit, name, why
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.count += n
        if self.count > self._limit:
            raise KlineFileError(
                f"{self._name}: more than {self._limit} bytes once decompressed ({self._why}); refused"
            )
        return n


@contextmanager
def _csv_text(path: Path) -> Iterator[tuple[TextIO, str]]:
    """The CSV of a kline file as a text stream (UTF-8, universal newlines) and the name to
    report: ``.csv``, ``.csv.gz``, or a ``.zip`` holding exactly one ``.csv`` (the layout of
    data.binance.vision), read through :class:`_Capped` at :data:`MAX_CSV_BYTES` and, when
    compressed, :data:`MAX_EXPANSION` times the compressed size. A zip member whose declared
    size passes either limit is refused before anything is decompressed. Raises
    KlineFileError."""
    with ExitStack() as stack:
        if path.suffix == ".zip":
            try:
                z = stack.enter_context(zipfile.ZipFile(path))
            except zipfile.BadZipFile as e:
                raise KlineFileError(f"{path}: not a zip archive ({e})") from e
            except OSError as e:
                raise KlineFileError(f"{path}: unreadable ({e})") from e
            names = [n for n in z.namelist() if not n.endswith("/")]
            if len(names) != 1 or not names[0].endswith(".csv"):
                raise KlineFileError(f"{path}: a kline archive holds one .csv, found {names[:5]}")
            info, name = z.getinfo(names[0]), f"{path}!{names[0]}"
            if info.file_size > MAX_CSV_BYTES:
                raise KlineFileError(
                    f"{name}: declares {info.file_size} bytes of CSV, more than the limit of {_CSV_LIMIT}; "
                    "refused before decompressing"
                )
            limit = _expansion_limit(info.compress_size)
            if info.file_size > limit:
                raise KlineFileError(
                    f"{name}: declares {info.file_size} bytes from {info.compress_size} compressed "
                    f"({info.file_size / max(info.compress_size, 1):.0f} times), more than the limit of "
                    f"{MAX_EXPANSION} times (a zip bomb?); refused before decompressing"
                )
            try:
                raw: IO[bytes] = stack.enter_context(z.open(info))
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, OSError) as e:  # encrypted, unknown method
                raise KlineFileError(f"{name}: unreadable ({e})") from e
            why = f"the limit: {MAX_EXPANSION} times the {info.compress_size} compressed bytes, at most {_CSV_LIMIT}"
        else:
            name = str(path)
            try:
                opened = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
                raw = stack.enter_context(cast(IO[bytes], opened))
                size = path.stat().st_size
            except OSError as e:
                raise KlineFileError(f"{path}: unreadable ({e})") from e
            if path.suffix == ".gz":  # gzip's declared size (mod 2**32) is no guide: count
                limit = _expansion_limit(size)
                why = f"the limit: {MAX_EXPANSION} times the {size} compressed bytes, at most {_CSV_LIMIT}"
            else:
                limit, why = MAX_CSV_BYTES, f"the limit: {_CSV_LIMIT}"
        capped = io.BufferedReader(_Capped(raw, limit, name, why), buffer_size=_MiB)
        yield io.TextIOWrapper(capped, encoding="utf-8", errors="strict", newline=None), name


def _line_blocks(text: TextIO, name: str) -> Iterator[tuple[list[str], int]]:
    """The text's lines, in blocks of about :data:`_BLOCK_CHARS`, each with the 1-based line
    number of its first line. Raises KlineFileError for a line over :data:`MAX_LINE_CHARS`."""
    carry, first = "", 1
    while block := text.read(_BLOCK_CHARS):
        lines = (carry + block).split("\n")
        carry = lines.pop()
        if len(carry) > MAX_LINE_CHARS:
            raise KlineFileError(f"{name}, line {first + len(lines)}: longer than {MAX_LINE_CHARS} characters")
        if lines:
            yield lines, first
            first += len(lines)
    if carry:
        yield [carry], first


class _Columns:
    """The parsed rows, as growing columns: raw open time and open, high, low, close, volume
    (float64, 48 bytes a row), and the file line of each row, kept per block of rows: the
    block's first row and first line when its rows are consecutive lines (the usual case),
    else the block's lines (uint32). Grows by doubling, one column at a time (so growing costs
    at most one column more); pages past the rows are never touched."""

    def __init__(self) -> None:
        self.n = 0
        self.cols = [np.empty(1 << 16) for _ in range(6)]
        self._block_row: list[int] = []
        self._block_lines: list[int | np.ndarray] = []

    def add(self, vals: np.ndarray, lines: np.ndarray) -> None:
        m = vals.shape[0]
        if m == 0:
            return
        while self.n + m > self.cols[0].size:
            for j, c in enumerate(self.cols):
                grown = np.empty(2 * c.size, dtype=c.dtype)
                grown[: self.n] = c[: self.n]
                self.cols[j] = grown
                del c, grown
        for j in range(6):
            self.cols[j][self.n : self.n + m] = vals[:, j]
        consecutive = int(lines[-1]) - int(lines[0]) == m - 1
        self._block_row.append(self.n)
        self._block_lines.append(int(lines[0]) if consecutive else lines)
        self.n += m

    def line_of(self, row: int) -> int:
        """The file line (1-based) of ``row`` (0-based)."""
        b = bisect.bisect_right(self._block_row, row) - 1
        at = self._block_lines[b]
        k = row - self._block_row[b]
        return at + k if isinstance(at, int) else int(at[k])


def _parse_block(lines: list[str], first: int, name: str, header: bool) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one block of lines (the first one skipped when ``header``; blank and ``#``
    lines skipped): ``(values (m, 6) float64, file line of each row (m,))``. Raises
    KlineFileError naming the line and the problem."""
    keep, nums = [], []
    for j, x in enumerate(lines):
        if len(x) > MAX_LINE_CHARS:
            raise KlineFileError(f"{name}, line {first + j}: longer than {MAX_LINE_CHARS} characters")
        s = x.strip()
        if s and s[0] != "#" and not (header and j == 0):
            keep.append(x)
            nums.append(first + j)
    if not keep:
        return np.empty((0, 6)), np.empty(0, dtype=np.uint32)
    try:  # numpy's C parser over the block
        vals = np.loadtxt(keep, delimiter=",", usecols=range(6), ndmin=2, dtype=np.float64)
    except ValueError as e:  # find the row and say what is wrong with it
        for i, r in enumerate(csv.reader(keep)):
            if len(r) < 6:
                raise KlineFileError(f"{name}, line {nums[i]}: {len(r)} columns, a kline row has at least 6") from None
            try:
                [float(x) for x in r[:6]]
            except ValueError as e2:
                raise KlineFileError(f"{name}, line {nums[i]}: not a number ({e2})") from None
        raise KlineFileError(f"{name}, lines {nums[0]} to {nums[-1]}: not kline rows ({e})") from None
    at = np.array(nums, dtype=np.uint32)

    def refuse(mask: Any, problem: str) -> None:
        if mask.any():
            raise KlineFileError(f"{name}, line {at[int(np.argmax(mask))]}: {problem}")

    refuse(~np.isfinite(vals).all(axis=1), "a value is NaN or infinite")
    o, h, lo, c, v = vals[:, 1], vals[:, 2], vals[:, 3], vals[:, 4], vals[:, 5]
    refuse((vals[:, 1:5] <= 0).any(axis=1), "a price is not positive")
    refuse((h < lo) | (h < o) | (h < c) | (lo > o) | (lo > c), "high/low do not bound the open and close")
    refuse(v < 0, "negative volume")
    return vals, at


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

    Bounded: the file is decompressed and parsed as a stream, a block of lines at a time, into
    columns of 48 bytes per row; never the whole text. Refused, naming the file and the limit:
    a zip member whose declared size passes :data:`MAX_CSV_BYTES` (2 GiB) or
    :data:`MAX_EXPANSION` (200) times its compressed size, before decompressing; any file
    that yields more than that while read (counted: declared sizes can lie, gzip has none);
    more than :data:`MAX_KLINE_ROWS` (8 M) rows; a line over :data:`MAX_LINE_CHARS` (4096)
    characters. Peak memory, measured (``ru_maxrss``, a fresh process, 12-column zip): 300 MB
    for 5 M rows, 435 MB for 8 M (the limit); the test holds 1 M rows under 100 MiB added
    (tests/unit/test_kline_limits.py).
    """
    path = Path(path)
    cols = _Columns()
    with _csv_text(path) as (text, name):
        try:
            for lines, first in _line_blocks(text, name):
                header = first == 1 and not lines[0].strip().split(",")[0].strip().lstrip("-").isdigit()
                vals, at = _parse_block(lines, first, name, header)
                if cols.n + vals.shape[0] > MAX_KLINE_ROWS:
                    raise KlineFileError(
                        f"{name}: more than {MAX_KLINE_ROWS} kline rows (the loader's limit); split it"
                    )
                cols.add(vals, at)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise KlineFileError(f"{name}: unreadable ({e})") from e
    n = cols.n
    if n == 0:
        raise KlineFileError(f"{name}: no kline rows")
    times, o, h, lo, c, v = (col[:n] for col in cols.cols)
    times = _to_seconds_in_place(times)
    for s in range(0, n, 1 << 20):  # strictly increasing, a block (and the row before it) at a time
        step = np.diff(times[max(s - 1, 0) : s + (1 << 20)])
        for mask, problem in (
            (step == 0, "duplicate open time"),
            (step < 0, "open time before the previous row's (unsorted)"),
        ):
            if mask.any():
                raise KlineFileError(
                    f"{name}, line {cols.line_of(max(s - 1, 0) + 1 + int(np.argmax(mask)))}: {problem}"
                )
    sym = symbol or path.name.split("-", 1)[0]
    return Klines(symbol=sym, open_time=times, open=o, high=h, low=lo, close=c, volume=v)


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
