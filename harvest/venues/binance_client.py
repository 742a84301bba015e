"""One account's connection to Binance through python-binance: the ``Client`` bound to its egress
(:func:`make_client`, :func:`bind_session`), the emulator's handshake (:func:`emulator_handshake`),
and :class:`BinanceConnection`, the base of :class:`~harvest.venues.binance.BinanceVenue`: every
call budgeted (:mod:`harvest.venues.binance_budget`) and classified
(:mod:`harvest.venues.binance_errors`), the exchange's clock, exchangeInfo's filters.

Clocks (docs/venues.md, "Clocks"): every time the exchange answers (serverTime, orders,
trades, positions, income, klines, stream events) is the exchange's clock — wall time on
Binance, the replay's market clock on the emulator. Signed requests are stamped in it:
before each call the client's ``timestamp_offset`` is set to harvest's reading of the exchange
clock (:meth:`BinanceVenue.exchange_ms`: the shared MarketClock when ``clock`` is given, else
wall time) minus wall time, plus the correction a -1021 resync measured.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, cast

import redis
import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException

from harvest.data import SymbolFilters, filters_from_exchange_info
from harvest.venues import binance_facts as facts
from harvest.venues.base import BAD_SYMBOL, VenueError
from harvest.venues.binance_budget import OrderBudget, WeightBudget, order_limits, request_of, request_weight
from harvest.venues.binance_errors import _num, answers, classify
from harvest.venues.sim.clock import MarketClock
from settings.egress import Egress

log = logging.getLogger("harvest.venue")

#: exchangeInfo's filters parsed in this process, by Redis key: (version token, filters), shared
#: by every account's venue (a thousand accounts parse the answer once, not a thousand times).
_FILTERS: dict[str, tuple[str, dict[str, SymbolFilters]]] = {}


class BinanceConnection:
    """One account's connection (the parameters: :class:`~harvest.venues.binance.BinanceVenue`):
    the process's client, budgeted and classified calls, the exchange's clock, exchangeInfo.
    Raises VenueError from every call; never sleeps."""

    def __init__(
        self,
        r: redis.Redis,
        ns: str,
        client_factory: Callable[[], Client],
        weight_limit: int,
        cache_ttl_s: float = 300.0,
        funding_poll_s: float = 60.0,
        max_clock_offset_ms: int = 1000,
        account: str = "paper",
        clock: MarketClock | None = None,
        egress: str = "default",
        funding_settle_s: float = 30.0,
        leverage_ttl_s: float = 3600.0,
    ):
        self.r = r
        self.ns = ns
        self.account = account
        self._factory = client_factory
        self._client: Client | None = None
        self._pid = 0
        self.egress = egress
        self.budget = WeightBudget(r, ns, weight_limit, egress)
        self.orders = OrderBudget(r, ns, account)
        self.cache_ttl_s = cache_ttl_s
        self._filters: dict[str, SymbolFilters] = {}
        self._filters_at = 0.0
        self.k_info = f"{ns}:venue:exchange_info"
        # What belongs to the exchange account (leverage, position mode, openings, funding) is
        # kept per account; the weight budget and exchangeInfo are the IP's and the market's.
        acct = f"{ns}:venue:{account}"
        self.k_leverage = f"{acct}:leverage"
        self.k_dual = f"{acct}:dual"
        self.k_opening = f"{acct}:opening"
        self.k_funding = f"{acct}:funding"
        self.k_funding_poll = f"{acct}:funding_polled"
        self.k_funding_due = f"{acct}:funding_due"
        self.k_funding_read = f"{acct}:funding_read"
        #: Each symbol's last and next funding time (ms), the deployment's (premiumIndex).
        self.k_funding_times = f"{ns}:venue:funding_times"
        self.k_info_refreshed = f"{ns}:venue:exchange_info:refreshed"
        self.funding_poll_s = funding_poll_s
        self.funding_settle_s = funding_settle_s
        self.leverage_ttl_s = leverage_ttl_s
        #: The stops positions() read last: (monotonic s, symbols read — None: every symbol's —,
        #: rows), reused once by open_orders(symbols=…) within RECENT_S (one audit).
        self._recent_algo: tuple[float, frozenset[str] | None, list[Any]] | None = None
        self.max_clock_offset_ms = max_clock_offset_ms
        self.clock = clock
        #: The exchange's clock minus harvest's reading of it (ms), from the last resync.
        self.correction_ms = 0

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> Client:
        """The process's python-binance Client (rebuilt after a fork)."""
        if self._client is None or self._pid != os.getpid():
            self._client = self._factory()
            self._pid = os.getpid()
        return self._client

    def _call(self, fn: str, label: str, priority: str, new_order: bool = False, **params: Any) -> Any:
        """One request: budget (request weight, the IP's, by :func:`request_weight` of ``fn``
        and the parameters sent; with ``new_order``, the account's order rate too), call,
        rate-limit bookkeeping, error classification, and one retry after a -1021 time resync.
        A 429/418 holds the scope it belongs to: ``-1015`` (too many new orders) this account's
        orders, any other the IP's requests. ``label``: the call's short name (for readers)."""
        method, path = request_of(fn, params)
        if method != "GET":  # an order sent or cancelled: stops read before it are not reused
            self._recent_algo = None
        self.budget.reserve(facts.request_weight(method, path, params), priority, f"{self.account}|{method} {path}")
        if new_order:
            self.orders.reserve(priority)
        for attempt in (0, 1):
            try:
                self.stamp()
                out = getattr(self.client, fn)(**dict(params))
                self._observe()
                return out
            except BinanceAPIException as e:
                self._observe()
                if e.code == -1021 and attempt == 0:
                    self.resync_time()
                    continue
                err = classify(e)
                if err.http_status in (429, 418) and err.code == -1015:
                    self.orders.back_off(err.retry_after or 1.0)
                elif err.http_status in (429, 418):
                    self.budget.back_off(err.retry_after or 1.0)
                raise err from None
            except (requests.exceptions.RequestException, BinanceRequestException) as e:
                raise classify(e) from None
        raise AssertionError("unreachable")

    def _observe(self) -> None:
        resp = getattr(self.client, "response", None)
        used = resp.headers.get("X-MBX-USED-WEIGHT-1M") if resp is not None else None
        if used is not None and used.isdigit():
            self.budget.observe(int(used))

    def exchange_ms(self) -> float:
        """Harvest's reading of the exchange's clock (ms), without asking it: the replay's
        market clock on the emulator (``clock``: the MarketClock it shares; its server clock
        IS that clock), wall time on Binance (whose server clock is wall time within NTP's
        error)."""
        return self.clock.now() * 1000 if self.clock is not None else time.time() * 1000

    def stamp(self) -> None:
        """Keep the client's ``timestamp_offset`` (ms; python-binance stamps a signed request
        ``time.time() × 1000 + timestamp_offset``) in step with the exchange's clock:
        :meth:`exchange_ms` − wall + :attr:`correction_ms`. On Binance that is the correction
        alone (0 until a -1021 resync); on the emulator, where the market clock runs at the
        replay's speed, it is recomputed before every call so the stamp is market time (the
        emulator allows the transit, scaled by the speed: ``Emulator.transit_ms``). Called before
        every request of the adapter; code using :attr:`client` directly calls it first."""
        off = self.correction_ms + (self.exchange_ms() - time.time() * 1000 if self.clock is not None else 0)
        self.client.timestamp_offset = int(off)

    @answers()
    def clock_offset_ms(self) -> int:
        """The exchange's clock minus harvest's reading of it (ms; :meth:`exchange_ms`: wall
        time on Binance, the shared market clock on the emulator, so both sides are one
        clock), from ``GET /fapi/v1/time`` (weight 1; the request's mid-point stands for the
        local reading: on the emulator the reading is uncertain by the replay's speed × half
        the round trip, e.g. ±150 ms for a 5 ms request at speed 60). Recorded in Redis
        (``<ns>:venue:clock_offset_ms``) for ``/metrics`` and the scorecard."""
        self.budget.reserve(request_weight("futures_time", {}), "read", f"{self.account}|GET /fapi/v1/time")
        t0 = self.exchange_ms()
        server = _num(self.client.futures_time()["serverTime"])
        t1 = self.exchange_ms()
        offset = int(server - (t0 + t1) / 2)
        self.r.set(f"{self.ns}:venue:clock_offset_ms", offset, ex=3600)
        return offset

    def resync_time(self) -> float:
        """Measure :meth:`clock_offset_ms` and sign with it from now on (:attr:`correction_ms`,
        applied by :meth:`stamp`); returns it. A large offset is absorbed for signing, but
        not hidden: it is logged as an error when it passes ``max_clock_offset_ms`` (and shows
        in ``/metrics``)."""
        offset = self.clock_offset_ms()
        self.correction_ms = offset
        self.stamp()
        level = logging.ERROR if abs(offset) > self.max_clock_offset_ms else logging.INFO
        log.log(
            level,
            "venue time offset resynced: %d ms (this machine's clock is %s by %.1f s)",
            offset,
            "behind" if offset > 0 else "ahead",
            abs(offset) / 1000,
        )
        return offset

    # ------------------------------------------------------------------ reference data

    @answers()
    def refresh_filters(self) -> int:
        """exchangeInfo (``GET /fapi/v1/exchangeInfo``, weight 1), once for the deployment: the
        first caller in 30 s fetches it into the shared cache (``<ns>:venue:exchange_info``, with
        the ORDERS rate limits), every other account and process within those 30 s loads that
        copy (beat's refresh walks every account in one pass: one request, not one per account).
        Cached in the process too, parsed once for every account's venue in it. Returns #symbols."""
        if not self.r.set(self.k_info_refreshed, "1", nx=True, ex=30) and self._load_shared():
            return len(self._filters)
        info = self._call("futures_exchange_info", "exchange_info", "read")
        filters = filters_from_exchange_info(info)
        token = os.urandom(8).hex()
        p = self.r.pipeline(transaction=True)
        p.set(self.k_info, json.dumps({"symbols": info["symbols"]}), ex=int(self.cache_ttl_s * 4))
        p.set(f"{self.k_info}:token", token, ex=int(self.cache_ttl_s * 4))
        p.execute()
        limits = order_limits(info)
        if limits:
            self.r.set(self.orders.k_limits, json.dumps(limits), ex=int(self.cache_ttl_s * 4))
        self._filters, self._filters_at = filters, time.time()
        _FILTERS[self.k_info] = (token, filters)
        return len(filters)

    def _load_shared(self) -> bool:
        """Take the deployment's cached exchangeInfo filters (Redis), parsed once per process
        and version (``<ns>:venue:exchange_info:token``, new at each fetch): every account's venue
        of the process shares the parse. False when Redis has none."""
        token = cast(str | None, self.r.get(f"{self.k_info}:token"))
        mine = _FILTERS.get(self.k_info)
        if token is not None and mine is not None and mine[0] == token:
            filters = mine[1]
        else:
            raw = cast(str | None, self.r.get(self.k_info))
            if not raw:
                return False
            filters = filters_from_exchange_info(json.loads(raw))
            if token is not None:
                _FILTERS[self.k_info] = (token, filters)
        self._filters, self._filters_at = filters, time.time()
        return True

    @answers()
    def filters(self, symbol: str) -> SymbolFilters:
        if not self._filters or time.time() - self._filters_at > self.cache_ttl_s:
            if not self._load_shared():
                self.refresh_filters()
        try:
            return self._filters[symbol]
        except KeyError:
            raise facts.venue_error(*BAD_SYMBOL) from None


