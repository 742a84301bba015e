"""The learned kill's fit and its judgement (issue 35, items 2 and 3; docs/design.md §2.11).

**What is fitted.** The kill decision is optimal stopping: close now (the trade's R were it
closed at the mark now) or hold under the rest of the policy. At every scan of every replayed
position of the ``default`` policy *without a kill* (the shipped theta: its kill score cannot
reach its threshold, so no kill ever fires), :func:`record` keeps the state
(:data:`harvest.domain.kill_model.FEATURES`) and the *gain of holding*: the R the trade ended
with minus its R were it closed now, per unit still open (``× qty_at_open / qty``, the units of
``R_net``). :func:`fit` regresses the gain on the basis by ridge least squares (numpy; features
clipped to their 0.5/99.5 % training quantiles and standardized, the target winsorized at its
1/99 % quantiles, ridge ``alpha`` on the standardized coefficients).

This is the *one-step* variant of Longstaff–Schwartz, documented as such: the continuation value
is that of the policy without the kill, not re-estimated backward with the learned kill's own
later stops. It under-states the true continuation (holding also keeps the option to kill later),
so the margin, tuned on the training span only (:func:`tune_margin`), absorbs part of that bias.

**Folds** (scores in the model's provenance): walk-forward by time inside the training span (the
rows split by entry time into ``k`` blocks, each block predicted by a fit on the blocks before
it) and leave-one-symbol-out; the score is R² of the gain and the mean gain of the rows the
model would kill at margin 0.

**The judgement** (:func:`judge`): on entries the fit never saw, every policy on the same entries,
paired against the learned kill with the lab's block bootstrap (:mod:`harvest.lab.stats`), and,
for each kill exit, the counterfactual R of holding (the same entry under the policy without the
kill) and the mean R saved with its interval.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harvest.domain.kernel import BatchResult, PositionBatch
from harvest.domain.kill_model import PROVENANCE_FIELDS, KillModel, features
from harvest.domain.models import HarvestTheta
from harvest.lab.engine import FillModel, Trades, simulate
from harvest.lab.entries import Entry
from harvest.lab.market import ReplayMarket
from harvest.lab.stats import block_bootstrap_mean, paired, summarize

#: docs/design.md §2.3's first kill score (threshold 0.6, weights 1/0.5/0.5/0.3): the "first kill" row.
FIRST_KILL = {
    "kill_threshold": 0.6,
    "w_regime_flip": 1.0,
    "w_sigma_spike": 0.5,
    "w_ts_drop": 0.5,
    "w_age_penalty": 0.3,
}
#: Margins (R) :func:`tune_margin` tries on the training span.
MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class ScanSet:
    """Recorded scans, one row per (position, recorded scan): ``X`` (rows, len(FEATURES)) float64,
    ``y`` the gain of holding per unit open (R), ``gid`` the entry index, ``now`` (s),
    ``symbol`` (str), ``entry_time`` (s)."""

    X: np.ndarray
    y: np.ndarray
    gid: np.ndarray
    now: np.ndarray
    symbol: np.ndarray
    entry_time: np.ndarray


class _Recorder:
    """``on_scan`` of :func:`harvest.lab.engine.simulate`: every ``stride``-th scan step's
    features, value now and open fraction."""

    def __init__(self, theta: HarvestTheta, stride: int) -> None:
        self.theta, self.stride, self.calls = theta, max(1, stride), 0
        self.parts: list[tuple[np.ndarray, ...]] = []

    def __call__(
        self, gid: np.ndarray, b: PositionBatch, now: np.ndarray, res: BatchResult, value_now: np.ndarray
    ) -> None:
        self.calls += 1
        if (self.calls - 1) % self.stride:
            return
        f = np.column_stack(features(b, now, res.r_net, res.components, self.theta))
        self.parts.append((gid.copy(), f, value_now.copy(), b.qty / b.qty_at_open, np.asarray(now, dtype=float)))


def record(
    m: ReplayMarket, entries: list[Entry], theta: HarvestTheta, fill: FillModel, stride: int = 6
) -> tuple[ScanSet, Trades]:
    """Replay ``entries`` under ``default`` without a learned kill and record every ``stride``-th
    scan (module docstring). Returns the scans and the trades."""
    rec = _Recorder(theta, stride)
    t = simulate(m, entries, "default", theta, fill, on_scan=rec)
    if not rec.parts:
        raise ValueError("no scan recorded: too few bars after the entries")
    gid = np.concatenate([p[0] for p in rec.parts])
    X = np.vstack([p[1] for p in rec.parts])
    value_now = np.concatenate([p[2] for p in rec.parts])
    frac = np.concatenate([p[3] for p in rec.parts])
    now = np.concatenate([p[4] for p in rec.parts])
    y = (t.r[gid] - value_now) / frac
    return ScanSet(X, y, gid, now, t.symbol[gid], t.entry_time[gid]), t


@dataclass
class Fit:
    """A ridge fit in raw feature units: ``intercept``, ``coef``, ``lo``/``hi`` (clip ranges)."""

    intercept: float
    coef: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The predicted gain of rows ``X`` (rows, len(FEATURES)); the same sum, in the same
        order, as :func:`harvest.domain.kill_model.gain_batch`."""
        out = np.full(X.shape[0], self.intercept)
        for j in range(X.shape[1]):
            out = out + self.coef[j] * np.clip(X[:, j], self.lo[j], self.hi[j])
        return out


