"""The Redis key layout of one namespace (see :mod:`harvest.store`)."""

from __future__ import annotations


class Keys:
    """Key names under one namespace."""

    def __init__(self, ns: str):
        self.ns = ns

    def plan(self, plan_id: str) -> str:
        return f"{self.ns}:plan:{plan_id}"

    @property
    def plan_prefix(self) -> str:
        """``<ns>:plan:`` — a plan key is this + plan_id."""
        return f"{self.ns}:plan:"

    def lineage(self, lineage_id: str) -> str:
        return f"{self.ns}:lineage:{lineage_id}"

    @property
    def trading(self) -> str:
        """hash: trading state (ACTIVE, REDUCING, HALTED, SHADOW) for the deployment (field
        ``*``) and per account (field = account); see :mod:`harvest.domain.trading`."""
        return f"{self.ns}:trading"

    @property
    def archive(self) -> str:
        """hash: plan_id → the plan's fields as JSON, for terminal plans past their retention."""
        return f"{self.ns}:plans:archive"

    @property
    def archived(self) -> str:
        """zset: archived plan_ids by when they last changed."""
        return f"{self.ns}:plans:archived"

    @property
    def recovered(self) -> str:
        """string: present while the state is known whole — set by :mod:`harvest.services.recovery`
        after it read the exchange's records; a Redis that restarted empty lacks it, and
        execute sends nothing until it is back."""
        return f"{self.ns}:state:recovered"

    @property
    def recovered_plans(self) -> str:
        """set: plan_ids whose orders the exchange shows but the store had lost."""
        return f"{self.ns}:plans:recovered"

    @property
    def open_plans(self) -> str:
        return f"{self.ns}:plans:open"

    @property
    def plan_index(self) -> str:
        return f"{self.ns}:plans:index"

    @property
    def results(self) -> str:
        return f"{self.ns}:stream:results"

    @property
    def inflight_prefix(self) -> str:
        """``<ns>:inflight:`` — an in-flight lock key is this + ``<account>:<symbol>``."""
        return f"{self.ns}:inflight:"

    def inflight(self, account: str, symbol: str) -> str:
        return f"{self.inflight_prefix}{account}:{symbol}"

    @property
    def book_prefix(self) -> str:
        """``<ns>:book:`` — a book key is this + ``<account>:<symbol>``."""
        return f"{self.ns}:book:"

    def book(self, account: str, symbol: str) -> str:
        return f"{self.book_prefix}{account}:{symbol}"

    def books(self, account: str) -> str:
        return f"{self.ns}:books:{account}"

    def triggers(self, account: str) -> str:
        """hash symbol → ``{"price", "side"}``: the mark at which the account's position in that
        symbol next falls due (:func:`harvest.domain.triggers.next_trigger`), as its last scan
        computed it; ``harvest streams`` starts the position's chain when a mark crosses it."""
        return f"{self.ns}:triggers:{account}"

    def market(self, symbol: str) -> str:
        return f"{self.ns}:market:{symbol}"

    @property
    def counters(self) -> str:
        return f"{self.ns}:counters"

    def decisions(self, account: str) -> str:
        """hash: the decisions the account's last scan saw not starting — ``waiting``
        (retrying after a backoff) and ``abandoned:<reason>`` counts — and ``updated_at`` (Unix s)."""
        return f"{self.ns}:decisions:{account}"

    @property
    def heartbeat(self) -> str:
        return f"{self.ns}:heartbeat"

    @property
    def metrics_plans(self) -> str:
        """hash ``<account>|<action>|<state>`` → plans now in that state (kept by the Lua
        scripts; fields of two parts are from before the account was counted, and ignored)."""
        return f"{self.ns}:metrics:plans"

    @property
    def metrics_orders(self) -> str:
        """hash ``<account>|<terminal state>`` → plans that ended there after an order was sent."""
        return f"{self.ns}:metrics:orders"

    @property
    def metrics_sends(self) -> str:
        """hash ``<account>|<send outcome>`` (accepted / unknown / not_executed) → sends."""
        return f"{self.ns}:metrics:sends"
