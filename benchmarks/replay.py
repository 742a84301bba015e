"""The replay's speed (issue 20): position-evaluations per second of ``harvest replay``'s
default policy end to end (load, market state, the batch kernel, the fill model), and, measured
in the same run on a sample of the very rows the replay evaluated, the single-position loop
(:func:`harvest.domain.kernel.compute_harvest_proposal` on models, one position at a time).

    python benchmarks/replay.py [--json out.json]

Work: a month of 1-minute klines of six symbols from the lab set (``../shared/data/lab``, the
2026-01-04 … 2026-02-06 files) with an entry every 5 minutes per side; without the lab set, the
shipped ten days of six symbols (said in the output). Targets: ≥ 1 000 000 evaluations/s end
to end, ≥ 20× the single-position loop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harvest.domain.kernel import compute_harvest_proposal  # noqa: E402
from harvest.domain.market import REGIMES  # noqa: E402
from harvest.domain.models import HarvestTheta, MarketState, Position, Side  # noqa: E402
from harvest.lab.engine import lab_policy, simulate  # noqa: E402
from harvest.lab.entries import generate  # noqa: E402
from harvest.lab.market import load_market  # noqa: E402

LAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "lab" / "klines"
MONTH = ["BCHUSDT", "SUIUSDT", "TONUSDT", "TRXUSDT", "XLMUSDT", "ZECUSDT"]


def _files() -> tuple[list[str], str]:
    files = [LAB / f"{s}-1m-2026-01-04_2026-02-06.csv.gz" for s in MONTH]
    if all(f.exists() for f in files):
        return [str(f) for f in files], "lab: 6 symbols × 1m, 2026-01-04 … 2026-02-06"
    return [], "shipped: 6 symbols × 1m, 2025-06-14 … 2025-06-24 (the lab set is absent)"


def _single(sample, theta: HarvestTheta, limit: int, decide=compute_harvest_proposal) -> tuple[int, float]:
    """Evaluate the sampled rows one position at a time, as models; (rows, seconds)."""
    work = []
    for b, now in sample:
        for j in range(b.qty.size):
            side = Side.LONG if b.side_sign[j] > 0 else Side.SHORT
            entry = None
            if b.has_entry[j]:
                entry = MarketState(
                    symbol="X",
                    ts_time=0.0,
                    sigma=float(b.entry_sigma[j]),
                    ts=float(b.entry_ts[j]),
                    p_trend=float(b.entry_p[j]),
                    regime=REGIMES[0] if b.entry_trend[j] else REGIMES[1],
                    trend_dir=int(b.entry_dir[j]),
                )
            work.append((j, b, float(now[j]), side, entry))
            if len(work) >= limit:
                break
        if len(work) >= limit:
            break
    t0 = time.perf_counter()
    for j, b, now, side, entry in work:
        pos = Position(
            symbol="X",
            side=side,
            qty=float(b.qty[j]),
            qty_at_open=float(b.qty_at_open[j]),
            entry_price=float(b.entry_price[j]),
            mark_price=float(b.mark_price[j]),
            leverage=10.0,
            initial_stop=float(b.initial_stop[j]),
            current_stop=float(b.stop[j]),
            opened_at=float(b.opened_at[j]),
            harvested_tier=int(b.harvested_tier[j]),
            funding_paid=float(b.funding_paid[j]),
            entry_state=entry,
            epoch="e",
        )
        m = MarketState(
            symbol="X",
            ts_time=now,
            sigma=float(b.now_sigma[j]),
            ts=float(b.now_ts[j]),
            p_trend=float(b.now_p[j]),
            regime=REGIMES[0] if b.now_trend[j] else REGIMES[1],
            trend_dir=int(b.now_dir[j]),
            regime_bars=int(b.now_bars[j]),
        )
        decide(pos, m, now, theta)
    return len(work), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every-minutes", type=float, default=5.0)
    ap.add_argument("--single-rows", type=int, default=20_000)
    ap.add_argument(
        "--policy",
        default="default",
        choices=("default", "learned_kill"),
        help="the replayed policy (learned_kill: the shipped learned kill on; its single loop is its decide)",
    )
    ap.add_argument("--json")
    a = ap.parse_args()
    theta = HarvestTheta()
    files, what = _files()
    t0 = time.perf_counter()
    m = load_market(files, theta)
    entries = generate(m, theta, "grid", every_s=a.every_minutes * 60)
    sample: list = []
    t1 = time.perf_counter()
    trades = simulate(m, entries, a.policy, theta, sample=sample, sample_rows=a.single_rows)
    t2 = time.perf_counter()
    decide = lab_policy(a.policy, theta).decide if a.policy != "default" else compute_harvest_proposal
    rows, single_s = _single(sample, theta, a.single_rows, decide)
    batch_rate = trades.evaluations / (t2 - t0)
    single_rate = rows / single_s
    out = {
        "data": what,
        "policy": a.policy,
        "entries": len(entries),
        "evaluations": trades.evaluations,
        "seconds_end_to_end": t2 - t0,
        "seconds_loading": t1 - t0,
        "evaluations_per_s": batch_rate,
        "single_loop_rows": rows,
        "single_loop_per_s": single_rate,
        "ratio": batch_rate / single_rate,
        "met": {"rate": batch_rate >= 1_000_000, "ratio": batch_rate / single_rate >= 20},
    }
    print(
        f"replay benchmark on {what}: {len(entries)} entries (every {a.every_minutes:g} min per side), "
        f"policy {a.policy}"
    )
    verdict = "met" if out["met"]["rate"] else "MISSED"
    print(
        f"  batch, end to end: {trades.evaluations} position-evaluations in {t2 - t0:.1f} s "
        f"(loading {t1 - t0:.1f} s) = {batch_rate / 1e6:.2f} M/s (target ≥ 1 M/s: {verdict})"
    )
    print(f"  single-position loop, the same rows ({rows}): {single_rate / 1e3:.1f} k/s")
    print(f"  ratio {out['ratio']:.0f}× (target ≥ 20×: {'met' if out['met']['ratio'] else 'MISSED'})")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0 if all(out["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
