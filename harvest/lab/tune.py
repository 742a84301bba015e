"""Tuning out of sample (``harvest replay --tune``): Optuna searches HarvestTheta for the
``default`` policy on a *training* span, and the chosen theta is judged on a *later test* span
it never saw, against every baseline, on the same test entries (walk-forward, one fold).

* Objective: mean R per trade of the default policy on the training entries (the entries that
  open before ``split``; each is replayed to its end, so the last training trades may run into
  the test span's bars: a position does not close because a span ends).
* Search space (:data:`SPACE`): the tiers, the kill threshold and weights, the time stop, the
  profit lock and the regime confirmation; everything else stays as configured. A trial whose
  theta does not validate (tiers not increasing) is pruned.
* Sampler: TPE, seeded, so a run is reproducible.
* The result: the chosen theta's figures on the training span and on the test span next to the
  configured theta's and the baselines', and the ``HARVEST_THETA__…=`` lines that apply it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from harvest.domain.models import HarvestTheta
from harvest.lab.engine import FillModel, Trades, simulate
from harvest.lab.entries import Entry
from harvest.lab.market import ReplayMarket, build_market_like
from harvest.lab.stats import paired, summarize

#: name → (low, high, kind): what a trial may set.
SPACE: dict[str, tuple[float, float, str]] = {
    "t1_r": (0.8, 3.0, "float"),
    "t2_r": (1.5, 6.0, "float"),
    "t3_r": (2.5, 10.0, "float"),
    "kill_threshold": (0.4, 0.95, "float"),
    "w_regime_flip": (0.0, 2.0, "float"),
    "w_sigma_spike": (0.0, 1.5, "float"),
    "w_ts_drop": (0.0, 1.5, "float"),
    "lock_start_r": (0.5, 3.0, "float"),
    "lock_fraction": (0.2, 0.8, "float"),
    "max_hold_s": (6 * 3600.0, 7 * 86400.0, "float"),
    "regime_confirm_bars": (1, 10, "int"),
}


def theta_lines(theta: HarvestTheta, base: HarvestTheta) -> list[str]:
    """``HARVEST_THETA__NAME=value`` for every field of ``theta`` that differs from ``base``."""
    out = []
    for name in SPACE:
        v, b = getattr(theta, name), getattr(base, name)
        if v != b:
            out.append(
                f"HARVEST_THETA__{name.upper()}={v:.6g}"
                if isinstance(v, float)
                else f"HARVEST_THETA__{name.upper()}={v}"
            )
    return out


def tune(
    m: ReplayMarket,
    entries: list[Entry],
    split: float,
    theta: HarvestTheta,
    fill: FillModel,
    baselines: list[str],
    trials: int = 60,
    seed: int = 7,
    progress: bool = False,
    fields: list[str] | None = None,
) -> dict[str, Any]:
    """Tune on the entries opening before ``split`` (market time, s), judge after it (module
    docstring). Returns a JSON-ready document: ``best_theta`` (the changed fields), ``lines``,
    ``train`` and ``test`` (per policy: summary; paired differences against the tuned default),
    ``trials``. ``fields``: search only these of :data:`SPACE` (the rest stay as configured).
    Raises ValueError when either span has no entries or a field is not in the space."""
    import optuna

    space = {k: SPACE[k] for k in (fields or list(SPACE))} if all(k in SPACE for k in fields or []) else None
    if space is None:
        raise ValueError(f"--tune-fields must be among {', '.join(SPACE)}")

    train = [x for x in entries if m.open_time[x.bar] < split]
    test = [x for x in entries if m.open_time[x.bar] >= split]
    if not train or not test:
        raise ValueError(f"the split leaves {len(train)} training and {len(test)} test entries: both need some")
    markets: dict[tuple, ReplayMarket] = {}

    def market_for(th: HarvestTheta) -> ReplayMarket:
        key = (
            th.sigma_window,
            th.ts_window,
            th.regime_confirm_bars,
            th.ts_mid,
            th.ts_scale,
            th.trend_p,
            th.mr_autocorr,
        )
        if key not in markets:
            markets[key] = m if not markets and th == theta else build_market_like(m, th)
        return markets[key]

    def objective(trial: "optuna.Trial") -> float:
        params: dict[str, Any] = {}
        for name, (lo, hi, kind) in space.items():
            params[name] = (
                trial.suggest_int(name, int(lo), int(hi)) if kind == "int" else trial.suggest_float(name, lo, hi)
            )
        try:
            th = theta.model_copy(update=params)
            th = HarvestTheta.model_validate(th.model_dump())
        except ValidationError as e:
            raise optuna.TrialPruned(str(e).splitlines()[0]) from e
        t = simulate(market_for(th), train, "default", th, fill)
        return float(t.r.mean())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({name: getattr(theta, name) for name in space})  # the configured theta is trial 0
    study.optimize(objective, n_trials=trials, show_progress_bar=progress)
    best = HarvestTheta.model_validate({**theta.model_dump(), **study.best_params})

    def judge(span: list[Entry]) -> dict[str, Any]:
        runs: dict[str, Trades] = {"tuned": simulate(market_for(best), span, "default", best, fill)}
        runs["configured"] = simulate(market_for(theta), span, "default", theta, fill)
        for p in baselines:
            runs[p] = simulate(market_for(theta), span, p, theta, fill)
        return {
            "policies": {p: summarize(t) for p, t in runs.items()},
            "paired": {p: paired(t, runs["tuned"]) for p, t in runs.items() if p != "tuned"},
        }

    return {
        "split": split,
        "n_train": len(train),
        "n_test": len(test),
        "trials": len(study.trials),
        "best_train_mean_r": study.best_value,
        "best_theta": {k: getattr(best, k) for k in SPACE},
        "lines": theta_lines(best, theta),
        "train": judge(train),
        "test": judge(test),
    }


def walk_forward(
    m: ReplayMarket,
    entries: list[Entry],
    splits: list[float],
    theta: HarvestTheta,
    fill: FillModel,
    baselines: list[str],
    trials: int = 60,
    seed: int = 7,
    fields: list[str] | None = None,
) -> dict[str, Any]:
    """Walk-forward tuning: for each ``splits[i]`` (market time, s, ascending) tune on every entry
    before it (an expanding window) and judge on the entries from it to the next split (the last
    fold: to the end), as :func:`tune` does for one fold. Returns ``{"folds": [tune's document
    per fold], "summary": per fold the tuned default's test mean R and its paired difference
    with the configured theta and each baseline}``. Raises ValueError for unsorted splits or a
    fold without training or test entries."""
    if sorted(splits) != list(splits) or len(set(splits)) != len(splits):
        raise ValueError("walk-forward splits must be strictly increasing")
    folds, summary = [], []
    for i, split in enumerate(splits):
        end = splits[i + 1] if i + 1 < len(splits) else float("inf")
        span = [x for x in entries if m.open_time[x.bar] < end]
        doc = tune(m, span, split, theta, fill, baselines, trials, seed, fields=fields)
        folds.append(doc)
        test = doc["test"]
        summary.append(
            {
                "train_until": split,
                "test_until": None if end == float("inf") else end,
                "n_test": doc["n_test"],
                "tuned_mean_r": test["policies"]["tuned"]["mean_r"],
                "tuned_mean_r_ci95": test["policies"]["tuned"]["mean_r_ci95"],
                "vs": {p: d for p, d in test["paired"].items()},
                "lines": doc["lines"],
            }
        )
    return {"folds": folds, "summary": summary}
