"""The guard's named rules (harvest.domain.guard_rules), each on its own and through the one
verdict, and the close-quantity rounding: pure functions, no servers (docs/design.md §5.4)."""

from __future__ import annotations

from harvest.data import load_brackets_raw, shipped_filters
from harvest.domain.guard_rules import (
    COMMON_RULES,
    Approval,
    Block,
    GuardContext,
    allowlist,
    breached,
    check_full_close,
    check_partial,
    check_stop,
    close_quantity,
    inside_liquidation,
    position_exists,
    same_epoch,
    same_side,
    stop_in_force,
    ttl,
    verdict,
)
from harvest.domain.margin import brackets_from_response, liquidation_price
from harvest.domain.models import Action, HarvestTheta, MarketState, Plan, PlanState, Regime, Side, VenuePosition
from tests.kill_theta import KILL_SCORE_THETA

TH = HarvestTheta(**KILL_SCORE_THETA)
BR = brackets_from_response(load_brackets_raw())
F = shipped_filters()["BTCUSDT"]
T0 = 1_750_464_000.0


# --------------------------------------------------------------------------- guard rules


def plan(action=Action.PARTIAL_25, tier=1, fraction=0.25, new_stop=None, **kw) -> Plan:
    base = dict(
        plan_id="0123456789abcdef",
        account="paper",
        symbol="BTCUSDT",
        epoch="L1",
        side=Side.LONG,
        action=action,
        tier=tier,
        close_fraction=fraction,
        new_stop=new_stop,
        state="PROPOSED",
        created_at=T0,
        updated_at=T0,
        expires_at=T0 + 30,
        client_order_id="hv-0123456789abcdef-0",
    )
    base.update(kw)
    return Plan(**base)


def vpos(mark=100_000.0, qty=0.1, stop=99_000.0, lev=10.0, side=Side.LONG, entry=100_000.0) -> VenuePosition:
    liq = liquidation_price(side, qty, entry, lev, BR["BTCUSDT"])
    return VenuePosition(
        symbol="BTCUSDT",
        side=side,
        qty=qty,
        entry_price=entry,
        mark_price=mark,
        leverage=lev,
        stop_price=stop,
        liquidation_price=liq,
    )


def book(tier=0, stop=99_000.0, entry_state=None):
    return {
        "epoch": "L1",
        "side": Side.LONG,
        "opened_at": T0,
        "entry_price": 100_000.0,
        "qty_at_open": 0.1,
        "initial_stop": stop,
        "harvested_tier": tier,
        "entry_state": entry_state,
    }


CTX = GuardContext(frozenset({"BTCUSDT"}), TH, T0 + 1, T0 + 1)


def test_common_rules_in_order():
    assert (
        verdict(plan(), vpos(), book(), F, None, GuardContext(frozenset({"BTCUSDT"}), TH, T0 + 31, T0)).reason
        == "plan_ttl_expired"
    )
    assert verdict(plan(symbol="ETHUSDT"), None, None, None, None, CTX).reason == "symbol_not_allowed"
    assert verdict(plan(), None, book(), F, None, CTX).reason == "ghost_position"
    assert verdict(plan(side=Side.SHORT), vpos(), book(), F, None, CTX).reason == "side_mismatch"
    assert verdict(plan(epoch="L0"), vpos(), book(), F, None, CTX).reason == "epoch_changed"


def test_forged_partial_75_at_2_2r_after_tier_one_is_rejected():
    """Issue 19.5: a forged PARTIAL_75 at 2.2 R after tier 1 closed 5.6 of 7.5."""
    mark = 100_000.0 + 2.2 * 1_000.0 + 60.0  # ~2.2 R net of the fee
    out = verdict(plan(Action.PARTIAL_75, 3, 0.75), vpos(mark=mark), book(tier=1), F, None, CTX)
    assert isinstance(out, Block) and out.reason == "tier_not_reached"
    assert verdict(plan(), vpos(mark=mark), book(tier=1), F, None, CTX).reason == "tier_harvested"
    ok = verdict(plan(), vpos(mark=mark), book(tier=0), F, None, CTX)
    assert isinstance(ok, Approval) and ok.fields == {"order_qty": "0.025"}


def test_forged_stop_at_the_mark_is_rejected():
    """Issue 19.5: a forged PROFIT_LOCK_SL with the stop at the mark was filled at once."""
    out = verdict(plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=103_000.0), vpos(mark=103_000.0), book(), F, None, CTX)
    assert isinstance(out, Block) and out.reason == "stop_through_mark"
    close = 103_000.0 - 0.5 * TH.stop_min_distance * 103_000.0  # inside the minimum distance
    assert (
        verdict(plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=close), vpos(mark=103_000.0), book(), F, None, CTX).reason
        == "stop_through_mark"
    )
    assert (
        verdict(
            plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=98_000.0), vpos(mark=103_000.0), book(), F, None, CTX
        ).reason
        == "stop_not_tighter"
    )
    ok = verdict(plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=101_500.0), vpos(mark=103_000.0), book(), F, None, CTX)
    assert isinstance(ok, Approval) and ok.fields == {"stop_price": "101500"}


