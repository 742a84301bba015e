"""Bare no-op tasks on harvest's own Celery app: the baseline that
:mod:`benchmarks.performance` measures harvest's stages against — same broker, same
configuration (acks late, prefetch 1, JSON, task events), same queues, same worker
processes. A worker loads them with ``-I benchmarks.noop_tasks``; harvest never does."""

from __future__ import annotations

from harvest.services.runtime import get_runtime
from tasks.app import app


@app.task(name="bench.noop")
def noop(prev=None, *args):
    """Does nothing; passes its input on down the chain."""
    return prev


@app.task(name="bench.done")
def done(prev=None, key: str = ""):
    """The last task of a baseline chain: counts the chain done (one INCR on ``key``)."""
    get_runtime().r.incr(key)
