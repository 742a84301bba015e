"""The exporter (``harvest metrics``, issue 31 finding 10) as a real process on a free port:
a client that connects and sends nothing is dropped within the read timeout; connections are
served by a bounded number of threads, and idle ones beyond the bound do not keep a scrape from
answering; listening on a non-loopback address without basic auth is warned about at start-up.

Old main: a thread per connection, no read timeout (an idle client held its thread forever),
no warning for ``--host 0.0.0.0`` without auth."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from harvest.ops.metrics import is_loopback
from harvest.ops.procs import ROOT
from tests.harness import free_port, wait_for

NS = os.environ["HARVEST_NAMESPACE"] + "-exporter"
READ_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 4


@contextmanager
def exporter(*args: str, **env: str):
    """``harvest metrics`` on a free port (``args`` added); yields (process, port) once it
    answers on 127.0.0.1; stops it and leaves its stderr in ``process.stderr_text``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvest.ops.cli", "metrics", "--port", str(port), *args],
        cwd=ROOT,
        env=dict(os.environ, HARVEST_NAMESPACE=NS, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _answers(port), 30, 0.1, "the exporter")
        yield proc, port
    finally:
        proc.terminate()
        try:
            _, proc.stderr_text = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, proc.stderr_text = proc.communicate(timeout=15)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _scrape(port: int, timeout: float) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.status, r.read().decode()


def _idle(stack: ExitStack, port: int) -> socket.socket:
    """A client that connects and sends nothing."""
    s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S + 10))
    return s


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


bounded = ("--read-timeout", str(READ_TIMEOUT_S), "--max-connections", str(MAX_CONNECTIONS))


def test_a_client_that_sends_nothing_is_dropped_within_the_read_timeout():
    with exporter(*bounded) as (_, port), ExitStack() as stack:
        s = _idle(stack, port)
        t0 = time.monotonic()
        try:
            got = s.recv(1)  # the server closes it: b"" (or a reset)
        except ConnectionResetError:
            got = b""
        except TimeoutError:
            pytest.fail(f"an idle client was still connected after {time.monotonic() - t0:.1f} s")
        waited = time.monotonic() - t0
        assert got == b"" and waited < READ_TIMEOUT_S + 2, waited


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_idle_connections_beyond_the_bound_hold_no_thread_and_a_scrape_still_answers():
    idle = MAX_CONNECTIONS * 2  # the bound, and as many again waiting in the backlog
    with exporter(*bounded) as (proc, port), ExitStack() as stack:
        base = _threads(proc.pid)
        for _ in range(idle):
            _idle(stack, port)
        t0 = time.monotonic()
        status, body = _scrape(port, timeout=4 * READ_TIMEOUT_S + 10)
        waited = time.monotonic() - t0
        during = _threads(proc.pid)
        assert status == 200 and "harvest_heartbeat_age_seconds" in body
        # The idle clients are served (and dropped) a bound at a time: the scrape waits for
        # at most two rounds of the read timeout, and never a thread per idle client.
        assert waited < 2 * READ_TIMEOUT_S + 3, waited
        assert during - base <= MAX_CONNECTIONS + 1, (base, during)


def test_listening_beyond_loopback_without_auth_is_warned_about():
    with exporter("--host", "0.0.0.0") as (proc, port):
        assert _scrape(port, 10)[0] == 200
    assert "WARNING harvest.metrics: harvest metrics listens on 0.0.0.0 without basic auth" in proc.stderr_text
    with exporter("--host", "0.0.0.0", HARVEST_METRICS_BASIC_AUTH="prom:scrape-pw-31x") as (proc, _):
        pass
    with exporter("--host", "127.0.0.1") as (proc2, _):
        pass
    for p in (proc, proc2):
        assert "without basic auth" not in p.stderr_text, p.stderr_text
        assert "scrape-pw-31x" not in p.stderr_text


def test_what_counts_as_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("no-such-host.invalid")


def test_a_client_trickling_its_request_is_cut_off_when_a_scrape_needs_its_slot():
    """A client that sends one byte at a time, each within the read timeout, would hold its
    slot for as long as it likes: once the exporter is full it is cut off at ``max_request_s``
    and the waiting scrape is served."""
    import threading

    from prometheus_client import CollectorRegistry, Gauge

    from harvest.ops.metrics import serve_metrics

    registry = CollectorRegistry()
    Gauge("probe", "a series to scrape", registry=registry).set(1)
    port = free_port()
    server = serve_metrics(
        registry, "127.0.0.1", port, max_connections=1, read_timeout_s=READ_TIMEOUT_S, max_request_s=1.5
    )
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    stop = threading.Event()
    cut_off = threading.Event()

    def trickle():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for ch in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 10_000:
                try:
                    s.sendall(bytes([ch]))
                except OSError:
                    break
                if stop.wait(READ_TIMEOUT_S / 4):  # the attacker's pace: within the read timeout
                    return
            try:
                gone = s.recv(1) == b""
            except OSError:
                gone = True
            if gone:
                cut_off.set()

    client = threading.Thread(target=trickle, daemon=True)
    try:
        client.start()
        wait_for(lambda: server._open, 10, 0.01, "the trickling client to hold the slot")
        t0 = time.monotonic()
        status, body = _scrape(port, timeout=10)
        waited = time.monotonic() - t0
        assert status == 200 and "probe 1.0" in body
        assert waited < 1.5 + 1.0, waited
        assert cut_off.wait(5)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        client.join(10)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_an_ipv6_address_is_served():
    """``--host ::1`` (or ``::``) used to fail: wsgiref's server is IPv4 unless told."""
    import threading

    from prometheus_client import CollectorRegistry, Gauge

    from harvest.ops.metrics import serve_metrics

    registry = CollectorRegistry()
    Gauge("probe", "a series to scrape", registry=registry).set(1)
    port = free_port()
    try:
        server = serve_metrics(registry, "::1", port)
    except OSError as e:  # IPv6 compiled in but not configured on this host
        pytest.skip(f"::1 not available: {e}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as r:
            assert r.status == 200 and b"probe 1.0" in r.read()
    finally:
        server.shutdown()
        server.server_close()
