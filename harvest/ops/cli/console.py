"""``harvest console`` (the operator's page, :mod:`harvest.ops.console`) and ``harvest notify``
(notices through apprise, :mod:`harvest.ops.notify`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from harvest.ops.cli.common import basic_logging

if TYPE_CHECKING:
    from harvest.ops.cli.common import Subparsers


def cmd_notify(a: argparse.Namespace) -> int:
    """``harvest notify``: the notifier loop (``--once``: one pass) or ``--test``; 2 for bad settings."""

    from harvest.ops.notify import apprise_sender, run, send_test

    if not 0 < a.timeout <= 300:
        print("harvest notify: --timeout must be above 0 and at most 300 seconds", file=sys.stderr)
        return 2
    basic_logging()
    if a.test:  # the operator's probe: needs the URLs, not Redis
        from settings import get_settings

        urls = get_settings().notify_urls
    else:
        from harvest.services.runtime import get_runtime

        rt = get_runtime()
        urls = rt.settings.notify_urls
    if urls is None:
        print(
            "harvest notify: HARVEST_NOTIFY_URLS is not set (apprise URLs: tgram://, slack://, json://…)",
            file=sys.stderr,
        )
        return 2
    try:
        if a.test:
            ok, deliveries = send_test(urls.get_secret_value(), a.timeout)
        else:
            send = apprise_sender(urls.get_secret_value(), a.timeout)
    except ValueError as e:
        print(f"harvest notify: {e}", file=sys.stderr)
        return 2
    if a.test:  # each service masked by apprise: scheme and host part, no token
        for d in deliveries:
            if d.ok:
                print(f"harvest notify --test: {d.target}: delivered")
            else:
                print(f"harvest notify --test: {d.target}: NOT delivered ({d.reason})", file=sys.stderr)
        if not deliveries:
            print("harvest notify --test: NOT delivered (no service was notified)", file=sys.stderr)
        return 0 if ok else 1
    try:
        return run(rt, send, a.interval, once=a.once)
    except KeyboardInterrupt:
        return 0


def cmd_console(a: argparse.Namespace) -> int:
    """``harvest console``: serve the operator's page until Ctrl-C (0); 2 for a weak password."""
    from harvest.ops.console import password_problem, serve
    from harvest.services.runtime import get_runtime

    rt = get_runtime()
    pw = rt.settings.console_password.get_secret_value() if rt.settings.console_password else None
    if pw is not None and (why := password_problem(pw)):
        print(f"harvest console: HARVEST_CONSOLE_PASSWORD {why}: choose a longer one", file=sys.stderr)
        return 2
    print(f"harvest console: http://{a.host}:{a.port}/ ({'changes need the console password' if pw else 'read-only'})")
    try:
        serve(rt, a.host, a.port, pw, tuple(rt.settings.console_hosts))
    except KeyboardInterrupt:
        pass
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``console`` and ``notify`` parsers to ``sub``."""
    co = sub.add_parser(
        "console",
        help="serve the operator's page: positions, plans and their ledgers, the trading switch, queues, heartbeats",
    )
    co.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)")
    co.add_argument("--port", type=int, default=8710, help="port (default %(default)s)")
    co.set_defaults(fn=cmd_console)
    nt = sub.add_parser(
        "notify",
        help="send notices through apprise (HARVEST_NOTIFY_URLS): kill closes and fills, a position without a "
        "stop, a stale market state, the pipeline stopped, decisions abandoned, trading-state changes",
    )
    nt.add_argument("--interval", type=float, default=2.0, help="seconds between passes (default %(default)s)")
    nt.add_argument("--once", action="store_true", help="one pass, then exit")
    nt.add_argument(
        "--test",
        action="store_true",
        help="send one test notice to every URL now and say whether each service took it "
        "(exit 0: all delivered; 1: not, with the reason); needs no Redis, counts no failure",
    )
    nt.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds one notice may take to be sent to all services (default %(default)s)",
    )
    nt.set_defaults(fn=cmd_notify)
