"""Fixtures of the integration suite (a real Redis, see ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from harvest.services.runtime import Runtime, build_runtime
from settings import load_settings
from tests.pipeline_helpers import clean


@pytest.fixture()
def rt() -> Runtime:
    """A runtime on the test namespace (paper venue), with a clean slate: no position, plan,
    book entry or market state (:func:`harvest.ops.loadgen.clean`). A module whose tests need
    workers or the emulator running first overrides it: ``def rt(workers, rt): return rt``."""
    runtime = build_runtime(load_settings())
    clean(runtime)
    return runtime
