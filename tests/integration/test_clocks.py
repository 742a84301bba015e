"""One clock, stated (issue 30, item 3; docs/venues.md "Clocks").

The emulator's server clock IS the replay's market clock: ``/fapi/v1/time``, premiumIndex,
orders, trades, positions and stream events all carry it, so they agree with each other as on
Binance. Harvest never compares timestamps from two clocks: every age or window it computes
takes both operands from one clock (market for exchange times, wall for its own records and
for a stream event's freshness, measured on arrival).

Every test runs on a replay of 2025-06-21 at speed 60 (or 1440), far from wall time, so a
computation that took the wrong clock is off by about a year and fails: the real python-binance
client against the emulator over HTTP, real Redis, a real ``harvest streams`` process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis
import requests
from websockets.sync.client import connect

from harvest.domain.book import to_position
from harvest.domain.kernel import compute_kill_score
from harvest.domain.stream_events import MarkPrice
from harvest.services.decide import _fresh, decide, load_positions
from harvest.services.market import refresh_market_states
from harvest.services.reconcile import check_clock, sweep_once
from harvest.services.runtime import build_runtime
from harvest.store.streams import StreamCache
from harvest.venues.binance import BinanceVenue, make_client
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.emulator import Emulator
from settings import load_settings
from tests.harness import wait_for
from tests.pipeline_helpers import clean, mark_for_r, open_position

ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "clocks-key-" + "k" * 13, "clocks-secret-" + "s" * 34
#: The replay's market time at the start: 2025-06-21 00:00 UTC (inside the shipped klines).
MARKET0 = datetime(2025, 6, 21, tzinfo=timezone.utc).timestamp()
#: A wall-clock reading mistaken for a market one (or the reverse) is off by at least this (s).
FAR = 30 * 86_400
SYM = "BTCUSDT"
EIGHT_HOURS_MS = 8 * 3600 * 1000


def _redis(redis_url: str, ns: str) -> redis.Redis:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for k in r.scan_iter(f"{ns}:*"):
        r.delete(k)
    return r


def _emulator(redis_url: str, ns: str, speed: float, streams: bool = False) -> Emulator:
    r = _redis(redis_url, ns)
    clock = MarketClock(r, ns, MARKET0, speed)
    clock.set(MARKET0, speed)
    assert abs(time.time() - MARKET0) > FAR  # the premise of every test here
    return Emulator(r, ns, "paper", KEY, SECRET, clock=clock).start(streams=streams, stream_tick_s=0.2)


def _venue(emu: Emulator) -> BinanceVenue:
    """The adapter as the runtime builds it for the emulator: with the shared market clock."""
    return BinanceVenue(
        emu.r, emu.ns, lambda: make_client(KEY, SECRET, emu.url, False, 5.0, 5000), 1_000_000, clock=emu.clock
    )


@pytest.fixture(params=[60.0, 1440.0], ids=["speed60", "speed1440"])
def emu(request, redis_url):
    e = _emulator(redis_url, "clocks-emu", request.param, streams=True)
    yield e
    e.stop()


def _open(bv: BinanceVenue, cid: str, qty: str = "0.010") -> dict:
    """Open a long with a real MARKET order through python-binance (stamped by the adapter)."""
    bv.stamp()
    return bv.client.futures_create_order(
        symbol=SYM, side="BUY", type="MARKET", quantity=qty, newClientOrderId=cid, newOrderRespType="RESULT"
    )


# ---------------------------------------------------------------- the emulator answers one clock


def test_server_time_agrees_with_the_orders_and_trades_it_answers_in_the_same_second(emu):
    """Done-when of item 3: serverTime, the order's updateTime, the trade's time, premiumIndex
    time and the position's updateTime, read within one wall second, agree within
    speed × (wall elapsed) + 1 s of market time, and lie in the market clock's span of those
    reads. Old emulator: serverTime and premiumIndex.time were wall time, a year off."""
    bv = _venue(emu)
    c = bv.client
    speed = emu.clock.speed()
    w0, m0 = time.time(), emu.clock.now() * 1000
    placed = _open(bv, "clk-open-1")
    server = int(c.futures_time()["serverTime"])
    bv.stamp()
    order = c.futures_get_order(symbol=SYM, origClientOrderId="clk-open-1")
    bv.stamp()
    [trade] = [t for t in c.futures_account_trades(symbol=SYM) if t["orderId"] == order["orderId"]]
    premium = c.futures_mark_price(symbol=SYM)
    bv.stamp()
    [pos] = [p for p in c.futures_position_information(symbol=SYM) if float(p["positionAmt"]) != 0]
    w1, m1 = time.time(), emu.clock.now() * 1000
    elapsed = w1 - w0
    assert elapsed < 1.0, f"the reads took {elapsed:.2f} s, not one wall second"
    allow = speed * elapsed * 1000 + 1000  # ms of market time
    times = {
        "serverTime": server,
        "order.updateTime": int(order["updateTime"]),
        "order.time": int(order["time"]),
        "POST order.updateTime": int(placed["updateTime"]),
        "trade.time": int(trade["time"]),
        "premiumIndex.time": int(premium["time"]),
        "position.updateTime": int(pos["updateTime"]),
    }
    for name, t in times.items():
        assert m0 - 1000 <= t <= m1 + 1000, f"{name} {t} is not market time in [{m0:.0f}, {m1:.0f}]"
    for a, ta in times.items():
        for b, tb in times.items():
            assert abs(ta - tb) <= allow, f"{a} and {b} differ by {abs(ta - tb)} ms > {allow:.0f}"
    assert abs(server / 1000 - w0) > FAR  # serverTime is the market clock, not wall time
    # the funding window as a client computes it: the next settlement within 8 h of server time
    assert 0 < int(premium["nextFundingTime"]) - int(premium["time"]) <= EIGHT_HOURS_MS


def test_stream_events_carry_the_market_clock(emu):
    """The user data stream's ORDER_TRADE_UPDATE / ACCOUNT_UPDATE (E, T, o.T) and the mark
    price stream's E are market time, agreeing with serverTime; the mark stream's T (next
    funding) is within 8 h after its E. Old emulator: E and T were wall time."""
    bv = _venue(emu)
    key = bv.client.futures_stream_get_listen_key()
    with connect(f"{emu.stream_url}ws/{key}", open_timeout=5) as ws:
        wait_for(lambda: emu.venue.account in emu.streams._last, 5, what="the user stream's registration")
        m0 = emu.clock.now() * 1000
        _open(bv, "clk-open-2")
        got: dict[str, dict] = {}
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            ev = json.loads(ws.recv(timeout=10))
            if ev["e"] in ("ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"):
                got.setdefault(ev["e"], ev)
        m1 = emu.clock.now() * 1000
    assert set(got) == {"ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"}
    stamps = [got["ORDER_TRADE_UPDATE"]["o"]["T"]] + [got[e][f] for e in got for f in ("E", "T")]
    for t in stamps:
        assert m0 - 1000 <= t <= m1 + 1000, f"user event time {t} is not market time in [{m0:.0f}, {m1:.0f}]"
    with connect(f"{emu.stream_url}ws/{SYM.lower()}@markPrice@1s", open_timeout=5) as ws:
        m0 = emu.clock.now() * 1000
        ev = json.loads(ws.recv(timeout=10))
        m1 = emu.clock.now() * 1000
    assert ev["e"] == "markPriceUpdate" and m0 - 1000 <= ev["E"] <= m1 + 1000
    assert 0 < ev["T"] - ev["E"] <= EIGHT_HOURS_MS


# ---------------------------------------------------------------- signed requests at any speed


def _signed(emu: Emulator, ts: int, recv_window: int = 5000) -> requests.Response:
    """``GET /fapi/v3/positionRisk`` signed as Binance's docs describe, with ``timestamp`` ts."""
    qs = urlencode({"timestamp": ts, "recvWindow": recv_window})
    sig = hmac.new(SECRET.encode(), qs.encode(), hashlib.sha256).hexdigest()
    url = f"http://127.0.0.1:{emu.port}/fapi/v3/positionRisk?{qs}&signature={sig}"
    return requests.get(url, headers={"X-MBX-APIKEY": KEY}, timeout=5.0)


