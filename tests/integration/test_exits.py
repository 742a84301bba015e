"""Exits that finish (issue 18), end to end: a real Celery worker and a real beat (scanning
every 0.5 s), python-binance against the fapi emulator, a real Redis.

Each test reproduces a failure seen on the old main and shows it fixed: a kill close after a
503 storm ends FILLED once the exchange recovers; a -4061 after a position-mode change is
retried after a refresh; a close and re-open between scans harvests again in the new epoch; a
naked position gets its stop within a scan, inside the liquidation price; funding reaches
R_net on the python-binance path; a stale market state makes no kill decision; a partial
fill's remainder is the decision's next attempt; a stuck partial does not freeze the profit
lock.
"""

from __future__ import annotations

import os
import time

import pytest

from harvest.domain.models import Action, Regime
from harvest.domain.plans import TERMINAL
from harvest.services.runtime import build_runtime
from harvest.venues.binance import BinanceVenue
from harvest.venues.sim.emulator import Emulator
from settings import load_settings
from tests.harness import CeleryProcess, wait_for, worker
from tests.pipeline_helpers import T0, clean, mark_for_r, state

KEY, SECRET = "exits-key-2b7d", "exits-secret-8c1e"
NS = os.environ["HARVEST_NAMESPACE"] + "-x"
LISTED = {"LOCKUSDT": "BTCUSDT", "STALEUSDT": "ETHUSDT"}
SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT,XRPUSDT,DOGEUSDT," + ",".join(LISTED)


def settings(**kw):
    return load_settings(namespace=NS, symbols=SYMBOLS, **kw)


@pytest.fixture(scope="module")
def emu():
    rt = build_runtime(settings())
    clean(rt)
    rt.venue.list_symbols(LISTED)
    e = Emulator(rt.r, NS, rt.settings.account, KEY, SECRET, clock=rt.clock).start()
    yield e
    e.stop()
    clean(rt)


@pytest.fixture(scope="module")
def env(emu):
    return {
        "HARVEST_NAMESPACE": NS,
        "HARVEST_SYMBOLS": SYMBOLS,
        "HARVEST_FAPI_URL": emu.url,
        "HARVEST_API_KEY": KEY,
        "HARVEST_API_SECRET": SECRET,
        "HARVEST_VENUE_TIMEOUT_S": "1.0",
        "HARVEST_RETRY_BACKOFF_S": "0.1",
        "HARVEST_CONFIRM_RETRY_S": "0.2",
        "HARVEST_MAX_SEND_ATTEMPTS": "2",
        "HARVEST_ATTEMPT_BACKOFF_S": "0.3",
        "HARVEST_ATTEMPT_BACKOFF_MAX_S": "1",
        "HARVEST_FUNDING_POLL_S": "0",
        "HARVEST_SCAN_INTERVAL_S": "0.5",
        "HARVEST_MARKET_REFRESH_S": "3600",
        "HARVEST_RECONCILE_INTERVAL_S": "3600",
        "HARVEST_EXCHANGE_INFO_INTERVAL_S": "3600",
        "HARVEST_SWEEP_INTERVAL_S": "1",
        "HARVEST_PLAN_TTL_S": "20",
        # scans every 0.5 s of 8 positions: far more weight than an account's minute allows
        "HARVEST_VENUE_WEIGHT_LIMIT_1M": "1000000",
    }


@pytest.fixture(scope="module")
def pipeline(env):
    w = worker(env, NS).start()
    b = CeleryProcess("beat", env)  # the market refresh (hourly) leaves the tests' states alone
    try:
        w.wait_ready()
        b.start().wait_ready()
        yield w, b
    finally:
        b.stop()
        w.stop()


@pytest.fixture()
def rt(pipeline, emu):
    emu.faults.clear()
    return build_runtime(settings())


def binance_runtime(emu):
    """A runtime on the python-binance venue, as the workers build it, in this process."""
    return build_runtime(
        settings(fapi_url=emu.url, api_key=KEY, api_secret=SECRET, funding_poll_s=0, venue_weight_limit_1m=1_000_000)
    )


def binance_venue(emu) -> BinanceVenue:
    """The python-binance venue as the workers build it, in this process."""
    return binance_runtime(emu).venue


def plans_of(rt, symbol: str, action: Action | None = None):
    return [p for p in rt.plans.all_plans() if p.symbol == symbol and (action is None or p.action is action)]


