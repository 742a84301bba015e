"""The ``harvest`` command line (``harvest.ops.cli:main``, also ``python -m harvest.ops.cli``).

One module per command group, each with the commands' code and a ``register(subparsers)``
that builds their parsers beside it; :func:`main` registers them in :data:`GROUPS`' order
(the order ``harvest --help`` lists the commands in) and turns a failure into one line
(:mod:`harvest.ops.cli.errors`):

* :mod:`~harvest.ops.cli.sim` — ``demo``, ``emulator`` (the paper world)
* :mod:`~harvest.ops.cli.live` — ``scorecard``, ``reconcile`` (the live state, once)
* :mod:`~harvest.ops.cli.chaos` — ``chaos`` (also ``--hosts``)
* :mod:`~harvest.ops.cli.streams` — ``streams``
* :mod:`~harvest.ops.cli.metrics` — ``metrics``
* :mod:`~harvest.ops.cli.trading` — ``trading``
* :mod:`~harvest.ops.cli.plans` — ``plans``, ``plan``
* :mod:`~harvest.ops.cli.replay` — ``replay`` (the policy lab)
* :mod:`~harvest.ops.cli.console` — ``console``, ``notify`` (the operator's page and notices)
* :mod:`~harvest.ops.cli.schedule` — ``schedule``"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from harvest.ops.cli import chaos, console, live, metrics, plans, replay, schedule, sim, streams, trading
from harvest.ops.cli.common import say
from harvest.ops.cli.errors import debug_from_env, explain_failure
from harvest.ops.term import term_safe

__all__ = ["GROUPS", "explain_failure", "main", "term_safe"]

#: The command modules, in the order ``harvest --help`` lists their commands.
GROUPS = (sim, live, chaos, streams, metrics, trading, plans, replay, console, schedule)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``harvest`` console script: parse ``argv`` and run the command.

    Returns the command's exit status. A failure ends as one line on stderr naming what
    failed and how to fix it (:func:`explain_failure`), status 2 for invalid settings or
    usage and 1 at run time, never a traceback; ``--debug`` (before the command, or
    ``HARVEST_DEBUG=1``) lets the exception through with its traceback instead."""
    from harvest.ops.version import VersionAction

    p = argparse.ArgumentParser(prog="harvest", description="Exit-management engine for Binance USD-M futures.")
    p.add_argument("--version", action=VersionAction, help="print the installed release (and its commit) and exit")
    p.add_argument(
        "--debug",
        action="store_true",
        default=debug_from_env(),
        help="on a failure, show the traceback instead of one line (also HARVEST_DEBUG=1)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in GROUPS:
        group.register(sub)
    for name, sp in sub.choices.items():  # `harvest plans --debug` as well as `harvest --debug plans`
        if name != "schedule":  # (its own subcommands parse the rest: `harvest --debug schedule …`)
            sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = a.fn  # the command's cmd_* function
    if a.debug:
        return run(a)
    try:
        return run(a)
    except BrokenPipeError:  # `harvest plans | head`: the reader left; nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (Exception, KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and not isinstance(e.code, str):
            raise  # an exit with a status (argparse's, a command's sys.exit(n)): as it is
        line, status = explain_failure(e, a.cmd, a)
        say(line, file=sys.stderr)
        return status
