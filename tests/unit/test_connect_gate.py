"""The pace of a ``harvest streams`` process's new connections (issue 32: 1000 handshakes at
once timed out and starved the lease renewals): a burst, then one per 1/rate s, in turn."""

from __future__ import annotations

import asyncio

import pytest

from harvest.services import stream_loop
from harvest.services.stream_loop import ConnectGate


class FakeClock:
    """time.monotonic and stream_loop.wait on a clock the test moves: a wait advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def wait(self, stop: asyncio.Event, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(stream_loop.time, "monotonic", c.monotonic)
    monkeypatch.setattr(stream_loop, "wait", c.wait)
    return c


def test_a_burst_then_one_per_interval(clock):
    async def run() -> list[float]:
        gate, stop, at = ConnectGate(rate_per_s=2.0, burst=3), asyncio.Event(), []
        for _ in range(6):
            assert await gate.acquire(stop)
            at.append(clock.now - 1000.0)
        return at

    at = asyncio.run(run())
    assert at[:3] == [0.0, 0.0, 0.0]  # the burst goes at once
    assert at[3:] == pytest.approx([0.5, 1.0, 1.5])  # then one every 1/rate s


def test_waiters_take_turns_and_stop_ends_a_wait(clock):
    async def run() -> tuple[list[bool], int]:
        gate, stop = ConnectGate(rate_per_s=1.0, burst=1), asyncio.Event()
        got = await asyncio.gather(*(gate.acquire(stop) for _ in range(4)))
        stop.set()
        late = await gate.acquire(stop)
        return [*got, late], gate.waited

    got, waited = asyncio.run(run())
    assert got == [True, True, True, True, False]
    assert waited == 3
    assert clock.waits[:3] == pytest.approx([1.0, 1.0, 1.0])  # one sleeper at a time, in turn


def test_a_rate_or_burst_of_zero_is_refused():
    with pytest.raises(ValueError, match="must be > 0"):
        ConnectGate(rate_per_s=0.0)
    with pytest.raises(ValueError, match="must be > 0"):
        ConnectGate(burst=0)
