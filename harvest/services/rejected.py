"""Messages a stage does not execute: recorded on ``<ns>:stream:rejected`` and counted (the
service behind :mod:`tasks.common`'s load-or-reject plumbing and the stages' refusals)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from harvest.services.runtime import Runtime
from harvest.store.records import SCHEMA

log = logging.getLogger("harvest")


def record_rejected(rt: Runtime, stage: str, payload: Any, error: Exception | str, counter: str = "malformed") -> None:
    """Record a malformed message on ``<ns>:stream:rejected`` (entry fields ``v``, ``stage``,
    ``error``, ``payload`` (JSON, at most 2000 characters), ``ts``) and count it
    (``<counter>:<stage>``); log one line."""
    text = str(error)[:1000]
    try:
        body = json.dumps(payload, default=str)[:2000]
    except Exception:  # pragma: no cover - json.dumps with default=str rarely fails
        body = repr(payload)[:2000]
    rt.r.xadd(
        f"{rt.settings.namespace}:stream:rejected",
        {"v": SCHEMA["rejected"], "stage": stage, "error": text, "payload": body, "ts": repr(time.time())},
        maxlen=10_000,
        approximate=True,
    )
    rt.counters.count(f"{counter}:{stage}")
    log.warning("rejected %s message at %s: %s", counter, stage, text.splitlines()[0] if text else "")


def account_runtime(rt: Runtime, stage: str, payload: Any, account: str) -> Runtime | None:
    """The runtime of the account a message names (:meth:`Runtime.for_account`); None for an
    account the deployment does not manage — the message is recorded (``malformed:<stage>``,
    reason ``unknown account``) and counted ``unknown_account``, never executed."""
    try:
        return rt.for_account(account)
    except KeyError:
        rt.counters.count("unknown_account")
        record_rejected(rt, stage, payload, f"unknown account {account!r}")
        return None
