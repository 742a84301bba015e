"""``harvest console``: the operator's page (issue 22, hardened in issue 31). Starlette + Jinja2,
server-rendered, refreshed every few seconds by the browser; no build step.

* ``GET /`` — every managed position as the account's last scan saw it (side, qty, entry, mark,
  R_net, kill score and its components, the stop on the exchange, the liquidation price; with
  the scan's age), the recent plans with their states (each links to its ledger), the trading
  state with its switch, queue depths, heartbeats, plans per state and realized PnL per symbol.
* ``GET /plan/{plan_id}`` — a plan's decision ledger (404 for an unknown id, 400 for a malformed one).
* ``POST /trading`` — change the trading state (HALTED, REDUCING, SHADOW, ACTIVE), recorded with
  who asked (``console``) like ``harvest trading``. Without a password configured, changes are
  refused: the page is read-only.

**Reading costs the exchange nothing and writes nothing.** The pages read only harvest's own
state in Redis: positions from :class:`harvest.store.views.PositionsView` (what the scan stored),
book entries, market states, plans and streams. They never call the venue, so no page load spends
request weight or can hold the scan's reads back, and they change no key.

**A record a view cannot read** (a plan hash, a market state, a heartbeat, a stream entry, the
positions record) is listed under "Unreadable records" with its key; the page goes on.

**Protections** (docs/operations.md lists them):

* every value reaches HTML through Jinja2's autoescape (the charts too: no ``|safe`` on data);
* ``Host`` must be a loopback name or one of ``HARVEST_CONSOLE_HOSTS`` (DNS rebinding);
  a change (``POST``) must come with an ``Origin`` (or, lacking one, a ``Referer``) of such a host;
* a form token per browser session (an HttpOnly, SameSite=Strict cookie; the token is an HMAC of
  it under a per-process key), compared in constant time;
* the password (``HARVEST_CONSOLE_PASSWORD``, a secret: env or secret file) must have at least
  :data:`MIN_PASSWORD_LEN` characters and :data:`MIN_PASSWORD_DISTINCT` distinct ones, or the
  console does not start; it is compared in constant time; each wrong password is logged with the
  client's address and answered after :data:`FAILURE_DELAY_S`; past :data:`FAILURES_PER_CLIENT`
  failures from one client (or :data:`FAILURES_ALL` from all) the switch answers 429 until the
  window has passed (``harvest trading`` on the host still works);
* ``Content-Security-Policy`` (scripts only by per-response nonce, ``frame-ancestors 'none'``,
  ``form-action 'self'``), ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: same-origin``, ``Cache-Control: no-store``.

Binds to 127.0.0.1 by default. No page shows a key or secret. Bad requests get a 4xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from jinja2 import DictLoader, Environment, select_autoescape
from limits import parse as parse_limit
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from harvest.domain.book import to_position
from harvest.domain.kernel import compute_harvest_proposal
from harvest.domain.plans import PLAN_ID_RE
from harvest.domain.trading import STATES, effective
from harvest.ops.scorecard import queue_depths
from harvest.services.runtime import Runtime
from harvest.store.connect import sync
from harvest.store.records import Unreadable, UnreadableRecord, check_version, numeric_fields
from harvest.store.trading import set_state
from harvest.store.views import PositionsSeen, PositionsView

log = logging.getLogger("harvest.console")

#: Host names the console answers to besides those configured (``HARVEST_CONSOLE_HOSTS``).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: The console password's minimum length and number of distinct characters (checked at start-up).
MIN_PASSWORD_LEN, MIN_PASSWORD_DISTINCT = 12, 5
#: Wrong passwords allowed per client address, and from all clients together, per window.
FAILURES_PER_CLIENT, FAILURES_ALL = "5/15 minutes", "30/15 minutes"
#: Seconds a wrong password waits before it is answered (the connection's next guess waits too).
FAILURE_DELAY_S = 1.0
SESSION_COOKIE = "harvest_session"

_BASE = """<!doctype html><html><head><meta charset="utf-8"><title>harvest — {{ title }}</title>
{% if refresh %}<script nonce="{{ nonce }}">/* reload every {{ refresh }} s, but never while the operator is using the switch */
setInterval(function(){var f=document.getElementById("switch");
if(!f||!(f.contains(document.activeElement)||f.password.value))location.reload()},{{ refresh }}000)</script>{% endif %}
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:right;font-size:.9em} th{background:#f3f3f3}
td.l,th.l{text-align:left} .state{font-weight:bold} .HALTED{color:#b00} .SHADOW,.REDUCING{color:#a60}
.ACTIVE{color:#070} .bar{background:#69c;height:.8em;display:inline-block} h2{margin-top:1.2em}
.grid{display:flex;gap:3em;flex-wrap:wrap} .bad{color:#b00}
</style></head><body><h1>harvest <small>{{ ns }}</small></h1>{% block body %}{% endblock %}
{% if unreadable %}<h2>Unreadable records</h2><table id="unreadable"><tr><th class="l">key</th><th class="l">why</th></tr>
{% for u in unreadable %}<tr><td class="l bad">{{ u.key }}</td><td class="l">{{ u.error }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>"""

_CHART = """{% macro chart(c) %}{% if not c.lines %}<p><em>nothing yet</em></p>{% else %}
<svg width="{{ c.width }}" height="{{ c.height }}" role="img">
<line x1="5" x2="{{ c.width - 5 }}" y1="{{ c.zero }}" y2="{{ c.zero }}" stroke="#ccc"/>
{% for l in c.lines %}<polyline fill="none" stroke="{{ l.color }}" stroke-width="1.5" points="{{ l.points }}"/>
<circle cx="{{ l.cx }}" cy="{{ l.cy }}" r="3" fill="{{ l.color }}"/>
<text x="5" y="{{ l.label_y }}" fill="{{ l.color }}" font-size="12">{{ l.name }}: {{ l.last }}</text>{% endfor %}
</svg>{% endif %}{% endmacro %}"""

_INDEX = """{% extends "base" %}{% from "chart" import chart %}{% block body %}
<p>Trading: <span id="trading" class="state {{ trading }}">{{ trading }}</span>
 (deployment {{ deployment }}{% for a, s in accounts.items() %}, {{ a }} {{ s }}{% endfor %})</p>
<form id="switch" method="post" action="/trading">
 <input type="hidden" name="csrf" value="{{ csrf }}">
 <select name="state" id="state">{% for s in states %}<option>{{ s }}</option>{% endfor %}</select>
 <input type="password" name="password" id="password" placeholder="console password" autocomplete="off">
 <button type="submit" id="apply">set</button> {% if not can_change %}<em>read-only: no console password configured</em>{% endif %}
</form>
<h2>Positions</h2>
<p id="positions-seen">as the last scan saw them{% for a, why in seen.items() %}; {{ a }}: {{ why }}{% endfor %}</p>
<table id="positions"><tr><th class="l">account</th><th class="l">symbol</th><th class="l">side</th><th>qty</th><th>entry</th><th>mark</th>
<th>R_net</th><th>kill</th><th>regime flip</th><th>σ spike</th><th>ts drop</th><th>age</th><th>stop</th>
<th>liquidation</th><th>tier</th></tr>
{% for p in positions %}<tr><td class="l">{{ p.account }}</td><td class="l">{{ p.symbol }}</td><td class="l">{{ p.side }}</td><td>{{ p.qty }}</td>
<td>{{ p.entry }}</td><td>{{ p.mark }}</td><td>{{ p.r_net }}</td><td>{{ p.kill }}</td>
{% for c in p.components %}<td>{{ c }}</td>{% endfor %}<td>{{ p.stop }}</td><td>{{ p.liq }}</td><td>{{ p.tier }}</td></tr>
{% else %}<tr><td class="l" colspan="15">no open position</td></tr>{% endfor %}</table>
<h2>Plans</h2>
<table id="plans"><tr><th class="l">created (UTC)</th><th class="l">plan_id</th><th class="l">account</th><th class="l">symbol</th>
<th class="l">action</th><th>attempt</th><th class="l">state</th><th class="l">reason</th></tr>
{% for p in plans %}<tr><td class="l">{{ p.created }}</td><td class="l"><a href="/plan/{{ p.plan_id }}">{{ p.plan_id }}</a></td>
<td class="l">{{ p.account }}</td><td class="l">{{ p.symbol }}</td><td class="l">{{ p.action }}</td><td>{{ p.attempt }}</td>
<td class="l">{{ p.state }}</td><td class="l">{{ p.reason }}</td></tr>
{% else %}<tr><td class="l" colspan="8">no plan yet</td></tr>{% endfor %}</table>
<div class="grid"><div><h2>Plans per state</h2><table>{% for s, n, w in per_state %}
<tr><td class="l">{{ s }}</td><td>{{ n }}</td><td class="l"><span class="bar" style="width:{{ w }}px"></span></td></tr>
{% endfor %}</table></div>
<div><h2>Realized PnL (USDT)</h2><table>{% for s, v, w in pnl %}
<tr><td class="l">{{ s }}</td><td>{{ v }}</td><td class="l"><span class="bar" style="width:{{ w }}px"></span></td></tr>
{% else %}<tr><td class="l">none yet</td></tr>{% endfor %}</table></div>
</div><div class="grid"><div id="pnl-chart"><h2>Realized PnL over time (USDT)</h2>{{ chart(pnl_chart) }}</div>
<div id="states-chart"><h2>Plans per state over time</h2>{{ chart(states_chart) }}</div></div>
<div class="grid"><div><h2>Queues</h2><table>{% for q, n in queues.items() %}<tr><td class="l">{{ q }}</td><td>{{ n }}</td></tr>{% endfor %}</table></div>
<div><h2>Heartbeats (s ago)</h2><table id="heartbeats">{% for c, a in beats.items() %}
<tr><td class="l">{{ c }}</td><td>{{ a }}</td></tr>{% endfor %}</table></div></div>
{% endblock %}"""

_PLAN = """{% extends "base" %}{% block body %}<p><a href="/">← all positions and plans</a></p>
<h2 id="ledger">Plan {{ plan_id }}</h2>
<table>{% for k, v in fields %}<tr><th class="l">{{ k }}</th><td class="l">{{ v }}</td></tr>{% endfor %}</table>
<h2>Transitions and sends</h2><table id="transitions"><tr><th class="l">time (UTC)</th><th class="l">from</th>
<th class="l">to</th><th class="l">reason</th><th class="l">data</th></tr>
{% for t in transitions %}<tr><td class="l">{{ t.when }}</td><td class="l">{{ t.frm }}</td><td class="l">{{ t.to }}</td>
<td class="l">{{ t.reason }}</td><td class="l">{{ t.data }}</td></tr>{% endfor %}</table>{% endblock %}"""

_ENV = Environment(
    loader=DictLoader({"base": _BASE, "chart": _CHART, "index": _INDEX, "plan": _PLAN}),
    autoescape=select_autoescape(default=True, default_for_string=True),
)


def password_problem(pw: str) -> str | None:
    """Why ``pw`` is too weak to guard the trading switch (None when it is not): fewer than
    :data:`MIN_PASSWORD_LEN` characters or fewer than :data:`MIN_PASSWORD_DISTINCT` distinct ones."""
    if len(pw) < MIN_PASSWORD_LEN:
        return f"has {len(pw)} characters; at least {MIN_PASSWORD_LEN} are needed"
    if len(set(pw)) < MIN_PASSWORD_DISTINCT:
        return f"has {len(set(pw))} distinct characters; at least {MIN_PASSWORD_DISTINCT} are needed"
    return None


def _utc(ts: float | str | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts or 0)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _num(x: float | None, spec: str = ".6g") -> str:
    return "—" if x is None else format(x, spec)


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _chart(series: dict[str, list[tuple[float, float]]], width: int = 520, height: int = 160) -> dict[str, Any]:
    """The geometry of an inline SVG chart of ``{name: [(t, value), …]}`` on shared axes, for the
    ``chart`` macro (numbers and names only: the template escapes every one)."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return {"lines": []}
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    v0, v1 = min(0.0, min(p[1] for p in pts)), max(0.0, max(p[1] for p in pts))
    sx = (width - 10) / ((t1 - t0) or 1.0)
    sy = (height - 20) / ((v1 - v0) or 1.0)

    def xy(t: float, v: float) -> tuple[float, float]:
        return round(5 + (t - t0) * sx, 1), round(height - 10 - (v - v0) * sy, 1)

    lines = []
    for i, (name, s) in enumerate(sorted((n, s) for n, s in series.items() if s)):
        cx, cy = xy(*s[-1])  # the latest point, visible even when it is the only one
        lines.append(
            {
                "name": name,
                "color": _COLORS[i % len(_COLORS)],
                "points": " ".join("{},{}".format(*xy(t, v)) for t, v in s),
                "cx": cx,
                "cy": cy,
                "label_y": height + 12 + 16 * i,
                "last": format(s[-1][1], ".6g"),
            }
        )
    return {"width": width, "height": height + 16 * len(lines), "zero": xy(t0, 0.0)[1], "lines": lines}


def _over_time(rt: Runtime, unreadable: list[Unreadable], count: int = 20_000) -> tuple[dict, dict]:
    """Realized PnL (USDT, cumulative, net of fees, as plans recorded it) and plans per state
    (cumulative transitions into each state) over time, from the results stream's last ``count``
    entries, as chart geometry. An entry that does not parse is skipped (the first is listed)."""
    pnl: list[tuple[float, float]] = []
    states: dict[str, list[tuple[float, float]]] = {}
    total = 0.0
    counts: dict[str, int] = {}
    bad: Unreadable | None = None
    for xid, f in sync(rt.r.xrevrange(rt.plans.k.results, count=count))[::-1]:
        if f.get("from") == f.get("to"):
            continue
        try:
            check_version("ledger", f.get("v"))  # an entry of a newer version: listed, not counted
            ts, to = float(f.get("ts", 0) or 0), str(f.get("to", "?"))
            data = json.loads(f.get("data") or "{}") if to in ("FILLED", "PARTIALLY_FILLED") else {}
            v = data.get("realized_pnl") if isinstance(data, dict) else None
        except ValueError as e:
            bad = bad or Unreadable.of(f"{rt.plans.k.results}#{xid}", e)
            continue
        counts[to] = counts.get(to, 0) + 1
        states.setdefault(to, []).append((ts, float(counts[to])))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            total += v
            pnl.append((ts, total))
    if bad is not None:
        unreadable.append(bad)
    return _chart({"realized PnL": pnl}), _chart(states)


def _position_rows(rt: Runtime, account: str, seen: PositionsSeen, unreadable: list[Unreadable]) -> list[dict]:
    """The positions table's rows of one account: the positions its last scan saw and what the
    kernel makes of them at that scan's market time (R_net, kill score and its components, with
    the theta of the account and symbol). Reads book entries and market states from Redis only."""
    s = rt.settings.for_account(account) if account != rt.settings.account else rt.settings
    syms = [vp.symbol for vp in seen.rows]
    try:
        entries = rt.book.get_many(account, syms, rt.book.SCAN_FIELDS)
    except (ValueError, TypeError) as e:
        unreadable.append(Unreadable.of(f"{rt.plans.k.book_prefix}{account}:*", e))
        entries = [None] * len(syms)
    markets = rt.market.get_readable(syms, unreadable)
    out = []
    for vp, entry, market in zip(seen.rows, entries, markets, strict=True):
        r_net = kill = None
        comps: list[float | None] = [None] * 4
        if entry is not None and market is not None:
            try:
                prop = compute_harvest_proposal(
                    to_position(account, vp, entry), market, seen.market_now, s.theta_for(vp.symbol)
                )
                r_net, kill, comps = prop.r_net, prop.kill_score, list(prop.components.values())
            except (ValueError, TypeError):
                pass
        out.append(
            {
                "account": account,
                "symbol": vp.symbol,
                "side": vp.side.value,
                "qty": _num(vp.qty),
                "entry": _num(vp.entry_price),
                "mark": _num(vp.mark_price),
                "r_net": _num(r_net, ".2f"),
                "kill": _num(kill, ".3f"),
                "components": [_num(c, ".2f") for c in comps],
                "stop": _num(vp.stop_price),
                "liq": _num(vp.liquidation_price),
                "tier": (entry or {}).get("harvested_tier", 0),
            }
        )
    return out


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


class _SecurityHeaders:
    """ASGI middleware: the headers every answer carries (CSP unless the handler set its own)."""

    HEADERS = [
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
    ]
    DEFAULT_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.HEADERS if k not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", self.DEFAULT_CSP))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secured)


def make_app(rt: Runtime, password: str | None, hosts: tuple[str, ...] = ()) -> Starlette:
    """The console's app over ``rt`` (namespace, stores; its venue is never called).
    ``password``: what ``POST /trading`` requires (None: changes are refused, read-only); raises
    ValueError naming ``HARVEST_CONSOLE_PASSWORD`` when it is too weak (:func:`password_problem`).
    ``hosts``: host names the console answers to besides the loopback ones."""
    if password is not None and (why := password_problem(password)):
        raise ValueError(f"HARVEST_CONSOLE_PASSWORD {why}")
    s = rt.settings
    allowed = tuple(dict.fromkeys((*LOOPBACK_HOSTS, *hosts)))
    key = secrets.token_bytes(32)  # signs the per-session form tokens; a restart ends every session
    limiter = MovingWindowRateLimiter(MemoryStorage())
    per_client, per_all = parse_limit(FAILURES_PER_CLIENT), parse_limit(FAILURES_ALL)
    views = PositionsView(rt.r, s.namespace)

    def token_of(session: str) -> str:
        return hmac.new(key, session.encode(), hashlib.sha256).hexdigest()

    def render(name: str, code: int = 200, cookie: str | None = None, **ctx: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        resp = HTMLResponse(_ENV.get_template(name).render(ns=s.namespace, nonce=nonce, **ctx), status_code=code)
        resp.headers["content-security-policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        if cookie is not None:
            resp.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", path="/")
        return resp

    def text(body: str, code: int, **headers: str) -> Response:
        return Response(body + "\n", status_code=code, media_type="text/plain", headers=headers or None)

    def index(request: Request) -> Response:
        unreadable: list[Unreadable] = []
        states = sync(rt.r.hgetall(rt.plans.k.trading))
        positions: list[dict] = []
        seen: dict[str, str] = {}
        for name in rt.accounts:
            got = views.get(name)
            if got is None:
                seen[name] = "no scan yet"
            elif isinstance(got, Unreadable):
                seen[name] = "unreadable"
                unreadable.append(got)
            else:
                more = f", {got.total - len(got.rows)} more not shown" if got.total > len(got.rows) else ""
                seen[name] = f"{max(0.0, time.time() - got.at):.0f} s ago{more}"
                positions += _position_rows(rt, name, got, unreadable)
        every = list(rt.plans.all_plans(unreadable=unreadable))  # oldest first (the plan index)
        plans = every[-50:][::-1]
        per: dict[str, int] = {}
        pnl: dict[str, float] = {}
        for p in every:
            per[p.state] = per.get(p.state, 0) + 1
            if p.realized_pnl is not None:
                pnl[p.symbol] = pnl.get(p.symbol, 0.0) + p.realized_pnl
        top = max(per.values(), default=1)
        ptop = max((abs(v) for v in pnl.values()), default=1.0) or 1.0
        try:
            queues = queue_depths(rt)
        except Exception:  # the broker unreachable: the page still answers
            queues = {"?": -1}
        beats = {
            k: f"{max(0.0, time.time() - v):.1f}"
            for k, v in sorted(
                numeric_fields(sync(rt.r.hgetall(rt.plans.k.heartbeat)), rt.plans.k.heartbeat, unreadable).items()
            )
        }
        pnl_chart, states_chart = _over_time(rt, unreadable)
        session = request.cookies.get(SESSION_COOKIE, "")
        fresh = len(session) != 43  # token_urlsafe(32)
        if fresh:
            session = secrets.token_urlsafe(32)
        return render(
            "index",
            cookie=session if fresh else None,
            title="positions",
            refresh=5,
            trading=effective(states, s.account, s.mode),
            deployment=states.get("*", "ACTIVE"),
            accounts={a: effective(states, a, s.for_account(a).mode) for a in rt.accounts}
            if len(rt.accounts) > 1
            else {a: v for a, v in states.items() if a != "*"},
            states=STATES,
            csrf=token_of(session),
            can_change=password is not None,
            positions=positions,
            seen=seen,
            plans=[
                {
                    "created": _utc(p.created_at),
                    "plan_id": p.plan_id,
                    "account": p.account,
                    "symbol": p.symbol,
                    "action": p.action.value,
                    "attempt": p.attempt,
                    "state": p.state,
                    "reason": p.reason,
                }
                for p in plans
            ],
            per_state=[(k, n, int(200 * n / top)) for k, n in sorted(per.items())],
            pnl=[(k, f"{v:.2f}", int(200 * abs(v) / ptop)) for k, v in sorted(pnl.items())],
            queues=queues,
            beats=beats,
            pnl_chart=pnl_chart,
            states_chart=states_chart,
            unreadable=unreadable,
        )

    def plan(request: Request) -> Response:
        pid = request.path_params["plan_id"]
        if not PLAN_ID_RE.match(pid):
            return text("a plan_id is 16 hex digits", 400)
        try:
            p = rt.plans.get(pid)
        except UnreadableRecord as e:
            return render("plan", title=pid, refresh=0, plan_id=pid, fields=[], transitions=[], unreadable=[e.record])
        if p is None:
            return text(f"no plan {pid}", 404)
        fields = [(k, v) for k, v in p.model_dump(mode="json").items() if k != "decision" and v not in (None, "")]
        fields.append(("decision inputs", json.dumps(p.decision, sort_keys=True)))
        transitions = [
            {
                "when": _utc(t.get("ts")),
                "frm": t.get("from") or "—",
                "to": t.get("to"),
                "reason": t.get("reason"),
                "data": (t.get("data") or "")[:300],
            }
            for t in rt.plans.history(pid, sends=True)
        ]
        return render("plan", title=pid, refresh=0, plan_id=pid, fields=fields, transitions=transitions)

    async def trading(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        origin = request.headers.get("origin") or request.headers.get("referer") or ""
        if _host_of(origin) not in allowed:
            log.warning("console: change refused from %s: origin %r is not an allowed host", client, origin[:100])
            return text("cross-origin change refused (Origin)", 403)
        if not (limiter.test(per_client, "fail", client) and limiter.test(per_all, "fail", "*")):
            return text(
                "too many wrong passwords: try again later (or use `harvest trading` on the host)",
                429,
                **{"Retry-After": "900"},
            )
        try:
            form = await request.form()
        except Exception:
            return text("a form is expected", 400)
        token, pw, state = str(form.get("csrf", "")), str(form.get("password", "")), str(form.get("state", ""))
        session = request.cookies.get(SESSION_COOKIE, "")
        if not session or not hmac.compare_digest(token.encode(), token_of(session).encode()):
            return text("stale or forged form (CSRF)", 403)
        if password is None:
            return text("read-only: no console password is configured", 403)
        if not hmac.compare_digest(pw.encode(), password.encode()):
            limiter.hit(per_client, "fail", client)
            limiter.hit(per_all, "fail", "*")
            log.warning("console: wrong password from %s", client)
            await asyncio.sleep(FAILURE_DELAY_S)
            return text("wrong password", 401)
        if state.upper() not in STATES:
            return text(f"unknown state {state[:20]!r}", 400)
        set_state(rt.r, rt.plans.k.trading, f"{s.namespace}:stream:trading", state, None, "console", "console")
        log.warning("console: trading set to %s by %s", state.upper(), client)
        return RedirectResponse("/", status_code=303)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/plan/{plan_id}", plan),
            Route("/trading", trading, methods=["POST"]),
        ],
        middleware=[Middleware(_SecurityHeaders), Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed))],
    )


def serve(rt: Runtime, host: str, port: int, password: str | None, hosts: tuple[str, ...] = ()) -> None:
    """Serve the console until interrupted (``hosts``: as :func:`make_app`)."""
    import uvicorn

    uvicorn.run(make_app(rt, password, hosts), host=host, port=port, log_level="warning")
