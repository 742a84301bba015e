"""The ``harvest`` command line: ``demo``, ``emulator``, ``scorecard``, ``reconcile``, ``schedule``,
``chaos``, ``metrics``, ``trading``, ``plans``, ``plan``, ``streams`` (each with --help)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from harvest.domain.models import PlanState
from harvest.ops.term import term_safe
from harvest.store.records import UnreadableRecord


def _say(*lines: object, multiline: bool = False, file=None) -> None:
    """Print each of ``lines`` through :func:`term_safe` (stdout unless ``file``)."""
    for line in lines:
        print(term_safe(line, multiline), file=file or sys.stdout)


def _cmd_demo(a: argparse.Namespace) -> int:
    from harvest.ops.demo import run_demo

    card = run_demo(
        start=a.start,
        hours=a.hours,
        speed=a.speed,
        as_json=a.json,
        concurrency=a.concurrency,
        keep=a.keep,
        in_process=a.in_process,
        namespace=a.namespace,
        accounts=a.accounts,
    )
    return 0 if card["non_terminal"] == 0 else 1


def _cmd_emulator(a: argparse.Namespace) -> int:
    import logging

    from harvest.store.connect import redis_client
    from harvest.venues.sim.clock import MarketClock
    from harvest.venues.sim.emulator import Emulator
    from harvest.venues.sim.emulator_streams import StreamServer
    from settings import get_settings

    s = get_settings()
    if not (s.api_key and s.api_secret):
        print(
            "harvest emulator: set HARVEST_API_KEY and HARVEST_API_SECRET (any values; the workers use the same)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    r = redis_client(s.redis_url, decode_responses=True)
    clock = MarketClock(r, s.namespace, s.paper_replay_start, s.paper_replay_speed)
    emu = Emulator(
        r,
        s.namespace,
        s.account,
        s.api_key.get_secret_value(),
        s.api_secret.get_secret_value(),
        clock=clock,
        host=a.host,
        port=a.port,
        fee_rate=s.theta.taker_fee_rate,
    )
    if a.dual:
        emu.venue.set_dual(True)
    for spec in a.fault:
        endpoint, _, rest = spec.partition("=")
        kind, _, times = rest.partition(":")
        emu.faults.inject(endpoint, kind, int(times or 1))
    if a.skew_ms:
        emu.faults.set_skew(a.skew_ms)
    emu.streams = StreamServer(emu, host=a.host, port=a.stream_port).start()
    print(
        f"fapi emulator on {emu.url}, streams on {emu.stream_url} (namespace {s.namespace}, account {s.account}); "
        f"point workers and `harvest streams` at it with HARVEST_FAPI_URL={emu.url}",
        flush=True,
    )
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_scorecard(a: argparse.Namespace) -> int:
    from harvest.ops.scorecard import build_scorecard, format_scorecard
    from harvest.services.runtime import get_runtime

    card = build_scorecard(get_runtime())
    if a.json:
        print(json.dumps(card, indent=2, sort_keys=True))
    else:  # account names, reasons and error texts in it come from Redis
        _say(format_scorecard(card), multiline=True)
    return 0


def _cmd_reconcile(a: argparse.Namespace) -> int:
    import tasks.app  # noqa: F401  (the Celery app a resend is published on)
    from harvest.services.reconcile import reconcile_once
    from harvest.services.runtime import get_runtime
    from harvest.venues.base import VenueError
    from workflows import start_resend

    try:
        out = reconcile_once(get_runtime(), resend=start_resend)
    except VenueError as e:  # the exchange's message, escaped
        _say(f"harvest reconcile: venue unavailable ({e}); nothing changed", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(out))
    else:
        _say("  ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def _cmd_chaos(a: argparse.Namespace) -> int:
    from harvest.ops.chaos import format_report, run_chaos

    def say(m: str) -> None:  # progress on stderr; stdout carries only the report
        print(m, file=sys.stderr, flush=True)

    if a.hosts:
        from harvest.ops.hosts import format_hosts_report, run_hosts

        try:
            rep = run_hosts(plans=a.plans or 40, plan_ttl_s=a.plan_ttl, drain_timeout_s=a.drain_timeout, progress=say)
        except (RuntimeError, AssertionError) as e:
            print(f"harvest chaos --hosts: could not run: {e}", file=sys.stderr)
            return 2
        print(json.dumps(rep, indent=2) if a.json else format_hosts_report(rep))
        return 0 if rep["ok"] else 1
    try:
        rep = run_chaos(
            plans=a.plans or 200,
            broker=a.broker,
            waves=a.waves,
            drain_timeout_s=a.drain_timeout,
            plan_ttl_s=a.plan_ttl,
            progress=say,
            accounts=a.accounts,
            sentinel=a.sentinel,
        )
    except (RuntimeError, AssertionError) as e:
        print(f"harvest chaos: could not run: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep, indent=2) if a.json else format_report(rep))
    return 0 if rep["ok"] else 1


def _cmd_streams(a: argparse.Namespace) -> int:
    import logging

    from harvest.services.runtime import get_runtime
    from harvest.services.streams import run_streams

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rt = get_runtime()
    symbols = [x.strip().upper() for x in a.symbols.split(",") if x.strip()] if a.symbols else None
    accounts = [x.strip() for x in a.accounts.split(",") if x.strip()] if a.accounts else rt.accounts
    unknown = [x for x in accounts if x not in rt.accounts]
    if unknown:
        print(f"harvest streams: unknown account(s) {', '.join(unknown)}; configured: {', '.join(rt.accounts)}")
        return 2
    print(
        f"harvest streams: accounts {', '.join(accounts)} (namespace {rt.settings.namespace}); "
        f"caches in {rt.settings.namespace}:streams:<account>:*",
        flush=True,
    )
    fire = None
    if not a.no_triggers:
        from concurrent.futures import ThreadPoolExecutor

        from tasks.app import app  # the deployment's Celery app: the chains' broker and queues
        from workflows import full_chain

        queue = rt.settings.queue("scan")
        # Published from a thread of its own: a broker that does not answer (kombu retrying its
        # connection) never holds the mark streams' event loop.
        publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harvest-fire")
        log = logging.getLogger("harvest.streams")

        def publish(account: str, symbol: str) -> None:
            try:
                # app given: Celery's current app is per thread, and this is not the main one
                full_chain(symbol, app=app, account=account).apply_async(queue=queue, expires=rt.settings.plan_ttl_s)
            except Exception as e:  # the beat scan is the safety net
                log.warning("chain of %s %s not published: %s: %s", account, symbol, type(e).__name__, str(e)[:200])

        def fire(account: str, symbol: str) -> None:  # a mark crossed a trigger: that position's chain now
            publisher.submit(publish, account, symbol)

    run_streams(rt, symbols, lease_s=a.lease_s, accounts=accounts, fire=fire)
    return 0


def _cmd_metrics(a: argparse.Namespace) -> int:
    import logging

    from prometheus_client import CollectorRegistry, generate_latest

    from harvest.ops.metrics import HarvestCollector, serve_metrics
    from harvest.ops.scorecard import queue_depths
    from harvest.services.runtime import get_runtime

    if a.max_connections < 1 or not 0 < a.read_timeout <= 300:
        print(
            "harvest metrics: --max-connections must be 1 or more, --read-timeout above 0 and at most 300 s",
            file=sys.stderr,
        )
        return 2
    rt = get_runtime()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HarvestCollector(rt, lambda: {rt.settings.queue(k): n for k, n in queue_depths(rt).items()}))
    if a.once:
        sys.stdout.write(generate_latest(registry).decode())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    auth = rt.settings.metrics_basic_auth
    server = serve_metrics(
        registry,
        a.host,
        a.port,
        auth.get_secret_value() if auth else None,
        max_connections=a.max_connections,
        read_timeout_s=a.read_timeout,
    )
    print(
        f"harvest metrics for namespace {rt.settings.namespace} on http://{a.host}:{a.port}/metrics"
        + (" (basic auth)" if auth else ""),
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _who() -> str:
    import getpass
    import os

    try:
        return getpass.getuser()
    except Exception:  # no user database entry (a container): the numeric id
        return f"uid:{os.getuid()}"


def _cmd_trading(a: argparse.Namespace) -> int:
    from harvest.domain.trading import DEPLOYMENT, effective
    from harvest.services.runtime import get_runtime
    from harvest.store.trading import read, set_state

    rt = get_runtime()
    k = rt.plans.k
    if a.account is not None and a.account not in rt.accounts:  # a typo must not hold nothing
        _say(f"unknown account {a.account!r}; configured: {', '.join(rt.accounts)}", file=sys.stderr)
        return 2
    if a.action != "show":
        state = {"halt": "HALTED", "reduce": "REDUCING", "resume": "ACTIVE", "shadow": "SHADOW"}[a.action]
        set_state(rt.r, k.trading, f"{rt.settings.namespace}:stream:trading", state, a.account, _who(), a.reason)
    states = read(rt.r, k.trading)
    shown = [a.account] if a.account else rt.accounts
    out = {
        "deployment": states.get(DEPLOYMENT, "ACTIVE"),
        "accounts": {x: v for x, v in states.items() if x != DEPLOYMENT},
        "in_force": {x: effective(states, x, rt.for_account(x).settings.mode) for x in shown},
    }
    if a.json:
        print(json.dumps(out))
    else:
        _say(  # states and account names as read from Redis
            f"deployment: {out['deployment']}  "
            + "  ".join(f"account {x}: {v}" for x, v in out["accounts"].items())
            + "  (in force: "
            + ", ".join(f"{x} {v}" for x, v in out["in_force"].items())
            + ")"
        )
    return 0


def _plan_row(p) -> dict:
    return {
        "plan_id": p.plan_id,
        "symbol": p.symbol,
        "action": p.action.value,
        "tier": p.tier,
        "attempt": p.attempt,
        "state": p.state,
        "reason": p.reason,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "order_qty": p.order_qty,
        "stop_price": p.stop_price,
        "executed_qty": p.executed_qty,
        "realized_pnl": p.realized_pnl,
    }


def _cmd_plans(a: argparse.Namespace) -> int:
    from harvest.ops.demo import parse_time
    from harvest.services.runtime import get_runtime

    rt = get_runtime()
    since = parse_time(a.since) if a.since else None
    unreadable: list = []  # plans that do not parse: listed after the others, never a crash
    rows = [
        _plan_row(p)
        for p in rt.plans.all_plans(unreadable=unreadable)
        if (a.account is None or p.account == a.account)
        and (a.symbol is None or p.symbol == a.symbol)
        and (a.state is None or p.state == a.state.upper())
        and (since is None or p.created_at >= since)
    ]
    if a.json:
        print(json.dumps(rows + [{"unreadable": u.key, "error": u.error} for u in unreadable]))
        return 0
    from datetime import datetime, timezone

    for r in rows:
        t = datetime.fromtimestamp(r["created_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        _say(  # every field as stored: escaped, one plan per line whatever its reason holds
            f"{t}  {r['plan_id']}  {r['symbol']:<10} {r['action']:<20} #{r['attempt']:<2} "
            f"{r['state']:<16} {r['reason']}"
        )
    for u in unreadable:
        _say(f"UNREADABLE  {u.key}: {u.error}")
    print(f"{len(rows)} plans" + (f", {len(unreadable)} unreadable" if unreadable else ""))
    return 0


def _cmd_plan(a: argparse.Namespace) -> int:
    from harvest.services.runtime import get_runtime

    rt = get_runtime()
    try:
        plan = rt.plans.get(a.plan_id)
    except UnreadableRecord as e:
        _say(f"harvest plan: {e}", file=sys.stderr)
        return 1
    if plan is None:
        print(f"harvest plan: no plan {a.plan_id!r}", file=sys.stderr)
        return 2
    if a.action == "cancel":
        if plan.state not in (PlanState.PROPOSED, PlanState.APPROVED):
            _say(
                f"harvest plan: {a.plan_id} is {plan.state}: only a PROPOSED or APPROVED plan can be cancelled "
                "(a SUBMITTED one's order is with the exchange; confirm resolves it)",
                file=sys.stderr,
            )
            return 2
        ok, before = rt.plans.transition(a.plan_id, PlanState.REJECTED, "operator_cancel", data={"who": _who()})
        done = "cancelled (REJECTED operator_cancel; its decision is not tried again this epoch)"
        _say(f"{a.plan_id}: {done if ok else f'not cancelled: it moved to {before}'}")
        return 0 if ok else 1
    if a.action == "retry":
        from harvest.domain.plans import NON_TERMINAL

        if plan.state in NON_TERMINAL:
            _say(f"harvest plan: {a.plan_id} is {plan.state}: still in flight, nothing to retry", file=sys.stderr)
            return 2
        if plan.state in (PlanState.FILLED, PlanState.SHADOWED):
            _say(f"harvest plan: {a.plan_id} is {plan.state}: it took effect, nothing to retry", file=sys.stderr)
            return 2
        rt.plans.request_retry(plan, _who())
        print(
            f"{a.plan_id}: retry requested (by {_who()}): the next scan that makes this decision again gives it "
            "its next attempt at once, whatever its backoff or attempt bound"
        )
        return 0
    ledger = {"plan": plan.model_dump(mode="json"), "transitions": rt.plans.history(a.plan_id, sends=True)}
    if a.json:
        print(json.dumps(ledger, default=str))
        return 0
    p = plan
    d = p.decision
    # Every field below was read from Redis (the exchange's error message among them): each line
    # is escaped whole, so a stored escape sequence or newline shows as text.
    _say(
        f"plan {p.plan_id}  {p.symbol} {p.side.value} epoch {p.epoch}  {p.action.value} tier {p.tier} "
        f"attempt {p.attempt}  lineage {p.lineage}",
        f"state {p.state} ({p.reason})  clientOrderId {p.client_order_id}",
        f"decision: mark {d.get('mark_price')}  R_net {d.get('r_net')}  kill {d.get('kill_score')}  "
        f"regime {d.get('regime')}  reasons {d.get('reason_codes')}",
        f"components: {d.get('components')}",
        f"order: qty {p.order_qty}  stop {p.stop_price}  executed {p.executed_qty} @ {p.avg_price}  "
        f"realized PnL (net of fees) {p.realized_pnl}  error {p.error_code} {p.error_message or ''}",
    )
    for t in ledger["transitions"]:
        _say(
            f"  {t.get('ts')}  {t.get('from') or '-':>9} → {t.get('to'):<16} {t.get('reason')}  "
            f"{str(t.get('data', ''))[:200]}"
        )
    return 0


def _cmd_schedule(a: argparse.Namespace) -> int:
    from settings import get_settings
    from tasks.app import app
    from tasks.beat import list_schedule, reset_interval, set_interval

    s = get_settings()
    try:
        if a.action == "set":
            value = set_interval(app, s, a.name, a.seconds)
            print(f"{a.name}: every {value:g} s (expires {value:g} s); the running beat uses it from its next run")
            return 0
        if a.action == "reset":
            value = reset_interval(app, s, a.name)
            print(f"{a.name}: back to the settings value, every {value:g} s")
            return 0
    except ValueError as e:
        _say(f"harvest schedule: {e}", file=sys.stderr)
        return 2
    rows = list_schedule(app, s)
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'entry':<14}{'task':<32}{'every (s)':>10}{'expires (s)':>12}  {'source':<9}{'next in (s)':>12}")
    for row in rows:
        nxt = "-" if row["next_run_in_s"] is None else f"{row['next_run_in_s']:.1f}"
        src = row["source"] + ("" if row["installed"] else "*")
        _say(  # names and tasks as read back from beat's schedule in Redis
            f"{row['name']:<14}{row['task']:<32}{row['interval_s']:>10g}{row['expires_s'] or 0:>12g}  {src:<9}{nxt:>12}"
        )
    if not all(r["installed"] for r in rows):
        print("* not installed yet: beat has not started on this namespace")
    return 0


def _cmd_notify(a: argparse.Namespace) -> int:
    import logging

    from harvest.ops.notify import apprise_sender, run, send_test

    if not 0 < a.timeout <= 300:
        print("harvest notify: --timeout must be above 0 and at most 300 seconds", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.test:  # the operator's probe: needs the URLs, not Redis
        from settings import get_settings

        urls = get_settings().notify_urls
    else:
        from harvest.services.runtime import get_runtime

        rt = get_runtime()
        urls = rt.settings.notify_urls
    if urls is None:
        print(
            "harvest notify: HARVEST_NOTIFY_URLS is not set (apprise URLs: tgram://, slack://, json://…)",
            file=sys.stderr,
        )
        return 2
    try:
        if a.test:
            ok, deliveries = send_test(urls.get_secret_value(), a.timeout)
        else:
            send = apprise_sender(urls.get_secret_value(), a.timeout)
    except ValueError as e:
        print(f"harvest notify: {e}", file=sys.stderr)
        return 2
    if a.test:  # each service masked by apprise: scheme and host part, no token
        for d in deliveries:
            if d.ok:
                print(f"harvest notify --test: {d.target}: delivered")
            else:
                print(f"harvest notify --test: {d.target}: NOT delivered ({d.reason})", file=sys.stderr)
        if not deliveries:
            print("harvest notify --test: NOT delivered (no service was notified)", file=sys.stderr)
        return 0 if ok else 1
    try:
        return run(rt, send, a.interval, once=a.once)
    except KeyboardInterrupt:
        return 0


def _cmd_console(a: argparse.Namespace) -> int:
    from harvest.ops.console import password_problem, serve
    from harvest.services.runtime import get_runtime

    rt = get_runtime()
    pw = rt.settings.console_password.get_secret_value() if rt.settings.console_password else None
    if pw is not None and (why := password_problem(pw)):
        print(f"harvest console: HARVEST_CONSOLE_PASSWORD {why}: choose a longer one", file=sys.stderr)
        return 2
    print(f"harvest console: http://{a.host}:{a.port}/ ({'changes need the console password' if pw else 'read-only'})")
    try:
        serve(rt, a.host, a.port, pw, tuple(rt.settings.console_hosts))
    except KeyboardInterrupt:
        pass
    return 0


def _json_safe(x):
    """``x`` with every non-finite float as None (JSON has no NaN or Infinity)."""
    import math

    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _entry_args(a: argparse.Namespace) -> tuple:
    """The generated entries' options of ``harvest replay`` in :func:`harvest.lab.run.load_inputs`'s
    order after the entries CSV: rule, spacing (s), random count, seed, margin, leverage, start, end."""
    from harvest.ops.demo import parse_time

    return (
        a.rule,
        a.every_minutes * 60,
        a.n,
        a.seed,
        a.margin,
        a.leverage,
        parse_time(a.start) if a.start else None,
        parse_time(a.end) if a.end else None,
    )


def _replay_tune(a: argparse.Namespace, policies: list[str], theta, fill) -> int:

    from harvest.data import KlineFileError
    from harvest.lab.entries import EntriesError
    from harvest.lab.market import FundingFileError
    from harvest.lab.run import load_inputs
    from harvest.lab.tune import tune
    from harvest.ops.demo import parse_time

    baselines = [p for p in policies if p != "default"]
    fields = [x.strip() for x in a.tune_fields.split(",") if x.strip()] if a.tune_fields else None
    try:
        m, entries = load_inputs(a.data or [], theta, a.entries, *_entry_args(a))
        times = sorted(float(m.open_time[x.bar]) for x in entries)
        if a.folds > 1:  # walk-forward: the second half of the entries in `folds` test spans
            from harvest.lab.tune import walk_forward

            cuts = [times[int(len(times) * (0.5 + 0.5 * k / a.folds))] for k in range(a.folds)] if times else []
            wf = walk_forward(m, entries, cuts, theta, fill, baselines, a.trials, a.seed, fields=fields)
            if a.json:
                print(json.dumps(_json_safe(wf), indent=2))
                return 0
            from datetime import datetime, timezone

            for f in wf["summary"]:
                when = datetime.fromtimestamp(f["train_until"], timezone.utc).strftime("%Y-%m-%d")
                lo, hi = f["tuned_mean_r_ci95"]
                vs = "  ".join(
                    f"{p} {d['mean_r_diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                    for p, d in f["vs"].items()
                )
                print(
                    f"fold from {when}: {f['n_test']} test entries, tuned default {f['tuned_mean_r']:+.3f} R "
                    f"[{lo:+.3f}, {hi:+.3f}]; others − tuned: {vs}"
                )
                print("  " + (" ".join(f["lines"]) or "(the configured theta won)"))
            return 0
        if a.split:
            split = parse_time(a.split)
        else:  # the first 70 % of the entries' span trains, the rest tests
            split = times[int(len(times) * 0.7)] if times else 0.0
        doc = tune(
            m,
            entries,
            split,
            theta,
            fill,
            baselines,
            a.trials,
            a.seed,
            progress=not a.json and sys.stderr.isatty(),
            fields=fields,
        )
    except (KlineFileError, FundingFileError, EntriesError, ValueError, FileNotFoundError) as e:
        print(f"harvest replay --tune: {e}", file=sys.stderr)
        return 2

    if a.json:
        print(json.dumps(_json_safe(doc), indent=2))
        return 0
    from datetime import datetime, timezone

    from harvest.lab.report import table

    when = datetime.fromtimestamp(doc["split"], timezone.utc).strftime("%Y-%m-%d %H:%M")
    print(
        f"harvest replay --tune: {doc['trials']} trials on {doc['n_train']} training entries (before {when} UTC), "
        f"judged on {doc['n_test']} later entries"
    )
    for span in ("train", "test"):
        print(f"\n{span} span (paired differences against the tuned default):")
        print(table({"base": "tuned", **doc[span]}))
    print("\nto apply the tuned theta:")
    print("\n".join(doc["lines"]) or "(the configured theta won: nothing to change)")
    return 0


def _replay_fit_kill(a: argparse.Namespace, theta, fill) -> int:
    """``harvest replay --fit-kill PATH``: fit the learned kill on the entries before ``--split``
    (default: the first 70 %), judge it on the later ones against every policy, write the model
    (:mod:`harvest.lab.kill_model`)."""
    from pathlib import Path

    from harvest.data import KlineFileError
    from harvest.lab.entries import EntriesError
    from harvest.lab.kill_model import fit_and_judge, fit_text
    from harvest.lab.market import FundingFileError
    from harvest.lab.run import load_inputs
    from harvest.ops.demo import parse_time

    try:
        m, entries = load_inputs(a.data or [], theta, a.entries, *_entry_args(a))
        times = sorted(float(m.open_time[x.bar]) for x in entries)
        split = parse_time(a.split) if a.split else times[int(len(times) * 0.7)]
        cmd = "harvest replay " + " ".join(sys.argv[2:])
        model, doc = fit_and_judge(m, entries, split, theta, fill, a.data or [], cmd)
        Path(a.fit_kill).write_text(json.dumps(_json_safe(model.to_dict()), indent=1) + "\n")
    except (KlineFileError, FundingFileError, EntriesError, ValueError, OSError) as e:
        print(f"harvest replay --fit-kill: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(_json_safe(doc), indent=2))
    else:
        print(fit_text(model, doc))
        print(f"model: {a.fit_kill} (HARVEST_KILL_MODEL={a.fit_kill} to load it)")
    return 0


def _cmd_replay(a: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()  # "in X s": the whole run, statistics and the report included
    from harvest.data import KlineFileError
    from harvest.lab.engine import POLICIES, STOP_SLIPPAGE, FillModel
    from harvest.lab.entries import EntriesError
    from harvest.lab.market import FundingFileError
    from harvest.lab.report import table, write_html
    from harvest.lab.run import run_replay
    from settings import load_settings

    policies = [x.strip() for x in a.policies.split(",") if x.strip()]
    unknown = [x for x in policies if x not in POLICIES]
    if unknown or not policies:
        print(f"harvest replay: unknown policy {unknown}: choose from {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    theta = load_settings().theta
    try:
        fill = FillModel(
            a.scan_delay,
            a.trailing_positive,
            a.trailing_offset,
            a.time_stop_hours * 3600,
            stop_slippage=(STOP_SLIPPAGE if a.slippage is None else a.slippage) if a.fill_model == "slippage" else 0.0,
            trail_r=a.trail_r,
            trail_offset_r=a.trail_offset_r,
        )
    except ValueError as e:
        print(f"harvest replay: {e}", file=sys.stderr)
        return 2

    if a.account:  # the desk's own positions, from the exchange (harvest.ops.replay_account)
        from harvest.ops.replay_account import run_cli

        return run_cli(a, policies, theta, fill)
    if a.fit_kill:
        return _replay_fit_kill(a, theta, fill)
    if a.tune:
        return _replay_tune(a, policies, theta, fill)
    try:
        doc, runs, m = run_replay(
            a.data or [],
            policies,
            theta,
            fill,
            a.entries,
            *_entry_args(a),
            progress=not a.json and sys.stderr.isatty(),
            both_fills=a.both_fills,
            t0=t0,
        )
    except (KlineFileError, FundingFileError, EntriesError, ValueError, FileNotFoundError) as e:
        print(f"harvest replay: {e}", file=sys.stderr)
        return 2
    if a.html:
        write_html(a.html, doc, runs, m)
    doc["run"]["seconds"] = time.perf_counter() - t0  # with the report written
    if a.json:
        print(json.dumps(_json_safe(doc), indent=2))
    else:
        r = doc["run"]
        on = ", ".join(f"{s} ({n} bars)" for s, n in r["bars"].items())
        print(
            f"harvest replay: {r['n_entries']} entries on {on}, {r['kernel_evaluations']} kernel evaluations "
            f"in {r['seconds']:.1f} s"
        )
        print(table(doc))
        if a.html:
            print(f"report: {a.html}")
    return 0


def _redis_url_shown() -> str:
    """The state store's URL as it may be printed (password and tokens masked): the settings'
    ``redis_url`` or, when the settings cannot be read, ``HARVEST_REDIS_URL`` as given."""
    from settings import get_settings, mask_url

    try:
        url = get_settings().redis_url
    except BaseException:  # noqa: BLE001 (the settings are what failed: the variable as given)
        url = os.environ.get("HARVEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    return mask_url(url)


def _broker_url_shown() -> str:
    """The Celery broker's URL as it may be printed (masked), like :func:`_redis_url_shown`."""
    from settings import get_settings, mask_url

    try:
        url = get_settings().broker
    except BaseException:  # noqa: BLE001
        url = os.environ.get("HARVEST_BROKER_URL") or os.environ.get("HARVEST_REDIS_URL", "")
    return mask_url(url)


