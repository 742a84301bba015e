"""The account's own state the Binance adapter keeps for its positions (see
:mod:`harvest.venues.binance`): the position mode and leverage, cached; each position's opening
(its epoch) from the account's fills; funding per epoch from the income history, read once after
each funding time. :class:`BinanceAccount` is the base of
:class:`~harvest.venues.binance.BinanceVenue`."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from harvest.venues.base import VenueError
from harvest.venues.binance_client import BinanceConnection
from harvest.venues.binance_errors import _MALFORMED, _num, answers, opening_time

log = logging.getLogger("harvest.venue")


class BinanceAccount(BinanceConnection):
    """Position mode, leverage, openings and funding of one account (the parameters:
    :class:`~harvest.venues.binance.BinanceVenue`). Raises VenueError; never sleeps."""

    @answers()
    def dual(self, priority: str = "read") -> bool:
        """Hedge mode (``dualSidePosition``) of the account, cached ``cache_ttl_s``."""
        raw = self.r.get(self.k_dual)
        if raw is None:
            d = bool(self._call("futures_get_position_mode", "dual", priority)["dualSidePosition"])
            self.r.set(self.k_dual, "true" if d else "false", ex=int(self.cache_ttl_s))
            return d
        return raw == "true"

    def _leverage(self, symbols: list[str]) -> dict[str, float]:
        """Leverage per symbol from ``GET /fapi/v1/symbolConfig`` (weight 5), cached
        ``leverage_ttl_s`` (an hour) and forgotten for a symbol whose position changed
        (:meth:`_openings`), after harvest opens one (:meth:`open_position`) and when the stream
        reports a change (:meth:`leverage_changed`): one call per missing symbol, or one call
        for every symbol when more than one is missing (a first sight of many positions)."""
        got = cast(list[str | None], self.r.hmget(self.k_leverage, symbols)) if symbols else []
        cached = dict(zip(symbols, got, strict=True)) if symbols else {}
        out = {s: float(v) for s, v in cached.items() if v is not None}
        missing = [s for s, v in cached.items() if v is None]
        if not missing:
            return out
        params: dict[str, Any] = {"symbol": missing[0]} if len(missing) == 1 else {}
        rows = self._call("futures_symbol_config", "symbol_config", "read", **params)
        found = {x.get("symbol"): _num(x["leverage"]) for x in rows}
        fresh = {s: found.get(s, 1.0) for s in missing}
        out.update(fresh)
        p = self.r.pipeline(transaction=False)
        p.hset(self.k_leverage, mapping={s: repr(v) for s, v in fresh.items()})
        p.expire(self.k_leverage, int(self.leverage_ttl_s))
        p.execute()
        return out

    def leverage_changed(self, symbol: str | None = None) -> None:
        """Forget the cached leverage of ``symbol`` (None: every symbol's); the next positions
        read asks symbolConfig (``harvest streams`` on an ``ACCOUNT_CONFIG_UPDATE``)."""
        if symbol:
            self.r.hdel(self.k_leverage, symbol)
        else:
            self.r.delete(self.k_leverage)

    def _openings(self, rows: dict[str, dict]) -> dict[str, float | None]:
        """Opening time (Unix s) of each open position (positionRisk rows by symbol), or None
        when the trades read do not reach back to it. Cached per symbol with the positionAmt and
        entryPrice it was found for; re-read from userTrades (weight 5) only when either moved —
        and then the symbol's cached leverage is forgotten too (a strategy sets the leverage as
        it opens or adds). A userTrades call that fails keeps the cached time (or None): the
        epoch is then kept."""
        if not rows:
            return {}
        syms = sorted(rows)
        cached = dict(zip(syms, cast(list[str | None], self.r.hmget(self.k_opening, syms)), strict=True))
        out: dict[str, float | None] = {}
        for s in syms:
            x = rows[s]
            key = f"{x['positionAmt']}|{x['entryPrice']}"
            raw = cached[s]
            c = json.loads(raw) if raw else None
            if c is not None and c.get("k") == key:
                out[s] = c.get("t")
                continue
            self.r.hdel(self.k_leverage, s)
            try:
                trades = self._call("futures_account_trades", "trades", "read", symbol=s, limit=1000)
                leg = x.get("positionSide", "BOTH")
                t = opening_time(
                    [tr for tr in trades if tr.get("positionSide", "BOTH") in (leg, "BOTH")], str(x["positionAmt"])
                )
            except VenueError as e:
                log.warning("opening of %s not read (%s); epoch kept", s, e)
                out[s] = c.get("t") if c else None
                continue
            if t is None and c is not None and (float(c.get("amt", 0)) > 0) == (_num(x["positionAmt"]) > 0):
                t = c.get("t")  # the opening is older than the trades read: the cached one stands
            out[s] = t
            self.r.hset(self.k_opening, s, json.dumps({"k": key, "t": t, "amt": str(x["positionAmt"])}))
        return out

    def funding_settled(self) -> None:
        """The next positions read reads ``/fapi/v1/income`` whatever the funding times say
        (``harvest streams`` calls it on an ``ACCOUNT_UPDATE`` FUNDING_FEE: a settlement the
        stream saw)."""
        self.r.set(self.k_funding_due, "1", ex=86_400)

    def funding_times(self, symbols: list[str]) -> dict[str, tuple[int, int]]:
        """Each symbol's last and next funding time (exchange ms; 0 when not known) from
        ``GET /fapi/v1/premiumIndex`` (``nextFundingTime``), kept for the deployment in Redis
        (``<ns>:venue:funding_times``, shared by every account) and read again only when a
        symbol's next funding time has passed, by one worker at a time: the all-symbol form
        (weight 1 for every symbol, Binance's table) — when the last read's next time passes it
        becomes the last funding time. At most one read a minute (wall) for the deployment; a
        failed read keeps what is stored."""
        if not symbols:
            return {}
        now = self.exchange_ms()
        raw = dict(zip(symbols, cast(list[str | None], self.r.hmget(self.k_funding_times, symbols)), strict=True))
        times = {s: tuple(json.loads(v)) if v else (0, 0) for s, v in raw.items()}
        stale = [s for s, (_, nxt) in times.items() if nxt <= now]
        # At most one read a minute for the whole deployment (the lock is left to expire).
        if stale and self.r.set(f"{self.k_funding_times}:lock", "1", nx=True, ex=60):
            try:
                rows = self._call("futures_mark_price", "premium_all", "read")
                rows = rows if isinstance(rows, list) else [rows]
                kept = cast(dict[str, str], self.r.hgetall(self.k_funding_times))
                stored = {k: tuple(json.loads(v)) for k, v in kept.items() if v}
                fresh: dict[str, str] = {}
                for x in rows:
                    sym, nxt = x.get("symbol"), int(_num(x.get("nextFundingTime") or 0))
                    last, old_next = stored.get(sym, (0, 0))
                    if old_next and old_next <= now:
                        last = old_next
                    fresh[sym] = json.dumps([int(last), nxt])
                    if sym in times:
                        times[sym] = (int(last), nxt)
                if fresh:
                    self.r.hset(self.k_funding_times, mapping=fresh)
            except (VenueError, *_MALFORMED) as e:
                log.warning("funding times not read (%s); the stored ones stand", e)
        return {s: (int(t[0]), int(t[1])) for s, t in times.items()}

    def _funding_due(self, symbols: list[str]) -> bool:
        """Whether this account reads income now: ``funding_poll_s`` ≤ 0 (every read), a
        settlement the stream reported (:meth:`funding_settled`), or a funding time of one of
        ``symbols`` passed ``funding_settle_s`` ago that this account has not read after — one
        Redis marker per funding time (``<ns>:venue:<account>:funding_read:<ms>``, SET NX: one
        read per funding time and account, whichever worker gets there first). A symbol whose
        funding time is not known (0) is read every ``funding_poll_s``."""
        if self.funding_poll_s <= 0 or self.r.getdel(self.k_funding_due):
            return True
        times = self.funding_times(symbols)
        settle_ms = self.funding_settle_s * 1000
        now = self.exchange_ms()
        passed = set()
        for last, nxt in times.values():
            if nxt and nxt + settle_ms <= now:
                passed.add(nxt)  # not yet rolled over (the premiumIndex read failed or is another's)
            elif last and last + settle_ms <= now:
                passed.add(last)
        due = False
        for t in sorted(passed):
            due |= bool(self.r.set(f"{self.k_funding_read}:{t}", "1", nx=True, ex=3 * 86_400))
        if any(nxt == 0 for _, nxt in times.values()):
            due |= bool(self.r.set(self.k_funding_poll, "1", nx=True, ex=max(1, int(self.funding_poll_s))))
        return due

    def _funding(self, opened: dict[str, float | None]) -> dict[str, float]:
        """Funding paid (USDT, negative when received) by each position since its opening, from
        ``GET /fapi/v1/income?incomeType=FUNDING_FEE`` (weight 30): every row at or after the
        epoch's opening, applied once (by ``tranId``). Read when an epoch is first seen and then
        once after each funding time of the account's symbols (:meth:`_funding_due`), never on a
        timer; between reads the stored sums stand. A failed read keeps them (funding is
        informative, never a reason to skip a scan) and is tried again at the next positions read."""
        known = {s: t for s, t in opened.items() if t is not None}
        if not known:
            return {}
        syms = sorted(known)
        state: dict[str, Any] = {
            s: json.loads(v) if v else None
            for s, v in zip(syms, cast(list[str | None], self.r.hmget(self.k_funding, syms)), strict=True)
        }
        first_sight = False
        for s in syms:
            if state[s] is None or state[s].get("opened") != known[s]:
                state[s] = {"opened": known[s], "paid": 0.0, "last": -1}
                first_sight = True
        if first_sight | self._funding_due(syms):
            try:
                start = int(min(known.values()) * 1000)
                rows: list[dict] = []
                for _ in range(5):  # pages of 1000, oldest first
                    page = self._call(
                        "futures_income_history",
                        "income",
                        "read",
                        incomeType="FUNDING_FEE",
                        startTime=start,
                        limit=1000,
                    )
                    rows += page
                    if len(page) < 1000:
                        break
                    start = int(_num(page[-1]["time"])) + 1
                for row in sorted(rows, key=lambda r: int(_num(r["tranId"]))):
                    st = state.get(str(row.get("symbol")))
                    tran = int(_num(row["tranId"]))
                    if st is None or _num(row["time"]) < st["opened"] * 1000 or tran <= st["last"]:
                        continue
                    st["paid"] -= _num(row["income"])
                    st["last"] = tran
            except VenueError as e:
                log.warning("funding not read (%s); the last sums stand, read again next time", e)
                self.r.set(self.k_funding_due, "1", ex=86_400)
        self.r.hset(self.k_funding, mapping={s: json.dumps(st) for s, st in state.items()})
        return {s: float(st["paid"]) for s, st in state.items()}
