"""A local Binance USDⓈ-M futures (fapi) server on 127.0.0.1, backed by the paper engine.

It serves the endpoints harvest's python-binance adapter uses, with Binance's wire formats
(``docs/reference/binance-fapi.md``):

=========================================  ======  ==========================================
path                                       signed  what
=========================================  ======  ==========================================
GET  /fapi/v1/ping, /fapi/v1/time          no      liveness, server time (ms)
GET  /fapi/v1/exchangeInfo                 no      the shipped exchangeInfo (real filters)
GET  /fapi/v1/premiumIndex                 no      mark price of one or every symbol
GET  /fapi/v1/klines                       no      klines of every interval (from the 1m bars),
                                                   startTime/endTime/limit, up to market now
GET  /fapi/v3/positionRisk, v2             yes     positions, Binance's v3 / v2 field sets
GET  /fapi/v2/balance, v3                  yes     the USDT balance (the paper ledger)
GET  /fapi/v3/account                      yes     totals, assets, positions
POST /fapi/v1/leverage, /marginType        yes     kept per account and symbol
GET  /fapi/v1/symbolConfig                 yes     leverage and margin type per symbol
GET  /fapi/v1/positionSide/dual            yes     position mode (POST switches it)
POST /fapi/v1/order                        yes     MARKET (reduceOnly / positionSide); a
                                                   conditional type answers -4120
GET / DELETE /fapi/v1/order                yes     by origClientOrderId or orderId
GET  /fapi/v1/openOrders                   yes     working orders
GET  /fapi/v1/allOrders                    yes     a symbol's orders: orderId, 7-day windows
GET  /fapi/v1/allAlgoOrders                yes     a symbol's conditional orders, likewise
POST /fapi/v1/algoOrder                    yes     CONDITIONAL STOP_MARKET closePosition
GET / DELETE /fapi/v1/algoOrder            yes     by clientAlgoId or algoId
GET  /fapi/v1/openAlgoOrders               yes     working stops
GET  /fapi/v1/leverageBracket              yes     maintenance-margin brackets (shipped table)
GET  /fapi/v1/userTrades                   yes     fills: openings, closes, triggered stops;
                                                   fromId, orderId, 7-day windows
GET  /fapi/v1/income                       yes     funding settlements (FUNDING_FEE)
POST / PUT / DELETE /fapi/v1/listenKey     key     the user data stream's key (streams below)
=========================================  ======  ==========================================

The websocket streams (user data, mark prices) are served on a second port by
:mod:`harvest.venues.sim.emulator_streams` (``start(streams=True)``; ``stream_url``).

**One clock.** The emulator's server clock IS the replay's market clock
(:class:`~harvest.venues.sim.clock.MarketClock`, shared through Redis: ``anchor_market + (wall −
anchor_wall) × speed``). Every time it answers carries it: ``/fapi/v1/time`` ``serverTime``,
exchangeInfo's ``serverTime``, premiumIndex ``time`` and ``nextFundingTime``, orders'
``time``/``updateTime``, algo orders' ``createTime``/``updateTime``/``triggerTime``, trades'
``time``, positions' ``updateTime``, income ``time``, klines' open/close times, and the
streams' ``E``/``T`` (user data events, mark prices, klines, ``listenKeyExpired``). So, as on
Binance, server time, orders, trades, positions, funding and stream events agree with each
other (at speed s, two answers read d wall seconds apart differ by about s × d). Only what
bounds the client's *request rate or connection* is wall time, as it is on Binance: the
request-weight and order-count windows (``X-MBX-USED-WEIGHT-1M``, ``-ORDER-COUNT-10S/1M``),
``Retry-After``, and the listenKey's 60-minute life (a keepalive is the client's wall-time
chore). Harvest's adapter keeps its client's ``timestamp_offset`` in step with the server
clock, from the shared MarketClock before each signed call on the emulator, from
``/fapi/v1/time`` on Binance (:class:`harvest.venues.binance.BinanceVenue`).

Signed requests are checked like Binance: API key in ``X-MBX-APIKEY`` (-2015), HMAC-SHA256
of the query string + body as received minus ``signature`` (-1022), ``timestamp <
server_time + 1000`` and ``server_time − timestamp ≤ recvWindow`` (-1021), ``recvWindow`` at
most 60000 (-1131). The one place the emulator is looser than Binance: a timestamp passes when
it is valid against **either** clock — the server clock (the market clock, with both
allowances, 1000 ms ahead and ``recvWindow`` behind, multiplied by the replay's speed:
:meth:`Emulator.transit_ms`) **or** wall time (Binance's allowances as they are); the skew
fault shifts both. Why: (1) the allowances bound a request's transit, a wall duration, and at
speed 1440 an unscaled 5000 ms window would refuse every request that spent more than 3.5 wall
ms between its stamp and its check; scaled, the wall tolerance is Binance's. (2) Binance's
server clock is wall time (within NTP's error), so a client stamping its own wall clock, right
on Binance, must not be refused here because the replay runs in 2025; accepting it hides
nothing a client would meet on Binance. A timestamp valid against neither (a wrong offset, a
skewed server) is -1021 as on Binance.

Every response carries ``X-MBX-USED-WEIGHT-1M``, each request charged Binance's weight for its
endpoint and parameters (:func:`binance_facts.request_weight`: e.g. openOrders/openAlgoOrders
40 without a symbol, klines 1–10 by ``limit``), counted per client IP address as Binance counts
it (the header is that IP's minute); more than ``weight_limit_1m`` (Binance: 2400) weight in a
minute from one IP answers 429 -1003 to that IP only. Order answers carry the account's
``X-MBX-ORDER-COUNT-10S`` / ``-1M``. A path Binance does not serve answers Binance's 404 HTML
page (:data:`binance_facts.UNKNOWN_PATH_HTML`), key or no key.

**Faults** are injected per endpoint (``"POST /fapi/v1/order"``, or ``"*"`` for any) and
held in Redis (``<ns>:emu:faults``), so tests, ``harvest chaos`` and the HTTP admin route
``PUT /_emu/faults`` share them. Kinds (:data:`FAULT_KINDS`):

* ``latency`` — wait ``latency_s``, then execute and answer (longer than the client's read
  timeout, this is a timeout whose request is executed late);
* ``http_429`` / ``http_418`` — rate limited / IP banned, ``Retry-After`` header, nothing done;
* ``unavailable_503`` — 503 ``{"code": -1008, "msg": "Service Unavailable."}``, nothing done
  (Binance's code for this answer is not documented; a JSON body is what makes it Binance's);
* ``internal_503`` — 503 -1001 "Internal error; unable to process your request…", nothing done;
* ``unknown_503`` — 503 "Unknown error, please check your request or try again later.", and
  the request was NOT executed (the look-up then answers -2013);
* ``unknown_503_after_accept`` — the request IS executed, then the same 503 "Unknown error…";
* ``timeout_after_accept`` — the request IS executed, the answer comes after ``latency_s``
  (longer than the client's read timeout);
* ``timestamp_1021`` — -1021 without doing anything (``skew_ms`` shifts the server clock
  instead, for a real skew);
* ``html_503`` / ``html_502`` — a load balancer's HTML 503 / 502 page, nothing done; ``html_503_after_accept`` —
  the request IS executed, then the same HTML page (only a JSON answer is Binance's word, so
  both are unknown outcomes to the client);
* ``garbage_200`` / ``garbage_200_after_accept`` — not executed / executed, answered 200 with a
  body that is not JSON (a proxy's page);
* ``truncated`` / ``truncated_after_accept`` — not executed / executed, the body is cut short
  (the connection closes before Content-Length bytes arrive);
* ``partial_fill`` — a reduce-only MARKET close fills only ``fraction`` (default 0.4) of its
  quantity, the rest expires (status EXPIRED, executedQty partial): price protection or a
  thin book in a cascade.

Each fault fires ``times`` times (default 1) and is then gone. The **order log** is the
paper engine's stream ``<ns>:paper:<account>:orderlog``: every HTTP order request (with the
fault it met and the answer), every fill, stop placement, cancel, trigger and expiry, in order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, cast, overload
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import redis

from harvest.data import (
    load_brackets_raw,
    load_exchange_info,
    load_funding,
    load_klines,
)
from harvest.domain.margin import Bracket
from harvest.venues import binance_facts as facts
from harvest.venues.base import OrderResult, VenueError
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.emulator_answers import (
    _algo_json,
    _bucket,
    _bucket_end,
    _check_client_id,
    _dec,
    _err,
    _fixed,
    _num_str,
    _order_json,
    _queried_json,
)
from harvest.venues.sim.emulator_faults import FAULT_KINDS, HTML_502, HTML_503, Faults
from harvest.venues.sim.emulator_streams import StreamServer
from harvest.venues.sim.emulator_types import (
    HANDSHAKE,
    LISTEN_KEY_TTL_S,
    ApiError,
    EmulatedAccount,
    ListenKeyMissing,
    ListenKeys,
)
from harvest.venues.sim.paper import DEFAULT_BALANCE, PaperVenue
from harvest.venues.sim.paper_settlement import brackets

log = logging.getLogger("harvest.emulator")

__all__ = [
    "FAULT_KINDS",
    "HANDSHAKE",
    "HTML_502",
    "HTML_503",
    "LISTEN_KEY_TTL_S",
    "WEIGHTS",
    "WEIGHT_LIMIT_1M",
    "ApiError",
    "EmulatedAccount",
    "Emulator",
    "Faults",
    "ListenKeyMissing",
    "ListenKeys",
]

#: Request weight of each endpoint's GET with a symbol and Binance's default parameters (klines:
#: limit 500 → 5), by the path after ``/fapi/vN/`` (a summary for benchmarks; the emulator
#: charges every request by :func:`binance_facts.request_weight`, the weight by its parameters).
WEIGHTS = {
    e.path.split("/", 3)[3]: facts.request_weight("GET", e.path, {"symbol": "BTCUSDT"})
    for e in facts.ENDPOINTS.values()
    if e.method == "GET"
}
WEIGHT_LIMIT_1M = facts.WEIGHT_LIMIT_1M
CONDITIONAL_TYPES = ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")


class _Server(ThreadingHTTPServer):
    """The HTTP server; a client that hung up (a killed worker, a read timeout) is logged at
    DEBUG, not printed as a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            log.debug("client %s hung up", client_address)
            return
        super().handle_error(request, client_address)


