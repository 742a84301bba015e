"""The live trigger publisher of ``harvest streams``: when a mark crosses a position's trigger
(:class:`harvest.services.streams.MarketStreams`), that position's chain is published on the
deployment's Celery app at once instead of waiting for the next beat scan."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harvest.services.runtime import Runtime
    from harvest.services.streams import Fire

log = logging.getLogger("harvest.streams")


def chain_publisher(rt: Runtime) -> Fire:
    """A ``fire(account, symbol)`` for :func:`harvest.services.streams.run_streams` that
    publishes the full chain of ``account``'s ``symbol`` (:func:`workflows.full_chain`) on the
    scan queue of ``rt``'s deployment, expiring after the plan TTL (``HARVEST_PLAN_TTL_S``).

    It returns at once: the chain is published from a thread of its own, so a broker that does
    not answer (kombu retrying its connection) never holds the mark streams' event loop. A
    publication that fails is logged as a warning and dropped: the beat scan is the safety net.
    Imports the Celery app (:mod:`tasks.app`) when called."""
    from tasks.app import app  # the deployment's Celery app: the chains' broker and queues
    from workflows import full_chain

    queue = rt.settings.queue("scan")
    publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harvest-fire")

    def publish(account: str, symbol: str) -> None:
        try:
            # app given: Celery's current app is per thread, and this is not the main one
            full_chain(symbol, app=app, account=account).apply_async(queue=queue, expires=rt.settings.plan_ttl_s)
        except Exception as e:  # the beat scan is the safety net
            log.warning("chain of %s %s not published: %s: %s", account, symbol, type(e).__name__, str(e)[:200])

    def fire(account: str, symbol: str) -> None:  # a mark crossed a trigger: that position's chain now
        publisher.submit(publish, account, symbol)

    return fire
