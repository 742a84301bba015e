"""harvest's configuration: one pydantic-settings model, read from ``HARVEST_*`` environment
variables (nested with ``__``, e.g. ``HARVEST_THETA__KILL_THRESHOLD=0.7``) and an optional
``.env`` file. Invalid values stop start-up with :class:`SettingsError`, whose message names
the variable and the value. The Celery configuration is built from it in
:mod:`settings.celery`; nothing is configured by editing code.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from harvest.data import SHIPPED_SYMBOLS
from harvest.models import HarvestTheta

ENV_PREFIX = "HARVEST_"


class SettingsError(SystemExit):
    """Invalid settings; raised at start-up (a SystemExit so that CLI and workers stop
    with the message instead of a traceback)."""


class HarvestSettings(BaseSettings):
    """Every setting of harvest. Times in seconds; URLs as redis:// / rediss:// / amqp://."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="state store (plans, book, paper venue)")
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url")
    namespace: str = Field("harvest", pattern=r"^[a-z][a-z0-9-]{0,31}$", description="prefix of Redis keys and queue names")
    account: str = Field("paper", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="account label, part of every plan_id")
    venue: Literal["paper", "testnet", "live"] = "paper"
    mode: Literal["shadow", "live"] = Field("live", description="shadow: plans end SHADOWED, no order is sent")
    symbols: list[str] = Field(default_factory=lambda: list(SHIPPED_SYMBOLS), description="symbol allowlist")
    scan_interval_s: float = Field(5.0, gt=0, le=3600)
    market_refresh_s: float = Field(5.0, gt=0, le=3600)
    reconcile_interval_s: float = Field(30.0, gt=0, le=86_400)
    sweep_interval_s: float = Field(10.0, gt=0, le=3600)
    heartbeat_interval_s: float = Field(5.0, gt=0, le=3600)
    plan_ttl_s: float = Field(120.0, ge=5, le=86_400, description="a plan not terminal by then is EXPIRED by the sweeper")
    confirm_retry_s: float = Field(0.5, gt=0, le=60, description="delay between confirm look-ups of an order")
    results_stream_maxlen: int = Field(100_000, ge=1000)
    # Paper venue market clock (replay of the shipped klines).
    paper_replay_start: float = Field(1750464000.0, description="market time where the replay starts (s); default 2025-06-21 00:00 UTC")
    paper_replay_speed: float = Field(1.0, ge=0, le=100_000, description="market seconds per wall second")
    paper_balance_usdt: float = Field(100_000.0, gt=0)
    theta: HarvestTheta = Field(default_factory=HarvestTheta)

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, v):
        if isinstance(v, str):
            v = [s for s in re.split(r"[,\s]+", v) if s]
        return v

    @field_validator("symbols")
    @classmethod
    def _symbols_upper(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not re.fullmatch(r"[A-Z0-9]{2,20}", s)]
        if bad:
            raise ValueError(f"symbols must be upper-case exchange symbols, got {bad}")
        if not v:
            raise ValueError("symbol allowlist is empty")
        return v

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(redis|rediss|amqp|amqps|pyamqp|unix)://", v):
            raise ValueError("must start with redis://, rediss://, amqp:// or unix://")
        return v

    @model_validator(mode="after")
    def _no_live_venue_yet(self) -> "HarvestSettings":
        if self.venue != "paper":
            raise ValueError(
                f"venue {self.venue!r} is not available in this build; use 'paper'"
            )
        return self

    @property
    def broker(self) -> str:
        """The Celery broker URL (``broker_url`` or, when unset, ``redis_url``)."""
        return self.broker_url or self.redis_url

    def queue(self, kind: str) -> str:
        """Queue name for a kind of work: ``scan``, ``orders`` or ``housekeeping``."""
        if kind not in ("scan", "orders", "housekeeping"):
            raise ValueError(f"unknown queue kind {kind!r}")
        return f"{self.namespace}.{kind}"


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = "__".join(str(p) for p in e["loc"]) if e["loc"] else ""
        name = f"{ENV_PREFIX}{loc.upper()}" if loc else "settings"
        lines.append(f"invalid setting {name}={e.get('input')!r}: {e['msg']}")
    return "\n".join(lines)


def load_settings(**overrides) -> HarvestSettings:
    """Read and validate the settings (environment, ``.env``, then ``overrides``).

    Raises :class:`SettingsError` with one line per invalid field, e.g.
    ``invalid setting HARVEST_SCAN_INTERVAL_S='-1': Input should be greater than 0``.
    """
    try:
        return HarvestSettings(**overrides)
    except ValidationError as e:
        raise SettingsError(_explain(e)) from None


@lru_cache(maxsize=1)
def get_settings() -> HarvestSettings:
    """The process's settings, read once (see :func:`load_settings`)."""
    return load_settings()
