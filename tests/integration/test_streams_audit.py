"""Streams are the truth, REST the audit (issue 32): a real ``harvest streams`` process against
the emulator (python-binance's socket managers, Binance's request weights) folds the user data
stream into the cache with no REST read per event; reconcile finds ghosts, orphans and external
closes from that cache; a rotating audit compares REST with the cache, and a disagreement puts
the account back on REST at once; a drop, an expired listenKey and a 429 do the same."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import pytest

from harvest.domain.models import Action, Side
from harvest.domain.plans import client_order_id, lineage_id
from harvest.services.reconcile import reconcile_once
from harvest.services.runtime import build_runtime
from harvest.store.streams import StreamCache
from settings import load_settings
from tests.harness import wait_for
from tests.integration.test_streams import KEY, NS, SECRET, _amt, _counter, _open, _start, emu  # noqa: F401
from tests.pipeline_helpers import epoch, state

AUDIT_S = 4.0


@contextlib.contextmanager
def _streams_process(rt, e, tmp_path, monkeypatch, audit_s: float):
    """A ``harvest streams`` process at ``HARVEST_AUDIT_INTERVAL_S=audit_s``, its cache trusted;
    stopped (SIGTERM, bounded) on the way out, its exit clean and its output free of secrets."""
    monkeypatch.setenv("HARVEST_AUDIT_INTERVAL_S", str(audit_s))
    out = tmp_path / "streams.out"
    proc = _start(e, out)
    cache = StreamCache(rt.r, NS, rt.settings.account)
    try:
        wait_for(lambda: cache.trusted() or proc.poll() is not None, 30, what="the first resync")
        assert proc.poll() is None, out.read_text()
        yield cache, out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    text = out.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert KEY not in text and SECRET not in text


@pytest.fixture()
def held(emu, tmp_path, monkeypatch):  # noqa: F811
    """``harvest streams`` with a short audit interval, trusted; and a runtime that reads the
    emulator over REST (python-binance), as the beat's reconcile does."""
    rt, e = emu
    rest = build_runtime(
        load_settings(namespace=NS, fapi_url=e.url, api_key=KEY, api_secret=SECRET, streams_max_age_s=3.0)
    )
    with _streams_process(rt, e, tmp_path, monkeypatch, AUDIT_S) as (cache, out):
        yield rt, e, cache, rest, out


def _weights(e) -> dict[str, int]:
    return {k: w for k, (_, w) in e.weight_by_endpoint().items()}


def _spent_since(e, before: dict[str, int]) -> dict[str, int]:
    """Weight by endpoint charged since ``before`` (only the endpoints that cost)."""
    return {k: w - before.get(k, 0) for k, w in _weights(e).items() if w - before.get(k, 0) > 0}


def _ready(cache: StreamCache):
    return cache.snapshot(3.0, 3.0)