def _brief(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (a Redis or exchange
    error can be long), its type when it has none."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def explain_failure(e: BaseException, cmd: str, a: argparse.Namespace | None = None) -> tuple[str, int]:
    """What ``harvest <cmd>`` prints for an exception that ended it, and its exit status:
    ``(one line naming what failed and how to fix it, 2 for settings and usage or 1 for a
    failure at run time)``. The line is not yet escaped (:func:`term_safe`) and every URL in
    it is masked (:func:`settings.mask_url`).

    Known failures: invalid settings (:class:`settings.SettingsError`, 2); Redis refused the
    password (``redis.AuthenticationError``), has no such database (``ERR DB index is out of
    range``, a ``ResponseError`` at connect: the db of ``HARVEST_REDIS_URL`` is at or above the
    server's ``databases``, 16 by default), is a read-only replica, or cannot be reached
    (``redis.ConnectionError``/``TimeoutError``, a Sentinel naming no primary included); the
    Celery broker cannot be reached (``kombu.exceptions.OperationalError``); the exchange
    answered an error (:class:`harvest.venues.base.VenueError`); a port already taken or
    another OS error; an interrupt (Ctrl-C, 130). Anything else: its type and message and a
    pointer to ``--debug`` (1)."""
    import redis

    from harvest.venues.base import VenueError
    from settings import SettingsError, mask_url, redis_db

    where = f"harvest {cmd}" if cmd else "harvest"
    if isinstance(e, SettingsError):
        return f"{where}: {'; '.join(str(e).splitlines())}", 2
    if isinstance(e, SystemExit):  # a command's own refusal, e.g. `harvest demo --accounts 9`
        return f"{where}: {e.code}", 2
    if isinstance(e, KeyboardInterrupt):
        return f"{where}: interrupted", 130
    if isinstance(e, redis.AuthenticationError):
        return (
            f"{where}: Redis at {_redis_url_shown()} refused the credentials ({_brief(e)}): "
            "put the server's password in HARVEST_REDIS_URL (redis://:PASSWORD@host:port/db)",
            1,
        )
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):
        return (
            f"{where}: cannot reach Redis at {_redis_url_shown()} ({_brief(e)}): "
            "start redis-server or set HARVEST_REDIS_URL",
            1,
        )
    if isinstance(e, redis.ReadOnlyError):
        return (
            f"{where}: Redis at {_redis_url_shown()} is a read-only replica ({_brief(e)}): "
            "point HARVEST_REDIS_URL at the primary",
            1,
        )
    if isinstance(e, redis.ResponseError) and "db index is out of range" in str(e).lower():
        url = _redis_url_shown()
        try:
            db = redis_db(url)
        except ValueError:
            db = None
        return (
            f"{where}: Redis at {url} has no database {db if db is not None else '(of the URL)'} ({_brief(e)}): "
            "set HARVEST_REDIS_URL's db below the server's `databases` (16 by default), e.g. /0",
            1,
        )
    if isinstance(e, redis.RedisError):
        return f"{where}: Redis at {_redis_url_shown()} answered {type(e).__name__}: {_brief(e)}", 1
    kombu_exc = sys.modules.get("kombu.exceptions")
    if kombu_exc is not None and isinstance(e, kombu_exc.OperationalError):
        return (
            f"{where}: cannot reach the Celery broker at {_broker_url_shown()} ({mask_url(_brief(e))}): "
            "start it or set HARVEST_BROKER_URL",
            1,
        )
    if isinstance(e, VenueError):
        return (
            f"{where}: the exchange answered {_brief(e)} (HTTP {e.http_status}): nothing more was done; "
            "see the exchange's status and the settings HARVEST_VENUE / HARVEST_FAPI_URL",
            1,
        )
    if isinstance(e, OSError):
        port = getattr(a, "port", None)
        if e.errno in (98, 48, 10048) and port is not None:  # EADDRINUSE
            return (
                f"{where}: cannot listen on {getattr(a, 'host', '')}:{port} ({e.strerror}): "
                "stop what holds the port or choose another with --port",
                1,
            )
        what = f"{e.strerror or _brief(e)}" + (f": {e.filename}" if e.filename else "")
        return f"{where}: {what} ({type(e).__name__}; run with --debug for the traceback)", 1
    return f"{where}: unexpected {type(e).__name__}: {mask_url(_brief(e))} (run with --debug for the traceback)", 1