def test_protect_rules():
    naked = vpos(stop=None, lev=50)
    liq = naked.liquidation_price
    assert liq is not None and liq > 98_000.0
    ok = verdict(plan(Action.PROTECT, 0, 0.0, new_stop=99_000.0), naked, book(), F, None, CTX)
    assert isinstance(ok, Approval)
    assert (
        verdict(plan(Action.PROTECT, 0, 0.0, new_stop=liq - 10), naked, book(), F, None, CTX).reason
        == "no_stop_inside_liquidation"
    )
    assert (
        verdict(
            plan(Action.PROTECT, 0, 0.0, new_stop=99_000.0), vpos(stop=99_500.0, lev=50), book(), F, None, CTX
        ).reason
        == "already_protected"
    )


def test_full_close_needs_the_kill_recomputed_or_a_breached_stop():
    calm = MarketState(symbol="BTCUSDT", ts_time=T0, sigma=0.001, ts=0.5, p_trend=0.9, regime=Regime.TREND, trend_dir=1)
    flipped = calm.model_copy(update={"regime": Regime.CHOP, "p_trend": 0.1, "ts": 0.05})
    full = plan(Action.FULL_CLOSE_PROPOSED, 0, 1.0)
    assert verdict(full, vpos(), book(entry_state=calm), F, calm, CTX).reason == "kill_not_confirmed"
    assert verdict(full, vpos(), book(entry_state=calm), F, None, CTX).reason == "kill_not_confirmed"
    ok = verdict(full, vpos(), book(entry_state=calm), F, flipped, CTX)
    assert isinstance(ok, Approval) and ok.data["confirmed"] == "kill_score" and ok.fields == {"order_qty": "0.1"}
    stale = GuardContext(frozenset({"BTCUSDT"}), TH, T0 + 1, T0 + 1, market_stale_s=15.0)
    assert (
        verdict(
            full, vpos(), book(entry_state=calm), F, flipped.model_copy(update={"computed_at": T0 - 60}), stale
        ).reason
        == "kill_not_confirmed"
    )
    assert isinstance(
        verdict(full, vpos(), book(entry_state=calm), F, flipped.model_copy(update={"computed_at": T0 - 5}), stale),
        Approval,
    )
    breach = verdict(full, vpos(mark=98_900.0), book(entry_state=calm), F, calm, CTX)
    assert isinstance(breach, Approval) and breach.data["confirmed"] == "stop_breached"


def test_close_quantity_rounding_dust_and_remainder():
    p = plan()
    q, note = close_quantity(F, p, vpos(qty=0.1))
    assert (str(q), note) == ("0.025", "")
    q, note = close_quantity(F, p, vpos(qty=0.0045))  # remainder 0.0034 → 340 USDT ≥ minNotional? yes
    assert str(q) == "0.001"
    q, note = close_quantity(F, p, vpos(qty=0.002))  # 0.0005 → 0.000: nothing to send, the rest is no dust
    assert (q, note) == (None, "below_min_qty")
    q, note = close_quantity(F, p, vpos(qty=0.005, mark=20_000.0))  # rest 0.004 × 20 000 < 100 USDT minNotional
    assert (str(q), note) == ("0.005", "dust_folded")
    q, note = close_quantity(F, plan(remaining_qty=0.015), vpos(qty=0.075))  # the tier's remainder
    assert str(q) == "0.015"
    assert (
        close_quantity(
            F,
            plan(),
            VenuePosition(symbol="BTCUSDT", side=Side.LONG, qty=0.0009, entry_price=1.0, mark_price=1.0, leverage=1.0),
        )[1]
        == "below_min_qty"
    )


# --------------------------------------------------------------------------- each rule on its own


def test_ttl():
    assert ttl(plan(), vpos(), book(), CTX) is None
    late = GuardContext(frozenset({"BTCUSDT"}), TH, T0 + 30.5, T0)
    assert ttl(plan(), vpos(), book(), late) == Block(PlanState.EXPIRED, "plan_ttl_expired")


def test_allowlist():
    assert allowlist(plan(), None, None, CTX) is None
    assert allowlist(plan(symbol="ETHUSDT"), None, None, CTX).reason == "symbol_not_allowed"


def test_position_exists():
    assert position_exists(plan(), vpos(), book(), CTX) is None
    assert position_exists(plan(), None, book(), CTX).reason == "ghost_position"
    assert position_exists(plan(), vpos().model_copy(update={"qty": 0.0}), book(), CTX).reason == "ghost_position"


def test_same_side():
    assert same_side(plan(), vpos(), book(), CTX) is None
    b = same_side(plan(side=Side.SHORT), vpos(), book(), CTX)
    assert b.reason == "side_mismatch" and b.data == {"position_side": "LONG"}


