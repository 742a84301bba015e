"""``harvest replay --account`` against the emulator's account (issue 35, item 4): an account
seeded through the real python-binance client (an ETH LONG opened with its stop, partly closed
in profit by harvest, then stopped out in the 2025-06-21 fall; a BTC SHORT closed by harvest)
is rebuilt from userTrades, allOrders, allAlgoOrders, income and symbolConfig — entry, qty,
side, the stop it had, its closes and realized R — and every policy is replayed on it over the
emulator's klines; the history endpoints answer by Binance's rules; the weight spent is what
the emulator charged and stays inside the budget; the CLI prints the comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from binance.exceptions import BinanceAPIException

from harvest.lab.engine import POLICIES, FillModel
from harvest.ops.loadgen import T0
from harvest.ops.replay_account import read_account, replay_account
from harvest.venues import binance_facts as facts
from harvest.venues.binance import PRIORITY_SHARE, BinanceVenue, make_client
from harvest.venues.binance_history import AccountHistory
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.emulator import Emulator
from settings import load_settings

KEY, SECRET = "replay-acct-key", "replay-acct-secret"
NS = "replay-acct"
ACCOUNT = "alpha"
#: ETH fell 6 % into 2025-06-21 21:31 UTC (market time): a stop 2 % under the T0 price is crossed.
CRASH_END = 1750541520.0
BUDGET = facts.WEIGHT_LIMIT_1M


@pytest.fixture()
def emu(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for k in r.scan_iter(f"{NS}:*"):
        r.delete(k)
    clock = MarketClock(r, NS, T0, 0.0)
    clock.set(T0, 0.0)
    e = Emulator(r, NS, ACCOUNT, KEY, SECRET, clock=clock).start(streams=False)
    yield e
    e.stop()
    for k in r.scan_iter(f"{NS}:*"):
        r.delete(k)


@pytest.fixture()
def bv(emu):
    return BinanceVenue(
        emu.r, emu.ns, lambda: make_client(KEY, SECRET, emu.url, False, 5.0, 5000), BUDGET, account=ACCOUNT
    )


@pytest.fixture()
def seeded(emu, bv):
    """The account's trades, made as a strategy and harvest make them (python-binance)."""
    eth = bv.open_position("ETHUSDT", "LONG", 1.0, 20, stop_price=2403.0 * 0.98)
    btc = bv.open_position("BTCUSDT", "SHORT", 0.01, 10, stop_price=103200.0 * 1.01)
    emu.clock.set(T0 + 3600, 0.0)
    bv.close_market("BTCUSDT", "BUY", "0.010", "hv-00000000000000b1-0")
    emu.clock.set(T0 + 7200, 0.0)
    bv.close_market("ETHUSDT", "SELL", "0.400", "hv-00000000000000e1-0")  # a partial take-profit
    emu.clock.set(CRASH_END, 0.0)  # the fall crosses the stop: the rest is stopped out
    assert bv.position("ETHUSDT") is None and bv.position("BTCUSDT") is None
    return {"ETHUSDT": eth, "BTCUSDT": btc}


def _desk_r(client, symbol: str, entry: float, stop: float, qty: float) -> float:
    """R from the account's fills and funding as Binance reports them (independent of the code under test)."""
    trades = client.futures_account_trades(symbol=symbol, startTime=int(T0 * 1000) - 60_000)
    funding = client.futures_income_history(
        symbol=symbol, incomeType="FUNDING_FEE", startTime=int(T0 * 1000), endTime=int(CRASH_END * 1000)
    )
    net = sum(float(t["realizedPnl"]) - float(t["commission"]) for t in trades) + sum(
        float(x["income"]) for x in funding
    )
    return net / (abs(entry - stop) * qty)


