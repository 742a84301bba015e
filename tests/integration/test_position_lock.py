"""The approval takes the position's in-flight lock in the same compare-and-set, and the
fill's effects (tier harvested, scan-to-fill observed, lock released) ride on the terminal
transition: on a real Redis and the paper engine, stages called in-process."""

from __future__ import annotations

import time

import pytest
from celery.exceptions import Retry

from harvest.services.decide import decide, load_positions
from tasks.confirm import confirm
from tasks.execute import execute
from tasks.guard import guard
from tasks.propose import propose
from tests.pipeline_helpers import mark_for_r, open_position

SYM = "BTCUSDT"


def proposed(rt) -> dict:
    """The ref of a PROPOSED tier-1 partial of a 1 BTC long at 2.2 R."""
    e, s = 100_000.0, 99_000.0
    open_position(rt, SYM, "LONG", 1.0, e, s, mark=mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG"))
    rows, now = load_positions(rt)
    [d] = decide(rt, rows, now)
    return propose(d.model_dump(mode="json"))


def lock_key(rt) -> str:
    return rt.plans.k.inflight(rt.settings.account, SYM)


def fills_observed(rt) -> int:
    return int(rt.r.hget(rt.plans.scan_to_fill.key, "PARTIAL_25|count") or 0)


def test_busy_position_keeps_the_plan_proposed_until_the_lock_is_free(rt):
    ref = proposed(rt)
    rt.r.set(lock_key(rt), "f" * 16, ex=60)  # another plan is in flight on the position
    with pytest.raises(Retry):
        guard(ref)
    plan = rt.plans.get(ref["plan_id"])
    assert plan.state == "PROPOSED" and plan.order_qty is None
    assert rt.plans.counters()["guard:position_busy"] == 1
    assert rt.r.get(lock_key(rt)) == "f" * 16  # the holder's lock is untouched

    rt.r.delete(lock_key(rt))  # the other plan ended
    assert guard(ref) == ref
    assert rt.plans.get(ref["plan_id"]).state == "APPROVED"
    assert rt.r.get(lock_key(rt)) == ref["plan_id"]
    assert 0 < rt.r.ttl(lock_key(rt)) <= rt.settings.plan_ttl_s


def sent(rt, ref) -> dict:
    """Guard and execute ``ref``; the ref execute hands to confirm after the accepted send."""
    assert guard(ref) == ref
    ack = execute(ref)
    assert ack["plan_id"] == ref["plan_id"] and ack["step"] == 0 and 0 < ack["acked_at"] <= time.time()
    return ack


def test_fill_raises_the_tier_observes_latency_and_releases_the_lock_once(rt):
    ref = proposed(rt)
    assert confirm(sent(rt, ref)) == "FILLED"
    plan = rt.plans.get(ref["plan_id"])
    assert rt.book.get_many(rt.settings.account, [SYM])[0]["harvested_tier"] == 1
    assert fills_observed(rt) == 1
    assert rt.r.exists(lock_key(rt)) == 0
    # A repeat of the terminal transition changes nothing: no second observation, no tier.
    ok, before = rt.plans.transition(
        plan.plan_id, "FILLED", "order_filled", book={"tier": 3}, fill=(plan.created_at, "PARTIAL_25")
    )
    assert (ok, before) == (False, "FILLED")
    assert fills_observed(rt) == 1
    assert rt.book.get_many(rt.settings.account, [SYM])[0]["harvested_tier"] == 1


def test_fill_leaves_a_new_epochs_book_entry_alone(rt):
    ref = proposed(rt)
    ack = sent(rt, ref)
    book_key = rt.book.k.book(rt.settings.account, SYM)
    rt.r.hset(book_key, "epoch", "another-epoch")  # the position was closed and re-opened meanwhile
    assert confirm(ack) == "FILLED"
    assert int(rt.r.hget(book_key, "harvested_tier") or 0) == 0


def test_transition_and_get_reads_the_plan_back_only_when_applied(rt):
    """Execute's APPROVED → SUBMITTED: one round trip that returns the plan as written; an
    unknown plan_id and a plan in another state change nothing and return no plan."""
    assert rt.plans.transition_and_get("0" * 16, "SUBMITTED", "order_sent") == (False, "", None)
    ref = proposed(rt)
    pid = ref["plan_id"]
    assert rt.plans.transition_and_get(pid, "SUBMITTED", "order_sent") == (False, "PROPOSED", None)
    assert guard(ref) == ref
    ok, before, plan = rt.plans.transition_and_get(
        pid, "SUBMITTED", "order_sent", fields={"step": 0, "send": "sending"}
    )
    assert (ok, before) == (True, "APPROVED")
    assert (plan.plan_id, plan.state, plan.send, plan.symbol) == (pid, "SUBMITTED", "sending", SYM)
    assert plan == rt.plans.get(pid)
    assert rt.plans.transition_and_get(pid, "SUBMITTED", "order_sent") == (False, "SUBMITTED", None)
    assert [h["to"] for h in rt.plans.history(pid)] == ["PROPOSED", "APPROVED", "SUBMITTED"]


def test_execute_records_the_accepted_send_once(rt):
    """Execute records the exchange's acknowledgement where it sends (send accepted,
    acked_at, one stream entry, one count: harvest.services.execution) and hands it to
    confirm, which reads the fill; a repeat records nothing more, and a forged acknowledgement
    is rejected and recorded without a look-up or a write."""
    ref = proposed(rt)
    ack = sent(rt, ref)
    pid = ref["plan_id"]
    plan = rt.plans.get(pid)
    assert (plan.state, plan.send, plan.acked_at) == ("SUBMITTED", "accepted", ack["acked_at"])
    assert not rt.plans.mark_accepted(pid, 0, ack["acked_at"] + 1)  # a repeat records nothing
    assert rt.plans.get_after_accepted(pid, 0, ack["acked_at"] + 1).acked_at == ack["acked_at"]  # a repeat
    assert rt.plans.get_after_accepted(pid, 1, ack["acked_at"]).send == "accepted"  # another step: nothing
    assert confirm(ack) == "FILLED"
    reasons = [h["reason"] for h in rt.plans.history(pid, sends=True)]
    assert reasons[-3:] == ["order_sent", "send_accepted", "order_filled"] and reasons.count("send_accepted") == 1
    assert rt.r.hget(rt.plans.k.metrics_sends, f"{rt.settings.account}|accepted") == "1"
    assert rt.plans.get_after_accepted("0" * 16, 0, ack["acked_at"]) is None

    before = rt.r.xlen(f"{rt.settings.namespace}:stream:rejected")
    for forged in (
        {**ack, "step": "0"},
        {**ack, "step": -1},
        {**ack, "acked_at": time.time() + 3600},
        {**ack, "acked_at": True},
        {"plan_id": pid, "step": 0},
    ):
        assert confirm(forged) is None
    assert rt.r.xlen(f"{rt.settings.namespace}:stream:rejected") == before + 5
    assert rt.plans.counters()["malformed:confirm"] == 5
