"""Many accounts in one deployment (issue 23.1): ``HARVEST_ACCOUNTS`` names each account, its mode
and its overrides; beat's scan fans out one scan per account; every stage acts on the plan's own
account; a shadow account's plans end SHADOWED and its position is never touched; a message for an
account the deployment does not manage is recorded and never executed; the scorecard shows each
account."""

from __future__ import annotations

import json
import os

import pytest

from harvest.domain.models import Action
from harvest.ops.scorecard import build_scorecard
from harvest.services.runtime import build_runtime
from settings import load_settings
from tasks.app import app
from tests.harness import wait_for, worker
from tests.pipeline_helpers import clean, mark_for_r, open_position

NS = os.environ["HARVEST_NAMESPACE"] + "-acc"
ACCOUNTS = [
    {"name": "alpha"},
    {"name": "beta", "mode": "shadow"},
    # gamma: a partial (and the profit lock) from 3R on BTCUSDT: at 2.2R it holds.
    {
        "name": "gamma",
        "symbols": ["BTCUSDT", "ETHUSDT"],
        "symbol_theta": {"BTCUSDT": {"t1_r": 3.0, "lock_start_r": 3.0}},
    },
]


@pytest.mark.parametrize("per_task", [1, 2], ids=["a task per account", "chunks of two"])
def test_each_account_scanned_and_acted_on_by_its_own_rules(per_task):
    rt = build_runtime(load_settings(namespace=NS, accounts=ACCOUNTS))
    assert rt.accounts == ["alpha", "beta", "gamma"] and rt.settings.account == "alpha"
    clean(rt)
    e, s = 100_000.0, 99_000.0
    mark = mark_for_r(e, s, 1.0, 1.0, 2.2, "LONG")  # R_net 2.2: the first partial (t1 = 2R) is due
    for a in rt.accounts:
        open_position(rt.for_account(a), "BTCUSDT", "LONG", 1.0, e, s, mark=mark)
    env = {
        "HARVEST_NAMESPACE": NS,
        "HARVEST_ACCOUNTS": json.dumps(ACCOUNTS),
        "HARVEST_SCAN_ACCOUNTS_PER_TASK": str(per_task),
    }
    w = worker(env, NS, 2).start()
    try:
        w.wait_ready()
        # beat's message: no account → one scan per account, as a group on the scan queue
        app.send_task("harvest.scan_positions", queue=f"{NS}.scan")

        def settled():
            plans = {p.account: p for p in rt.plans.all_plans() if p.action == Action.PARTIAL_25}
            done = {a: p for a, p in plans.items() if p.state in ("FILLED", "SHADOWED")}
            return done if set(done) == {"alpha", "beta"} else None

        done = wait_for(settled, 30, what="alpha's partial filled and beta's shadowed")
        counters = rt.plans.counters()
        wait_for(
            lambda: all(rt.plans.counters().get(f"acct:{a}:scan:runs", 0) >= 1 for a in rt.accounts),
            20,
            what="a scan of every account",
        )
        assert done["alpha"].state == "FILLED" and done["beta"].state == "SHADOWED"
        assert done["alpha"].plan_id != done["beta"].plan_id  # the account is part of the plan_id
        # each account's own exchange position: alpha's reduced by 25 %, beta's and gamma's untouched
        assert rt.for_account("alpha").venue.position("BTCUSDT").qty == pytest.approx(0.75)
        assert rt.for_account("beta").venue.position("BTCUSDT").qty == pytest.approx(1.0)
        assert rt.for_account("gamma").venue.position("BTCUSDT").qty == pytest.approx(1.0)
        assert not [p for p in rt.plans.all_plans() if p.account == "gamma"]  # 2.2R < its 3R tier

        # a message for an account the deployment does not manage: recorded, never executed
        before = counters.get("unknown_account", 0)
        app.send_task("harvest.scan_positions", args=["ghost"], queue=f"{NS}.scan")
        decision = {**done["alpha"].decision, "account": "ghost"}
        app.send_task("harvest.propose", args=[decision], queue=f"{NS}.scan")
        wait_for(lambda: rt.plans.counters().get("unknown_account", 0) >= before + 2, 20, what="both rejected")
        assert not [p for p in rt.plans.all_plans() if p.account == "ghost"]
        rejected = rt.r.xrange(f"{NS}:stream:rejected")
        assert sum("unknown account 'ghost'" in f["error"] for _, f in rejected) == 2
    finally:
        w.stop()
    card = build_scorecard(rt)
    assert set(card["accounts"]) == {"alpha", "beta", "gamma"}
    assert card["accounts"]["alpha"]["executed"] == 1 and card["accounts"]["alpha"]["mode"] == "ACTIVE"
    assert (
        card["accounts"]["beta"]["plans_by_state"] == {"SHADOWED": 1} and card["accounts"]["beta"]["mode"] == "SHADOW"
    )
    assert card["accounts"]["gamma"]["plans"] == 0
    assert card["positions_open"] == 3
