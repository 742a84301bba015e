"""The main job, ``harvest demo``, on the shipped real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_default_run_json():
    """The README's main job on its defaults: 2025-06-21 UTC, a market day per wall minute, three
    accounts (gamma in shadow) whose positions reach the scans from ``harvest streams``."""
    env = {**os.environ}
    env.pop("HARVEST_NAMESPACE", None)
    p = subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", "demo", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    card = json.loads(p.stdout)
    assert card["non_terminal"] == 0
    by = card["plans_by_action"]
    assert by["PARTIAL_25"].get("FILLED", 0) >= 1
    assert by["FULL_CLOSE_PROPOSED"].get("FILLED", 0) >= 1
    assert card["orders"]["MARKET:FILLED"] == sum(
        n for a, st in by.items() if a not in ("PROFIT_LOCK_SL", "PROTECT") for s, n in st.items() if s == "FILLED"
    )
    assert "market 2025-06-21" in p.stderr  # progress display
    # The default goes through python-binance and the fapi emulator, like live trading.
    assert card["venue_path"] == "emulator" and "python-binance → fapi emulator" in p.stderr
    assert card["emulator_order_requests"] >= card["orders"]["MARKET:FILLED"]
    assert set(card["realized_pnl"]) >= {"BTCUSDT", "ETHUSDT"}
    # Three accounts: alpha and beta trade, gamma is in shadow (its plans end SHADOWED, no order).
    acc = card["accounts"]
    assert set(acc) == {"alpha", "beta", "gamma"} and "gamma in shadow" in p.stderr
    assert acc["gamma"]["mode"] == "SHADOW" and acc["gamma"]["plans"] >= 1
    # shadowed, or blocked by a guard rule before the trading state is asked (kill_not_confirmed …);
    # never sent
    gamma = set(acc["gamma"]["plans_by_state"])
    assert "SHADOWED" in gamma and gamma <= {"SHADOWED", "REJECTED", "EXPIRED"} and acc["gamma"]["orders"] == {}
    for a in ("alpha", "beta"):
        assert acc[a]["mode"] == "ACTIVE" and acc[a]["executed"] >= 1 and "SHADOWED" not in acc[a]["plans_by_state"]
    assert sum(v["plans"] for v in acc.values()) == card["plans"]
    assert card["positions_from_streams"] > 0  # scans served by the stream cache, not positionRisk
    assert card["orders_confirmed_from_streams"] > 0  # fills read from ORDER_TRADE_UPDATE, not GET order