@pytest.mark.parametrize("speed", [1.0, 1440.0])
def test_signed_requests_work_at_any_speed_stamped_in_market_time(redis_url, speed):
    """The adapter signs in the server's (market) clock at speed 1 and 1440: its signed calls
    pass with a timestamp_offset a year from wall time, so the emulator's acceptance of wall
    stamps cannot be what let them through. The allowances are wall durations of transit
    scaled by the speed: stamped 4 wall s (× speed) before the server clock passes a 5000 ms
    recvWindow, 7 wall s does not; 0.5 wall s ahead passes, 3 s ahead does not."""
    emu = _emulator(redis_url, f"clocks-sign-{int(speed)}", speed)
    try:
        bv = _venue(emu)
        emu.venue.set_mark(SYM, 100_000.0)
        _open(bv, "clk-sign-0")
        for _ in range(10):
            bv.positions(SYM)
            bv.open_orders(SYM)
            assert abs(bv.client.timestamp_offset) > FAR * 1000  # market stamps, not wall ones
        assert bv.correction_ms == 0  # no -1021 was met: nothing resynced

        def at(wall_s: float) -> int:  # market ms, shifted by wall_s wall seconds of transit
            return int(emu.clock.now() * 1000 + wall_s * 1000 * speed)

        assert _signed(emu, at(-4.0)).status_code == 200
        assert _signed(emu, at(+0.5)).status_code == 200
        for late in (at(-7.0), at(+3.0)):
            resp = _signed(emu, late)
            assert (resp.status_code, resp.json()["code"]) == (400, -1021)
        # the one looseness, documented: a client stamping its wall clock (right on Binance)
        assert _signed(emu, int(time.time() * 1000)).status_code == 200
        assert _signed(emu, int(time.time() * 1000) - 7000).json()["code"] == -1021
    finally:
        emu.stop()


