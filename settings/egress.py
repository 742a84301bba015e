"""Egress addresses (``HARVEST_EGRESS``): the ways out to the exchange, one request-weight budget
each.

Binance's ``REQUEST_WEIGHT`` limit (2400 a minute) belongs to the IP a request leaves from,
shared by every account behind it. A fleet larger than one IP holds spreads its accounts over
several egresses, each an address of its own:

* ``default`` — the host's default route (the one egress when ``HARVEST_EGRESS`` is unset);
* a local source address (``127.0.0.2``, ``10.0.0.7``, ``2001:db8::7``): the account's
  connections are bound to it (the address must be configured on an interface of the host);
* an HTTP(S) proxy (``http://host:port``; ``http://user:pass@host:port`` for one that asks):
  the account's requests go through it.

An entry may be named ``name=value`` (``a=10.0.0.7``); otherwise its name is the address itself
(``127.0.0.2``) or, for a proxy, its ``host:port`` (never its credentials). Names label the
weight budget's Redis keys and ``harvest_weight_used{egress}``.

Assignment (:func:`egress_for`): an account goes to the egress of highest rendezvous hash of
(account name, egress name) — stable (the same account leaves by the same address in every
process and after a restart) and, when an egress is added or removed, only the accounts that
must move move (about 1/n of them), so their budgets are not reshuffled. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT = "default"
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class Egress:
    """One way out: ``name`` (label of its budget), ``source`` (a local IP address the
    connections are bound to, or None) or ``proxy`` (an ``http(s)://`` URL, or None); both None
    for the default route."""

    name: str
    source: str | None = None
    proxy: str | None = None


def parse_egress(entries: list[str]) -> list[Egress]:
    """``HARVEST_EGRESS`` entries (see module docstring) as :class:`Egress`; an empty list is
    the one ``default`` egress. Raises ValueError naming HARVEST_EGRESS and the entry for an
    entry that is neither ``default``, an IP address nor an ``http(s)://host:port`` URL, and for
    two entries of one name."""
    out: list[Egress] = []
    for raw in entries or [DEFAULT]:
        entry = raw.strip()
        name, sep, value = entry.partition("=")
        if not sep or "://" in name:
            name, value = "", entry
        value = value.strip()
        if value == DEFAULT:
            e = Egress(name or DEFAULT)
        elif "://" in value:
            u = urlsplit(value)
            try:
                port = u.port
            except ValueError:
                port = None
            if u.scheme not in ("http", "https") or not u.hostname or port is None:
                raise ValueError(f"HARVEST_EGRESS: {_masked(value)!r} is not an http(s)://host:port proxy")
            e = Egress(name or f"{u.hostname}:{port}", proxy=value)
        else:
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(
                    f"HARVEST_EGRESS: {_masked(value)!r} is neither 'default', a local IP address nor an "
                    "http(s)://host:port proxy"
                ) from None
            e = Egress(name or str(ip), source=str(ip))
        if not _NAME.match(e.name):
            raise ValueError(f"HARVEST_EGRESS: egress name {e.name!r} must match {_NAME.pattern}")
        if any(x.name == e.name for x in out):
            raise ValueError(f"HARVEST_EGRESS: two egresses named {e.name!r}")
        out.append(e)
    return out


def _masked(value: str) -> str:
    """A proxy URL without its credentials (for an error message)."""
    return re.sub(r"//[^/@]*@", "//***@", value)


def egress_for(account: str, egresses: list[Egress]) -> Egress:
    """The egress ``account`` leaves by: the one of highest rendezvous hash (SHA-256 of
    ``"<account>|<egress name>"``), stable across processes and restarts. Raises ValueError
    for an empty list."""
    if not egresses:
        raise ValueError("no egress configured")
    return max(egresses, key=lambda e: hashlib.sha256(f"{account}|{e.name}".encode()).digest())
