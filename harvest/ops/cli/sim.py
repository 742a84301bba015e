"""``harvest demo`` (the whole pipeline on the paper venue and real klines, a scorecard) and
``harvest emulator`` (the local Binance fapi emulator)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from harvest.ops.cli.common import basic_logging

if TYPE_CHECKING:
    from harvest.ops.cli.common import Subparsers


def cmd_demo(a: argparse.Namespace) -> int:
    """``harvest demo``: 0 when every plan of the run ended, else 1."""
    from harvest.ops.demo import run_demo

    card = run_demo(
        start=a.start,
        hours=a.hours,
        speed=a.speed,
        as_json=a.json,
        concurrency=a.concurrency,
        keep=a.keep,
        in_process=a.in_process,
        namespace=a.namespace,
        accounts=a.accounts,
    )
    return 0 if card["non_terminal"] == 0 else 1


def cmd_emulator(a: argparse.Namespace) -> int:
    """``harvest emulator``: serve until Ctrl-C (0); 2 without API key and secret."""

    from harvest.store.connect import redis_client
    from harvest.venues.sim.clock import MarketClock
    from harvest.venues.sim.emulator import Emulator
    from harvest.venues.sim.emulator_streams import StreamServer
    from settings import get_settings

    s = get_settings()
    if not (s.api_key and s.api_secret):
        print(
            "harvest emulator: set HARVEST_API_KEY and HARVEST_API_SECRET (any values; the workers use the same)",
            file=sys.stderr,
        )
        return 2
    basic_logging()
    r = redis_client(s.redis_url, decode_responses=True)
    clock = MarketClock(r, s.namespace, s.paper_replay_start, s.paper_replay_speed)
    emu = Emulator(
        r,
        s.namespace,
        s.account,
        s.api_key.get_secret_value(),
        s.api_secret.get_secret_value(),
        clock=clock,
        host=a.host,
        port=a.port,
        fee_rate=s.theta.taker_fee_rate,
    )
    if a.dual:
        emu.venue.set_dual(True)
    for spec in a.fault:
        endpoint, _, rest = spec.partition("=")
        kind, _, times = rest.partition(":")
        emu.faults.inject(endpoint, kind, int(times or 1))
    if a.skew_ms:
        emu.faults.set_skew(a.skew_ms)
    emu.streams = StreamServer(emu, host=a.host, port=a.stream_port).start()
    print(
        f"fapi emulator on {emu.url}, streams on {emu.stream_url} (namespace {s.namespace}, account {s.account}); "
        f"point workers and `harvest streams` at it with HARVEST_FAPI_URL={emu.url}",
        flush=True,
    )
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def register(sub: Subparsers) -> None:
    """Add the ``demo`` and ``emulator`` parsers to ``sub``."""
    from harvest.ops.demo import DEFAULT_START

    d = sub.add_parser("demo", help="run the whole pipeline on the paper venue and real klines, print a scorecard")
    d.add_argument(
        "--start", default=DEFAULT_START, help="market start, ISO-8601 UTC or Unix seconds (default %(default)s)"
    )
    d.add_argument("--hours", type=float, default=24.0, help="market hours to replay (default %(default)s)")
    d.add_argument(
        "--speed",
        type=float,
        default=1440.0,
        help="market seconds per wall second (default %(default)s: a market day per minute)",
    )
    d.add_argument("--concurrency", type=int, default=2, help="worker processes (default %(default)s)")
    d.add_argument("--keep", action="store_true", help="keep the demo's Redis keys afterwards")
    d.add_argument(
        "--accounts",
        type=int,
        default=3,
        help="accounts (1–8; default %(default)s: alpha and beta trading, gamma in shadow; with several, "
        "harvest streams feeds the scans)",
    )
    d.add_argument(
        "--namespace",
        help="Redis key and queue prefix (default demo-<random>); name one to watch the demo with "
        "`harvest console` or `harvest plans` (same HARVEST_REDIS_URL and HARVEST_NAMESPACE)",
    )
    d.add_argument("--json", action="store_true", help="print the scorecard as one JSON object")
    d.add_argument(
        "--in-process",
        action="store_true",
        help="workers call the paper engine directly instead of python-binance + the fapi emulator",
    )
    d.set_defaults(fn=cmd_demo)
    e = sub.add_parser(
        "emulator",
        help="serve the local Binance fapi emulator (paper engine, real data, faults)",
        epilog="Fills (the paper engine's model; docs/venues.md, harvest/venues/sim/paper_settlement.py): a "
        "STOP_MARKET triggers when the price its workingType names crosses it (MARK_PRICE: the mark, each "
        "1-minute bar's close; CONTRACT_PRICE: a bar's low/high) and fills as a MARKET order at the trigger "
        "price - or the bar's open when the bar gapped through it - moved against the position by "
        "slippage x the bar's range (default 0.1; never outside the bar); a bar fills at most "
        "participation x its volume (default 0.1), the rest on the next bars. Deterministic; set per "
        "namespace with PaperVenue.set_fill_model(slippage, participation). Ordinary MARKET orders fill at "
        "the mark. Openings are refused like Binance's: -4164 under MIN_NOTIONAL (reduce-only exempt), "
        "-2027 above the leverage bracket's cap, -2019 margin above the available balance (wallet "
        "100000 USDT by default).",
    )
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=8790)
    e.add_argument("--stream-port", type=int, default=8791, help="websocket streams (default %(default)s)")
    e.add_argument("--dual", action="store_true", help="start the account in hedge mode")
    e.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT=KIND[:TIMES]",
        help='inject a fault, e.g. "POST /fapi/v1/order=unknown_503_after_accept:3" (repeatable)',
    )
    e.add_argument("--skew-ms", type=int, default=0, help="run the server clock this many ms ahead (-1021 test)")
    e.set_defaults(fn=cmd_emulator)
