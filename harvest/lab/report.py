"""The replay's report: a terminal table, a JSON document and an HTML page with plots.

The HTML page is one file (plotly.js inlined: it opens without a server or network): equity and
drawdown per policy, the distribution of R per policy, and a price chart of each recorded trade
with its entry, stops, partial closes and exit (from the default policy).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from harvest.lab.engine import Trades
from harvest.lab.market import ReplayMarket


def _f(x: float, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else format(x, spec)


def no_funding_line(doc: dict[str, Any]) -> str | None:
    """The warning printed under the table when some symbols had no funding file (charged
    zero funding), or None when every symbol had one (or the document says nothing of it)."""
    missing = (doc.get("run") or {}).get("no_funding") or []
    if not missing:
        return None
    return (
        f"no funding data for {', '.join(missing)}: charged 0 funding "
        "(a lab file finds ../funding/<SYMBOL>-funding-*.csv beside it)"
    )


def table(doc: dict[str, Any]) -> str:
    """The comparison as fixed-width text: one row per policy, the paired difference against
    the first policy (the base) with its interval, ``policy − base`` per entry (a positive Δ:
    the policy made more R than the base). Under it: each policy's exits, the funding paid and
    received apart (USDT), the symbols without funding data (when ``doc["run"]`` names some)
    and the base policy under the other fill model (when ``doc["other_fill"]`` is there; every
    policy as a second table when it holds them all)."""
    base = doc["base"]
    head = (
        f"{'policy':<11}{'trades':>7}{'net USDT':>11}{'mean R [95% CI]':>26}{'win':>6}{'PF':>6}"
        f"{'maxDD':>9}{'Sharpe':>8}{'MAE R':>7}{'MFE R':>7}  Δ mean R = policy − {base} [95% CI]"
    )
    lines = [head, "-" * len(head)]
    for name, s in doc["policies"].items():
        lo, hi = s["mean_r_ci95"]
        ci = f"{_f(s['mean_r'])} [{_f(lo)}, {_f(hi)}]"
        d = doc["paired"].get(name)
        diff = (
            ""
            if d is None
            else f"{_f(d['mean_r_diff'], '+.3f')} [{_f(d['ci95'][0], '+.3f')}, {_f(d['ci95'][1], '+.3f')}]"
        )
        lines.append(
            f"{name:<11}{s['trades']:>7}{s['net_usdt']:>11.1f}{ci:>26}{s['win_rate']:>6.2f}"
            f"{_f(s['profit_factor'], '.2f'):>6}{s['max_drawdown_usdt']:>9.0f}{_f(s['sharpe_daily'], '.2f'):>8}"
            f"{s['mae_r']:>7.2f}{s['mfe_r']:>7.2f}  {diff}"
        )
    lines.append("")
    for name, s in doc["policies"].items():
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(s["exit_reasons"].items()))
        lines.append(f"{name:<11} exits: {reasons}")
    if all("funding_paid_usdt" in s for s in doc["policies"].values()):
        lines.append(
            "funding USDT paid / received: "
            + ", ".join(
                f"{name} {s['funding_paid_usdt']:.2f} / {s['funding_received_usdt']:.2f}"
                for name, s in doc["policies"].items()
            )
        )
    warn = no_funding_line(doc)
    if warn:
        lines.append(warn)
    other = doc.get("other_fill")
    if other:
        this = (doc.get("run") or {}).get("fill_model", {}).get("name", "this")
        ob = other["base"]
        s = other["policies"][ob]
        d = other["base_this_minus_other"]
        lines.append(
            f"fill model {this}; under {other['fill_model']}, {ob}: mean R {_f(s['mean_r'])} "
            f"[{_f(s['mean_r_ci95'][0])}, {_f(s['mean_r_ci95'][1])}], net {s['net_usdt']:.1f} USDT "
            f"(Δ mean R = {this} − {other['fill_model']}: {_f(d['mean_r_diff'], '+.3f')} "
            f"[{_f(d['ci95'][0], '+.3f')}, {_f(d['ci95'][1], '+.3f')}])"
        )
        if len(other["policies"]) > 1:
            lines.append("")
            lines.append(f"every policy under the {other['fill_model']} fill model:")
            lines.append(table({"base": ob, "policies": other["policies"], "paired": other["paired"]}))
    return "\n".join(lines)


def write_html(path: str | Path, doc: dict[str, Any], runs: dict[str, Trades], m: ReplayMarket) -> None:
    """The report as one self-contained HTML file (module docstring)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    color = {name: qualitative.Plotly[i % len(qualitative.Plotly)] for i, name in enumerate(runs)}
    figs = []
    eq = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("equity (USDT)", "drawdown (USDT)"))
    for name, t in runs.items():
        o = np.argsort(t.exit_time, kind="stable")
        x = (t.exit_time[o]).astype("datetime64[s]")
        e = np.cumsum(t.net[o])
        line = {"color": color[name]}
        eq.add_trace(go.Scatter(x=x, y=e, name=name, mode="lines", legendgroup=name, line=line), row=1, col=1)
        dd = e - np.maximum.accumulate(np.maximum(e, 0))
        eq.add_trace(
            go.Scatter(x=x, y=dd, name=name, mode="lines", legendgroup=name, showlegend=False, line=line), row=2, col=1
        )
    eq.update_layout(height=600, title="Equity and drawdown per policy (realized at each exit)")
    figs.append(eq)
    hist = go.Figure()
    for name, t in runs.items():
        hist.add_trace(
            go.Histogram(x=np.clip(t.r, -3, 8), name=name, opacity=0.55, nbinsx=60, marker_color=color[name])
        )
    hist.update_layout(barmode="overlay", title="R per trade (clipped to −3..8)", height=400)
    figs.append(hist)
    base = runs.get("default") or next(iter(runs.values()))
    for i, ev in list(base.events.items())[:6]:
        sym = str(base.symbol[i])
        s0, n = m.start[sym], m.count[sym]
        t0, t1 = base.entry_time[i], base.exit_time[i]
        pad = 3600 * 6
        ot = m.open_time[s0 : s0 + n]
        a, z = np.searchsorted(ot, t0 - pad), np.searchsorted(ot, t1 + pad)
        sl = slice(s0 + a, s0 + z)
        fig = go.Figure(
            go.Candlestick(
                x=m.open_time[sl].astype("datetime64[s]"),
                open=m.open[sl],
                high=m.high[sl],
                low=m.low[sl],
                close=m.close[sl],
                name=sym,
            )
        )
        for when, kind, price, q in ev:
            fig.add_trace(
                go.Scatter(
                    x=[np.datetime64(int(when), "s")],
                    y=[price],
                    mode="markers+text",
                    text=[kind],
                    textposition="top center",
                    name=f"{kind} {q:g}" if q else kind,
                    marker={
                        "size": 10,
                        "symbol": "triangle-up" if kind == "entry" else "x" if kind == "stop" else "circle",
                    },
                )
            )
        side = "LONG" if base.side[i] > 0 else "SHORT"
        fig.update_layout(
            title=f"{base.policy}: {sym} {side} entry {base.entry_price[i]:g}, exit {base.exit_reason[i]}, "
            f"R {base.r[i]:+.2f}",
            xaxis_rangeslider_visible=False,
            height=450,
        )
        figs.append(fig)
    parts = [f.to_html(full_html=False, include_plotlyjs=(j == 0)) for j, f in enumerate(figs)]
    from harvest.lab.engine import __doc__ as fill_doc

    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>harvest replay</title>"
        "<style>body{font-family:sans-serif;margin:2em} .warn{color:#a40} "
        "pre{background:#f6f6f6;padding:1em;overflow:auto}</style>"
        "</head><body><h1>harvest replay</h1>"
        + (f"<p class='warn'><b>{html.escape(warn)}</b></p>" if (warn := no_funding_line(doc)) else "")
        + f"<pre>{html.escape(table(doc))}</pre>"
        f"<details><summary>run</summary><pre>{html.escape(json.dumps(doc['run'], indent=2))}</pre></details>"
        f"<details><summary>fill model and policies</summary><pre>{html.escape(fill_doc or '')}</pre></details>"
        + "".join(parts)
        + "</body></html>"
    )
    Path(path).write_text(page)