def test_fills_stop_moves_and_partial_closes_are_folded_in_without_a_rest_read(held):
    """Once a position is known (its opening costs one read of that symbol), a stop moved and a
    partial close reach the cache by the stream alone: the streams process spends no weight, and
    the cached rows match what REST says; the audit that follows agrees."""
    rt, e, cache, rest, _ = held
    _open(rt, "BTCUSDT", Side.LONG, 0.03)
    wait_for(lambda: (s := _ready(cache)) and s[0].qty == 0.03, 15, what="the opening, its symbol read from REST")
    assert _counter(rt, "streams:symbol_reads") >= 1
    before = _weights(e)
    truth = rt.venue.position("BTCUSDT")  # the paper engine in-process: no request weight
    rt.venue.move_stop("BTCUSDT", "SELL", f"{truth.stop_price * 1.002:.1f}", "h-move-a")
    rt.venue.close_market("BTCUSDT", "SELL", "0.01", "h-part-a")
    want = rt.venue.position("BTCUSDT")
    wait_for(
        lambda: (s := _ready(cache)) and (s[0].qty, s[0].stop_price) == (want.qty, want.stop_price),
        15,
        what="the partial close and the moved stop by stream",
    )
    (vp,) = _ready(cache)
    assert (vp.side, vp.entry_price, vp.leverage, vp.opened_at) == (want.side, want.entry_price, 10.0, want.opened_at)
    assert _spent_since(e, before) == {}  # not one REST read for three changes
    audits = _counter(rt, "streams:audits")
    wait_for(lambda: _counter(rt, "streams:audits") > audits, 3 * AUDIT_S, what="an audit")
    assert _counter(rt, "reconcile:audit_disagreement") == 0 and cache.trusted()
    from harvest.ops.metrics import HarvestCollector

    fams = {f.name: f for f in HarvestCollector(rest, lambda: {}).collect()}
    [age] = [x for x in fams["harvest_stream_audit_age_seconds"].samples if x.labels["account"] == rt.settings.account]
    assert 0 <= age.value <= 2 * AUDIT_S
    assert {x.labels["result"]: x.value for x in fams["harvest_stream_audits"].samples}["agreed"] >= 1
    # the audit's REST reads are all the weight the account costs at steady state
    assert set(_spent_since(e, before)) <= {
        "GET /fapi/v3/positionRisk",
        "GET /fapi/v2/positionRisk",
        "GET /fapi/v1/openOrders",
        "GET /fapi/v1/openAlgoOrders",
        "GET /fapi/v1/income",
        "GET /fapi/v1/symbolConfig",
        "GET /fapi/v1/userTrades",
    }


def test_an_audit_finds_a_position_the_stream_missed_and_the_account_returns_to_rest(held):
    rt, e, cache, rest, _ = held
    from harvest.services.decide import venue_positions

    wait_for(lambda: _ready(cache) is not None, 10, what="the cache usable")
    e.streams.inject("gap")  # the opening's events are lost without a trace; the connection stays up
    _open(rt, "ETHUSDT", Side.SHORT, 0.5)
    wait_for(lambda: rt.r.hget(f"{NS}:emu:stream_faults", "user:gap") is None, 10, what="the gap to fire")
    assert _amt(cache, "ETHUSDT") == 0 and _ready(cache) == []  # the cache does not know, and says it is usable
    seen_untrusted = []

    def untrusted():
        if not cache.trusted():
            seen_untrusted.append(_ready(cache))
            return True
        return False

    wait_for(untrusted, 3 * AUDIT_S, what="the audit to distrust the cache", interval=0.02)
    assert seen_untrusted == [None]  # no snapshot: the scan and reconcile read REST meanwhile
    used = _counter(rt, "positions:streams")
    assert [vp.symbol for vp in venue_positions(rest)] == ["ETHUSDT"]  # REST's answer, or the resynced cache's
    assert _counter(rt, "reconcile:audit_disagreement") >= 1 and _counter(rt, "streams:gap:audit") == 1
    found = [x for _, x in rt.r.xrange(f"{NS}:stream:reconcile") if x["kind"] == "audit_disagreement"]
    assert {(x["what"], x.get("symbol"), x["account"]) for x in found} >= {
        ("position_missed", "ETHUSDT", rt.settings.account)
    }
    assert _counter(rt, "positions:streams") <= used + 1
    assert cache.health()["why"] == "audit"
    # back on the stream once REST resynchronised it, with the position the stream had missed
    wait_for(lambda: (s := _ready(cache)) and s[0].symbol == "ETHUSDT", 20, what="the resync after the audit")
    (vp,) = _ready(cache)
    assert (vp.side, vp.qty) == (Side.SHORT, 0.5)
    assert int(cache.health()["listen_keys"]) >= 2  # the stream was reopened, as after a gap


