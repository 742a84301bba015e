"""Session set-up: a private redis-server (or HARVEST_TEST_REDIS_URL) and the HARVEST_*
environment, configured before any test module imports the Celery app."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import settings as hypothesis_settings

from tests.harness import RedisServer

# Hypothesis profiles: "ci" (default) keeps the suite quick; HARVEST_HYPOTHESIS_PROFILE=slow
# runs at least 10 000 examples per property (the fuzzing of tests/test_fuzz.py).
hypothesis_settings.register_profile("ci", max_examples=150)
hypothesis_settings.register_profile("slow", max_examples=10_000)
hypothesis_settings.load_profile(os.environ.get("HARVEST_HYPOTHESIS_PROFILE", "ci"))

_SERVER: RedisServer | None = None
NAMESPACE = "t" + uuid.uuid4().hex[:8]


def pytest_configure(config):
    global _SERVER
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


def pytest_unconfigure(config):
    if _SERVER is not None:
        _SERVER.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["HARVEST_REDIS_URL"]


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
