"""The hosts of ``harvest chaos --hosts`` (:mod:`harvest.ops.hosts`) as Linux network
namespaces on a bridge: :class:`Network` makes them (``hv-<pid>-<id>-<host>``, ``10.A.B.0/24``
picked per run, the bridge ``10.A.B.1`` in this process's namespace) and removes them,
:func:`sweep_stale` removes what a crashed run left, :func:`unavailable` says why they cannot
be made here.

Every host but ``orders`` is joined to the bridge by a veth pair. The ``orders`` host is joined
by two TAP devices and a relay process between them (:func:`relay`, run as ``python -m
harvest.ops.hosts relay``): a wire that forwards every Ethernet frame and, when told, delays it
(``delay ± jitter``), loses a share of it, or drops what goes to or comes from given addresses.
That is ``tc netem`` and a firewall's DROP in user space, because neither ``sch_netem`` nor
netfilter is in every kernel; frames are kept in order per direction.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from harvest.ops.procs import ROOT, wait_for

#: The hosts, in address order from 10.A.B.2.
HOSTS = ("state", "exchange", "scan", "orders", "beat", "streams")
IP = shutil.which("ip") or "/usr/sbin/ip"
_NAME = re.compile(r"^hv-(\d+)-([0-9a-f]{5})-[a-z]+$")
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


def unavailable() -> str | None:
    """Why the hosts cannot be made here (None: they can): not root, no ``ip``, no
    ``/dev/net/tun``, no ``redis-server``, or the kernel refused a namespace, a bridge, a veth
    pair or a TAP device (its answer quoted; tried in a probe namespace, then removed)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); this process is not root"
    if not shutil.which("ip") and not os.path.exists(IP):
        return "iproute2's `ip` is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (the orders host's link is a TAP relay)"
    if not shutil.which("redis-server"):
        return "redis-server not found on PATH"
    name = f"hv-{os.getpid()}-{secrets.token_hex(3)[:5]}-probe"
    out = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return f"`ip netns add` refused: {out.stderr.strip() or out.returncode}"
    try:  # the kinds of link a run makes, tried inside the probe (gone with it)
        for kind in (["b0", "type", "bridge"], ["v0", "type", "veth", "peer", "name", "v1"]):
            out = subprocess.run([IP, "-n", name, "link", "add", *kind], capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                return f"`ip link add {' '.join(kind)}` refused: {out.stderr.strip() or out.returncode}"
        out = subprocess.run(
            [IP, "-n", name, "tuntap", "add", "dev", "t0", "mode", "tap"], capture_output=True, text=True, timeout=30
        )
        if out.returncode != 0:
            return f"`ip tuntap add … mode tap` refused: {out.stderr.strip() or out.returncode}"
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=30)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _kill_netns(ns: str) -> int:
    """SIGKILL every process in namespace ``ns``; how many there were."""
    pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def sweep_stale() -> list[str]:
    """Remove the namespaces (and every process in them), links, bridges and temporary
    directories of runs whose process is gone (a crashed or killed run); the namespaces removed."""
    gone = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            _kill_netns(name)
            _ip("netns", "del", name, check=False)
            gone.append(name)
            for link in (f"hv{m.group(2)}br", *(f"hv{m.group(2)}{i}" for i in range(len(HOSTS))), f"hv{m.group(2)}t"):
                _ip("link", "del", link, check=False)
    for d in Path(tempfile.gettempdir()).glob("harvest-hosts-*-*"):  # the data and logs of such runs
        pid = d.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
    return gone


