"""Settings that must not pass (issue 19): no path to a non-local exchange without the opt-in,
whatever the venue is called; unknown HARVEST_* variables; intervals and replay times out of
bounds. The emulator is recognised by where it is and by its handshake, never by a name."""

from __future__ import annotations

import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harvest.venues.base import VenueError
from harvest.venues.binance import emulator_handshake, make_client
from settings import SettingsError, load_settings, unknown_variables

KEYS = {"api_key": "k", "api_secret": "s"}
URLS = [
    None,
    "http://127.0.0.1:8790/fapi",
    "http://localhost:8790/fapi",
    "http://[::1]:8790/fapi",
    "https://fapi.binance.com/fapi",
    "http://10.0.0.5:8790/fapi",
    "http://emulator.local:8790/fapi",
]


@pytest.mark.parametrize("venue,url,opt_in", list(itertools.product(["paper", "testnet", "live"], URLS, [False, True])))
def test_every_combination_of_venue_url_and_opt_in(venue, url, opt_in):
    """Old main: HARVEST_VENUE=paper with HARVEST_FAPI_URL=https://fapi.binance.com/fapi built a
    mainnet client with the paper clock driving decisions. Since issue 33 the settings accept any
    host with the paper venue (the emulator may run on another host): what keeps a real exchange
    out is the handshake proving the account's secret, before the first request
    (tests/integration/test_remote_emulator.py refuses such a URL at start-up)."""
    kw = dict(KEYS, venue=venue, live_trading_opt_in=opt_in)
    if url:
        kw["fapi_url"] = url
    allowed = venue == "paper" or (url is None and opt_in)
    if allowed:
        s = load_settings(**kw)
        assert (s.venue, s.fapi_url) == (venue, url)
    else:
        with pytest.raises(SettingsError) as e:
            load_settings(**kw)
        assert "HARVEST_" in str(e.value)


class _NotTheEmulator(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"serverTime": 1}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_a_loopback_server_that_is_not_the_emulator_gets_no_order():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _NotTheEmulator)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/fapi"
        with pytest.raises(VenueError) as e:
            make_client("k", "s", url, False, 2.0, 5000)
        assert "not harvest's fapi emulator" in e.value.message
        with pytest.raises(VenueError) as e:
            emulator_handshake("http://127.0.0.1:1/fapi", 0.5)  # nothing listening: try again later
        assert e.value.kind == "retryable"
        with pytest.raises(VenueError):
            emulator_handshake("https://fapi.binance.com/fapi", 0.5)  # refused before any request
    finally:
        srv.shutdown()
        srv.server_close()


def test_unknown_variables_stop_start_up_naming_the_closest(monkeypatch):
    """Old main: HARVEST_MOD=shadow was ignored and the mode stayed live."""
    monkeypatch.setenv("HARVEST_MOD", "shadow")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert "HARVEST_MOD (did you mean HARVEST_MODE?)" in str(e.value)
    assert unknown_variables(
        {
            "HARVEST_THETA__KILL_THRESHLD",
            "HARVEST_MODE",
            "HARVEST_THETA__T1_R",
            "PATH",
            "HARVEST_TEST_REDIS_URL",
            "HARVEST_SECRETS_DIR",
        }
    ) == ["HARVEST_THETA__KILL_THRESHLD (did you mean HARVEST_THETA__KILL_THRESHOLD?)"]


def test_the_policy_is_a_validated_setting(monkeypatch):
    """Issue 20: ``HARVEST_POLICY=lsf_ladder`` was silently ignored; now it sets the kernel's
    policy, an unknown one stops start-up naming it, and two spellings may not disagree."""
    monkeypatch.setenv("HARVEST_POLICY", "lsf_ladder")
    assert load_settings().theta.policy == "lsf_ladder"
    monkeypatch.setenv("HARVEST_POLICY", "martingale")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert "HARVEST_POLICY='martingale'" in str(e.value) and "lsf_ladder" in str(e.value)
    monkeypatch.setenv("HARVEST_POLICY", "r_ladder")
    monkeypatch.setenv("HARVEST_THETA__POLICY", "lsf_ladder")
    with pytest.raises(SettingsError, match="disagree"):
        load_settings()
    monkeypatch.delenv("HARVEST_POLICY")
    assert load_settings().theta.policy == "lsf_ladder"


@pytest.mark.parametrize(
    "field,value",
    [
        ("scan_interval_s", 0.01),
        ("market_refresh_s", 0.05),
        ("paper_replay_start", -1e300),
        ("paper_replay_start", 1.9e9),
        ("sweep_interval_s", 0.1),
    ],
)
def test_bounds(field, value):
    with pytest.raises(SettingsError) as e:
        load_settings(**{field: value})
    assert f"HARVEST_{field.upper()}" in str(e.value)


