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

    def __init__(
        self, persistent: bool = False, password: str | None = None, tls: bool = False, replica_of: int | None = None
    ):
        self.binary = shutil.which("redis-server") or _venv_redis()
        self.dir = tempfile.mkdtemp(prefix="harvest-redis-")
        self.port = free_port()
        self.persistent = persistent
        self.password = password
        self.tls = tls
        self.replica_of = replica_of  # the port of the primary it starts as a replica of
        self.repl_args: list[str] = []
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
        if self.password:  # as a replica (now, or once a Sentinel makes it one) it authenticates too
            auth += ["--masterauth", self.password]
        if self.replica_of:
            auth += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.repl_args:
            auth += self.repl_args
            self.replica_of = None  # once: after a failover the Sentinels say whose replica it is
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


class SentinelCluster:
    """Redis that fails over, on this machine: a primary and ``replicas`` replicas (each a
    persistent :class:`RedisServer`, AOF ``appendfsync always``) watched by ``sentinels``
    Sentinels (``redis-server --sentinel``, quorum 2) under the service name :attr:`SERVICE`.
    :attr:`url` is the ``redis+sentinel://`` URL harvest takes; :meth:`fail_over` SIGKILLs the
    primary, waits for the Sentinels to promote a replica and starts the killed server again
    (the Sentinels make it a replica of the new primary). ``down_after_ms``: how long a silent
    primary is down to a Sentinel."""

    SERVICE = "harvest"

    def __init__(self, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000, password: str | None = None):
        self.password = password
        self.servers = [RedisServer(persistent=True, password=password)]
        self.servers += [
            RedisServer(persistent=True, password=password, replica_of=self.servers[0].port) for _ in range(replicas)
        ]
        for server in self.servers:  # a replica's full sync starts at once (Redis 7 waits 5 s for more)
            server.repl_args = ["--repl-diskless-sync-delay", "0"]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.dir = tempfile.mkdtemp(prefix="harvest-sentinel-")
        self.down_after_ms = down_after_ms
        self.sentinels: list[subprocess.Popen] = []
        self.failovers = 0

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{self.SERVICE}/0"

    def _sentinel(self, port: int):
        import redis

        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def primary_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers names it (None: none answers)."""
        for port in self.sentinel_ports:
            try:
                addr = self._sentinel(port).execute_command("SENTINEL", "get-master-addr-by-name", self.SERVICE)
                return int(addr[1]) if addr else None
            except Exception:
                continue
        return None

    def _in_sync(self, server: RedisServer) -> bool:
        """Whether ``server`` is a replica with its link to the current primary up."""
        import redis

        from harvest.store.connect import sync

        try:
            info = sync(redis.Redis(port=server.port, password=self.password, socket_timeout=2).info("replication"))
        except Exception:
            return False
        return (
            info.get("role") == "slave"
            and info.get("master_link_status") == "up"
            and (int(info.get("master_port", 0)) == self.primary_port())
        )

    def _settled(self) -> bool:
        """Every Sentinel names the same primary, knows every replica and the other Sentinels."""
        primary = self.primary_port()
        if primary is None:
            return False
        for port in self.sentinel_ports:
            try:
                m = self._sentinel(port).execute_command("SENTINEL", "master", self.SERVICE)
            except Exception:
                return False
            m = dict(zip(m[::2], m[1::2], strict=True)) if isinstance(m, list) else m
            if int(m.get("port", 0)) != primary or int(m.get("num-slaves", 0)) < len(self.servers) - 1:
                return False
            if int(m.get("num-other-sentinels", 0)) < len(self.sentinel_ports) - 1:
                return False
        return all(self._in_sync(x) for x in self.servers if x.port != primary)

    def start(self) -> "SentinelCluster":
        """Start the servers, then the Sentinels; return once every Sentinel knows the whole
        set and every replica is in sync (bounded, 60 s)."""
        for server in self.servers:
            server.start()
        for i, port in enumerate(self.sentinel_ports):
            conf = os.path.join(self.dir, f"sentinel-{i}.conf")  # a Sentinel rewrites its own file
            Path(conf).write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"logfile {os.path.join(self.dir, f'sentinel-{i}.log')}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.servers[0].port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
                + (f"sentinel auth-pass {self.SERVICE} {self.password}\n" if self.password else "")
            )
            binary = self.servers[0].binary
            assert binary is not None, "redis-server was found: the servers run"
            self.sentinels.append(
                subprocess.Popen([binary, conf, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        wait_for(self._settled, 60, 0.1, "the Sentinels to know the primary, its replicas and each other")
        return self

    def server(self, port: int) -> RedisServer:
        return next(x for x in self.servers if x.port == port)

    def fail_over(self) -> float:
        """SIGKILL the primary; return the seconds until the Sentinels name another, once the
        killed server runs again as a replica in sync (bounded, 60 s each)."""
        old = self.server(self.primary_port() or self.servers[0].port)
        t0 = time.monotonic()
        assert old.proc is not None, "the primary runs"
        old.proc.kill()
        old.proc.wait(10)
        wait_for(lambda: self.primary_port() not in (None, old.port), 60, 0.05, "the Sentinels to promote a replica")
        took = time.monotonic() - t0
        old.start()  # comes back as a primary of its own; the Sentinels make it a replica
        wait_for(self._settled, 60, 0.1, "the old primary to rejoin as a replica")
        self.failovers += 1
        return took

    def stop(self) -> None:
        for p in self.sentinels:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for server in self.servers:
            server.stop()
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
