"""``harvest metrics``: the Prometheus exporter of the namespace's live state
(:mod:`harvest.ops.metrics`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from harvest.ops.cli.common import basic_logging

if TYPE_CHECKING:
    from harvest.ops.cli.common import Subparsers


def cmd_metrics(a: argparse.Namespace) -> int:
    """``harvest metrics``: serve /metrics until Ctrl-C, or print it once (``--once``); 2 for bad limits."""

    from prometheus_client import CollectorRegistry, generate_latest

    from harvest.ops.metrics import HarvestCollector, serve_metrics
    from harvest.ops.scorecard import queue_depths
    from harvest.services.runtime import get_runtime

    if a.max_connections < 1 or not 0 < a.read_timeout <= 300:
        print(
            "harvest metrics: --max-connections must be 1 or more, --read-timeout above 0 and at most 300 s",
            file=sys.stderr,
        )
        return 2
    rt = get_runtime()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HarvestCollector(rt, lambda: {rt.settings.queue(k): n for k, n in queue_depths(rt).items()}))
    if a.once:
        sys.stdout.write(generate_latest(registry).decode())
        return 0
    basic_logging()
    auth = rt.settings.metrics_basic_auth
    server = serve_metrics(
        registry,
        a.host,
        a.port,
        auth.get_secret_value() if auth else None,
        max_connections=a.max_connections,
        read_timeout_s=a.read_timeout,
    )
    print(
        f"harvest metrics for namespace {rt.settings.namespace} on http://{a.host}:{a.port}/metrics"
        + (" (basic auth)" if auth else ""),
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``metrics`` parser to ``sub``."""
    m = sub.add_parser("metrics", help="serve Prometheus metrics of the namespace's live state (/metrics)")
    m.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default %(default)s; a scraper on "
        "another host needs 0.0.0.0 and HARVEST_METRICS_BASIC_AUTH)",
    )
    m.add_argument("--port", type=int, default=9808)
    m.add_argument("--once", action="store_true", help="print the exposition once to stdout and exit")
    m.add_argument(
        "--max-connections",
        type=int,
        default=16,
        help="connections served at once; more wait briefly, then are closed (default %(default)s)",
    )
    m.add_argument(
        "--read-timeout",
        type=float,
        default=5.0,
        help="seconds a connection may stay silent before it is dropped (default %(default)s)",
    )
    m.set_defaults(fn=cmd_metrics)