def fit(X: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> Fit:
    """Ridge least squares of ``y`` on ``X`` (module docstring); returns raw-unit coefficients.
    Raises ValueError with fewer rows than features + 1."""
    if X.shape[0] <= X.shape[1]:
        raise ValueError(f"fit: {X.shape[0]} rows for {X.shape[1]} features")
    lo, hi = np.quantile(X, 0.005, axis=0), np.quantile(X, 0.995, axis=0)
    Xc = np.clip(X, lo, hi)
    mu, sd = Xc.mean(axis=0), Xc.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (Xc - mu) / sd
    ylo, yhi = np.quantile(y, [0.01, 0.99])
    yc = np.clip(y, ylo, yhi)
    ym = yc.mean()
    A = Z.T @ Z + alpha * np.eye(Z.shape[1])
    beta = np.linalg.solve(A, Z.T @ (yc - ym))
    coef = beta / sd
    coef = np.where(X.std(axis=0) > 0, coef, 0.0)
    return Fit(float(ym - np.sum(coef * mu)), coef, lo, hi)


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    ylo, yhi = np.quantile(y, [0.01, 0.99])
    yc = np.clip(y, ylo, yhi)
    den = float(np.sum((yc - yc.mean()) ** 2))
    return 1.0 - float(np.sum((yc - p) ** 2)) / den if den > 0 else float("nan")


def _score(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    kill = p < 0
    return {
        "rows": int(y.size),
        "r2": _r2(y, p),
        "mean_gain": float(y.mean()),
        "killed_share": float(kill.mean()),
        "mean_gain_where_killed": float(y[kill].mean()) if kill.any() else float("nan"),
    }


def folds(s: ScanSet, k: int = 4, alpha: float = 1.0) -> dict[str, Any]:
    """Walk-forward by time (``k`` blocks by entry time; block i predicted by a fit on blocks < i)
    and leave-one-symbol-out scores (module docstring)."""
    order = np.argsort(s.entry_time, kind="stable")
    blocks = np.array_split(order, k)
    time_folds = []
    for i in range(1, k):
        tr = np.concatenate(blocks[:i])
        te = blocks[i]
        f = fit(s.X[tr], s.y[tr], alpha)
        time_folds.append(
            {
                "train_until": float(s.entry_time[tr].max()),
                "test": [float(s.entry_time[te].min()), float(s.entry_time[te].max())],
                **_score(s.y[te], f.predict(s.X[te])),
            }
        )
    sym_folds = []
    syms = sorted(set(s.symbol.tolist()))
    if len(syms) > 1:
        for sym in syms:
            te = s.symbol == sym
            f = fit(s.X[~te], s.y[~te], alpha)
            sym_folds.append({"left_out": sym, **_score(s.y[te], f.predict(s.X[te]))})
    return {"by_time": time_folds, "by_symbol": sym_folds}


def to_model(f: Fit, margin_r: float, provenance: dict[str, Any]) -> KillModel:
    """The fit as a :class:`KillModel` (checked by ``from_dict``, as a file would be)."""
    m = KillModel(
        intercept=f.intercept,
        coef=tuple(float(c) for c in f.coef),
        clip_lo=tuple(float(x) for x in f.lo),
        clip_hi=tuple(float(x) for x in f.hi),
        margin_r=float(margin_r),
        provenance=provenance,
    )
    return KillModel.from_dict(m.to_dict())


def tune_margin(
    m: ReplayMarket,
    entries: list[Entry],
    theta: HarvestTheta,
    fill: FillModel,
    f: Fit,
    margins: tuple[float, ...] = MARGINS,
) -> tuple[float, list[dict[str, float]]]:
    """The margin (R) with the best mean R of the learned kill on the *training* entries, and
    the table of every margin tried (mean R, kill exits). Ties: the larger margin (fewer kills)."""
    rows = []
    for mg in margins:
        km = to_model(f, mg, {k: "margin tuning" for k in PROVENANCE_FIELDS})
        t = simulate(m, entries, "default", theta, fill, kill_model=km)
        rows.append(
            {"margin_r": mg, "mean_r": float(t.r.mean()), "kills": int(np.sum(t.exit_reason == "learned_kill"))}
        )
    best = max(rows, key=lambda r: (round(r["mean_r"], 6), r["margin_r"]))
    return float(best["margin_r"]), rows


def git_commit() -> str:
    """The checkout's HEAD commit, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sha256_of(paths: list[str]) -> dict[str, str]:
    """``file name → sha256`` of each data file (the model's data provenance)."""
    out = {}
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[Path(p).name] = h.hexdigest()
    return out


def fit_kill(
    m: ReplayMarket,
    entries: list[Entry],
    theta: HarvestTheta,
    fill: FillModel,
    data: list[str],
    command: str,
    stride: int = 6,
    alpha: float = 1.0,
    k: int = 4,
) -> tuple[KillModel, dict[str, Any]]:
    """Record, score the folds, fit on every training row, tune the margin on the training
    entries, and return the model with its provenance (``harvest replay --fit-kill``) and a
    report (rows, folds, margins, seconds)."""
    t0 = time.perf_counter()
    s, _ = record(m, entries, theta, fill, stride)
    fo = folds(s, k, alpha)
    f = fit(s.X, s.y, alpha)
    margin, table = tune_margin(m, entries, theta, fill, f)
    spans = {
        sym: [
            datetime.fromtimestamp(float(s.entry_time[s.symbol == sym].min()), timezone.utc).isoformat(),
            datetime.fromtimestamp(float(s.entry_time[s.symbol == sym].max()), timezone.utc).isoformat(),
        ]
        for sym in sorted(set(s.symbol.tolist()))
    }
    prov = {
        "symbols": sorted(spans),
        "spans": spans,
        "folds": fo,
        "scores": {"in_sample": _score(s.y, f.predict(s.X)), "margins": table, "margin_r": margin},
        "git_commit": git_commit(),
        "data_sha256": sha256_of(data) if data and data != ["shipped"] else {"shipped": "harvest/data"},
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": "one-step Longstaff-Schwartz (harvest.lab.kill_model): ridge alpha "
        f"{alpha} of the gain of holding under default without kill; every {stride}th scan; "
        f"{len(entries)} entries, {s.y.size} rows",
        "fill_model": fill.name,
    }
    model = to_model(f, margin, prov)
    return model, {"rows": int(s.y.size), "seconds": time.perf_counter() - t0, **prov}


def judge(
    m: ReplayMarket,
    entries: list[Entry],
    theta: HarvestTheta,
    fill: FillModel,
    model: KillModel,
    baselines: tuple[str, ...] = ("bracket", "trailing", "time", "hold", "lsf_ladder"),
) -> dict[str, Any]:
    """Every policy on the same (held-out) entries, paired against ``learned`` (module
    docstring): ``policies`` (summaries), ``paired`` (policy − learned), ``kill_exits``
    (count, mean R saved = R(learned) − R(no kill) on the entries the learned kill closed, its
    interval, the counterfactual mean R of holding)."""
    first = theta.model_copy(update=FIRST_KILL)
    runs: dict[str, Trades] = {
        "learned": simulate(m, entries, "default", theta, fill, kill_model=model),
        "no_kill": simulate(m, entries, "default", theta, fill),
        "first_kill": simulate(m, entries, "default", first, fill),
    }
    for p in baselines:
        runs[p] = simulate(m, entries, p, theta, fill)
    for name, t in runs.items():
        t.policy = name
    lev = np.array([x.leverage for x in entries])
    learned, hold = runs["learned"], runs["no_kill"]
    killed = learned.exit_reason == "learned_kill"
    order = np.argsort(learned.entry_time[killed], kind="stable")
    saved = (learned.r[killed] - hold.r[killed])[order]
    mean, lo, hi = block_bootstrap_mean(saved)
    return {
        "n_entries": len(entries),
        "policies": {p: summarize(t, lev) for p, t in runs.items()},
        "paired": {p: paired(t, learned) for p, t in runs.items() if p != "learned"},
        "kill_exits": {
            "count": int(killed.sum()),
            "mean_r_killed": float(learned.r[killed].mean()) if killed.any() else float("nan"),
            "mean_r_if_held": float(hold.r[killed].mean()) if killed.any() else float("nan"),
            "mean_r_saved": mean,
            "ci95": [lo, hi],
        },
    }


def fit_and_judge(
    m: ReplayMarket,
    entries: list[Entry],
    split: float,
    theta: HarvestTheta,
    fill: FillModel,
    data: list[str],
    command: str,
) -> tuple[KillModel, dict[str, Any]]:
    """``harvest replay --fit-kill``: fit on the entries opening before ``split`` (market time,
    s), judge on the later ones (:func:`judge`). Returns the model and ``{"fit": …, "test":
    …}``. Raises ValueError when either side of the split has no entry."""
    train = [x for x in entries if float(m.open_time[x.bar]) < split]
    test = [x for x in entries if float(m.open_time[x.bar]) >= split]
    if not train or not test:
        raise ValueError(f"--fit-kill: {len(train)} entries before the split and {len(test)} after: need both")
    model, rep = fit_kill(m, train, theta, fill, data, command)
    doc = judge(m, test, theta, fill, model)
    return model, {"fit": rep, "test": doc, "split": split}


def fit_text(model: KillModel, doc: dict[str, Any]) -> str:
    """What ``harvest replay --fit-kill`` prints: the fit, its folds and margins, the held-out table."""
    rep = doc["fit"]
    out = [
        f"fit: {rep['rows']} scan rows of the entries before the split, {rep['seconds']:.1f} s; "
        f"margin {model.margin_r} R (tuned on the training entries)"
    ]
    for f in rep["folds"]["by_time"] + rep["folds"]["by_symbol"]:
        out.append(
            f"  fold {f.get('left_out', 'by time')}: R² {f['r2']:+.3f}, rows {f['rows']}, "
            f"mean gain where it would kill {f['mean_gain_where_killed']:+.3f} R"
        )
    out.append(f"held out ({doc['test']['n_entries']} entries after the split), paired against the learned kill:")
    out.append(_table(doc["test"]))
    return "\n".join(out)


def _table(doc: dict[str, Any]) -> str:
    """The judgement as a text table (policy, mean R [CI], Δ vs learned [CI], exits)."""
    lines = [f"{'policy':<11} {'trades':>6} {'mean R [95% CI]':>26}  {'Δ mean R = policy − learned [95% CI]':>38}"]
    for p, sm in doc["policies"].items():
        lo, hi = sm["mean_r_ci95"]
        d = doc["paired"].get(p)
        dd = f"{d['mean_r_diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
        lines.append(f"{p:<11} {sm['trades']:>6} {sm['mean_r']:>8.3f} [{lo:+.3f}, {hi:+.3f}]  {dd:>38}")
    k = doc["kill_exits"]
    lines.append(
        f"kill exits: {k['count']}; mean R at the kill {k['mean_r_killed']:.3f}, if held {k['mean_r_if_held']:.3f}; "
        f"saved {k['mean_r_saved']:+.3f} R [{k['ci95'][0]:+.3f}, {k['ci95'][1]:+.3f}]"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m harvest.lab.kill_model``: fit on ``--train`` files (entries before
    ``--train-end``), judge on each ``--test`` set (entries from ``--test-start``), print the
    tables, write the model (``--out``) and the whole document (``--json``)."""
    import argparse
    import json
    import shlex
    import sys

    from harvest.lab.entries import generate
    from harvest.lab.market import load_market

    ap = argparse.ArgumentParser(prog="python -m harvest.lab.kill_model", description=main.__doc__)
    ap.add_argument("--train", nargs="+", help="kline files of the training symbols")
    ap.add_argument("--train-start", default=None, help="entries from (ISO date, UTC)")
    ap.add_argument("--train-end", help="entries before (ISO date, UTC)")
    ap.add_argument("--model", help="judge this model file (e.g. harvest/data/kill_model.json) instead of fitting one")
    ap.add_argument("--fill-model", default="slippage", choices=("slippage", "trigger"), help="(default slippage)")
    ap.add_argument("--test", nargs="+", action="append", default=[], help="kline files of one test set (repeat)")
    ap.add_argument("--test-start", required=True, help="test entries from (ISO date, UTC)")
    ap.add_argument("--every", type=float, default=4.0, help="hours between grid entries per symbol (both sides)")
    ap.add_argument("--leverage", type=float, default=10.0)
    ap.add_argument("--stride", type=int, default=6, help="record every Nth scan step")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--out", default=None, help="write the model JSON here")
    ap.add_argument("--json", default=None, help="write the fit and the judgement here")
    a = ap.parse_args(argv)
    if not a.model and not (a.train and a.train_end):
        ap.error("--train and --train-end, or --model")

    def ts(x: str | None) -> float | None:
        return None if x is None else datetime.fromisoformat(x).replace(tzinfo=timezone.utc).timestamp()

    theta, fill = HarvestTheta(), FillModel().with_model(a.fill_model)
    cmd = "python -m harvest.lab.kill_model " + shlex.join(sys.argv[1:] if argv is None else argv)
    if a.model:
        from harvest.data.kill_model import load_kill_model_doc

        model, rep = KillModel.from_dict(load_kill_model_doc(a.model)), {"model": a.model}
    else:
        m = load_market(a.train, theta)
        entries = generate(
            m, theta, "grid", a.every * 3600, leverage=a.leverage, start=ts(a.train_start), end=ts(a.train_end)
        )
        model, rep = fit_kill(m, entries, theta, fill, a.train, cmd, a.stride, a.alpha)
        print(
            f"fit: {len(entries)} training entries, {rep['rows']} scan rows, "
            f"{rep['seconds']:.1f} s; margin {model.margin_r} R"
        )
        for f in rep["folds"]["by_time"] + rep["folds"]["by_symbol"]:
            print("  fold", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()})
        for r in rep["scores"]["margins"]:
            print("  margin", r)
    out: dict[str, Any] = {"fit": rep, "model": model.to_dict(), "fill_model": fill.name, "tests": []}
    for files in a.test:
        tm = load_market(files, theta)
        te = generate(tm, theta, "grid", a.every * 3600, leverage=a.leverage, start=ts(a.test_start))
        t1 = time.perf_counter()
        doc = judge(tm, te, theta, fill, model)
        doc["files"] = [Path(x).name for x in files]
        doc["seconds"] = time.perf_counter() - t1
        print(f"\ntest {', '.join(doc['files'])} from {a.test_start}: {len(te)} entries ({doc['seconds']:.0f} s)")
        print(_table(doc))
        out["tests"].append(doc)
    if a.out:
        Path(a.out).write_text(json.dumps(model.to_dict(), indent=1) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
