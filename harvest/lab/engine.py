"""The replay: every entry managed by one policy over real bars, with a stated fill model.

**Fill model** (also in ``harvest replay --help`` and every report):

* An entry opens at its price (generated: the bar's open) and pays the taker fee.
* The harvest policies decide at each bar's close (the scan), on the bar's close as the mark
  and the market state of the bars closed by then, with the batch kernel the live scan runs
  (:func:`harvest.domain.kernel.evaluate_batch`). A decision acts at the open of the next bar
  after ``scan_delay_s`` (the bar containing close + delay); one decision per position at a
  time, as the live position lock allows.
* A close is a MARKET order at that open, its quantity rounded down to stepSize with a
  remainder below minQty/minNotional folded in, as the guard does
  (:func:`harvest.domain.guard_rules.close_quantity_of`; symbols without shipped filters are
  not rounded); taker fee on every fill.
* A stop (the initial one, a ladder's, a profit lock's or a trailing one) triggers when the
  bar's low (LONG) or high (SHORT) reaches it, a take-profit when the bar's best price reaches
  it; both are STOP_MARKET / TAKE_PROFIT_MARKET orders that fill as MARKET orders. Two fill
  models (``harvest replay --fill-model``):

  - ``slippage`` (the default, Binance-like; the emulator's paper engine states the same model,
    :mod:`harvest.venues.sim.paper_fills` and docs/venues.md "The fill model"): the fill
    is the trigger price, or the bar's open when the bar opened beyond it (a gap), moved against
    the position by ``stop_slippage`` × the bar's range (high − low; default 0.1,
    :data:`STOP_SLIPPAGE`), never outside the bar. The paper engine's thin-bar rule (at most a
    share of the bar's volume per bar) is not modelled: the whole quantity fills in the
    trigger bar.
  - ``trigger`` (``stop_slippage`` 0): the trigger price, or the open of a bar that opened
    beyond it.

  When one bar reaches both a stop and a take-profit, the stop fills (the dangerous reading).
* Liquidation (isolated margin, Binance's brackets) when the bar reaches the liquidation price
  and no stop lies between it and the mark: closed at the liquidation price.
* Funding at each funding time, by the bar that ends at or after it, on the quantity open,
  at the bar's close (positive rate: longs pay).
* A position still open at the end of its data closes at the last close (``end_of_data``).

**Policies** (:mod:`harvest.domain.policies`, docs/design.md §2.10; the engine asks each
policy, never its name, :func:`lab_policy`): ``default`` (the policy ``theta.policy`` names,
``r_ladder`` unless configured: the harvest kernel with the configured theta, partials at its
tiers, profit lock, kill score, time stop), ``lsf_ladder`` (the same kernel with the exit
ladder's tiers, docs/design.md §4.5: its partials at the exit ladder's tp1..tp3 prices,
closing the ladder's leverage scheme of the opening qty, decided at the scan like any other),
``bracket`` (the stop and one take-profit at the ladder's tp3), ``trailing``
(freqtrade's ``trailing_stop_positive`` / ``trailing_stop_positive_offset``: once the profit
at a bar's close reaches the offset, the stop trails the bar's best price by ``positive``; in
price fractions by default, or in R like every other level when ``trail_r`` is given: armed
at ``trail_offset_r`` R of profit, trailing ``trail_r`` R behind the best price, R being the
entry's distance to its initial stop), ``time`` (the stop, and a market close after
``time_stop_s``), ``hold`` (the stop only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from harvest.data import shipped_filters
from harvest.domain.exit_ladder import compute_levels
from harvest.domain.guard_rules import close_quantity_of
from harvest.domain.kernel import BatchResult, PositionBatch
from harvest.domain.kill_model import KillModel, LearnedKill, kill_batch
from harvest.domain.margin import brackets_from_response, liquidation_price
from harvest.domain.models import ACTION_CODES, Action, HarvestTheta, Side
from harvest.domain.policies import REGISTRY, ExitPolicy, Trailing, get_policy, policy_for
from harvest.lab.entries import Entry
from harvest.lab.market import ReplayMarket

#: The lab's policy names: ``default`` (``theta.policy``'s) and the registered policies it
#: compares with it (:data:`harvest.domain.policies.REGISTRY`).
POLICIES = ("default", "lsf_ladder", "bracket", "trailing", "time", "hold", "learned_kill")
_FULL = ACTION_CODES.index(Action.FULL_CLOSE_PROPOSED)
_LOCK = ACTION_CODES.index(Action.PROFIT_LOCK_SL)
_NONE, _P_FULL, _P_PART, _P_STOP = 0, 1, 2, 3  # pending kinds


#: Adverse slippage of a triggered stop's MARKET fill, a fraction (0..1) of the bar's range: the
#: paper engine's default (:data:`harvest.venues.sim.paper_fills.STOP_SLIPPAGE`, tested equal).
STOP_SLIPPAGE = 0.1
#: The fill models ``harvest replay --fill-model`` names (module docstring).
FILL_MODELS = ("slippage", "trigger")


@dataclass(frozen=True)
class FillModel:
    """Knobs of the fill model and the baselines: ``scan_delay_s`` (s from a bar's close to
    the decision's order), the trailing stop's ``trailing_positive`` and
    ``trailing_offset`` (fractions of price), the time stop ``time_stop_s`` (s),
    ``stop_slippage`` (fraction 0..1 of the bar's range a triggered stop or take-profit fills
    against the position; 0: the ``trigger`` model), and the trailing stop in R: ``trail_r``
    (R behind the bar's best price; when given it replaces ``trailing_positive`` and
    ``trailing_offset``) armed at ``trail_offset_r`` R of profit (module docstring).
    Raises ValueError for a slippage outside 0..1 or a non-positive ``trail_r``."""

    scan_delay_s: float = 0.0
    trailing_positive: float = 0.01
    trailing_offset: float = 0.02
    time_stop_s: float = 86_400.0
    stop_slippage: float = STOP_SLIPPAGE
    trail_r: float | None = None
    trail_offset_r: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.stop_slippage <= 1.0:
            raise ValueError(f"stop_slippage {self.stop_slippage!r}: a fraction of the bar's range, 0..1")
        if self.trail_r is not None and not self.trail_r > 0:
            raise ValueError(f"trail_r {self.trail_r!r}: the trailing distance in R must be positive")

    @property
    def name(self) -> str:
        """``slippage`` or ``trigger`` (:data:`FILL_MODELS`)."""
        return "slippage" if self.stop_slippage > 0 else "trigger"

    def with_model(self, name: str) -> FillModel:
        """This fill model with the stop fills of ``name`` (``slippage``: :data:`STOP_SLIPPAGE`
        unless this one already slips; ``trigger``: none). Raises ValueError for another name."""
        if name not in FILL_MODELS:
            raise ValueError(f"unknown fill model {name!r}: one of {', '.join(FILL_MODELS)}")
        if name == self.name:
            return self
        return replace(self, stop_slippage=STOP_SLIPPAGE if name == "slippage" else 0.0)


def _slipped(base: np.ndarray, s: np.ndarray, h: np.ndarray, lo: np.ndarray, slippage: float) -> np.ndarray:
    """The MARKET fill of triggered stops or take-profits (USDT, shape (n,)): ``base`` (the
    trigger or the gap's open) moved against the position (side ``s`` ±1) by ``slippage`` × the
    bar's range, kept within the bar [``lo``, ``h``] (the paper engine's model,
    :func:`harvest.venues.sim.paper_fills.stop_fills`, without tickSize rounding)."""
    if slippage == 0.0:
        return base
    return np.clip(base - s * slippage * (h - lo), lo, h)


@dataclass
class Trades:
    """One policy's trades, arrays of shape (n,) in entry order: ``symbol`` (str), ``side``
    (±1), ``entry_time``/``exit_time`` (s), ``entry_price``, ``qty`` (opening, base units),
    ``initial_stop`` (USDT), ``net`` (USDT: realized PnL − fees − funding), ``r`` (net in R of
    the opening quantity, ``|entry − initial_stop| × qty``), ``mae_r``/``mfe_r`` (worst and best
    excursion per unit, in R), ``fees``, ``funding`` (USDT paid, net: a receipt counts
    negative), ``funding_paid`` / ``funding_received`` (USDT, each ≥ 0: the payments and the
    receipts apart, so a LONG's payment and a SHORT's receipt do not cancel), ``exit_reason`` (str),
    ``partials`` (closes before the last); ``events``: per recorded trade, ``[(time, kind,
    price, qty)]``; ``evaluations``: kernel rows evaluated."""

    policy: str
    symbol: np.ndarray
    side: np.ndarray
    entry_time: np.ndarray
    exit_time: np.ndarray
    entry_price: np.ndarray
    qty: np.ndarray
    initial_stop: np.ndarray
    net: np.ndarray
    r: np.ndarray
    mae_r: np.ndarray
    mfe_r: np.ndarray
    fees: np.ndarray
    funding: np.ndarray
    funding_paid: np.ndarray
    funding_received: np.ndarray
    exit_reason: np.ndarray
    partials: np.ndarray
    events: dict[int, list[tuple[float, str, float, float]]] = field(default_factory=dict)
    evaluations: int = 0


_BRACKETS: dict = {}


def lab_policy(
    name: str, theta: HarvestTheta, fill: FillModel = FillModel(), kill_model: KillModel | None = None
) -> ExitPolicy:
    """The exit policy the lab's ``name`` means: ``default`` is the policy ``theta.policy``
    names; a registered policy's own parameters come from the fill model's knobs
    (``trailing``: ``trailing_positive``, ``trailing_offset``, ``trail_r``, ``trail_offset_r``;
    ``time``: ``time_stop_s``); ``learned_kill`` runs ``kill_model``, else the one settings
    registered (``HARVEST_KILL_MODEL``), else the shipped one. Raises ValueError naming the
    policy for an unknown one, KillModelError for a model file that does not load."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}: one of {', '.join(POLICIES)}")
    registered = theta.policy if name == "default" else name
    if registered == "learned_kill":  # its model is data: the one given, settings', or the shipped one
        if kill_model is None:
            reg = REGISTRY.get("learned_kill")
            kill_model = reg.model if isinstance(reg, LearnedKill) else None
        if kill_model is None:
            from harvest.data.kill_model import load_kill_model_doc

            kill_model = KillModel.from_dict(load_kill_model_doc())
        return LearnedKill(model=kill_model)
    knobs: dict[str, dict[str, float | None]] = {
        "trailing": {
            "positive": fill.trailing_positive,
            "offset": fill.trailing_offset,
            "trail_r": fill.trail_r,
            "offset_r": fill.trail_offset_r,
        },
        "time": {"time_stop_s": fill.time_stop_s},
    }
    return policy_for(theta) if name == "default" else get_policy(name, **knobs.get(name, {}))


