"""Synthetic load on a namespace: many paper positions at a chosen R-multiple (synthetic
listings that trade like the shipped symbols), the namespace's environment, the fapi
emulator on it, and workers on its queues. Used by the benchmarks and ``harvest chaos``.
"""

from __future__ import annotations

import uuid

from harvest.data import SHIPPED_SYMBOLS
from harvest.ops.procs import CeleryProcess

#: Market time of every load run (the paper clock stands still: replay speed 0).
T0 = 1750464000.0


def symbols(n: int, prefix: str = "B") -> list[str]:
    """n synthetic symbols (the paper engine lists each like one of the shipped six)."""
    return [f"{prefix}{i:05d}USDT" for i in range(n)]


def env_for(url: str, ns: str, syms: list[str], **extra: str) -> dict[str, str]:
    """HARVEST_* environment of a load namespace (paper venue, clock at T0); ``extra``
    overrides or adds variables."""
    return {
        "HARVEST_REDIS_URL": url,
        "HARVEST_NAMESPACE": ns,
        "HARVEST_SYMBOLS": ",".join(syms),
        "HARVEST_PAPER_REPLAY_SPEED": "0",
        "HARVEST_PAPER_REPLAY_START": repr(T0),
        "HARVEST_PLAN_TTL_S": "120",
        "HARVEST_MODE": "live",
        "HARVEST_THROWAWAY_STATE": "true",
        **extra,
    }


def runtime(env: dict[str, str]):
    """A :class:`harvest.services.runtime.Runtime` for that environment (this process)."""
    from harvest.services.runtime import build_runtime

    return build_runtime(settings_of(env))


def paper_of(rt):
    """The paper engine of the namespace (also behind the emulator)."""
    from harvest.venues.sim.paper import PaperVenue

    return (
        rt.venue
        if isinstance(rt.venue, PaperVenue)
        else PaperVenue(rt.r, rt.settings.namespace, rt.settings.account, rt.clock)
    )


def _geometry(paper, sym: str) -> tuple[float, float, float]:
    f = paper.filters(sym)
    entry = max(float(f.tick_size) * 10_000, 1.0)
    qty = float(f.round_qty(max(float(f.min_qty), 2 * float(f.min_notional) / entry) * 8))
    return entry, entry * 0.99, qty


def mark_at_r(rt, sym: str, r_multiple: float) -> float:
    """The mark price (USDT) at which the LONG that :func:`open_positions` opened on ``sym``
    stands at ``r_multiple`` R net of the taker fee (0: at entry)."""
    entry, stop, qty = _geometry(paper_of(rt), sym)
    if r_multiple == 0:
        return entry
    fees = rt.settings.theta.taker_fee_rate
    return (r_multiple * (entry - stop) * qty + entry * qty) / (qty * (1 - fees))


def open_positions(rt, syms: list[str], r_multiple: float = 0.0) -> None:
    """One LONG per symbol at a round entry with a stop 1 % below (1R), marked at
    ``r_multiple`` R, written in bulk; market states (TREND) cached for every symbol. The
    account is a fresh one harvest never traded: its state is marked whole
    (:func:`harvest.services.recovery.mark_recovered`)."""
    from harvest.domain.models import MarketState, Regime
    from harvest.services.recovery import mark_recovered

    paper = paper_of(rt)
    paper.list_symbols({s: SHIPPED_SYMBOLS[i % len(SHIPPED_SYMBOLS)] for i, s in enumerate(syms)})
    rows, marks = [], {}
    for sym in syms:
        entry, stop, qty = _geometry(paper, sym)
        rows.append(
            {
                "symbol": sym,
                "side": "LONG",
                "qty": qty,
                "entry_price": entry,
                "leverage": 10.0,
                "opened_at": T0,
                "stop_price": stop,
            }
        )
        marks[sym] = mark_at_r(rt, sym, r_multiple)
    paper.seed_positions(rows, marks)
    mark_recovered(rt.r, rt.settings.namespace)
    rt.market.put_many(
        [
            MarketState(symbol=s, ts_time=T0, sigma=0.001, ts=0.5, p_trend=0.9, regime=Regime.TREND, trend_dir=1)
            for s in syms
        ]
    )


