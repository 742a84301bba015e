"""``harvest chaos --hosts``: the deployment across several hosts — Linux network namespaces on
this machine, each with its own address on a bridge, nothing over loopback between them — and
the faults of a network: a partition, latency and loss, an exchange out of reach, a host killed.

The hosts (``ip netns``; ``10.A.B.0/24`` picked per run, the bridge ``10.A.B.1`` in this
process's namespace, where the harness drives and observes):

========  ===========  ===============================================================
host      address      runs
========  ===========  ===============================================================
state     10.A.B.2     redis-server (AOF, ``appendfsync always``): harvest's state and
                       the Celery broker
exchange  10.A.B.3     its own redis-server and ``harvest emulator`` (fapi on 8790,
                       websocket streams on 8791)
scan      10.A.B.4     a Celery worker on the ``scan`` and ``housekeeping`` queues
orders    10.A.B.5     a Celery worker on the ``orders`` queue
beat      10.A.B.6     Celery beat
streams   10.A.B.7     ``harvest streams``
========  ===========  ===============================================================

Every host but ``orders`` is joined to the bridge by a veth pair. The ``orders`` host is joined
by two TAP devices and a relay process between them (:func:`harvest.ops.netns.relay`, this
module's ``__main__``): a wire that forwards every Ethernet frame and, when told, delays it
(``delay ± jitter``), loses a share of it, or drops what goes to or comes from given addresses.
That is ``tc netem`` and a firewall's DROP in user space, because neither ``sch_netem`` nor
netfilter is in every kernel (this project's CI machine has neither); frames are kept in order
per direction.

The run is :class:`harvest.ops.chaos._Run`'s — its positions on the emulator's paper engine,
its quiescence, its report (duplicate orders from the exchange's own records, lost plans,
unachieved decisions) — with the processes in their hosts and these faults (:data:`FAULTS`),
each on a fresh batch of positions made actionable as it begins (the load):

``partition``   the orders host cannot reach the state/broker host, nor it the orders host,
                for ``partition_s`` (default 30 s), then healed
``netem``       the orders host's link delays every frame 50 ms ± 20 ms and loses 2 %, both
                ways (a round trip of about 100 ms), for ``netem_s``, then healed
``exchange``    the exchange host's link down for ``exchange_s`` (default 60 s): no host
                reaches the emulator; then up again
``host_kill``   every process of the orders host SIGKILLed (``ip netns pids``), the host left
                dead ``host_down_s``, then its worker started again

After each, the time to recover: from the heal (for ``host_kill``: the restart's beginning,
so the worker's start-up counts) until the system is quiet (no open plan, empty queues,
nothing the positions call for left undone).

Names are unique per run (``hv-<pid>-<id>-<host>``) and everything is removed at the end, on
failure too; namespaces a crashed run left behind (its pid no longer running) are removed at
the next start. Needs root, ``ip`` (iproute2), ``/dev/net/tun`` and ``redis-server``:
:func:`unavailable` says what is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

from harvest.ops.chaos import _Run, chaos_env
from harvest.ops.chaos_procs import Procs
from harvest.ops.loadgen import clean, mark_at_r, open_positions, paper_of, runtime, symbols
from harvest.ops.netns import (  # _NAME and _ipv4 also this module's (tests/unit/test_hosts.py)
    _NAME,  # noqa: F401
    HOSTS,
    Network,
    _ipv4,  # noqa: F401
    relay,
    sweep_stale,
    unavailable,
)
from harvest.ops.procs import ROOT, CeleryProcess, HarvestProcess, wait_for

#: The faults of a run, in order (module docstring).
FAULTS = ("partition", "netem", "exchange", "host_kill")
#: netem's figures of the ``netem`` fault: delay and jitter (ms), loss (share).
NETEM: dict[str, float] = {"delay_ms": 50.0, "jitter_ms": 20.0, "loss": 0.02}
STATE_PORT, EXCHANGE_REDIS_PORT, FAPI_PORT, STREAM_PORT = 6379, 6380, 8790, 8791
#: Longest wait for the system to be quiet after a fault is healed (s).
RECOVER_TIMEOUT_S = 150.0


def _in_host(net: Network, host: str, base: type[CeleryProcess]) -> type[CeleryProcess]:
    """``base`` whose command runs in ``host`` (``ip netns exec``, which execs: same pid)."""

    class InHost(base):  # type: ignore[valid-type, misc]
        def command(self) -> list[str]:
            return net.exec_prefix(host) + super().command()

    return InHost


class _HostProcs(Procs):
    """The run's processes, each in its host; restarted (and counted) when one exits."""

    def __init__(self, env: dict[str, str], ns: str, net: Network):
        super().__init__(env, ns)
        self.net = net

    def start(self, role: str) -> CeleryProcess:
        n = uuid.uuid4().hex[:4]
        if role in ("scan_worker", "orders_worker"):
            host, queues = ("scan", "scan,housekeeping") if role == "scan_worker" else ("orders", "orders")
            args = ["-Q", ",".join(f"{self.ns}.{k}" for k in queues.split(","))]
            args += ["-c", "2", "-n", f"{host}-{n}@%h", "--without-mingle", "--without-gossip"]
            p = _in_host(self.net, host, CeleryProcess)("worker", self.env, args).start()
        elif role == "streams":
            p = _in_host(self.net, "streams", HarvestProcess)("streams", self.env).start()
        else:
            p = _in_host(self.net, "beat", CeleryProcess)("beat", self.env).start()
        self.procs[role] = p
        return p