def hv_trades(emu, symbol: str) -> list[dict]:
    return [t for t in emu.venue.trades() if t["symbol"] == symbol and t["clientOrderId"].startswith("hv-")]


def book_of(rt, symbol):
    return rt.book.get_many(rt.settings.account, [symbol])[0]


def test_kill_close_after_a_503_storm_ends_filled_once_the_exchange_recovers(rt, emu):
    """Old main: the kill close ended FAILED after 5 × 503 and every later scan reported it as
    a duplicate: the position stayed open."""
    sym, e, s = "ETHUSDT", 2_500.0, 2_475.0
    rt.market.put_many([state(sym, Regime.TREND, trend_dir=1)])
    rt.venue.set_position(sym, "LONG", 1.0, e, 10.0, opened_at=T0, stop_price=s)
    rt.venue.set_mark(sym, e)
    wait_for(lambda: book_of(rt, sym), 20, what="the epoch's book entry")
    emu.faults.inject("POST /fapi/v1/order", "unavailable_503", times=10_000)
    rt.market.put_many([state(sym, Regime.CHOP, p=0.1, ts=0.05)])  # the regime flipped: kill
    wait_for(
        lambda: len([p for p in plans_of(rt, sym, Action.FULL_CLOSE_PROPOSED) if p.state == "FAILED"]) >= 2,
        40,
        what="two failed attempts of the kill close",
    )
    kills = plans_of(rt, sym, Action.FULL_CLOSE_PROPOSED)
    assert len({p.lineage for p in kills}) == 1 and len({p.plan_id for p in kills}) == len(kills)
    assert rt.venue.position(sym) is not None and not hv_trades(emu, sym)
    emu.faults.clear()
    wait_for(lambda: rt.venue.position(sym) is None, 40, what="the position to be closed")
    wait_for(lambda: rt.plans.count_open() == 0, 20, what="confirm to record the fill")
    kills = plans_of(rt, sym, Action.FULL_CLOSE_PROPOSED)
    done = [p for p in kills if p.state == "FILLED"]
    assert len(done) == 1 and done[0].attempt >= 2, [(p.attempt, p.state, p.reason, p.step, p.send) for p in kills]
    assert len(hv_trades(emu, sym)) == 1  # one close order, however many attempts
    # the scorecard from exchange truth (python-binance: allOrders, userTrades, income), not the paper engine
    from harvest.ops.scorecard import build_scorecard

    card = build_scorecard(binance_runtime(emu))
    assert card["pnl_source"].startswith("exchange")
    assert card["orders"].get("MARKET:FILLED", 0) >= 1
    row = card["realized_pnl"][sym]
    assert row["realized"] - row["commission"] == pytest.approx(done[0].realized_pnl)  # the plan's, net of fees
    assert row["commission"] > 0


def test_position_mode_change_is_refreshed_and_retried_in_the_plan(rt, emu):
    """Old main: a PARTIAL_25 REJECTED -4061 (stale position-mode cache) blocked the position."""
    sym, e, s = "BNBUSDT", 600.0, 594.0
    rt.r.set(f"{NS}:venue:{rt.settings.account}:dual", "true", ex=300)  # harvest read hedge mode earlier ...
    emu.venue.set_dual(False)  # ... and the account is one-way now
    rt.market.put_many([state(sym, Regime.TREND, trend_dir=1)])
    rt.venue.set_position(sym, "LONG", 10.0, e, 10.0, opened_at=T0, stop_price=s)
    rt.venue.set_mark(sym, mark_for_r(e, s, 10.0, 10.0, 2.2, "LONG"))
    plan = wait_for(
        lambda: next((p for p in plans_of(rt, sym, Action.PARTIAL_25) if p.state in TERMINAL), None),
        30,
        what="the partial to end",
    )
    assert (plan.state, plan.attempt) == ("FILLED", 0), (plan.reason, plan.error_code)
    answers = [x["data"].get("code") for x in emu.order_log() if x["kind"] == "HTTP" and x["symbol"] == sym]
    assert answers[:2] == [-4061, None]  # refused in the old mode, then sent again and filled


