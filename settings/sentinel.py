"""Redis through Sentinel: the ``redis+sentinel://`` URL and what each client is told.

One URL names the Sentinels and the monitored primary (the ``redis+sentinel`` form other
Python tools use, e.g. the ``redis-sentinel-url`` package)::

    redis+sentinel://[[username]:password@]host[:port][,host[:port]…]/service_name[/db]

``host:port`` are the Sentinels (port 26379 when left out; an IPv6 address in brackets), ``service_name`` the name they
monitor the primary under (``sentinel monitor <service_name> …``), ``db`` the database (0).
The password is the primary's (``requirepass``); Sentinels without their own password are
assumed. Each client is given the same thing in its own form:

* redis-py (harvest's state store): ``Sentinel(sentinels).master_for(service_name, …)``
  (:func:`harvest.store.connect.redis_client`), which asks the Sentinels for the primary on
  every new connection and after a connection error;
* kombu (the Celery broker): ``sentinel://h1:p1;sentinel://h2:p2/db`` with the transport
  option ``master_name`` (:func:`kombu_broker`);
* celery-redbeat (beat's schedule and lock): ``redis-sentinel://`` with the options
  ``sentinels``, ``service_name``, ``db`` and ``password`` (:func:`redbeat_options`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
_URL = re.compile(
    r"^redis\+sentinel://(?:(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@)?(?P<hosts>[^/@]+)(?P<path>/.*)?$"
)


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL: ``sentinels`` ((host, port), …), ``service`` (the
    monitored primary's name), ``db``, and the primary's ``username``/``password`` (or None)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str | None) -> bool:
    """Whether ``url`` is a ``redis+sentinel://`` URL."""
    return bool(url) and str(url).startswith(SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a ``redis+sentinel://`` URL (module docstring). Raises ValueError naming what is
    wrong: no Sentinel, a bad port, no service name, a db that is not an integer, a query."""
    m = _URL.match(url)
    if m is None:
        raise ValueError("must be redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]")
    if "?" in url:
        raise ValueError("redis+sentinel:// takes no query (TLS through Sentinel is not supported)")
    sentinels = []
    for part in m["hosts"].split(","):
        part = part.strip()
        host, _, port = part.rpartition(":") if ":" in part.rpartition("]")[2] else (part, "", "")
        if not host:
            raise ValueError(f"sentinel {part!r}: no host")
        if port and not port.isdigit():
            raise ValueError(f"sentinel {part!r}: the port must be a number")
        sentinels.append((host.removeprefix("[").removesuffix("]"), int(port) if port else DEFAULT_PORT))
    segments = [s for s in (m["path"] or "").split("/") if s]
    if not segments:
        raise ValueError("no service name: redis+sentinel://host:26379/<service_name>[/db]")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError("the path must be /<service_name>[/<db number>]")
    return SentinelUrl(
        sentinels=tuple(sentinels),
        service=unquote(segments[0]),
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=unquote(m["user"]) if m["user"] else None,
        password=unquote(m["password"]) if m["password"] else None,
    )


def kombu_broker(url: str) -> tuple[str, dict]:
    """kombu's form of a ``redis+sentinel://`` URL: ``(broker_url, transport options)``, the
    URL being ``sentinel://[:password@]h1:p1;sentinel://h2:p2;…/db``-style (kombu reads the
    credentials and db of the first) and the options ``{"master_name": service}``."""
    s = parse_sentinel_url(url)
    creds = ""
    if s.password is not None or s.username is not None:
        creds = f"{s.username or ''}:{s.password or ''}@"
    hosts = [(f"[{h}]" if ":" in h else h, p) for h, p in s.sentinels]  # an IPv6 literal in brackets
    urls = [f"sentinel://{creds if i == 0 else ''}{h}:{p}/{s.db}" for i, (h, p) in enumerate(hosts)]
    return ";".join(urls), {"master_name": s.service}


def redbeat_options(url: str) -> tuple[str, dict]:
    """celery-redbeat's form: ``("redis-sentinel://", options)`` with ``sentinels``,
    ``service_name``, ``db`` and the primary's ``password``/``username`` when given."""
    s = parse_sentinel_url(url)
    opts: dict = {"sentinels": [list(x) for x in s.sentinels], "service_name": s.service, "db": s.db}
    if s.password is not None:
        opts["password"] = s.password
    if s.username is not None:
        opts["username"] = s.username
    return "redis-sentinel://", opts
