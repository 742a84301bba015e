"""The kline loader in bounded memory (issue 31, finding 10): a zip or gzip bomb is refused
before or while it is decompressed, naming the file and the limit, and a valid file is parsed
as a stream, never held whole as text. Memory is measured in a fresh process: its resident
set before the load (``VmRSS``) and its high-water mark after it (``VmHWM``, Linux's
/proc/self/status; ``ru_maxrss`` would count the pytest process the child was forked from)."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import harvest.data as data
import harvest.lab.market as lab_market
import harvest.lab.stats as stats
from harvest.data import MAX_CSV_BYTES, MAX_EXPANSION, KlineFileError, load_klines, read_klines
from harvest.domain.market import MarketSeries, market_series
from harvest.domain.models import HarvestTheta
from harvest.lab.market import FundingFileError, build_market, build_market_like, read_funding

ROOT = Path(__file__).resolve().parents[2]
T0_MS = 1_577_836_800_000  # 2020-01-01 00:00 UTC
HEADER = b"open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
HEADER += b"taker_buy_quote_volume,ignore\n"
BOMB_BYTES = 600 * 1024 * 1024
CHUNK = 8 * 1024 * 1024  # the tests write their bombs a chunk at a time: bounded memory here too

# Loads one file in a fresh process; prints its rows (or the error), its resident set before
# the load and its peak (MiB).
LOAD = """
import json, sys, time
from harvest.data import KlineFileError, read_klines
def mb(field):
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024
before = mb("VmRSS")
t = time.perf_counter()
try:
    k = read_klines(sys.argv[1])
    out = {"rows": int(k.close.size), "first": int(k.open_time[0]), "last_close": float(k.close[-1]),
           "steps": sorted(set(int(x) for x in (k.open_time[1:] - k.open_time[:-1])[:: 1000]))}
except KlineFileError as e:
    out = {"error": str(e)}
