"""``harvest trading``: show or switch the trading state of the deployment or one account."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from harvest.ops.cli.common import say, who

if TYPE_CHECKING:
    from harvest.ops.cli.common import Subparsers


def cmd_trading(a: argparse.Namespace) -> int:
    """``harvest trading``: switch the state (unless ``show``), then print the states; 2 for an unknown account."""
    from harvest.domain.trading import DEPLOYMENT, effective
    from harvest.services.runtime import get_runtime
    from harvest.store.trading import read, set_state

    rt = get_runtime()
    k = rt.plans.k
    if a.account is not None and a.account not in rt.accounts:  # a typo must not hold nothing
        say(f"unknown account {a.account!r}; configured: {', '.join(rt.accounts)}", file=sys.stderr)
        return 2
    if a.action != "show":
        state = {"halt": "HALTED", "reduce": "REDUCING", "resume": "ACTIVE", "shadow": "SHADOW"}[a.action]
        set_state(rt.r, k.trading, f"{rt.settings.namespace}:stream:trading", state, a.account, who(), a.reason)
    states = read(rt.r, k.trading)
    shown = [a.account] if a.account else rt.accounts
    accounts = {x: v for x, v in states.items() if x != DEPLOYMENT}
    in_force = {x: effective(states, x, rt.for_account(x).settings.mode) for x in shown}
    out = {"deployment": states.get(DEPLOYMENT, "ACTIVE"), "accounts": accounts, "in_force": in_force}
    if a.json:
        print(json.dumps(out))
    else:
        say(  # states and account names as read from Redis
            f"deployment: {out['deployment']}  "
            + "  ".join(f"account {x}: {v}" for x, v in accounts.items())
            + "  (in force: "
            + ", ".join(f"{x} {v}" for x, v in in_force.items())
            + ")"
        )
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``trading`` parser to ``sub``."""
    t = sub.add_parser(
        "trading",
        help="show or switch the trading state: halt (no order at all), reduce, shadow, "
        "resume; for the deployment or one account",
    )
    t.add_argument("action", nargs="?", default="show", choices=["show", "halt", "reduce", "resume", "shadow"])
    t.add_argument("--account", default=None, help="one account (default: the whole deployment)")
    t.add_argument("--reason", default="", help="why (recorded with who asked)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(fn=cmd_trading)
