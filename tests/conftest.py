"""Session set-up shared by the three suites:

* ``tests/unit`` — pure code, no server of any kind; the whole set runs in seconds
  (``pytest tests/unit``). Run alone, it gets an unreachable Redis URL, so a test that
  touched Redis by mistake fails at once instead of passing against a stray server.
* ``tests/integration`` — a real Redis, real Celery workers, the python-binance client against
  the local fapi emulator.
* ``tests/system`` — chaos, the demo, deploy manifests, benchmarks' harness.

Outside a unit-only run, a private redis-server is started (or HARVEST_TEST_REDIS_URL used)
and the HARVEST_* environment configured before any test module imports the Celery app. Each
test is marked ``unit``, ``integration`` or ``system`` by its folder (``-m`` selects).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.harness import RedisServer
from tests.kill_theta import KILL_SCORE_ENV

# Hypothesis profiles: "ci" (default) keeps the suite quick; HARVEST_HYPOTHESIS_PROFILE=slow
# runs at least 10 000 examples per property (the fuzzing of tests/integration/test_fuzz.py).
hypothesis_settings.register_profile("ci", max_examples=150)
hypothesis_settings.register_profile("slow", max_examples=10_000)
hypothesis_settings.load_profile(os.environ.get("HARVEST_HYPOTHESIS_PROFILE", "ci"))

_SERVER: RedisServer | None = None
NAMESPACE = "t" + uuid.uuid4().hex[:8]
TESTS = Path(__file__).resolve().parent
SUITES = ("unit", "integration", "system")
#: Where nothing listens: a unit-only run's Redis URL.
NO_REDIS = "redis://127.0.0.1:1/0"


def _unit_only(config: pytest.Config) -> bool:
    """Whether every path this run was given lies under tests/unit."""
    base = Path(config.invocation_params.dir)
    args = [a.split("::")[0] for a in config.args if not a.startswith("-")]
    return bool(args) and all((base / a).resolve().is_relative_to(TESTS / "unit") for a in args)


def pytest_configure(config: pytest.Config) -> None:
    global _SERVER
    for suite in SUITES:
        config.addinivalue_line("markers", f"{suite}: a test of tests/{suite} (set by its folder)")
    if _unit_only(config):
        url = NO_REDIS
    else:
        url = os.environ.get("HARVEST_TEST_REDIS_URL")
        if not url:
            _SERVER = RedisServer().start()
            url = _SERVER.url
    os.environ["HARVEST_REDIS_URL"] = url
    os.environ.pop("HARVEST_BROKER_URL", None)
    os.environ["HARVEST_NAMESPACE"] = NAMESPACE
    os.environ["HARVEST_MODE"] = "live"
    os.environ["HARVEST_PLAN_TTL_S"] = "30"
    os.environ["HARVEST_PAPER_REPLAY_SPEED"] = "0"
    os.environ["HARVEST_THROWAWAY_STATE"] = "true"  # private redis-servers without AOF
    os.environ["HARVEST_TEST_STRICT_COUNTERS"] = "1"  # a counter name outside harvest.store.counter_names raises
    os.environ.update(KILL_SCORE_ENV)  # the kill score the tests exercise (tests/kill_theta.py)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVER is not None:
        _SERVER.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(TESTS)
        if rel.parts and rel.parts[0] in SUITES:
            item.add_marker(getattr(pytest.mark, rel.parts[0]))


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ["HARVEST_REDIS_URL"]
    if url == NO_REDIS:
        pytest.fail("a unit test asked for Redis: it belongs in tests/integration")
    return url


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """A RabbitMQ broker URL: HARVEST_TEST_AMQP_URL, else the standard local port when one
    answers (``.ci/run`` starts RabbitMQ when none does); otherwise the test is skipped."""
    import socket

    url = os.environ.get("HARVEST_TEST_AMQP_URL")
    if url:
        return url
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (set HARVEST_TEST_AMQP_URL, or run the suite with .ci/run)")
    return "amqp://guest:guest@127.0.0.1:5672//"
