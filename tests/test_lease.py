"""Lessor unit tests: fake clock, fake store, fake proposer (no Raft, no I/O)."""
from __future__ import annotations

import asyncio

import pytest

from kvstore import errors
from kvstore.errors import EtcdError
from kvstore.lease import (
    MAX_LEASE_TTL,
    Lessor,
    NotPrimary,
    min_lease_ttl,
)
from kvstore.config import grpc_target
from kvstore.pb import internal_pb2


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class Store:
    """What the lessor reads from MVCC: the persistent lease table."""

    def __init__(self) -> None:
        self.leases: dict[int, int] = {}
        self.keys: dict[int, list[bytes]] = {}

    def lease_list(self):
        return sorted(self.leases.items())

    def lease_keys(self, lid: int) -> list[bytes]:
        return self.keys.get(lid, [])


class Cluster:
    """A fake proposer that 'applies' revokes at once (or fails them)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lessor: Lessor | None = None
        self.proposed: list[int] = []
        self.fail: EtcdError | None = None
        self.apply = True

    async def propose(self, req: internal_pb2.InternalRequest):
        assert req.WhichOneof("request") == "lease_revoke"
        lid = req.lease_revoke.ID
        self.proposed.append(lid)
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        if self.apply:
            if lid not in self.store.leases:
                raise errors.LEASE_NOT_FOUND
            del self.store.leases[lid]
            self.lessor.on_revoke(lid)

    def grant(self, lid: int, ttl: int) -> None:
        """As the Applier does after a committed LeaseGrant."""
        self.store.leases[lid] = ttl
        self.lessor.on_grant(lid, ttl)


def make(**kw) -> tuple[Lessor, Cluster, Clock, Store]:
    clock, store = Clock(), Store()
    c = Cluster(store)
    lessor = Lessor(store, c.propose, clock=clock, min_ttl=kw.pop("min_ttl", 2), **kw)
    c.lessor = lessor
    return lessor, c, clock, store


def run(coro):
    return asyncio.run(coro)


def test_min_lease_ttl_matches_etcd():
    # etcd: (3*electionTicks)/2 * heartbeat, rounded up to seconds
    assert min_lease_ttl(10, 100) == 2  # etcd's defaults: a 1 s grant becomes 2 s
    assert min_lease_ttl(10, 50) == 1
    assert min_lease_ttl(10, 500) == 8
    assert min_lease_ttl(5, 100) == 1  # (15//2)*100 ms = 0.7 s → 1


def test_grant_ttl_bounds():
    lessor, *_ = make(min_ttl=3)
    assert lessor.grant_ttl(1) == 3
    assert lessor.grant_ttl(-5) == 3
    assert lessor.grant_ttl(30) == 30
    assert lessor.grant_ttl(MAX_LEASE_TTL) == MAX_LEASE_TTL
    with pytest.raises(EtcdError) as ei:
        lessor.grant_ttl(MAX_LEASE_TTL + 1)
    assert ei.value.message == "etcdserver: too large lease TTL"


def test_new_id_positive_unique():
    lessor, c, *_ = make()
    seen = set()
    for _ in range(200):
        lid = lessor.new_id()
        assert 0 < lid < 2**63
        assert lid not in seen
        seen.add(lid)
        c.grant(lid, 10)


def test_follower_never_expires():
    async def main():
        lessor, c, clock, _ = make()
        c.grant(1, 5)
        clock.advance(10_000)
        assert lessor.expired() == []
        assert await lessor.revoke_expired() == []
        assert c.proposed == []
        with pytest.raises(NotPrimary):
            await lessor.renew(1)
        with pytest.raises(NotPrimary):
            lessor.time_to_live(1)
        assert 1 in lessor

    run(main())


def test_leader_expires_and_proposes_revoke():
    async def main():
        lessor, c, clock, store = make(extend=1.0)
        lessor.set_primary(True)
        c.grant(7, 5)
        c.grant(8, 50)
        clock.advance(4.9)
        assert await lessor.revoke_expired() == []
        clock.advance(0.2)
        assert await lessor.revoke_expired() == [7]
        assert c.proposed == [7]
        assert 7 not in lessor and 7 not in store.leases
        assert 8 in lessor

    run(main())


def test_renew_resets_deadline():
    async def main():
        lessor, c, clock, _ = make()
        lessor.set_primary(True)
        c.grant(1, 10)
        clock.advance(8)
        assert lessor.time_to_live(1) == (2, 10)
        assert await lessor.renew(1) == 10
        assert lessor.time_to_live(1) == (10, 10)
        clock.advance(9)
        assert await lessor.revoke_expired() == []
        clock.advance(2)
        assert await lessor.revoke_expired() == [1]
        with pytest.raises(EtcdError) as ei:
            await lessor.renew(1)
        assert ei.value.message == "etcdserver: requested lease not found"
        with pytest.raises(EtcdError):
            lessor.time_to_live(1)

    run(main())


def test_keepalives_do_not_grow_the_expiry_heap():
    lessor, c, clock, _ = make()
    lessor.set_primary(True)
    c.grant(1, 10)
    c.grant(2, 300)
    size = len(lessor._heap)
    for _ in range(100):
        clock.advance(0.5)
        assert lessor.renew_now(1) == 10
    assert len(lessor._heap) == size
    # the old slot comes due first: the lease is re-slotted, not revoked
    clock.advance(9.9)
    assert lessor.expired() == []
    clock.advance(0.2)
    assert lessor.expired() == [1]
    assert lessor.renew_now(1) is None  # expired: renew() decides (waits for the revoke)
    assert lessor.renew_now(3) is None  # unknown
    lessor.set_primary(False)
    assert lessor.renew_now(2) is None  # not primary


def test_renew_of_expired_lease_waits_for_revoke():
    async def main():
        lessor, c, clock, _ = make()
        lessor.set_primary(True)
        c.grant(1, 5)
        clock.advance(6)
        renewal = asyncio.ensure_future(lessor.renew(1))
        await asyncio.sleep(0)
        assert not renewal.done()  # expired: not revived
        await lessor.revoke_expired()
        with pytest.raises(EtcdError) as ei:
            await renewal
        assert ei.value.message == errors.LEASE_NOT_FOUND.message

    run(main())


def test_renew_of_expired_lease_on_demotion_is_retried_elsewhere():
    async def main():
        lessor, c, clock, _ = make()
        lessor.set_primary(True)
        c.grant(1, 5)
        clock.advance(6)
        renewal = asyncio.ensure_future(lessor.renew(1))
        await asyncio.sleep(0)
        lessor.set_primary(False)
        with pytest.raises(NotPrimary):
            await renewal

    run(main())


def test_leader_change_renews_full_ttl():
    async def main():
        lessor, c, clock, _ = make(extend=1.0)
        lessor.set_primary(True)
        c.grant(1, 10)
        clock.advance(9)  # 1 s left
        lessor.set_primary(False)  # election...
        clock.advance(3)  # ...long enough that the old deadline passed
        assert await lessor.revoke_expired() == []  # followers never expire
        lessor.set_primary(True)  # this member wins
        assert lessor.time_to_live(1) == (11, 10)  # full TTL + election timeout
        clock.advance(10.5)
        assert await lessor.revoke_expired() == []
        clock.advance(1)
        assert await lessor.revoke_expired() == [1]

    run(main())


def test_set_primary_is_idempotent():
    lessor, c, clock, _ = make(extend=1.0)
    lessor.set_primary(True)
    c.grant(1, 10)
    clock.advance(5)
    lessor.set_primary(True)  # a soft-state change that keeps us leader
    assert lessor.time_to_live(1) == (5, 10)


def test_failed_revoke_is_retried_after_interval():
    async def main():
        lessor, c, clock, _ = make(retry_interval=3.0)
        lessor.set_primary(True)
        c.grant(1, 5)
        clock.advance(6)
        c.fail = errors.TIMEOUT
        assert await lessor.revoke_expired() == [1]
        assert 1 in lessor
        clock.advance(1)
        assert await lessor.revoke_expired() == []  # not hammered
        clock.advance(2.5)
        c.fail = None
        assert await lessor.revoke_expired() == [1]
        assert 1 not in lessor
        assert c.proposed == [1, 1]

    run(main())


def test_revoke_of_lease_gone_from_store_forgets_it():
    async def main():
        lessor, c, clock, store = make()
        lessor.set_primary(True)
        c.grant(1, 5)
        del store.leases[1]  # e.g. revoked by a client, observer not yet told
        clock.advance(6)
        await lessor.revoke_expired()
        assert 1 not in lessor

    run(main())


def test_revoke_rate_limit():
    async def main():
        lessor, c, clock, _ = make(revoke_rate=100)
        lessor.set_primary(True)
        for i in range(1, 301):
            c.grant(i, 5)
        clock.advance(10)
        first = await lessor.revoke_expired()
        assert len(first) == 50  # burst: half a second's worth
        assert await lessor.revoke_expired() == []  # no time passed, no tokens
        clock.advance(0.5)
        assert len(await lessor.revoke_expired()) == 50
        clock.advance(0.25)
        assert len(await lessor.revoke_expired()) == 25
        clock.advance(100)  # a long pause does not allow a bigger burst
        assert len(await lessor.revoke_expired()) == 50
        assert len(c.proposed) == len(set(c.proposed)) == 175
        # earliest deadlines first, then the rest in later rounds
        while len(lessor):
            clock.advance(0.5)
            await lessor.revoke_expired()
        assert sorted(c.proposed) == list(range(1, 301))

    run(main())


def test_revokes_are_proposed_concurrently():
    async def main():
        lessor, c, clock, _ = make()
        lessor.set_primary(True)
        in_flight = 0
        peak = 0

        async def slow_propose(req):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            lid = req.lease_revoke.ID
            lessor.on_revoke(lid)

        lessor.propose = slow_propose
        for i in range(1, 41):
            c.grant(i, 5)
        clock.advance(6)
        assert len(await lessor.revoke_expired()) == 40
        assert peak > 1  # one Raft batch, not 40 round trips
        assert len(lessor) == 0

    run(main())


def test_promote_spreads_mass_expiry():
    lessor, c, clock, _ = make(revoke_rate=40, extend=1.0)
    for i in range(1, 101):
        c.grant(i, 10)
    lessor.set_primary(True)
    per_second: dict[int, int] = {}
    for lid in lessor.lease_ids():
        remaining = lessor.lookup(lid).remaining(clock())
        assert remaining >= 11  # nobody gets less than the full TTL + extend
        per_second[int(remaining - 11)] = per_second.get(int(remaining - 11), 0) + 1
    assert max(per_second.values()) <= 30  # 3/4 of the revoke rate
    assert sum(per_second.values()) == 100


def test_promote_does_not_spread_few_leases():
    lessor, c, clock, _ = make(revoke_rate=1000, extend=1.0)
    for i in range(1, 11):
        c.grant(i, 10)
    lessor.set_primary(True)
    assert {lessor.time_to_live(i) for i in range(1, 11)} == {(11, 10)}


def test_restore_rebuilds_from_store():
    async def main():
        lessor, c, clock, store = make()
        lessor.set_primary(True)
        c.grant(1, 10)
        c.grant(2, 10)
        clock.advance(5)
        # A snapshot replaced the store: lease 2 gone, lease 3 new.
        store.leases = {1: 10, 3: 20}
        lessor.on_restore()
        assert sorted(lessor.lease_ids()) == [1, 3]
        assert lessor.time_to_live(1) == (5, 10)  # unchanged deadline
        assert lessor.time_to_live(3) == (20, 20)
        clock.advance(6)
        assert await lessor.revoke_expired() == [1]

    run(main())


def test_start_loads_store_as_follower():
    clock, store = Clock(), Store()
    store.leases = {5: 30, 6: 40}
    lessor = Lessor(store, None, clock=clock)
    assert sorted(lessor.lease_ids()) == [5, 6]
    assert not lessor.primary
    lessor.set_primary(True)
    assert lessor.time_to_live(6)[1] == 40


def test_lease_list_row_shapes():
    class Row:
        def __init__(self, ID, TTL):
            self.ID, self.TTL = ID, TTL

    class Store2(Store):
        def lease_list(self):
            return [Row(1, 10), {"id": 2, "ttl": 20}, (3, 30)]

    lessor = Lessor(Store2(), None, clock=Clock())
    lessor.set_primary(True)
    assert [lessor.time_to_live(i)[1] for i in (1, 2, 3)] == [10, 20, 30]


def test_leases_sorted_by_expiry_on_leader():
    lessor, c, *_ = make()
    lessor.set_primary(True)
    c.grant(1, 50)
    c.grant(2, 10)
    c.grant(3, 30)
    assert lessor.lease_ids() == [2, 3, 1]


def test_expiry_loop_runs_only_on_leader():
    async def main():
        clock, store = Clock(), Store()
        c = Cluster(store)
        lessor = Lessor(store, c.propose, clock=clock, check_interval=0.01)
        lessor.pause_threshold = float("inf")  # this fake clock jumps on purpose
        c.lessor = lessor
        c.grant(1, 5)
        lessor.start()
        clock.advance(100)
        await asyncio.sleep(0.05)
        assert c.proposed == []
        lessor.set_primary(True)
        clock.advance(100)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if c.proposed:
                break
        assert c.proposed == [1]
        await lessor.stop()

    run(main())


def test_grpc_target():
    assert grpc_target("http://127.0.0.1:2379") == "127.0.0.1:2379"
    assert grpc_target("http://[::1]:2379") == "[::1]:2379"
    assert grpc_target("unix:///tmp/sock") == "unix:/tmp/sock"


def test_paused_leader_gives_leases_the_missed_time():
    """etcd #15247: a leader stalled for a long time must not revoke every
    lease on waking; the time it was away is given back first."""

    async def main():
        lessor, c, clock, _ = make(extend=1.0, check_interval=0.5)
        lessor.set_primary(True)
        c.grant(1, 10)
        assert lessor.check_pause() == 0.0
        clock.advance(0.5)
        assert lessor.check_pause() == 0.0  # on schedule
        clock.advance(30.5)  # the process was stopped for 30 s
        assert lessor.check_pause() == 30.0
        assert await lessor.revoke_expired() == []
        assert lessor.time_to_live(1) == (9, 10)
        clock.advance(9.5)
        assert lessor.check_pause() == 9.0  # late again: also given back
        clock.advance(0.5)
        lessor.check_pause()
        clock.advance(9.5)
        assert await lessor.revoke_expired() == [1]

    run(main())


def test_small_delays_are_not_pauses():
    lessor, c, clock, _ = make(extend=1.0, check_interval=0.5)
    lessor.set_primary(True)
    c.grant(1, 10)
    lessor.check_pause()
    for _ in range(10):
        clock.advance(1.2)  # a busy loop: late, but less than the threshold
        assert lessor.check_pause() == 0.0
    assert lessor.time_to_live(1) == (0, 10)  # expired (12 s > 10 s), awaiting its revoke
