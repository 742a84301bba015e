"""Child processes harvest runs for its main job (and its tests): a private redis-server and
Celery worker/beat processes, stopped cleanly; every wait is bounded."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]  # the project root, where the tasks package lives


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``pred`` until it returns a truthy value and return it; AssertionError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    """Direct child pids of ``pid`` (Linux ``/proc``; [] elsewhere or when it has ended)."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _venv_redis() -> str | None:
    """redis-server shipped next to the interpreter (e.g. by a pip-installed server)."""
    cand = Path(sys.executable).parent / "redis-server"
    return str(cand) if cand.exists() else None


class RedisServer:
    """A throw-away redis-server on a free loopback port. ``persistent``: every write is
    appended and fsynced (AOF, ``appendfsync always``), so :meth:`restart` keeps the data —
    what ``harvest chaos`` needs to restart Redis under a running pipeline. ``password``:
    clients must AUTH. ``tls``: TLS only (a self-signed certificate made with ``openssl``
    in the server's directory; the :attr:`url` is ``rediss://`` and names it as the CA)."""

    def __init__(self, persistent: bool = False, password: str | None = None, tls: bool = False):
        self.binary = shutil.which("redis-server") or _venv_redis()
        self.dir = tempfile.mkdtemp(prefix="harvest-redis-")
        self.port = free_port()
        self.persistent = persistent
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            ca = os.path.join(self.dir, "cert.pem")
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _tls_args(self) -> list[str]:
        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        if not os.path.exists(cert):
            openssl = shutil.which("openssl")
            if not openssl:
                raise RuntimeError("openssl not found: it makes the test certificate of a TLS redis-server")
            subprocess.run(
                [
                    openssl,
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    key,
                    "-out",
                    cert,
                    "-days",
                    "2",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            cert,
            "--tls-auth-clients",
            "no",
        ]

    def start(self) -> "RedisServer":
        if not self.binary:
            raise RuntimeError("redis-server not found on PATH")
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        listen = self._tls_args() if self.tls else ["--port", str(self.port)]
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [
                self.binary,
                *listen,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *durability,
                *auth,
                "--dir",
                self.dir,
                "--logfile",
                os.path.join(self.dir, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        r = redis.Redis.from_url(self.url)
        wait_for(lambda: _ping(r) and not _loading(r), 30, what="redis-server to answer PING")
        return self

    def _terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self, empty: bool = False) -> float:
        """Stop the server (SIGTERM: clients see their connections drop) and start it again on
        the same port and data directory; ``empty``: without its data (the AOF and RDB files
        removed in between: a Redis that lost its state). Returns the seconds it was down."""
        t0 = time.monotonic()
        self._terminate()
        if empty:
            for name in os.listdir(self.dir):
                if name.startswith(("appendonly", "dump")):
                    path = os.path.join(self.dir, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        self.start()
        return time.monotonic() - t0

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)


def _loading(r) -> bool:
    try:
        return r.info("persistence").get("loading", 0) == 1
    except Exception:
        return True


def _ping(r) -> bool:
    try:
        return bool(r.ping())
    except Exception:
        return False


class CeleryProcess:
    """``celery -A tasks worker|beat|flower`` as a child process with its own HARVEST_* environment."""

    def __init__(self, kind: str, env: dict[str, str], args: list[str] | None = None):
        self.kind = kind
        self.env = {**os.environ, **env}
        self.args = args or []
        self.log = tempfile.NamedTemporaryFile(prefix=f"harvest-{kind}-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None
        self._kept: str | None = None  # the log, kept here once stop() removed its file

    def command(self) -> list[str]:
        """The command line it runs."""
        level = ["-l", "INFO"] if self.kind in ("worker", "beat") else []
        return [sys.executable, "-m", "celery", "-A", "tasks", self.kind, *level, *self.args]

    def start(self) -> "CeleryProcess":
        """Start the process (once: a stopped one is not started again; make a new one)."""
        if self._kept is not None:
            raise RuntimeError(f"this celery {self.kind} was stopped; start a new CeleryProcess")
        cmd = self.command()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def output(self) -> str:
        """Everything the process printed so far (after :meth:`stop`: all of it)."""
        if self._kept is not None:
            return self._kept
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        marker = "ready." if self.kind == "worker" else "beat: Starting"

        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"celery {self.kind} exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            return marker in self.output()

        wait_for(ok, timeout, 0.1, what=f"celery {self.kind} to be ready")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the process group (SIGKILL after ``timeout`` s); returns the exit code
        (None when it never started). The log moves from its temporary file into memory
        (:meth:`output`), so no file is left behind."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self._ended()

    def kill(self) -> int | None:
        """SIGKILL to the process group (main process and pool: a crash, nothing cleaned up),
        waiting up to 10 s; returns the exit code. The log moves into memory as on :meth:`stop`."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        return self._ended()

    def _ended(self) -> int | None:
        if self._kept is None:
            self._kept = self.output()
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
        return self.proc.returncode if self.proc is not None else None


class HarvestProcess(CeleryProcess):
    """``harvest <kind> <args>`` (``streams``, ``metrics`` …) as a child process, managed like
    :class:`CeleryProcess` (its own environment, log, SIGTERM then SIGKILL)."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "harvest.ops.cli", self.kind, *self.args]


def worker(env: dict[str, str], namespace: str, concurrency: int = 2) -> CeleryProcess:
    """A worker consuming the namespace's three queues with ``concurrency`` processes."""
    queues = ",".join(f"{namespace}.{k}" for k in ("scan", "orders", "housekeeping"))
    return CeleryProcess(
        "worker",
        env,
        ["-Q", queues, "-c", str(concurrency), "-n", f"{namespace}@%h", "--without-mingle", "--without-gossip"],
    )
