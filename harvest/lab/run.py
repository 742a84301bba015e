"""One replay: load the market, make or read the entries, run each policy on the same entries,
summarize and pair them against the first policy (``harvest replay``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harvest.domain.models import HarvestTheta
from harvest.lab.engine import FillModel, Trades, simulate
from harvest.lab.entries import Entry, generate, read_entries
from harvest.lab.market import ReplayMarket, load_market
from harvest.lab.stats import paired, summarize


@dataclass(frozen=True)
class EntrySpec:
    """Which entries a replay runs (``harvest replay``'s entry options): the desk's positions
    from ``entries_csv`` (``symbol,side,entry_time,entry_price,qty,leverage[,stop]``,
    :func:`harvest.lab.entries.read_entries`) when given, else entries generated on every
    symbol by ``rule`` (:func:`harvest.lab.entries.generate`):

    * ``rule``: ``grid``, ``random`` or ``demo``;
    * ``every_s``: the grid/demo spacing, s;
    * ``n_random``: random entries per symbol;
    * ``seed``: the random rule's seed;
    * ``margin``: USDT of margin per entry; ``leverage``: each entry's leverage;
    * ``start``, ``end``: the span entries open in, market time (Unix s), None for the data's.

    The generation options are ignored with ``entries_csv``."""

    entries_csv: str | None = None
    rule: str = "grid"
    every_s: float = 3600.0
    n_random: int = 500
    seed: int = 7
    margin: float = 100.0
    leverage: float = 10.0
    start: float | None = None
    end: float | None = None

    def entries(self, m: ReplayMarket, theta: HarvestTheta) -> list[Entry]:
        """The entries on ``m``: read from the CSV or generated. Raises EntriesError (a bad
        CSV, an unknown rule)."""
        if self.entries_csv:
            return read_entries(self.entries_csv, m, theta)
        return generate(
            m,
            theta,
            self.rule,
            self.every_s,
            self.n_random,
            self.seed,
            self.margin,
            self.leverage,
            self.start,
            self.end,
        )


#: The entries of a replay given none: an hourly grid on every symbol, 100 USDT at 10x.
DEFAULT_ENTRIES = EntrySpec()


def load_inputs(
    data: list[str], theta: HarvestTheta, spec: EntrySpec = DEFAULT_ENTRIES
) -> tuple[ReplayMarket, list[Entry]]:
    """The market of ``data`` (the shipped data when empty) and the entries ``spec`` names on
    it. Raises KlineFileError, FundingFileError, EntriesError, or ValueError when there is no
    entry."""
    m = load_market(data, theta)
    entries = spec.entries(m, theta)
    if not entries:
        raise ValueError("no entries: the data is shorter than the market state's history, or the span is empty")
    return m, entries


def run_replay(
    data: list[str],
    policies: list[str],
    theta: HarvestTheta,
    fill: FillModel,
    spec: EntrySpec = DEFAULT_ENTRIES,
    *,
    record: int = 6,
    progress: bool = False,
    both_fills: bool = False,
    t0: float | None = None,
) -> tuple[dict[str, Any], dict[str, Trades], ReplayMarket]:
    """Run ``policies`` (the first is the base of the paired differences) over the same
    entries (``spec``). Returns ``(report document, trades per policy, market)``. Raises
    KlineFileError, EntriesError or ValueError on bad input (nothing is run then).

    The other fill model (``trigger`` when ``fill`` slips, else ``slippage``;
    :class:`harvest.lab.engine.FillModel`) is reported too, under ``doc["other_fill"]``: the
    base policy's summary and its paired difference ``this model − the other`` on the same
    entries, or, with ``both_fills``, every policy's summary and paired differences.

    ``doc["run"]["seconds"]``: wall seconds from ``t0`` (``time.perf_counter()``; default: this
    call's start) to the end of the statistics, loading, replays under both models and
    statistics included (``seconds_loading``, ``seconds_statistics`` apart); the CLI adds the
    report's writing."""
    t0 = time.perf_counter() if t0 is None else t0
    m, entries = load_inputs(data, theta, spec)
    loaded = time.perf_counter() - t0
    runs: dict[str, Trades] = {}
    it = policies
    if progress:
        from tqdm import tqdm

        it = tqdm(policies, desc="replay", unit="policy", leave=False)
    for p in it:
        runs[p] = simulate(m, entries, p, theta, fill, record=record)
    base = policies[0]
    other = fill.with_model("trigger" if fill.name == "slippage" else "slippage")
    other_runs = {p: simulate(m, entries, p, theta, other) for p in (policies if both_fills else [base])}
    lev = np.array([x.leverage for x in entries])
    evaluations = sum(t.evaluations for t in (*runs.values(), *other_runs.values()))
    t_stats = time.perf_counter()
    doc: dict[str, Any] = {
        "base": base,
        "policies": {p: summarize(t, lev) for p, t in runs.items()},
        "paired": {p: paired(t, runs[base]) for p, t in runs.items() if p != base},
        "other_fill": {
            "fill_model": other.name,
            "stop_slippage": other.stop_slippage,
            "base": base,
            "policies": {p: summarize(t, lev) for p, t in other_runs.items()},
            "paired": {p: paired(t, other_runs[base]) for p, t in other_runs.items() if p != base},
            # per entry: R under this run's fill model − R under the other, the base policy
            "base_this_minus_other": paired(runs[base], other_runs[base]),
        },
    }
    seconds = time.perf_counter() - t0
    doc["run"] = {
        "data": {s: m.sources[s] for s in m.symbols},
        "bars": {s: m.count[s] for s in m.symbols},
        "interval_s": dict(zip(m.symbols, m.interval_s, strict=True)),
        "span": [float(m.open_time.min()), float(m.open_time.max())],
        "funding": m.has_funding,
        # the symbols charged no funding for want of a funding file (said under the table)
        "no_funding": [s for s in m.symbols if not m.has_funding.get(s)],
        "entries": spec.entries_csv
        or {
            "rule": spec.rule,
            "every_s": spec.every_s,
            "n": len(entries),
            "seed": spec.seed,
            "margin_usdt": spec.margin,
            "leverage": spec.leverage,
        },
        "n_entries": len(entries),
        "fill_model": {"name": fill.name, **asdict(fill)},
        "theta": theta.model_dump(),
        "kernel_evaluations": evaluations,
        "seconds": seconds,
        "seconds_loading": loaded,
        "seconds_statistics": seconds - (t_stats - t0),
    }
    return doc, runs, m
