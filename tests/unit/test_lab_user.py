"""The policy lab as a user meets it (issue 35, item 5): missing funding said in the table and
the report, a funding file that does not overlap the klines refused, funding found beside a
symlinked kline file, funding paid and received apart, the run's time with its statistics,
the paired column named by its sign, a trailing baseline in R, and stops filled by the
emulator's slippage model with the other model reported beside it. Small generated data."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from harvest.data import Klines
from harvest.domain.models import HarvestTheta, Side
from harvest.lab import run as lab_run
from harvest.lab.engine import STOP_SLIPPAGE, FillModel, simulate
from harvest.lab.entries import Entry
from harvest.lab.market import FundingFileError, build_market, load_market
from harvest.lab.report import table, write_html
from harvest.lab.run import EntrySpec, run_replay
from harvest.lab.stats import summarize
from tests.kill_theta import KILL_SCORE_THETA

TH = HarvestTheta(**KILL_SCORE_THETA)
T0 = 1_700_000_040  # a minute boundary (T0 % 60 == 0)
HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,"
    "ignore\n"
)
TRIGGER = FillModel(stop_slippage=0.0)


def _bars(path: list[tuple[float, float, float, float]], warm: int = 80) -> Klines:
    """``warm`` quiet bars at 100, then ``path`` of (open, high, low, close), 1-minute bars."""
    rng = np.random.default_rng(0)
    quiet = 100 + np.cumsum(rng.normal(0, 0.01, warm))
    o = np.concatenate([quiet, [p[0] for p in path]])
    h = np.concatenate([quiet + 0.02, [p[1] for p in path]])
    lo = np.concatenate([quiet - 0.02, [p[2] for p in path]])
    c = np.concatenate([quiet, [p[3] for p in path]])
    t = T0 + 60 * np.arange(o.size)
    return Klines("BTCUSDT", t.astype(np.int64), o, h, lo, c, np.ones(o.size))


def _one(path, fill, policy="hold", side=Side.LONG, stop=99.0):
    k = _bars(path)
    m = build_market([(k, None, "test")], TH)
    return simulate(m, [Entry("BTCUSDT", side, 80, path[0][0], 10.0, 10.0, stop)], policy, TH, fill, record=1)


def _kline_file(path, n: int = 900, seed: int = 1):
    """A 1-minute futures kline CSV of a seeded random walk (``n`` bars from T0)."""
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    o = np.concatenate([[100.0], c[:-1]])
    h = np.maximum(o, c) * 1.001
    lo = np.minimum(o, c) * 0.999
    ms = (T0 + 60 * np.arange(n)) * 1000
    rows = "".join(
        f"{ms[i]},{o[i]:.4f},{h[i]:.4f},{lo[i]:.4f},{c[i]:.4f},1.0,{ms[i] + 59999},1,1,1,1,0\n" for i in range(n)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + rows)
    return path


def _funding_file(path, t0: int, n: int = 20, rate: float = 0.0001):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("calc_time,funding_interval_hours,last_funding_rate\n")
    with open(path, "a") as f:
        for i in range(n):
            f.write(f"{(t0 + 3600 * i) * 1000},8,{rate}\n")
    return path


# --------------------------------------------------------------------------- stops: the emulator's slippage


def test_the_lab_slips_as_the_paper_engine_states():
    from harvest.venues.sim import paper_settlement

    assert STOP_SLIPPAGE == paper_settlement.STOP_SLIPPAGE
    assert FillModel().name == "slippage" and FillModel().stop_slippage == STOP_SLIPPAGE
    assert TRIGGER.name == "trigger" and FillModel().with_model("trigger") == TRIGGER
    with pytest.raises(ValueError, match="0..1"):
        FillModel(stop_slippage=1.5)


@pytest.mark.parametrize(
    "bar,side,stop,price",
    [
        ((100, 100.2, 98.5, 98.8), Side.LONG, 99.0, 99.0 - 0.1 * 1.7),  # at the trigger, less 0.1 × range
        ((98.0, 98.2, 97.5, 98.0), Side.LONG, 99.0, 98.0 - 0.1 * 0.7),  # a gap: from the open
        ((98.0, 98.5, 98.0, 98.3), Side.LONG, 99.0, 98.0),  # never outside the bar (clipped to the low)
        ((100, 101.5, 99.8, 101.2), Side.SHORT, 101.0, 101.0 + 0.1 * 1.7),  # a SHORT's stop fills higher
    ],
)
def test_a_triggered_stop_fills_against_the_position_by_a_share_of_the_bar(bar, side, stop, price):
    t = _one([(100, 100.1, 99.9, 100), bar], FillModel(), side=side, stop=stop)
    assert t.exit_reason[0] == "stop" and t.events[0][-1][2] == pytest.approx(price)
    old = _one([(100, 100.1, 99.9, 100), bar], TRIGGER, side=side, stop=stop)
    assert old.events[0][-1][2] == pytest.approx(min(stop, bar[0]) if side is Side.LONG else max(stop, bar[0]))
    assert t.r[0] < old.r[0] or price == old.events[0][-1][2]


# --------------------------------------------------------------------------- the trailing baseline in R


def test_the_trailing_baseline_in_r():
    # entry 100, stop 99: 1 R = 1 USDT. Bar 1 closes +1.5 R (armed at 1 R), its best 101.6:
    # the stop trails 0.5 R behind, at 101.1; bar 2 comes down through it.
    path = [(100, 100.1, 99.9, 100), (100, 101.6, 99.9, 101.5), (101.4, 101.5, 100.5, 100.8)]
    t = _one(path, FillModel(stop_slippage=0.0, trail_r=0.5, trail_offset_r=1.0), policy="trailing")
    assert t.exit_reason[0] == "locked_stop" and t.events[0][-1][2] == pytest.approx(101.1)
    # the old baseline in price fractions (1 % behind, armed at 2 %) is not armed by +1.5 %
    old = _one(path, TRIGGER, policy="trailing")
    assert old.exit_reason[0] == "end_of_data"
    with pytest.raises(ValueError, match="positive"):
        FillModel(trail_r=0.0)


# --------------------------------------------------------------------------- funding paid and received


def test_funding_paid_and_received_apart():
    k = _bars([(100, 100.2, 99.8, 100)] * 3 + [(100, 100.2, 99.8, 100)])
    fund = (np.array([int(k.open_time[81]) + 10]), np.array([0.001]))
    m = build_market([(k, fund, "test")], TH)
    legs = [
        Entry("BTCUSDT", Side.LONG, 80, 100.0, 2.0, 5.0, 99.0),
        Entry("BTCUSDT", Side.SHORT, 80, 100.0, 2.0, 5.0, 101.0),
    ]
    s = summarize(simulate(m, legs, "hold", TH))
    one = 0.001 * 2.0 * k.close[81]
    assert s["funding_usdt"] == pytest.approx(0.0, abs=1e-12)  # the LONG pays what the SHORT receives
    assert s["funding_paid_usdt"] == pytest.approx(one) and s["funding_received_usdt"] == pytest.approx(one)
    doc = {"base": "hold", "policies": {"hold": s}, "paired": {}}
    assert f"hold {one:.2f} / {one:.2f}" in table(doc)


# --------------------------------------------------------------------------- funding files


def test_missing_funding_is_said_in_the_table_and_the_report(tmp_path):
    f = _kline_file(tmp_path / "klines" / "BTCUSDT-1m-2023-11.csv")
    doc, runs, m = run_replay([str(f)], ["default", "bracket"], TH, FillModel(), EntrySpec(every_s=3600))
    assert doc["run"]["no_funding"] == ["BTCUSDT"]
    text = table(doc)
    assert "no funding data for BTCUSDT" in text
    page = tmp_path / "r.html"
    write_html(page, doc, runs, m)
    assert "no funding data for BTCUSDT" in page.read_text()
    _funding_file(tmp_path / "funding" / "BTCUSDT-funding-2023-11.csv", T0)
    doc, _, _ = run_replay([str(f)], ["default", "bracket"], TH, FillModel(), EntrySpec(every_s=3600))
    assert doc["run"]["no_funding"] == [] and "no funding data" not in table(doc)


def test_a_funding_file_that_does_not_overlap_the_klines_is_refused(tmp_path):
    f = _kline_file(tmp_path / "klines" / "BTCUSDT-1m-2023-11.csv")
    _funding_file(tmp_path / "funding" / "BTCUSDT-funding-2021.csv", T0 - 86400 * 400)
    with pytest.raises(FundingFileError) as e:
        load_market([str(f)], TH)
    msg = str(e.value)
    assert "overlaps" in msg and "2023-11-14" in msg and "2022-10-10" in msg and "BTCUSDT-funding-2021.csv" in msg
    # a second file that does overlap is the one used
    _funding_file(tmp_path / "funding" / "BTCUSDT-funding-2023.csv", T0)
    m = load_market([str(f)], TH)
    assert m.has_funding["BTCUSDT"] and np.count_nonzero(m.funding) == 15  # 900 bars: 15 hourly times


def test_a_symlinked_kline_file_finds_the_funding_beside_the_link(tmp_path):
    target = _kline_file(tmp_path / "store" / "raw" / "BTCUSDT-1m-2023-11.csv")
    link = tmp_path / "lab" / "klines" / "BTCUSDT-1m-2023-11.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    _funding_file(tmp_path / "lab" / "funding" / "BTCUSDT-funding-2023-11.csv", T0)
    m = load_market([str(link)], TH)
    assert m.has_funding["BTCUSDT"] and np.count_nonzero(m.funding) > 0


# --------------------------------------------------------------------------- the run as printed


def test_the_seconds_include_the_statistics(tmp_path, monkeypatch):
    f = _kline_file(tmp_path / "klines" / "BTCUSDT-1m-2023-11.csv")
    real = lab_run.summarize

    def slow(*args, **kw):
        time.sleep(0.2)  # statistics that take a known time (not a synchronization)
        return real(*args, **kw)

    monkeypatch.setattr(lab_run, "summarize", slow)
    doc, _, _ = run_replay([str(f)], ["default", "bracket"], TH, FillModel(), EntrySpec(every_s=3600))
    assert doc["run"]["seconds"] >= 0.2 * 3  # two policies and the base under the other fill model
    assert doc["run"]["seconds_statistics"] >= 0.6


def test_the_cli_seconds_include_the_report(tmp_path, monkeypatch, capsys):
    from harvest.lab import report
    from harvest.ops.cli import main

    f = _kline_file(tmp_path / "klines" / "BTCUSDT-1m-2023-11.csv")
    real = report.write_html

    def slow(*args, **kw):
        time.sleep(0.5)  # a report that takes a known time
        return real(*args, **kw)

    monkeypatch.setattr(report, "write_html", slow)
    rc = main(
        ["replay", "--data", str(f), "--policies", "default,bracket", "--json", "--html", str(tmp_path / "r.html")]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run"]["seconds"] >= 0.5 and doc["run"]["fill_model"]["name"] == "slippage"


def test_the_table_names_the_sign_and_the_other_fill_model(tmp_path):
    f = _kline_file(tmp_path / "klines" / "BTCUSDT-1m-2023-11.csv")
    doc, _, _ = run_replay([str(f)], ["default", "bracket", "hold"], TH, FillModel(), EntrySpec(every_s=3600))
    text = table(doc)
    assert "Δ mean R = policy − default [95% CI]" in text
    other = doc["other_fill"]
    assert other["fill_model"] == "trigger" and list(other["policies"]) == ["default"]
    assert "fill model slippage; under trigger, default: mean R" in text
    # a stop filled with slippage is never better than at its trigger
    assert other["base_this_minus_other"]["mean_r_diff"] <= 0
    both, _, _ = run_replay(
        [str(f)], ["default", "bracket", "hold"], TH, TRIGGER, EntrySpec(every_s=3600), both_fills=True
    )
    assert list(both["other_fill"]["policies"]) == ["default", "bracket", "hold"]
    assert "every policy under the slippage fill model:" in table(both)
