"""``harvest chaos``: plans driven through real workers under injected faults
(:mod:`harvest.ops.chaos`), or across network namespaces with ``--hosts`` (:mod:`harvest.ops.hosts`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harvest.ops.cli.common import Subparsers


def cmd_chaos(a: argparse.Namespace) -> int:
    """``harvest chaos``: the report on stdout, progress on stderr; 0 ok, 1 not ok, 2 could not run."""
    from harvest.ops.chaos import format_report, run_chaos

    def say(m: str) -> None:  # progress on stderr; stdout carries only the report
        print(m, file=sys.stderr, flush=True)

    if a.hosts:
        from harvest.ops.hosts import format_hosts_report, run_hosts

        try:
            rep = run_hosts(plans=a.plans or 40, plan_ttl_s=a.plan_ttl, drain_timeout_s=a.drain_timeout, progress=say)
        except (RuntimeError, AssertionError) as e:
            print(f"harvest chaos --hosts: could not run: {e}", file=sys.stderr)
            return 2
        print(json.dumps(rep, indent=2) if a.json else format_hosts_report(rep))
        return 0 if rep["ok"] else 1
    try:
        rep = run_chaos(
            plans=a.plans or 200,
            broker=a.broker,
            waves=a.waves,
            drain_timeout_s=a.drain_timeout,
            plan_ttl_s=a.plan_ttl,
            progress=say,
            accounts=a.accounts,
            sentinel=a.sentinel,
        )
    except (RuntimeError, AssertionError) as e:
        print(f"harvest chaos: could not run: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep, indent=2) if a.json else format_report(rep))
    return 0 if rep["ok"] else 1


def register(sub: Subparsers) -> None:
    """Add the ``chaos`` parser to ``sub``."""
    from harvest.ops.chaos import PLAN_TTL_S as CHAOS_PLAN_TTL_S
    from harvest.ops.chaos import WAVES as CHAOS_WAVES

    c = sub.add_parser(
        "chaos",
        help="drive N plans through real workers, beat, Redis and the emulator while "
        "injecting crashes, restarts and exchange faults; report duplicates, lost plans, drain time",
    )
    c.add_argument(
        "--plans",
        type=int,
        default=None,
        help="positions made actionable, one plan or more each (default 200; 40 with --hosts)",
    )
    c.add_argument(
        "--broker",
        default=None,
        metavar="URL",
        help="Celery broker, e.g. amqp://guest:guest@127.0.0.1:5672// (default: the run's own Redis)",
    )
    c.add_argument(
        "--waves",
        type=int,
        default=len(CHAOS_WAVES),
        help="waves of positions, one fault kind each (default %(default)s: every kind once)",
    )
    c.add_argument(
        "--plan-ttl",
        type=float,
        default=CHAOS_PLAN_TTL_S,
        help="plan TTL of the run, s: a plan orphaned by a kill ends by the sweeper at it (default %(default)s)",
    )
    c.add_argument(
        "--drain-timeout", type=float, default=600.0, help="longest wait for quiescence, s (default %(default)s)"
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON (exit 1 when not ok)")
    c.add_argument(
        "--accounts",
        type=int,
        default=1,
        help="spread the positions over this many accounts, with harvest streams and stream faults when > 1 "
        "(default %(default)s)",
    )
    c.add_argument(
        "--sentinel",
        action="store_true",
        help="the state Redis as a primary, a replica and three Sentinels (redis+sentinel://); "
        "the restart waves become failovers",
    )
    c.add_argument(
        "--hosts",
        action="store_true",
        help="the deployment across Linux network namespaces (state/broker, exchange, scan, orders, beat, streams "
        "hosts on a bridge; needs root): the orders host partitioned from the state host 30 s, its link at "
        "50 ms ± 20 ms and 2 %% loss, the exchange unreachable 60 s, the orders host killed and restarted; "
        "the chaos report plus each fault's recovery time (harvest/ops/hosts.py)",
    )
    c.set_defaults(fn=cmd_chaos)