def test_reconcile_finds_orphans_ghosts_and_external_closes_from_the_stream(held):
    """Reconcile of a clean streamed account reads the cache (no positionRisk, openOrders or
    openAlgoOrders): an unknown harvest stop is reported, a position closed on the exchange ends
    its plan ``position_closed_outside`` and its book entry is dropped as a ghost."""
    rt, e, cache, rest, _ = held
    rt.market.put_many([state("BTCUSDT")])
    _open(rt, "BTCUSDT", Side.LONG, 0.02)
    wait_for(lambda: _ready(cache), 15, what="the opening in the cache")
    reconcile_once(rest)  # the first: recovery and the book's epoch
    ep = epoch(rest, "BTCUSDT")
    orphan = client_order_id("0123456789abcdef", 0)
    mark = rt.venue.mark_price("BTCUSDT")
    rt.venue.place_stop("BTCUSDT", "SELL", f"{mark * 0.95:.1f}", orphan)
    wait_for(
        lambda: any(o["client_order_id"] == orphan for o in (cache.view(3.0, 3.0) or ([], []))[1]),
        10,
        what="the orphan stop in the cache",
    )
    before, runs = _weights(e), _counter(rt, "reconcile:from_streams")
    out = reconcile_once(rest)
    assert out["unknown_orders"] == 1 and out["positions"] == 1 and out["ghosts_dropped"] == 0
    assert _counter(rt, "reconcile:from_streams") == runs + 1
    assert set(_spent_since(e, before)) <= {"GET /fapi/v1/time"}  # the clock check only
    # a PROPOSED plan of the open epoch; then the position is closed outside harvest
    now = time.time()
    pid = "00000000000000aa"
    assert (
        rest.plans.create(
            {
                "lineage": lineage_id(rest.settings.account, "BTCUSDT", ep, Action.PARTIAL_25, "p"),
                "attempt": 0,
                "plan_id": pid,
                "account": rest.settings.account,
                "symbol": "BTCUSDT",
                "epoch": ep,
                "side": "LONG",
                "action": "PARTIAL_25",
                "tier": 1,
                "close_fraction": 0.25,
                "created_at": now,
                "expires_at": now + 300,
                "client_order_id": f"hv-{pid}-0",
            },
            {},
        )
        is None
    )
    rt.venue.close_market("BTCUSDT", "SELL", "0.02", "manual-close-x")
    wait_for(lambda: (s := _ready(cache)) is not None and s == [], 10, what="the close by stream")
    before = _weights(e)
    out = reconcile_once(rest)
    assert (out["closed_outside"], out["ghosts_dropped"], out["positions"]) == (1, 1, 0)
    got = rest.plans.get(pid)
    assert (got.state, got.reason) == ("EXPIRED", "position_closed_outside")
    assert set(_spent_since(e, before)) <= {"GET /fapi/v1/time"}
    # without the stream (a gap) reconcile reads REST again
    cache.distrust("drop")
    before = _weights(e)
    fell_back = _counter(rt, "streams:fallback:untrusted")
    reconcile_once(rest)
    assert "GET /fapi/v1/openOrders" in _spent_since(e, before)
    assert _counter(rt, "streams:fallback:untrusted") == fell_back + 1  # and why is counted


@pytest.mark.parametrize("fault", ["drop", "expire"])
def test_a_drop_or_an_expired_listen_key_puts_the_account_on_rest_until_resynced(held, fault):
    rt, e, cache, rest, _ = held
    wait_for(lambda: _ready(cache) is not None, 10, what="the cache usable")
    why = {"drop": "streams:gap:drop", "expire": "streams:gap:listen_key_expired"}[fault]
    n = _counter(rt, why)
    e.streams.inject(fault)
    wait_for(lambda: _counter(rt, why) > n, 15, what=f"the {fault} to be seen")
    # untrusted from the moment it is seen until a resync on a live connection
    wait_for(lambda: cache.trusted() and _ready(cache) is not None, 40, what="the resync")
    assert int(cache.health()["listen_keys"]) >= 2 or fault == "drop"


