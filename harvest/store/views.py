"""What the operator views read instead of the exchange (issue 31): the positions each
account's last scan saw, kept in Redis by the scan. The console and other read-only views show
these with their age and never call the venue, so reading a page costs no request weight and
cannot hold the scan's own reads back.

Key (``<ns>`` = settings.namespace, ``<a>`` = account)::

    <ns>:view:positions:<a>   string  JSON {"v": 1, "at": wall s, "market_now": market s,
                                      "total": positions the scan saw, "rows": [VenuePosition,
                                      at most MAX_ROWS, largest notional first]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from harvest.domain.models import VenuePosition
from harvest.store.connect import sync
from harvest.store.records import SCHEMA, Unreadable, check_version

#: Positions kept per account for the views (a page of more says how many it leaves out).
MAX_ROWS = 500
#: The record layout written by this version (:data:`harvest.store.records.SCHEMA`).
VERSION = SCHEMA["view"]


@dataclass(frozen=True)
class PositionsSeen:
    """One account's positions as its last scan saw them: ``rows`` (at most :data:`MAX_ROWS`,
    largest notional first), ``total`` (how many the scan saw), ``at`` (wall time of the scan,
    Unix s) and ``market_now`` (the market clock then, Unix s: what R_net and age are computed at)."""

    rows: list[VenuePosition]
    total: int
    at: float
    market_now: float


class PositionsView:
    """Writer (the scan) and reader (the views) of ``<ns>:view:positions:<account>``."""

    def __init__(self, r: redis.Redis, ns: str):
        self.r, self.ns = r, ns

    def key(self, account: str) -> str:
        return f"{self.ns}:view:positions:{account}"

    def put(self, pipe: Any, account: str, vps: list[VenuePosition], at: float, market_now: float) -> None:
        """Queue on ``pipe`` the positions the scan of ``account`` saw (``at``: wall s;
        ``market_now``: market s). Costs one ``SET``; at most :data:`MAX_ROWS` rows are dumped."""
        top = sorted(vps, key=lambda v: -v.qty * v.mark_price)[:MAX_ROWS]
        doc = {
            "v": VERSION,
            "at": at,
            "market_now": market_now,
            "total": len(vps),
            "rows": [v.model_dump(mode="json") for v in top],
        }
        pipe.set(self.key(account), json.dumps(doc))

    def get(self, account: str) -> PositionsSeen | Unreadable | None:
        """The positions last seen for ``account``; None when no scan has written them; an
        :class:`~harvest.store.records.Unreadable` when the record does not parse (or is of a
        newer layout than this version reads). Reads only Redis."""
        raw = sync(self.r.get(self.key(account)))
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            layout = doc.get("v") if isinstance(doc, dict) else None
            if layout is None:
                raise ValueError(f"record layout {layout!r} (this version reads {VERSION})")
            check_version("view", layout)  # a newer layout: NewerVersion, shown as such
            return PositionsSeen(
                rows=[VenuePosition.model_validate(x) for x in doc["rows"]],
                total=int(doc["total"]),
                at=float(doc["at"]),
                market_now=float(doc["market_now"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            return Unreadable.of(self.key(account), e)
