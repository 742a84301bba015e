"""Trading states (docs/design.md §6): the operator's switch, per account and for the whole deployment.

=========  ====================================================================================
ACTIVE     normal operation
REDUCING   only closes and stop moves that tighten — all harvest ever sends (it never opens or
           widens), so nothing changes for harvest; kept for the desk's other tools and the record
SHADOW     decisions are made and guarded, plans end SHADOWED, nothing is sent
HALTED     no order at all: the scan starts no chain, the guard rejects (``halted``), execute's
           compare-and-set refuses to send; stops already resting on the exchange stay
=========  ====================================================================================

The state in force for an account is the stricter of the deployment's and the account's
(HALTED > SHADOW > REDUCING > ACTIVE). It lives in Redis (``<ns>:trading``), so a change is
seen by every worker before its next order (execute reads it in the same compare-and-set that
claims the send) and survives restarts; every change is recorded with who asked on
``<ns>:stream:trading``. ``HARVEST_MODE=shadow`` keeps working as the deployment's SHADOW.
"""

from __future__ import annotations

STATES = ("ACTIVE", "REDUCING", "SHADOW", "HALTED")
_RANK = {s: i for i, s in enumerate(STATES)}
#: The deployment-wide field of the trading hash.
DEPLOYMENT = "*"


def stricter(a: str, b: str) -> str:
    """The stricter of two trading states (HALTED > SHADOW > REDUCING > ACTIVE)."""
    return a if _RANK[a] >= _RANK[b] else b


def effective(states: dict[str, str], account: str, mode: str = "live") -> str:
    """The state in force for ``account``: the stricter of the deployment's (``*``), the
    account's, and SHADOW when ``mode`` (``HARVEST_MODE``) is shadow. Unknown values count
    as HALTED (a corrupted switch stops trading rather than trading)."""
    out = "SHADOW" if mode == "shadow" else "ACTIVE"
    for v in (states.get(DEPLOYMENT), states.get(account)):
        if v is not None:
            out = stricter(out, v if v in _RANK else "HALTED")
    return out


#: The state in which no order at all is sent (:func:`halted`).
HALTED = "HALTED"


def halted(states: dict[str, str], account: str, mode: str = "live") -> bool:
    """THE halt rule: whether no order may be sent for ``account`` — the state in force
    (:func:`effective`) is HALTED. The scan starts no chain, the guard rejects (``halted``)
    and ``harvest streams`` fires no trigger by it; execute's compare-and-set applies the same
    rule inside Redis (:data:`harvest.store.scripts` reads the two fields atomically with the
    send's claim). ``states``: the trading hash (``{"*" or account: state}``)."""
    return effective(states, account, mode) == HALTED


def order_refusal(states: dict[str, str], account: str, mode: str = "live") -> str | None:
    """Why a guarded plan of ``account`` may not be sent, by the trading state in force:
    ``"halted"`` (:func:`halted`), ``"shadow_mode"`` (SHADOW, or ``mode`` shadow: the plan ends
    SHADOWED), else None."""
    if halted(states, account, mode):
        return "halted"
    if effective(states, account, mode) == "SHADOW":
        return "shadow_mode"
    return None
