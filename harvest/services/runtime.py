"""Per-process wiring: settings, the Redis client, the stores and the venue.

Workers, beat and the CLI get everything through :func:`get_runtime`; tests build their own
:class:`Runtime` with :func:`build_runtime`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from harvest.store import BookStore, CounterStore, Heartbeats, MarketCache, PlanStore, RecoveryMarker
from harvest.store.connect import redis_client
from harvest.venues.base import Venue
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.paper import PaperVenue
from settings import HarvestSettings, SettingsError, get_settings, is_loopback_url


@dataclass
class Runtime:
    """Everything a stage needs. ``market_now()`` is the decision clock (the replay clock on
    the paper venue, wall time elsewhere); plan TTLs use wall time."""

    settings: HarvestSettings
    r: redis.Redis
    plans: PlanStore
    book: BookStore
    market: MarketCache
    venue: Venue
    clock: MarketClock | None
    #: The runtimes of the deployment's accounts by name, shared by all of them (built on demand).
    peers: dict[str, "Runtime"] = field(default_factory=dict, repr=False)
    #: The deployment's settings as configured (``settings`` is one account's view of them).
    deployment: HarvestSettings | None = None

    @property
    def counters(self) -> CounterStore:
        """The namespace's counters (every name in :mod:`harvest.store.counter_names`)."""
        return self.plans.counts

    @property
    def heartbeats(self) -> Heartbeats:
        """The namespace's heartbeats (component → last Unix time)."""
        return self.plans.beats

    @property
    def recovery(self) -> RecoveryMarker:
        """The state-recovered marker (:mod:`harvest.services.recovery`)."""
        return self.plans.recovery

    @property
    def accounts(self) -> list[str]:
        """The names of the accounts the deployment manages (``HARVEST_ACCOUNTS``, or the one
        account of the single-account set-up)."""
        return self.settings.account_names

    def for_account(self, name: str) -> "Runtime":
        """The runtime of account ``name``: the same Redis client, stores and market clock, with
        the account's settings (:meth:`settings.HarvestSettings.for_account`: venue, mode,
        symbols, theta, credentials) and its own venue, built once per process. Raises
        KeyError for an account the deployment does not manage."""
        if name == self.settings.account:
            return self
        rt = self.peers.get(name)
        if rt is None:
            s = self.settings.for_account(name)
            rt = self.peers[name] = replace(self, settings=s, venue=build_venue(s, self.r, self.clock))
        return rt

    def market_now(self) -> float:
        """Market time in Unix seconds (the replay clock on the paper venue, else wall time)."""
        return self.clock.now() if self.clock is not None else time.time()


def build_venue(s: HarvestSettings, r: redis.Redis, clock: MarketClock | None) -> Venue:
    """The venue named by the settings: the in-process paper engine, or python-binance
    (against the emulator at ``fapi_url``, the testnet, or live). API keys are read here from
    the settings (environment / secret files) and go nowhere else."""
    if not s.uses_binance:
        if clock is None:
            raise ValueError("the paper venue needs its market clock (HARVEST_VENUE=paper)")
        return PaperVenue(r, s.namespace, s.account, clock, fee_rate=s.theta.taker_fee_rate)
    if s.venue != "paper" and not s.live_trading_opt_in:  # settings refuse it; never rely on one check
        raise RuntimeError(f"venue {s.venue!r} reaches a non-local exchange: HARVEST_LIVE_TRADING_OPT_IN=true needed")
    from harvest.venues.binance import BinanceVenue, make_client

    key = s.api_key.get_secret_value() if s.api_key else ""
    secret = s.api_secret.get_secret_value() if s.api_secret else ""
    if s.fapi_url and not is_loopback_url(s.fapi_url):
        check_remote_emulator(s.fapi_url, key, secret, s.venue_timeout_s)
    egress = s.account_egress  # the account's way out: its requests, weight budget and back-offs
    return BinanceVenue(
        r,
        s.namespace,
        lambda: make_client(
            key, secret, s.fapi_url, s.venue == "testnet", s.venue_timeout_s, s.recv_window_ms, egress=egress
        ),
        weight_limit=s.venue_weight_limit_1m,
        egress=egress.name,
        funding_poll_s=s.funding_poll_s,
        max_clock_offset_ms=s.max_clock_offset_ms,
        account=s.account,
        # The emulator's server clock is the replay's market clock: signed requests are stamped
        # in it and the clock check compares like with like (docs/venues.md, "Clocks").
        clock=clock if s.venue == "paper" else None,
    )