def test_positions_are_rebuilt_from_the_exchange_history(emu, bv, seeded):
    c = bv.client
    stops = {
        s: float(c.futures_get_all_algo_orders(symbol=s, startTime=int(T0 * 1000))[0]["triggerPrice"]) for s in seeded
    }
    emu.reset_tally()
    hist = AccountHistory(bv)
    rec, seen = read_account(hist, ["ETHUSDT", "BTCUSDT"], 30 * 86400)
    charged = emu.weight_by_endpoint()  # before this test's own requests
    assert seen["trades"] == 5 and rec.partial_history == 0
    by = {p.symbol: p for p in rec.positions}
    assert [p.symbol for p in rec.positions] == ["BTCUSDT", "ETHUSDT"]  # opened in that order (same second)

    eth = by["ETHUSDT"]
    opening = c.futures_account_trades(symbol="ETHUSDT", startTime=int(T0 * 1000))[0]
    assert (eth.side.value, eth.qty, eth.leverage) == ("LONG", 1.0, 20.0)
    assert eth.entry_price == pytest.approx(float(opening["price"])) and eth.opened_at == opening["time"] / 1000
    assert eth.stop == stops["ETHUSDT"] == pytest.approx(2403.0 * 0.98, abs=0.01)
    assert [(q, k) for _, _, q, k in eth.closes] == [(pytest.approx(0.4), "harvest"), (pytest.approx(0.6), "stop")]
    assert eth.exit_reason == "stop" and eth.partials == 1 and eth.closed_at is not None
    assert eth.closes[1][1] < eth.stop  # a stop-market fill: worse than its trigger
    assert eth.r() == pytest.approx(_desk_r(c, "ETHUSDT", eth.entry_price, eth.stop, 1.0), rel=1e-9)
    assert -1.3 < eth.r() < -0.3  # 0.6 of the position lost ~1 R, 0.4 was closed in profit

    btc = by["BTCUSDT"]
    assert (btc.side.value, btc.qty, btc.leverage, btc.stop) == ("SHORT", 0.01, 10.0, stops["BTCUSDT"])
    assert [k for *_, k in btc.closes] == ["harvest"] and btc.exit_reason == "harvest"
    assert btc.r() == pytest.approx(_desk_r(c, "BTCUSDT", btc.entry_price, btc.stop, 0.01), rel=1e-9)

    # every request the reader sent is what the emulator charged, by Binance's weights, and inside the budget
    assert hist.weight_spent == sum(w for _, w in charged.values()), (hist.spent, charged)
    assert {f"GET {p}": n for p, (n, _) in hist.spent.items()} == {e: n for e, (n, _) in charged.items()}
    assert hist.weight_spent <= BUDGET * PRIORITY_SHARE["read"] and hist.waited_s == 0


def test_every_policy_is_replayed_on_the_desks_positions(emu, bv, seeded, tmp_path):
    theta = load_settings().theta
    emu.reset_tally()
    hist = AccountHistory(bv)
    doc, runs, m = replay_account(
        ACCOUNT,
        30 * 86400,
        list(POLICIES),
        theta,
        FillModel(),
        symbols=["ETHUSDT", "BTCUSDT"],
        cache=tmp_path,
        history=hist,
    )
    assert doc["base"] == "desk" and list(runs) == ["desk", *POLICIES]
    assert set(doc["paired"]) == set(POLICIES) and doc["run"]["n_entries"] == 2
    assert [x["symbol"] for x in doc["positions"]] == ["BTCUSDT", "ETHUSDT"]
    eth = doc["positions"][1]
    assert eth["stop_from"] == "the account's" and eth["exit"] == "stop"
    assert eth["r"]["desk"] == pytest.approx(float(runs["desk"].r[1]))
    # the policies start from the desk's own entry, qty and stop: the same 1R
    for p in POLICIES:
        assert runs[p].initial_stop[1] == eth["stop"] and runs[p].entry_price[1] == eth["entry_price"]
        assert runs[p].qty[1] == 1.0
    assert runs["hold"].exit_reason[1] == "stop"  # the stop the desk had is crossed the same day
    # the R each policy made is its own: not all equal to the desk's
    assert len({round(float(runs[p].r[1]), 6) for p in POLICIES}) > 1
    w = doc["run"]["weight"]
    assert (
        w["spent"] == sum(x for _, x in emu.weight_by_endpoint().values())
        and w["spent"] <= BUDGET * PRIORITY_SHARE["read"]
    )
    assert "/fapi/v1/klines" in w["by_endpoint"]
    files = sorted(x.name for x in tmp_path.rglob("*.csv"))
    assert files and all(f.startswith(("ETHUSDT-1m-", "BTCUSDT-1m-")) for f in files)

    again = AccountHistory(bv)  # the closed days come from the cache: fewer klines requests
    doc2, runs2, _ = replay_account(
        ACCOUNT,
        30 * 86400,
        ["default"],
        theta,
        FillModel(),
        symbols=["ETHUSDT", "BTCUSDT"],
        cache=tmp_path,
        history=again,
    )
    assert again.spent["/fapi/v1/klines"][0] < hist.spent["/fapi/v1/klines"][0]
    assert runs2["default"].r.tolist() == runs["default"].r.tolist()


