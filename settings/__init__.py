"""harvest's configuration: one pydantic-settings model, read from ``HARVEST_*`` environment
variables (nested with ``__``, e.g. ``HARVEST_THETA__KILL_THRESHOLD=0.7``) and an optional
``.env`` file. Invalid values stop start-up with :class:`SettingsError`, whose message names
the variable and the value. The Celery configuration is built from it in
:mod:`settings.celery`; nothing is configured by editing code.
"""

from __future__ import annotations

import os
import re
import ssl
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as SourceError

from harvest.data import SHIPPED_SPAN, SHIPPED_SYMBOLS
from harvest.domain.models import HarvestTheta
from settings.accounts import (
    CREDENTIAL_VAR,
    EXTRA_ENV,
    AccountSettings,
    check_accounts,
    credential_var,
    credential_vars,
    merged_theta,
    read_credential,
)
from settings.egress import Egress, egress_for, parse_egress
from settings.sentinel import is_sentinel_url, parse_sentinel_url

ENV_PREFIX = "HARVEST_"
SECRET_FIELDS = ("api_key", "api_secret", "metrics_basic_auth", "notify_urls", "console_password")


_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def tls_options(url: str) -> dict | None:
    """TLS options of a ``rediss://`` URL for kombu (``broker_use_ssl``) and celery-redbeat
    (``redbeat_redis_use_ssl``), read from its query: ``ssl_cert_reqs`` (``required`` —
    the default —, ``optional`` or ``none``), ``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile`` (paths). None for any other scheme. Raises ValueError for an unknown
    ``ssl_cert_reqs``."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    reqs = q.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be required, optional or none, not {reqs!r}")
    out: dict = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if q.get(k):
            out[k] = q[k]
    return out


class SettingsError(SystemExit):
    """Invalid settings; raised at start-up (a SystemExit so that CLI and workers stop
    with the message instead of a traceback)."""


class HarvestSettings(BaseSettings):
    """Every setting of harvest. Times in seconds; URLs as redis:// / rediss:// / amqp://."""

    model_config = SettingsConfigDict(
        allow_inf_nan=False,  # a NaN or infinite interval, TTL or price is refused at start-up
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="state store (plans, book, paper venue); redis+sentinel://h1:26379,h2:26379/<service>[/db] "
        "reaches a primary that fails over (settings/sentinel.py)",
    )
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url")
    namespace: str = Field(
        "harvest", pattern=r"^[a-z][a-z0-9-]{0,31}$", description="prefix of Redis keys and queue names"
    )
    account: str = Field("paper", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="account label, part of every plan_id")
    venue: Literal["paper", "testnet", "live"] = Field(
        "paper",
        description="paper (default; in-process engine, or the fapi emulator at fapi_url), "
        "testnet (Binance futures testnet), live (real money); both of the latter need live_trading_opt_in",
    )
    live_trading_opt_in: bool = Field(
        False, description="must be true for every venue that reaches a non-local exchange (testnet, live)"
    )
    fapi_url: str | None = Field(
        None,
        description="paper venue through python-binance against this fapi base URL "
        "of `harvest emulator` (e.g. http://127.0.0.1:8790/fapi; another host's only with HARVEST_VENUE=paper); "
        "the server must answer the emulator's handshake (off loopback: proving the account's API secret) "
        "before any other request goes there",
    )
    api_key: SecretStr | None = Field(None, description="exchange API key (env or secret file only)")
    api_secret: SecretStr | None = Field(None, description="exchange API secret (env or secret file only)")
    metrics_basic_auth: SecretStr | None = Field(
        None,
        description="user:password that `harvest metrics` requires "
        "(HTTP basic auth; env or secret file only); unset: no auth",
    )
    notify_urls: SecretStr | None = Field(
        None,
        description="apprise URLs that `harvest notify` sends to, comma-separated (tgram://…, slack://…, "
        "discord://…, mailto://…, json://host/path …; they hold tokens: env or secret file only); unset: no notices",
    )
    console_password: SecretStr | None = Field(
        None, description="what `harvest console` asks before a change (env or secret file only); unset: read-only"
    )
    console_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host names `harvest console` answers to besides 127.0.0.1, localhost and ::1 "
        "(comma-separated; the Host and, on a change, the Origin must be one of them)",
    )
    notify_repeat_s: float = Field(
        600.0,
        ge=10,
        le=86_400,
        description="a condition that holds (no stop, stale market, …) is repeated at most this often",
    )
    notify_max_per_min: int = Field(
        20, ge=1, le=1000, description="notices sent per minute at most; the rest summarized"
    )
    venue_timeout_s: float = Field(5.0, gt=0, le=60, description="HTTP connect/read timeout of exchange requests")
    funding_poll_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="0: the python-binance venue reads funding (GET /fapi/v1/income, weight 30) on every "
        "positions read; otherwise once after each funding time of the account's symbols (premiumIndex "
        "nextFundingTime, or a FUNDING_FEE on the stream), and every this many seconds only for a symbol "
        "whose funding time is not known",
    )
    max_clock_offset_ms: int = Field(
        1000,
        ge=10,
        le=600_000,
        description="a clock offset from the exchange beyond "
        "this (ms) is logged as an error, counted and alerted (it is absorbed for signing)",
    )
    recv_window_ms: int = Field(5000, ge=100, le=60_000, description="recvWindow of signed requests")
    venue_weight_limit_1m: int = Field(
        1800,
        ge=10,
        le=1_000_000,
        description="request weight per minute the whole fleet may use (Binance allows "
        "2400; keep headroom for other tools on the same IP)",
    )
    egress: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="ways out to the exchange, one request-weight budget each (comma-separated): "
        "'default' (the host's route), local source addresses (127.0.0.2) or http(s)://host:port proxies, "
        "each optionally 'name=…'; accounts are spread over them by a stable hash (settings/egress.py)",
    )
    max_send_attempts: int = Field(5, ge=1, le=20, description="sends of one plan's order known not executed, at most")
    retry_backoff_s: float = Field(0.5, gt=0, le=60, description="first retry delay of a not-executed send; doubles")
    retry_backoff_max_s: float = Field(20.0, gt=0, le=600, description="cap of the retry delay")
    log_format: Literal["text", "json"] = Field("text", description="text lines, or one JSON object per line")
    mode: Literal["shadow", "live"] = Field("live", description="shadow: plans end SHADOWED, no order is sent")
    redis_min_replicas: int | None = Field(
        None,
        ge=0,
        le=10,
        description="replicas that must hold a plan's SUBMITTED (Redis WAIT) before its order is sent, so a "
        "failover cannot lose it; default 1 through Sentinel, 0 otherwise",
    )
    redis_replica_wait_s: float = Field(
        1.0, gt=0, le=30, description="how long execute waits for those replicas before it sends nothing"
    )
    throwaway_state: bool = Field(
        False,
        description="the state Redis may lose what it holds (the demo, tests): "
        "orders are sent without AOF persistence; never for a real account",
    )
    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(SHIPPED_SYMBOLS), description="symbol allowlist, comma-separated"
    )
    # Lower bounds: a scan every 0.01 s (accepted once) ran 1437 scans in 25 s, 1318 of them
    # refused by the request-weight budget.
    scan_interval_s: float = Field(5.0, ge=0.2, le=3600)
    market_refresh_s: float = Field(5.0, ge=0.2, le=3600)
    reconcile_interval_s: float = Field(30.0, ge=1, le=86_400)
    sweep_interval_s: float = Field(10.0, ge=0.5, le=3600)
    heartbeat_interval_s: float = Field(5.0, ge=0.5, le=3600)
    exchange_info_interval_s: float = Field(
        300.0, ge=10, le=86_400, description="exchangeInfo / leverage / position-mode refresh"
    )
    plan_ttl_s: float = Field(
        120.0, ge=5, le=86_400, description="a plan not terminal by then is EXPIRED by the sweeper"
    )
    confirm_retry_s: float = Field(0.5, gt=0, le=60, description="delay between confirm look-ups of an order")
    plan_retention_s: float = Field(
        7 * 86_400.0,
        ge=60,
        le=366 * 86_400,
        description="a terminal plan older than this "
        "moves to the archive (still readable by plan_id; the live index stays small)",
    )
    attempt_backoff_s: float = Field(
        5.0,
        ge=0.1,
        le=3600,
        description="wait after a decision's attempt ended without effect before the next one; doubles per attempt",
    )
    attempt_backoff_max_s: float = Field(300.0, ge=0.1, le=86_400, description="cap of that wait")
    max_decision_attempts: int = Field(
        20,
        ge=1,
        le=10_000,
        description="attempts of a partial or profit lock before "
        "it is abandoned (kill closes and protective stops never give up)",
    )
    market_stale_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="a cached market state older than this "
        "(wall s) is stale: no kill decision is made from it (default: 3 × the "
        "longer of the scan and market refresh intervals)",
    )
    scan_accounts_per_task: int = Field(
        1,
        ge=1,
        le=1000,
        description="with several accounts: accounts scanned per scan task (1: a task per account; more: "
        "Celery chunks, fewer messages per tick for a large fleet)",
    )
    streams_max_age_s: float = Field(
        3.0,
        gt=0,
        le=60,
        description="the scan reads positions from `harvest streams`' cache instead of positionRisk "
        "while its heartbeat and mark prices are at most this old (wall s) and it is trusted",
    )
    audit_interval_s: float = Field(
        900.0,
        ge=1,
        le=86_400,
        description="every account held by `harvest streams` has its stream cache audited against REST "
        "(positionRisk, openOrders, openAlgoOrders) at least this often, the accounts' audits spread "
        "evenly over it; a disagreement puts the account back on REST",
    )
    results_stream_maxlen: int = Field(100_000, ge=1000)
    # Paper venue market clock (replay of the shipped klines).
    paper_replay_start: float = Field(
        1750464000.0,
        ge=SHIPPED_SPAN[0] + 3600,
        le=SHIPPED_SPAN[1],
        description="market time where the replay starts (s), inside the shipped "
        "klines with an hour of history; default 2025-06-21 00:00 UTC",
    )
    paper_replay_speed: float = Field(1.0, ge=0, le=100_000, description="market seconds per wall second")
    paper_balance_usdt: float = Field(100_000.0, gt=0)
    theta: HarvestTheta = Field(default_factory=HarvestTheta)
    symbol_theta: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='theta overrides per symbol, JSON: {"DOGEUSDT": {"kill_threshold": 0.8}}',
    )
    accounts: list[AccountSettings] = Field(
        default_factory=list,
        description="the accounts this deployment manages, JSON (see settings.accounts); "
        "empty: the one account of HARVEST_ACCOUNT, HARVEST_VENUE, HARVEST_MODE, HARVEST_API_KEY …",
    )
    policy: Literal["r_ladder", "lsf_ladder", "learned_kill"] | None = Field(
        None,
        description="the harvest policy (docs/design.md §4.5): r_ladder (partials at R tiers) or lsf_ladder (partials "
        "at the exit ladder's take-profit prices), or learned_kill (r_ladder with the learned kill); sets "
        "theta.policy (HARVEST_THETA__POLICY says the same)",
    )
    kill_model: str | None = Field(
        None,
        description="the learned kill's model file (harvest replay --fit-kill writes one; default: the shipped "
        "harvest/data/kill_model.json), read and checked at start-up when theta.policy is learned_kill",
    )

    @field_validator("symbols", "console_hosts", mode="before")
    @classmethod
    def _split_symbols(cls, v):
        if isinstance(v, str):
            v = [s for s in re.split(r"[,\s]+", v) if s]
        return v

    @field_validator("egress", mode="before")
    @classmethod
    def _split_egress(cls, v):
        if isinstance(v, str):
            v = [s for s in re.split(r"[,\s]+", v) if s]
        return v

    @field_validator("egress")
    @classmethod
    def _egress_valid(cls, v: list[str]) -> list[str]:
        parse_egress(v)
        return v

    @property
    def egresses(self) -> list[Egress]:
        """The deployment's egresses (:func:`settings.egress.parse_egress`; ``default`` alone when unset)."""
        return parse_egress(self.egress)

    @property
    def account_egress(self) -> Egress:
        """The egress this account's requests leave by (:func:`settings.egress.egress_for`)."""
        return egress_for(self.account, self.egresses)

    @field_validator("symbols")
    @classmethod
    def _symbols_upper(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not re.fullmatch(r"[A-Z0-9]{2,20}", s)]
        if bad:
            raise ValueError(f"symbols must be upper-case exchange symbols, got {bad}")
        if not v:
            raise ValueError("symbol allowlist is empty")
        return v

    @model_validator(mode="after")
    def _symbol_theta(self) -> "HarvestSettings":
        for sym, o in self.symbol_theta.items():
            if sym not in self.symbols:
                raise ValueError(f"HARVEST_SYMBOL_THETA names {sym}, which is not in HARVEST_SYMBOLS")
            try:
                merged_theta(self.theta, o)
            except ValidationError as e:
                msg = "; ".join(f"{'.'.join(map(str, x['loc'])) or '(model)'}: {x['msg']}" for x in e.errors())
                raise ValueError(f"HARVEST_SYMBOL_THETA for {sym}: {msg}") from None
        return self

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(redis|rediss|redis\+sentinel|amqp|amqps|pyamqp|unix)://", v):
            raise ValueError("must start with redis://, rediss://, redis+sentinel://, amqp:// or unix://")
        if is_sentinel_url(v):
            parse_sentinel_url(str(v))  # a malformed Sentinel URL stops start-up here, named
        elif v is not None:
            tls_options(v)  # an unknown ssl_cert_reqs stops start-up here
            redis_db(v)  # a db that is not a non-negative integer stops start-up here
        return v

    @field_validator("fapi_url")
    @classmethod
    def _fapi_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        # Any host with HARVEST_VENUE=paper: the emulator may run on another host of a paper
        # deployment. Whether the server there is the emulator is checked by its handshake before
        # the first request (harvest.venues.binance.emulator_handshake; at start-up by
        # harvest.services.runtime.build_venue), never by its name or address alone.
        if v is not None and not re.match(r"^https?://[^/]+/fapi/?$", v):
            raise ValueError("must be a fapi base URL such as http://127.0.0.1:8790/fapi")
        if v is not None and not is_loopback_url(v) and info.data.get("venue", "paper") != "paper":
            raise ValueError(
                "must point at harvest's emulator, and only with HARVEST_VENUE=paper (off a loopback address the "
                "emulator must answer its handshake with the account's key); a real exchange is "
                "HARVEST_VENUE=testnet or live without HARVEST_FAPI_URL, with HARVEST_LIVE_TRADING_OPT_IN=true"
            )
        return v

    @field_validator("metrics_basic_auth")
    @classmethod
    def _user_password(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and ":" not in v.get_secret_value():
            raise ValueError("must be user:password")
        return v

    @model_validator(mode="after")
    def _policy_into_theta(self) -> "HarvestSettings":
        if self.policy is not None and self.policy != self.theta.policy:
            if "policy" in self.theta.model_fields_set:
                raise ValueError(f"HARVEST_POLICY={self.policy} and HARVEST_THETA__POLICY={self.theta.policy} disagree")
            object.__setattr__(self, "theta", self.theta.model_copy(update={"policy": self.policy}))
        return self

    @model_validator(mode="after")
    def _kill_model_loaded(self) -> "HarvestSettings":
        if self.theta.policy == "learned_kill" or self.kill_model is not None:
            from harvest.data.kill_model import load_kill_model_doc
            from harvest.domain.kill_model import KillModel, use_kill_model

            try:
                use_kill_model(KillModel.from_dict(load_kill_model_doc(self.kill_model)))
            except ValueError as e:  # named by its variable (the model validator's error has no field)
                raise ValueError(f"{ENV_PREFIX}KILL_MODEL: {e}") from e
        return self

    @model_validator(mode="after")
    def _venue_rules(self) -> "HarvestSettings":
        if self.venue in ("live", "testnet") and not self.live_trading_opt_in:
            raise ValueError(
                f"venue {self.venue!r} reaches a non-local exchange ("
                + ("real money" if self.venue == "live" else "Binance's testnet")
                + ") and is refused unless HARVEST_LIVE_TRADING_OPT_IN=true"
            )
        if self.venue != "paper" and self.fapi_url:
            raise ValueError("HARVEST_FAPI_URL points the paper venue at an emulator; unset it for testnet/live")
        if self.accounts:
            return self._account_rules()
        if (self.venue != "paper" or self.fapi_url) and not (self.api_key and self.api_secret):
            raise ValueError(
                f"venue {self.venue!r} through python-binance needs HARVEST_API_KEY and HARVEST_API_SECRET "
                "(environment or secret files in HARVEST_SECRETS_DIR)"
            )
        return self

    def _account_rules(self) -> "HarvestSettings":
        """``HARVEST_ACCOUNTS``: each account's rules, and its credentials read
        (:func:`settings.accounts.read_credential`) and checked like the single account's."""
        try:
            self._check_accounts()
        except ValueError as e:
            raise ValueError(f"HARVEST_ACCOUNTS: {e}") from None
        return self

    def _check_accounts(self) -> None:
        check_accounts(self.accounts, self.theta, self.symbols, self.symbol_theta)
        if self.api_key or self.api_secret:
            raise ValueError(
                "HARVEST_API_KEY/HARVEST_API_SECRET belong to the single-account set-up; with HARVEST_ACCOUNTS "
                "each account has its own (HARVEST_ACCOUNT_<NAME>_API_KEY/_API_SECRET)"
            )
        filled, keys = [], dict[str, str]()
        for a in self.accounts:
            venue = a.venue or self.venue
            if venue in ("live", "testnet") and not self.live_trading_opt_in:
                raise ValueError(
                    f"account {a.name!r}: venue {venue!r} reaches a non-local exchange and is refused "
                    "unless HARVEST_LIVE_TRADING_OPT_IN=true"
                )
            if venue != "paper" and self.fapi_url:
                raise ValueError(f"account {a.name!r}: venue {venue!r} with HARVEST_FAPI_URL (the emulator's)")
            key, secret = read_credential(a.name, "key"), read_credential(a.name, "secret")
            if (venue != "paper" or self.fapi_url) and not (key and secret):
                raise ValueError(
                    f"account {a.name!r} (venue {venue!r} through python-binance) needs "
                    f"{credential_var(a.name, 'key')} and {credential_var(a.name, 'secret')} "
                    "(environment or secret files in HARVEST_SECRETS_DIR)"
                )
            if key is not None:
                other = keys.setdefault(key.get_secret_value(), a.name)
                if other != a.name:
                    raise ValueError(
                        f"accounts {other!r} and {a.name!r} have the same API key: one exchange account "
                        "managed twice would get every order twice"
                    )
            filled.append(a.model_copy(update={"api_key": key, "api_secret": secret}))
        known = {credential_var(a.name, w) for a in self.accounts for w in ("key", "secret")}
        stray = [v for v in credential_vars() if v not in known]
        if stray:
            raise ValueError(f"{', '.join(stray)} names no configured account ({', '.join(self.account_names)})")
        object.__setattr__(self, "accounts", filled)

    @property
    def account_names(self) -> list[str]:
        """The names of the accounts this deployment manages, in configuration order."""
        return [a.name for a in self.accounts] if self.accounts else [self.account]

    def for_account(self, name: str) -> "HarvestSettings":
        """These settings as account ``name`` sees them: its ``account``, ``venue``, ``mode``,
        ``symbols``, ``theta`` (the deployment's with the account's overrides), ``symbol_theta``
        (the deployment's per symbol, then the account's) and credentials. The single-account
        set-up answers itself for its own name. Raises KeyError for an account not configured."""
        if not self.accounts:
            if name != self.account:
                raise KeyError(f"unknown account {name!r}; this deployment manages {self.account!r}")
            return self
        a = next((x for x in self.accounts if x.name == name), None)
        if a is None:
            raise KeyError(f"unknown account {name!r}; configured: {', '.join(self.account_names)}")
        per_symbol = {
            sym: {**self.symbol_theta.get(sym, {}), **a.symbol_theta.get(sym, {})}
            for sym in {*self.symbol_theta, *a.symbol_theta}
        }
        out = self.model_copy(
            update={
                "account": a.name,
                "venue": a.venue or self.venue,
                "mode": a.mode or self.mode,
                "symbols": list(a.symbols or self.symbols),
                "theta": merged_theta(self.theta, a.theta),
                "symbol_theta": per_symbol,
                "api_key": a.api_key,
                "api_secret": a.api_secret,
            }
        )
        return out

    def theta_for(self, symbol: str) -> HarvestTheta:
        """The theta that decides ``symbol``'s positions: :attr:`theta` with ``symbol_theta[symbol]``
        applied (itself when the symbol has no overrides)."""
        o = self.symbol_theta.get(symbol)
        return merged_theta(self.theta, o) if o else self.theta

    @property
    def market_stale_after_s(self) -> float:
        """Age (wall s) from which a cached market state is stale (``market_stale_s`` or its
        default, 3 × the longer of the scan and market-refresh intervals)."""
        return self.market_stale_s or 3.0 * max(self.scan_interval_s, self.market_refresh_s)

    @property
    def uses_binance(self) -> bool:
        """Whether the venue is reached through python-binance (testnet, live, emulator)."""
        return self.venue != "paper" or self.fapi_url is not None

    @property
    def min_replicas(self) -> int:
        """Replicas that must acknowledge a plan's SUBMITTED before its send
        (``redis_min_replicas``; when unset 1 through Sentinel, else 0)."""
        if self.redis_min_replicas is not None:
            return self.redis_min_replicas
        return 1 if is_sentinel_url(self.redis_url) else 0

    @property
    def broker(self) -> str:
        """The Celery broker URL (``broker_url`` or, when unset, ``redis_url``)."""
        return self.broker_url or self.redis_url

    def queue(self, kind: str) -> str:
        """Queue name for a kind of work: ``scan``, ``orders`` or ``housekeeping``."""
        if kind not in ("scan", "orders", "housekeeping"):
            raise ValueError(f"unknown queue kind {kind!r}")
        return f"{self.namespace}.{kind}"


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine: a 127.0.0.0/8 or ::1 address, or ``localhost``
    (names are not resolved: ``localhost`` is taken as loopback by RFC 6761, any other
    name is not)."""
    import ipaddress

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Query parameters of a URL whose value is a secret (masked by :func:`mask_url`).
SECRET_QUERY_KEYS = ("password", "passwd", "pass", "pwd", "token", "secret", "key", "apikey", "api_key", "auth")


def mask_url(url: str) -> str:
    """A URL as it may be shown (logs, errors, terminal): its password (the ``user:password@``
    part, for any scheme, ``redis+sentinel://`` and ``amqp://`` included) and the value of
    every query parameter named in :data:`SECRET_QUERY_KEYS` (``?password=…``, ``&token=…``)
    replaced by ``**``, everything else as given. A userinfo without a colon (``redis://pw@h``,
    which redis-py takes as a username) is masked whole: it may well be a password."""
    url = re.sub(r"^([a-z][a-z0-9+.-]*://[^:@/?#]*:)[^@/?#]*@", r"\1**@", str(url), flags=re.IGNORECASE)
    # a userinfo without a colon: redis-py sends it as a username, but operators write
    # redis://<password>@host too; the more careful reading masks it
    url = re.sub(r"^([a-z][a-z0-9+.-]*://)[^:@/?#]+@", r"\1**@", url, flags=re.IGNORECASE)
    keys = "|".join(SECRET_QUERY_KEYS)
    return re.sub(rf"([?&;](?:{keys})=)[^&;#]*", r"\1**", url, flags=re.IGNORECASE)


def redis_db(url: str) -> int | None:
    """The database number of a ``redis://``, ``rediss://`` or ``unix://`` URL as redis-py
    reads it (the ``?db=`` query, else the path's one segment: ``redis://h:6379/2`` → 2; no
    path or ``/`` → 0); None for any other scheme (``amqp://``; ``redis+sentinel://`` is
    checked by :func:`settings.sentinel.parse_sentinel_url`). Raises ValueError when the db is
    not a non-negative integer (``/abc``, ``/-1``, ``/0/1``, ``?db=x``): redis-py would take
    ``/abc`` silently as db 0 and send ``SELECT -1`` to the server. Whether the server has that
    many databases (its ``databases``, 16 by default) is only known when connecting."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        return None
    given = parse_qs(parts.query).get("db")
    where = "the db query parameter"
    if given:
        text = given[-1]
    elif scheme == "unix":  # the path is the socket's
        return 0
    else:
        text = parts.path.removeprefix("/")
        where = "the db (the URL's path)"
        if text == "":
            return 0
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise ValueError(
            f"{where} must be a non-negative integer "
            f"(e.g. {'unix:///run/redis.sock?db=0' if scheme == 'unix' else scheme + '://127.0.0.1:6379/0'}), "
            f"not {text[:20]!r}"
        )
    return int(text)


def _explain(err: ValidationError) -> str:
    """One line per error, naming the variable; never echoes a secret or the whole input."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:
            lines.append(f"invalid settings: {msg}")
            continue
        loc = "__".join(str(p) for p in e["loc"])
        given = e.get("input")
        if isinstance(given, dict) and given:  # a nested model's own rule (theta): name its variables
            names = ", ".join(
                f"{ENV_PREFIX}{loc.upper()}__{str(k).upper()}={'<hidden>' if k in SECRET_FIELDS else repr(v)}"
                for k, v in given.items()
            )
            lines.append(f"invalid setting {names}: {msg}")
            continue
        shown = "<hidden>" if str(e["loc"][0]) in SECRET_FIELDS else repr(given)
        if str(e["loc"][0]) in ("redis_url", "broker_url") and isinstance(given, str):
            shown = repr(mask_url(given))
        if str(e["loc"][0]) == "egress":  # a proxy URL may carry credentials
            shown = re.sub(r"//[^/@',]*@", "//***@", shown)
        lines.append(f"invalid setting {ENV_PREFIX}{loc.upper()}={shown}: {msg}")
    return "\n".join(lines)


#: ``HARVEST_*`` variables that are not settings: read by the set-up (secret files), the tests
#: and the benchmarks. Any other unknown ``HARVEST_*`` variable stops start-up.
NOT_SETTINGS = ("HARVEST_SECRETS_DIR", "HARVEST_DEBUG")  # HARVEST_DEBUG: the CLI's --debug
NOT_SETTINGS_PREFIXES = ("HARVEST_TEST_", "HARVEST_BENCH_", "HARVEST_HYPOTHESIS_")


def unknown_variables(names: list[str] | set[str]) -> list[str]:
    """Of the variable names given, the ``HARVEST_*`` ones that name no setting (a typo such
    as ``HARVEST_MOD=shadow`` would otherwise be ignored and the mode stay live), each with
    the closest known name: ``["HARVEST_MOD (did you mean HARVEST_MODE?)", …]``. Nested
    names (``HARVEST_THETA__KILL_THRESHOLD``) are checked against the nested model."""
    import difflib

    fields = HarvestSettings.model_fields
    known = [ENV_PREFIX + f.upper() for f in fields]
    nested = {f: getattr(info.annotation, "model_fields", None) for f, info in fields.items()}
    known += [f"{ENV_PREFIX}{f.upper()}__{g.upper()}" for f, sub in nested.items() if sub for g in sub]
    out = []
    for name in sorted(names):
        up = name.upper()
        if not up.startswith(ENV_PREFIX) or up in NOT_SETTINGS or up.startswith(NOT_SETTINGS_PREFIXES):
            continue
        if CREDENTIAL_VAR.match(up):  # an account's credentials (settings.accounts)
            continue
        head, sep, tail = up[len(ENV_PREFIX) :].partition("__")
        if up in known or (not sep and head.lower() in fields):
            continue
        close = difflib.get_close_matches(up, known, n=1, cutoff=0.6)
        out.append(name + (f" (did you mean {close[0]}?)" if close else ""))
    return out


def load_settings(**overrides) -> HarvestSettings:
    """Read and validate the settings (environment, ``.env``, secret files, then ``overrides``).

    Secret files: with ``HARVEST_SECRETS_DIR`` set, a file named like the variable in lower
    case (``harvest_api_key``, ``harvest_api_secret``, ``harvest_metrics_basic_auth``) supplies
    the value, as Docker and Kubernetes secrets mount them; the environment wins over a file.

    Raises :class:`SettingsError` with one line per invalid field, e.g.
    ``invalid setting HARVEST_SCAN_INTERVAL_S='-1': Input should be greater than 0``, and for
    an unknown ``HARVEST_*`` variable in the environment or ``.env`` (:func:`unknown_variables`).
    """
    names = set(os.environ)
    if os.path.isfile(".env"):
        from dotenv import dotenv_values

        names |= {k for k in dotenv_values(".env") if k}
    bad = unknown_variables(names)
    if bad:
        raise SettingsError("unknown setting " + "; ".join(bad))
    secrets_dir = os.environ.get(f"{ENV_PREFIX}SECRETS_DIR")
    if secrets_dir and "_secrets_dir" not in overrides:
        if not os.path.isdir(secrets_dir):
            raise SettingsError(f"invalid setting {ENV_PREFIX}SECRETS_DIR={secrets_dir!r}: not a directory")
        overrides["_secrets_dir"] = secrets_dir
    try:
        return HarvestSettings(**overrides)
    except ValidationError as e:
        raise SettingsError(_explain(e)) from None
    except SourceError as e:  # a value the environment/.env source could not even parse
        field = re.search(r'field "([^"]+)"', str(e))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a HARVEST_* variable"
        raise SettingsError(f"invalid setting {name}: {e}") from None


#: Settings given as JSON in the environment (decoded by :func:`settings_from_env` as the
#: environment source decodes them).
JSON_FIELDS = ("accounts", "symbol_theta")


def settings_from_env(env: dict[str, str]) -> HarvestSettings:
    """:func:`load_settings` with ``env``'s ``HARVEST_*`` values on top (as if they were in the
    environment, accounts' credential variables included; os.environ untouched). Raises
    SettingsError as it does, also for JSON that does not parse."""
    import json

    kw: dict[str, Any] = {}
    creds = {k: v for k, v in env.items() if CREDENTIAL_VAR.match(k)}
    for k, v in env.items():
        if not k.startswith(ENV_PREFIX) or k in creds:
            continue
        name = k[len(ENV_PREFIX) :].lower()
        if name in JSON_FIELDS:
            try:
                kw[name] = json.loads(v)
            except ValueError as e:
                raise SettingsError(f"invalid setting {k}: not JSON ({e})") from None
        else:
            kw[name] = v
    token = EXTRA_ENV.set(creds)
    try:
        return load_settings(**kw)
    finally:
        EXTRA_ENV.reset(token)


@lru_cache(maxsize=1)
def get_settings() -> HarvestSettings:
    """The process's settings, read once (see :func:`load_settings`)."""
    return load_settings()
