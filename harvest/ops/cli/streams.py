"""``harvest streams``: the accounts' user data streams and the mark-price streams
(:func:`harvest.services.streams.run_streams`), a crossed trigger publishing its chain
(:func:`harvest.ops.triggers.chain_publisher`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from harvest.ops.cli.common import basic_logging

if TYPE_CHECKING:
    from harvest.ops.cli.common import Subparsers


def cmd_streams(a: argparse.Namespace) -> int:
    """``harvest streams``: hold the streams until SIGINT/SIGTERM (0); 2 for an unknown account."""

    from harvest.ops.triggers import chain_publisher
    from harvest.services.runtime import get_runtime
    from harvest.services.streams import run_streams

    basic_logging()
    rt = get_runtime()
    symbols = [x.strip().upper() for x in a.symbols.split(",") if x.strip()] if a.symbols else None
    accounts = [x.strip() for x in a.accounts.split(",") if x.strip()] if a.accounts else rt.accounts
    unknown = [x for x in accounts if x not in rt.accounts]
    if unknown:
        print(f"harvest streams: unknown account(s) {', '.join(unknown)}; configured: {', '.join(rt.accounts)}")
        return 2
    print(
        f"harvest streams: accounts {', '.join(accounts)} (namespace {rt.settings.namespace}); "
        f"caches in {rt.settings.namespace}:streams:<account>:*",
        flush=True,
    )
    fire = None if a.no_triggers else chain_publisher(rt)
    run_streams(rt, symbols, lease_s=a.lease_s, accounts=accounts, fire=fire)
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``streams`` parser to ``sub``."""
    st = sub.add_parser(
        "streams",
        help="hold the accounts' user data streams and the mark-price streams; keep the position caches in Redis",
    )
    st.add_argument("--symbols", help="comma-separated mark-price streams (default: the accounts' symbols)")
    st.add_argument(
        "--accounts",
        help="comma-separated accounts this process holds (default: every account; each under its own lease, "
        "so several processes can share them)",
    )
    st.add_argument(
        "--no-triggers",
        action="store_true",
        help="no event-driven exits: a mark crossing a position's trigger does not start its chain "
        "(the beat scan alone decides)",
    )
    st.add_argument(
        "--lease-s",
        type=float,
        default=10.0,
        help="the account's lease in Redis: another `harvest streams` takes a dead owner's account "
        "over within this many seconds (default %(default)s)",
    )
    st.set_defaults(fn=cmd_streams)