class Network:
    """The run's bridge, hosts and links (module docstring); :meth:`close` removes them all
    (idempotent). Raises RuntimeError naming the ``ip`` command the kernel refused."""

    def __init__(self, tmp: str):
        self.id = secrets.token_hex(3)[:5]
        self.tmp = tmp
        self.bridge = f"hv{self.id}br"
        self.net = self._free_subnet()
        self.ns = {h: f"hv-{os.getpid()}-{self.id}-{h}" for h in HOSTS}
        self.addr = {h: f"{self.net}.{i + 2}" for i, h in enumerate(HOSTS)}
        self.gateway = f"{self.net}.1"  # the bridge's own address: this process's view
        self.links: list[str] = []
        self.relay: subprocess.Popen | None = None
        self.relay_ctl = os.path.join(tmp, "wire.json")
        self.exchange_link = f"hv{self.id}{HOSTS.index('exchange')}"
        self.made = False

    @staticmethod
    def _free_subnet() -> str:
        used = _ip("-4", "addr", check=False).stdout
        for _ in range(200):
            net = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}"
            if f" {net}." not in used:
                return net
        raise RuntimeError("no free 10.x.y.0/24 for the hosts")

    def make(self) -> "Network":
        self.made = True
        _ip("link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, h in enumerate(HOSTS):
            ns = self.ns[h]
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            outer, inner = f"hv{self.id}{i}", f"hv{self.id}{i}p"
            if h == "orders":
                self._tap_link(ns, f"hv{self.id}t", inner)
            else:
                _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                self.links.append(outer)
                _ip("link", "set", outer, "master", self.bridge, "up")
                _ip("link", "set", inner, "netns", ns)
            _ip("-n", ns, "link", "set", inner, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.addr[h]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def _tap_link(self, ns: str, outer: str, inner: str) -> None:
        """Two TAP devices and the relay between them: ``outer`` on the bridge, ``inner``
        moved into ``ns`` (a TAP keeps its open file across namespaces)."""
        for t in (outer, inner):
            _ip("tuntap", "add", "dev", t, "mode", "tap")
            self.links.append(t)
        self.set_wire()
        ready = os.path.join(self.tmp, "wire.ready")
        self.relay = relay = subprocess.Popen(
            [sys.executable, "-m", "harvest.ops.hosts", "relay", outer, inner, self.relay_ctl, ready],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.tmp, "wire.log"), "w"),  # noqa: SIM115 - the child holds it
            start_new_session=True,
        )
        wait_for(lambda: os.path.exists(ready) or relay.poll() is not None, 30, 0.05, "the wire relay")
        if relay.poll() is not None:
            raise RuntimeError(f"the wire relay exited: {Path(self.tmp, 'wire.log').read_text()[-2000:]}")
        _ip("link", "set", outer, "master", self.bridge, "up")
        _ip("link", "set", inner, "netns", ns)

    # ------------------------------------------------------------------ faults

    def set_wire(self, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss: float = 0.0, drop=()) -> None:
        """Tell the orders host's wire what to do (atomic write; the relay reads it within 50 ms)."""
        tmp = self.relay_ctl + ".new"
        Path(tmp).write_text(
            json.dumps({"delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss": loss, "drop": list(drop)})
        )
        os.replace(tmp, self.relay_ctl)

    def exchange_up(self, up: bool) -> None:
        """The exchange host's link on the bridge up or down."""
        _ip("link", "set", self.exchange_link, "up" if up else "down")

    def kill_host(self, host: str) -> int:
        """SIGKILL every process of ``host``; how many."""
        return _kill_netns(self.ns[host])

    def exec_prefix(self, host: str) -> list[str]:
        return [IP, "netns", "exec", self.ns[host]]

    def close(self) -> None:
        if not self.made:
            return
        for h in HOSTS:
            _kill_netns(self.ns[h])
        if self.relay is not None and self.relay.poll() is None:
            os.killpg(self.relay.pid, signal.SIGKILL)
            self.relay.wait(10)
        for h in HOSTS:
            _ip("netns", "del", self.ns[h], check=False)
        for link in reversed(self.links):
            _ip("link", "del", link, check=False)
        self.made = False


# ---------------------------------------------------------------------- the wire


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def _ipv4(frame: bytes) -> tuple[str, str] | None:
    """(source, destination) of an Ethernet frame carrying IPv4; None for anything else."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    return ".".join(map(str, frame[26:30])), ".".join(map(str, frame[30:34]))


def relay(outer: str, inner: str, ctl: str, ready: str) -> None:
    """Forward frames between TAP devices ``outer`` and ``inner`` for ever, as the JSON file
    ``ctl`` says (``delay_ms``, ``jitter_ms``: each frame held delay ± jitter, uniform, never
    overtaking the one before it; ``loss``: that share dropped at random; ``drop``: IPv4
    addresses whose frames, either way, are dropped). Touches ``ready`` once both are open.
    Returns when the process that started it is gone or ``outer`` no longer exists."""
    parent = os.getppid()
    fds = {_open_tap(outer): None, _open_tap(inner): None}
    a, b = list(fds)
    other = {a: b, b: a}
    queues: dict[int, deque] = {a: deque(), b: deque()}  # frames due on the way out of that fd
    last_due = {a: 0.0, b: 0.0}
    conf: dict[str, Any] = {"delay_ms": 0.0, "jitter_ms": 0.0, "loss": 0.0, "drop": []}
    mtime = 0.0
    Path(ready).touch()
    while True:
        if os.getppid() != parent or not os.path.exists(f"/sys/class/net/{outer}"):
            return  # the run is over (or crashed): nothing to carry
        try:
            m = os.stat(ctl).st_mtime
            if m != mtime:
                conf, mtime = json.loads(Path(ctl).read_text()), m
        except (OSError, ValueError):
            pass
        drop = set(conf.get("drop", ()))
        now = time.monotonic()
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else 0.05
        readable, _, _ = select.select([a, b], [], [], min(timeout, 0.05))
        for fd in readable:
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError as e:  # EIO while a device is down or moving between namespaces
                    print(f"wire: read {fd}: {e}", file=sys.stderr, flush=True)
                    if e.errno in (errno.EIO, errno.EBADFD, errno.ENETDOWN):
                        time.sleep(0.01)
                        break
                    return  # a device went away: the run is over
                addrs = _ipv4(frame)
                if addrs and drop.intersection(addrs):
                    continue
                if conf["loss"] and random.random() < conf["loss"]:
                    continue
                out = other[fd]
                hold = (conf["delay_ms"] + random.uniform(-conf["jitter_ms"], conf["jitter_ms"])) / 1000.0
                t = max(time.monotonic() + max(hold, 0.0), last_due[out])
                last_due[out] = t
                queues[out].append((t, frame))
        now = time.monotonic()
        for fd, q in queues.items():
            while q and q[0][0] <= now:
                try:
                    os.write(fd, q.popleft()[1])
                except BlockingIOError:
                    pass  # the device's queue is full: the frame is lost, as on a wire
                except OSError as e:  # a device down or moving: the frame is lost
                    if e.errno not in (errno.EIO, errno.EBADFD, errno.ENETDOWN):
                        print(f"wire: write {fd}: {e}", file=sys.stderr, flush=True)
                        return