def test_the_history_endpoints_answer_by_binances_rules(emu, bv, seeded):
    c = bv.client
    t0 = int(T0 * 1000)
    week = facts.HISTORY_WINDOW_MS
    with pytest.raises(BinanceAPIException) as e:
        c.futures_account_trades(symbol="ETHUSDT", startTime=t0, endTime=t0 + week + 1)
    assert (e.value.code, e.value.status_code) == (-1127, 400)
    with pytest.raises(BinanceAPIException) as e:
        c.futures_account_trades(symbol="ETHUSDT", startTime=t0, fromId=1)
    assert e.value.code == -1128
    with pytest.raises(BinanceAPIException) as e:
        c.futures_get_all_orders(symbol="ETHUSDT", startTime=t0 + 10, endTime=t0)
    assert e.value.code == -1023
    # neither time: the last 7 days before the server's clock
    emu.clock.set(CRASH_END + 8 * 86400, 0.0)
    assert c.futures_account_trades(symbol="ETHUSDT") == []
    assert c.futures_get_all_orders(symbol="ETHUSDT") == []
    assert len(c.futures_account_trades(symbol="ETHUSDT", startTime=t0)) == 3
    assert len(c.futures_account_trades(symbol="ETHUSDT", fromId=0)) == 3  # fromId: no time bound
    algo = c.futures_get_all_algo_orders(symbol="ETHUSDT", startTime=t0)
    assert [a["algoStatus"] for a in algo] == ["FINISHED"] and algo[0]["actualOrderId"]
    orders = c.futures_get_all_orders(symbol="ETHUSDT", startTime=t0, limit=2)
    assert [o["origType"] for o in orders] == ["MARKET", "MARKET"]  # the first 2 from startTime
    last = c.futures_get_all_orders(symbol="ETHUSDT", orderId=orders[1]["orderId"])
    assert [o["orderId"] for o in last][0] == orders[1]["orderId"] and last[-1]["origType"] == "STOP_MARKET"
    # 90 days on, allOrders no longer answers them (Binance keeps 90 days of orders)
    emu.clock.set(T0 + 91 * 86400, 0.0)
    assert c.futures_get_all_orders(symbol="ETHUSDT", orderId=0) == []


def test_the_cli_prints_the_comparison_for_the_demos_account(emu, bv, seeded, redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVEST_") or k in ("HARVEST_REDIS_URL",)} | {
        "HARVEST_REDIS_URL": redis_url,
        "HARVEST_NAMESPACE": NS,
        "HARVEST_VENUE": "paper",
        "HARVEST_FAPI_URL": emu.url,
        "HARVEST_ACCOUNTS": json.dumps([{"name": ACCOUNT}]),
        "HARVEST_ACCOUNT_ALPHA_API_KEY": KEY,
        "HARVEST_ACCOUNT_ALPHA_API_SECRET": SECRET,
        "HARVEST_SYMBOLS": "BTCUSDT,ETHUSDT",
        "HARVEST_PAPER_REPLAY_START": repr(T0),
        "XDG_CACHE_HOME": str(tmp_path),
    }
    harvest = [sys.executable, "-m", "harvest.ops.cli"]
    out = subprocess.run(
        [*harvest, "replay", "--account", ACCOUNT, "--since", "30d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "harvest replay --account alpha: 2 positions" in text
    assert "Δ mean R = policy − desk" in text
    assert "ETHUSDT  LONG" in text and "BTCUSDT  SHORT" in text
    assert KEY not in text and SECRET not in text and SECRET not in out.stderr
    assert (Path(tmp_path) / "harvest" / "klines" / "emulator").is_dir()

    js = subprocess.run(
        [*harvest, "replay", "--account", ACCOUNT, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    doc = json.loads(js.stdout)
    assert doc["base"] == "desk" and len(doc["positions"]) == 2 and doc["run"]["account"] == ACCOUNT
    assert list(doc["policies"])[0] == "desk" and len(doc["policies"]) > 2
    for p in doc["policies"]:  # the CLI's default policies, each a row of the printed table
        assert f"\n{p:<11}" in text

    bad = subprocess.run(
        [*harvest, "replay", "--account", "nobody"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "--account 'nobody'" in bad.stderr and "alpha" in bad.stderr


def test_a_closed_positions_leverage_is_the_symbols_setting(emu, bv):
    """symbolConfig answers every symbol, a flat one included, with the leverage its last position
    had (as the demo opens them: in the paper engine, without POST /fapi/v1/leverage)."""
    emu.venue.open_position("SOLUSDT", "LONG", 10.0, 7)
    bv.close_market("SOLUSDT", "SELL", "10", "hv-00000000000000c1-0")
    assert bv.position("SOLUSDT") is None
    hist = AccountHistory(bv)
    assert hist.leverage(["SOLUSDT", "XRPUSDT"]) == {"SOLUSDT": 7.0, "XRPUSDT": 10.0}
    assert {x["symbol"] for x in bv.client.futures_symbol_config()} >= {"SOLUSDT", "XRPUSDT", "BTCUSDT"}


def test_data_files_are_cut_at_the_exchanges_clock(emu, bv, seeded):
    """--data: the klines files (running past the exchange's clock) are cut at it, and their
    funding (beside them) is charged to the policies."""
    theta = load_settings().theta
    data = [str(p) for p in (Path(__file__).parents[2] / "harvest" / "data" / "klines").glob("ETHUSDT-1m-*.csv.gz")]
    doc, runs, m = replay_account(
        ACCOUNT,
        30 * 86400,
        ["default", "hold"],
        theta,
        FillModel(),
        data=data,
        symbols=["ETHUSDT"],
        history=AccountHistory(bv),
    )
    assert float(m.open_time[-1]) + 60 <= CRASH_END and float(m.open_time[-1]) + 120 > CRASH_END
    assert doc["run"]["no_funding"] == [] and doc["run"]["n_entries"] == 1
    assert runs["hold"].exit_reason[0] == "stop" and doc["positions"][0]["exit"] == "stop"