class Emulator:
    """The fapi emulator of one or more accounts (see module docstring): the request weight
    limit is per client IP address, shared by every account whose requests come from it, as
    Binance's is (a client bound to 127.0.0.2 has a budget of its own beside 127.0.0.1's).

    ``r``: redis.Redis (``decode_responses=True``) holding the paper engine's state under
    namespace ``ns``; ``account``, ``api_key``/``api_secret``: the first account and the
    credentials it accepts (:meth:`add_account` adds more; a request's API key picks its
    account). ``start()`` serves on 127.0.0.1 (port 0 = any free port) in a daemon thread;
    ``url`` is the value for python-binance's ``FUTURES_URL``.
    """

    def __init__(
        self,
        r: redis.Redis,
        ns: str,
        account: str,
        api_key: str,
        api_secret: str,
        clock: MarketClock | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        fee_rate: float = 0.0005,
        weight_limit_1m: int = WEIGHT_LIMIT_1M,
        listen_key_ttl_s: float = LISTEN_KEY_TTL_S,
        order_limits: list[tuple[int, int]] | None = None,
    ):
        self.r = r
        self.ns = ns
        self.api_key = api_key
        self.clock = clock or MarketClock(r, ns, time.time(), 1.0)
        self.fee_rate = fee_rate
        self.listen_key_ttl_s = listen_key_ttl_s
        self.accounts: dict[str, EmulatedAccount] = {}  # API key → account
        self._first = self.add_account(account, api_key, api_secret)
        self._local = threading.local()  # the account of the request a handler thread serves
        self.faults = Faults(r, ns)
        self.streams: StreamServer | None = None
        self.weight_limit_1m = weight_limit_1m
        self._info = load_exchange_info()
        if order_limits is not None:  # (window s, new orders per account), as exchangeInfo tells clients
            other = [x for x in self._info.get("rateLimits", []) if x.get("rateLimitType") != "ORDERS"]
            rows = [
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": w, "limit": n} for w, n in order_limits
            ]
            self._info = dict(self._info, rateLimits=other + rows)
        self.order_limits = [
            (int(x["intervalNum"]) * {"SECOND": 1, "MINUTE": 60}[x["interval"]], int(x["limit"]))
            for x in self._info.get("rateLimits", [])
            if x.get("rateLimitType") == "ORDERS"
        ]
        self._symbols = {s["symbol"] for s in self._info["symbols"]}
        self._precision = {
            s["symbol"]: (int(s.get("pricePrecision", 8)), int(s.get("quantityPrecision", 8)))
            for s in self._info["symbols"]
        }
        self._k_weight = f"{ns}:emu:weight"
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in separate writes; with Nagle's algorithm on, the body
            # waits for the client's delayed ACK (~40 ms per request on loopback). Binance
            # answers in one go; so does the emulator.
            disable_nagle_algorithm = True

            def log_message(self, fmt, *args):  # quiet: the order log records what matters
                log.debug("emulator %s", fmt % args)

            def do_GET(self):
                emu._handle(self, "GET")

            def do_POST(self):
                emu._handle(self, "POST")

            def do_DELETE(self):
                emu._handle(self, "DELETE")

            def do_PUT(self):
                emu._handle(self, "PUT")

        self._server = _Server((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def add_account(self, account: str, api_key: str, api_secret: str) -> EmulatedAccount:
        """Serve one more exchange account: requests with ``api_key`` (signed with
        ``api_secret``) reach the paper engine of ``account``. Returns it. Raises ValueError for
        an API key or account already served."""
        if api_key in self.accounts or any(a.name == account for a in self.accounts.values()):
            raise ValueError(f"account {account!r} or its API key is already served")
        acct = EmulatedAccount(
            account,
            api_secret.encode(),
            PaperVenue(self.r, self.ns, account, self.clock, fee_rate=self.fee_rate),
            ListenKeys(self.r, self.ns, self.listen_key_ttl_s, account),
        )
        self.accounts[api_key] = acct
        return acct

    def account(self, name: str) -> EmulatedAccount:
        """The served account ``name``. Raises KeyError."""
        return next(a for a in self.accounts.values() if a.name == name)

    @property
    def _current(self) -> EmulatedAccount:
        return getattr(self._local, "account", None) or self._first

    @property
    def venue(self) -> PaperVenue:
        """The paper engine of the account whose request this thread serves (outside a
        request, and for a request without a known API key: the first account's)."""
        return self._current.venue

    @property
    def listen_keys(self) -> ListenKeys:
        """The listenKey of the account whose request this thread serves (as :attr:`venue`)."""
        return self._current.listen_keys

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The TCP port served on 127.0.0.1."""
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for python-binance's ``FUTURES_URL`` (``http://127.0.0.1:<port>/fapi``)."""
        return f"http://127.0.0.1:{self.port}/fapi"

    @property
    def stream_url(self) -> str | None:
        """python-binance's ``FSTREAM_URL`` for this emulator's websocket streams (None when
        they are not served: ``start(streams=False)``)."""
        return self.streams.url if self.streams else None

    def start(self, streams: bool = True, stream_tick_s: float = 1.0) -> "Emulator":
        """Serve REST in a daemon thread and, with ``streams``, the websocket streams
        (:mod:`harvest.venues.sim.emulator_streams`) on another free port; returns self."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="fapi-emulator", daemon=True)
        self._thread.start()
        if streams:
            self.streams = StreamServer(self, tick_s=stream_tick_s).start()
        return self

    def serve_forever(self, streams: bool = True) -> None:
        """Serve REST in the calling thread until interrupted (``harvest emulator``) and, with
        ``streams``, the websocket streams in a daemon thread."""
        if streams and self.streams is None:
            self.streams = StreamServer(self).start()
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the sockets."""
        if self.streams is not None:
            self.streams.stop()
        self._server.shutdown()
        self._server.server_close()

    def order_log(self, account: str | None = None) -> list[dict[str, Any]]:
        """An account's order log (default: the first account's), oldest first (``kind``,
        ``symbol``, ``ts``, ``data`` decoded)."""
        venue = self.account(account).venue if account else self.venue
        out = []
        for _, f in cast(list[Any], self.r.xrange(venue.k_log)):
            out.append(dict(f, data=json.loads(f.get("data") or "{}")))
        return out

    # ------------------------------------------------------------------ HTTP plumbing

    def server_ms(self) -> int:
        """Server time (ms): the replay's market clock (:class:`MarketClock`, the clock of every
        order, trade, position, kline, funding and stream time the emulator answers) plus the
        injected skew (:meth:`Faults.set_skew`; 0 unless a test shifts it)."""
        return int(self.clock.now() * 1000) + self.faults.skew_ms()

    def transit_ms(self, wall_ms: float, speed: float | None = None) -> float:
        """A wall duration (ms) as the server clock measures it: ``wall_ms`` × the replay's speed
        (at least 1; the clock stopped at its end counts as 1). Binance's ``recvWindow`` and its
        1000 ms allowance for a timestamp ahead bound a request's transit, a wall duration; in a
        replay at speed s the server clock moves s ms in each wall ms of transit, so the
        emulator allows s times as many server ms, the same wall tolerance as Binance's.
        ``speed``: the clock's speed when the caller already read it."""
        return wall_ms * max(1.0, self.clock.speed() if speed is None else speed)

    def weight_spent(self) -> int:
        """Request weight counted over the minute windows still kept (each lives 120 s), every
        client IP's: what a measurement a minute or two long has cost, by Binance's per-endpoint
        weights."""
        return sum(int(cast(str | None, self.r.get(k)) or 0) for k in self.r.scan_iter(f"{self._k_weight}:*"))

    def weight_used(self, ip: str) -> int:
        """The request weight client address ``ip`` used in the current minute (what its
        ``X-MBX-USED-WEIGHT-1M`` says)."""
        return int(cast(str | None, self.r.get(f"{self._k_weight}:{ip}:{int(time.time() // 60)}")) or 0)

    def weight_by_ip(self) -> dict[str, tuple[int, int]]:
        """Every request served since the start (or :meth:`reset_tally`), by client address:
        ``{"127.0.0.1": (requests, weight charged)}``."""
        raw = cast(dict[str, str], self.r.hgetall(f"{self._k_weight}_ip_tally"))
        out: dict[str, tuple[int, int]] = {}
        for f, v in raw.items():
            kind, ip = f.split(" ", 1)
            n, w = out.get(ip, (0, 0))
            out[ip] = (n + int(v), w) if kind == "n" else (n, w + int(v))
        return out

    def weight_by_endpoint(self) -> dict[str, tuple[int, int]]:
        """Every request served since the emulator started (or :meth:`reset_tally`), by endpoint:
        ``{"GET /fapi/v3/positionRisk": (requests, weight charged)}`` — what a benchmark reports
        per endpoint, and what lets it price the same requests by another table."""
        raw = cast(dict[str, str], self.r.hgetall(f"{self._k_weight}_tally"))
        out: dict[str, tuple[int, int]] = {}
        for f, v in raw.items():
            kind, endpoint = f.split(" ", 1)
            n, w = out.get(endpoint, (0, 0))
            out[endpoint] = (n + int(v), w) if kind == "n" else (n, w + int(v))
        return out

    def reset_tally(self) -> None:
        """Start :meth:`weight_by_endpoint` and :meth:`weight_by_ip` afresh."""
        self.r.delete(f"{self._k_weight}_tally", f"{self._k_weight}_ip_tally")

    def _weight(self, w: int, ip: str, endpoint: str = "") -> int:
        """Charge ``w`` to client address ``ip``'s current minute; returns its weight used."""
        key = f"{self._k_weight}:{ip}:{int(time.time() // 60)}"
        p = self.r.pipeline(transaction=True)
        p.incrby(key, w)
        p.expire(key, 120)
        if endpoint:
            p.hincrby(f"{self._k_weight}_tally", f"n {endpoint}", 1)
            p.hincrby(f"{self._k_weight}_tally", f"w {endpoint}", w)
            p.hincrby(f"{self._k_weight}_ip_tally", f"n {ip}", 1)
            p.hincrby(f"{self._k_weight}_ip_tally", f"w {ip}", w)
        return int(p.execute()[0])

    def _reply(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        used: int = 0,
        claim: int | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer ``body`` (a str as text, anything else as JSON). ``claim``: the
        Content-Length to announce when it is not the body's (a truncated answer: the
        connection is closed after the short body)."""
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            h.send_response(status)
            h.send_header(
                "Content-Type", content_type or ("text/plain" if isinstance(body, str) else "application/json")
            )
            h.send_header("Content-Length", str(claim if claim is not None else len(raw)))
            if claim is not None:
                h.close_connection = True
            h.send_header("X-MBX-USED-WEIGHT-1M", str(used))
            for k, v in {**(getattr(self._local, "order_counts", None) or {}), **(headers or {})}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (read timeout): what was done stays done

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        self._local.account = self.accounts.get(h.headers.get("X-MBX-APIKEY") or "")
        self._local.order_counts = None  # X-MBX-ORDER-COUNT-* headers of a new order's answer
        try:
            self._serve(h, method)
        finally:
            self._local.account = None
            self._local.order_counts = None

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length).decode() if length else ""
        path = parts.path
        if path.startswith("/_emu/"):
            return self._admin(h, method, path, body)
        endpoint = f"{method} {path}"
        name = path.split("/", 3)[-1] if path.count("/") >= 3 else path
        order_call = name in ("order", "algoOrder") and method in ("POST", "DELETE")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        if (method, path) not in facts.ENDPOINTS:  # Binance's answer to a path it does not serve
            used = self._weight(0, h.client_address[0])
            html = facts.UNKNOWN_PATH_HTML
            return self._reply(h, facts.UNKNOWN_PATH_STATUS, html, used=used, content_type="text/html")
        used = self._weight(facts.request_weight(method, path, params), h.client_address[0], endpoint)
        fault: dict[str, Any] = self.faults.take(endpoint) or {}
        try:
            if used > self.weight_limit_1m:
                raise _err(
                    "TOO_MANY_REQUESTS", self.weight_limit_1m, headers={"Retry-After": str(60 - int(time.time()) % 60)}
                )
            kind = fault["kind"] if fault else None
            if kind == "latency":
                time.sleep(fault["latency_s"])
            elif kind == "http_429":
                raise ApiError(
                    429,
                    -1003,
                    "Too many requests; current limit is 2400 requests per minute. Please use "
                    "the websocket for live updates to avoid polling the API.",
                    {"Retry-After": f"{fault['retry_after']:g}"},
                )
            elif kind == "http_418":
                until = self.server_ms() + int(self.transit_ms(fault["retry_after"] * 1000))
                raise ApiError(
                    418,
                    -1003,
                    f"Way too many requests; IP banned until {until}. Please use the "
                    "websocket for live updates to avoid bans.",
                    {"Retry-After": f"{fault['retry_after']:g}"},
                )
            elif kind == "unavailable_503":
                raise ApiError(503, -1008, "Service Unavailable.")
            elif kind == "html_503":
                raise ApiError(503, None, HTML_503, html=True)
            elif kind == "html_502":
                raise ApiError(502, None, HTML_502, html=True)
            elif kind in ("garbage_200", "truncated"):  # answered by something in front of the exchange
                if order_call:
                    self._log_http(endpoint, params, 200, None, kind)
                if kind == "garbage_200":
                    return self._reply(h, 200, "<html>ok</html>\x00\x01", used=used)
                return self._reply(h, 200, '{"orderId": 1, "sta', used=used, claim=400)
            elif kind == "internal_503":
                raise ApiError(503, -1001, "Internal error; unable to process your request. Please try again.")
            elif kind == "unknown_503":
                raise ApiError(503, None, "Unknown error, please check your request or try again later.")
            elif kind == "timestamp_1021":
                raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")
            if path == "/fapi/v1/listenKey":  # USER_STREAM: the API key, no signature
                if h.headers.get("X-MBX-APIKEY") not in self.accounts:
                    raise _err("REJECTED_MBX_KEY")
            elif path not in _PUBLIC:
                self._authenticate(h, parts.query, body, params)
            if order_call and method == "POST":
                self._count_order()
            if kind == "partial_fill":
                self.venue.set_partial_fills(float(fault.get("fraction", 0.4)))
            result = self._route(method, path, params)
            if kind == "unknown_503_after_accept":
                raise ApiError(503, None, "Unknown error, please check your request or try again later.")
            if kind == "html_503_after_accept":
                raise ApiError(503, None, HTML_503, html=True)
            if kind == "timeout_after_accept":
                time.sleep(fault["latency_s"])
            if order_call:
                self._log_http(endpoint, params, 200, None, kind)
            if kind == "garbage_200_after_accept":
                return self._reply(h, 200, "<html>ok</html>\x00\x01", used=used)
            if kind == "truncated_after_accept":
                return self._reply(h, 200, json.dumps(result)[:20], used=used, claim=len(json.dumps(result)))
            self._reply(h, 200, result, used=used)
        except ApiError as e:
            if order_call:
                self._log_http(endpoint, params, e.status, e.code, fault["kind"] if fault else None)
            body_out: Any = e.msg if e.code is None else {"code": e.code, "msg": e.msg}
            self._reply(h, e.status, body_out, e.headers, used=used, content_type="text/html" if e.html else None)
        except Exception as e:  # a bug here must not look like an exchange decision
            log.exception("emulator error on %s", endpoint)
            self._reply(
                h,
                500,
                {"code": -1000, "msg": f"An unknown error occurred while processing the request. {e}"},
                used=used,
            )

    def _log_http(self, endpoint: str, params: dict, status: int, code: int | None, fault: str | None) -> None:
        cid = params.get("newClientOrderId") or params.get("clientAlgoId") or params.get("origClientOrderId") or ""
        self.venue._log(
            "HTTP",
            params.get("symbol", ""),
            {"endpoint": endpoint, "clientId": cid, "status": status, "code": code, "fault": fault},
        )

    def _count_order(self) -> None:
        """Binance's ``ORDERS`` limits, per account (``self.order_limits``: 300 per 10 s and 1200
        per minute as shipped): a new order beyond one answers 429 ``-1015``. The rejected order
        counts too (the stricter reading). The answer to the order (accepted or not) carries the
        account's count of each window in ``X-MBX-ORDER-COUNT-10S`` / ``-1M``
        (:func:`binance_facts.order_count_header`)."""
        now = time.time()
        acct = self._current.name
        p = self.r.pipeline(transaction=False)
        for window, _ in self.order_limits:
            key = f"{self.ns}:emu:orders:{acct}:{window}:{int(now // window)}"
            p.incr(key)
            p.expire(key, window * 2)
        counts = p.execute()[::2]
        self._local.order_counts = {
            facts.order_count_header(window): str(n) for (window, _), n in zip(self.order_limits, counts, strict=True)
        }
        for (window, limit), n in zip(self.order_limits, counts, strict=True):
            if n > limit:
                per = f"{window // 60} MINUTE" if window % 60 == 0 else f"{window} SECOND"
                raise _err("TOO_MANY_ORDERS", limit, per, headers={"Retry-After": str(int(window - now % window) + 1)})

    def _authenticate(self, h: BaseHTTPRequestHandler, query: str, body: str, params: dict) -> None:
        acct = self.accounts.get(h.headers.get("X-MBX-APIKEY") or "")
        if acct is None:
            raise _err("REJECTED_MBX_KEY")
        total = query + body
        sig = params.get("signature")
        if not sig:
            raise _err("MANDATORY_PARAM_EMPTY_OR_MALFORMED", "signature")
        payload = total.replace(f"&signature={sig}", "").replace(f"signature={sig}", "")
        want = hmac.new(acct.secret, payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, sig):
            raise _err("INVALID_SIGNATURE")
        try:
            ts = int(params["timestamp"])
            window = int(params.get("recvWindow", facts.RECV_WINDOW_DEFAULT_MS))
        except (KeyError, ValueError):
            raise _err("MANDATORY_PARAM_EMPTY_OR_MALFORMED", "timestamp") from None
        if window > facts.RECV_WINDOW_MAX_MS or window <= 0:
            raise _err("BAD_RECV_WINDOW")
        skew = self.faults.skew_ms()
        raw = cast(str | None, self.r.get(self.clock.key))  # one read of the clock for its time and its speed
        server = int(self.clock.now(raw) * 1000) + skew  # the server clock (self.server_ms())
        speed = self.clock.speed(raw)
        wall = int(time.time() * 1000) + skew
        ahead, behind = self.transit_ms(facts.TIMESTAMP_AHEAD_MS, speed), self.transit_ms(window, speed)
        on_server = ts < server + ahead and server - ts <= behind
        on_wall = ts < wall + facts.TIMESTAMP_AHEAD_MS and wall - ts <= window
        if not (on_server or on_wall):  # either clock: see the module docstring ("One clock")
            raise _err("INVALID_TIMESTAMP")

    # ------------------------------------------------------------------ endpoints

    @overload
    def _symbol(self, params: dict[str, Any], required: Literal[True] = True) -> str: ...

    @overload
    def _symbol(self, params: dict[str, Any], required: bool) -> str | None: ...

    def _symbol(self, params: dict[str, Any], required: bool = True) -> str | None:
        s = params.get("symbol")
        if s is None:
            if required:
                raise _err("MANDATORY_PARAM_EMPTY_OR_MALFORMED", "symbol")
            return None
        if s not in self._symbols and self.venue.source(s) == s:
            raise _err("BAD_SYMBOL")
        return s

    def _route(self, method: str, path: str, p: dict) -> Any:
        v = self.venue
        try:
            if path in ("/fapi/v1/ping",):
                return {}
            if path == "/fapi/v1/time":
                return {"serverTime": self.server_ms()}
            if path == "/fapi/v1/exchangeInfo":
                return self._exchange_info()
            if path == "/fapi/v1/klines":
                return self._klines(self._symbol(p), p)
            if path == "/fapi/v1/premiumIndex":
                sym = self._symbol(p, required=False)
                if sym:
                    try:
                        return self._premium(sym)
                    except FileNotFoundError:  # listed, but no prices shipped
                        raise _err("BAD_SYMBOL") from None
                rows = []
                for s in sorted(self._symbols | set(v.listings())):  # every symbol with prices
                    try:
                        rows.append(self._premium(s))
                    except FileNotFoundError:
                        continue
                return rows
            if path in ("/fapi/v3/positionRisk", "/fapi/v2/positionRisk") and method == "GET":
                return self._positions(p, with_leverage=path.startswith("/fapi/v2"))
            if path in ("/fapi/v2/balance", "/fapi/v3/balance"):
                return self._balance()
            if path in ("/fapi/v3/account", "/fapi/v2/account"):
                return self._account(v2=path.startswith("/fapi/v2"))
            if path == "/fapi/v1/leverage":
                return self._set_leverage(p)
            if path == "/fapi/v1/marginType":
                return self._set_margin_type(p)
            if path == "/fapi/v1/symbolConfig":
                # Binance answers every symbol's configuration (the symbol's alone with ``symbol``),
                # whether or not a position is open: the leverage set, else the open position's
                sym = self._symbol(p, required=False)
                held = {vp.symbol: vp for vp in v.positions()}
                syms = [sym] if sym else sorted(self._symbols | set(v.listings()) | set(held))
                return [
                    {
                        "symbol": s,
                        "marginType": self._margin_type(s),
                        "isAutoAddMargin": False,
                        "leverage": self._leverage(s, held.get(s)),
                        "maxNotionalValue": _num_str(self._max_notional(s, self._leverage(s, held.get(s)))),
                    }
                    for s in syms
                ]
            if path == "/fapi/v1/positionSide/dual":
                if method == "POST":
                    v.set_dual(p.get("dualSidePosition") == "true")
                    return {"code": 200, "msg": "success"}
                return {"dualSidePosition": v.dual()}
            if path == "/fapi/v1/listenKey":
                if method == "POST":
                    return {"listenKey": self.listen_keys.create()}
                if method == "PUT":
                    try:
                        return {"listenKey": self.listen_keys.keepalive()}
                    except ListenKeyMissing:
                        raise _err("INVALID_LISTEN_KEY") from None
                if method == "DELETE":
                    self.listen_keys.delete()
                    return {}
            if path == "/fapi/v1/order":
                return self._order(method, p)
            if path == "/fapi/v1/algoOrder":
                return self._algo(method, p)
            if path == "/fapi/v1/userTrades":
                return self._trades(self._symbol(p), p)
            if path == "/fapi/v1/income":
                return self._income(p)
            if path == "/fapi/v1/leverageBracket":
                return self._brackets(self._symbol(p, required=False))
            if path in ("/fapi/v1/allOrders", "/fapi/v1/allAlgoOrders"):
                return self._all_orders(self._symbol(p), p, algo=path.endswith("AlgoOrders"))
            if path == "/fapi/v1/openOrders":
                return [_queried_json(o) for o in v.open_orders(self._symbol(p, required=False), algo=False)]
            if path == "/fapi/v1/openAlgoOrders":
                return [_algo_json(o) for o in v.open_orders(self._symbol(p, required=False), algo=True)]
        except VenueError as e:
            raise ApiError.of(e) from None
        raise ApiError(facts.UNKNOWN_PATH_STATUS, None, facts.UNKNOWN_PATH_HTML, html=True)  # served by Binance only

    def _klines(self, symbol: str, p: dict) -> list[list]:
        """``GET /fapi/v1/klines`` of every Binance interval (:data:`binance_facts.KLINE_INTERVALS`)
        aggregated from the shipped 1m bars opened by market now (the last one still open, as on
        Binance): ``startTime``/``endTime`` (ms) select bars by open time (both inclusive);
        ``limit`` (default 500, at most 1500) keeps the first ``limit`` after ``startTime``, else
        the last ``limit``. Weeks open on Monday 00:00 UTC, months on the 1st. Prices at the
        symbol's ``pricePrecision``, volume at its ``quantityPrecision``."""
        interval = p.get("interval")
        if not interval:
            raise _err("MANDATORY_PARAM_EMPTY_OR_MALFORMED", "interval")
        if interval not in facts.KLINE_INTERVALS:
            raise _err("INVALID_INTERVAL")
        try:
            limit = max(1, min(facts.KLINES_MAX_LIMIT, int(p.get("limit", facts.KLINES_DEFAULT_LIMIT))))
            start = int(p["startTime"]) if p.get("startTime") else None
            end = int(p["endTime"]) if p.get("endTime") else None
        except ValueError:
            raise ApiError(400, -1100, "Illegal characters found in a parameter.") from None
        if start is not None and end is not None and start > end:
            raise ApiError(400, -1023, "Start time is greater than end time.")
        kl = load_klines(self.venue.source(symbol))
        try:
            last = kl.index_at(self.clock.now()) + 1  # bars opened by market now
        except ValueError:
            return []
        ot = kl.open_time[:last].astype(np.int64)
        keys = _bucket(ot, interval)
        opens, first = np.unique(keys, return_index=True)
        bounds = np.append(first, last)
        sel = np.ones(len(opens), dtype=bool)
        if start is not None:
            sel &= opens * 1000 >= start
        if end is not None:
            sel &= opens * 1000 <= end
        idx = np.nonzero(sel)[0]
        idx = idx[:limit] if start is not None else idx[-limit:]
        pp, qp = self._prec(symbol)
        out = []
        for j in idx:
            a, b = int(bounds[j]), int(bounds[j + 1])
            t = int(opens[j]) * 1000
            out.append(
                [
                    t,
                    _fixed(float(kl.open[a]), pp),
                    _fixed(float(kl.high[a:b].max()), pp),
                    _fixed(float(kl.low[a:b].min()), pp),
                    _fixed(float(kl.close[b - 1]), pp),
                    _fixed(float(kl.volume[a:b].sum()), qp),
                    _bucket_end(int(opens[j]), interval) * 1000 - 1,
                    "0",
                    0,
                    "0",
                    "0",
                    "0",
                ]
            )
        return out

    def _exchange_info(self) -> dict[str, Any]:
        """The shipped exchangeInfo plus the paper engine's synthetic listings (each a copy
        of the symbol it trades like, renamed)."""
        listed = self.venue.listings()
        if not listed:
            return dict(self._info, serverTime=self.server_ms())
        by_name = {s["symbol"]: s for s in self._info["symbols"]}
        extra = [dict(by_name[like], symbol=sym, pair=sym) for sym, like in sorted(listed.items()) if like in by_name]
        return dict(self._info, symbols=self._info["symbols"] + extra, serverTime=self.server_ms())

    def _premium(self, symbol: str) -> dict[str, Any]:
        mark = self.venue.mark_price(symbol)
        now = self.clock.now()
        ft, fr = load_funding(self.venue.source(symbol))
        nxt = ft[ft > now]
        last = fr[ft <= now]
        return {
            "symbol": symbol,
            "markPrice": _dec(mark),
            "indexPrice": _dec(mark),
            "estimatedSettlePrice": _dec(mark),
            "lastFundingRate": _dec(float(last[-1]) if len(last) else 0.0),
            "nextFundingTime": int(nxt[0] * 1000) if len(nxt) else 0,
            "interestRate": "0.00010000",
            "time": self.server_ms(),
        }

    # ------------------------------------------------------------------ account state

    def _k_acct(self, what: str) -> str:
        return f"{self.ns}:emu:{self._current.name}:{what}"

    def _prec(self, symbol: str) -> tuple[int, int]:
        """(pricePrecision, quantityPrecision) of ``symbol`` from the exchangeInfo served (a
        synthetic listing: its source symbol's)."""
        return self._precision.get(symbol) or self._precision.get(self.venue.source(symbol)) or (8, 8)

    def _brackets_of(self, symbol: str) -> tuple[Bracket, ...]:
        return brackets(self.venue.source(symbol))

    def _leverage(self, symbol: str, vp: Any = None) -> int:
        """The account's leverage of ``symbol``: as set by ``POST /fapi/v1/leverage``, else the
        open position's, else the symbol's last position's (Binance keeps a symbol's setting
        after its position closed; the paper engine keeps a flat position's record), else the
        paper engine's default (10)."""
        raw = cast(str | None, self.r.hget(self._k_acct("leverage"), symbol))
        if raw is not None:
            return int(raw)
        if vp is not None:
            return int(vp.leverage)
        last = cast(str | None, self.r.hget(self.venue.k_pos(symbol), "leverage"))
        return int(float(last)) if last else 10

    def _margin_type(self, symbol: str) -> str:
        """``ISOLATED`` or ``CROSSED`` as set by ``POST /fapi/v1/marginType`` (default ISOLATED:
        the paper engine's liquidation is isolated margin's)."""
        return cast(str | None, self.r.hget(self._k_acct("margin_type"), symbol)) or "ISOLATED"

    def _max_notional(self, symbol: str, leverage: int) -> float:
        """The largest position notional (USDT) ``leverage`` allows: the highest cap among the
        brackets whose leverage reaches it (Binance's ``maxNotionalValue``)."""
        caps = [b.cap for b in self._brackets_of(symbol) if b.max_leverage >= leverage]
        return max(caps) if caps else 0.0

    def _figures(self, vp: Any) -> dict[str, Any]:
        """One position's figures (USDT unless noted): amt (signed, base units), notional,
        unrealized PnL, leverage, margin type, position initial margin, maintenance margin (the
        shipped bracket containing the notional: notional × mmr − cum), isolated wallet and
        isolated margin (zero for a cross position)."""
        amt = vp.qty * vp.side.sign
        notional = amt * vp.mark_price
        lev = self._leverage(vp.symbol, vp)
        mt = self._margin_type(vp.symbol)
        upnl = (vp.mark_price - vp.entry_price) * amt
        n = abs(notional)
        tier = next((b for b in self._brackets_of(vp.symbol) if b.floor <= n < b.cap), None)
        maint = n * tier.mmr - tier.cum if tier is not None else n * 0.004
        iso_wallet = abs(amt) * vp.entry_price / lev if mt == "ISOLATED" else 0.0
        return {
            "amt": amt,
            "notional": notional,
            "upnl": upnl,
            "leverage": lev,
            "margin_type": mt,
            "pim": n / lev,
            "maint": max(0.0, maint),
            "iso_wallet": iso_wallet,
            "iso_margin": iso_wallet + upnl if mt == "ISOLATED" else 0.0,
        }

    def _positions(self, p: dict, with_leverage: bool) -> list[dict[str, Any]]:
        """``GET /fapi/v3/positionRisk`` (``with_leverage``: v2) rows of the open positions with
        Binance's field sets (:data:`binance_facts.POSITION_RISK_V3_FIELDS` / ``_V2_FIELDS``);
        positionAmt at the symbol's quantityPrecision, prices (an average entry, the mark: finer
        than the tick, as on Binance: "6679.50671178") and USDT amounts with 8 decimals. The
        stops are closePosition orders: no open-order margin, no bid/ask notional."""
        sym = self._symbol(p, required=False)
        out = []
        dual = self.venue.dual()
        now_ms = int(self.clock.now() * 1000)
        vps = self.venue.positions() if not sym else [vp for vp in (self.venue.position(sym),) if vp is not None]
        for vp in vps:
            f = self._figures(vp)
            qp = self._prec(vp.symbol)[1]
            common = {
                "symbol": vp.symbol,
                "positionSide": vp.side.value if dual else "BOTH",
                "positionAmt": _fixed(f["amt"], qp),
                "entryPrice": _fixed(vp.entry_price, 8),
                "breakEvenPrice": _fixed(vp.entry_price, 8),
                "markPrice": _fixed(vp.mark_price, 8),
                "unRealizedProfit": _fixed(f["upnl"], 8),
                "liquidationPrice": _fixed(vp.liquidation_price or 0.0, 8),
                "isolatedMargin": _fixed(f["iso_margin"], 8),
                "notional": _fixed(f["notional"], 8),
                "isolatedWallet": _fixed(f["iso_wallet"], 8),
                "updateTime": now_ms,
            }
            if with_leverage:
                row = dict(
                    common,
                    leverage=str(f["leverage"]),
                    maxNotionalValue=_num_str(self._max_notional(vp.symbol, f["leverage"])),
                    marginType=facts.MARGIN_TYPES[f["margin_type"]],
                    isAutoAddMargin="false",
                )
                out.append({k: row[k] for k in facts.POSITION_RISK_V2_FIELDS})
            else:
                row = dict(
                    common,
                    marginAsset="USDT",
                    initialMargin=_fixed(f["pim"], 8),
                    maintMargin=_fixed(f["maint"], 8),
                    positionInitialMargin=_fixed(f["pim"], 8),
                    openOrderInitialMargin=_fixed(0.0, 8),
                    adl=0,
                    bidNotional="0",
                    askNotional="0",
                )
                out.append({k: row[k] for k in facts.POSITION_RISK_V3_FIELDS})
        return out

    def _wallet(self) -> float:
        """The account's USDT wallet balance: the paper engine's (``set_balance``, default
        :data:`harvest.venues.sim.paper.DEFAULT_BALANCE`) plus realized PnL, minus commissions and
        funding paid (the engine's ledger, as its -2019 margin check reads it)."""
        pnl = self.venue.pnl()
        start = float(cast(str | None, self.r.get(self.venue.k_balance)) or DEFAULT_BALANCE)
        return start + sum(
            x.get("realized", 0.0) - x.get("commission", 0.0) - x.get("funding", 0.0) for x in pnl.values()
        )

    def _totals(self) -> dict[str, Any]:
        figs = [(vp, self._figures(vp)) for vp in self.venue.positions()]
        wallet = self._wallet()
        iso_wallet = sum(f["iso_wallet"] for _, f in figs)
        cross = [f for _, f in figs if f["margin_type"] == "CROSSED"]
        cross_upnl = sum(f["upnl"] for f in cross)
        available = self.venue.available_balance()  # what the engine's -2019 check allows
        return {
            "figs": figs,
            "wallet": wallet,
            "cross_wallet": wallet - iso_wallet,
            "cross_upnl": cross_upnl,
            "upnl": sum(f["upnl"] for _, f in figs),
            "pim": sum(f["pim"] for _, f in figs),
            "maint": sum(f["maint"] for _, f in figs),
            "available": available,
            "withdraw": max(0.0, min(available, wallet - iso_wallet)),
        }

    def _balance(self) -> list[dict[str, Any]]:
        """``GET /fapi/v2/balance`` (and v3): the USDT row (:data:`binance_facts.BALANCE_FIELDS`)."""
        t = self._totals()
        alias = hashlib.sha256(f"{self.ns}:{self._current.name}".encode()).hexdigest()[:8]
        return [
            {
                "accountAlias": alias,
                "asset": "USDT",
                "balance": _fixed(t["wallet"], 8),
                "crossWalletBalance": _fixed(t["cross_wallet"], 8),
                "crossUnPnl": _fixed(t["cross_upnl"], 8),
                "availableBalance": _fixed(t["available"], 8),
                "maxWithdrawAmount": _fixed(t["withdraw"], 8),
                "marginAvailable": True,
                "updateTime": int(self.clock.now() * 1000),
            }
        ]

    def _account(self, v2: bool = False) -> dict[str, Any]:
        """``GET /fapi/v3/account`` (single-asset mode, :data:`binance_facts.ACCOUNT_V3_FIELDS`);
        with ``v2``, ``/fapi/v2/account`` (:data:`binance_facts.ACCOUNT_V2_FIELDS`). Positions:
        the open ones (Binance's v2 lists every symbol, flat ones with zeros)."""
        t = self._totals()
        now_ms = int(self.clock.now() * 1000)
        dual = self.venue.dual()
        usdt = {
            "asset": "USDT",
            "walletBalance": _fixed(t["wallet"], 8),
            "unrealizedProfit": _fixed(t["upnl"], 8),
            "marginBalance": _fixed(t["wallet"] + t["upnl"], 8),
            "maintMargin": _fixed(t["maint"], 8),
            "initialMargin": _fixed(t["pim"], 8),
            "positionInitialMargin": _fixed(t["pim"], 8),
            "openOrderInitialMargin": _fixed(0.0, 8),
            "crossWalletBalance": _fixed(t["cross_wallet"], 8),
            "crossUnPnl": _fixed(t["cross_upnl"], 8),
            "availableBalance": _fixed(t["available"], 8),
            "maxWithdrawAmount": _fixed(t["withdraw"], 8),
            "updateTime": now_ms,
        }
        positions = []
        for vp, f in t["figs"]:
            qp = self._prec(vp.symbol)[1]
            if v2:
                positions.append(
                    {
                        "symbol": vp.symbol,
                        "initialMargin": _fixed(f["pim"], 8),
                        "maintMargin": _fixed(f["maint"], 8),
                        "unrealizedProfit": _fixed(f["upnl"], 8),
                        "positionInitialMargin": _fixed(f["pim"], 8),
                        "openOrderInitialMargin": _fixed(0.0, 8),
                        "leverage": str(f["leverage"]),
                        "isolated": f["margin_type"] == "ISOLATED",
                        "entryPrice": _fixed(vp.entry_price, 8),
                        "maxNotional": _num_str(self._max_notional(vp.symbol, f["leverage"])),
                        "bidNotional": "0",
                        "askNotional": "0",
                        "positionSide": vp.side.value if dual else "BOTH",
                        "positionAmt": _fixed(f["amt"], qp),
                        "updateTime": now_ms,
                    }
                )
                continue
            positions.append(
                {
                    "symbol": vp.symbol,
                    "positionSide": vp.side.value if dual else "BOTH",
                    "positionAmt": _fixed(f["amt"], qp),
                    "unrealizedProfit": _fixed(f["upnl"], 8),
                    "isolatedMargin": _fixed(f["iso_margin"], 8),
                    "notional": _fixed(f["notional"], 8),
                    "isolatedWallet": _fixed(f["iso_wallet"], 8),
                    "initialMargin": _fixed(f["pim"], 8),
                    "maintMargin": _fixed(f["maint"], 8),
                    "updateTime": now_ms,
                }
            )
        flags: dict[str, Any] = {}
        if v2:
            usdt["marginAvailable"] = True
            flags = {
                "feeTier": 0,
                "feeBurn": True,
                "canTrade": True,
                "canDeposit": True,
                "canWithdraw": True,
                "updateTime": 0,
                "multiAssetsMargin": False,
                "tradeGroupId": -1,
            }
        return {
            **flags,
            "totalInitialMargin": _fixed(t["pim"], 8),
            "totalMaintMargin": _fixed(t["maint"], 8),
            "totalWalletBalance": _fixed(t["wallet"], 8),
            "totalUnrealizedProfit": _fixed(t["upnl"], 8),
            "totalMarginBalance": _fixed(t["wallet"] + t["upnl"], 8),
            "totalPositionInitialMargin": _fixed(t["pim"], 8),
            "totalOpenOrderInitialMargin": _fixed(0.0, 8),
            "totalCrossWalletBalance": _fixed(t["cross_wallet"], 8),
            "totalCrossUnPnl": _fixed(t["cross_upnl"], 8),
            "availableBalance": _fixed(t["available"], 8),
            "maxWithdrawAmount": _fixed(t["withdraw"], 8),
            "assets": [usdt],
            "positions": positions,
        }

    def _set_leverage(self, p: dict) -> dict[str, Any]:
        """``POST /fapi/v1/leverage``: an integer from 1 to the symbol's largest bracket leverage
        (else -4028), kept per account and symbol; positionRisk, symbolConfig and later openings
        use it."""
        sym = self._symbol(p)
        raw = p.get("leverage")
        if not raw:
            raise _err("MANDATORY_PARAM_EMPTY_OR_MALFORMED", "leverage")
        top = max((b.max_leverage for b in self._brackets_of(sym)), default=125.0)
        if not raw.isdigit() or not 1 <= int(raw) <= top:
            raise _err("INVALID_LEVERAGE", raw)
        lev = int(raw)
        self.r.hset(self._k_acct("leverage"), sym, str(lev))
        return {"leverage": lev, "maxNotionalValue": _num_str(self._max_notional(sym, lev)), "symbol": sym}

    def _set_margin_type(self, p: dict) -> dict[str, Any]:
        """``POST /fapi/v1/marginType``: ISOLATED or CROSSED (else -1130), kept per account and
        symbol; the same type again answers -4046, a symbol with an open position -4048."""
        sym = self._symbol(p)
        mt = (p.get("marginType") or "").upper()
        if mt not in facts.MARGIN_TYPES:
            raise _err("INVALID_PARAMETER", "marginType")
        if mt == self._margin_type(sym):
            raise _err("NO_NEED_TO_CHANGE_MARGIN_TYPE")
        if self.venue.position(sym) is not None:
            raise _err("MARGIN_TYPE_CANNOT_BE_CHANGED")
        self.r.hset(self._k_acct("margin_type"), sym, mt)
        return {"code": 200, "msg": "success"}

    def _brackets(self, sym: str | None) -> Any:
        """``GET /fapi/v1/leverageBracket``: the shipped table, a synthetic listing answering with
        its source symbol's tiers (one object for ``symbol``, a list without)."""
        by = {row["symbol"]: row for row in load_brackets_raw()}
        if sym is not None:
            row = by.get(self.venue.source(sym)) or by["BTCUSDT"]
            return [dict(row, symbol=sym)]
        return list(by.values())

    def _window(self, p: dict, by_id: str | None) -> tuple[int | None, int | None, bool]:
        """``(start ms, end ms, oldest first)`` of a history request (userTrades, allOrders,
        allAlgoOrders; :data:`binance_facts.HISTORY_WINDOW_MS`): ``startTime``/``endTime`` as
        sent, at most 7 days apart (-1127), start not after end (-1023); one of them alone: the 7
        days from (to) it (the pages do not say; the narrower reading); neither, and no ``by_id``
        parameter (userTrades' fromId, allOrders' orderId, allAlgoOrders' algoId) sent: the last 7
        days to market now; with ``by_id``: no time bound. A start sent, or ``by_id``: the first
        ``limit`` rows from there, else the last ``limit`` (the most recent)."""
        try:
            start = int(p["startTime"]) if p.get("startTime") else None
            end = int(p["endTime"]) if p.get("endTime") else None
        except ValueError:
            raise ApiError(400, -1100, "Illegal characters found in a parameter.") from None
        week = facts.HISTORY_WINDOW_MS
        if start is not None and end is not None:
            if start > end:
                raise _err("START_TIME_GREATER_THAN_END_TIME")
            if end - start > week:
                raise _err("INVALID_TIME_INTERVAL", week // 3_600_000)
        elif start is not None:
            end = start + week
        elif end is not None:
            start = end - week
        elif not (by_id and p.get(by_id)):
            end = self.server_ms()
            start = end - week
        return start, end, p.get("startTime") is not None or bool(by_id and p.get(by_id))

    @staticmethod
    def _limit(p: dict) -> int:
        """``limit`` of a history request: default 500, at most 1000 (-1100 when not a number)."""
        try:
            return max(1, min(facts.HISTORY_MAX_LIMIT, int(p.get("limit", facts.HISTORY_DEFAULT_LIMIT))))
        except ValueError:
            raise ApiError(400, -1100, "Illegal characters found in a parameter.") from None

    def _all_orders(self, sym: str, p: dict, algo: bool) -> list[dict[str, Any]]:
        """``GET /fapi/v1/allOrders`` (``algo``: ``/fapi/v1/allAlgoOrders``): the orders of
        ``sym`` by id, oldest first, ``orderId`` (``algoId``): from that id on, else in the
        window of :meth:`_window` by creation time; ``limit`` (default 500, at most 1000). Not
        answered, as on Binance: an order CANCELED or EXPIRED without a fill created more than 3
        days ago, any order created more than 90 days ago (market time)."""
        id_param = "algoId" if algo else "orderId"
        limit = self._limit(p)
        start, end, first = self._window(p, id_param)
        try:
            from_id = int(p[id_param]) if p.get(id_param) else None
        except ValueError:
            raise ApiError(400, -1100, "Illegal characters found in a parameter.") from None
        now = self.server_ms()
        rows = []
        for o in sorted(
            (o for o in self.venue.orders() if o.symbol == sym and o.algo == algo), key=lambda o: o.order_id
        ):
            made = int((o.create_time if o.create_time is not None else o.update_time) * 1000)
            if made + facts.ORDERS_KEPT_MS < now:
                continue
            if (
                o.status in ("CANCELED", "EXPIRED")
                and o.executed_qty == 0
                and made + facts.ORDERS_UNFILLED_KEPT_MS < now
            ):
                continue
            if from_id is not None and o.order_id < from_id:
                continue
            if (start is not None and made < start) or (end is not None and made > end):
                continue
            rows.append(o)
        rows = rows[:limit] if first else rows[-limit:]
        return [_algo_json(o) if algo else _queried_json(o) for o in rows]

    def _trades(self, sym: str, p: dict) -> list[dict[str, Any]]:
        """``GET /fapi/v1/userTrades``: the account's fills of ``sym`` (openings, closes and
        triggered stops) from the paper engine's trade log, oldest first; ``orderId``,
        ``fromId``, ``startTime``/``endTime`` (the 7-day window of :meth:`_window`; ``fromId``
        with either: -1128) and ``limit`` (default 500, at most 1000) as Binance takes them.
        Times are market times (ms)."""
        limit = self._limit(p)
        if p.get("fromId") and (p.get("startTime") or p.get("endTime")):
            raise _err("OPTIONAL_PARAMS_BAD_COMBO")
        start, end, first = self._window(p, "fromId")
        try:
            order_id = int(p["orderId"]) if p.get("orderId") else None
            from_id = int(p["fromId"]) if p.get("fromId") else None
        except ValueError:
            raise ApiError(400, -1100, "Illegal characters found in a parameter.") from None
        rows = [
            t
            for t in self.venue.trades()
            if t["symbol"] == sym
            and (order_id is None or t["orderId"] == order_id)
            and (from_id is None or t["id"] >= from_id)
            and (start is None or t["time"] * 1000 >= start)
            and (end is None or t["time"] * 1000 <= end)
        ]
        rows = rows[:limit] if first else rows[-limit:]
        return [
            {
                "symbol": sym,
                "id": t["id"],
                "orderId": t["orderId"],
                "side": t["side"],
                "positionSide": t["positionSide"],
                "price": _dec(t["price"]),
                "qty": _dec(t["qty"]),
                "quoteQty": _dec(t["qty"] * t["price"]),
                "realizedPnl": _dec(t["realizedPnl"]),
                "commission": _dec(t["commission"]),
                "commissionAsset": "USDT",
                "buyer": t["side"] == "BUY",
                "maker": False,
                "time": int(t["time"] * 1000),
            }
            for t in rows
        ]

    def _income(self, p: dict) -> list[dict[str, Any]]:
        """``GET /fapi/v1/income``: funding settlements (``incomeType=FUNDING_FEE``; other types
        have no rows here) of one or every symbol, oldest first, ``startTime``/``endTime`` (ms,
        market time) and ``limit`` (default 100, at most 1000)."""
        if p.get("incomeType") not in (None, "FUNDING_FEE"):
            return []
        sym = self._symbol(p, required=False)
        try:
            start = int(p["startTime"]) if p.get("startTime") else None
            end = int(p["endTime"]) if p.get("endTime") else None
            limit = max(1, min(1000, int(p.get("limit", 100))))
        except ValueError:
            raise ApiError(400, -1100, "Illegal characters found in a parameter.") from None
        rows = [
            x
            for x in self.venue.income()
            if (sym is None or x["symbol"] == sym)
            and (start is None or x["time"] * 1000 >= start)
            and (end is None or x["time"] * 1000 <= end)
        ]
        return [
            {
                "symbol": x["symbol"],
                "incomeType": "FUNDING_FEE",
                "income": _dec(x["income"]),
                "asset": "USDT",
                "info": "",
                "time": int(x["time"] * 1000),
                "tranId": x["tranId"],
                "tradeId": "",
            }
            for x in rows[:limit]
        ]

    def _order(self, method: str, p: dict) -> dict[str, Any]:
        v = self.venue
        sym = self._symbol(p)
        if method == "POST":
            otype = p.get("type", "")
            if otype in CONDITIONAL_TYPES:
                raise _err("STOP_ORDER_SWITCH_ALGO")
            if otype != "MARKET":
                raise _err("INVALID_ORDER_TYPE")
            cid = p.get("newClientOrderId") or f"emu-{v._next_order_id()}"
            _check_client_id(cid)
            # POST /fapi/v1/leverage's, for an opening
            lev = cast(str | None, self.r.hget(self._k_acct("leverage"), sym))
            opening: dict[str, Any] = {"leverage": float(lev)} if lev is not None else {}
            o = v.submit_market(
                sym,
                p.get("side", ""),
                p.get("quantity", ""),
                cid,
                reduce_only=p.get("reduceOnly") == "true",
                position_side=p.get("positionSide"),
                **opening,
            )
            if p.get("newOrderRespType") != "RESULT":  # ACK: the order as accepted
                return dict(_order_json(o), status="NEW", executedQty="0", cumQuote="0", avgPrice="0.00")
            return _order_json(o)
        o = self._find(sym, p, algo=False)
        if method == "DELETE":
            return _order_json(v.cancel_order(sym, o.client_order_id))
        return _queried_json(o)

    def _algo(self, method: str, p: dict) -> dict[str, Any]:
        v = self.venue
        sym = self._symbol(p)
        if method == "POST":
            if p.get("algoType") != "CONDITIONAL":
                raise ApiError(400, -1116, "Invalid algoType.")
            if p.get("type") != "STOP_MARKET" or p.get("closePosition") != "true":
                raise ApiError(400, -1116, "The emulator serves closePosition STOP_MARKET algo orders only.")
            if "quantity" in p:
                raise _err("PARAM_NOT_REQUIRED", "quantity")
            cid = p.get("clientAlgoId") or f"emu-{v._next_order_id()}"
            _check_client_id(cid)
            o = v.place_stop(
                sym,
                p.get("side", ""),
                p.get("triggerPrice", ""),
                cid,
                position_side=p.get("positionSide"),
                working_type=p.get("workingType", "CONTRACT_PRICE"),  # Binance's default
            )
            return _algo_json(o)
        o = self._find(sym, p, algo=True)
        if method == "DELETE":
            v.cancel_order(sym, o.client_order_id)
            return {"algoId": o.order_id, "clientAlgoId": o.client_order_id, "code": "200", "msg": "success"}
        return _algo_json(o)

    def _find(self, sym: str, p: dict, algo: bool) -> OrderResult:
        cid = p.get("clientAlgoId" if algo else "origClientOrderId")
        oid = p.get("algoId" if algo else "orderId")
        if cid:
            return self.venue.get_order(sym, cid, conditional=algo)
        if oid:
            for o in self.venue.orders():
                if str(o.order_id) == oid and o.symbol == sym and o.algo == algo:
                    return o
            raise VenueError(-2013, "Order does not exist.")
        raise ApiError(400, -1102, "Either orderId or origClientOrderId must be sent.")

    # ------------------------------------------------------------------ admin

    def _admin(self, h: BaseHTTPRequestHandler, method: str, path: str, body: str) -> None:
        if path == "/_emu/hello" and method == "GET":  # the handshake harvest's paper venue requires
            # the streams' URL as this client reaches the emulator (its Host header), on the streams' port
            host = urlsplit("//" + (h.headers.get("Host") or "127.0.0.1")).hostname or "127.0.0.1"
            ws = f"ws://{host}:{self.streams.port}/" if self.streams else None
            hello = {"emulator": HANDSHAKE, "namespace": self.ns, "stream_url": ws}
            # the challenge: HMAC-SHA256 of "harvest-fapi-emulator:<nonce>" with the secret of the
            # account whose key is sent (harvest.venues.binance.handshake_proof); none for an unknown key
            nonce = dict(parse_qsl(urlsplit(h.path).query)).get("nonce", "")
            acct = self.accounts.get(h.headers.get("X-MBX-APIKEY") or "")
            if acct is not None and re.fullmatch(r"[0-9a-f]{16,128}", nonce):
                msg = f"{HANDSHAKE}:{nonce}".encode()
                hello["proof"] = hmac.new(acct.secret, msg, hashlib.sha256).hexdigest()
            return self._reply(h, 200, hello)
        if path == "/_emu/orderlog" and method == "GET":
            return self._reply(h, 200, self.order_log())
        if path == "/_emu/faults":
            if method == "GET":
                return self._reply(
                    h,
                    200,
                    {"armed": self.faults.armed(), "fired": self.faults.fired(), "skew_ms": self.faults.skew_ms()},
                )
            if method == "DELETE":
                self.faults.clear()
                return self._reply(h, 200, {"cleared": True})
            if method == "PUT":
                try:
                    d = json.loads(body or "{}")
                    if "skew_ms" in d:
                        self.faults.set_skew(int(d["skew_ms"]))
                    for f in d.get("faults", []):
                        self.faults.inject(
                            f["endpoint"],
                            f["kind"],
                            int(f.get("times", 1)),
                            float(f.get("latency_s", 0.0)),
                            float(f.get("retry_after", 1.0)),
                            float(f.get("fraction", 0.4)),
                        )
                except (ValueError, KeyError, TypeError) as e:
                    return self._reply(h, 400, {"error": str(e)})
                return self._reply(h, 200, self.faults.armed())
        self._reply(h, 404, {"error": f"unknown admin route {method} {path}"})


_PUBLIC = ("/fapi/v1/ping", "/fapi/v1/time", "/fapi/v1/exchangeInfo", "/fapi/v1/premiumIndex", "/fapi/v1/klines")