def clean(rt) -> None:
    """Delete every key of the namespace; the paper clock back at T0, standing still; the
    (empty) state marked whole, as for a fresh account."""
    from harvest.services.recovery import mark_recovered

    keys = list(rt.r.scan_iter(f"{rt.settings.namespace}:*", count=1000))
    for i in range(0, len(keys), 10_000):
        rt.r.delete(*keys[i : i + 10_000])
    rt.clock.set(T0, 0.0)
    mark_recovered(rt.r, rt.settings.namespace)


def fresh_namespace(url: str, prefix: str, syms: list[str], r_multiple: float | None = None):
    """A new, empty namespace on the Redis at ``url``: returns ``(namespace, env, runtime)``;
    with ``r_multiple``, one LONG per symbol is opened at that R (:func:`open_positions`)."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    env = env_for(url, ns, syms)
    rt = runtime(env)
    clean(rt)
    if r_multiple is not None:
        open_positions(rt, syms, r_multiple)
    return ns, env, rt


def start_emulator(
    rt,
    env: dict[str, str],
    streams: bool = True,
    weight_limit_1m: int = 10_000_000,
    budget_1m: int = 1_000_000,
    stream_tick_s: float = 1.0,
):
    """The fapi emulator on the namespace's paper engines (every account of ``rt``, each with
    fresh fake keys), its request-weight limit ``weight_limit_1m``; with ``streams``, its
    websocket streams ticking every ``stream_tick_s``. ``env`` gains the HARVEST_* variables that
    point workers at it (python-binance venue, the credentials — ``HARVEST_API_KEY``/``_SECRET``
    for one account, ``HARVEST_ACCOUNT_<NAME>_API_KEY``/``_SECRET`` for several —, harvest's
    weight budget ``budget_1m``, by default one that never binds). Returns the running
    :class:`harvest.venues.sim.emulator.Emulator`."""
    import secrets

    from harvest.venues.sim.emulator import Emulator
    from settings.accounts import credential_var

    creds = {a: (secrets.token_hex(8), secrets.token_hex(16)) for a in rt.accounts}
    first = rt.accounts[0]
    emu = Emulator(rt.r, rt.settings.namespace, first, *creds[first], clock=rt.clock, weight_limit_1m=weight_limit_1m)
    for a in rt.accounts[1:]:
        emu.add_account(a, *creds[a])
    emu.start(streams=streams, stream_tick_s=stream_tick_s)
    env.update({"HARVEST_FAPI_URL": emu.url, "HARVEST_VENUE_WEIGHT_LIMIT_1M": str(budget_1m)})
    if len(rt.accounts) == 1:
        env.update({"HARVEST_API_KEY": creds[first][0], "HARVEST_API_SECRET": creds[first][1]})
    else:
        for a, (key, secret) in creds.items():
            env[credential_var(a, "key")], env[credential_var(a, "secret")] = key, secret
    return emu


def start_worker(env: dict[str, str], ns: str, queue: str, c: int, *extra: str) -> CeleryProcess:
    """A worker on the namespace's queue(s) ``queue`` (kinds, comma-separated: ``"scan"``,
    ``"scan,housekeeping"``) with ``c`` processes (not yet waited for)."""
    kinds = queue.split(",")
    return CeleryProcess(
        "worker",
        env,
        [
            "-Q",
            ",".join(f"{ns}.{k}" for k in kinds),
            "-c",
            str(c),
            "-n",
            f"{'+'.join(kinds)}-{uuid.uuid4().hex[:4]}@%h",
            "--without-mingle",
            "--without-gossip",
            *extra,
        ],
    ).start()


def settings_of(env: dict[str, str]):
    """The :class:`settings.HarvestSettings` of that environment (os.environ untouched)."""
    from settings import settings_from_env

    return settings_from_env(env)


def celery_app(env: dict[str, str]):
    """A Celery client app with the namespace's configuration (to publish from here)."""
    from celery import Celery

    from settings.celery import celery_config

    app = Celery("bench", set_as_current=False)
    app.conf.update(celery_config(settings_of(env)))
    return app