def test_schedule_set_refuses_an_interval_below_the_bound():
    """Old main: `harvest schedule set scan 0.01` was accepted (1437 scans in 25 s)."""
    from harvest.services.schedule import _validate

    s = load_settings()
    with pytest.raises(ValueError) as e:
        _validate(s, "scan", 0.01)
    assert "HARVEST_SCAN_INTERVAL_S" in str(e.value)
    assert _validate(s, "scan", 0.25) == 0.25


def test_decision_fields_have_size_limits():
    """Old main: a decision with a 1 MB reason_codes was stored whole."""
    from pydantic import ValidationError

    from harvest.domain.models import Decision

    base = dict(
        account="paper",
        symbol="BTCUSDT",
        epoch="L1",
        side="LONG",
        action="PARTIAL_25",
        tier=1,
        close_fraction=0.25,
        r_net=2.1,
        kill_score=0.1,
        mark_price=100.0,
        decided_at=1.0,
    )
    Decision.model_validate(dict(base, reason_codes=["harvest_partial_25"]))
    for bad in (
        {"reason_codes": ["x" * 1_000_000]},
        {"reason_codes": ["a"] * 100},
        {"components": {f"c{i}": 0.1 for i in range(50)}},
        {"components": {"x" * 100: 0.1}},
    ):
        with pytest.raises(ValidationError):
            Decision.model_validate(dict(base, **bad))


def test_account_settings_are_checked_at_start_up(monkeypatch):
    with pytest.raises(SettingsError, match="HARVEST_ACCOUNT_BETA_API_KEY"):
        load_settings(accounts=[{"name": "beta"}], fapi_url="http://127.0.0.1:1/fapi")
    monkeypatch.setenv("HARVEST_ACCOUNT_A_API_KEY", "same")
    monkeypatch.setenv("HARVEST_ACCOUNT_A_API_SECRET", "s1")
    monkeypatch.setenv("HARVEST_ACCOUNT_B_API_KEY", "same")
    monkeypatch.setenv("HARVEST_ACCOUNT_B_API_SECRET", "s2")
    with pytest.raises(SettingsError, match="same API key"):
        load_settings(accounts=[{"name": "a"}, {"name": "b"}], fapi_url="http://127.0.0.1:1/fapi")
    with pytest.raises(SettingsError, match="HARVEST_ACCOUNT_B_API_KEY.*names no configured account"):
        load_settings(accounts=[{"name": "a"}])
    with pytest.raises(SettingsError, match="account .c.: theta: t1_r"):
        load_settings(accounts=[{"name": "c", "theta": {"t1_r": -1}}])
    with pytest.raises(SettingsError, match="live_trading_opt_in|HARVEST_LIVE_TRADING_OPT_IN"):
        load_settings(accounts=[{"name": "c", "venue": "live"}])


def test_a_sentinel_url_reaches_every_client_in_its_own_form_and_a_bad_one_stops_start_up():
    """``redis+sentinel://`` (issue 23.5): redis-py's Sentinel, kombu's ``sentinel://`` with
    ``master_name``, redbeat's ``redis-sentinel://`` with its options; the password only where
    Celery masks it; a malformed URL names the variable and what is wrong."""
    from settings.celery import celery_config
    from settings.sentinel import parse_sentinel_url

    url = "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/harvest/2"
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (parsed.service, parsed.db, parsed.password, parsed.username) == ("harvest", 2, "s3cret", None)
    s = load_settings(redis_url=url)
    assert s.min_replicas == 1 and load_settings(redis_url=url, redis_min_replicas=0).min_replicas == 0
    assert load_settings().min_replicas == 0  # a single Redis has no replica to wait for
    conf = celery_config(s)
    assert conf["broker_url"] == (
        "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26379/2;sentinel://[::1]:26380/2"
    )
    assert conf["broker_transport_options"]["master_name"] == "harvest"
    assert conf["redbeat_redis_url"] == "redis-sentinel://" and "s3cret" not in conf["redbeat_redis_url"]
    opts = conf["redbeat_redis_options"]
    assert opts["service_name"] == "harvest" and opts["db"] == 2 and opts["password"] == "s3cret"
    assert opts["sentinels"][:2] == [["10.0.0.1", 26379], ["10.0.0.2", 26379]]
    for bad, why in [
        ("redis+sentinel://10.0.0.1:26379", "no service name"),
        ("redis+sentinel://10.0.0.1:x/harvest", "port must be a number"),
        ("redis+sentinel://10.0.0.1/harvest/zero", "path must be"),
        ("redis+sentinel://10.0.0.1/harvest?ssl_cert_reqs=none", "takes no query"),
    ]:
        with pytest.raises(SettingsError) as e:
            load_settings(redis_url=bad)
        assert "HARVEST_REDIS_URL" in str(e.value) and why in str(e.value), str(e.value)
