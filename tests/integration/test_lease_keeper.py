"""One ``harvest streams`` process holding many accounts renews their leases in one Redis round
trip a second (issue 32: a thousand accounts renewing each on its own starved the event loop
and lost their leases during a cold start). A lease taken by another owner is let go at once;
Redis unreachable for the lease's length lets every account go (their leases have expired
there), and the keeper itself never raises."""

from __future__ import annotations

import asyncio

import redis

from harvest.ops.procs import RedisServer
from harvest.services.stream_loop import LeaseKeeper
from harvest.store.health import Heartbeats
from harvest.store.streams import StreamCache

NS = "lease-keeper-test"
OWNER = "host-a:1"


class Counting:
    """A redis.Redis whose single commands and pipeline round trips are counted."""

    def __init__(self, r: redis.Redis) -> None:
        self.r, self.commands, self.round_trips = r, 0, 0

    def pipeline(self, transaction: bool = True):
        p = self.r.pipeline(transaction=transaction)
        execute = p.execute

        def counted(*a, **k):
            self.round_trips += 1
            return execute(*a, **k)

        p.execute = counted
        return p

    def __getattr__(self, name):
        self.commands += 1
        return getattr(self.r, name)


def _caches(r: redis.Redis, n: int) -> list[StreamCache]:
    return [StreamCache(r, NS, f"acct{i:04d}") for i in range(n)]


async def _until(cond, timeout: float) -> None:
    """Wait (bounded) until ``cond()``, yielding to the loop between looks."""

    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def test_every_lease_is_renewed_in_one_round_trip_and_a_stolen_one_is_let_go(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for k in r.scan_iter(f"{NS}:*"):
        r.delete(k)
    caches = _caches(r, 300)
    assert all(c.acquire(OWNER, 2.0) for c in caches)
    counting = Counting(r)
    keeper = LeaseKeeper(counting, Heartbeats(r, NS), OWNER, lease_s=2.0, interval_s=0.2)

    async def run() -> dict:
        lost = {c.account: keeper.hold(c) for c in caches}
        stop = asyncio.Event()
        task = asyncio.create_task(keeper.run(stop))
        try:
            # three lease lengths: without the renewals every lease would have expired
            await _until(lambda: keeper.renewals >= 30, 30)
            assert all(c.lease_owner() == OWNER for c in caches)
            assert not any(e.is_set() for e in lost.values())
            r.set(caches[7].k_lease, "host-b:2", px=5000)  # another owner took acct0007
            await _until(lambda: lost["acct0007"].is_set(), 5)
            keeper.drop(caches[7])
            keeper.drop(caches[8])  # let go by its holder: no longer renewed, it expires
            await _until(lambda: caches[8].lease_owner() is None, 10)
            return {a: e.is_set() for a, e in lost.items()}
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)

    seen = asyncio.run(run())
    assert [a for a, gone in seen.items() if gone] == ["acct0007"]
    assert caches[7].lease_owner() == "host-b:2"
    assert counting.round_trips == keeper.renewals  # one pipeline a renewal …
    assert counting.commands == 0  # … and not one command beside it, for 300 accounts
    assert float(r.hget(f"{NS}:heartbeat", "streams")) > 0  # the process's heartbeat rides along
    for k in r.scan_iter(f"{NS}:*"):
        r.delete(k)


def test_redis_unreachable_for_the_lease_lets_every_account_go_and_never_raises():
    srv = RedisServer().start()
    try:
        r = redis.Redis.from_url(srv.url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5)
        caches = _caches(r, 5)
        assert all(c.acquire(OWNER, 1.5) for c in caches)
        keeper = LeaseKeeper(r, Heartbeats(r, NS), OWNER, lease_s=1.5, interval_s=0.2)

        async def run() -> bool:
            lost = [keeper.hold(c) for c in caches]
            stop = asyncio.Event()
            task = asyncio.create_task(keeper.run(stop))
            try:
                await _until(lambda: keeper.renewals >= 2, 10)
                assert not any(e.is_set() for e in lost)
                srv.stop()
                await _until(lambda: all(e.is_set() for e in lost), 15)
                return not task.done()  # still running: the errors were caught
            finally:
                stop.set()
                await asyncio.wait_for(task, 5)

        assert asyncio.run(run())
    finally:
        srv.stop()


def test_the_keeper_refuses_an_interval_not_shorter_than_the_lease(redis_url):
    import pytest

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="interval"):
        LeaseKeeper(r, Heartbeats(r, NS), OWNER, lease_s=1.0, interval_s=1.0)