# ---------------------------------------------------------------- harvest's ages and windows


@pytest.fixture(params=["paper", "emulator"])
def replay(request, redis_url):
    """A runtime on a replay of 2025-06-21 at speed 60 — the in-process paper venue, or the
    python-binance venue against the emulator (as ``build_runtime`` builds it) — holding a
    long BTCUSDT opened 10 market minutes ago (paper) or just now by a real order (emulator)."""
    ns = f"clocks-{request.param}"
    extra = {}
    emu = None
    if request.param == "emulator":
        emu = _emulator(redis_url, ns, 60.0)
        extra = dict(fapi_url=emu.url, api_key=KEY, api_secret=SECRET, funding_poll_s=0)
    rt = build_runtime(load_settings(namespace=ns, symbols=[SYM], **extra))
    if emu is None:
        clean(rt)
    rt.clock.set(MARKET0, 60.0)
    try:
        w0 = time.time()
        if emu is None:
            opened = rt.market_now() - 600
            rt.venue.set_position(SYM, "LONG", 0.01, 100_000.0, 10.0, opened_at=opened)
        else:
            opened = rt.market_now()
            _open(rt.venue, "clk-replay-open")
        # the market seconds the opening may lie after ``opened`` (the order's transit × speed)
        slack = 60.0 * (time.time() - w0) + 1.0
        yield rt, opened, slack
    finally:
        if emu is not None:
            emu.stop()
        clean(rt)


def test_ages_and_windows_take_the_market_clock(replay):
    """Position age (the book's opened_at against the scan's now; the kill score's age
    component), the market state (the bar time it describes) and its staleness (wall:
    computed_at), the clock check: each against its own clock. Computed against wall time the
    age would be ~a year (age component 1.0), the state a year old, the clock off by a year."""
    rt, opened, slack = replay
    assert refresh_market_states(rt) == 1
    [m] = rt.market.get_many([SYM])
    now_m = rt.market_now()
    assert now_m - 180 <= m.ts_time <= now_m + 1  # the state describes market now (last closed bar)
    assert abs(m.computed_at - time.time()) < 5  # harvest's own record: wall time
    w0 = time.time()
    rows, now = load_positions(rt, from_streams=False)
    [(vp, entry, _)] = rows
    assert abs(now - rt.market_now()) < 60 * (time.time() - w0) + 1  # the scan's now is market time
    age = now - entry["opened_at"]
    expected = now - opened
    assert expected - slack <= age <= expected + 1, f"position age {age:.0f} s, want {expected:.0f} s of market time"
    assert 0 <= age < 3600
    theta = rt.settings.theta_for(SYM)
    kill = compute_kill_score(to_position(rt.settings.account, vp, entry), m, now, theta)
    assert kill.components["age_penalty"] == pytest.approx(age / theta.max_age_s, abs=1e-3) and (
        kill.components["age_penalty"] < 0.5
    )
    fresh = _fresh(rt, rows)  # staleness is wall against wall: the state just computed is fresh
    assert fresh[0][1].get("entry_state") == entry.get("entry_state")
    assert int(rt.r.hget(rt.plans.k.counters, "scan:market_stale") or 0) == 0
    offset = check_clock(rt)  # the emulator's serverTime against the shared market clock
    if rt.settings.uses_binance:
        assert offset is not None and abs(offset) < rt.settings.max_clock_offset_ms
    else:  # the in-process engine: its clock is harvest's (0, or None where it has no check)
        assert not offset
    assert int(rt.r.hget(rt.plans.k.counters, "venue:clock_offset_exceeded") or 0) == 0


