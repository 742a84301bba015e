"""``harvest streams`` against the emulator's websocket streams (issue 23, first step): a real
``harvest streams`` process (python-binance's socket managers) keeps the position cache, the
fills and algo-order updates and the mark prices in Redis from the user data stream and the
market streams; a dropped connection, a silent gap, an expired listenKey and a malformed event
each end with the cache matching the exchange again, never with a wrong position trusted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harvest.domain.models import Side
from harvest.services.runtime import build_runtime
from harvest.store.streams import StreamCache
from harvest.venues.sim.emulator import Emulator
from settings import load_settings
from tests.harness import wait_for
from tests.pipeline_helpers import clean

ROOT = Path(__file__).resolve().parents[2]
NS = os.environ["HARVEST_NAMESPACE"] + "-streams"
KEY, SECRET = "k" * 24, "s" * 48


@pytest.fixture()
def emu(redis_url):
    rt = build_runtime(load_settings(namespace=NS))
    clean(rt)
    e = Emulator(rt.r, NS, rt.settings.account, KEY, SECRET, clock=rt.clock).start(stream_tick_s=0.2)
    try:
        yield rt, e
    finally:
        e.stop()
        clean(rt)


def _start(e, out: Path, lease_s: float = 10.0) -> subprocess.Popen:
    env = {
        **os.environ,
        "HARVEST_NAMESPACE": NS,
        "HARVEST_FAPI_URL": e.url,
        "HARVEST_API_KEY": KEY,
        "HARVEST_API_SECRET": SECRET,
    }
    with out.open("w") as f:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harvest.ops.cli",
                "streams",
                "--symbols",
                "BTCUSDT,ETHUSDT",
                "--lease-s",
                str(lease_s),
            ],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture()
def streams(emu, tmp_path):
    rt, e = emu
    out = tmp_path / "streams.out"
    proc = _start(e, out)
    cache = StreamCache(rt.r, NS, rt.settings.account)
    try:
        wait_for(lambda: cache.trusted() or proc.poll() is not None, 30, what="the first resync")
        assert proc.poll() is None, out.read_text()
        yield rt, e, cache
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, out.read_text()[-3000:]
    assert KEY not in out.read_text() and SECRET not in out.read_text()


def _open(rt, symbol: str, side: Side, qty: float) -> float:
    mark = rt.venue.mark_price(symbol)
    stop = mark * (0.99 if side is Side.LONG else 1.01)
    rt.venue.open_position(symbol, side, qty, 10, stop_price=stop)
    return stop


def _amt(cache: StreamCache, symbol: str):
    rows = cache.positions()
    return None if rows is None else rows.get(symbol, {}).get("amt", 0.0)


def _counter(rt, name: str) -> int:
    return int(rt.r.hget(f"{NS}:counters", name) or 0)


def test_positions_fills_stops_and_marks_arrive_by_stream(streams):
    rt, e, cache = streams
    stop = _open(rt, "BTCUSDT", Side.LONG, 0.01)
    wait_for(lambda: _amt(cache, "BTCUSDT") == 0.01, 10, what="the opening by stream")
    wait_for(lambda: "BTCUSDT" in cache.marks(max_age_s=5), 10, what="a mark price by stream")
    assert abs(cache.marks()["BTCUSDT"] / rt.venue.mark_price("BTCUSDT") - 1) < 1e-9
    # the mark falls through the stop: the emulator settles it unasked and streams the close
    rt.venue.set_mark("BTCUSDT", stop * 0.995)
    wait_for(lambda: _amt(cache, "BTCUSDT") == 0, 10, what="the stop's close by stream")
    # the close may reach the cache first by the REST re-read a change triggers: the events follow
    want = {
        ("AlgoUpdate", "TRIGGERED", None),
        ("TradeUpdate", "FILLED", "STOP_MARKET"),
        ("AlgoUpdate", "FINISHED", None),
    }
    wait_for(
        lambda: want <= {(ev["type"], ev.get("status"), ev.get("orig_type")) for ev in cache.events()},
        10,
        what="the trigger, the stop's fill and its end by stream",
    )
    assert not [k for k in rt.r.hkeys(f"{NS}:counters") if k.startswith("streams:gap:drop")]  # no gap
    assert rt.venue.position("BTCUSDT") is None


def test_the_scan_reads_the_cache_and_costs_no_request_weight(streams):
    from harvest.services.decide import venue_positions

    rt, e, cache = streams
    rest = build_runtime(
        load_settings(namespace=NS, fapi_url=e.url, api_key=KEY, api_secret=SECRET, streams_max_age_s=3.0)
    )
    _open(rt, "ETHUSDT", Side.LONG, 0.4)
    wait_for(lambda: cache.snapshot(3.0, 3.0), 10, what="the cache, resynced after the opening, with a mark")
    before, used = _counter(rt, "positions:streams"), e.weight_spent()
    scans = [venue_positions(rest) for _ in range(20)]  # a minute and a half of 5-second scans
    assert e.weight_spent() == used  # not one request
    assert _counter(rt, "positions:streams") == before + 20
    (vp,) = scans[-1]
    truth = rt.venue.position("ETHUSDT")
    assert (vp.symbol, vp.side, vp.qty, vp.stop_price) == ("ETHUSDT", Side.LONG, 0.4, truth.stop_price)
    assert vp.mark_price == cache.marks()["ETHUSDT"]
    # a change makes the cache dirty: the next read is REST's, then the stream's again
    rt.venue.move_stop("ETHUSDT", "SELL", f"{truth.stop_price * 1.001:.2f}", "h-move-1")
    moved = venue_positions(rest, from_streams=False)[0].stop_price
    assert moved != truth.stop_price
    wait_for(
        lambda: (c := cache.snapshot(3.0, 3.0)) and c[0].stop_price == moved, 10, what="the moved stop in the cache"
    )


def test_a_position_in_a_new_symbol_gets_its_mark_stream(streams):
    rt, e, cache = streams
    assert "SOLUSDT" not in cache.marks()  # not in --symbols
    _open(rt, "SOLUSDT", Side.SHORT, 3.0)
    wait_for(lambda: "SOLUSDT" in cache.marks(max_age_s=3), 15, what="SOLUSDT's mark stream")
    wait_for(lambda: cache.snapshot(3.0, 3.0), 10, what="the cache usable with the new symbol")


def test_a_funding_settlement_by_stream_brings_the_funding_paid_into_the_cached_rows(streams):
    """The emulator streams FUNDING_FEE as for a cross position (a balance change, no symbol):
    the streams process reads the income endpoint afresh, and the cached row carries what the
    exchange charged. Before: the cached rows kept the funding of the last REST read."""
    from harvest.ops.loadgen import T0

    rt, e, cache = streams
    mark = rt.venue.mark_price("BTCUSDT")
    rt.venue.open_position("BTCUSDT", Side.LONG, 0.02, 10, stop_price=mark * 0.5)  # no stop in 8 h
    wait_for(lambda: _amt(cache, "BTCUSDT") == 0.02, 10, what="the opening by stream")
    rt.clock.set(T0 + 8 * 3600 + 60.0, 0.0)  # past the 08:00 funding: the emulator settles it
    wait_for(lambda: _counter(rt, "streams:funding_events") >= 1, 15, what="the FUNDING_FEE event")
    paid = rt.venue.position("BTCUSDT").funding_paid
    assert paid != 0

    def cached_funding():
        rows = cache.snapshot(3600.0, 5.0)
        row = next((vp for vp in rows or [] if vp.symbol == "BTCUSDT"), None)
        return row is not None and row.funding_paid == pytest.approx(paid) and row

    wait_for(cached_funding, 15, what="the funding in the cached row")


def test_the_market_refresh_reads_closed_bars_from_the_kline_streams(streams):
    """The market refresh (python-binance venue) reads GET /fapi/v1/klines once per symbol; the
    kline streams then bring each bar as it closes, and the refreshes after that, the clock
    two minutes on, cost no request weight and give the state REST would have given."""
    from harvest.services.market import refresh_market_states
    from harvest.store.streams import KlineCache
    from tests.pipeline_helpers import T0

    rt, e, cache = streams
    brt = build_runtime(load_settings(namespace=NS, fapi_url=e.url, api_key=KEY, api_secret=SECRET))
    syms = len(brt.settings.symbols)
    assert refresh_market_states(brt) == syms
    assert _counter(rt, "market:klines_rest") == syms and _counter(rt, "market:klines_streamed") == 0
    rt.clock.set(T0 + 120.0, 0.0)  # two bars close: the streams send them
    n = brt.settings.theta.closes_needed
    last = (int((T0 + 120.0) // 60) - 1) * 60_000
    klines = KlineCache(rt.r, NS)
    wait_for(lambda: klines.closes("BTCUSDT", n, last) is not None, 15, what="the closed bars by stream")
    used = e.weight_spent()
    refresh_market_states(brt)
    assert _counter(rt, "market:klines_streamed") >= 2  # BTCUSDT, ETHUSDT (--symbols) from the streams
    streamed = brt.market.get_many(["BTCUSDT"])[0]
    opens, closes = brt.venue.closed_bars("BTCUSDT", n)
    assert list(klines.closes("BTCUSDT", n, last)) == list(closes) and int(opens[-1]) == last
    assert e.weight_spent() - used <= 2 * (syms - 2) + 2  # only the symbols without a stream read REST
    assert streamed.sigma == pytest.approx(market_state_of(closes, brt).sigma)


def market_state_of(closes, brt):
    from harvest.domain.market import market_state_from_closes

    return market_state_from_closes("BTCUSDT", closes, brt.market_now(), brt.settings.theta)


def test_a_silent_gap_is_closed_by_the_resync_after_a_drop(streams):
    rt, e, cache = streams
    e.streams.inject("gap")  # the opening's events are lost without a trace
    _open(rt, "ETHUSDT", Side.SHORT, 0.5)
    wait_for(lambda: rt.r.hget(f"{NS}:emu:stream_faults", "user:gap") is None, 10, what="the gap to fire")
    assert _amt(cache, "ETHUSDT") == 0  # the cache does not know: only REST can tell
    drops = _counter(rt, "streams:gap:drop")
    e.streams.inject("drop")
    wait_for(lambda: _counter(rt, "streams:gap:drop") > drops, 10, what="the drop to be seen")
    wait_for(lambda: _amt(cache, "ETHUSDT") == -0.5, 20, what="the resync after the reconnection")
    assert cache.trusted()


def test_an_expired_listen_key_opens_a_new_stream_and_a_malformed_event_is_ignored(streams):
    rt, e, cache = streams
    e.streams.inject("expire")
    wait_for(lambda: _counter(rt, "streams:gap:listen_key_expired") == 1, 10, what="the expiry to be seen")
    # bounded: python-binance notices the closed stream within its 10 s read timeout, then reconnects
    wait_for(lambda: cache.health().get("listen_keys") == "2" and cache.trusted(), 40, what="a new listenKey")
    e.streams.inject("malformed")
    _open(rt, "BTCUSDT", Side.SHORT, 0.02)
    wait_for(lambda: _amt(cache, "BTCUSDT") == -0.02, 10, what="the opening on the new stream")
    assert _counter(rt, "streams:malformed") == 1


def test_one_owner_per_account_and_a_dead_owners_account_is_taken_over(emu, tmp_path):
    rt, e = emu
    cache = StreamCache(rt.r, NS, rt.settings.account)
    first = _start(e, tmp_path / "first.out", lease_s=3.0)
    second = None
    try:
        wait_for(lambda: cache.trusted(), 30, what="the first owner's resync")
        owner = cache.lease_owner()
        assert owner is not None and owner.endswith(f":{first.pid}")
        second = _start(e, tmp_path / "second.out", lease_s=3.0)
        wait_for(lambda: "waiting" in (tmp_path / "second.out").read_text(), 20, what="the second to wait")
        assert e.streams.user_connections == 1  # the second opened no stream of its own
        first.kill()  # SIGKILL: no release; the lease runs out
        first.wait(timeout=10)
        wait_for(lambda: (cache.lease_owner() or "").endswith(f":{second.pid}"), 15, what="the takeover")
        wait_for(lambda: cache.trusted(), 15, what="the new owner's resync")
        _open(rt, "BTCUSDT", Side.LONG, 0.03)
        wait_for(lambda: _amt(cache, "BTCUSDT") == 0.03, 10, what="the new owner's stream")
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=15)
    assert second.returncode == 0, (tmp_path / "second.out").read_text()[-2000:]
    assert cache.lease_owner() is None  # released on the way out


def test_one_process_holds_the_streams_of_several_accounts_each_apart(emu, tmp_path):
    """Two accounts on one emulator (one IP): one ``harvest streams`` process holds both user data
    streams (each under its own lease) and the shared mark streams; what happens on one account
    reaches only its own cache."""
    rt, e = emu
    accounts = [{"name": "desk-a"}, {"name": "desk-b"}]
    creds = {"desk-a": ("a" * 24, "x" * 48), "desk-b": ("b" * 24, "y" * 48)}
    for name, (k, s) in creds.items():
        e.add_account(name, k, s)
    env = {
        **os.environ,
        "HARVEST_NAMESPACE": NS,
        "HARVEST_FAPI_URL": e.url,
        "HARVEST_ACCOUNTS": json.dumps(accounts),
        **{f"HARVEST_ACCOUNT_{n.upper().replace('-', '_')}_API_KEY": k for n, (k, _) in creds.items()},
        **{f"HARVEST_ACCOUNT_{n.upper().replace('-', '_')}_API_SECRET": s for n, (_, s) in creds.items()},
    }
    out = tmp_path / "streams.out"
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harvest.ops.cli", "streams", "--symbols", "BTCUSDT"],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    caches = {n: StreamCache(rt.r, NS, n) for n in creds}
    try:
        wait_for(lambda: all(c.trusted() for c in caches.values()) or proc.poll() is not None, 30, what="resyncs")
        assert proc.poll() is None, out.read_text()
        assert e.streams.user_connections == 2
        b = e.account("desk-b").venue
        mark = b.mark_price("ETHUSDT")
        b.open_position("ETHUSDT", Side.SHORT, 0.7, 10, stop_price=mark * 1.01)
        wait_for(lambda: _amt(caches["desk-b"], "ETHUSDT") == -0.7, 10, what="desk-b's opening by its stream")
        wait_for(lambda: "ETHUSDT" in caches["desk-b"].marks(max_age_s=3), 10, what="ETHUSDT's mark stream")
        assert _amt(caches["desk-a"], "ETHUSDT") == 0  # desk-a's cache never saw it
        assert caches["desk-a"].lease_owner() == caches["desk-b"].lease_owner()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    text = out.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert not any(k in text or s in text for k, s in creds.values())


def test_a_mark_crossing_a_trigger_starts_the_chain_without_a_scan(emu, tmp_path):
    """Event-driven exits: one scan leaves the position's trigger (its profit lock);
    the mark then jumps to 2.2 R while trading is halted: nothing starts; once trading resumes,
    the next streamed mark starts the chain at once: the partial is filled with no further scan."""
    from harvest.domain.models import Action
    from tasks.app import app
    from tests.harness import worker
    from tests.pipeline_helpers import mark_for_r, state

    rt, e = emu
    env = {"HARVEST_NAMESPACE": NS, "HARVEST_FAPI_URL": e.url, "HARVEST_API_KEY": KEY, "HARVEST_API_SECRET": SECRET}
    entry, stop = 100_000.0, 99_000.0
    rt.market.put_many([state("BTCUSDT")])
    rt.venue.set_position("BTCUSDT", "LONG", 0.02, entry, 10.0, opened_at=rt.market_now() - 60, stop_price=stop)
    rt.venue.set_mark("BTCUSDT", mark_for_r(entry, stop, 0.02, 0.02, 1.0, "LONG"))
    proc = _start(e, tmp_path / "streams.out")
    w = worker(env, NS, 2).start()
    cache = StreamCache(rt.r, NS, rt.settings.account)
    try:
        w.wait_ready()
        wait_for(lambda: cache.trusted() and cache.snapshot(3.0, 3.0), 30, what="the stream cache")
        app.send_task("harvest.scan_positions", queue=f"{NS}.scan")
        trig = wait_for(lambda: rt.r.hget(f"{NS}:triggers:{rt.settings.account}", "BTCUSDT"), 20, what="the trigger")
        lock_r = rt.settings.theta.lock_start_r
        assert json.loads(trig)["price"] == pytest.approx(mark_for_r(entry, stop, 0.02, 0.02, lock_r, "LONG"))
        assert not list(rt.plans.all_plans())  # at 1 R: nothing due
        scans = _counter(rt, "scan:runs")
        # trading halted: the crossing mark starts no chain (it would only be refused at the guard)
        from harvest.store.trading import set_state

        k = rt.plans.k
        set_state(rt.r, k.trading, f"{NS}:stream:trading", "HALTED", None, "test")
        rt.venue.set_mark("BTCUSDT", mark_for_r(entry, stop, 0.02, 0.02, 2.2, "LONG"))
        wait_for(lambda: _counter(rt, "streams:triggers_held") >= 1, 10, what="the trigger held while halted")
        assert not list(rt.plans.all_plans()) and _counter(rt, "streams:triggers_fired") == 0
        set_state(rt.r, k.trading, f"{NS}:stream:trading", "ACTIVE", None, "test")  # the next mark fires it
        done = wait_for(
            lambda: next((p for p in rt.plans.all_plans() if p.state == "FILLED"), None), 20, what="the partial"
        )
        assert done.action == Action.PARTIAL_25
        assert _counter(rt, "scan:runs") == scans  # no scan ran: the mark's event started it
        # confirm read the fill from its ORDER_TRADE_UPDATE, not from REST
        assert _counter(rt, "confirm:from_stream") == 1 and done.executed_qty == pytest.approx(0.005)
        fill = next(t for t in rt.venue.trades() if t["clientOrderId"] == done.client_order_id)
        assert done.avg_price == pytest.approx(fill["price"])  # the same as REST would say
        assert done.realized_pnl == pytest.approx(fill["realizedPnl"] - fill["commission"]) and fill["commission"] > 0
        (fired,) = [f for _, f in rt.r.xrange(f"{NS}:streams:fired")]
        assert (fired["account"], fired["symbol"]) == (rt.settings.account, "BTCUSDT")
        # arrival and firing on the wall clock (latencies are measured from them, never from E)
        assert int(fired["received_ms"]) <= int(fired["fired_ms"]) <= time.time() * 1000
        assert _counter(rt, "streams:triggers_fired") == 1
    finally:
        w.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
