"""python-binance's websocket side for ``harvest streams`` (issue 23): an ``AsyncClient`` and a
``BinanceSocketManager`` pointed at the venue's streams. I/O only; what the events mean is
:mod:`harvest.domain.stream_events`, what is done with them :mod:`harvest.services.streams`.

* live: Binance's ``wss://fstream.binance.com/`` (python-binance's default);
* testnet: python-binance's ``FSTREAM_TESTNET_URL``;
* paper through the emulator (``fapi_url``): the ``stream_url`` the emulator's handshake
  answers — a loopback address, or the emulator's own host when it runs on another (its
  handshake proved the account's secret), checked like ``fapi_url``; an emulator that serves no streams
  is a :class:`VenueError`.

The user data stream's listenKey is created, kept alive (PUT every ``keepalive_s``) and
re-created by python-binance's ``KeepAliveWebsocket``; reconnection after a drop by its
``ReconnectingWebsocket`` (which reports the drop as ``{"e": "error"}``). Its read loop
notices a close only when its ``recv`` wait (``TIMEOUT``, 10 s) ends, so closing can take that
long; :mod:`harvest.services.streams` bounds it by cancelling.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from binance import AsyncClient, BinanceSocketManager
from binance.exceptions import ReadLoopClosed as StreamClosed
from binance.ws.constants import WSListenerState
from binance.ws.reconnecting_websocket import ReconnectingWebsocket

from harvest.venues.base import VenueError, VenueReason
from harvest.venues.binance import emulator_handshake
from settings import HarvestSettings, is_loopback_url


def stream_url_of(s: HarvestSettings) -> str | None:
    """The websocket base URL for ``s`` (None: python-binance's default for the venue).
    Raises VenueError when the emulator serves no streams or names a non-loopback URL."""
    if s.venue != "paper":
        return None
    if not s.fapi_url:
        raise VenueError(-9001, "the in-process paper venue has no streams: run the fapi emulator (HARVEST_FAPI_URL)")
    key = s.api_key.get_secret_value() if s.api_key else None
    secret = s.api_secret.get_secret_value() if s.api_secret else None
    url = emulator_handshake(s.fapi_url, s.venue_timeout_s, key, secret).get("stream_url")
    # on loopback, or on the host whose handshake proved the account's secret (another host's emulator)
    if not url or not (is_loopback_url(url) or urlsplit(url).hostname == urlsplit(s.fapi_url).hostname):
        raise VenueError(
            -9001, f"the emulator at {s.fapi_url} serves no streams on a loopback address or its own host ({url!r})"
        )
    return url


def socket_manager(
    s: HarvestSettings, url: str | None, keepalive_s: float = 30 * 60, public: bool = False
) -> tuple[AsyncClient, BinanceSocketManager]:
    """(client, manager) for the account of ``s`` with streams at ``url`` (:func:`stream_url_of`;
    call this inside the event loop that will use them); credentials from the settings
    (environment or secret files, never arguments); ``public``: no credentials, for market
    streams only. Close with ``await client.close_connection()``."""
    if public:
        client = AsyncClient(testnet=s.venue == "testnet")
    elif not (s.api_key and s.api_secret):
        raise VenueError(
            -2015, f"the streams of account {s.account!r} need its API key and secret", 401, reason=VenueReason.AUTH
        )
    else:
        client = AsyncClient(
            s.api_key.get_secret_value(), s.api_secret.get_secret_value(), testnet=s.venue == "testnet"
        )
    if s.fapi_url:
        client.FUTURES_URL = s.fapi_url.rstrip("/")
    bsm = BinanceSocketManager(client, user_timeout=keepalive_s)
    if url:
        bsm.FSTREAM_URL = url
    return client, bsm


def user_socket(bsm: BinanceSocketManager) -> ReconnectingWebsocket:
    """The account's user data stream (an async context manager; ``recv()`` gives each message
    as a dict; raises :data:`StreamClosed` once python-binance has given up reconnecting)."""
    return bsm.futures_user_socket()


def mark_price_socket(bsm: BinanceSocketManager, symbols: list[str]) -> ReconnectingWebsocket:
    """One combined stream of ``<symbol>@markPrice@1s`` and ``<symbol>@kline_1m`` for ``symbols``."""
    return bsm.futures_multiplex_socket([f"{s.lower()}@{k}" for s in symbols for k in ("markPrice@1s", "kline_1m")])


def is_streaming(sock: ReconnectingWebsocket) -> bool:
    """Whether the socket is connected (not reconnecting after a drop)."""
    return sock.ws_state == WSListenerState.STREAMING


__all__ = ["StreamClosed", "is_streaming", "mark_price_socket", "socket_manager", "stream_url_of", "user_socket"]
