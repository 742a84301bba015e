"""What the command line prints of stored text (issue 31, finding 10), against a real Redis:
a plan whose reason, ledger data and exchange error message hold terminal escape sequences
(clear screen, set the window title, a forged line) is shown by ``harvest plans`` and ``harvest
plan show`` with every control character escaped, as is an account name read back by ``harvest
trading``; and a Redis URL naming a database the server does not have ends in one line naming
``HARVEST_REDIS_URL``, as does a wrong password (never shown)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from harvest.domain.models import Action, PlanState
from harvest.domain.plans import make_plan_id
from harvest.ops.procs import ROOT
from harvest.services.runtime import build_runtime
from settings import load_settings
from tests.harness import RedisServer
from tests.pipeline_helpers import clean, full_close_plan

NS = os.environ["HARVEST_NAMESPACE"] + "-cli"
EVIL = "stop hit\x1b[2J\x1b]0;pwned\x07\r\nFAKE 2099-01-01 FILLED\x9b31m"
SHOWN = "stop hit\\x1b[2J\\x1b]0;pwned\\x07\\r\\nFAKE 2099-01-01 FILLED\\x9b31m"


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harvest.ops.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HARVEST_NAMESPACE": NS, **env},
        timeout=90,
    )


def _no_controls(text: str) -> bool:
    """Whether ``text`` holds no control character but newlines (one per printed line)."""
    return all(c == "\n" or (c.isprintable() and c not in "\x7f") for c in text)


def test_stored_escape_sequences_reach_the_terminal_escaped():
    rt = build_runtime(load_settings(namespace=NS))
    clean(rt)
    pid = make_plan_id("paper", "ETHUSDT", "L9", Action.FULL_CLOSE_PROPOSED, "full", 0)
    now = time.time()
    made = full_close_plan("paper", "ETHUSDT", "L9", now)
    assert made.plan_id == pid
    rt.plans.create(made.record, {})
    ok, _ = rt.plans.transition(
        pid, PlanState.REJECTED, EVIL, data={"note": EVIL}, fields={"error_code": -2010, "error_message": EVIL}
    )
    assert ok and rt.plans.get(pid).error_message == EVIL  # stored as the exchange sent it
    rt.r.hset(rt.plans.k.trading, "evil\x1b]0;pwned\x07", "HALTED")  # an account name as Redis holds it
    try:
        listed = cli("plans")
        assert listed.returncode == 0, listed.stderr
        assert _no_controls(listed.stdout) and SHOWN in listed.stdout, listed.stdout
        [row] = [ln for ln in listed.stdout.splitlines() if pid in ln]  # one line, whatever the reason holds
        assert "FAKE" in row
        shown = cli("plan", "show", pid)
        assert shown.returncode == 0, shown.stderr
        assert _no_controls(shown.stdout), shown.stdout
        assert shown.stdout.count(SHOWN) >= 3  # the reason, the error message, the ledger's reason
        assert "\\x1b]0;pwned" in shown.stdout.split("error -2010", 1)[1]
        trading = cli("trading")
        assert trading.returncode == 0 and _no_controls(trading.stdout), trading.stdout
        assert "evil\\x1b]0;pwned\\x07" in trading.stdout
        as_json = cli("plans", "--json")  # JSON escapes controls itself
        assert _no_controls(as_json.stdout) and "\\u001b[2J" in as_json.stdout
    finally:
        rt.r.hdel(rt.plans.k.trading, "evil\x1b]0;pwned\x07")
        clean(rt)


def test_a_db_the_server_lacks_and_a_wrong_password_end_in_one_line():
    server = RedisServer(password="right-pw-1f3a").start()
    try:
        base = server.url.rsplit("/", 1)[0]  # redis://:right-pw-1f3a@127.0.0.1:PORT
        out = cli("plans", HARVEST_REDIS_URL=base + "/99")  # a valid integer: only the server knows
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        [line] = out.stderr.splitlines()
        assert "has no database 99" in line and "HARVEST_REDIS_URL" in line and "right-pw-1f3a" not in line, line
        wrong = base.replace("right-pw-1f3a", "wrong-pw-77c0") + "/0"
        out = cli("trading", HARVEST_REDIS_URL=wrong)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        [line] = out.stderr.splitlines()
        assert "refused the credentials" in line and "HARVEST_REDIS_URL" in line and "wrong-pw-77c0" not in line
        assert cli("plans", HARVEST_REDIS_URL=base + "/15").returncode == 0  # the last of 16: fine
    finally:
        server.stop()
