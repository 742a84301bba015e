"""``harvest replay``: the policy lab (:mod:`harvest.lab`) — a replay of exit policies over
real klines, ``--tune``, ``--fit-kill``, and ``--account`` (:mod:`harvest.ops.replay_account`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from harvest.ops.cli.common import json_safe

if TYPE_CHECKING:
    from harvest.domain.models import HarvestTheta
    from harvest.lab.engine import FillModel
    from harvest.lab.run import EntrySpec
    from harvest.ops.cli.common import Subparsers


def entry_spec(a: argparse.Namespace) -> EntrySpec:
    """The entries ``harvest replay``'s options name: ``--entries`` (a CSV) or ``--rule``,
    ``--every-minutes``, ``--n``, ``--seed``, ``--margin``, ``--leverage``, ``--start``,
    ``--end``. Raises ValueError for a ``--start``/``--end`` that is no time."""
    from harvest.lab.run import EntrySpec
    from harvest.ops.demo import parse_time

    return EntrySpec(
        entries_csv=a.entries,
        rule=a.rule,
        every_s=a.every_minutes * 60,
        n_random=a.n,
        seed=a.seed,
        margin=a.margin,
        leverage=a.leverage,
        start=parse_time(a.start) if a.start else None,
        end=parse_time(a.end) if a.end else None,
    )


def _replay_tune(a: argparse.Namespace, policies: list[str], theta: HarvestTheta, fill: FillModel) -> int:
    """``harvest replay --tune``: search theta on a training span, judge it on the later one
    (:mod:`harvest.lab.tune`; ``--folds`` > 1: walk-forward). 2 for unusable input."""

    from harvest.data import KlineFileError
    from harvest.lab.entries import EntriesError
    from harvest.lab.market import FundingFileError
    from harvest.lab.run import load_inputs
    from harvest.lab.tune import tune
    from harvest.ops.demo import parse_time

    baselines = [p for p in policies if p != "default"]
    fields = [x.strip() for x in a.tune_fields.split(",") if x.strip()] if a.tune_fields else None
    try:
        m, entries = load_inputs(a.data or [], theta, entry_spec(a))
        times = sorted(float(m.open_time[x.bar]) for x in entries)
        if a.folds > 1:  # walk-forward: the second half of the entries in `folds` test spans
            from harvest.lab.tune import walk_forward

            cuts = [times[int(len(times) * (0.5 + 0.5 * k / a.folds))] for k in range(a.folds)] if times else []
            wf = walk_forward(m, entries, cuts, theta, fill, baselines, a.trials, a.seed, fields=fields)
            if a.json:
                print(json.dumps(json_safe(wf), indent=2))
                return 0
            from datetime import datetime, timezone

            for f in wf["summary"]:
                when = datetime.fromtimestamp(f["train_until"], timezone.utc).strftime("%Y-%m-%d")
                lo, hi = f["tuned_mean_r_ci95"]
                vs = "  ".join(
                    f"{p} {d['mean_r_diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                    for p, d in f["vs"].items()
                )
                print(
                    f"fold from {when}: {f['n_test']} test entries, tuned default {f['tuned_mean_r']:+.3f} R "
                    f"[{lo:+.3f}, {hi:+.3f}]; others − tuned: {vs}"
                )
                print("  " + (" ".join(f["lines"]) or "(the configured theta won)"))
            return 0
        if a.split:
            split = parse_time(a.split)
        else:  # the first 70 % of the entries' span trains, the rest tests
            split = times[int(len(times) * 0.7)] if times else 0.0
        doc = tune(
            m,
            entries,
            split,
            theta,
            fill,
            baselines,
            a.trials,
            a.seed,
            progress=not a.json and sys.stderr.isatty(),
            fields=fields,
        )
    except (KlineFileError, FundingFileError, EntriesError, ValueError, FileNotFoundError) as e:
        print(f"harvest replay --tune: {e}", file=sys.stderr)
        return 2

    if a.json:
        print(json.dumps(json_safe(doc), indent=2))
        return 0
    from datetime import datetime, timezone

    from harvest.lab.report import table

    when = datetime.fromtimestamp(doc["split"], timezone.utc).strftime("%Y-%m-%d %H:%M")
    print(
        f"harvest replay --tune: {doc['trials']} trials on {doc['n_train']} training entries (before {when} UTC), "
        f"judged on {doc['n_test']} later entries"
    )
    for span in ("train", "test"):
        print(f"\n{span} span (paired differences against the tuned default):")
        print(table({"base": "tuned", **doc[span]}))
    print("\nto apply the tuned theta:")
    print("\n".join(doc["lines"]) or "(the configured theta won: nothing to change)")
    return 0


def _replay_fit_kill(a: argparse.Namespace, theta: HarvestTheta, fill: FillModel) -> int:
    """``harvest replay --fit-kill PATH``: fit the learned kill on the entries before ``--split``
    (default: the first 70 %), judge it on the later ones against every policy, write the model
    (:mod:`harvest.lab.kill_model`)."""
    from pathlib import Path

    from harvest.data import KlineFileError
    from harvest.lab.entries import EntriesError
    from harvest.lab.kill_model import fit_and_judge, fit_text
    from harvest.lab.market import FundingFileError
    from harvest.lab.run import load_inputs
    from harvest.ops.demo import parse_time

    try:
        m, entries = load_inputs(a.data or [], theta, entry_spec(a))
        times = sorted(float(m.open_time[x.bar]) for x in entries)
        split = parse_time(a.split) if a.split else times[int(len(times) * 0.7)]
        cmd = "harvest replay " + " ".join(sys.argv[2:])
        model, doc = fit_and_judge(m, entries, split, theta, fill, a.data or [], cmd)
        Path(a.fit_kill).write_text(json.dumps(json_safe(model.to_dict()), indent=1) + "\n")
    except (KlineFileError, FundingFileError, EntriesError, ValueError, OSError) as e:
        print(f"harvest replay --fit-kill: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(json_safe(doc), indent=2))
    else:
        print(fit_text(model, doc))
        print(f"model: {a.fit_kill} (HARVEST_KILL_MODEL={a.fit_kill} to load it)")
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    """``harvest replay``: the report (``--json``, ``--html``); ``--account``, ``--fit-kill`` and
    ``--tune`` apart; 2 for unusable input."""
    import time

    t0 = time.perf_counter()  # "in X s": the whole run, statistics and the report included
    from harvest.data import KlineFileError
    from harvest.lab.engine import POLICIES, STOP_SLIPPAGE, FillModel
    from harvest.lab.entries import EntriesError
    from harvest.lab.market import FundingFileError
    from harvest.lab.report import table, write_html
    from harvest.lab.run import run_replay
    from settings import load_settings

    policies = [x.strip() for x in a.policies.split(",") if x.strip()]
    unknown = [x for x in policies if x not in POLICIES]
    if unknown or not policies:
        print(f"harvest replay: unknown policy {unknown}: choose from {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    theta = load_settings().theta
    try:
        fill = FillModel(
            a.scan_delay,
            a.trailing_positive,
            a.trailing_offset,
            a.time_stop_hours * 3600,
            stop_slippage=(STOP_SLIPPAGE if a.slippage is None else a.slippage) if a.fill_model == "slippage" else 0.0,
            trail_r=a.trail_r,
            trail_offset_r=a.trail_offset_r,
        )
    except ValueError as e:
        print(f"harvest replay: {e}", file=sys.stderr)
        return 2

    if a.account:  # the desk's own positions, from the exchange (harvest.ops.replay_account)
        from harvest.ops.replay_account import run_cli

        return run_cli(a, policies, theta, fill)
    if a.fit_kill:
        return _replay_fit_kill(a, theta, fill)
    if a.tune:
        return _replay_tune(a, policies, theta, fill)
    try:
        doc, runs, m = run_replay(
            a.data or [],
            policies,
            theta,
            fill,
            entry_spec(a),
            progress=not a.json and sys.stderr.isatty(),
            both_fills=a.both_fills,
            t0=t0,
        )
    except (KlineFileError, FundingFileError, EntriesError, ValueError, FileNotFoundError) as e:
        print(f"harvest replay: {e}", file=sys.stderr)
        return 2
    if a.html:
        write_html(a.html, doc, runs, m)
    doc["run"]["seconds"] = time.perf_counter() - t0  # with the report written
    if a.json:
        print(json.dumps(json_safe(doc), indent=2))
    else:
        r = doc["run"]
        on = ", ".join(f"{s} ({n} bars)" for s, n in r["bars"].items())
        print(
            f"harvest replay: {r['n_entries']} entries on {on}, {r['kernel_evaluations']} kernel evaluations "
            f"in {r['seconds']:.1f} s"
        )
        print(table(doc))
        if a.html:
            print(f"report: {a.html}")
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``replay`` parser to ``sub``."""
    rp = sub.add_parser(
        "replay",
        help="replay exit policies over real klines with the live kernel and compare them (the policy lab)",
        description="Replays positions over real klines with harvest's batch kernel and baselines, on the same "
        "entries, and compares them. Fill model: decisions act at the open of the next bar after the scan delay; "
        "a triggered stop or take-profit fills at its price, or at the open of a bar that gapped beyond it, moved "
        "against the position by --slippage x the bar's range, never outside the bar (--fill-model slippage, the "
        "emulator's model; --fill-model trigger: no slippage), and the base policy is also reported under the "
        "other model; the stop first when one bar reaches both; closes rounded to stepSize with dust "
        "folded as the guard does; taker fee on every fill; funding at each funding time; liquidation when a bar "
        "reaches the liquidation price with no stop before it; what is open at the end closes at the last close.",
    )
    rp.add_argument(
        "--data",
        nargs="*",
        help="kline files (.csv, .csv.gz, or the archive's .zip holding one .csv; any interval), read in "
        "bounded memory; refused: more than 8 M rows, 2 GiB of CSV, or 200 times the compressed size. "
        "Default: the shipped data. Funding is read from a ../funding/ folder beside lab files",
    )
    rp.add_argument(
        "--policies",
        default="default,lsf_ladder,bracket,trailing,time,hold",
        help="comma-separated, the first is the base of the paired differences (default %(default)s)",
    )
    rp.add_argument("--entries", help="CSV of positions: symbol,side,entry_time,entry_price,qty,leverage[,stop]")
    rp.add_argument(
        "--rule", default="grid", choices=["grid", "random", "demo"], help="generated entries (default grid)"
    )
    rp.add_argument("--every-minutes", type=float, default=60.0, help="grid/demo spacing (default %(default)s)")
    rp.add_argument("--n", type=int, default=500, help="random entries per symbol (default %(default)s)")
    rp.add_argument("--seed", type=int, default=7)
    rp.add_argument("--margin", type=float, default=100.0, help="USDT of margin per generated entry (default 100)")
    rp.add_argument("--leverage", type=float, default=10.0, help="leverage of generated entries (default 10)")
    rp.add_argument("--start", help="first entry time (ISO-8601 UTC or Unix s)")
    rp.add_argument("--end", help="entries before this time")
    rp.add_argument("--scan-delay", type=float, default=0.0, help="s from a bar's close to the order (default 0)")
    rp.add_argument("--trailing-positive", type=float, default=0.01, help="trailing stop distance, fraction (0.01)")
    rp.add_argument("--trailing-offset", type=float, default=0.02, help="profit that arms it, fraction (0.02)")
    rp.add_argument(
        "--trail-r",
        type=float,
        help="the trailing baseline in R instead: its distance behind the best price, in R "
        "(replaces --trailing-positive/--trailing-offset)",
    )
    rp.add_argument(
        "--trail-offset-r", type=float, default=1.0, help="with --trail-r: the profit in R that arms it (1.0)"
    )
    rp.add_argument(
        "--fill-model",
        choices=["slippage", "trigger"],
        default="slippage",
        help="how triggered stops and take-profits fill: slippage (default, the emulator's Binance-like model: "
        "the trigger or the gapped open moved against the position by --slippage x the bar's range) or trigger "
        "(at the trigger or the gapped open)",
    )
    rp.add_argument(
        "--slippage",
        type=float,
        help="with --fill-model slippage: the fraction (0..1) of the bar's range a stop fills against the "
        "position (default 0.1)",
    )
    rp.add_argument(
        "--both-fills",
        action="store_true",
        help="report every policy under the other fill model too (a second table; default: the base policy only)",
    )
    rp.add_argument("--time-stop-hours", type=float, default=24.0, help="the time baseline's hold (24)")
    rp.add_argument(
        "--tune",
        action="store_true",
        help="search theta with Optuna on a training span, judge it "
        "on the later test span against the baselines, print the HARVEST_THETA__ lines",
    )
    rp.add_argument("--split", help="with --tune: the first test entry time (default: 70 %% of the entries train)")
    rp.add_argument("--trials", type=int, default=60, help="with --tune: Optuna trials (default %(default)s)")
    rp.add_argument(
        "--folds",
        type=int,
        default=1,
        help="with --tune: walk-forward folds over the second half of "
        "the entries, each trained on everything before it (default 1: one split)",
    )
    rp.add_argument(
        "--tune-fields",
        help="with --tune: the theta fields to search, comma-separated (default: all of harvest.lab.tune.SPACE)",
    )
    rp.add_argument(
        "--account",
        help="replay the positions this account really had (read from the exchange: fills, orders, its stops, "
        "funding; read-only, within the weight budget) and compare the desk with every policy",
    )
    rp.add_argument("--since", default="30d", help="with --account: how far back (30d, 12h; default %(default)s)")
    rp.add_argument("--symbols", help="with --account: the symbols to read (default: the account's HARVEST_SYMBOLS)")
    rp.add_argument("--interval", default="1m", help="with --account: the klines read from the exchange (1m)")
    rp.add_argument("--cache", help="with --account: the klines' day cache folder (default ~/.cache/harvest/klines)")
    rp.add_argument("--no-cache", action="store_true", help="with --account: read every kline from the exchange")
    rp.add_argument(
        "--fit-kill",
        metavar="PATH",
        help="fit the learned kill on the entries before --split (default: the first 70 %%), judge it on the "
        "later ones against every policy, write the model to PATH (harvest.lab.kill_model)",
    )
    rp.add_argument("--html", help="write the HTML report here")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    rp.set_defaults(fn=cmd_replay)
