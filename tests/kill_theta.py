"""The kill-score parameters the tests are written against (the first values of docs/design.md §2.3): the kill
score fires (threshold 0.6, weights 1 / 0.5 / 0.5 / 0.3), a regime flip is confirmed after 3
bars, the profit lock starts at 1.5 R. The shipped defaults, chosen in the policy lab, make the
kill score unreachable; the tests keep exercising it with these. ``tests/conftest.py`` puts them
in the environment of the whole session (workers and in-process settings alike)."""

from __future__ import annotations

KILL_SCORE_THETA: dict[str, float | int] = {
    "kill_threshold": 0.6,
    "w_regime_flip": 1.0,
    "w_sigma_spike": 0.5,
    "w_ts_drop": 0.5,
    "lock_start_r": 1.5,
    "regime_confirm_bars": 3,
}
KILL_SCORE_ENV = {f"HARVEST_THETA__{k.upper()}": str(v) for k, v in KILL_SCORE_THETA.items()}
