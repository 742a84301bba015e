"""The accounts of one deployment (``HARVEST_ACCOUNTS``, a JSON list of :class:`AccountSettings`).

A deployment that sets no ``HARVEST_ACCOUNTS`` manages the one account of ``HARVEST_ACCOUNT``,
``HARVEST_VENUE``, ``HARVEST_MODE``, ``HARVEST_SYMBOLS``, ``HARVEST_THETA__*`` and
``HARVEST_API_KEY``/``HARVEST_API_SECRET``, as before. With it, each entry names an account and
may override the deployment's venue, mode, symbol allowlist and theta (for the account and per
symbol). Credentials are never part of the list: account ``<name>`` reads them from
``HARVEST_ACCOUNT_<NAME>_API_KEY`` / ``…_API_SECRET`` (``NAME`` upper-cased, ``-`` → ``_``) or
from the secret files ``harvest_account_<name>_api_key`` / ``…_api_secret`` in
``HARVEST_SECRETS_DIR`` (the environment wins), as Docker and Kubernetes mount secrets.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from harvest.domain.models import HarvestTheta

ACCOUNT_NAME = r"^[A-Za-z0-9_-]{1,32}$"
#: Environment variables that carry an account's credentials (not settings fields).
CREDENTIAL_VAR = re.compile(r"^HARVEST_ACCOUNT_([A-Z0-9_]{1,32})_API_(KEY|SECRET)$")
SYMBOL = r"[A-Z0-9]{2,20}"


def credential_var(name: str, which: Literal["key", "secret"]) -> str:
    """The environment variable of account ``name``'s API key or secret:
    ``HARVEST_ACCOUNT_<NAME>_API_KEY`` (upper case, ``-`` → ``_``)."""
    return f"HARVEST_ACCOUNT_{name.upper().replace('-', '_')}_API_{which.upper()}"


#: Credential variables given beside the environment (:func:`settings.settings_from_env`: the
#: settings of a child process's environment, read in this one); they win over os.environ.
EXTRA_ENV: ContextVar[dict[str, str] | None] = ContextVar("harvest_extra_env", default=None)


def credential_vars() -> list[str]:
    """The credential variables set (environment and :data:`EXTRA_ENV`)."""
    return sorted(v for v in {*os.environ, *(EXTRA_ENV.get() or {})} if CREDENTIAL_VAR.match(v))


def read_credential(name: str, which: Literal["key", "secret"]) -> SecretStr | None:
    """Account ``name``'s API key or secret from its environment variable
    (:func:`credential_var`) or, failing that, its secret file (the variable's name in lower
    case) in ``HARVEST_SECRETS_DIR``; None when neither exists. The value is stripped of
    surrounding whitespace (a secret file's trailing newline)."""
    var = credential_var(name, which)
    value = (EXTRA_ENV.get() or {}).get(var, os.environ.get(var))
    if value is None:
        d = os.environ.get("HARVEST_SECRETS_DIR")
        path = os.path.join(d, var.lower()) if d else None
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                value = f.read()
    value = value.strip() if value is not None else None
    return SecretStr(value) if value else None


class AccountSettings(BaseModel):
    """One account: ``name`` (part of every plan_id, key, metric label and scorecard line);
    ``venue`` and ``mode`` (None: the deployment's ``HARVEST_VENUE``/``HARVEST_MODE``);
    ``symbols``, its allowlist (None: ``HARVEST_SYMBOLS``; otherwise a subset of it, whose
    market states the deployment computes); ``theta``, overrides of the deployment's theta
    (``{"kill_threshold": 0.7}``), and ``symbol_theta``, overrides per symbol on top of those.
    ``api_key``/``api_secret`` are filled from the environment or secret files
    (:func:`read_credential`) and refused in the list itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=ACCOUNT_NAME)
    venue: Literal["paper", "testnet", "live"] | None = None
    mode: Literal["shadow", "live"] | None = None
    symbols: list[str] | None = None
    theta: dict[str, Any] = Field(default_factory=dict)
    symbol_theta: dict[str, dict[str, Any]] = Field(default_factory=dict)
    api_key: SecretStr | None = Field(None, exclude=True)
    api_secret: SecretStr | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials_here(cls, v: Any) -> Any:
        if isinstance(v, dict) and ({"api_key", "api_secret"} & set(v)):
            name = v.get("name", "<name>")
            raise ValueError(
                f"account {name!r}: credentials are not read from HARVEST_ACCOUNTS; set "
                f"{credential_var(str(name), 'key')} and {credential_var(str(name), 'secret')} "
                "(environment or secret files in HARVEST_SECRETS_DIR)"
            )
        return v

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        bad = [s for s in v if not re.fullmatch(SYMBOL, s)]
        if bad or not v:
            raise ValueError(f"symbols must be a non-empty list of upper-case exchange symbols, got {bad or v}")
        return v


def merged_theta(base: HarvestTheta, *overrides: dict[str, Any]) -> HarvestTheta:
    """``base`` with each override dict applied in turn, validated as a whole (a field's bounds
    and the model's cross-field rules). Raises pydantic.ValidationError."""
    if not any(overrides):
        return base
    data = base.model_dump()
    for o in overrides:
        data.update(o)
    return _theta(tuple(sorted((k, _hashable(v)) for k, v in data.items())))


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


@lru_cache(maxsize=4096)
def _theta(items: tuple) -> HarvestTheta:
    return HarvestTheta(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in items})


def check_accounts(
    accounts: list[AccountSettings], theta: HarvestTheta, symbols: list[str], symbol_theta: dict[str, dict[str, Any]]
) -> None:
    """The rules between accounts and the deployment: unique names (also as variable names),
    symbols within ``HARVEST_SYMBOLS``, theta overrides that validate, per-symbol overrides only
    for the account's symbols. Raises ValueError naming the account and the field."""
    seen: dict[str, str] = {}
    for a in accounts:
        var = credential_var(a.name, "key")
        if var in seen:
            raise ValueError(f"accounts {seen[var]!r} and {a.name!r} have the same name (or variable {var})")
        seen[var] = a.name
        outside = sorted(set(a.symbols or []) - set(symbols))
        if outside:
            raise ValueError(f"account {a.name!r}: symbols {outside} are not in HARVEST_SYMBOLS")
        allowed = set(a.symbols or symbols)
        for sym in list(a.symbol_theta) + list(symbol_theta):
            if sym not in allowed and sym in a.symbol_theta:
                raise ValueError(f"account {a.name!r}: symbol_theta for {sym}, which is not in its symbols")
        for scope in {None, *a.symbol_theta, *symbol_theta}:
            extra = [symbol_theta.get(scope, {}), a.symbol_theta.get(scope, {})] if scope else []
            try:
                merged_theta(theta, a.theta, *extra)
            except ValidationError as e:
                where = f"theta for {scope}" if scope else "theta"
                msg = "; ".join(f"{'.'.join(map(str, x['loc'])) or '(model)'}: {x['msg']}" for x in e.errors())
                raise ValueError(f"account {a.name!r}: {where}: {msg}") from None
