"""harvest.ops.hosts without a network: why namespaces cannot be made (the reason the system
test and ``harvest chaos --hosts`` give), the wire's reading of a frame, a run's names."""

from __future__ import annotations

import pytest

from harvest.ops import hosts


def test_not_root_is_the_reason(monkeypatch):
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 1000)
    assert hosts.unavailable() == "network namespaces need root (ip netns add); this process is not root"


def test_no_tun_is_the_reason(monkeypatch):
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 0)
    real = hosts.os.path.exists
    monkeypatch.setattr(hosts.os.path, "exists", lambda p: False if p == "/dev/net/tun" else real(p))
    assert "/dev/net/tun is missing" in hosts.unavailable()


def test_run_chaos_hosts_refuses_with_the_reason(monkeypatch):
    monkeypatch.setattr(hosts, "unavailable", lambda: "network namespaces need root")
    with pytest.raises(RuntimeError, match="network namespaces need root"):
        hosts.run_hosts()


def _frame(ethertype: bytes, src: str, dst: str) -> bytes:
    ip = bytes(12) + bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    return bytes(12) + ethertype + ip + bytes(20)


def test_the_wire_reads_ipv4_addresses_and_nothing_else():
    assert hosts._ipv4(_frame(b"\x08\x00", "10.200.1.5", "10.200.1.2")) == ("10.200.1.5", "10.200.1.2")
    assert hosts._ipv4(_frame(b"\x08\x06", "10.200.1.5", "10.200.1.2")) is None  # ARP passes a partition
    assert hosts._ipv4(b"\x00" * 20) is None


def test_names_carry_the_runs_pid_and_fit_linux():
    net = hosts.Network.__new__(hosts.Network)
    net.id = "a1b2c"
    name = f"hv-123-{net.id}-exchange"
    m = hosts._NAME.match(name)
    assert m and m.group(1) == "123" and m.group(2) == "a1b2c"
    # interface names (veth, TAP, bridge) within Linux's 15 characters
    assert max(len(f"hv{net.id}{i}p") for i in range(len(hosts.HOSTS))) <= 15
    assert len(f"hv{net.id}br") <= 15
