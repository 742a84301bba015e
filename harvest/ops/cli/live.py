"""``harvest scorecard`` and ``harvest reconcile``: the live state read, or reconciled with the
venue, once."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from harvest.ops.cli.common import say

if TYPE_CHECKING:
    from harvest.ops.cli.common import Subparsers


def cmd_scorecard(a: argparse.Namespace) -> int:
    """``harvest scorecard``: the scorecard of the live state (``--json``: the document)."""
    from harvest.ops.scorecard import build_scorecard, format_scorecard
    from harvest.services.runtime import get_runtime

    card = build_scorecard(get_runtime())
    if a.json:
        print(json.dumps(card, indent=2, sort_keys=True))
    else:  # account names, reasons and error texts in it come from Redis
        say(format_scorecard(card), multiline=True)
    return 0


def cmd_reconcile(a: argparse.Namespace) -> int:
    """``harvest reconcile``: one reconcile pass, its counts on one line (``--json``); 1 when the venue fails."""
    import tasks.app  # noqa: F401  (the Celery app a resend is published on)
    from harvest.services.reconcile import reconcile_once
    from harvest.services.runtime import get_runtime
    from harvest.venues.base import VenueError
    from workflows import start_resend

    try:
        out = reconcile_once(get_runtime(), resend=start_resend)
    except VenueError as e:  # the exchange's message, escaped
        say(f"harvest reconcile: venue unavailable ({e}); nothing changed", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(out))
    else:
        say("  ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``scorecard`` and ``reconcile`` parsers to ``sub``."""
    s = sub.add_parser("scorecard", help="the harvest scorecard from live state (HARVEST_* settings)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_scorecard)
    r = sub.add_parser(
        "reconcile",
        help="reconcile local state with the venue once: ghosts, plans of positions closed outside, "
        "unknown hv- orders, stuck plans",
    )
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=cmd_reconcile)
