"""The beat scan: evaluate every open position in one batch and start the
``propose → guard → execute → confirm`` chain only for positions that need action.

Each decision's lineage (:func:`harvest.domain.plans.next_attempt`) says what to do with it: start
it (``new``, or ``retry`` — the next attempt of a decision whose last plan ended without
effect, after its backoff), or not: a true ``repeat`` (its plan is in flight or took effect),
``waiting`` for its backoff, or ``abandoned`` (a rejection that cannot change in the epoch).
A position whose in-flight lock another plan holds is skipped (``busy``). The counts of
decisions retrying and abandoned (by reason) are kept as the scan saw them last
(``<ns>:decisions:<account>``), for the scorecard and ``/metrics``.

A deployment with several accounts (``HARVEST_ACCOUNTS``) scans each on its own: beat's scan
starts a Celery group of ``harvest.scan_positions(account)`` on the scan queue, each expiring
with the beat interval, so that workers scan accounts in parallel: one task per account, or
— ``HARVEST_SCAN_ACCOUNTS_PER_TASK`` > 1, for a large fleet — Celery's ``chunks`` of that many
accounts per task (fewer messages per tick; a slow exchange then holds up its chunk-mates).

While ``harvest streams`` holds the account, the scan also leaves each position's trigger (the
mark at which its next decision falls due, :mod:`harvest.domain.triggers`) for it: a streamed
mark that crosses one starts that position's chain at once, between two ticks.

The scan itself is :func:`harvest.services.scan.scan_account`; this task fans out over accounts
and hands it the canvases it may start.
"""

from __future__ import annotations

from typing import Any

from celery import group

from harvest.domain.models import Decision
from harvest.services.decide import chain_payload
from harvest.services.runtime import get_runtime
from harvest.services.scan import scan_account
from tasks.app import app
from tasks.common import account_runtime, contract
from workflows import action_chain


@app.task(**contract("harvest.scan_positions", acks_late=True, max_retries=0))
def scan_positions(account: str | None = None) -> dict[str, Any]:
    """One scan of ``account`` (None: the deployment's only account, or — with several — a
    group of one scan per account, answered ``{"accounts": n}``). Returns ``{"account",
    "positions", "actionable", "started", "retries", "duplicates", "waiting", "abandoned",
    "busy", "seconds"}`` (counts; wall seconds); ``duplicates`` counts true repeats. An account
    the deployment does not manage is recorded as a malformed message (``{}``)."""
    base = get_runtime()
    if account is None and len(base.accounts) > 1:
        s = base.settings
        per = s.scan_accounts_per_task
        if per == 1:
            sigs = group(scan_positions.si(a) for a in base.accounts)
        else:  # Celery's chunks: each task scans ``per`` accounts in turn (fewer messages per tick)
            sigs = scan_positions.chunks(((a,) for a in base.accounts), per).group()
        sigs.apply_async(queue=s.queue("scan"), expires=s.scan_interval_s)
        return {"accounts": len(base.accounts)}
    rt = account_runtime(base, "scan_positions", {"account": account}, account or base.accounts[0])
    if rt is None:
        return {}

    def start_chain(d: Decision, scanned_at: float) -> None:
        action_chain(*chain_payload(d, scanned_at)).apply_async()

    def start_recovery() -> None:
        app.send_task("harvest.reconcile", queue=rt.settings.queue("housekeeping"))

    return scan_account(rt, start_chain, start_recovery).result()