def check_remote_emulator(fapi_url: str, api_key: str, api_secret: str, timeout_s: float) -> None:
    """The start-up check of an emulator on another host (a non-loopback ``HARVEST_FAPI_URL``,
    accepted by the settings only with ``HARVEST_VENUE=paper``): its handshake, proving the
    account's API secret (:func:`harvest.venues.binance.emulator_handshake`), is the first and,
    when it fails, the only request sent there. Raises SettingsError (start-up stops, message
    naming HARVEST_FAPI_URL) when the server answers as anything but the emulator — a real
    exchange, a 404, another JSON, a wrong proof. When nothing answers yet (the emulator still
    starting, ``timeout_s`` seconds at most) start-up goes on with a warning: the venue's client
    repeats the handshake before its first request and sends nothing until it passes."""
    import logging

    from harvest.venues.base import VenueError
    from harvest.venues.binance import emulator_handshake

    try:
        emulator_handshake(fapi_url, timeout_s, api_key, api_secret)
    except VenueError as e:
        if not e.retryable:
            raise SettingsError(f"invalid setting {e.message}") from None
        logging.getLogger("harvest.venue").warning("%s; the venue checks it again before its first request", e.message)


def check_start_up(s: HarvestSettings) -> None:
    """The start-up check of every account's venue that needs one: with a non-loopback
    ``HARVEST_FAPI_URL`` (another host's emulator, paper only), :func:`check_remote_emulator`
    with each account's key and secret. Called by the Celery worker's main process before its
    pool forks (``worker_init``), so a server that is not the emulator stops the worker once,
    with one line naming HARVEST_FAPI_URL, instead of each pool process failing in turn.
    Raises SettingsError; nothing for loopback or no ``fapi_url``."""
    if not s.fapi_url or is_loopback_url(s.fapi_url):
        return
    for name in s.account_names:
        a = s.for_account(name)
        if a.venue == "paper" and a.fapi_url:
            key = a.api_key.get_secret_value() if a.api_key else ""
            secret = a.api_secret.get_secret_value() if a.api_secret else ""
            check_remote_emulator(a.fapi_url, key, secret, a.venue_timeout_s)


#: A command that met a dropped connection (a Redis restart, a failover) is sent again on a
#: new one, up to 6 times over ~2 s. Safe for harvest's writes: plan transitions are
#: compare-and-set scripts (a repeat finds the state moved and changes nothing) and a
#: WATCH transaction is never retried blind (redis-py raises instead).
REDIS_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=6)
REDIS_RETRY_ON = [redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError]


def build_runtime(s: HarvestSettings) -> Runtime:
    """Connect to Redis (retrying across a dropped connection, :data:`REDIS_RETRY`) and build
    the stores and the venue named by the settings.

    The client keeps one connection for its commands (``single_connection_client``): a pool
    process runs one task at a time, and taking a connection from a pool and giving it back
    for every command (a lock, a readiness poll of the socket, pool bookkeeping) cost about
    a fifth of the stages' client CPU. Threads of one process share it under the client's
    lock; pipelines and transactions still take their own connection from the pool. The
    connection must not cross a fork: :func:`get_runtime` builds a new runtime in a child."""
    r = redis_client(
        s.redis_url,
        decode_responses=True,
        health_check_interval=30,
        retry=REDIS_RETRY,
        retry_on_error=REDIS_RETRY_ON,
        single_connection_client=True,
    )
    # The replay's market clock belongs to the paper venue (in process or emulated); an
    # exchange (testnet, live) needs none: its market time is the wall clock. The runtime
    # returned is the first account's; the others' are reached by Runtime.for_account.
    paper = any(s.for_account(a).venue == "paper" for a in s.account_names)
    clock = MarketClock(r, s.namespace, s.paper_replay_start, s.paper_replay_speed) if paper else None
    deployment, s = s, s.for_account(s.account_names[0])
    venue = build_venue(s, r, clock)
    rt = Runtime(
        settings=s,
        r=r,
        plans=PlanStore(r, s.namespace, s.results_stream_maxlen),
        book=BookStore(r, s.namespace),
        market=MarketCache(r, s.namespace),
        venue=venue,
        clock=clock,
        deployment=deployment,
    )
    rt.peers[s.account] = rt
    return rt


_RUNTIME: tuple[int, Runtime] | None = None


def get_runtime() -> Runtime:
    """The process's runtime, built once per process from :func:`settings.get_settings` (a
    forked child builds its own: its Redis connection is never the parent's)."""
    global _RUNTIME
    if _RUNTIME is None or _RUNTIME[0] != os.getpid():
        _RUNTIME = (os.getpid(), build_runtime(get_settings()))
    return _RUNTIME[1]


def reset_runtime() -> None:
    """Forget the process's runtime: the next :func:`get_runtime` builds a new one (after
    the settings changed)."""
    global _RUNTIME
    _RUNTIME = None


def observe_queue_wait(queue: str, seconds: float) -> None:
    """Queue one observation of ``harvest_queue_wait_seconds`` (s from publish to start, by
    ``queue``); it is written with the task's next plan read or write, or by
    :func:`flush_observations` at the task's end."""
    from harvest.store.counters import DEFERRED, queue_wait

    rt = get_runtime()
    DEFERRED.add(queue_wait(rt.r, rt.settings.namespace), max(0.0, seconds), queue)


def flush_observations() -> None:
    """Write the metric observations no round trip of the task carried (one round trip; none
    when nothing is queued)."""
    from harvest.store.counters import DEFERRED

    DEFERRED.flush(get_runtime().r)
