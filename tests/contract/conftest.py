"""The venue contract suite's venues: one set of tests (``tests/contract/test_venue_contract.py``)
runs against each :class:`harvest.venues.base.Venue` harvest can trade on.

* ``paper`` — the in-process paper engine (:class:`harvest.venues.sim.paper.PaperVenue`) on the
  test Redis, its market clock standing at :data:`tests.pipeline_helpers.T0`;
* ``emulator`` — :class:`harvest.venues.binance.BinanceVenue`, the real python-binance client,
  against the local fapi emulator (``harvest emulator``, in-process, on a free port), as
  ``tests/integration/test_binance_venue.py`` starts it;
* ``testnet`` — the same adapter against Binance's futures testnet, only when the user opts in:
  ``HARVEST_VENUE=testnet``, ``HARVEST_LIVE_TRADING_OPT_IN=true``, ``HARVEST_API_KEY`` and
  ``HARVEST_API_SECRET`` set (testnet keys), and ``-m testnet`` on the command line. Otherwise it
  is skipped with the reason. It places real testnet orders on BTCUSDT and ETHUSDT, and before
  and after each test cancels the stops and closes the positions of those symbols.

Each test gets a :class:`VenueUnderTest`: the venue, the simulator behind it when there is one
(its controls: the mark, the balance), and the last response's headers (Binance venues).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from harvest.data import SymbolFilters
from harvest.domain.models import Side
from harvest.venues.base import Venue, VenueError
from harvest.venues.sim.clock import MarketClock
from harvest.venues.sim.paper import PaperVenue
from tests.pipeline_helpers import T0

#: The emulator's API key and secret (any pair: it is the emulator's own account).
KEY, SECRET = "contract-key", "contract-secret"
#: The symbols the suite trades (cleaned before and after each test on the testnet).
SYMBOLS = ("BTCUSDT", "ETHUSDT")
#: The environment the testnet venue needs (the user's opt-in), with what each must be.
TESTNET_ENV = {
    "HARVEST_VENUE": "testnet",
    "HARVEST_LIVE_TRADING_OPT_IN": "true",
    "HARVEST_API_KEY": None,  # set, any value
    "HARVEST_API_SECRET": None,
}


def testnet_refusal(config: pytest.Config) -> str | None:
    """Why the testnet venue does not run in this session, or None when the user opted in: a
    ``-m`` expression that selects the ``testnet`` marker, and :data:`TESTNET_ENV`."""
    from _pytest.mark.expression import Expression

    expr = config.option.markexpr or ""
    if not expr or not Expression.compile(expr).evaluate(lambda name: name in ("testnet", "contract")):
        return "the testnet contract runs only when asked for: pytest tests/contract -m testnet"
    missing = [
        k for k, want in TESTNET_ENV.items() if not os.environ.get(k) or (want is not None and os.environ[k] != want)
    ]
    if missing:
        return "testnet opt-in incomplete: " + ", ".join(
            f"{k}={TESTNET_ENV[k]}" if TESTNET_ENV[k] else f"{k} (testnet key)" for k in missing
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/contract/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.contract)


@dataclass
class VenueUnderTest:
    """One venue of the contract: ``venue`` (what harvest calls), ``sim`` (the paper engine
    behind it on ``paper`` and ``emulator``: a test's controls, None on the testnet)."""

    name: str
    venue: Venue
    sim: PaperVenue | None
    made: list[str] = field(default_factory=list)

    @property
    def binance(self) -> bool:
        """Whether the venue is python-binance's (emulator, testnet): response headers exist."""
        return self.name != "paper"

    def headers(self) -> dict[str, str]:
        """The last response's HTTP headers (Binance venues; {} on the paper engine)."""
        resp = getattr(getattr(self.venue, "client", None), "response", None)
        return dict(resp.headers) if resp is not None else {}

    @staticmethod
    def cid() -> str:
        """A fresh clientOrderId of harvest's form (``hv-<16 hex>-0``)."""
        return f"hv-{uuid.uuid4().hex[:16]}-0"

    def open_order(self, symbol: str, side: Side, qty: float, leverage: float) -> Any:
        """An opening MARKET order as the exchange checks it (margin, MIN_NOTIONAL, the
        bracket's cap). Binance venues: :meth:`Venue.open_position`, a real order. The paper
        engine's ``open_position`` is its fixture (no acceptance checks, by design: a test's
        world is set up as it says); its order path with the checks is ``submit_market``, the
        very call the emulator makes for ``POST /fapi/v1/order``."""
        if self.name == "paper":
            assert self.sim is not None
            return self.sim.submit_market(
                symbol, side.open_order_side, f"{qty:.3f}", self.cid(), reduce_only=False, leverage=leverage
            )
        return self.venue.open_position(symbol, side, qty, leverage)

    def flatten(self) -> None:
        """Cancel the stops and close the positions of :data:`SYMBOLS` (the testnet's account
        is the user's: the suite leaves it as it found it)."""
        for s in SYMBOLS:
            for o in self.venue.open_orders(s, algo=True):
                try:
                    self.venue.cancel_stop(s, o.client_order_id)
                except VenueError:
                    pass  # triggered or gone meanwhile
            p = self.venue.position(s)
            if p is not None:
                q = self.venue.filters(s).round_qty(p.qty)
                self.venue.close_market(s, p.side.close_order_side, SymbolFilters.fmt(q), self.cid())


def _fresh(redis_url: str, ns: str) -> tuple[redis.Redis, MarketClock]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for k in r.scan_iter(f"{ns}:*"):
        r.delete(k)
    clock = MarketClock(r, ns, T0, 0.0)
    clock.set(T0, 0.0)
    return r, clock


@pytest.fixture(params=["paper", "emulator", pytest.param("testnet", marks=pytest.mark.testnet)])
def vut(request: pytest.FixtureRequest, redis_url: str) -> Iterator[VenueUnderTest]:
    """The venue under test (parametrized: paper, emulator, testnet)."""
    name = request.param
    ns = f"contract-{name}-{uuid.uuid4().hex[:6]}"
    if name == "paper":
        r, clock = _fresh(redis_url, ns)
        eng = PaperVenue(r, ns, "paper", clock)
        yield VenueUnderTest(name, eng, eng)
        return
    from harvest.venues.binance import BinanceVenue, make_client

    if name == "emulator":
        from harvest.venues.sim.emulator import Emulator

        r, clock = _fresh(redis_url, ns)
        emu = Emulator(r, ns, "paper", KEY, SECRET, clock=clock).start()
        try:
            # the emulator's server clock is the replay's market clock: the venue stamps and
            # measures in it, as harvest.services.runtime.build_venue sets it up
            bv = BinanceVenue(r, ns, lambda: make_client(KEY, SECRET, emu.url, False, 5.0, 5000), 1800, clock=clock)
            yield VenueUnderTest(name, bv, emu.venue)
        finally:
            emu.stop()
        return
    why = testnet_refusal(request.config)
    if why:
        pytest.skip(why)
    key, secret = os.environ["HARVEST_API_KEY"], os.environ["HARVEST_API_SECRET"]
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    bv = BinanceVenue(r, ns, lambda: make_client(key, secret, None, True, 10.0, 5000), 1200, account="contract")
    h = VenueUnderTest(name, bv, None)
    h.flatten()
    try:
        yield h
    finally:
        h.flatten()
        for k in r.scan_iter(f"{ns}:*"):
            r.delete(k)
