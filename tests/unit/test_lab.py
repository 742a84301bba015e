"""The policy lab without servers: strict kline files, the batch market state, the fill model
on hand-made bars, entries from a desk's CSV, the statistics (issue 20)."""

from __future__ import annotations

import gzip
import zipfile

import numpy as np
import pytest

from harvest.data import KlineFileError, Klines, load_klines, read_klines
from harvest.domain.market import REGIMES, market_series, market_state_from_closes
from harvest.domain.models import HarvestTheta, Side
from harvest.lab.engine import FillModel, simulate
from harvest.lab.entries import EntriesError, Entry, generate, read_entries
from harvest.lab.market import build_market
from harvest.lab.stats import block_bootstrap_mean, paired, summarize
from tests.kill_theta import KILL_SCORE_THETA

TH = HarvestTheta(**KILL_SCORE_THETA)
T0 = 1_700_000_000
HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,"
    "ignore\n"
)
NO_DELAY = FillModel()


def _row(t: int, o: float, h: float, lo: float, c: float) -> str:
    return f"{t},{o},{h},{lo},{c},1.0,{t + 59999},1,1,1,1,0\n"


def _file(tmp_path, name: str, body: str):
    p = tmp_path / name
    p.write_text(body)
    return p


# --------------------------------------------------------------------------- kline files


def test_every_archive_layout_reads(tmp_path):
    rows = "".join(_row((T0 + 60 * i) * 1000, 100, 101, 99, 100.5) for i in range(5))
    futures = _file(tmp_path, "BTCUSDT-1m-2024-01.csv", HEADER + rows)
    spot_us = _file(
        tmp_path, "ETHUSDT-1m-2025-02.csv", "".join(_row((T0 + 60 * i) * 10**6, 1, 2, 0.5, 1) for i in range(5))
    )
    z = tmp_path / "SOLUSDT-5m-2024-01.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("SOLUSDT-5m-2024-01.csv", "".join(_row((T0 + 300 * i) * 1000, 10, 11, 9, 10) for i in range(4)))
    k = read_klines(futures)
    assert (k.symbol, k.interval_s, k.open_time[0], k.close[-1]) == ("BTCUSDT", 60, T0, 100.5)
    assert read_klines(spot_us).open_time[0] == T0
    kz = read_klines(z)
    assert (kz.symbol, kz.interval_s, kz.open_time.size) == ("SOLUSDT", 300, 4)
    gz = tmp_path / "XRPUSDT-1m.csv.gz"
    gz.write_bytes(gzip.compress((HEADER + rows).encode()))
    assert read_klines(gz).close.size == 5


@pytest.mark.parametrize(
    "body,line,problem",
    [
        (HEADER + _row(T0, 1, 2, 0.5, 1) + f"{T0 + 60},1,2\n", 3, "columns"),
        (HEADER + _row(T0, 1, 2, 0.5, 1) + _row(T0 + 60, 1, "x", 0.5, 1), 3, "not a number"),
        (HEADER + _row(T0, 1, 2, 0.5, 1) + _row(T0 + 60, 1, "nan", 0.5, 1), 3, "NaN"),
        (HEADER + _row(T0, 1, 2, 0.5, 1) + _row(T0 + 60, -1, 2, 0.5, 1), 3, "not positive"),
        (HEADER + _row(T0, 1, 2, 0.5, 1) + _row(T0 + 60, 1, 0.9, 0.5, 1), 3, "high/low"),
        (HEADER + _row(T0, 1, 2, 0.5, 1) + _row(T0, 1, 2, 0.5, 1), 3, "duplicate"),
        (HEADER + _row(T0 + 60, 1, 2, 0.5, 1) + _row(T0, 1, 2, 0.5, 1), 3, "unsorted"),
    ],
)
def test_a_file_that_is_not_klines_is_refused_naming_the_line(tmp_path, body, line, problem):
    p = _file(tmp_path, "BTCUSDT-1m.csv", body)
    with pytest.raises(KlineFileError) as e:
        read_klines(p)
    assert str(p) in str(e.value) and f"line {line}" in str(e.value) and problem in str(e.value)


