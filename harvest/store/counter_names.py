"""Every counter harvest keeps, named once: the registry of the fields of ``<ns>:counters``.

A field of the counters hash is written only under a name listed here (:data:`COUNTERS`):
a fixed name (``scan:runs``) or a pattern whose ``{placeholders}`` are its labels
(``guard:{reason}``, ``acct:{account}:scan:runs``). A placeholder stands for one non-empty
part without ``:``. :func:`lookup` finds a name's entry; writers go through
:class:`harvest.store.health.CounterStore`, which checks each name: an unlisted one raises
:class:`UnknownCounter` when ``HARVEST_TEST_STRICT_COUNTERS=1`` (the test suites set it) and is
logged once, and counted all the same, otherwise (a worker never fails on a metric).

Each entry names the ``/metrics`` family (:class:`Family`) it is exported in, if any, and how
its placeholders become that family's labels; :func:`samples` is what the exporter
(:mod:`harvest.ops.metrics`) reads, family by family. Several entries may feed one family
(``harvest_duplicates_blocked`` sums ``scan:duplicates_skipped`` and ``dedup:{state}``); a
field is counted in a family under the first of its entries that matches.

To add a counter: add an entry here (with its family, if ``/metrics`` shows it), then write it
with ``CounterStore.count(name)`` or ``CounterStore.add(ENTRY, **labels)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Mapping, Sequence

#: A family's samples: ``[(label values in the family's label order, value)]``.
Samples = list[tuple[tuple[str, ...], float]]

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class UnknownCounter(ValueError):
    """A counter name that no entry of :data:`COUNTERS` matches."""


@dataclass(frozen=True)
class Family:
    """One ``/metrics`` series family fed from the counters hash.

    ``name``: the family's name without ``_total`` (prometheus_client adds it to a counter);
    ``kind``: ``counter`` or ``gauge``; ``labels``: its label names, in order.
    ``by_account``: the one label is ``account`` and samples are given for the deployment's
    accounts only, in their order — every account (0 when it has no field) when ``zero``,
    else only those with a field (and the family is left out when none has)."""

    name: str
    help: str
    kind: Literal["counter", "gauge"] = "counter"
    labels: tuple[str, ...] = ()
    by_account: bool = False
    zero: bool = True


@dataclass(frozen=True)
class CounterName:
    """One counter, or one pattern of counters, of the namespace's counters hash.

    ``pattern``: the field name, ``{label}`` for each variable part; ``help``: what it counts
    (and who writes it); ``family``: the ``/metrics`` family it is exported in (None: read by
    tools and tests only); ``export``: the family's label values as templates over the
    placeholders (default: each family label is the placeholder of the same name)."""

    pattern: str
    help: str
    family: Family | None = None
    export: tuple[tuple[str, str], ...] = ()

    @cached_property
    def labels(self) -> tuple[str, ...]:
        """The placeholders of :attr:`pattern`, in order."""
        return tuple(_PLACEHOLDER.findall(self.pattern))

    @cached_property
    def regex(self) -> re.Pattern[str]:
        parts = _PLACEHOLDER.split(self.pattern)  # literal, name, literal, name, …, literal
        rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^:]+)" for i, p in enumerate(parts))
        return re.compile(rx)

    def field(self, **labels: object) -> str:
        """The field name for these label values. Raises :class:`UnknownCounter` when a
        label is missing or extra, or a value does not fit the pattern (empty, or with ``:``)."""
        if set(labels) != set(self.labels):
            raise UnknownCounter(f"counter {self.pattern!r} takes labels {self.labels}, got {sorted(labels)}")
        name = self.pattern.format(**labels)
        if not self.regex.fullmatch(name):
            raise UnknownCounter(f"counter {self.pattern!r}: label values {labels!r} do not fit the pattern")
        return name

    def match(self, name: str) -> dict[str, str] | None:
        """The label values of field ``name`` when it is one of this entry's, else None."""
        m = self.regex.fullmatch(name)
        return None if m is None else m.groupdict()

    def family_labels(self, values: Mapping[str, str]) -> tuple[str, ...]:
        """The family's label values for a field whose placeholders are ``values``."""
        assert self.family is not None
        templates = dict(self.export) or {lab: "{" + lab + "}" for lab in self.family.labels}
        return tuple(templates[lab].format(**values) for lab in self.family.labels)