class _Server:
    """A process of a host that is not harvest's (redis-server, the emulator), in its own
    session; :meth:`stop` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, net: Network, host: str, cmd: list[str], env: dict[str, str] | None, log: str):
        self.log = log
        self.proc = subprocess.Popen(
            net.exec_prefix(host) + cmd,
            cwd=ROOT,
            env=env,
            stdout=open(log, "w"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self.log).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class _Faults:
    """The emulator's fault plan read from its Redis (the report reads what fired: nothing here)."""

    def __init__(self, r, ns: str):
        from harvest.venues.sim.emulator import Faults

        self.faults = Faults(r, ns)


class _HostsRun(_Run):
    """A chaos run across the hosts of :class:`Network` (module docstring)."""

    def __init__(self, plans: int, plan_ttl_s: float, say: Callable[[str], None], durations: dict[str, float]):
        self.n, self.broker, self.say = plans, None, say
        self.n_accounts, self.sentinel = 1, False
        self.t_start = time.monotonic()
        self.tmp = tempfile.mkdtemp(prefix=f"harvest-hosts-{os.getpid()}-")
        self.net = Network(self.tmp)
        self.ns = f"hosts-{self.net.id}"
        self.syms = symbols(plans, "H")
        self.env: dict[str, str] = {}
        self.plan_ttl_s = plan_ttl_s
        self.faults: Counter[str] = Counter()
        self.emu = None
        self.procs = None
        self.lost_before = 0
        self.streams = True
        self.durations = durations
        self.servers: list[_Server] = []
        self.recovery: dict[str, float] = {}
        self.under_fault: dict[str, dict[str, int]] = {}
        self.state = None  # type: ignore[assignment]  # report(): not a SentinelCluster; stop() its own

    # ------------------------------------------------------------------ set-up

    def _redis(self, host: str, port: int, persistent: bool) -> str:
        d = os.path.join(self.tmp, host)
        os.makedirs(d, exist_ok=True)
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        cmd = [shutil.which("redis-server") or "redis-server", "--bind", self.net.addr[host], "--port", str(port)]
        cmd += ["--protected-mode", "no", "--save", "", *durability, "--dir", d]
        self.servers.append(_Server(self.net, host, cmd, None, os.path.join(d, "redis.log")))
        url = f"redis://{self.net.addr[host]}:{port}/0"
        import redis

        r = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

        def up() -> bool:
            try:
                return bool(r.ping())
            except redis.RedisError:
                return False

        wait_for(up, 30, 0.1, f"redis-server on the {host} host ({url})")
        return url

    def start(self) -> None:
        stale = sweep_stale()
        if stale:
            self.say(f"hosts: removed {len(stale)} namespace(s) a crashed run left: {', '.join(stale)}")
        self.net.make()
        a = self.net.addr
        self.say(
            f"hosts: {self.net.net}.0/24 on bridge {self.net.bridge}: "
            + ", ".join(f"{h} {a[h]}" for h in HOSTS)
            + " (orders through the wire relay)"
        )
        state_url = self._redis("state", STATE_PORT, persistent=True)
        exchange_url = self._redis("exchange", EXCHANGE_REDIS_PORT, persistent=False)
        self.state_url = state_url
        key, secret = secrets.token_hex(8), secrets.token_hex(16)
        self.env = dict(chaos_env(state_url, self.ns, self.syms, self.plan_ttl_s, 2.0), HARVEST_VENUE="paper")
        # The exchange: its paper engine on its own Redis, positions opened at 0 R from here.
        self.xrt = runtime(dict(self.env, HARVEST_REDIS_URL=exchange_url))
        self.xr = self.xrt.r
        clean(self.xrt)
        acct = self.xrt.accounts[0]
        self.owner = {s: acct for s in self.syms}
        open_positions(self.xrt, self.syms, 0.0)
        self.papers = {acct: paper_of(self.xrt)}
        emu_env = {
            **os.environ,
            **self.env,
            "HARVEST_REDIS_URL": exchange_url,
            "HARVEST_API_KEY": key,
            "HARVEST_API_SECRET": secret,
        }
        emu_cmd = [sys.executable, "-m", "harvest.ops.cli", "emulator", "--host", a["exchange"]]
        emu_cmd += ["--port", str(FAPI_PORT), "--stream-port", str(STREAM_PORT)]
        emu = _Server(self.net, "exchange", emu_cmd, emu_env, os.path.join(self.tmp, "emulator.log"))
        self.servers.append(emu)
        wait_for(lambda: "fapi emulator on" in emu.output() or emu.proc.poll() is not None, 120, 0.1, "the emulator")
        if emu.proc.poll() is not None:
            raise RuntimeError(f"the emulator exited: {emu.output()[-2000:]}")
        self.emu = _Faults(self.xr, self.ns)
        self.env.update(
            {
                "HARVEST_FAPI_URL": f"http://{a['exchange']}:{FAPI_PORT}/fapi",
                "HARVEST_API_KEY": key,
                "HARVEST_API_SECRET": secret,
            }
        )
        self.rt = runtime(self.env)  # harvest's view from here: the state host, the emulator's handshake
        clean(self.rt)
        self.rt.market.put_many(self.xrt.market.get_many(self.syms))
        self.procs = _HostProcs(self.env, self.ns, self.net)
        for role in ("scan_worker", "orders_worker", "beat", "streams"):
            self.procs.start(role)
        for role in ("scan_worker", "orders_worker", "beat"):
            try:
                self.procs.procs[role].wait_ready(180)
            except AssertionError as e:
                raise AssertionError(f"{role}: {e}\n{self.procs.procs[role].output()[-3000:]}") from None
        self.say(
            f"hosts: {self.n} positions on the emulator at {self.env['HARVEST_FAPI_URL']}; workers, beat, streams up"
        )

    # ------------------------------------------------------------------ faults

    def _load(self, batch: list[str]) -> int:
        """Make ``batch`` actionable (2.2 R) on the exchange; the plan count before."""
        before = self.n_plans()
        p = self.xr.pipeline(transaction=False)
        paper = self.papers[self.xrt.accounts[0]]
        for s in batch:
            p.set(paper.k_mark(s), repr(mark_at_r(self.xrt, s, 2.2)))
        p.execute()
        return before

    def _hold(self, seconds: float) -> None:
        """The fault's duration (not a synchronisation); the supervisor keeps running."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.running.supervise()
            time.sleep(0.2)

    def _recover(self, kind: str, t0: float) -> float:
        """Seconds from ``t0`` (the heal) until the system is quiet (bounded)."""
        try:
            wait_for(self._quiet, RECOVER_TIMEOUT_S, 0.5, f"quiet after {kind}")
        except AssertionError:
            self.say(f"hosts: {kind}: not quiet {RECOVER_TIMEOUT_S:.0f} s after the heal")
            return -1.0
        took = round(time.monotonic() - t0, 2)
        self.recovery[kind] = took
        self.say(f"hosts: {kind} healed; quiet again {took:.1f} s later ({self.n_plans()} plans)")
        return took

    def _first_open(self, before: int) -> int:
        """Wait (bounded) until the batch has a plan still open — the fault strikes work in
        flight —; the open plans seen then (0: none within 60 s, the fault goes on regardless)."""
        seen = [0]

        def in_flight() -> bool:
            self.running.supervise()
            seen[0] = self.open_count() if self.n_plans() > before else 0
            return seen[0] > 0

        try:
            wait_for(in_flight, 60, 0.02, "a plan of the batch in flight")
        except AssertionError:
            self.say("hosts: no plan of the batch in flight within 60 s; the fault goes on regardless")
        return seen[0]

    def fault(self, kind: str, batch: list[str]) -> None:
        """Fault ``kind`` under the load of ``batch`` (made actionable as it begins), healed,
        then the time until quiet (:attr:`recovery`); plans open at the strike and at the heal
        in :attr:`under_fault`."""
        net, d = self.net, self.durations
        at_start = None
        if kind == "partition":  # cut first: the scans go on, the orders host cannot take the work
            net.set_wire(drop=[net.addr["state"]])
            self._load(batch)
            self.say(f"hosts: orders host cut off from the state/broker host for {d['partition']:.0f} s")
        elif kind == "netem":
            net.set_wire(**NETEM)  # and nothing dropped
            self._load(batch)
            self.say(
                f"hosts: orders host's link: delay {NETEM['delay_ms']:.0f} ± {NETEM['jitter_ms']:.0f} ms, "
                f"loss {NETEM['loss']:.0%}, for {d['netem']:.0f} s"
            )
        elif kind == "exchange":  # plans in flight when the exchange goes
            at_start = self._first_open(self._load(batch))
            net.exchange_up(False)
            self.say(f"hosts: exchange host unreachable for {d['exchange']:.0f} s")
        elif kind == "host_kill":
            at_start = self._first_open(self._load(batch))
            self.running.expected_down.add("orders_worker")
            n = net.kill_host("orders")
            self.running.procs["orders_worker"].kill()  # reaps it, keeps its log
            self.say(f"hosts: orders host killed ({n} processes), down for {d['host_down']:.0f} s")
        else:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        self.faults[kind] += 1
        if at_start is None:  # cut first, then the load: what is open once it is on
            at_start = self.open_count()
        ended_before = self.n_plans() - self.open_count()
        self._hold(d["host_down" if kind == "host_kill" else kind])
        at_heal = self.open_count()
        ended_during = self.n_plans() - at_heal - ended_before
        healed = time.monotonic()  # for host_kill: the restart begins (its start-up counts)
        if kind in ("partition", "netem"):
            net.set_wire()
        elif kind == "exchange":
            net.exchange_up(True)
        else:
            self.running.expected_down.discard("orders_worker")
            self.running.start("orders_worker").wait_ready(180)
        self.under_fault[kind] = {
            "open_plans_at_strike": at_start,
            "plans_ended_during": ended_during,
            "open_plans_at_heal": at_heal,
        }
        self._recover(kind, healed)

    def report(self, drained_s: float) -> dict:
        rep = super().report(drained_s)
        rep["broker"] = "redis (state host)"
        rep["hosts"] = dict(self.net.addr)
        rep["recovery_s"] = dict(self.recovery)
        rep["under_fault"] = dict(self.under_fault)
        rep["fault_durations_s"] = dict(self.durations)
        rep["faults_injected"] = {k: n for k, n in rep["faults_injected"].items() if n}
        run = {k for k in FAULTS if self.faults[k]}
        rep["ok"] = rep["ok"] and set(self.recovery) == run and rep["states"].get("FILLED", 0) > 0
        return rep

    def stop(self) -> None:
        try:
            if self.procs is not None:
                self.procs.stop_all()
            for s in reversed(self.servers):
                s.stop()
        finally:
            self.net.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_hosts(
    plans: int = 40,
    partition_s: float = 30.0,
    netem_s: float = 20.0,
    exchange_s: float = 60.0,
    host_down_s: float = 5.0,
    plan_ttl_s: float = 20.0,
    drain_timeout_s: float = 300.0,
    progress: Callable[[str], None] | None = None,
    faults: tuple[str, ...] = FAULTS,
) -> dict:
    """Run the deployment across network namespaces under :data:`FAULTS` (module docstring),
    ``plans`` positions in one batch per fault (``faults``: which, in order; none: every
    position made actionable at once, nothing broken); the fault durations in seconds. Returns
    :meth:`harvest.ops.chaos._Run.report`'s report plus ``hosts`` (host → address),
    ``recovery_s`` (fault → seconds from its heal until quiet), ``under_fault`` (fault →
    ``{"open_plans_at_strike", "plans_ended_during" (terminal while it lasted: FILLED, or
    EXPIRED/FAILED by the sweeper), "open_plans_at_heal"}``) and ``fault_durations_s``;
    ``ok`` also needs every fault recovered and a plan FILLED. Raises RuntimeError when
    namespaces cannot be made (:func:`unavailable`'s reason) or a host's set-up fails;
    AssertionError when a set-up wait times out. Everything is removed on return or error."""
    why = unavailable()
    if why:
        raise RuntimeError(why)
    durations = {"partition": partition_s, "netem": netem_s, "exchange": exchange_s, "host_down": host_down_s}
    run = _HostsRun(plans, plan_ttl_s, progress or (lambda m: None), durations)
    try:
        run.start()
        if faults:
            batches = [run.syms[i :: len(faults)] for i in range(len(faults))]
            for kind, batch in zip(faults, batches, strict=True):
                run.fault(kind, batch)
        else:  # the deployment alone: every position made actionable, nothing broken
            run._load(run.syms)
        drained = run.drain(drain_timeout_s)
        run.say(f"hosts: drained in {drained:.1f} s")
        return run.report(drained)
    finally:
        run.stop()


def format_hosts_report(rep: dict) -> str:
    """The report as lines: the chaos report's, then the hosts and each fault's recovery."""
    from harvest.ops.chaos import format_report

    return "\n".join(
        [
            format_report(rep),
            "  hosts: " + ", ".join(f"{h} {a}" for h, a in rep["hosts"].items()),
            "  recovery after each fault (s): " + json.dumps(rep["recovery_s"]),
        ]
    )


if __name__ == "__main__":  # python -m harvest.ops.hosts relay OUTER INNER CTL READY
    if len(sys.argv) == 6 and sys.argv[1] == "relay":
        relay(*sys.argv[2:6])
    else:
        sys.exit("usage: python -m harvest.ops.hosts relay OUTER INNER CTL READY")