@pytest.mark.parametrize("kind", ["http_429", "http_418"])
def test_a_429_or_418_on_the_resync_keeps_the_account_on_rest_until_rest_answers(held, kind):
    """A REST read refused (429, or 418 the ban) when the stream must resync: the cache stays untrusted (the
    scan and reconcile read REST, themselves held by the budget) and it is trusted again only
    after a resync that REST answered."""
    rt, e, cache, rest, _ = held
    wait_for(lambda: _ready(cache) is not None, 10, what="the cache usable")
    e.faults.inject("GET /fapi/v3/positionRisk", kind, times=1, retry_after=1.0)
    resyncs = _counter(rt, "streams:resyncs")
    e.streams.inject("drop")  # the reconnection's resync meets the 429
    wait_for(lambda: _counter(rt, "streams:gap:rest_error") >= 1, 20, what="the refused resync")
    wait_for(lambda: cache.trusted() and _counter(rt, "streams:resyncs") > resyncs, 40, what="a resync REST answered")
    assert any(k.startswith("streams:rest_error:") for k in rt.r.hkeys(f"{NS}:counters"))


def test_the_audit_schedule_spreads_accounts_evenly():
    """Each account's audits at ``(phase + k) × interval``: over one interval every account is
    audited once, at distinct, evenly spaced times."""
    from harvest.services.streams import AccountStreams

    n, now = 6, 1_000_000.0
    times = []
    for i in range(n):
        a = AccountStreams.__new__(AccountStreams)
        a.audit_interval_s, a.audit_phase = 900.0, i / n
        t = a.next_audit(now)
        assert now < t <= now + 900.0 and a.next_audit(t) == pytest.approx(t + 900.0)
        times.append(t % 900.0)
    ordered = sorted(times)
    gaps = sorted((b - a) % 900.0 for a, b in zip(ordered, ordered[1:] + ordered[:1], strict=True))
    assert gaps == pytest.approx([150.0] * n)


def test_a_429_on_an_audit_leaves_a_clean_stream_trusted_and_the_audit_is_retried(held):
    """The audit's REST read refused: the stream is as clean as it was, so the account stays on
    it (no reconnection, which would cost a full resync while the egress backs off); the audit
    is retried with backoff and then agrees."""
    rt, e, cache, rest, _ = held
    wait_for(lambda: _ready(cache) is not None, 10, what="the cache usable")
    gaps, audits = _counter(rt, "streams:gap:rest_error"), _counter(rt, "streams:audits")
    e.faults.inject("GET /fapi/v3/positionRisk", "http_429", times=1, retry_after=1.0)
    trusted = []
    wait_for(
        lambda: (
            trusted.append(cache.trusted())
            or any(k.startswith("streams:rest_error:") for k in rt.r.hkeys(f"{NS}:counters"))
        ),
        3 * AUDIT_S,
        what="the refused audit",
        interval=0.02,
    )
    wait_for(lambda: _counter(rt, "streams:audits") > audits, 20, what="the audit retried, agreeing")
    assert all(trusted) and cache.trusted()
    assert _counter(rt, "streams:gap:rest_error") == gaps and _counter(rt, "reconcile:audit_disagreement") == 0


