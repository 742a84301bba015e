"""The ``harvest`` command line: ``demo``, ``scorecard``, ``reconcile`` (each with --help)."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_demo(a: argparse.Namespace) -> int:
    from harvest.demo import run_demo

    card = run_demo(start=a.start, hours=a.hours, speed=a.speed, as_json=a.json, concurrency=a.concurrency, keep=a.keep)
    return 0 if card["non_terminal"] == 0 else 1


def _cmd_scorecard(a: argparse.Namespace) -> int:
    from harvest.runtime import get_runtime
    from harvest.scorecard import build_scorecard, format_scorecard

    card = build_scorecard(get_runtime())
    print(json.dumps(card, indent=2, sort_keys=True) if a.json else format_scorecard(card))
    return 0


def _cmd_reconcile(a: argparse.Namespace) -> int:
    from harvest.runtime import get_runtime
    from tasks.evaluate import load_positions

    rt = get_runtime()
    before = rt.plans.counters().get("reconcile:ghost_dropped", 0)
    pairs, now = load_positions(rt)
    out = {"positions": len(pairs), "ghosts_dropped": rt.plans.counters().get("reconcile:ghost_dropped", 0) - before,
           "open_plans": rt.plans.count_open()}
    print(json.dumps(out) if a.json else "  ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``harvest`` console script."""
    from harvest.demo import DEFAULT_START

    p = argparse.ArgumentParser(prog="harvest", description="Exit-management engine for Binance USD-M futures.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the whole pipeline on the paper venue and real klines, print a scorecard")
    d.add_argument("--start", default=DEFAULT_START, help="market start, ISO-8601 UTC or Unix seconds (default %(default)s)")
    d.add_argument("--hours", type=float, default=24.0, help="market hours to replay (default %(default)s)")
    d.add_argument("--speed", type=float, default=1440.0,
                   help="market seconds per wall second (default %(default)s: a market day per minute)")
    d.add_argument("--concurrency", type=int, default=2, help="worker processes (default %(default)s)")
    d.add_argument("--keep", action="store_true", help="keep the demo's Redis keys afterwards")
    d.add_argument("--json", action="store_true", help="print the scorecard as one JSON object")
    d.set_defaults(fn=_cmd_demo)
    s = sub.add_parser("scorecard", help="the harvest scorecard from live state (HARVEST_* settings)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_scorecard)
    r = sub.add_parser("reconcile", help="reconcile the book with the venue once (drops ghosts)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=_cmd_reconcile)
    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