def _c(pattern: str, help: str, family: Family | None = None, **export: str) -> CounterName:
    return CounterName(pattern, help, family, tuple(export.items()))


# The /metrics families, in the order the exporter yields them.
GUARD_BLOCKS = Family("harvest_guard_blocks", "Plans the guard blocked, by reason", labels=("reason",))
SENDS_WITHHELD = Family(
    "harvest_sends_withheld",
    "Plans execute sent no order for, by reason (state_not_durable, state_not_recovered, state_not_replicated, halted)",
    labels=("reason",),
)
MALFORMED = Family("harvest_malformed_messages", "Malformed task payloads rejected", labels=("stage",))
STALE_DROPPED = Family(
    "harvest_stale_messages_dropped", "Messages past their expires, dropped unexecuted by the worker", labels=("task",)
)
RECONCILE_FINDINGS = Family("harvest_reconcile_findings", "What reconciliation found and did", labels=("kind",))
DUPLICATES_BLOCKED = Family(
    "harvest_duplicates_blocked", "True repeats: decisions whose plan was in flight or had taken effect"
)
RETRIES_STARTED = Family(
    "harvest_retries_started", "Further attempts of decisions whose last plan ended without effect"
)
SCANS = Family("harvest_scans", "Scans run, by account", labels=("account",), by_account=True)
POSITIONS_FROM_STREAMS = Family(
    "harvest_positions_from_streams",
    "Position reads served by the stream cache instead of positionRisk (harvest streams)",
)
STREAM_GAPS = Family("harvest_stream_gaps", "Stream gaps by cause (harvest streams)", labels=("cause",))
STREAMS_ERRORS = Family(
    "harvest_streams_errors", "Errors harvest streams caught, logged and backed off from", labels=("where",)
)
STREAM_AUDITS = Family("harvest_stream_audits", "REST audits of the stream cache (harvest streams)", labels=("result",))
STREAM_EVENTS_REJECTED = Family(
    "harvest_stream_events_rejected", "Stream events malformed or out of order, recorded and never applied"
)
NOTIFY_FAILURES = Family(
    "harvest_notify_failures", "Notices harvest notify did not deliver (a service down or refusing; never retried)"
)
CHAINS_STARTED = Family("harvest_chains_started", "Action chains started by scans")
POSITIONS_UNPROTECTED = Family(
    "harvest_positions_unprotected",
    "Open positions without a stop that can trigger (none working, or one beyond the "
    "liquidation price) at the account's last scan",
    kind="gauge",
    labels=("account",),
    by_account=True,
    zero=False,
)
POSITIONS_OPEN = Family(
    "harvest_positions_open",
    "Open positions at the last reconcile",
    kind="gauge",
    labels=("account",),
    by_account=True,
    zero=False,
)