def _liq(symbol: str, side: Side, qty: float, price: float, lev: float) -> float:
    if not _BRACKETS:
        from harvest.data import load_brackets_raw

        _BRACKETS.update(brackets_from_response(load_brackets_raw()))
    try:
        out = liquidation_price(side, qty, price, lev, _BRACKETS.get(symbol) or _BRACKETS["BTCUSDT"])
    except ValueError:
        out = None
    return math.nan if out is None else out


def simulate(
    m: ReplayMarket,
    entries: list[Entry],
    policy: str,
    theta: HarvestTheta,
    fill: FillModel = FillModel(),
    record: int = 0,
    sample: list[tuple[PositionBatch, np.ndarray]] | None = None,
    sample_rows: int = 20_000,
    decisions: list[tuple[int, int, Action, int, float]] | None = None,
    kill_model: KillModel | None = None,
    on_scan: Callable[[np.ndarray, PositionBatch, np.ndarray, BatchResult, np.ndarray], None] | None = None,
) -> Trades:
    """Manage every entry with ``policy`` (module docstring) until it is closed. ``record``:
    keep the order events of the first ``record`` entries (for the report's charts);
    ``sample``: a list that receives the first ``sample_rows`` kernel inputs as evaluated
    ``(batch, now)`` (the benchmark replays them one position at a time); ``decisions``: a list
    that receives every decision of a harvest policy as ``(entry index, global bar of the scan,
    action, tier, new stop or NaN)`` (the agreement test compares them with the pipeline's).
    ``kill_model``: the ``learned_kill`` policy's model; any other harvest policy also closes
    where it fires
    (:func:`harvest.domain.kill_model.kill_batch`; exit reason ``learned_kill``), before its
    partials; ``on_scan``: called at every scan of a harvest policy with ``(entry indices, batch,
    now, kernel result, value now)``, the value now being the trade's R (of the opening
    quantity) were it closed at the mark now, after the close's fee (the lab's fit of the learned
    kill records its states with it, :mod:`harvest.lab.kill_model`).
    Raises ValueError for an unknown policy or no entries."""
    pol = lab_policy(policy, theta, fill, kill_model)
    own_kill = isinstance(pol, LearnedKill)  # its kill is the learned one: not applied twice
    if own_kill:
        kill_model = None
    n = len(entries)
    if n == 0:
        raise ValueError("no entries to replay")
    ser, fee = m.series, theta.taker_fee_rate
    filters = shipped_filters()
    bar0 = np.array([x.bar for x in entries], dtype=np.int64)
    sym_idx = m.symbol_of_bar(bar0)
    last = np.array([m.end_bar[m.symbols[i]] for i in sym_idx], dtype=np.int64)
    interval = np.array([m.interval_s[i] for i in sym_idx], dtype=np.float64)
    s = np.array([x.side.sign for x in entries], dtype=np.float64)
    e = np.array([x.price for x in entries])
    q0 = np.array([x.qty for x in entries])
    liq = np.array([_liq(x.symbol, x.side, x.qty, x.price, x.leverage) for x in entries])
    ent = np.maximum(bar0 - 1, 0)  # the market state known at entry: after the previous bar closed
    has_entry = ser.valid[ent] & (bar0 - 1 >= np.array([m.start[m.symbols[i]] for i in sym_idx]))
    stop0 = np.empty(n)
    tp_tier = pol.take_profit_tier
    tp_all = np.full(n, np.nan)  # the resting take-profit of the whole position (bracket: tp3)
    for row, x in enumerate(entries):
        lv = compute_levels(
            x.price,
            x.side,
            x.leverage,
            theta,
            sigma=float(ser.sigma[ent[row]]) if has_entry[row] else None,
            liquidation_price=None if math.isnan(liq[row]) else float(liq[row]),
            interval_s=int(interval[row]),
        )
        stop0[row] = x.stop if x.stop is not None else lv.sl_price
        if tp_tier is not None:
            tp_all[row] = lv.tp_prices[tp_tier - 1]
    ru = np.abs(e - stop0)  # 1R per unit (USDT)
    opened_at = m.open_time[bar0]

    # Per-trade outputs (global order) ...
    realized, fees, funding = np.zeros(n), fee * e * q0, np.zeros(n)
    funding_paid, funding_received = np.zeros(n), np.zeros(n)
    exit_bar = np.full(n, -1, dtype=np.int64)
    reason = np.full(n, "", dtype=object)
    partials = np.zeros(n, dtype=np.int64)
    mae, mfe = np.zeros(n), np.zeros(n)
    events: dict[int, list[tuple[float, str, float, float]]] = {i: [] for i in range(min(record, n))}
    for g in events:
        events[g].append((float(opened_at[g]), "entry", float(e[g]), float(q0[g])))
        events[g].append((float(opened_at[g]), "stop", float(stop0[g]), 0.0))
    # ... and the live trades' state, compacted to the trades still open (one row each), so a
    # step works on contiguous arrays and never gathers from the whole set.
    L: dict[str, np.ndarray] = {
        "gid": np.arange(n),
        "bar0": bar0,
        "last": last,
        "interval": interval,
        "delay": np.floor(fill.scan_delay_s / interval).astype(np.int64),
        "s": s,
        "e": e,
        "q0": q0,
        "ru": ru,
        "lev": np.array([x.leverage for x in entries], dtype=np.float64),
        "stop0": stop0,
        "liq": liq,
        "opened_at": opened_at,
        "tp": tp_all,
        "has_entry": has_entry,
        "entry_trend": has_entry & (ser.regime[ent] == 0),
        "entry_dir": np.where(has_entry, ser.trend_dir[ent], 0).astype(np.float64),
        "entry_p": np.where(has_entry, ser.p_trend[ent], 0.0),
        "entry_sigma": np.where(has_entry, ser.sigma[ent], 0.0),
        "entry_ts": np.where(has_entry, ser.ts[ent], 0.0),
        "qty": q0.copy(),
        "stop": stop0.copy(),
        "tier": np.zeros(n, dtype=np.int64),
        "realized": np.zeros(n),
        "fees": fee * e * q0,
        "funding": np.zeros(n),
        "fpaid": np.zeros(n),
        "freceived": np.zeros(n),
        "mae": np.zeros(n),
        "mfe": np.zeros(n),
        "partials": np.zeros(n, dtype=np.int64),
        "exit_bar": np.full(n, -1, dtype=np.int64),
        "reason": np.full(n, "", dtype=object),
        "pend": np.zeros(n, dtype=np.int64),
        "pend_due": np.full(n, -1, dtype=np.int64),
        "pend_frac": np.zeros(n),
        "pend_stop": np.zeros(n),
        "pend_tier": np.zeros(n, dtype=np.int64),
        "pend_reason": np.full(n, "", dtype=object),
        "open": np.ones(n, dtype=bool),
        "flushed": np.zeros(n, dtype=bool),
    }
    evaluations = 0
    trailing = pol if isinstance(pol, Trailing) else None
    recorded = min(record, n)

    def close(i: np.ndarray, b: np.ndarray, price: np.ndarray, q: np.ndarray, why: str | np.ndarray) -> None:
        """Close ``q`` of the live rows ``i`` at ``price`` in bar ``b``; a row whose qty
        reaches zero ends with ``why``."""
        if i.size == 0:
            return
        L["realized"][i] += L["s"][i] * (price - L["e"][i]) * q
        L["fees"][i] += fee * price * q
        L["qty"][i] -= q
        done = L["qty"][i] <= L["q0"][i] * 1e-12
        d = i[done]
        L["qty"][d] = 0.0
        L["open"][d] = False
        L["exit_bar"][d] = b[done]
        L["reason"][d] = why[done] if isinstance(why, np.ndarray) else why
        L["partials"][i[~done]] += 1
        if recorded:
            for j in np.flatnonzero(L["gid"][i] < recorded).tolist():
                label = (why[j] if isinstance(why, np.ndarray) else why) if done[j] else "partial"
                events[int(L["gid"][i[j]])].append((float(m.open_time[b[j]]), str(label), float(price[j]), float(q[j])))

    k = 0
    while L["open"].any():
        s_, e_, st_ = L["s"], L["e"], L["stop"]
        b = np.minimum(L["bar0"] + k, L["last"])  # rows that ended may linger until the next compaction
        o, h, lo, c = m.open[b], m.high[b], m.low[b], m.close[b]
        # (1) the decision due at this bar's open
        op0 = L["open"].copy()  # open at the bar's start: its excursion counts
        due = np.flatnonzero((L["pend_due"] == b) & op0)
        if due.size:
            kind = L["pend"][due]
            full = due[kind == _P_FULL]
            close(full, b[full], o[full], L["qty"][full].copy(), L["pend_reason"][full].astype(str))
            for row in due[kind == _P_PART].tolist():
                f = filters.get(m.symbols[sym_idx[L["gid"][row]]])
                if f is not None:
                    qd, _ = close_quantity_of(f, float(L["qty"][row]), float(o[row]), False, float(L["pend_frac"][row]))
                    qc = float(qd) if qd is not None else 0.0
                else:
                    qc = float(L["qty"][row] * L["pend_frac"][row])
                L["tier"][row] = L["pend_tier"][row]
                if qc > 0:
                    ii = np.array([row])
                    close(ii, b[ii], o[ii], np.array([qc]), "partial_close")
            mv = due[kind == _P_STOP]
            if mv.size:
                new = L["pend_stop"][mv]
                ok = (s_[mv] * (new - st_[mv]) > 0) & (s_[mv] * (o[mv] - new) > 0)
                st_[mv[ok]] = new[ok]
                if recorded:
                    for j in mv[ok].tolist():
                        if L["gid"][j] < recorded:
                            events[int(L["gid"][j])].append((float(m.open_time[b[j]]), "stop", float(st_[j]), 0.0))
            L["pend"][due], L["pend_due"][due] = _NONE, -1
        # (2) liquidation, stop, take-profits within the bar
        op = L["open"]
        worst = np.where(s_ > 0, lo, h)
        best = np.where(s_ > 0, h, lo)
        lq = L["liq"]
        hit_liq = op & ~np.isnan(lq) & (s_ * (worst - lq) <= 0) & (s_ * (st_ - lq) <= 0)
        hit_stop = op & ~hit_liq & (s_ * (worst - st_) <= 0)
        i = np.flatnonzero(hit_liq)
        close(i, b[i], lq[i], L["qty"][i].copy(), "liquidation")
        i = np.flatnonzero(hit_stop)
        if i.size:
            px = np.where(s_[i] * (o[i] - st_[i]) <= 0, o[i], st_[i])
            px = _slipped(px, s_[i], h[i], lo[i], fill.stop_slippage)
            why = np.where(st_[i] == L["stop0"][i], "stop", "locked_stop")
            close(i, b[i], px, L["qty"][i].copy(), why)
        if tp_tier is not None:
            tp = L["tp"]
            i = np.flatnonzero(L["open"] & (s_ * (best - tp) >= 0))
            if i.size:
                px = np.where(s_[i] * (o[i] - tp[i]) >= 0, o[i], tp[i])
                px = _slipped(px, s_[i], h[i], lo[i], fill.stop_slippage)
                close(i, b[i], px, L["qty"][i].copy(), "take_profit")
        # (3) funding on what is open through the bar
        fr = m.funding[b]
        i = np.flatnonzero(L["open"] & (fr != 0))
        if i.size:
            pay = s_[i] * fr[i] * L["qty"][i] * c[i]
            L["funding"][i] += pay
            L["fpaid"][i] += np.maximum(pay, 0.0)
            L["freceived"][i] += np.maximum(-pay, 0.0)
        # (4) excursions
        L["mae"][op0] = np.minimum(L["mae"][op0], (s_ * (worst - e_) / L["ru"])[op0])
        L["mfe"][op0] = np.maximum(L["mfe"][op0], (s_ * (best - e_) / L["ru"])[op0])
        # (5) the scan at the bar's close
        op = L["open"] & (L["pend"] == _NONE) & (b < L["last"])
        if pol.scan_in_lab:
            # a kernel policy decides on a market state: only at bars that have one
            i = np.flatnonzero(op & ser.valid[b]) if pol.kernel else np.flatnonzero(op)
            if i.size:
                bi = b[i]
                batch = PositionBatch(
                    side_sign=s_[i],
                    qty=L["qty"][i],
                    qty_at_open=L["q0"][i],
                    entry_price=e_[i],
                    mark_price=c[i],
                    initial_stop=L["stop0"][i],
                    stop=st_[i],
                    opened_at=L["opened_at"][i],
                    harvested_tier=L["tier"][i],
                    funding_paid=L["funding"][i],
                    has_entry=L["has_entry"][i],
                    entry_trend=L["entry_trend"][i],
                    entry_dir=L["entry_dir"][i],
                    entry_p=L["entry_p"][i],
                    entry_sigma=L["entry_sigma"][i],
                    entry_ts=L["entry_ts"][i],
                    now_trend=ser.regime[bi] == 0,
                    now_dir=ser.trend_dir[bi].astype(np.float64),
                    now_p=ser.p_trend[bi],
                    now_sigma=ser.sigma[bi],
                    now_ts=ser.ts[bi],
                    now_bars=ser.regime_bars[bi].astype(np.float64),
                    leverage=L["lev"][i],
                )
                now = m.open_time[bi] + L["interval"][i]
                res = pol.scan(batch, now, theta)
                learned = np.zeros(i.size, dtype=bool)
                if kill_model is not None:
                    learned = kill_batch(kill_model, batch, now, res.r_net, res.components, theta)
                    learned &= res.action != _FULL
                    res.action = np.where(learned, _FULL, res.action)
                    res.close_fraction = np.where(learned, 1.0, res.close_fraction)
                if on_scan is not None:
                    qi, ci = L["qty"][i], c[i]
                    value_now = (
                        L["realized"][i] + s_[i] * (ci - e_[i]) * qi - L["fees"][i] - fee * ci * qi - L["funding"][i]
                    ) / (L["ru"][i] * L["q0"][i])
                    on_scan(L["gid"][i], batch, now, res, value_now)
                if sample is not None and evaluations < sample_rows:
                    sample.append((batch, now))
                evaluations += i.size if pol.kernel else 0
                due_b = bi + 1 + L["delay"][i]
                if decisions is not None:
                    for j in np.flatnonzero(res.action != 0).tolist():
                        decisions.append(
                            (
                                int(L["gid"][i[j]]),
                                int(bi[j]),
                                ACTION_CODES[int(res.action[j])],
                                int(res.tier[j]),
                                float(res.new_stop[j]),
                            )
                        )
                kill = res.action == _FULL
                sel = i[kill]
                L["pend"][sel], L["pend_due"][sel] = _P_FULL, due_b[kill]
                L["pend_reason"][sel] = np.where(
                    res.time_stop[kill], "time_stop", np.where(learned[kill] | own_kill, "learned_kill", "kill_score")
                )
                part = (res.action >= 1) & (res.action <= 3)
                sel = i[part]
                L["pend"][sel], L["pend_due"][sel] = _P_PART, due_b[part]
                L["pend_frac"][sel], L["pend_tier"][sel] = res.close_fraction[part], res.tier[part]
                lock = res.action == _LOCK
                sel = i[lock]
                L["pend"][sel], L["pend_due"][sel], L["pend_stop"][sel] = _P_STOP, due_b[lock], res.new_stop[lock]
        if trailing is not None:  # a resting trailing stop: it moves with the bar's best price
            i = np.flatnonzero(op)
            move, cand = trailing.trail(s_[i], e_[i], L["ru"][i], c[i], best[i], st_[i])
            st_[i[move]] = cand[move]
        # (6) the end of the data
        i = np.flatnonzero(L["open"] & (b >= L["last"]))
        close(i, b[i], c[i], L["qty"][i].copy(), "end_of_data")
        # (7) the trades that ended leave the live set (in bulk: once a tenth of the rows ended)
        gone = ~L["open"] & ~L["flushed"]
        if gone.any():
            g = L["gid"][gone]
            for name, out in (
                ("realized", realized),
                ("fees", fees),
                ("funding", funding),
                ("fpaid", funding_paid),
                ("freceived", funding_received),
                ("mae", mae),
                ("mfe", mfe),
                ("partials", partials),
                ("exit_bar", exit_bar),
                ("reason", reason),
            ):
                out[g] = L[name][gone]
            L["flushed"][gone] = True
        keep = L["open"]
        if keep.sum() < 0.9 * keep.size:
            L = {name: v[keep] for name, v in L.items()}
        k += 1

    net = realized - fees - funding
    xb = np.where(exit_bar >= 0, exit_bar, last)
    return Trades(
        policy=policy,
        symbol=np.array([m.symbols[i] for i in sym_idx], dtype=object),
        side=s,
        entry_time=opened_at,
        exit_time=m.open_time[xb] + interval,
        entry_price=e,
        qty=q0,
        initial_stop=stop0,
        net=net,
        r=net / (ru * q0),
        mae_r=mae,
        mfe_r=mfe,
        fees=fees,
        funding=funding,
        funding_paid=funding_paid,
        funding_received=funding_received,
        exit_reason=reason,
        partials=partials,
        events=events,
        evaluations=evaluations,
    )