def test_a_zip_with_something_else_inside_is_refused(tmp_path):
    z = tmp_path / "BTCUSDT-1m.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "hello")
    with pytest.raises(KlineFileError, match="one .csv"):
        read_klines(z)
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(KlineFileError, match="not a zip"):
        read_klines(tmp_path / "x.zip")


# --------------------------------------------------------------------------- market state, batch form


@pytest.mark.parametrize("fold", [1, 5])
def test_the_batch_market_state_is_the_scans(fold):
    k = load_klines("ETHUSDT")
    n = (k.close.size // fold) * fold
    closes = k.close[:n].reshape(-1, fold)[:, -1]  # 5-minute closes: the last minute's
    s = market_series(closes, TH)
    rng = np.random.default_rng(3)
    for i in rng.integers(TH.sigma_window + 1, closes.size, 300).tolist():
        m = market_state_from_closes("ETHUSDT", closes[: i + 1], 0.0, TH, 60 * fold)
        got = s.state(i, "ETHUSDT", 0.0, 60 * fold)
        assert (got.regime, got.trend_dir, got.regime_bars) == (m.regime, m.trend_dir, m.regime_bars)
        # to rounding: numpy's pairwise and SIMD sums order the additions differently by version
        assert (got.sigma, got.ts, got.p_trend) == pytest.approx((m.sigma, m.ts, m.p_trend), rel=1e-12, abs=1e-15)
    assert not s.valid[: TH.sigma_window].any() and REGIMES[0].value == "TREND"


# --------------------------------------------------------------------------- the fill model on hand-made bars


def _bars(path: list[tuple[float, float, float, float]], warm: int = 80, symbol: str = "BTCUSDT") -> Klines:
    """``warm`` quiet bars at 100 (a market state exists), then ``path`` of (open, high, low, close)."""
    rng = np.random.default_rng(0)
    quiet = 100 + np.cumsum(rng.normal(0, 0.01, warm))
    o = np.concatenate([quiet, [p[0] for p in path]])
    h = np.concatenate([quiet + 0.02, [p[1] for p in path]])
    lo = np.concatenate([quiet - 0.02, [p[2] for p in path]])
    c = np.concatenate([quiet, [p[3] for p in path]])
    t = T0 + 60 * np.arange(o.size)
    return Klines(symbol, t.astype(np.int64), o, h, lo, c, np.ones(o.size))


def _one(path, policy="hold", stop=99.0, side=Side.LONG, lev=10.0, fill=NO_DELAY, funding=None, warm=80, qty=10.0):
    k = _bars(path, warm)
    m = build_market([(k, funding, "test")], TH)
    e = Entry("BTCUSDT", side, warm, path[0][0], qty, lev, stop)
    return simulate(m, [e], policy, TH, fill, record=1), m


def test_a_stop_fills_at_its_price_or_at_a_gapped_open():
    trigger = FillModel(stop_slippage=0.0)  # the trigger model: no slippage
    t, _ = _one([(100, 100.5, 99.5, 100), (100, 100.2, 98.5, 98.8)], fill=trigger)
    assert t.exit_reason[0] == "stop" and t.events[0][-1][2] == 99.0
    t, _ = _one([(100, 100.5, 99.5, 100), (98.0, 98.2, 97.5, 98.0)], fill=trigger)  # opened through the stop
    assert t.exit_reason[0] == "stop" and t.events[0][-1][2] == 98.0
    fee = TH.taker_fee_rate
    assert t.net[0] == pytest.approx(10 * ((98.0 - 100) - fee * 100 - fee * 98.0))
    assert t.r[0] == pytest.approx(t.net[0] / (1.0 * 10))


def test_when_one_bar_reaches_both_the_stop_fills():
    tp3 = None
    t, _ = _one([(100, 100.5, 99.5, 100), (100, 130, 90, 100)], policy="bracket")
    assert t.exit_reason[0] == "stop"
    t, _ = _one([(100, 100.5, 99.5, 100), (100, 130, 99.5, 120)], policy="bracket")
    assert t.exit_reason[0] == "take_profit" and t.events[0][-1][2] > 100 and tp3 is None


def test_liquidation_before_a_stop_beyond_it():
    # 100× long: liquidation ~0.5 % below entry; a stop 5 % below cannot protect it
    t, _ = _one([(100, 100.2, 99.8, 100), (100, 100, 96, 97)], stop=95.0, lev=100.0, qty=1.0)
    assert t.exit_reason[0] == "liquidation" and t.net[0] < 0 and t.events[0][-1][2] > 99.0


def test_a_decision_acts_at_the_next_bars_open():
    # the close of bar 1 is +2.2 R: the kernel harvests tier 1 at bar 2's open (and not before)
    path = [(100, 100.2, 99.8, 100), (100, 102.5, 100, 102.3), (103, 103.2, 102.8, 103), (102.9, 103, 60, 60)]
    t, _ = _one(path, policy="default", stop=99.0)
    kinds = [(ev[1], ev[2]) for ev in t.events[0]]
    assert ("partial", 103.0) in kinds, kinds
    assert t.partials[0] == 1
    late, _ = _one(path, policy="default", stop=99.0, fill=FillModel(scan_delay_s=60))
    late_kinds = [(ev[1], ev[2]) for ev in late.events[0]]
    assert ("partial", 103.0) not in late_kinds and ("partial", 102.9) in late_kinds  # one bar later


def test_funding_is_paid_on_the_open_quantity():
    path = [(100, 100.2, 99.8, 100)] * 3 + [(100, 100, 50, 50)]
    k = _bars(path)
    fund = (np.array([int(k.open_time[81]) + 10]), np.array([0.001]))
    m = build_market([(k, fund, "test")], TH)
    t = simulate(m, [Entry("BTCUSDT", Side.LONG, 80, 100.0, 2.0, 5.0, 99.0)], "hold", TH)
    assert t.funding[0] == pytest.approx(0.001 * 2.0 * k.close[81])


# --------------------------------------------------------------------------- entries


def test_entries_csv_is_checked_line_by_line(tmp_path):
    k = _bars([(100, 100.2, 99.8, 100)] * 50)
    m = build_market([(k, None, "test")], TH)
    t_ok = int(k.open_time[100])
    good = f"symbol,side,entry_time,entry_price,qty,leverage,stop\nBTCUSDT,LONG,{t_ok},100,1,10,99\n"
    [e] = read_entries(_file(tmp_path, "ok.csv", good), m, TH)
    assert (e.bar, e.side, e.stop) == (100, Side.LONG, 99.0)
    for row, problem in [
        (f"ETHUSDT,LONG,{t_ok},100,1,10,99", "unknown symbol"),
        (f"BTCUSDT,LONG,{T0 - 86400},100,1,10,99", "outside the data"),
        (f"BTCUSDT,LONG,{int(k.open_time[5])},100,1,10,99", "too little history"),
        (f"BTCUSDT,LONG,{t_ok},100,1,10,101", "loss side"),
        (f"BTCUSDT,SHORT,{t_ok},100,1,10,99", "loss side"),
        (f"BTCUSDT,LONG,{t_ok},100,-1,10,99", "positive"),
    ]:
        p = _file(tmp_path, "bad.csv", good.splitlines()[0] + "\n" + row + "\n")
        with pytest.raises(EntriesError) as err:
            read_entries(p, m, TH)
        assert "line 2" in str(err.value) and problem in str(err.value), str(err.value)


def test_grid_entries_are_paired_by_side_and_need_history():
    k = _bars([(100, 100.2, 99.8, 100)] * 200)
    m = build_market([(k, None, "test")], TH)
    es = generate(m, TH, "grid", every_s=3600)
    assert len(es) % 2 == 0 and {e.side for e in es} == {Side.LONG, Side.SHORT}
    assert min(e.bar for e in es) > TH.sigma_window


# --------------------------------------------------------------------------- statistics


def test_block_bootstrap_covers_the_mean_and_pairs_need_the_same_entries():
    x = np.random.default_rng(1).normal(0.1, 1.0, 400)
    mean, lo, hi = block_bootstrap_mean(x)
    assert lo < mean < hi and hi - lo < 0.5
    path = [(100, 100.5, 99.5, 100), (100, 100.2, 98.5, 98.8)]
    a, _ = _one(path, policy="hold")
    b, _ = _one(path, policy="bracket")
    assert paired(b, a)["mean_r_diff"] == pytest.approx(b.r[0] - a.r[0])
    s = summarize(a)
    assert s["trades"] == 1 and s["exit_reasons"] == {"stop": 1} and s["win_rate"] == 0.0