def test_same_epoch():
    assert same_epoch(plan(), vpos(), book(), CTX) is None
    assert same_epoch(plan(epoch="L0"), vpos(), book(), CTX).reason == "epoch_changed"
    assert same_epoch(plan(), vpos(), None, CTX).reason == "epoch_changed"
    # the venue shows another opening (opened at another time than the book's): a new epoch
    assert same_epoch(plan(), vpos().model_copy(update={"opened_at": T0 + 60}), book(), CTX).reason == "epoch_changed"
    assert same_epoch(plan(), vpos().model_copy(update={"opened_at": T0}), book(), CTX) is None


def test_common_rules_are_the_five_in_order():
    assert COMMON_RULES == (ttl, allowlist, position_exists, same_side, same_epoch)


def test_stop_in_force_and_breached():
    assert stop_in_force(vpos(stop=99_500.0), book()) == 99_500.0
    assert stop_in_force(vpos(stop=None), book(stop=99_000.0)) == 99_000.0
    assert breached(Side.LONG, 99_000.0, 99_000.0) and not breached(Side.LONG, 99_000.1, 99_000.0)
    assert breached(Side.SHORT, 101_000.0, 101_000.0) and not breached(Side.SHORT, 100_999.9, 101_000.0)


def test_inside_liquidation():
    assert inside_liquidation(Side.LONG, 95_000.0, 94_000.0) and not inside_liquidation(Side.LONG, 94_000.0, 94_000.0)
    assert inside_liquidation(Side.SHORT, 105_000.0, 106_000.0)
    assert not inside_liquidation(Side.SHORT, 106_500.0, 106_000.0)
    assert inside_liquidation(Side.LONG, 1.0, None)


def test_check_partial():
    at_2r = 100_000.0 + 2.2 * 1_000.0 + 60.0
    out = check_partial(plan(), vpos(mark=at_2r), book(), F, CTX, {})
    assert isinstance(out, Approval) and out.fields == {"order_qty": "0.025"} and out.data["r_net"] > 2
    assert check_partial(plan(), vpos(mark=101_000.0), book(), F, CTX, {}).reason == "tier_not_reached"
    assert check_partial(plan(), vpos(mark=at_2r), book(tier=1), F, CTX, {}).reason == "tier_harvested"


def test_check_full_close():
    calm = MarketState(symbol="BTCUSDT", ts_time=T0, sigma=0.001, ts=0.5, p_trend=0.9, regime=Regime.TREND, trend_dir=1)
    full = plan(Action.FULL_CLOSE_PROPOSED, 0, 1.0)
    assert check_full_close(full, vpos(), book(entry_state=calm), F, calm, CTX, {}).reason == "kill_not_confirmed"
    old = GuardContext(frozenset({"BTCUSDT"}), TH, T0 + 1, T0 + TH.max_hold_s + 1)
    out = check_full_close(full, vpos(), book(entry_state=calm), F, calm, old, {})
    assert isinstance(out, Approval) and out.data["confirmed"] == "time_stop"
    out = check_full_close(full, vpos(mark=98_000.0), book(entry_state=calm), F, None, CTX, {})
    assert isinstance(out, Approval) and out.data["confirmed"] == "stop_breached"


def test_check_stop():
    lock = plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=101_500.04)
    out = check_stop(lock, vpos(mark=103_000.0), book(), F, CTX, {})
    assert isinstance(out, Approval) and out.fields == {"stop_price": "101500"}  # toward entry: down for a LONG
    assert (
        check_stop(
            plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=98_000.0), vpos(mark=103_000.0), book(), F, CTX, {}
        ).reason
        == "stop_not_tighter"
    )
    assert (
        check_stop(
            plan(Action.PROFIT_LOCK_SL, 0, 0.0, new_stop=103_000.0), vpos(mark=103_000.0), book(), F, CTX, {}
        ).reason
        == "stop_through_mark"
    )
    naked = vpos(stop=None, lev=50)
    assert (
        check_stop(
            plan(Action.PROTECT, 0, 0.0, new_stop=naked.liquidation_price - 10), naked, book(), F, CTX, {}
        ).reason
        == "no_stop_inside_liquidation"
    )


def test_check_partial_under_the_lsf_ladder_policy():
    """With ``policy = lsf_ladder`` a tier is reached at the exit ladder's price (within the
    guard's tolerance), not at an R multiple."""
    from harvest.domain.exit_ladder import compute_levels

    th = TH.model_copy(update={"policy": "lsf_ladder"})
    ctx = GuardContext(frozenset({"BTCUSDT"}), th, T0 + 1, T0 + 1)
    tp1 = compute_levels(100_000.0, Side.LONG, 10.0, th).tp_prices[0]
    at = check_partial(plan(fraction=0.3), vpos(mark=tp1 + 1), book(), F, ctx, {})
    assert isinstance(at, Approval) and at.fields == {"order_qty": "0.03"}
    assert check_partial(plan(fraction=0.3), vpos(mark=tp1 - 1_000), book(), F, ctx, {}).reason == "tier_not_reached"
    # the R tiers do not apply: 2.2 R is below the ladder's tp1 at 10× (≈ 1.8 % ≈ 1.8 R here)
    assert tp1 < 100_000.0 + 2.2 * 1_000.0