def handshake_proof(api_secret: str, nonce: str) -> str:
    """The emulator's answer to a handshake challenge: HMAC-SHA256 (hex) of
    ``"harvest-fapi-emulator:<nonce>"`` keyed with the account's API secret (the secret the
    emulator checks request signatures with; Binance signs requests the same way). Only a
    server that holds the secret can compute it, so an impostor answering the fixed handshake
    JSON does not pass."""
    import hashlib
    import hmac

    from harvest.venues.sim.emulator_types import HANDSHAKE

    return hmac.new(api_secret.encode(), f"{HANDSHAKE}:{nonce}".encode(), hashlib.sha256).hexdigest()


def emulator_handshake(
    futures_url: str,
    timeout_s: float,
    api_key: str | None = None,
    api_secret: str | None = None,
    session: requests.Session | None = None,
    proxies: dict[str, str] | None = None,
) -> dict:
    """Check that ``futures_url`` (``HARVEST_FAPI_URL``) is harvest's fapi emulator before any
    other request goes there; returns its answer (``namespace``, ``stream_url``: its websocket
    streams or None).

    One request, ``GET /_emu/hello?nonce=<32 hex>`` with ``X-MBX-APIKEY: api_key`` (the key
    Binance gets on every request anyway; the secret is never sent), redirects not followed.
    The answer must carry ``"emulator": "harvest-fapi-emulator"``; on a non-loopback address
    (the emulator on another host of a paper deployment) it must also carry ``"proof"`` =
    :func:`handshake_proof` of the nonce with ``api_secret``, so neither a real exchange (a 404,
    another JSON) nor a server copying the fixed answer passes without the account's secret.

    ``session``/``proxies``: the account's egress (:func:`bind_session`), so the handshake leaves
    by the same address as the requests after it.

    Raises VenueError: a rejection (code -9001, message naming HARVEST_FAPI_URL) when the
    server answers as something else or, off loopback, no key and secret are given; retryable
    when nothing answers (connection refused, timeout: the emulator restarting) — either way
    nothing else is sent. The paper venue never reaches a real exchange, whatever its URL."""
    import hmac
    import secrets

    from harvest.venues.sim.emulator_types import HANDSHAKE
    from settings import is_loopback_url

    root = futures_url.rstrip("/").removesuffix("/fapi")
    remote = not is_loopback_url(futures_url)
    named = f"HARVEST_FAPI_URL={futures_url}"
    if remote and not (api_key and api_secret):
        raise VenueError(
            -9001, f"{named} is not on a loopback address: the emulator's handshake there needs the API key and secret"
        )
    nonce = secrets.token_hex(16)
    headers = {"X-MBX-APIKEY": api_key} if api_key else {}
    try:
        resp = (session or requests.Session()).get(
            f"{root}/_emu/hello",
            params={"nonce": nonce},
            headers=headers,
            timeout=timeout_s,
            allow_redirects=False,
            proxies=proxies,
        )
    except requests.exceptions.RequestException as e:  # not reachable now: nothing sent, try again later
        raise VenueError(
            0, f"{named} did not answer the emulator's handshake ({type(e).__name__})", 0, retryable=True
        ) from None
    try:
        answer = resp.json() if resp.status_code == 200 else f"HTTP {resp.status_code}"
    except ValueError:
        answer = f"HTTP {resp.status_code}, not JSON"
    if not isinstance(answer, dict) or answer.get("emulator") != HANDSHAKE:
        raise VenueError(
            -9001,
            f"{named} is not harvest's fapi emulator (handshake answer {str(answer)[:80]!r}); "
            "the paper venue sends nothing there",
        )
    if remote:
        proof = answer.get("proof")
        if not isinstance(proof, str) or not hmac.compare_digest(proof, handshake_proof(api_secret or "", nonce)):
            raise VenueError(
                -9001,
                f"{named} is not harvest's fapi emulator: its handshake does not prove the account's API secret "
                "(a non-loopback emulator must hold the same HARVEST_API_KEY/HARVEST_API_SECRET)",
            )
    return answer


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """A requests transport adapter whose connections leave from the local address ``source``
    (urllib3's ``source_address``; port 0: any), through a proxy too. The address must be one
    of this host's (a bind to another fails: a connection error, nothing sent)."""

    def __init__(self, source: str, **kwargs: Any):
        self.source_address = (source, 0)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = self.source_address
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["source_address"] = self.source_address
        return super().proxy_manager_for(proxy, **kwargs)


