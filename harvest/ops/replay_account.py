"""``harvest replay --account NAME``: the desk's own positions, rebuilt from the exchange, replayed
under every exit policy of the lab, and compared with what the desk made on them.

1. The account's venue (the deployment's settings: ``HARVEST_ACCOUNTS``, its credentials,
   ``HARVEST_FAPI_URL`` or the testnet/live venue; read-only) reads the history of each symbol
   (``--symbols``, default the account's ``HARVEST_SYMBOLS``) since ``--since`` before the
   exchange's clock (:class:`harvest.venues.binance_history.AccountHistory`: userTrades,
   allOrders, allAlgoOrders, FUNDING_FEE income, symbolConfig; within the weight budget).
2. :func:`harvest.lab.account.reconstruct` rebuilds the positions (entry, qty, side, the stop
   they had, closes, realized PnL, fees, funding).
3. Klines of those symbols from the first opening (less the market state's warm-up) to the
   exchange's last closed bar, from the exchange (cached by day) or ``--data`` files (cut at the
   exchange's clock; funding beside them as the lab finds it).
4. Each policy (:data:`harvest.lab.engine.POLICIES`) runs on the same entries with the lab's
   fill model (:func:`harvest.lab.engine.simulate`); the desk's own trades are the base of the
   paired differences (``Δ mean R = policy − desk``). A position the desk still holds is valued
   as the policies' ``end_of_data``: closed at the last closed bar, with the taker fee. Funding:
   the desk's is what it paid; the policies are charged none (the klines carry no funding
   rates; with ``--data``, the funding files beside them) — said under the table.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from harvest.data import Klines
from harvest.domain.models import HarvestTheta
from harvest.lab.account import DeskPosition, Reconstruction, reconstruct
from harvest.lab.engine import FillModel, Trades, simulate
from harvest.lab.entries import Entry
from harvest.lab.market import ReplayMarket, build_market
from harvest.lab.stats import paired, summarize

#: Where klines read from the exchange are cached (a folder per venue inside).
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "harvest" / "klines"


class AccountReplayError(ValueError):
    """A replay of an account that cannot run: the message names the setting or the option."""


def parse_since(text: str) -> float:
    """``30d``, ``12h``, ``90m`` or a number of seconds → seconds. Raises AccountReplayError."""
    t = text.strip().lower()
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    try:
        v = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise AccountReplayError(f"--since {text!r}: a span such as 30d, 12h or 90m") from None
    if not 0 < v <= 183 * 86400:
        raise AccountReplayError(f"--since {text!r}: more than 0 and at most 183 days (userTrades reaches 6 months)")
    return v


def account_venue(account: str):
    """The account's python-binance venue from the deployment's settings. Raises
    AccountReplayError naming the account or the setting when there is none."""
    from harvest.services.runtime import get_runtime
    from harvest.venues.binance import BinanceVenue

    rt = get_runtime()
    if account not in rt.accounts:
        raise AccountReplayError(
            f"--account {account!r}: not an account of this deployment (HARVEST_ACCOUNTS: {', '.join(rt.accounts)})"
        )
    ra = rt.for_account(account)
    if not isinstance(ra.venue, BinanceVenue):
        raise AccountReplayError(
            f"--account {account!r}: its venue is the in-process paper engine, which keeps no exchange history; "
            "set HARVEST_FAPI_URL (the emulator) or HARVEST_VENUE=testnet/live"
        )
    return ra


def _entries(positions: list[DeskPosition], m: ReplayMarket, theta: HarvestTheta) -> tuple[list[Entry], list, list]:
    """The lab's entries of the positions the market covers with a market state at entry and a
    bar after it, and ``(used positions, [(position, why skipped)])``."""
    warm = max(theta.sigma_window, theta.ts_window) + 1
    out, used, skipped = [], [], []
    for p in positions:
        if p.symbol not in m.start:
            skipped.append((p, "no klines"))
            continue
        try:
            b = m.bar_of(p.symbol, p.opened_at)
        except ValueError:
            skipped.append((p, "opened outside the klines"))
            continue
        if b < m.start[p.symbol] + warm or b > m.end_bar[p.symbol] - 1:
            skipped.append((p, "too little history before it or no bar after it"))
            continue
        stop = p.stop if p.stop is not None and p.side.sign * (p.entry_price - p.stop) > 0 else None
        out.append(Entry(p.symbol, p.side, b, p.entry_price, p.qty, min(125.0, max(1.0, p.leverage)), stop))
        used.append(p)
    return out, used, skipped


def desk_trades(positions: list[DeskPosition], like: Trades, m: ReplayMarket, fee_rate: float = 0.0) -> Trades:
    """The desk's own results as :class:`Trades` on the entries of ``like`` (a policy's run on
    the same entries, for its entry times and 1R: the position's stop, or the exit ladder's when
    it had none); a position still open is valued as the policies' ``end_of_data`` is: closed at
    the last closed bar's close, paying the taker fee ``fee_rate`` (fraction). MAE/MFE from the
    bars the position was open."""
    n = len(positions)
    net, exit_t, mae, mfe = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    fees, fund = np.zeros(n), np.zeros(n)
    reason = np.empty(n, dtype=object)
    partials = np.zeros(n, dtype=np.int64)
    ru = np.abs(like.entry_price - like.initial_stop)
    for i, p in enumerate(positions):
        last = m.end_bar[p.symbol]
        mark = float(m.close[last])
        close_fee = fee_rate * mark * p.qty_open if p.is_open else 0.0
        net[i] = p.net(mark) - close_fee
        fees[i], fund[i] = p.fees + close_fee, p.funding
        reason[i], partials[i] = p.exit_reason, p.partials
        b0 = m.bar_of(p.symbol, p.opened_at)
        b1 = last if p.closed_at is None else min(last, m.bar_of(p.symbol, min(p.closed_at, float(m.open_time[last]))))
        exit_t[i] = float(m.open_time[b1] + m.interval_of(p.symbol)) if p.closed_at is None else p.closed_at
        lo, hi = float(m.low[b0 : b1 + 1].min()), float(m.high[b0 : b1 + 1].max())
        s = p.side.sign
        worst, best = (lo, hi) if s > 0 else (hi, lo)
        mae[i] = min(0.0, s * (worst - p.entry_price) / ru[i])
        mfe[i] = max(0.0, s * (best - p.entry_price) / ru[i])
    return Trades(
        policy="desk",
        symbol=like.symbol,
        side=like.side,
        entry_time=like.entry_time,
        exit_time=exit_t,
        entry_price=like.entry_price,
        qty=like.qty,
        initial_stop=like.initial_stop,
        net=net,
        r=net / (ru * like.qty),
        mae_r=mae,
        mfe_r=mfe,
        fees=fees,
        funding=fund,
        funding_paid=np.maximum(fund, 0.0),
        funding_received=np.maximum(-fund, 0.0),
        exit_reason=reason,
        partials=partials,
    )


def market_from_files(paths: list[str], theta: HarvestTheta, now_ms: int) -> ReplayMarket:
    """The market of ``--data`` kline files (and the funding beside them, as the lab finds it)
    cut at the exchange's clock ``now_ms``: only bars closed by then, so a position the desk
    still holds and the policies' ``end_of_data`` are valued at the same bar. Raises
    KlineFileError / FundingFileError / AccountReplayError (no bar before the exchange's clock)."""
    from harvest.data import Klines, read_klines
    from harvest.lab.market import funding_for

    out = []
    for p in paths:
        k = read_klines(p)
        keep = (k.open_time + k.interval_s) * 1000 <= now_ms
        if not keep.any():
            raise AccountReplayError(f"--data {p}: no bar closed before the exchange's clock")
        k = Klines(k.symbol, *(getattr(k, f)[keep] for f in ("open_time", "open", "high", "low", "close", "volume")))
        span = (float(k.open_time[0]), float(k.open_time[-1] + k.interval_s))
        out.append((k, funding_for(p, k.symbol, span), str(p)))
    return build_market(out, theta)


def read_account(history, symbols: list[str], since_s: float, progress=None) -> tuple[Reconstruction, dict[str, Any]]:
    """The account's positions since ``since_s`` seconds before the exchange's clock, read
    through ``history`` (:class:`harvest.venues.binance_history.AccountHistory`), and what was
    read (``{"now_ms", "start_ms", "trades", "orders", "algo_orders", "funding_rows"}``)."""
    now = history.server_ms()
    start = now - int(since_s * 1000)
    trades, orders, algo = [], [], []
    for s in symbols:
        if progress:
            progress(f"reading {s}'s fills and orders")
        trades += history.user_trades(s, start, now)
        orders += history.all_orders(s, start, now)
        algo += history.algo_orders(s, start, now)
    traded = sorted({t["symbol"] for t in trades})
    funding = history.funding(start, now) if traded else []
    lev = history.leverage(traded) if traded else {}
    rec = reconstruct(trades, algo, orders, funding, lev)
    seen = {
        "now_ms": now,
        "start_ms": start,
        "trades": len(trades),
        "orders": len(orders),
        "algo_orders": len(algo),
        "funding_rows": len(funding),
    }
    return rec, seen


def replay_account(
    account: str,
    since_s: float,
    policies: list[str],
    theta: HarvestTheta,
    fill: FillModel,
    data: list[str] | None = None,
    symbols: list[str] | None = None,
    interval: str = "1m",
    cache: Path | None = DEFAULT_CACHE,
    history=None,
    progress=None,
) -> tuple[dict[str, Any], dict[str, Trades], ReplayMarket]:
    """Run the comparison (module docstring). ``history``: an AccountHistory (default: the
    account's, from the settings); ``cache``: the klines' day cache (None: none). Returns
    ``(document, trades by policy with "desk" first, market)``. Raises AccountReplayError,
    VenueError, KlineFileError."""
    t0 = time.perf_counter()
    if history is None:
        from harvest.venues.binance_history import AccountHistory

        ra = account_venue(account)
        history = AccountHistory(ra.venue)
        symbols = symbols or list(ra.settings.symbols)
        where = ra.settings.fapi_url or ra.settings.venue
    else:
        where = "given"
    if not symbols:
        raise AccountReplayError("no symbols to read: set HARVEST_SYMBOLS or --symbols")
    rec, seen = read_account(history, symbols, since_s, progress)
    if not rec.positions:
        raise AccountReplayError(
            f"account {account!r}: no position opened on {', '.join(symbols)} in the last {since_s / 86400:g} days"
        )
    warm = max(theta.sigma_window, theta.ts_window) + 2
    if data:
        m = market_from_files(data, theta, seen["now_ms"])
    else:
        used = sorted({p.symbol for p in rec.positions})
        from harvest.venues import binance_facts as facts

        step = (facts.KLINE_INTERVALS.get(interval) or 60) * 1000
        tag = "emulator" if where and str(where).startswith("http") else str(where)
        folder = None if cache is None else cache / tag.replace("/", "_")
        kl: list[tuple[Klines, tuple[np.ndarray, np.ndarray] | None, str]] = []
        for s in used:
            first = min(p.opened_at for p in rec.positions if p.symbol == s)
            if progress:
                progress(f"reading {s}'s {interval} klines")
            start = int(first * 1000) - warm * step
            kl.append((history.klines(s, start, seen["now_ms"], interval, folder), None, f"exchange ({where})"))
        m = build_market(kl, theta)
    entries, used_pos, skipped = _entries(rec.positions, m, theta)
    if not entries:
        raise AccountReplayError(
            "none of the positions can be replayed: "
            + "; ".join(f"{p.symbol} {p.side.value} at {p.opened_at:.0f}: {why}" for p, why in skipped)
        )
    runs: dict[str, Trades] = {}
    for p in policies:
        runs[p] = simulate(m, entries, p, theta, fill)
    desk = desk_trades(used_pos, runs[policies[0]], m, theta.taker_fee_rate)
    lev = np.array([x.leverage for x in entries])
    doc: dict[str, Any] = {
        "base": "desk",
        "policies": {"desk": summarize(desk, lev), **{p: summarize(t, lev) for p, t in runs.items()}},
        "paired": {p: paired(t, desk) for p, t in runs.items()},
    }
    rows = []
    for i, (p, e) in enumerate(zip(used_pos, entries, strict=True)):
        rows.append(
            {
                "symbol": p.symbol,
                "side": p.side.value,
                "opened_at": p.opened_at,
                "closed_at": p.closed_at,
                "entry_price": p.entry_price,
                "qty": p.qty,
                "leverage": p.leverage,
                "stop": p.stop,
                "stop_used": float(desk.initial_stop[i]),
                "stop_from": "the account's" if e.stop is not None else "exit ladder (none found)",
                "closes": [{"time": t, "price": px, "qty": q, "kind": k} for t, px, q, k in p.closes],
                "exit": p.exit_reason,
                "realized_pnl": p.realized_pnl,
                "fees": p.fees,
                "funding": p.funding,
                "net_usdt": float(desk.net[i]),
                "r": {"desk": float(desk.r[i]), **{name: float(t.r[i]) for name, t in runs.items()}},
                "exit_by_policy": {name: str(t.exit_reason[i]) for name, t in runs.items()},
            }
        )
    doc["positions"] = rows
    doc["run"] = {
        "account": account,
        "venue": where,
        "since_s": since_s,
        "history": seen,
        "skipped": [{"symbol": p.symbol, "opened_at": p.opened_at, "why": why} for p, why in skipped],
        "partial_history_legs": rec.partial_history,
        "data": {s: m.sources[s] for s in m.symbols},
        "bars": {s: m.count[s] for s in m.symbols},
        "interval_s": dict(zip(m.symbols, m.interval_s, strict=True)),
        "no_funding": [s for s in m.symbols if not m.has_funding.get(s)],
        "n_entries": len(entries),
        "fill_model": {"name": fill.name, "stop_slippage": fill.stop_slippage},
        "weight": {
            "spent": history.weight_spent,
            "by_endpoint": {k: {"requests": v[0], "weight": v[1]} for k, v in history.spent.items()},
            "waited_s": history.waited_s,
            "budget_1m": getattr(getattr(history.venue, "budget", None), "limit", None),
        },
        "seconds": time.perf_counter() - t0,
    }
    return doc, {"desk": desk, **runs}, m


def _utc(t: float | None) -> str:
    from datetime import datetime, timezone

    return "open" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _r(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:+.2f}"


def positions_table(doc: dict[str, Any]) -> str:
    """One row per replayed position: what the desk did (entry, stop, exit, net USDT, R) and
    the R each policy would have made on it."""
    pols = [p for p in doc["policies"] if p != "desk"]
    head = (
        f"{'#':>3} {'symbol':<9}{'side':<6}{'opened (UTC)':<17}{'entry':>11}{'stop':>11}{'qty':>10}{'lev':>5}"
        f"  {'desk exit':<12}{'net USDT':>9}{'desk R':>8}" + "".join(f"{p[:10]:>11}" for p in pols)
    )
    lines = [head, "-" * len(head)]
    for i, x in enumerate(doc["positions"], 1):
        stop = f"{x['stop']:.6g}" if x["stop"] is not None else f"({x['stop_used']:.6g})"
        lines.append(
            f"{i:>3} {x['symbol']:<9}{x['side']:<6}{_utc(x['opened_at']):<17}{x['entry_price']:>11.6g}{stop:>11}"
            f"{x['qty']:>10.6g}{x['leverage']:>5.0f}  {x['exit']:<12}{x['net_usdt']:>9.2f}{_r(x['r']['desk']):>8}"
            + "".join(f"{_r(x['r'][p]):>11}" for p in pols)
        )
    return "\n".join(lines)


def format_report(doc: dict[str, Any]) -> str:
    """The terminal report: the positions, then the lab's table with the desk as the base."""
    from harvest.lab.report import table

    r = doc["run"]
    w = r["weight"]
    h = r["history"]
    lines = [
        f"harvest replay --account {r['account']}: {r['n_entries']} positions since {_utc(h['start_ms'] / 1000)} UTC "
        f"({h['trades']} fills, {h['orders']} orders, {h['algo_orders']} conditional orders, "
        f"{h['funding_rows']} funding rows) from {r['venue']}; weight {w['spent']}"
        + (f" of a {w['budget_1m']}/min budget" if w.get("budget_1m") else "")
        + (f", waited {w['waited_s']:.0f} s for it" if w["waited_s"] else "")
        + f"; in {r['seconds']:.1f} s",
        "",
        positions_table(doc),
        "(a stop in parentheses: none found on the exchange; the exit ladder's stop gives 1R)",
        "",
        table(doc),
        "the desk's funding is what the account paid; "
        + (
            f"the policies are charged none on {', '.join(r['no_funding'])} (no funding rates read)"
            if r["no_funding"]
            else "the policies are charged the funding files' rates"
        ),
    ]
    if r["skipped"]:
        lines.append(
            "not replayed: " + "; ".join(f"{x['symbol']} {_utc(x['opened_at'])} ({x['why']})" for x in r["skipped"])
        )
    if r["partial_history_legs"]:
        lines.append(f"{r['partial_history_legs']} position(s) opened before --since were left out")
    return "\n".join(lines)


def run_cli(a, policies: list[str], theta: HarvestTheta, fill: FillModel) -> int:
    """``harvest replay --account``: the report on stdout (``--json``: the document), progress
    on stderr; 2 for an unusable request (the message names the option or setting)."""
    import json
    import sys

    from harvest.data import KlineFileError
    from harvest.lab.market import FundingFileError

    def say(msg: str) -> None:
        if not a.json and sys.stderr.isatty():
            print(msg, file=sys.stderr, flush=True)

    try:
        since = parse_since(a.since)
        symbols = [x.strip().upper() for x in a.symbols.split(",") if x.strip()] if a.symbols else None
        doc, _, _ = replay_account(
            a.account,
            since,
            policies,
            theta,
            fill,
            data=a.data or None,
            symbols=symbols,
            interval=a.interval,
            cache=None if a.no_cache else (Path(a.cache) if a.cache else DEFAULT_CACHE),
            progress=say,
        )
    except (AccountReplayError, KlineFileError, FundingFileError) as e:
        print(f"harvest replay: {e}", file=sys.stderr)
        return 2
    if a.json:
        from harvest.ops.cli.common import json_safe

        print(json.dumps(json_safe(doc), indent=2))
    else:
        print(format_report(doc))
    return 0