def test_a_resync_reads_the_known_symbols_and_the_daily_audit_discovers_the_rest(emu):  # noqa: F811
    """A (re)connection's resync asks for the orders of the symbols the cache knows and the open
    positions' (weight 1 a symbol, not 40 + 40 for every symbol: a 1000-account cold start costs
    a quarter of what it did); an order placed before the stream on a symbol the cache does
    not know is found by the daily discovering audit, which adds it to the cache (an ordinary
    audit neither sees it nor calls it a disagreement)."""
    import asyncio

    from harvest.services.stream_loop import Pump
    from harvest.services.streams import AccountStreams
    from harvest.venues.base import OrderResult

    rt, e = emu
    _open(rt, "BTCUSDT", Side.LONG, 0.03)
    # a working stop on ETHUSDT with no position behind it (the desk's, placed before the stream)
    _open(rt, "ETHUSDT", Side.LONG, 0.5)
    [eth] = [o for o in rt.venue.open_orders() if o.symbol == "ETHUSDT"]
    working = rt.r.hgetall(rt.venue.k_stops("ETHUSDT"))
    rt.venue.close_market("ETHUSDT", "SELL", "0.5", "h-flat-eth")  # the engine cancels the stop: revive it
    raw = OrderResult.model_validate_json(rt.r.hget(rt.venue.k_orders, eth.client_order_id))
    rt.r.hset(rt.venue.k_orders, eth.client_order_id, raw.model_copy(update={"status": "NEW"}).model_dump_json())
    rt.r.hset(rt.venue.k_stops("ETHUSDT"), mapping=working)
    rt.r.sadd(rt.venue.k_positions, "ETHUSDT")
    assert {o.symbol for o in rt.venue.open_orders()} == {"BTCUSDT", "ETHUSDT"}

    rest = build_runtime(load_settings(namespace=NS, fapi_url=e.url, api_key=KEY, api_secret=SECRET))
    streams = AccountStreams(rest)
    cache, pump = streams.cache, Pump(None)
    eth_key = f"algo:{eth.client_order_id}"

    async def go() -> dict:
        before = _weights(e)
        await streams._resync()
        resync = _spent_since(e, before)
        ordinary = await streams._audit(pump)
        after_ordinary = set(rt.r.hkeys(cache.k_orders))
        before = _weights(e)
        discovering = await streams._audit(pump, discover=True)
        return {
            "resync": resync,
            "ordinary": ordinary,
            "after_ordinary": after_ordinary,
            "discovering": discovering,
            "discovery_weight": _spent_since(e, before),
        }

    got = asyncio.run(go())
    # the resync: one symbol's openOrders and openAlgoOrders (1 each), never every symbol's (40)
    assert got["resync"]["GET /fapi/v1/openOrders"] == 1
    assert got["resync"].get("GET /fapi/v1/openAlgoOrders", 0) <= 2
    assert eth_key not in got["after_ordinary"] and got["ordinary"] is None and cache.trusted()
    # the discovering audit: every symbol's orders (40 + 40), agreeing, ETHUSDT's stop added
    assert got["discovering"] is None and cache.trusted()
    assert got["discovery_weight"]["GET /fapi/v1/openOrders"] == 40
    assert eth_key in rt.r.hkeys(cache.k_orders) and "ETHUSDT" in cache.known_symbols()
    assert _counter(rt, "streams:discovered") == 1 and _counter(rt, "reconcile:audit_disagreement") == 0
    # from now on the ordinary reads ask about ETHUSDT too
    before = _weights(e)
    assert asyncio.run(streams._audit(pump)) is None
    assert _spent_since(e, before)["GET /fapi/v1/openOrders"] == 2


def test_an_audit_asked_for_by_a_reader_runs_within_seconds_not_at_its_slot(emu, tmp_path, monkeypatch):  # noqa: F811
    """The guard found the exchange disagreeing with what a plan was made from and asked for the
    account's audit (:meth:`StreamCache.request_audit`): the streams process holding it audits
    it within seconds although its slot is an hour away; a second request inside
    ASKED_AUDIT_MIN_S waits for it (one audit for a burst of refusals)."""
    rt, e = emu
    with _streams_process(rt, e, tmp_path, monkeypatch, 3600.0) as (cache, _):
        assert _counter(rt, "streams:audits") == 0
        cache.request_audit()
        wait_for(lambda: _counter(rt, "streams:audits") == 1, 15, what="the asked audit")
        assert _counter(rt, "streams:audits_asked") == 1
        assert not rt.r.smembers(f"{NS}:streams:audit_requests")  # taken by the process holding the account
        cache.request_audit()  # within ASKED_AUDIT_MIN_S of the first: waits for it
        wait_for(lambda: not rt.r.smembers(f"{NS}:streams:audit_requests"), 10, what="the request taken")
        assert _counter(rt, "streams:audits_asked") == 1 and cache.trusted()
