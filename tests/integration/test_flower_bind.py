"""Issue 31, finding 6: Flower as the README documents it listened on every interface (``0.0.0.0``
and ``[::]``) while the systemd unit bound loopback. The documented command is run here as a user
would (its credentials from the environment) and the kernel's socket table must show it listening
on 127.0.0.1 only."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from harvest.ops.procs import ROOT, free_port
from tests.harness import wait_for

DOCS = [ROOT / "README.md", ROOT / "docs" / "operations.md", *sorted((ROOT / "deploy" / "systemd").glob("*.service"))]


def _flower_commands() -> list[tuple[Path, str]]:
    out = []
    for path in DOCS:
        for line in path.read_text().splitlines():
            m = re.search(r"(celery -A tasks flower[^`#\n]*)", line)
            if m:
                out.append((path, m.group(1).strip()))
    return out


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                found.add(addr)
    return found


def test_every_documented_flower_command_binds_loopback():
    cmds = _flower_commands()
    assert len(cmds) >= 3, cmds  # README (twice), operations, the systemd unit
    for path, cmd in cmds:
        assert "--address=127.0.0.1" in cmd, f"{path.name}: {cmd}"


def test_the_readmes_flower_command_listens_on_loopback_only():
    _, cmd = next((p, c) for p, c in _flower_commands() if p.name == "README.md")
    port = free_port()
    argv = [a for a in shlex.split(cmd) if a != "celery"]
    env = {**os.environ, "FLOWER_BASIC_AUTH": "ops:flower-test-password"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", *argv[0:], f"--port={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found = wait_for(lambda: _listening(port) or None, 60, what="Flower listening")
        assert found == {"0100007F"}, found  # 127.0.0.1 only: no 00000000 (0.0.0.0), no :: (tcp6)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