def test_close_and_reopen_between_scans_harvests_again_in_the_new_epoch(rt, emu):
    """Old main (python-binance path): a close and a same-side re-open kept the old epoch
    (old tiers, old 1R, old age)."""
    sym = "SOLUSDT"
    rt.market.put_many([state(sym, Regime.TREND, trend_dir=1)])
    paper = emu.venue
    paper.set_mark(sym, 150.0)
    paper.open_position(sym, "LONG", 10.0, 10.0, stop_price=148.5, client_order_id="strategy-open-1")
    paper.set_mark(sym, mark_for_r(150.0, 148.5, 10.0, 10.0, 2.2, "LONG"))
    first = wait_for(
        lambda: next((p for p in plans_of(rt, sym, Action.PARTIAL_25) if p.state == "FILLED"), None),
        30,
        what="tier 1 of the first epoch",
    )
    e1 = first.epoch
    # The strategy closes the rest and opens again, same side, later; both between two scans
    # or not, the venue's fills say it is another opening.
    rt.clock.set(T0 + 3600.0, 0.0)
    left = paper.position(sym).qty
    paper.submit_market(sym, "SELL", str(left), "strategy-close-1", reduce_only=True)
    paper.set_mark(sym, 160.0)
    paper.open_position(sym, "LONG", 10.0, 10.0, stop_price=158.4, client_order_id="strategy-open-2")
    [vp] = [p for p in binance_venue(emu).positions() if p.symbol == sym]
    assert vp.opened_at == pytest.approx(T0 + 3600.0)  # from userTrades, not first sight
    paper.set_mark(sym, mark_for_r(160.0, 158.4, 10.0, 10.0, 2.2, "LONG"))
    second = wait_for(
        lambda: next((p for p in plans_of(rt, sym, Action.PARTIAL_25) if p.state == "FILLED" and p.epoch != e1), None),
        30,
        what="tier 1 of the new epoch",
    )
    assert book_of(rt, sym)["opened_at"] == pytest.approx(T0 + 3600.0) and second.attempt == 0


def test_a_naked_position_gets_its_stop_within_a_scan_inside_liquidation(rt, emu):
    """Old main: the ladder's stop lived only in the book until a profit lock (R ≥ 1.5); at 50×
    it lay beyond the liquidation price."""
    sym = "XRPUSDT"
    rt.market.put_many([state(sym, Regime.CHOP, p=0.2, ts=0.1)])
    rt.venue.set_position(sym, "LONG", 10_000.0, 2.0, 50.0, opened_at=T0)  # no stop
    rt.venue.set_mark(sym, 2.0)
    plan = wait_for(
        lambda: next((p for p in plans_of(rt, sym, Action.PROTECT) if p.state in TERMINAL), None),
        20,
        what="the protective stop",
    )
    assert plan.state == "FILLED", (plan.reason, plan.error_code)
    vp = emu.venue.position(sym)
    assert vp.stop_price is not None and vp.liquidation_price is not None
    assert vp.liquidation_price < vp.stop_price < vp.mark_price
    assert vp.stop_price == pytest.approx(float(plan.stop_price))


def test_funding_reaches_r_net_on_the_python_binance_path(rt, emu):
    """Old main: positionRisk carries no funding, so R_net on testnet/live never counted it."""
    from harvest.domain.book import to_position
    from harvest.domain.kernel import compute_r_net

    sym = "BTCUSDT"
    rt.market.put_many([state(sym, Regime.CHOP, p=0.2, ts=0.1)])
    rt.clock.set(T0 + 60.0, 0.0)
    paper = emu.venue
    paper.set_mark(sym, 100_000.0)
    paper.open_position(sym, "LONG", 0.5, 10.0, stop_price=99_000.0, client_order_id="strategy-open-btc")
    rt.clock.set(T0 + 8 * 3600 + 60.0, 0.0)  # past the 08:00 funding
    paid = paper.position(sym).funding_paid
    assert paid != 0.0
    [vp] = [p for p in binance_venue(emu).positions() if p.symbol == sym]
    assert vp.funding_paid == pytest.approx(paid)
    entry = wait_for(lambda: book_of(rt, sym), 20, what="the book entry")
    with_funding = compute_r_net(to_position("paper", vp, entry), rt.settings.theta)
    without = compute_r_net(to_position("paper", vp.model_copy(update={"funding_paid": 0.0}), entry), rt.settings.theta)
    assert with_funding == pytest.approx(without - paid / (abs(100_000.0 - entry["initial_stop"]) * 0.5))
    assert with_funding != without


