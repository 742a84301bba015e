"""The command line fails in one line (issue 31, finding 10): with Redis down each command ends
with one line on stderr naming what failed and how to fix it, a non-zero status and no
traceback (``--debug`` or ``HARVEST_DEBUG=1`` shows it); a Redis URL whose db is not a
non-negative integer stops start-up naming ``HARVEST_REDIS_URL``; every printed URL has its
password and tokens masked (the demo's banner included); stored text reaches the terminal with
its control characters escaped (:func:`harvest.ops.cli.term_safe`; the commands that print
plans are tested against a real Redis in tests/integration/test_cli_output.py).

The processes are the real ``python -m harvest.ops.cli``, with ``HARVEST_REDIS_URL`` on a
loopback port where nothing listens (:func:`free_port`): no server of any kind is needed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harvest.ops.cli import explain_failure, term_safe
from harvest.ops.demo import demo_banner
from harvest.ops.procs import ROOT
from settings import SettingsError, load_settings, mask_url, redis_db
from tests.harness import free_port

PASSWORD = "pw-5e0c1b7a"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HARVEST_DEBUG"}
    return {**env, **extra}


def _run_all(commands: list[list[str]], env: dict[str, str], envs: list[dict] | None = None) -> list:
    """Run ``harvest <command>`` for each command at once (each its own process, with ``env``
    and the command's own ``envs[i]`` on top); their CompletedProcess in the same order. Each
    is bounded (90 s)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "harvest.ops.cli", *c],
            cwd=ROOT,
            env={**env, **(envs[i] if envs else {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, c in enumerate(commands)
    ]
    out = []
    for c, p in zip(commands, procs, strict=True):
        stdout, stderr = p.communicate(timeout=90)
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return out


def test_every_command_with_redis_down_fails_in_one_line_and_debug_shows_the_traceback():
    port = free_port()  # nothing listens there
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    commands = [["plans"], ["trading"], ["scorecard"], ["plan", "show", "0" * 16], ["reconcile"]]
    debug = [["--debug", "plans"], ["plan", "show", "0" * 16, "--debug"], ["trading"]]
    envs = [{}] * (len(commands) + 2) + [{"HARVEST_DEBUG": "1"}]
    results = _run_all(commands + debug, _env(HARVEST_REDIS_URL=url), envs)
    for r in results[: len(commands)]:
        cmd = " ".join(r.args)
        assert r.returncode == 1, (cmd, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == "", (cmd, r.stderr)
        [line] = r.stderr.splitlines()  # one line
        assert line.startswith(f"harvest {r.args[0]}: cannot reach Redis at redis://:**@127.0.0.1:{port}/0"), line
        assert "Connection refused" in line and "HARVEST_REDIS_URL" in line, line
        assert PASSWORD not in line
    for r in results[len(commands) :]:  # --debug before or after the command, or HARVEST_DEBUG=1
        assert r.returncode == 1, r
        assert "Traceback" in r.stderr and "redis.exceptions.ConnectionError" in r.stderr, r.stderr


@pytest.mark.parametrize("db", ["abc", "-1", "0/1", "1.5"])
def test_a_redis_url_whose_db_is_not_a_non_negative_integer_stops_start_up_naming_the_variable(db):
    """redis-py reads ``/abc`` as db 0 without a word and sends ``SELECT -1`` for ``/-1``."""
    url = f"redis://:{PASSWORD}@127.0.0.1:6379/{db}"
    with pytest.raises(SettingsError) as e:
        load_settings(redis_url=url)
    assert "HARVEST_REDIS_URL" in str(e.value) and "non-negative integer" in str(e.value)
    assert PASSWORD not in str(e.value)
    with pytest.raises(SettingsError, match="HARVEST_BROKER_URL"):
        load_settings(broker_url=f"redis://127.0.0.1:6379/{db}")


def test_the_cli_refuses_a_bad_db_in_one_line_with_status_2():
    port = free_port()
    results = _run_all(
        [["plans"], ["trading"]],
        _env(HARVEST_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/abc"),
    )
    results += _run_all([["plans"]], _env(HARVEST_REDIS_URL=f"redis://127.0.0.1:{port}/-1"))
    for r in results:
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        [line] = r.stderr.splitlines()
        assert "HARVEST_REDIS_URL" in line and "non-negative integer" in line and PASSWORD not in line, line


def test_redis_db_reads_the_db_as_redis_py_does():
    assert [redis_db(u) for u in ("redis://h", "redis://h/", "redis://h:1/7", "rediss://h/2?db=3")] == [0, 0, 7, 3]
    assert redis_db("unix:///run/redis.sock?db=4") == 4 and redis_db("unix:///run/redis.sock") == 0
    assert redis_db("amqp://guest:guest@h//") is None
    assert load_settings(redis_url="redis://127.0.0.1:6379/15").redis_url.endswith("/15")
    assert load_settings(redis_url="redis+sentinel://h:26379/svc/2").redis_url  # checked by its own parser


def test_mask_url_hides_passwords_and_query_tokens_in_every_form():
    cases = {
        f"redis://:{PASSWORD}@127.0.0.1:6390/0": "redis://:**@127.0.0.1:6390/0",
        f"rediss://user:{PASSWORD}@h:1/2?ssl_cert_reqs=none": "rediss://user:**@h:1/2?ssl_cert_reqs=none",
        f"redis+sentinel://:{PASSWORD}@a:1,b:2/svc/0": "redis+sentinel://:**@a:1,b:2/svc/0",
        f"amqp://guest:{PASSWORD}@h:5672//": "amqp://guest:**@h:5672//",
        f"redis://{PASSWORD}@h/0": "redis://**@h/0",  # a colon-less userinfo may be a password
        f"redis://h/0?password={PASSWORD}&db=1": "redis://h/0?password=**&db=1",
        f"json://h/p?token={PASSWORD}#x": "json://h/p?token=**#x",
        "redis://127.0.0.1:6379/0": "redis://127.0.0.1:6379/0",
    }
    for url, shown in cases.items():
        assert mask_url(url) == shown, url


def test_the_demo_banner_never_shows_the_redis_password():
    url = f"redis://:{PASSWORD}@10.0.0.5:6379/3?token={PASSWORD}"
    line = demo_banner("in-process paper engine", 1.75e9, 1.75e9 + 3600, 1440.0, url, "demo-x", ["a", "b"], ["b"])
    assert PASSWORD not in line and "redis://:**@10.0.0.5:6379/3?token=**" in line and "b in shadow" in line
    assert "Redis private" in demo_banner("x", 1.75e9, 1.75e9 + 60, 1.0, None, "demo-y")


def test_term_safe_escapes_every_control_character_and_keeps_text():
    evil = "stop hit\x1b[2J\x1b]0;pwned\x07\r\nFAKE LINE\x9b31m\x7f\u202egnp.exe\tend"
    shown = term_safe(evil)
    assert shown == "stop hit\\x1b[2J\\x1b]0;pwned\\x07\\r\\nFAKE LINE\\x9b31m\\x7f\\u202egnp.exe\\tend"
    assert all(c.isprintable() for c in shown)
    assert term_safe("línea 1\n\tlínea 2\x1b", multiline=True) == "línea 1\n\tlínea 2\\x1b"
    assert term_safe("BTCUSDT ✓ 止损") == "BTCUSDT ✓ 止损"  # only controls change


def test_explain_failure_names_what_failed_and_how_to_fix_it():
    import errno
    import types

    import redis

    from harvest.venues.base import VenueError

    line, status = explain_failure(redis.ResponseError("DB index is out of range"), "plans")
    assert status == 1 and "has no database" in line and "HARVEST_REDIS_URL" in line and "databases" in line
    line, status = explain_failure(redis.AuthenticationError("invalid username-password pair"), "plans")
    assert status == 1 and "refused the credentials" in line and "HARVEST_REDIS_URL" in line
    line, status = explain_failure(VenueError(-1003, "Too many requests\x1b[2J", 429), "reconcile")
    assert status == 1 and "-1003" in line and "\\x1b" in term_safe(line)
    busy = OSError(errno.EADDRINUSE, "Address already in use")
    line, status = explain_failure(busy, "metrics", types.SimpleNamespace(host="127.0.0.1", port=9808))
    assert status == 1 and "127.0.0.1:9808" in line and "--port" in line
    line, status = explain_failure(KeyboardInterrupt(), "streams")
    assert (line, status) == ("harvest streams: interrupted", 130)
    line, status = explain_failure(ZeroDivisionError("division by zero"), "plans")
    assert status == 1 and "ZeroDivisionError: division by zero" in line and "--debug" in line
