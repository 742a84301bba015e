"""Market state on real data, the kline loader's layouts, symbol filters, and settings errors."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from harvest.data import (
    filters_from_exchange_info,
    load_exchange_info,
    load_klines,
    read_klines,
    shipped_filters,
)
from harvest.domain.market import market_state_at, market_state_from_closes
from harvest.domain.models import HarvestTheta, Regime
from settings import SettingsError, load_settings
from tests.kill_theta import KILL_SCORE_THETA

TH = HarvestTheta(**KILL_SCORE_THETA)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def test_efficiency_ratio_hand_computed():
    th = HarvestTheta(sigma_window=5, ts_window=5)
    closes = np.array([10.0, 11.0, 12.0, 11.0, 12.0, 13.0])  # net 3, path 5
    m = market_state_from_closes("X", closes, 0.0, th)
    assert m.ts == pytest.approx(3 / 5)
    r = np.diff(np.log(closes))
    assert m.sigma == pytest.approx(np.std(r, ddof=1))
    assert m.p_trend == pytest.approx(1 / (1 + np.exp(-(0.6 - th.ts_mid) / th.ts_scale)))
    assert m.regime is Regime.TREND and m.trend_dir == 1
    flat = market_state_from_closes("X", np.full(6, 5.0), 0.0, th)
    assert (flat.ts, flat.sigma, flat.regime) == (0.0, 0.0, Regime.CHOP)
    with pytest.raises(ValueError):
        market_state_from_closes("X", closes[:3], 0.0, th)


def test_real_sell_off_is_a_volatile_down_trend():
    """ETHUSDT, hour ending 2025-06-21 21:31 UTC (−6 % in 60 minutes, shipped data)."""
    eth = load_klines("ETHUSDT")
    sell_off = market_state_at(eth, 1750541520.0, TH)
    calm = market_state_at(eth, 1749876180.0, TH)
    assert sell_off.regime is Regime.TREND and sell_off.trend_dir == -1
    assert sell_off.sigma > 5 * calm.sigma
    assert calm.regime is not Regime.TREND


def test_no_look_ahead():
    eth = load_klines("ETHUSDT")
    t = 1750541520.0
    a = market_state_at(eth, t, TH)
    b = market_state_from_closes("ETHUSDT", eth.close[eth.open_time <= t - 60], t, TH)
    assert a == b


def test_loader_reads_every_layout(tmp_path):
    six = load_klines("BTCUSDT")
    assert six.open_time[0] == 1749859200 and np.all(np.diff(six.open_time) == 60)
    algo = read_klines(FIXTURES / "ALGOUSDT-1m-2026-02-head.csv.gz")
    assert algo.symbol == "ALGOUSDT" and len(algo.close) == 200 and algo.open_time[0] == 1769904000
    assert algo.close[0] == pytest.approx(0.1040)
    # Header-less archive variant with microsecond timestamps.
    rows = gzip.open(FIXTURES / "ALGOUSDT-1m-2026-02-head.csv.gz", "rt").read().splitlines()[1:]
    us = [",".join([str(int(r.split(",")[0]) * 1000)] + r.split(",")[1:]) for r in rows]
    p = tmp_path / "ALGOUSDT-1m-x.csv"
    p.write_text("\n".join(us) + "\n")
    algo_us = read_klines(p)
    assert np.array_equal(algo_us.open_time, algo.open_time)
    bad = tmp_path / "X-1m.csv"
    bad.write_text("open_time,open\n1,abc\n")
    with pytest.raises(ValueError):
        read_klines(bad)


def test_filters_from_real_exchange_info():
    f = shipped_filters()
    assert f["BTCUSDT"].tick_size == Decimal("0.10") and f["BTCUSDT"].step_size == Decimal("0.001")
    assert f["BTCUSDT"].min_notional == Decimal("100")
    assert f["SOLUSDT"].step_size == Decimal("1") and f["SOLUSDT"].min_notional == Decimal("5")
    assert f["BTCUSDT"].round_qty(0.12399) == Decimal("0.123")
    assert f["BTCUSDT"].fmt(f["BTCUSDT"].round_qty(0.00001)) == "0"
    assert f["ETHUSDT"].fmt(Decimal("0.00001")) == "0.00001"  # never 1E-5 on the wire
    assert filters_from_exchange_info(load_exchange_info()) == f


def test_invalid_settings_name_the_field():
    with pytest.raises(SettingsError) as e:
        load_settings(scan_interval_s=-1)
    assert "HARVEST_SCAN_INTERVAL_S" in str(e.value) and "-1" in str(e.value)
    with pytest.raises(SettingsError) as e:
        load_settings(theta={"kill_threshold": 1.5})
    assert "HARVEST_THETA__KILL_THRESHOLD" in str(e.value)
    with pytest.raises(SettingsError) as e:
        load_settings(theta={"t1_r": 5.0})
    assert "t1_r < t2_r < t3_r" in str(e.value)
    with pytest.raises(SettingsError):
        load_settings(symbols="btcusdt")
    assert load_settings(symbols="BTCUSDT, ETHUSDT").symbols == ["BTCUSDT", "ETHUSDT"]


def test_settings_from_the_environment(monkeypatch):
    # the README's comma-separated allowlist, as an operator writes it
    monkeypatch.setenv("HARVEST_SYMBOLS", "BTCUSDT,ETHUSDT, SOLUSDT")
    assert load_settings().symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    monkeypatch.setenv("HARVEST_SYMBOLS", "btcusdt")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert "HARVEST_SYMBOLS" in str(e.value)
    monkeypatch.delenv("HARVEST_SYMBOLS")
    # a value the environment source cannot parse still names the variable, no traceback
    monkeypatch.setenv("HARVEST_THETA", "{not json")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert str(e.value).startswith("invalid setting HARVEST_THETA:")


def test_worker_refuses_to_start_on_bad_settings():
    env = {**os.environ, "HARVEST_THETA__KILL_THRESHOLD": "abc"}
    p = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0
    assert "HARVEST_THETA__KILL_THRESHOLD='abc'" in (p.stdout + p.stderr)


def _five_minute(k):
    """The shipped 1-minute klines folded into 5-minute bars (open of the first, high/low of
    all, close of the last), as the archive's 5m files are."""
    from harvest.data import Klines

    n = (len(k.open_time) // 5) * 5
    shape = (n // 5, 5)
    return Klines(
        symbol=k.symbol,
        open_time=k.open_time[:n].reshape(shape)[:, 0],
        open=k.open[:n].reshape(shape)[:, 0],
        high=k.high[:n].reshape(shape).max(axis=1),
        low=k.low[:n].reshape(shape).min(axis=1),
        close=k.close[:n].reshape(shape)[:, -1],
        volume=k.volume[:n].reshape(shape).sum(axis=1),
    )


@pytest.mark.parametrize("minutes", [1, 5])
def test_market_state_knows_the_interval_and_never_reads_a_forming_bar(minutes):
    """Old main: market_state_at assumed 1-minute bars; on 5-minute klines it used the bar still
    forming (up to 4 minutes of look-ahead), and Klines.end was 1m-based."""
    from dataclasses import replace

    k1 = load_klines("ETHUSDT")
    k = k1 if minutes == 1 else _five_minute(k1)
    assert k.interval_s == 60 * minutes and k.end == k.open_time[-1] + 60 * minutes
    i = 400
    for into in (0, 59, 60 * minutes - 1):  # anywhere inside bar i: bar i is still forming
        t = float(k.open_time[i] + into)
        m = market_state_at(k, t, TH)
        assert k.closed_by(t) == i and m.interval_s == 60 * minutes
        assert m == market_state_from_closes("ETHUSDT", k.close[:i], t, TH, 60 * minutes)
        # the forming bar's close may be anything: the state does not move
        bumped = replace(k, close=np.where(np.arange(len(k.close)) == i, k.close[i] * 1.5, k.close))
        assert market_state_at(bumped, t, TH) == m
    assert k.closed_by(float(k.open_time[i] + 60 * minutes)) == i + 1  # closed once its interval is over


def test_regime_bars_count_how_long_the_regime_has_held():
    th = HarvestTheta(sigma_window=5, ts_window=5, regime_confirm_bars=3)
    up = np.array([10.0, 11, 12, 13, 14, 15, 16, 17, 18])
    m = market_state_from_closes("X", up, 0.0, th)
    assert (m.regime, m.trend_dir, m.regime_bars) == (Regime.TREND, 1, 3)  # held for (at least) 3 bars
    turned = np.concatenate([up, [15.0, 12.0, 10.0, 9.0, 8.0]])  # the window's net move turns down
    held = [market_state_from_closes("X", turned[:n], 0.0, th) for n in range(10, 15)]
    assert [(m.regime, m.trend_dir, m.regime_bars) for m in held] == [
        (Regime.CHOP, 1, 1),
        (Regime.TREND, -1, 1),
        (Regime.TREND, -1, 2),
        (Regime.TREND, -1, 3),
        (Regime.TREND, -1, 3),
    ]  # a new regime counts its bars up to regime_confirm_bars
    short = market_state_from_closes("X", up[-6:], 0.0, th)  # too few closes to look back: one bar
    assert short.regime_bars == 1