def test_a_stale_market_state_makes_no_kill_decision(rt, emu):
    """Old main: a state that stopped refreshing (503 on klines) was used as if fresh."""
    from harvest.services.decide import decide, load_positions

    sym = "STALEUSDT"
    rt.market.put_many([state(sym, Regime.TREND, trend_dir=1)])
    rt.venue.set_position(sym, "LONG", 1.0, 2_500.0, 10.0, opened_at=T0, stop_price=2_475.0)
    rt.venue.set_mark(sym, 2_500.0)
    wait_for(lambda: book_of(rt, sym), 20, what="the book entry")
    flipped = state(sym, Regime.CHOP, p=0.1, ts=0.05)
    old = time.time() - 10 * rt.settings.market_stale_after_s
    rt.market.put_many([flipped.model_copy(update={"computed_at": old})])
    brt = binance_runtime(emu)  # the scan as the workers run it
    rows, now = load_positions(brt, {sym})
    assert not [d for d in decide(brt, rows, now) if d.action is Action.FULL_CLOSE_PROPOSED]
    assert rt.plans.counters().get("scan:market_stale", 0) >= 1
    rt.market.put_many([flipped.model_copy(update={"computed_at": time.time()})])
    rows, now = load_positions(brt, {sym})
    assert [d.action for d in decide(brt, rows, now)] == [Action.FULL_CLOSE_PROPOSED]
    rt.market.put_many([state(sym, Regime.TREND, trend_dir=1)])  # calm again: the beat's scans leave it be


def test_a_partial_fill_remainder_is_the_next_attempt(rt, emu):
    """Old main: a PARTIALLY_FILLED close marked the tier harvested; the rest was never sent."""
    sym, e, s = "DOGEUSDT", 0.2, 0.198
    wait_for(lambda: rt.plans.count_open() == 0, 30, what="earlier tests' plans to end")  # the fault is for this order
    emu.faults.inject("POST /fapi/v1/order", "partial_fill", times=1, fraction=0.4)
    rt.market.put_many([state(sym, Regime.TREND, trend_dir=1)])
    rt.venue.set_position(sym, "LONG", 100_000.0, e, 10.0, opened_at=T0, stop_price=s)
    rt.venue.set_mark(sym, mark_for_r(e, s, 100_000.0, 100_000.0, 2.2, "LONG"))
    done = wait_for(
        lambda: next((p for p in plans_of(rt, sym, Action.PARTIAL_25) if p.state == "FILLED"), None),
        30,
        what="the tier's remainder to fill",
    )
    first = [p for p in plans_of(rt, sym, Action.PARTIAL_25) if p.attempt == 0]
    assert first[0].state == "PARTIALLY_FILLED" and first[0].executed_qty == pytest.approx(10_000.0)
    assert done.attempt == 1 and done.remaining_qty == pytest.approx(15_000.0)
    assert sum(t["qty"] for t in hv_trades(emu, sym)) == pytest.approx(25_000.0)
    assert emu.venue.position(sym).qty == pytest.approx(75_000.0) and book_of(rt, sym)["harvested_tier"] == 1


def test_a_stuck_partial_does_not_freeze_the_profit_lock(rt, emu):
    """Old main: a partial ranks above a profit lock, so a blocked partial kept the stop where
    it was for the rest of the position's life."""
    sym, e, s = "LOCKUSDT", 100_000.0, 99_000.0
    rt.market.put_many([state(sym, Regime.TREND, trend_dir=1)])
    rt.venue.set_position(sym, "LONG", 0.003, e, 10.0, opened_at=T0, stop_price=s)  # 25 % < minQty
    rt.venue.set_mark(sym, mark_for_r(e, s, 0.003, 0.003, 2.2, "LONG"))
    lock = wait_for(
        lambda: next((p for p in plans_of(rt, sym, Action.PROFIT_LOCK_SL) if p.state == "FILLED"), None),
        30,
        what="the profit lock",
    )
    [part] = plans_of(rt, sym, Action.PARTIAL_25)
    assert (part.state, part.reason) == ("REJECTED", "below_min_qty")
    assert emu.venue.position(sym).stop_price == pytest.approx(float(lock.stop_price))
    card_stuck = rt.r.hgetall(rt.plans.k.decisions(rt.settings.account))
    assert int(card_stuck.get("abandoned:below_min_qty", 0)) >= 1
