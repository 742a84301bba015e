"""``harvest schedule``: list or change the beat schedule at runtime (:mod:`harvest.services.schedule`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from harvest.ops.cli.common import say

if TYPE_CHECKING:
    from harvest.ops.cli.common import Subparsers


def cmd_schedule(a: argparse.Namespace) -> int:
    """``harvest schedule list|set|reset``: 2 for an unknown entry or a bad interval."""
    from harvest.services.schedule import list_schedule, reset_interval, set_interval
    from settings import get_settings
    from tasks.app import app

    s = get_settings()
    try:
        if a.action == "set":
            value = set_interval(app, s, a.name, a.seconds)
            print(f"{a.name}: every {value:g} s (expires {value:g} s); the running beat uses it from its next run")
            return 0
        if a.action == "reset":
            value = reset_interval(app, s, a.name)
            print(f"{a.name}: back to the settings value, every {value:g} s")
            return 0
    except ValueError as e:
        say(f"harvest schedule: {e}", file=sys.stderr)
        return 2
    rows = list_schedule(app, s)
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'entry':<14}{'task':<32}{'every (s)':>10}{'expires (s)':>12}  {'source':<9}{'next in (s)':>12}")
    for row in rows:
        nxt = "-" if row["next_run_in_s"] is None else f"{row['next_run_in_s']:.1f}"
        src = row["source"] + ("" if row["installed"] else "*")
        say(  # names and tasks as read back from beat's schedule in Redis
            f"{row['name']:<14}{row['task']:<32}{row['interval_s']:>10g}{row['expires_s'] or 0:>12g}  {src:<9}{nxt:>12}"
        )
    if not all(r["installed"] for r in rows):
        print("* not installed yet: beat has not started on this namespace")
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``schedule`` parser and its ``list``, ``set``, ``reset`` to ``sub``."""
    sc = sub.add_parser("schedule", help="list or change the beat schedule at runtime (no restart)")
    scs = sc.add_subparsers(dest="action")
    sl = scs.add_parser("list", help="every beat entry: interval, expires, next run")
    sl.add_argument("--json", action="store_true")
    ss = scs.add_parser("set", help="set an entry's interval (and expires) in seconds on the running beat")
    ss.add_argument("name", help="scan, market, reconcile, sweep, heartbeat or exchange_info")
    ss.add_argument("seconds", type=float)
    sr = scs.add_parser("reset", help="drop an entry's runtime override (back to its HARVEST_* setting)")
    sr.add_argument("name")
    sc.set_defaults(fn=cmd_schedule, action="list", json=False)
