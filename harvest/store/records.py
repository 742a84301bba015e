"""Records a reader could not parse (issue 31), and the schema version of each kind of record
(issue 33): a view (the console, ``harvest plans``, the scorecard, ``/metrics``) shows such a
record as unreadable, with its key, and goes on; it never crashes on one, and nothing is
executed from it.

Versions (:data:`SCHEMA`): every record this version writes carries its kind's version, ``v``
(a plan's hash field ``v``, a ledger entry's field ``v``, a stream record's JSON key or entry
field ``v``, a Celery message's header :data:`MESSAGE_HEADER`). A record without one was
written before versions existed and reads as version 1 (the layout it has). A reader meets a
record of a version above its own (:func:`check_version`) or a plan in a state it does not know
as written by a newer version: it shows it as such (:class:`Unreadable` with ``newer`` set) and
goes on; workers leave such a plan, and refuse such a message, for a newer worker
(docs/operations.md, "Upgrading a running deployment").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The schema version this code writes and reads, per kind of record. Raise a kind's number
#: only when its layout changes so that this version's readers would misread it; an added
#: field that readers may ignore keeps the number.
SCHEMA: dict[str, int] = {
    "plan": 1,  # <ns>:plan:<id> hash (and its archived JSON copy)
    "ledger": 1,  # <ns>:stream:results entries (a plan's transitions and sends)
    "message": 1,  # Celery task messages (header MESSAGE_HEADER)
    "stream": 1,  # harvest streams' records: <ns>:streams:* rows, marks, orders, events
    "view": 1,  # <ns>:view:* (harvest.store.views)
    "rejected": 1,  # <ns>:stream:rejected entries
}
#: The Celery message header that carries a message's schema version.
MESSAGE_HEADER = "harvest_v"


class NewerVersion(ValueError):
    """A record written by a newer version of harvest than this one reads (a rolling upgrade
    in progress, or a downgrade): shown as such, never acted on."""


def version_of(raw: Any) -> int:
    """A record's ``v`` as stored (``None``/``""``: written before versions existed → 1).
    Raises ValueError for a value that is not a whole number ≥ 1."""
    if raw is None or raw == "":
        return 1
    if isinstance(raw, bool):
        raise ValueError(f"schema version {raw!r} is not a number")
    v = int(raw)
    if v < 1 or str(v) != str(raw).strip():
        raise ValueError(f"schema version {raw!r} is not a whole number >= 1")
    return v


def check_version(kind: str, raw: Any) -> int:
    """The version of a record of ``kind`` (a key of :data:`SCHEMA`) from its stored ``v``.
    Raises :class:`NewerVersion` ("written by a newer version (v=2); this version reads v<=1")
    when it is above this version's, ValueError when it does not parse."""
    v = version_of(raw)
    if v > SCHEMA[kind]:
        raise NewerVersion(f"written by a newer version (v={v}); this version reads {kind} v<={SCHEMA[kind]}")
    return v


@dataclass(frozen=True)
class Unreadable:
    """A stored record that did not parse: ``key`` (the Redis key, with the field or entry id
    where the record is one of many: ``<key>#<field>``) and ``error`` (why, one line, at most
    200 characters)."""

    key: str
    error: str
    #: Written by a newer version (a version above this one's, or a plan state it does not know).
    newer: bool = False

    @classmethod
    def of(cls, key: str, exc: BaseException) -> Unreadable:
        """The record at ``key`` and the exception its parse raised (a :class:`NewerVersion`
        sets :attr:`newer`)."""
        text = " ".join(str(exc).split())
        if isinstance(exc, NewerVersion):
            return cls(key, text[:200], newer=True)
        return cls(key, f"{type(exc).__name__}: {text}"[:200])


class UnreadableRecord(ValueError):
    """Raised by a store's single-record read (e.g. :meth:`harvest.store.plans.PlanStore.get`)
    when the record exists but does not parse; ``record`` says which and why."""

    def __init__(self, record: Unreadable):
        super().__init__(f"unreadable record {record.key}: {record.error}")
        self.record = record


def numeric_fields(
    h: dict[str, str], key: str, unreadable: list[Unreadable], conv: Callable[[str], Any] = float
) -> dict[str, Any]:
    """The fields of hash ``h`` (stored at ``key``) whose values ``conv`` reads, converted; each
    other field appended to ``unreadable`` as ``<key>#<field>``."""
    out = {}
    for f, v in h.items():
        try:
            out[f] = conv(v)
        except (TypeError, ValueError, OverflowError) as e:
            unreadable.append(Unreadable.of(f"{key}#{f}", e))
    return out
