"""``harvest demo``: the whole pipeline on the paper venue and the shipped real klines.

It starts (when ``HARVEST_REDIS_URL`` is not set) a private redis-server, the fapi emulator
(:mod:`harvest.venues.sim.emulator`, on a free loopback port, with throw-away API credentials), then a
real Celery worker and beat as child processes that reach the paper engine through
python-binance and the emulator — the code path of live trading (``--in-process`` skips the
emulator and lets the workers call the paper engine directly); opens a scenario of positions (six symbols, LONG and
SHORT, 5–50×, each with the exit ladder's protective stop) at real historical prices; replays
the klines at an accelerated speed (default: one market day per wall minute) while the beat
scans drive evaluate → propose → guard → execute → confirm; re-enters a symbol, as a strategy
would, some market hours after its position closed; then stops everything cleanly and prints
the scorecard (``--json``: one JSON object).

By default it runs three accounts (:data:`DEMO_ACCOUNTS`: ``alpha`` and ``beta`` trading,
``gamma`` in shadow — its plans end SHADOWED, nothing is sent for it), each with the scenario's
positions and its own API key at the emulator, and a ``harvest streams`` process that holds
their user data streams and the mark-price streams, so that scans read positions from the
stream cache instead of polling positionRisk; ``--accounts 1`` runs the single-account set-up.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone

import redis

from harvest.data import SHIPPED_SYMBOLS, load_klines
from harvest.domain.exit_ladder import compute_levels
from harvest.domain.market import market_state_at
from harvest.domain.models import Side
from harvest.ops.loadgen import start_emulator
from harvest.ops.procs import CeleryProcess, HarvestProcess, RedisServer, wait_for, worker
from harvest.ops.scorecard import build_scorecard, format_scorecard, queue_depths
from harvest.services.recovery import mark_recovered
from harvest.services.runtime import Runtime, build_runtime
from harvest.store.streams import StreamCache
from harvest.venues.base import VenueError
from settings import load_settings, mask_url, settings_from_env

#: The scenario: symbol → leverage (5–50×). Sides follow the last hour's trend at entry.
SCENARIO = {"BTCUSDT": 10, "ETHUSDT": 20, "SOLUSDT": 5, "BNBUSDT": 50, "XRPUSDT": 25, "DOGEUSDT": 40}
NOTIONAL_USDT = 10_000.0
#: The opening strategy's protective stop: the exit ladder with base_sl = 0.5 % (harvest's own
#: theta is untouched; 1R follows from this stop).
STRATEGY_BASE_SL = 0.005
REENTRY_AFTER_S = 2 * 3600.0
DEFAULT_START = "2025-06-21T00:00:00Z"
DEMO_WEIGHT_LIMIT_1M = 240_000
#: The demo's accounts (the first ``--accounts`` of them; the last of several is in shadow).
DEMO_ACCOUNTS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
#: The emulator's stream tick (wall s): mark prices and settlement that often. At 1440× a
#: second is 24 market minutes, so the demo ticks five times a second, and the scan takes a
#: cached mark up to DEMO_STREAMS_MAX_AGE_S old (about three ticks).
DEMO_STREAM_TICK_S = 0.2
DEMO_STREAMS_MAX_AGE_S = 0.6


def demo_accounts(n: int) -> list[dict]:
    """``HARVEST_ACCOUNTS`` of a demo with ``n`` accounts (1–8): the first ``n`` names of
    :data:`DEMO_ACCOUNTS`, the last in shadow when there are several. Raises SystemExit
    outside 1–8."""
    if not 1 <= n <= len(DEMO_ACCOUNTS):
        raise SystemExit(f"--accounts must be 1 to {len(DEMO_ACCOUNTS)}, not {n}")
    return [
        {"name": a, **({"mode": "shadow"} if n > 1 and i == n - 1 else {})} for i, a in enumerate(DEMO_ACCOUNTS[:n])
    ]


def parse_time(text: str) -> float:
    """ISO-8601 (``2025-06-21T00:00:00Z``) or Unix seconds → Unix seconds (UTC)."""
    try:
        return float(text)
    except ValueError:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")


def demo_banner(
    path: str,
    t_start: float,
    t_end: float,
    speed: float,
    redis_url: str | None,
    namespace: str,
    accounts: list[str] | None = None,
    shadow: list[str] | None = None,
) -> str:
    """The demo's first line: venue path, market window (Unix s, shown UTC), speed, the Redis it
    uses (``redis_url`` with its password and query tokens masked by :func:`settings.mask_url`;
    None: the demo's private server), namespace, and with several ``accounts`` which of them
    are in ``shadow``."""
    where = "private" if redis_url is None else mask_url(redis_url)
    return (
        f"harvest demo: paper venue ({path}), real klines {iso(t_start)} → {iso(t_end)} UTC at {speed:g}× "
        f"(Redis {where}, namespace {namespace}"
        + (f", accounts {', '.join(accounts)}; {', '.join(shadow or [])} in shadow" if accounts else "")
        + ")"
    )


def _open(rt: Runtime, symbol: str, leverage: int, t: float) -> None:
    """Open one scenario position at the replayed mark, side by the last hour's trend, with
    the exit ladder's stop at ``STRATEGY_BASE_SL`` (as the strategy that opens it would)."""
    kl = load_klines(symbol)
    m = market_state_at(kl, t, rt.settings.theta)
    side = Side.SHORT if m.trend_dir < 0 else Side.LONG
    price = kl.mark_at(t)
    ladder = rt.settings.theta.model_copy(update={"base_sl": STRATEGY_BASE_SL})
    stop = compute_levels(price, side, leverage, ladder, sigma=m.sigma).sl_price
    rt.venue.open_position(symbol, side, NOTIONAL_USDT / price, leverage, stop_price=stop)


def run_demo(
    start: str = DEFAULT_START,
    hours: float = 24.0,
    speed: float = 1440.0,
    as_json: bool = False,
    concurrency: int = 2,
    keep: bool = False,
    in_process: bool = False,
    namespace: str | None = None,
    accounts: int = 3,
    out=sys.stdout,
) -> dict:
    """Run the main job and return the scorecard (also printed). ``namespace``: the Redis key and
    queue prefix (default ``demo-<random>``; give one to watch the demo with ``harvest console``
    or ``harvest plans`` on the same ``HARVEST_REDIS_URL``); ``accounts``: how many accounts
    (:func:`demo_accounts`; with several and the emulator, ``harvest streams`` runs too). Raises
    SystemExit for an invalid namespace or account count, an unusable window or no Redis,
    AssertionError when a child process fails to start or drain in time."""
    t_start = parse_time(start)
    t_end = t_start + hours * 3600.0
    kl_end = min(load_klines(s).end for s in SCENARIO)
    if t_end > kl_end:
        raise SystemExit(f"the shipped data ends {iso(kl_end)}; shorten --hours or move --start")
    ns = namespace or "demo-" + uuid.uuid4().hex[:8]
    load_settings(namespace=ns)  # an invalid --namespace stops here, with the rule it breaks
    specs = demo_accounts(accounts) if accounts > 1 else []
    log = sys.stderr if as_json else out
    server = None
    url = os.environ.get("HARVEST_REDIS_URL")
    if not url:
        server = RedisServer()
        if not server.binary:
            raise SystemExit("no redis-server found: set HARVEST_REDIS_URL or run the README's set-up command")
        server.start()
        url = server.url
    env = {
        "HARVEST_REDIS_URL": url,
        "HARVEST_NAMESPACE": ns,
        "HARVEST_VENUE": "paper",
        "HARVEST_MODE": "live",
        "HARVEST_SCAN_INTERVAL_S": "0.25",
        "HARVEST_MARKET_REFRESH_S": "0.25",
        "HARVEST_SWEEP_INTERVAL_S": "2",
        "HARVEST_RECONCILE_INTERVAL_S": "5",
        "HARVEST_HEARTBEAT_INTERVAL_S": "1",
        "HARVEST_PLAN_TTL_S": "30",
        "HARVEST_MARKET_STALE_S": "3",
        "HARVEST_THROWAWAY_STATE": "true",
        "HARVEST_ATTEMPT_BACKOFF_S": "1",
        "HARVEST_ATTEMPT_BACKOFF_MAX_S": "10",
        "HARVEST_PAPER_REPLAY_START": repr(t_start),
        "HARVEST_PAPER_REPLAY_SPEED": "0",
    }
    env.pop("HARVEST_BROKER_URL", None)
    os.environ.pop("HARVEST_BROKER_URL", None)
    # The demo's own runtime is the strategy's side: it opens positions in the paper engines.
    if specs:
        env["HARVEST_ACCOUNTS"] = json.dumps(specs)
    settings = settings_from_env(env)
    rt = build_runtime(settings)
    emu = None
    streams = None
    if not in_process:
        # Market time runs SPEED× faster than on a real exchange, and so does the request rate:
        # the emulator's weight limit and harvest's budget are scaled up alike. Credentials (fresh,
        # one pair per account) reach the workers through their environment only, as in a deployment.
        emu = start_emulator(
            rt,
            env,
            streams=bool(specs),
            weight_limit_1m=DEMO_WEIGHT_LIMIT_1M,
            budget_1m=DEMO_WEIGHT_LIMIT_1M * 3 // 4,
            stream_tick_s=DEMO_STREAM_TICK_S,
        )
        if specs:
            env["HARVEST_STREAMS_MAX_AGE_S"] = repr(DEMO_STREAMS_MAX_AGE_S)
            streams = HarvestProcess("streams", env)
    path = f"python-binance → fapi emulator {emu.url}" if emu else "in-process paper engine"
    if streams is not None:
        path += ", positions from harvest streams"
    w = worker(env, ns, concurrency)
    b = CeleryProcess("beat", env)
    wall0 = time.time()
    try:
        shadow = [a["name"] for a in specs if a.get("mode") == "shadow"]
        print(
            demo_banner(
                path, t_start, t_end, speed, None if server else url, ns, rt.accounts if specs else None, shadow
            ),
            file=log,
            flush=True,
        )
        if namespace and specs:
            print(
                f"watch it: HARVEST_NAMESPACE={ns} HARVEST_ACCOUNTS='{json.dumps(specs)}' harvest console",
                file=log,
                flush=True,
            )
        assert rt.clock is not None, "the demo runs on the paper venue's market clock"
        rt.clock.set(t_start, 0.0, end=t_end)
        mark_recovered(rt.r, ns)  # fresh paper accounts: nothing to recover
        _seed_market(rt)
        closed_at: dict[tuple[str, str], float] = {}
        for a in rt.accounts:
            for sym, lev in SCENARIO.items():
                _open(rt.for_account(a), sym, lev, t_start)
        if streams is not None:
            streams.start()
            caches = [StreamCache(rt.r, ns, a) for a in rt.accounts]
            wait_for(lambda: all(c.trusted() for c in caches), 60, 0.1, "harvest streams to hold every account")
        w.start()
        w.wait_ready()
        b.start()
        b.wait_ready()
        rt.clock.set(t_start, speed, end=t_end)
        last_print = 0.0
        while True:
            now = rt.clock.now()
            n_open = 0
            for a in rt.accounts:
                ra = rt.for_account(a)
                open_syms = {p.symbol for p in ra.venue.positions()}
                n_open += len(open_syms)
                for sym, lev in SCENARIO.items():
                    if sym in open_syms:
                        closed_at.pop((a, sym), None)
                        continue
                    closed_at.setdefault((a, sym), now)
                    if now - closed_at[(a, sym)] >= REENTRY_AFTER_S and now < t_end - REENTRY_AFTER_S:
                        try:
                            _open(ra, sym, lev, now)
                            closed_at.pop((a, sym), None)
                        except VenueError:
                            pass
            if time.time() - last_print >= (0.5 if log.isatty() else 10.0) or now >= t_end:
                last_print = time.time()
                line = (
                    f"market {iso(now)}  {100 * (now - t_start) / (t_end - t_start):5.1f}%  "
                    f"open positions {n_open}  plans {rt.r.zcard(rt.plans.k.plan_index)}  "
                    f"in flight {rt.plans.count_open()}"
                )
                print(("\r" + line) if log.isatty() else line, end="" if log.isatty() else "\n", file=log, flush=True)
            if now >= t_end:
                break
            time.sleep(0.2)
        if log.isatty():
            print(file=log)
        b.stop()
        wait_for(
            lambda: rt.plans.count_open() == 0 and not any(queue_depths(rt).values()), 60, 0.1, "the pipeline to drain"
        )
        w.stop()
        if streams is not None:
            streams.stop()
        card = build_scorecard(rt)
        card["window"] = {
            "start": iso(t_start),
            "end": iso(t_end),
            "speed": speed,
            "wall_seconds": round(time.time() - wall0, 1),
        }
        card["venue_path"] = "emulator" if emu else "in-process"
        if emu is not None:
            card["emulator_order_requests"] = sum(
                1 for a in rt.accounts for x in emu.order_log(a) if x["kind"] == "HTTP"
            )
        if streams is not None:
            counters = rt.counters.read()
            card["positions_from_streams"] = counters.get("positions:streams", 0)
            card["orders_confirmed_from_streams"] = counters.get("confirm:from_stream", 0)
        del card["heartbeat_age_s"]
        if as_json:
            print(json.dumps(card, indent=2, sort_keys=True), file=out)
        else:
            print(format_scorecard(card), file=out)
        return card
    finally:
        b.stop()
        w.stop()
        if streams is not None:
            streams.stop()
        if emu is not None:
            emu.stop()
        if not keep:
            _cleanup(rt.r, ns)
        if server is not None:
            server.stop()


def _seed_market(rt: Runtime) -> None:
    assert rt.clock is not None, "the demo runs on the paper venue's market clock"
    now = rt.clock.now()
    rt.market.put_many(
        [market_state_at(load_klines(s), now, rt.settings.theta) for s in rt.settings.symbols if s in SHIPPED_SYMBOLS]
    )


def _cleanup(r: redis.Redis, ns: str) -> None:
    for pattern in (f"{ns}:*", f"{ns}.*"):
        keys = list(r.scan_iter(pattern, count=1000))
        if keys:
            r.delete(*keys)
