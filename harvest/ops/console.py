"""``harvest console``: the operator's page (issue 22). Starlette + Jinja2, server-rendered,
refreshed every few seconds by the browser; no build step.

* ``GET /`` — every managed position (side, qty, entry, mark, R_net, kill score and its
  components, the stop on the exchange, the liquidation price), the recent plans with their
  states (each links to its ledger), the trading state with its switch, queue depths,
  heartbeats, plans per state and realized PnL per symbol.
* ``GET /plan/{plan_id}`` — a plan's decision ledger (404 for an unknown or malformed id).
* ``POST /trading`` — change the trading state (HALTED, REDUCING, SHADOW, ACTIVE): needs the
  console password (``HARVEST_CONSOLE_PASSWORD``, a secret: env or secret file; compared in
  constant time) and the form's CSRF token (per process, compared in constant time); recorded
  with who asked (``console``) like ``harvest trading``. Without a password configured, changes
  are refused: the page is read-only.

Binds to 127.0.0.1 by default. No page shows a key or secret. Bad requests get a 4xx.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

from jinja2 import DictLoader, Environment, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from harvest.domain.book import to_position
from harvest.domain.kernel import compute_harvest_proposal
from harvest.domain.plans import PLAN_ID_RE
from harvest.domain.trading import STATES, effective
from harvest.ops.scorecard import queue_depths
from harvest.services.decide import load_positions
from harvest.services.runtime import Runtime
from harvest.store.trading import set_state
from harvest.venues.base import VenueError

_BASE = """<!doctype html><html><head><meta charset="utf-8"><title>harvest — {{ title }}</title>
{% if refresh %}<script>/* reload every {{ refresh }} s, but never while the operator is using the switch */
setInterval(function(){var f=document.getElementById("switch");
if(!f||!(f.contains(document.activeElement)||f.password.value))location.reload()},{{ refresh }}000)</script>{% endif %}
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:right;font-size:.9em} th{background:#f3f3f3}
td.l,th.l{text-align:left} .state{font-weight:bold} .HALTED{color:#b00} .SHADOW,.REDUCING{color:#a60}
.ACTIVE{color:#070} .bar{background:#69c;height:.8em;display:inline-block} h2{margin-top:1.2em}
.grid{display:flex;gap:3em;flex-wrap:wrap}
</style></head><body><h1>harvest <small>{{ ns }}</small></h1>{% block body %}{% endblock %}</body></html>"""

_INDEX = """{% extends "base" %}{% block body %}
<p>Trading: <span id="trading" class="state {{ trading }}">{{ trading }}</span>
 (deployment {{ deployment }}{% for a, s in accounts.items() %}, {{ a }} {{ s }}{% endfor %})</p>
<form id="switch" method="post" action="/trading">
 <input type="hidden" name="csrf" value="{{ csrf }}">
 <select name="state" id="state">{% for s in states %}<option>{{ s }}</option>{% endfor %}</select>
 <input type="password" name="password" id="password" placeholder="console password" autocomplete="off">
 <button type="submit" id="apply">set</button> {% if not can_change %}<em>read-only: no console password configured</em>{% endif %}
</form>
<h2>Positions</h2>
{% if venue_error %}<p><em>venue unavailable: {{ venue_error }}</em></p>{% endif %}
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
</div><div class="grid"><div id="pnl-chart"><h2>Realized PnL over time (USDT)</h2>{{ pnl_svg|safe }}</div>
<div id="states-chart"><h2>Plans per state over time</h2>{{ states_svg|safe }}</div></div>
<div class="grid"><div><h2>Queues</h2><table>{% for q, n in queues.items() %}<tr><td class="l">{{ q }}</td><td>{{ n }}</td></tr>{% endfor %}</table></div>
<div><h2>Heartbeats (s ago)</h2><table id="heartbeats">{% for c, a in beats.items() %}
<tr><td class="l">{{ c }}</td><td>{{ a }}</td></tr>{% endfor %}</table></div></div>
{% endblock %}"""

_PLAN = """{% extends "base" %}{% block body %}<p><a href="/">← all positions and plans</a></p>
<h2 id="ledger">Plan {{ plan.plan_id }}</h2>
<table>{% for k, v in fields %}<tr><th class="l">{{ k }}</th><td class="l">{{ v }}</td></tr>{% endfor %}</table>
<h2>Transitions and sends</h2><table id="transitions"><tr><th class="l">time (UTC)</th><th class="l">from</th>
<th class="l">to</th><th class="l">reason</th><th class="l">data</th></tr>
{% for t in transitions %}<tr><td class="l">{{ t.when }}</td><td class="l">{{ t.frm }}</td><td class="l">{{ t.to }}</td>
<td class="l">{{ t.reason }}</td><td class="l">{{ t.data }}</td></tr>{% endfor %}</table>{% endblock %}"""

_ENV = Environment(
    loader=DictLoader({"base": _BASE, "index": _INDEX, "plan": _PLAN}), autoescape=select_autoescape(default=True)
)


def _utc(ts: float | str | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts or 0)))
    except (TypeError, ValueError):
        return "?"


def _num(x: float | None, spec: str = ".6g") -> str:
    return "—" if x is None else format(x, spec)


def _svg(series: dict[str, list[tuple[float, float]]], width: int = 520, height: int = 160) -> str:
    """Inline SVG polylines of ``{name: [(t, value), …]}`` on shared axes (no script, no library)."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return "<p><em>nothing yet</em></p>"
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    v0, v1 = min(0.0, min(p[1] for p in pts)), max(0.0, max(p[1] for p in pts))
    sx = (width - 10) / ((t1 - t0) or 1.0)
    sy = (height - 20) / ((v1 - v0) or 1.0)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    out = [f'<svg width="{width}" height="{height + 16 * len(series)}" role="img">']
    zero = height - 10 - (0 - v0) * sy
    out.append(f'<line x1="5" x2="{width - 5}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#ccc"/>')
    for i, (name, s) in enumerate(sorted(series.items())):
        c = colors[i % len(colors)]
        line = " ".join(f"{5 + (t - t0) * sx:.1f},{height - 10 - (v - v0) * sy:.1f}" for t, v in s)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{line}"/>')
        if s:  # the latest point, visible even when it is the only one
            x, y = 5 + (s[-1][0] - t0) * sx, height - 10 - (s[-1][1] - v0) * sy
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>')
        last = s[-1][1] if s else 0
        out.append(f'<text x="5" y="{height + 12 + 16 * i}" fill="{c}" font-size="12">{name}: {last:.6g}</text>')
    out.append("</svg>")
    return "".join(out)


def _over_time(rt: Runtime, count: int = 20_000) -> tuple[str, str]:
    """Realized PnL (USDT, cumulative, net of fees, as plans recorded it) and plans per state
    (cumulative transitions into each state) over time, from the results stream, as SVG."""
    import json

    pnl: list[tuple[float, float]] = []
    states: dict[str, list[tuple[float, float]]] = {}
    total = 0.0
    counts: dict[str, int] = {}
    for _, f in rt.r.xrevrange(rt.plans.k.results, count=count)[::-1]:
        if f.get("from") == f.get("to"):
            continue
        ts, to = float(f.get("ts", 0) or 0), f.get("to", "?")
        counts[to] = counts.get(to, 0) + 1
        states.setdefault(to, []).append((ts, float(counts[to])))
        if to in ("FILLED", "PARTIALLY_FILLED"):
            try:
                v = json.loads(f.get("data") or "{}").get("realized_pnl")
            except ValueError:
                v = None
            if isinstance(v, (int, float)):
                total += v
                pnl.append((ts, total))
    return _svg({"realized PnL": pnl}), _svg(states)


def _position_rows(rt: Runtime, rows: list, now: float) -> list[dict[str, Any]]:
    """The positions table's rows of one account (``rt``: its runtime): its exchange truth and
    what the kernel makes of it now (R_net, kill score and its components, with the theta of
    the account and symbol)."""
    s = rt.settings
    out = []
    for vp, entry, market in rows:
        try:
            prop = compute_harvest_proposal(to_position(s.account, vp, entry), market, now, s.theta_for(vp.symbol))
            r_net, kill, comps = prop.r_net, prop.kill_score, list(prop.components.values())
        except ValueError:
            r_net, kill, comps = None, None, [None] * 4
        out.append(
            {
                "account": s.account,
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
                "tier": entry.get("harvested_tier", 0),
            }
        )
    return out


def make_app(rt: Runtime, password: str | None) -> Starlette:
    """The console's app over ``rt`` (namespace, stores, venue). ``password``: what ``POST
    /trading`` requires; None: changes are refused (read-only)."""
    csrf = secrets.token_urlsafe(32)
    s = rt.settings

    def render(name: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(_ENV.get_template(name).render(ns=s.namespace, **ctx), status_code=code)

    def index(request: Request) -> Response:
        states = rt.r.hgetall(rt.plans.k.trading)
        positions, errors = [], []
        for name in rt.accounts:
            ra = rt.for_account(name)
            try:
                rows, now = load_positions(ra)
            except VenueError as e:
                errors.append(f"{name}: {e}")
                continue
            positions += _position_rows(ra, rows, now)
        venue_error = "; ".join(errors) or None
        every = list(rt.plans.all_plans())  # oldest first (the plan index)

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
        beats = {k: f"{max(0.0, time.time() - v):.1f}" for k, v in sorted(rt.plans.heartbeats().items())}
        pnl_svg, states_svg = _over_time(rt)
        return render(
            "index",
            title="positions",
            refresh=5,
            trading=effective(states, s.account, s.mode),
            deployment=states.get("*", "ACTIVE"),
            accounts={a: effective(states, a, rt.for_account(a).settings.mode) for a in rt.accounts}
            if len(rt.accounts) > 1
            else {a: v for a, v in states.items() if a != "*"},
            states=STATES,
            csrf=csrf,
            can_change=password is not None,
            positions=positions,
            venue_error=venue_error,
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
            pnl_svg=pnl_svg,
            states_svg=states_svg,
        )

    def plan(request: Request) -> Response:
        pid = request.path_params["plan_id"]
        if not PLAN_ID_RE.match(pid):
            return Response("a plan_id is 16 hex digits\n", status_code=400, media_type="text/plain")
        p = rt.plans.get(pid)
        if p is None:
            return Response(f"no plan {pid}\n", status_code=404, media_type="text/plain")
        fields = [(k, v) for k, v in p.model_dump(mode="json").items() if k != "decision" and v not in (None, "")]
        fields.append(("decision inputs", p.decision))
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
        return render("plan", title=pid, refresh=0, plan=p, fields=fields, transitions=transitions)

    async def trading(request: Request) -> Response:
        try:
            form = await request.form()
        except Exception:
            return Response("a form is expected\n", status_code=400, media_type="text/plain")
        token, pw, state = str(form.get("csrf", "")), str(form.get("password", "")), str(form.get("state", ""))
        if not hmac.compare_digest(token.encode(), csrf.encode()):
            return Response("stale or forged form (CSRF)\n", status_code=403, media_type="text/plain")
        if password is None:
            return Response("read-only: no console password is configured\n", status_code=403, media_type="text/plain")
        if not hmac.compare_digest(pw.encode(), password.encode()):
            return Response("wrong password\n", status_code=401, media_type="text/plain")
        if state.upper() not in STATES:
            return Response(f"unknown state {state[:20]!r}\n", status_code=400, media_type="text/plain")
        set_state(rt.r, rt.plans.k.trading, f"{s.namespace}:stream:trading", state, None, "console", "console")
        return RedirectResponse("/", status_code=303)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/plan/{plan_id}", plan),
            Route("/trading", trading, methods=["POST"]),
        ]
    )


def serve(rt: Runtime, host: str, port: int, password: str | None) -> None:
    """Serve the console until interrupted."""
    import uvicorn

    uvicorn.run(make_app(rt, password), host=host, port=port, log_level="warning")
