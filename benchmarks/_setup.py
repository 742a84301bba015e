"""Shared set-up of the benchmarks (see :mod:`harvest.ops.loadgen`, which ``harvest chaos``
uses too); this module puts the repository on ``sys.path`` for scripts run by path."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harvest.ops.loadgen import (  # noqa: E402,F401
    T0,
    celery_app,
    clean,
    env_for,
    fresh_namespace,
    mark_at_r,
    open_positions,
    paper_of,
    runtime,
    settings_of,
    start_emulator,
    start_worker,
    symbols,
)