def test_a_plans_ttl_is_wall_time(rt):
    """A decision is made at market time (2025-06-21), its plan expires ``plan_ttl_s`` after
    the wall time it was proposed (harvest's own record), and the sweep at wall now leaves it.
    Against the market clock it would have expired a year ago, or never."""
    from tasks.propose import propose

    rt.clock.set(MARKET0, 60.0)
    e, s = 100_000.0, 99_000.0
    open_position(rt, SYM, "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
    rows, now = load_positions(rt)
    d = decide(rt, rows, now)[0]
    assert abs(d.decided_at - rt.market_now()) < 120  # the decision: market time
    w0 = time.time()
    ref = propose(d.model_dump(mode="json"))
    plan = rt.plans.get(ref["plan_id"])
    assert w0 + rt.settings.plan_ttl_s <= plan.expires_at <= time.time() + rt.settings.plan_ttl_s
    assert abs(plan.created_at - w0) < 5
    assert sweep_once(rt, time.time()) == {}  # not expired by wall now
    assert rt.plans.get(ref["plan_id"]).state == plan.state


# ---------------------------------------------------------------- stream freshness and order


def test_a_streamed_marks_freshness_is_its_arrival_on_the_wall_clock(redis_url):
    """A mark whose E is market time (a year before wall now) that arrived just now is fresh;
    one that arrived 10 wall seconds ago is not, whatever its E. Old code compared E with wall
    now: every emulator mark was stale (and a Binance mark delayed in transit looked fresh)."""
    r = _redis(redis_url, "clocks-marks")
    cache = StreamCache(r, "clocks-marks", "paper")
    market_ms = int(MARKET0 * 1000)
    cache.put_mark(MarkPrice(event_ms=market_ms, symbol=SYM, mark=100_000.0, funding_rate=0.0001, next_funding_ms=0))
    assert cache.marks(max_age_s=5) == {SYM: 100_000.0}
    cache.put_mark(
        MarkPrice(event_ms=market_ms + 1000, symbol="ETHUSDT", mark=2_500.0, funding_rate=0.0, next_funding_ms=0),
        at=time.time() - 10,
    )
    assert cache.marks(max_age_s=5) == {SYM: 100_000.0} and cache.marks()["ETHUSDT"] == 2_500.0


def test_harvest_streams_on_a_replay_applies_events_and_fresh_marks(redis_url, tmp_path):
    """A real ``harvest streams`` process against the emulator at 2025-06-21, speed 60: after
    its REST resync (stamped on the exchange's clock) the opening's ACCOUNT_UPDATE applies
    (not counted out of order), its mark prices are fresh, and the cache stands in for
    positionRisk. Stamped in wall time, the resync would make every market-time event "older"
    and every mark stale."""
    ns = "clocks-streams"
    emu = _emulator(redis_url, ns, 60.0, streams=True)
    env = {
        **os.environ,
        "HARVEST_NAMESPACE": ns,
        "HARVEST_FAPI_URL": emu.url,
        "HARVEST_API_KEY": KEY,
        "HARVEST_API_SECRET": SECRET,
    }
    out = tmp_path / "streams.out"
    cache = StreamCache(emu.r, ns, "paper")
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harvest.ops.cli", "streams", "--symbols", SYM],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: cache.trusted() or proc.poll() is not None, 30, what="the first resync")
        assert proc.poll() is None, out.read_text()
        synced = int(emu.r.hget(cache.k_health, "synced_ms"))
        assert abs(synced / 1000 - emu.clock.now()) < 600  # the resync's stamp: the exchange's clock
        bv = _venue(emu)
        _open(bv, "clk-streams-open")
        wait_for(lambda: SYM in cache.open_symbols(), 15, what="the opening applied from the stream")
        wait_for(lambda: SYM in cache.marks(max_age_s=5), 15, what="a fresh streamed mark")
        wait_for(lambda: cache.snapshot(5.0, 5.0) is not None, 15, what="the cache standing in for positionRisk")
        counters = emu.r.hgetall(cache.k_counters)
        assert int(counters.get("streams:out_of_order", 0)) == 0, counters
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        emu.stop()
