"""A task that takes its time, loaded into test workers with ``-I tests.slow_tasks``."""

import time

from harvest.services.runtime import get_runtime
from tasks.app import app


@app.task(name="test.sleep", acks_late=True)
def sleep(seconds: float) -> float:
    """Count a start under ``<ns>:test:sleep_started``, then take ``seconds``."""
    rt = get_runtime()
    rt.r.incr(f"{rt.settings.namespace}:test:sleep_started")
    time.sleep(seconds)  # the work itself: the test needs a task running during a broker outage
    return seconds