#: Every counter harvest writes (see the module docstring). Grouped by writer.
COUNTERS: tuple[CounterName, ...] = (
    # the scan (tasks/scan.py, harvest.services.decide)
    _c("scan:runs", "scans run, every account"),
    _c("acct:{account}:scan:runs", "scans run by account", SCANS),
    _c("scan:chains_started", "action chains started (new decisions and retries)", CHAINS_STARTED),
    _c("scan:retries_started", "further attempts of decisions whose last plan ended without effect", RETRIES_STARTED),
    _c("scan:duplicates_skipped", "decisions whose plan was in flight or had taken effect", DUPLICATES_BLOCKED),
    _c("scan:busy_skipped", "decisions not started: the position's in-flight lock is held"),
    _c("scan:halted", "scans under HALTED: nothing started"),
    _c("scan:awaiting_recovery", "scans while the state is not known whole: nothing started"),
    _c("scan:no_market_state", "positions scanned without a cached market state"),
    _c("scan:market_stale", "positions whose market state was stale (no kill decision from it)"),
    _c("scan:invalid_position", "position rows the scan could not use"),
    _c("scan:venue_error:{code}", "scans that failed reading the venue, by error code"),
    _c("positions:streams", "position reads served by the stream cache", POSITIONS_FROM_STREAMS),
    _c(
        "acct:{account}:positions_unprotected",
        "gauge: positions without a working stop, last scan",
        POSITIONS_UNPROTECTED,
    ),
    _c("acct:{account}:positions_scanned", "gauge: positions the account's last scan saw"),
    # propose, guard, execute, confirm (tasks/, harvest.services.execution)
    _c("dedup:{state}", "decisions proposed again: the existing plan's state, or stale_attempt", DUPLICATES_BLOCKED),
    _c("guard:{reason}", "plans the guard blocked: a rule's reason, not_proposed, position_busy, …", GUARD_BLOCKS),
    _c("execute:{reason}", "sends withheld: state_not_durable/_recovered/_replicated, halted", SENDS_WITHHELD),
    _c("exchange_{kind}:{code}", "venue errors at a send, by kind (unknown, retryable, rejected) and code"),
    _c("confirm:from_stream", "sends resolved from the stream cache instead of REST"),
    _c("unknown_account", "messages naming an account the deployment does not manage"),
    _c("malformed:{stage}", "malformed messages rejected, by stage (broker: unreadable bodies)", MALFORMED),
    _c("newer_message:{stage}", "messages written by a newer version, rejected by stage"),
    _c("newer_plan:{stage}", "plans written by a newer version, handed back by stage"),
    _c("stale:expired:{task}", "messages past their expires, dropped by task", STALE_DROPPED),
    _c("stale:revoked:{task}", "messages revoked by id, dropped by task"),
    # reconcile, recovery, housekeeping (harvest.services.reconcile, .recovery, tasks/housekeeping.py)
    _c(
        "reconcile:venue_error:{code}",
        "reconciles that failed reading the venue",
        RECONCILE_FINDINGS,
        kind="venue_error:{code}",
    ),
    _c(
        "reconcile:{kind}", "findings: ghost_dropped, unknown_order, adopted_order, from_streams, …", RECONCILE_FINDINGS
    ),
    _c("acct:{account}:positions_open", "gauge: open positions at the account's last reconcile", POSITIONS_OPEN),
    _c("venue:clock_offset_exceeded", "reconciles that found the exchange's clock too far off"),
    _c("venue:exchange_info_failed:{code}", "exchangeInfo refreshes that failed, by code"),
    _c("recovery:runs", "recoveries of a lost state from the exchange"),
    _c("recovery:server_changed", "recoveries started over: the Redis server changed while reading"),
    _c("recovery:plans_recovered", "plans known again from the exchange's orders"),
    _c("recovery:proposed_with_order", "PROPOSED plans whose order the exchange shows"),
    _c("recovery:plans_resumed", "plans resumed by recovery"),
    _c("recovery:venue_error", "recoveries that failed reading the venue"),
    # the market refresh (harvest.services.market)
    _c("market:klines_rest", "market states computed from REST klines"),
    _c("market:klines_streamed", "market states computed from streamed klines"),
    _c("market:unavailable", "market refreshes without klines"),
    # harvest streams (harvest.services.streams, harvest.store.streams: streams:<name>)
    _c("streams:audits", "REST audits of the stream cache that agreed", STREAM_AUDITS, result="agreed"),
    _c("streams:gap:audit", "REST audits that disagreed (also a gap)", STREAM_AUDITS, result="disagreed"),
    _c(
        "streams:gap:{cause}",
        "stream gaps: start, stop, drop, listen_key_expired, audit, market_silent, …",
        STREAM_GAPS,
    ),
    _c("streams:errors:{where}", "errors caught and backed off from: session, user, market, fire", STREAMS_ERRORS),
    _c("streams:malformed", "stream events that did not parse", STREAM_EVENTS_REJECTED),
    _c("streams:out_of_order", "stream events older than what is stored", STREAM_EVENTS_REJECTED),
    _c("streams:rest_error:{code}", "REST reads of harvest streams that failed, by code"),
    _c("streams:resyncs", "full resyncs of the stream cache from REST"),
    _c("streams:symbol_reads", "one symbol's rows read from REST"),
    _c(
        "streams:fallback:{why}",
        "reads of a streamed account that went to REST, by why: untrusted, dirty, beat, mark, row, version",
    ),
    _c("streams:audits_asked", "audits a reader asked for (the guard found the exchange disagreeing with a plan)"),
    _c("streams:discovered", "working orders a daily discovering read found on symbols the cache did not know"),
    _c("streams:funding_events", "funding settlements streamed"),
    _c("streams:malformed_trigger", "trigger records that did not parse"),
    _c("streams:triggers_held", "crossed triggers not fired (held)"),
    _c("streams:triggers_fired", "crossed triggers that started a chain"),
    # operators' tools
    _c("notify:failed", "notices harvest notify did not deliver", NOTIFY_FAILURES),
)

