"""The worker's consumer: Celery's, with one guard for a broker outage.

Found (issue 19.4, celery 5.7.0 with kombu 5.7.0, Redis broker): a broker Redis that goes away
for ~1.5 s while an acks-late task runs ended the worker with ``Unrecoverable error:
AttributeError("'NoneType' object has no attribute 'hostname'")`` (5 of 5). Celery 5.7's
``Consumer.on_connection_error_after_connected`` first calls ``connection.collect()``, which
drops the transport's reference to its connection, and then ``connection.close()``; closing
the default channel restores the unacknowledged message of the running task through a new
Redis client, whose parameters are read from that dropped reference (kombu's
``Channel._connparams``: ``self.connection.client.hostname``). The AttributeError is not a
connection error, so ``ignore_errors`` lets it through and the worker stops. Celery 5.6.2
does not close after ``collect()`` (the regression is 5.7's); no released kombu avoids it.

The guard: that one close ignores the AttributeError (logged). Nothing is lost: the broker is
down at that moment, so the restore could not have run anyway; the unacknowledged message
stays in the transport's unacked set and comes back after the visibility timeout, as for a
worker that died. The consumer then reconnects as usual (``broker_connection_max_retries``
None). Configured as ``worker_consumer`` in :mod:`settings.celery`; tested by
``tests/test_worker_faults.py``.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer

log = logging.getLogger("harvest")


class HarvestConsumer(Consumer):
    """Celery's consumer; a broker outage never ends the worker (module docstring)."""

    def on_connection_error_after_connected(self, exc):
        conn = self.connection
        if conn is not None:
            close = conn.close

            def guarded_close():
                try:
                    close()
                except AttributeError as e:  # celery 5.7 closes after collect(); see module docstring
                    log.warning(
                        "broker connection closed after it was collected (%r); unacknowledged messages "
                        "return after the visibility timeout",
                        e,
                    )

            conn.close = guarded_close
        return super().on_connection_error_after_connected(exc)