out["seconds"] = time.perf_counter() - t
out["before_mb"], out["peak_mb"] = before, mb("VmHWM")
out["added_mb"] = out["peak_mb"] - before
print(json.dumps(out))
"""


def load_in_a_process(path: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", LOAD, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def rows(start: int, n: int, rng: np.random.Generator, p0: float) -> tuple[bytes, float]:
    """``n`` archive-layout 1-minute rows from row ``start`` (a random walk from ``p0``)."""
    c = p0 + np.cumsum(rng.normal(0, 5, n))
    o = np.concatenate([[p0], c[:-1]])
    h, lo = np.maximum(o, c) + 2, np.minimum(o, c) - 2
    t = T0_MS + 60_000 * np.arange(start, start + n)
    body = "".join(
        f"{t[i]},{o[i]:.2f},{h[i]:.2f},{lo[i]:.2f},{c[i]:.2f},12.345,{t[i] + 59999},370000.1,100,6.1,180000.2,0\n"
        for i in range(n)
    )
    return body.encode(), float(c[-1])


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """A zip and a gzip of 600 MB each that compress to under 1 MB."""
    d = tmp_path_factory.mktemp("bombs")
    z = d / "BTCUSDT-1m-2025-01.zip"
    with (
        zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f,
        f.open("BTCUSDT-1m-2025-01.csv", "w", force_zip64=True) as m,
    ):
        chunk = b"0" * CHUNK
        for _ in range(BOMB_BYTES // CHUNK):
            m.write(chunk)
    g = d / "BTCUSDT-1m-2025-02.csv.gz"
    line = b" " * 4000 + b"\n"  # blank lines: nothing for the parser to refuse, only the size
    with gzip.open(g, "wb", compresslevel=6) as f:
        chunk = line * (CHUNK // len(line))
        for _ in range(BOMB_BYTES // len(chunk)):
            f.write(chunk)
    assert z.stat().st_size < 1024 * 1024 and g.stat().st_size < 1024 * 1024
    return {"zip": z, "gz": g}


def test_a_zip_bomb_is_refused_before_it_is_decompressed(bombs):
    out = load_in_a_process(bombs["zip"])
    err = out["error"]
    assert str(bombs["zip"]) in err and "BTCUSDT-1m-2025-01.csv" in err
    assert f"{BOMB_BYTES} bytes" in err and f"limit of {MAX_EXPANSION} times" in err and "before decompressing" in err
    assert out["seconds"] < 1.0
    assert out["added_mb"] < 10, out  # nothing of the 600 MB was read


def test_a_gzip_bomb_is_refused_while_it_is_read_counting_the_bytes(bombs):
    """gzip declares no trustworthy size: the bytes are counted as they come out and the file is
    refused at MAX_EXPANSION times its compressed size, long before its 600 MB."""
    size = bombs["gz"].stat().st_size
    out = load_in_a_process(bombs["gz"])
    err = out["error"]
    limit = min(MAX_CSV_BYTES, MAX_EXPANSION * size + 1024 * 1024)
    assert err.startswith(f"{bombs['gz']}: more than {limit} bytes once decompressed")
    assert f"the limit: {MAX_EXPANSION} times the {size} compressed bytes, at most {MAX_CSV_BYTES} bytes" in err
    assert out["seconds"] < 10
    assert out["added_mb"] < 40, out


def _patch_central_size(path: Path, size: int) -> None:
    """Rewrite the uncompressed size the zip's central directory declares for its one member
    (offset 24 of the central file header; APPNOTE 4.3.12)."""
    b = bytearray(path.read_bytes())
    at = b.index(b"PK\x01\x02")
    b[at + 24 : at + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(b))


def test_declared_sizes_are_checked_and_a_lying_one_gets_nothing_through(tmp_path):
    rng = np.random.default_rng(3)
    body, _ = rows(0, 1000, rng, 100.0)
    big = tmp_path / "ETHUSDT-1m-big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("ETHUSDT-1m-big.csv", HEADER + body)
    _patch_central_size(big, 3 * 1024**3)  # declares 3 GiB
    with pytest.raises(KlineFileError) as e:
        read_klines(big)
    assert str(big) in str(e.value) and f"more than the limit of {MAX_CSV_BYTES} bytes (2 GiB)" in str(e.value)
    small = tmp_path / "ETHUSDT-1m-small.zip"
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("ETHUSDT-1m-small.csv", HEADER + body)
    _patch_central_size(small, 1000)  # declares less than it holds: only that much comes out
    with pytest.raises(KlineFileError, match="unreadable"):
        read_klines(small)
    two = tmp_path / "ETHUSDT-1m-two.zip"
    with zipfile.ZipFile(two, "w") as f:
        f.writestr("a.csv", HEADER + body)
        f.writestr("b.csv", HEADER + body)
    with pytest.raises(KlineFileError, match="holds one .csv"):
        read_klines(two)


def test_rows_and_lines_past_the_limits_are_refused(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    body, _ = rows(0, 3000, rng, 100.0)
    p = tmp_path / "SOLUSDT-1m.csv"
    p.write_bytes(HEADER + body)
    monkeypatch.setattr(data, "MAX_KLINE_ROWS", 2000)
    with pytest.raises(KlineFileError) as e:
        read_klines(p)
    assert str(p) in str(e.value) and "more than 2000 kline rows" in str(e.value)
    monkeypatch.undo()
    assert read_klines(p).close.size == 3000
    long = tmp_path / "SOLUSDT-1m-long.csv"
    long.write_bytes(HEADER + body[:500] + b"9" * 100_000 + b"\n")
    with pytest.raises(KlineFileError, match=r"line \d+: longer than 4096 characters"):
        read_klines(long)


def test_errors_past_the_first_block_name_their_line(tmp_path):
    """The file is parsed a block (about 1 MiB) at a time: lines are counted across blocks,
    blank lines included, and the time order is checked across block boundaries."""
    rng = np.random.default_rng(5)
    body, _ = rows(0, 40_000, rng, 1000.0)  # about 4 MB: several blocks
    lines = (HEADER + body).split(b"\n")
    lines.insert(7, b"")  # a blank line (file line 8) early on: later rows are one line further
    lines[30_000] = lines[29_999]  # file line 30 001 repeats the one before it
    p = tmp_path / "BNBUSDT-1m.csv.gz"
    p.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(KlineFileError, match="line 30001: duplicate open time"):
        read_klines(p)
    lines[30_000] = lines[30_000].replace(b",", b",nan,", 1)
    p.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(KlineFileError, match="line 30001: a value is NaN"):
        read_klines(p)


@pytest.fixture(scope="module")
def million(tmp_path_factory) -> tuple[Path, int, float]:
    """1 M rows of the archive's 12-column layout (99 MB of CSV) in a .zip, written 100 000 rows
    at a time: ``(path, CSV bytes, last close)``."""
    rng = np.random.default_rng(6)
    z = tmp_path_factory.mktemp("million") / "BTCUSDT-1m-2020-01.zip"
    p0, size = 30_000.0, 0
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f, f.open("BTCUSDT-1m-2020-01.csv", "w") as m:
        m.write(HEADER)
        for s in range(0, 1_000_000, 100_000):
            body, p0 = rows(s, 100_000, rng, p0)
            m.write(body)
            size += len(body)
    return z, size, p0


def test_a_million_rows_load_in_bounded_memory(million):
    """Every row read, adding under 100 MiB to the process (48 MB of columns; the text read
    whole, as before, added 550 MB)."""
    z, size, last = million
    t = time.perf_counter()
    out = load_in_a_process(z)
    assert "error" not in out, out
    assert out["rows"] == 1_000_000 and out["first"] == T0_MS // 1000 and out["steps"] == [60]
    assert out["last_close"] == pytest.approx(round(last, 2))
    assert size > 95_000_000
    assert out["added_mb"] < 100, out
    assert time.perf_counter() - t < 30


MARKET = """
import json, sys
from harvest.domain.models import HarvestTheta
from harvest.lab.market import load_market
def mb(field):
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024
before = mb("VmRSS")
m = load_market([sys.argv[1]], HarvestTheta())
out = {"bars": int(m.count["BTCUSDT"]), "valid": int(m.series.valid.sum())}
print(json.dumps({**out, "added_mb": mb("VmHWM") - before}))
"""


def test_the_replay_market_of_a_million_bars_in_bounded_memory(million):
    """The replay's market (the klines, funding per bar and the market state after every bar)
    adds about 90 bytes a bar (435 MB for 5 M): under 200 MiB for 1 M bars. The market state computed over
    the whole series at once took bars × window × 8 bytes per temporary (2.4 GB for 5 M bars)."""
    z, _, _ = million
    p = subprocess.run([sys.executable, "-c", MARKET, str(z)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["bars"] == 1_000_000 and out["valid"] == 1_000_000 - HarvestTheta().sigma_window
    assert out["added_mb"] < 200, out


@pytest.mark.parametrize(
    "windows", [{}, {"sigma_window": 7, "ts_window": 200, "regime_confirm_bars": 9}, {"regime_confirm_bars": 1}]
)
def test_the_market_state_in_blocks_is_the_whole_series_bit_for_bit(monkeypatch, windows):
    theta = HarvestTheta(**windows)
    eth, btc = load_klines("ETHUSDT"), load_klines("BTCUSDT")
    whole = [market_series(k.close, theta) for k in (eth, btc)]
    for cells in (lab_market.SERIES_BLOCK_CELLS, 5000, 1):  # blocks of ~8000 bars, of 82, of the least
        monkeypatch.setattr(lab_market, "SERIES_BLOCK_CELLS", cells)
        m = build_market([(eth, None, "x"), (btc, None, "y")], theta)
        for f in MarketSeries.__dataclass_fields__:
            assert np.array_equal(getattr(m.series, f), np.concatenate([getattr(w, f) for w in whole])), (f, cells)
        assert np.array_equal(m.close, np.concatenate([eth.close, btc.close]))
        assert np.array_equal(m.open_time, np.concatenate([eth.open_time, btc.open_time]).astype(float))
        like = build_market_like(m, theta)
        assert all(
            np.array_equal(getattr(like.series, f), getattr(m.series, f)) for f in MarketSeries.__dataclass_fields__
        )


def test_a_funding_file_past_the_limits_is_refused_naming_it(tmp_path, monkeypatch):
    ok = tmp_path / "BTCUSDT-funding-2024.csv"
    ok.write_text(
        "calc_time,funding_interval_hours,last_funding_rate\n"
        + "".join(f"{(T0_MS + 8 * 3600_000 * i)},8,0.0001\n" for i in range(50))
    )
    t, r = read_funding(ok)
    assert t.size == 50 and t[0] == T0_MS // 1000 and r[0] == 0.0001
    monkeypatch.setattr(lab_market, "MAX_FUNDING_ROWS", 20)
    with pytest.raises(FundingFileError, match=f"{ok}: more than 20 funding rows"):
        read_funding(ok)
    long = tmp_path / "ETHUSDT-funding-2024.csv"
    long.write_text("calc_time,funding_rate\n" + "1" * 50_000_000)  # one 50 MB line: never held whole
    with pytest.raises(FundingFileError, match=f"{long}, line 2: longer than 4096 characters"):
        read_funding(long)
    quote = tmp_path / "SOLUSDT-funding-2024.csv"
    quote.write_text('calc_time,funding_rate\n"1700000000000,0.0001\n' + "2,0.1\n" * 30_000)  # an unclosed quote
    with pytest.raises(FundingFileError, match=f"{quote}, line 2: not a funding row"):
        read_funding(quote)


def _bootstrap_at_once(x: np.ndarray, seed: int = 7, n_boot: int = 2000) -> tuple[float, float, float]:
    """The interval as it was computed before: every replicate's indices in one array."""
    n = x.size
    blk = max(1, int(np.ceil(np.sqrt(n))))
    k = int(np.ceil(n / blk))
    starts = np.random.default_rng(seed).integers(0, n - blk + 1, size=(n_boot, k))
    idx = (starts[:, :, None] + np.arange(blk)).reshape(n_boot, -1)[:, :n]
    lo, hi = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


@pytest.mark.parametrize("cells", [stats._BOOT_CELLS, 7000, 12_345])
def test_the_bootstrap_a_few_replicates_at_a_time_is_the_same_interval(monkeypatch, cells):
    x = np.random.default_rng(8).standard_t(3, size=3001)
    monkeypatch.setattr(stats, "_BOOT_CELLS", cells)
    assert stats.block_bootstrap_mean(x) == _bootstrap_at_once(x)


BOOT = """
import json, numpy as np
from harvest.lab.stats import block_bootstrap_mean
def mb(field):
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024
x = np.random.default_rng(9).normal(size=60_000)
before = mb("VmRSS")
mean, lo, hi = block_bootstrap_mean(x)
print(json.dumps({"lo": lo, "hi": hi, "added_mb": mb("VmHWM") - before}))
"""


def test_the_bootstrap_of_many_trades_in_bounded_memory():
    """60 000 trades: 2000 replicates' indices and values at once took 1.9 GB; now about 32 MB."""
    p = subprocess.run([sys.executable, "-c", BOOT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["lo"] < 0 < out["hi"] and out["added_mb"] < 100, out