#: The families, in the exporter's order.
FAMILIES: tuple[Family, ...] = (
    GUARD_BLOCKS,
    SENDS_WITHHELD,
    MALFORMED,
    STALE_DROPPED,
    RECONCILE_FINDINGS,
    DUPLICATES_BLOCKED,
    RETRIES_STARTED,
    SCANS,
    POSITIONS_FROM_STREAMS,
    STREAM_GAPS,
    STREAMS_ERRORS,
    STREAM_AUDITS,
    STREAM_EVENTS_REJECTED,
    NOTIFY_FAILURES,
    CHAINS_STARTED,
    POSITIONS_UNPROTECTED,
    POSITIONS_OPEN,
)

_BY_PATTERN = {c.pattern: c for c in COUNTERS}
#: The entries whose pattern is a fixed name, by name (a fixed name wins over a pattern).
_FIXED = {c.pattern: c for c in COUNTERS if not c.labels}


def entry(pattern: str) -> CounterName:
    """The entry of ``pattern`` as written in :data:`COUNTERS` (``"guard:{reason}"``). Raises KeyError."""
    return _BY_PATTERN[pattern]


def lookup(name: str) -> CounterName:
    """The entry a field name belongs to (a fixed name first, else the first pattern that
    matches). Raises :class:`UnknownCounter` when none does."""
    c = _FIXED.get(name)
    if c is not None:
        return c
    for c in COUNTERS:
        if c.labels and c.match(name) is not None:
            return c
    raise UnknownCounter(f"counter {name!r} is not in harvest.store.counter_names.COUNTERS: add it there")


def samples(family: Family, counters: Mapping[str, float], accounts: Sequence[str] = ()) -> Samples | None:
    """The samples of ``family`` from a counters hash as read (``{field: value}``); None when
    the family is left out (a ``by_account`` family without ``zero`` and no account's field).

    ``by_account``: one sample per account of ``accounts`` (see :class:`Family`). Otherwise a
    family without labels is one sample, the sum of its entries' fields (0 when none is
    present); a labelled family has one sample per field present (a fixed name with its
    fixed labels always, 0 when absent), ordered by field name; fields that give the same
    labels add up."""
    members = [c for c in COUNTERS if c.family is family]
    if family.by_account:
        out: Samples = []
        for a in accounts:
            for c in members:
                f = c.field(account=a)
                if family.zero or f in counters:
                    out.append(((a,), float(counters.get(f, 0))))
        return out if out or family.zero else None
    rows: list[tuple[str, tuple[str, ...], float]] = []
    for c in members:
        if not c.labels:
            rows.append((c.pattern, c.family_labels({}), float(counters.get(c.pattern, 0))))
    fixed = {c.pattern for c in members if not c.labels}
    for f, v in counters.items():
        if f in fixed:
            continue
        for c in members:
            values = c.match(f) if c.labels else None
            if values is not None:
                rows.append((f, c.family_labels(values), float(v)))
                break
    if not family.labels:
        return [((), sum(v for _, _, v in rows))]
    summed: dict[tuple[str, ...], float] = {}
    for _, labels, v in sorted(rows, key=lambda row: row[0]):
        summed[labels] = summed.get(labels, 0.0) + v
    return list(summed.items())
