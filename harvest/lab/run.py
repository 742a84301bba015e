"""One replay: load the market, make or read the entries, run each policy on the same entries,
summarize and pair them against the first policy (``harvest replay``)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np

from harvest.domain.models import HarvestTheta
from harvest.lab.engine import FillModel, Trades, simulate
from harvest.lab.entries import Entry, generate, read_entries
from harvest.lab.market import ReplayMarket, load_market
from harvest.lab.stats import paired, summarize


def run_replay(
    data: list[str],
    policies: list[str],
    theta: HarvestTheta,
    fill: FillModel,
    entries_csv: str | None = None,
    rule: str = "grid",
    every_s: float = 3600.0,
    n_random: int = 500,
    seed: int = 7,
    margin: float = 100.0,
    leverage: float = 10.0,
    start: float | None = None,
    end: float | None = None,
    record: int = 6,
    progress: bool = False,
    market: ReplayMarket | None = None,
) -> tuple[dict[str, Any], dict[str, Trades], ReplayMarket]:
    """Run ``policies`` (the first is the base of the paired differences) over the same
    entries. Returns ``(report document, trades per policy, market)``. Raises KlineFileError,
    EntriesError or ValueError on bad input (nothing is run then)."""
    t0 = time.perf_counter()
    m = market or load_market(data, theta)
    if entries_csv:
        entries: list[Entry] = read_entries(entries_csv, m, theta)
    else:
        entries = generate(m, theta, rule, every_s, n_random, seed, margin, leverage, start, end)
    if not entries:
        raise ValueError("no entries: the data is shorter than the market state's history, or the span is empty")
    loaded = time.perf_counter() - t0
    runs: dict[str, Trades] = {}
    it = policies
    if progress:
        from tqdm import tqdm

        it = tqdm(policies, desc="replay", unit="policy", leave=False)
    for p in it:
        runs[p] = simulate(m, entries, p, theta, fill, record=record)
    lev = np.array([x.leverage for x in entries])
    base = policies[0]
    evaluations = sum(t.evaluations for t in runs.values())
    seconds = time.perf_counter() - t0
    doc: dict[str, Any] = {
        "base": base,
        "policies": {p: summarize(t, lev) for p, t in runs.items()},
        "paired": {p: paired(t, runs[base]) for p, t in runs.items() if p != base},
        "run": {
            "data": {s: m.sources[s] for s in m.symbols},
            "bars": {s: m.count[s] for s in m.symbols},
            "interval_s": dict(zip(m.symbols, m.interval_s, strict=True)),
            "span": [float(m.open_time.min()), float(m.open_time.max())],
            "funding": m.has_funding,
            "entries": entries_csv
            or {
                "rule": rule,
                "every_s": every_s,
                "n": len(entries),
                "seed": seed,
                "margin_usdt": margin,
                "leverage": leverage,
            },
            "n_entries": len(entries),
            "fill_model": asdict(fill),
            "theta": theta.model_dump(),
            "kernel_evaluations": evaluations,
            "seconds": seconds,
            "seconds_loading": loaded,
        },
    }
    return doc, runs, m
