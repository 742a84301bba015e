"""Records a reader could not parse (issue 31): a view (the console, ``harvest plans``, the
scorecard, ``/metrics``) shows such a record as unreadable, with its key, and goes on; it never
crashes on one, and nothing is executed from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Unreadable:
    """A stored record that did not parse: ``key`` (the Redis key, with the field or entry id
    where the record is one of many: ``<key>#<field>``) and ``error`` (why, one line, at most
    200 characters)."""

    key: str
    error: str

    @classmethod
    def of(cls, key: str, exc: BaseException) -> Unreadable:
        """The record at ``key`` and the exception its parse raised."""
        text = " ".join(str(exc).split())
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