def _debug_from_env() -> bool:
    """Whether ``HARVEST_DEBUG`` asks for tracebacks (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("HARVEST_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``harvest`` console script: parse ``argv`` and run the command.

    Returns the command's exit status. A failure ends as one line on stderr naming what
    failed and how to fix it (:func:`explain_failure`), status 2 for invalid settings or
    usage and 1 at run time, never a traceback; ``--debug`` (before the command, or
    ``HARVEST_DEBUG=1``) lets the exception through with its traceback instead."""
    from harvest.ops.chaos import PLAN_TTL_S as CHAOS_PLAN_TTL_S
    from harvest.ops.chaos import WAVES as CHAOS_WAVES
    from harvest.ops.demo import DEFAULT_START
    from harvest.ops.version import VersionAction

    p = argparse.ArgumentParser(prog="harvest", description="Exit-management engine for Binance USD-M futures.")
    p.add_argument("--version", action=VersionAction, help="print the installed release (and its commit) and exit")
    p.add_argument(
        "--debug",
        action="store_true",
        default=_debug_from_env(),
        help="on a failure, show the traceback instead of one line (also HARVEST_DEBUG=1)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the whole pipeline on the paper venue and real klines, print a scorecard")
    d.add_argument(
        "--start", default=DEFAULT_START, help="market start, ISO-8601 UTC or Unix seconds (default %(default)s)"
    )
    d.add_argument("--hours", type=float, default=24.0, help="market hours to replay (default %(default)s)")
    d.add_argument(
        "--speed",
        type=float,
        default=1440.0,
        help="market seconds per wall second (default %(default)s: a market day per minute)",
    )
    d.add_argument("--concurrency", type=int, default=2, help="worker processes (default %(default)s)")
    d.add_argument("--keep", action="store_true", help="keep the demo's Redis keys afterwards")
    d.add_argument(
        "--accounts",
        type=int,
        default=3,
        help="accounts (1–8; default %(default)s: alpha and beta trading, gamma in shadow; with several, "
        "harvest streams feeds the scans)",
    )
    d.add_argument(
        "--namespace",
        help="Redis key and queue prefix (default demo-<random>); name one to watch the demo with "
        "`harvest console` or `harvest plans` (same HARVEST_REDIS_URL and HARVEST_NAMESPACE)",
    )
    d.add_argument("--json", action="store_true", help="print the scorecard as one JSON object")
    d.add_argument(
        "--in-process",
        action="store_true",
        help="workers call the paper engine directly instead of python-binance + the fapi emulator",
    )
    d.set_defaults(fn=_cmd_demo)
    e = sub.add_parser(
        "emulator",
        help="serve the local Binance fapi emulator (paper engine, real data, faults)",
        epilog="Fills (the paper engine's model; docs/venues.md, harvest/venues/sim/paper_settlement.py): a "
        "STOP_MARKET triggers when the price its workingType names crosses it (MARK_PRICE: the mark, each "
        "1-minute bar's close; CONTRACT_PRICE: a bar's low/high) and fills as a MARKET order at the trigger "
        "price - or the bar's open when the bar gapped through it - moved against the position by "
        "slippage x the bar's range (default 0.1; never outside the bar); a bar fills at most "
        "participation x its volume (default 0.1), the rest on the next bars. Deterministic; set per "
        "namespace with PaperVenue.set_fill_model(slippage, participation). Ordinary MARKET orders fill at "
        "the mark. Openings are refused like Binance's: -4164 under MIN_NOTIONAL (reduce-only exempt), "
        "-2027 above the leverage bracket's cap, -2019 margin above the available balance (wallet "
        "100000 USDT by default).",
    )
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=8790)
    e.add_argument("--stream-port", type=int, default=8791, help="websocket streams (default %(default)s)")
    e.add_argument("--dual", action="store_true", help="start the account in hedge mode")
    e.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT=KIND[:TIMES]",
        help='inject a fault, e.g. "POST /fapi/v1/order=unknown_503_after_accept:3" (repeatable)',
    )
    e.add_argument("--skew-ms", type=int, default=0, help="run the server clock this many ms ahead (-1021 test)")
    e.set_defaults(fn=_cmd_emulator)
    s = sub.add_parser("scorecard", help="the harvest scorecard from live state (HARVEST_* settings)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_scorecard)
    r = sub.add_parser(
        "reconcile",
        help="reconcile local state with the venue once: ghosts, plans of positions closed outside, "
        "unknown hv- orders, stuck plans",
    )
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=_cmd_reconcile)
    c = sub.add_parser(
        "chaos",
        help="drive N plans through real workers, beat, Redis and the emulator while "
        "injecting crashes, restarts and exchange faults; report duplicates, lost plans, drain time",
    )
    c.add_argument(
        "--plans",
        type=int,
        default=None,
        help="positions made actionable, one plan or more each (default 200; 40 with --hosts)",
    )
    c.add_argument(
        "--broker",
        default=None,
        metavar="URL",
        help="Celery broker, e.g. amqp://guest:guest@127.0.0.1:5672// (default: the run's own Redis)",
    )
    c.add_argument(
        "--waves",
        type=int,
        default=len(CHAOS_WAVES),
        help="waves of positions, one fault kind each (default %(default)s: every kind once)",
    )
    c.add_argument(
        "--plan-ttl",
        type=float,
        default=CHAOS_PLAN_TTL_S,
        help="plan TTL of the run, s: a plan orphaned by a kill ends by the sweeper at it (default %(default)s)",
    )
    c.add_argument(
        "--drain-timeout", type=float, default=600.0, help="longest wait for quiescence, s (default %(default)s)"
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON (exit 1 when not ok)")
    c.add_argument(
        "--accounts",
        type=int,
        default=1,
        help="spread the positions over this many accounts, with harvest streams and stream faults when > 1 "
        "(default %(default)s)",
    )
    c.add_argument(
        "--sentinel",
        action="store_true",
        help="the state Redis as a primary, a replica and three Sentinels (redis+sentinel://); "
        "the restart waves become failovers",
    )
    c.add_argument(
        "--hosts",
        action="store_true",
        help="the deployment across Linux network namespaces (state/broker, exchange, scan, orders, beat, streams "
        "hosts on a bridge; needs root): the orders host partitioned from the state host 30 s, its link at "
        "50 ms ± 20 ms and 2 %% loss, the exchange unreachable 60 s, the orders host killed and restarted; "
        "the chaos report plus each fault's recovery time (harvest/ops/hosts.py)",
    )
    c.set_defaults(fn=_cmd_chaos)
    st = sub.add_parser(
        "streams",
        help="hold the accounts' user data streams and the mark-price streams; keep the position caches in Redis",
    )
    st.add_argument("--symbols", help="comma-separated mark-price streams (default: the accounts' symbols)")
    st.add_argument(
        "--accounts",
        help="comma-separated accounts this process holds (default: every account; each under its own lease, "
        "so several processes can share them)",
    )
    st.add_argument(
        "--no-triggers",
        action="store_true",
        help="no event-driven exits: a mark crossing a position's trigger does not start its chain "
        "(the beat scan alone decides)",
    )
    st.add_argument(
        "--lease-s",
        type=float,
        default=10.0,
        help="the account's lease in Redis: another `harvest streams` takes a dead owner's account "
        "over within this many seconds (default %(default)s)",
    )
    st.set_defaults(fn=_cmd_streams)
    m = sub.add_parser("metrics", help="serve Prometheus metrics of the namespace's live state (/metrics)")
    m.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default %(default)s; a scraper on "
        "another host needs 0.0.0.0 and HARVEST_METRICS_BASIC_AUTH)",
    )
    m.add_argument("--port", type=int, default=9808)
    m.add_argument("--once", action="store_true", help="print the exposition once to stdout and exit")
    m.add_argument(
        "--max-connections",
        type=int,
        default=16,
        help="connections served at once; more wait briefly, then are closed (default %(default)s)",
    )
    m.add_argument(
        "--read-timeout",
        type=float,
        default=5.0,
        help="seconds a connection may stay silent before it is dropped (default %(default)s)",
    )
    m.set_defaults(fn=_cmd_metrics)
    t = sub.add_parser(
        "trading",
        help="show or switch the trading state: halt (no order at all), reduce, shadow, "
        "resume; for the deployment or one account",
    )
    t.add_argument("action", nargs="?", default="show", choices=["show", "halt", "reduce", "resume", "shadow"])
    t.add_argument("--account", default=None, help="one account (default: the whole deployment)")
    t.add_argument("--reason", default="", help="why (recorded with who asked)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(fn=_cmd_trading)
    pl = sub.add_parser("plans", help="list plans (newest last)")
    pl.add_argument("--account")
    pl.add_argument("--symbol")
    pl.add_argument("--state")
    pl.add_argument("--since", help="ISO-8601 UTC or Unix seconds")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=_cmd_plans)
    pn = sub.add_parser(
        "plan",
        help="a plan's ledger (show), cancel a PROPOSED/APPROVED plan, or retry the decision of a plan that "
        "ended without effect now",
    )
    pn.add_argument("action", choices=["show", "cancel", "retry"])
    pn.add_argument("plan_id")
    pn.add_argument("--json", action="store_true")
    pn.set_defaults(fn=_cmd_plan)
    rp = sub.add_parser(
        "replay",
        help="replay exit policies over real klines with the live kernel and compare them (the policy lab)",
        description="Replays positions over real klines with harvest's batch kernel and baselines, on the same "
        "entries, and compares them. Fill model: decisions act at the open of the next bar after the scan delay; "
        "a triggered stop or take-profit fills at its price, or at the open of a bar that gapped beyond it, moved "
        "against the position by --slippage x the bar's range, never outside the bar (--fill-model slippage, the "
        "emulator's model; --fill-model trigger: no slippage), and the base policy is also reported under the "
        "other model; the stop first when one bar reaches both; closes rounded to stepSize with dust "
        "folded as the guard does; taker fee on every fill; funding at each funding time; liquidation when a bar "
        "reaches the liquidation price with no stop before it; what is open at the end closes at the last close.",
    )
    rp.add_argument(
        "--data",
        nargs="*",
        help="kline files (.csv, .csv.gz, or the archive's .zip holding one .csv; any interval), read in "
        "bounded memory; refused: more than 8 M rows, 2 GiB of CSV, or 200 times the compressed size. "
        "Default: the shipped data. Funding is read from a ../funding/ folder beside lab files",
    )
    rp.add_argument(
        "--policies",
        default="default,lsf_ladder,bracket,trailing,time,hold",
        help="comma-separated, the first is the base of the paired differences (default %(default)s)",
    )
    rp.add_argument("--entries", help="CSV of positions: symbol,side,entry_time,entry_price,qty,leverage[,stop]")
    rp.add_argument(
        "--rule", default="grid", choices=["grid", "random", "demo"], help="generated entries (default grid)"
    )
    rp.add_argument("--every-minutes", type=float, default=60.0, help="grid/demo spacing (default %(default)s)")
    rp.add_argument("--n", type=int, default=500, help="random entries per symbol (default %(default)s)")
    rp.add_argument("--seed", type=int, default=7)
    rp.add_argument("--margin", type=float, default=100.0, help="USDT of margin per generated entry (default 100)")
    rp.add_argument("--leverage", type=float, default=10.0, help="leverage of generated entries (default 10)")
    rp.add_argument("--start", help="first entry time (ISO-8601 UTC or Unix s)")
    rp.add_argument("--end", help="entries before this time")
    rp.add_argument("--scan-delay", type=float, default=0.0, help="s from a bar's close to the order (default 0)")
    rp.add_argument("--trailing-positive", type=float, default=0.01, help="trailing stop distance, fraction (0.01)")
    rp.add_argument("--trailing-offset", type=float, default=0.02, help="profit that arms it, fraction (0.02)")
    rp.add_argument(
        "--trail-r",
        type=float,
        help="the trailing baseline in R instead: its distance behind the best price, in R "
        "(replaces --trailing-positive/--trailing-offset)",
    )
    rp.add_argument(
        "--trail-offset-r", type=float, default=1.0, help="with --trail-r: the profit in R that arms it (1.0)"
    )
    rp.add_argument(
        "--fill-model",
        choices=["slippage", "trigger"],
        default="slippage",
        help="how triggered stops and take-profits fill: slippage (default, the emulator's Binance-like model: "
        "the trigger or the gapped open moved against the position by --slippage x the bar's range) or trigger "
        "(at the trigger or the gapped open)",
    )
    rp.add_argument(
        "--slippage",
        type=float,
        help="with --fill-model slippage: the fraction (0..1) of the bar's range a stop fills against the "
        "position (default 0.1)",
    )
    rp.add_argument(
        "--both-fills",
        action="store_true",
        help="report every policy under the other fill model too (a second table; default: the base policy only)",
    )
    rp.add_argument("--time-stop-hours", type=float, default=24.0, help="the time baseline's hold (24)")
    rp.add_argument(
        "--tune",
        action="store_true",
        help="search theta with Optuna on a training span, judge it "
        "on the later test span against the baselines, print the HARVEST_THETA__ lines",
    )
    rp.add_argument("--split", help="with --tune: the first test entry time (default: 70 %% of the entries train)")
    rp.add_argument("--trials", type=int, default=60, help="with --tune: Optuna trials (default %(default)s)")
    rp.add_argument(
        "--folds",
        type=int,
        default=1,
        help="with --tune: walk-forward folds over the second half of "
        "the entries, each trained on everything before it (default 1: one split)",
    )
    rp.add_argument(
        "--tune-fields",
        help="with --tune: the theta fields to search, comma-separated (default: all of harvest.lab.tune.SPACE)",
    )
    rp.add_argument(
        "--account",
        help="replay the positions this account really had (read from the exchange: fills, orders, its stops, "
        "funding; read-only, within the weight budget) and compare the desk with every policy",
    )
    rp.add_argument("--since", default="30d", help="with --account: how far back (30d, 12h; default %(default)s)")
    rp.add_argument("--symbols", help="with --account: the symbols to read (default: the account's HARVEST_SYMBOLS)")
    rp.add_argument("--interval", default="1m", help="with --account: the klines read from the exchange (1m)")
    rp.add_argument("--cache", help="with --account: the klines' day cache folder (default ~/.cache/harvest/klines)")
    rp.add_argument("--no-cache", action="store_true", help="with --account: read every kline from the exchange")
    rp.add_argument(
        "--fit-kill",
        metavar="PATH",
        help="fit the learned kill on the entries before --split (default: the first 70 %%), judge it on the "
        "later ones against every policy, write the model to PATH (harvest.lab.kill_model)",
    )
    rp.add_argument("--html", help="write the HTML report here")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    rp.set_defaults(fn=_cmd_replay)
    co = sub.add_parser(
        "console",
        help="serve the operator's page: positions, plans and their ledgers, the trading switch, queues, heartbeats",
    )
    co.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)")
    co.add_argument("--port", type=int, default=8710, help="port (default %(default)s)")
    co.set_defaults(fn=_cmd_console)
    nt = sub.add_parser(
        "notify",
        help="send notices through apprise (HARVEST_NOTIFY_URLS): kill closes and fills, a position without a "
        "stop, a stale market state, the pipeline stopped, decisions abandoned, trading-state changes",
    )
    nt.add_argument("--interval", type=float, default=2.0, help="seconds between passes (default %(default)s)")
    nt.add_argument("--once", action="store_true", help="one pass, then exit")
    nt.add_argument(
        "--test",
        action="store_true",
        help="send one test notice to every URL now and say whether each service took it "
        "(exit 0: all delivered; 1: not, with the reason); needs no Redis, counts no failure",
    )
    nt.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds one notice may take to be sent to all services (default %(default)s)",
    )
    nt.set_defaults(fn=_cmd_notify)
    sc = sub.add_parser("schedule", help="list or change the beat schedule at runtime (no restart)")
    scs = sc.add_subparsers(dest="action")
    sl = scs.add_parser("list", help="every beat entry: interval, expires, next run")
    sl.add_argument("--json", action="store_true")
    ss = scs.add_parser("set", help="set an entry's interval (and expires) in seconds on the running beat")
    ss.add_argument("name", help="scan, market, reconcile, sweep, heartbeat or exchange_info")
    ss.add_argument("seconds", type=float)
    sr = scs.add_parser("reset", help="drop an entry's runtime override (back to its HARVEST_* setting)")
    sr.add_argument("name")
    sc.set_defaults(fn=_cmd_schedule, action="list", json=False)
    for name, sp in sub.choices.items():  # `harvest plans --debug` as well as `harvest --debug plans`
        if name != "schedule":  # (its own subcommands parse the rest: `harvest --debug schedule …`)
            sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.debug:
        return a.fn(a)
    try:
        return a.fn(a)
    except BrokenPipeError:  # `harvest plans | head`: the reader left; nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (Exception, KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and not isinstance(e.code, str):
            raise  # an exit with a status (argparse's, a command's sys.exit(n)): as it is
        line, status = explain_failure(e, a.cmd, a)
        _say(line, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