def bind_session(session: requests.Session, egress: Egress | None) -> None:
    """Bind ``session``'s connections to ``egress``'s local source address
    (:class:`SourceAddressAdapter` for http and https). A proxy egress is not the session's:
    :func:`make_client` passes it as python-binance's ``requests_params["proxies"]``, sent with
    every call (per-request proxies win over the environment's ``HTTPS_PROXY``; a session's
    would not). The default route changes nothing."""
    if egress is not None and egress.source:
        adapter = SourceAddressAdapter(egress.source)
        session.mount("https://", adapter)
        session.mount("http://", adapter)


def make_client(
    api_key: str,
    api_secret: str,
    futures_url: str | None,
    testnet: bool,
    timeout_s: float,
    recv_window_ms: int,
    egress: Egress | None = None,
) -> Client:
    """A python-binance ``Client`` for USDⓈ-M futures: ``ping=False``; ``futures_url``
    overrides ``FUTURES_URL`` (the emulator: its handshake is checked first,
    :func:`emulator_handshake`); ``testnet`` selects Binance's futures testnet; ``egress``: the
    way out every request of the client leaves by (:func:`bind_session`; None: the default
    route). Raises VenueError when ``futures_url`` is not the emulator."""
    proxies = {"http": egress.proxy, "https": egress.proxy} if egress and egress.proxy else None
    params: dict[str, Any] = {"timeout": timeout_s, **({"proxies": proxies} if proxies else {})}
    c = Client(api_key, api_secret, ping=False, testnet=testnet, requests_params=params)
    bind_session(c.session, egress)
    if futures_url:  # the first request of this client, by its egress
        emulator_handshake(futures_url, timeout_s, api_key, api_secret, session=c.session, proxies=proxies)
    if futures_url:
        c.FUTURES_URL = futures_url.rstrip("/")
    c.REQUEST_RECVWINDOW = recv_window_ms
    return c
