"""Lock and Election services in-process (real Applier, MVCC store and gRPC,
fake clock, no Raft); expected values checked against etcd 3.4.23.

Waiting is observed through task state after the server has gone idle, never
through timing."""
from __future__ import annotations

import asyncio

import grpc
import pytest

pytest.importorskip("kvstore.mvcc.store", reason="the MVCC store has not landed yet")
pytest.importorskip("raft.transport", reason="the peer transport has not landed yet")

from kvstore.pb import (  # noqa: E402
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2 as epb,
    v3election_pb2_grpc,
    v3lock_pb2 as lpb,
    v3lock_pb2_grpc,
)
from tests.test_lease_api import InProcServer, rpc_error, run  # noqa: E402


async def settle(n: int = 30) -> None:
    """Let every runnable handler run until it blocks."""
    for _ in range(n):
        await asyncio.sleep(0.005)


def stubs(ch):
    return (
        rpc_pb2_grpc.LeaseStub(ch),
        v3lock_pb2_grpc.LockStub(ch),
        v3election_pb2_grpc.ElectionStub(ch),
        rpc_pb2_grpc.KVStub(ch),
    )


async def grant(lease, ttl: int = 30) -> int:
    return (await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl))).ID


async def keys(kv, prefix: bytes) -> list[bytes]:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    return [x.key for x in (await kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end))).kvs]


# ------------------------------------------------------------------- Lock


def test_lock_key_format_and_reuse():
    async def t(s: InProcServer, ch):
        lease, lock, _, kv = stubs(ch)
        lid = await grant(lease)
        r = await lock.Lock(lpb.LockRequest(name=b"L", lease=lid))
        assert r.key == b"L/" + format(lid, "x").encode()
        assert r.header.revision == s.store.current_revision
        got = (await kv.Range(rpc_pb2.RangeRequest(key=r.key))).kvs[0]
        assert (got.value, got.lease, got.create_revision) == (b"", lid, r.header.revision)
        # the same lease locks again: same key, no new revision (etcd reuses it)
        again = await lock.Lock(lpb.LockRequest(name=b"L", lease=lid))
        assert (again.key, again.header.revision) == (r.key, r.header.revision)
        # an empty name is allowed (key "/<lease>")
        empty = await lock.Lock(lpb.LockRequest(name=b"", lease=lid))
        assert empty.key == b"/" + format(lid, "x").encode()
        u = await lock.Unlock(lpb.UnlockRequest(key=r.key))
        assert u.header.revision == r.header.revision + 2
        assert await keys(kv, b"L/") == []
        # unlocking a missing key succeeds; an empty key is etcd's error
        assert (await lock.Unlock(lpb.UnlockRequest(key=b"nope"))).header.revision == u.header.revision
        e = await rpc_error(lock.Unlock(lpb.UnlockRequest(key=b"")))
        assert (e.code(), e.details()) == (grpc.StatusCode.UNKNOWN, "etcdserver: key is not provided")

    run(t)


def test_lock_with_missing_lease():
    async def t(s, ch):
        _, lock, _, _ = stubs(ch)
        e = await rpc_error(lock.Lock(lpb.LockRequest(name=b"L", lease=12345)))
        assert (e.code(), e.details()) == (grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")

    run(t)


def test_lock_without_lease_grants_a_session_lease():
    async def t(s: InProcServer, ch):
        lease, lock, _, _ = stubs(ch)
        r = await lock.Lock(lpb.LockRequest(name=b"L0"))
        lid = int(r.key.split(b"/")[1], 16)
        ttl = await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lid, keys=True))
        assert (ttl.grantedTTL, list(ttl.keys)) == (60, [r.key])
        # nothing keeps it alive: the lock frees itself when it expires
        assert await s.expire(61) == [lid]

    run(t)


def test_lock_mutual_exclusion_and_fifo_handover():
    async def t(s: InProcServer, ch):
        lease, lock, _, kv = stubs(ch)
        ids = [await grant(lease) for _ in range(4)]
        first = await lock.Lock(lpb.LockRequest(name=b"M", lease=ids[0]))
        waiters = []
        for lid in ids[1:]:
            waiters.append(asyncio.ensure_future(lock.Lock(lpb.LockRequest(name=b"M", lease=lid))))
            await settle()
        assert not any(w.done() for w in waiters)  # all queued behind the holder
        assert len(await keys(kv, b"M/")) == 4
        holder = first
        for i, w in enumerate(waiters):
            u = await lock.Unlock(lpb.UnlockRequest(key=holder.key))
            got = await w
            assert got.key == b"M/" + format(ids[i + 1], "x").encode()
            assert got.header.revision >= u.header.revision  # fencing: after the release
            await settle()
            assert not any(x.done() for x in waiters[i + 1:])  # exactly one woke
            holder = got

    run(t)


def test_lock_released_when_holder_lease_expires():
    async def t(s: InProcServer, ch):
        lease, lock, _, _ = stubs(ch)
        short, long_ = await grant(lease, 5), await grant(lease, 300)
        await lock.Lock(lpb.LockRequest(name=b"E", lease=short))
        w = asyncio.ensure_future(lock.Lock(lpb.LockRequest(name=b"E", lease=long_)))
        await settle()
        assert not w.done()
        assert await s.expire(6) == [short]
        got = await w
        assert got.key == b"E/" + format(long_, "x").encode()

    run(t)


def test_waiter_whose_lease_expired_gets_session_expired():
    """etcd #11408: etcd 3.4.23 answers Lock for a waiter whose lease expired
    while waiting (verified against it); we fail the call instead."""

    async def t(s: InProcServer, ch):
        lease, lock, _, kv = stubs(ch)
        holder_lease, waiter_lease = await grant(lease, 300), await grant(lease, 5)
        holder = await lock.Lock(lpb.LockRequest(name=b"X", lease=holder_lease))
        w = asyncio.ensure_future(lock.Lock(lpb.LockRequest(name=b"X", lease=waiter_lease)))
        await settle()
        assert await s.expire(6) == [waiter_lease]
        await settle()
        assert not w.done()  # still behind the holder
        await lock.Unlock(lpb.UnlockRequest(key=holder.key))
        e = await rpc_error(w)
        assert (e.code(), e.details()) == (grpc.StatusCode.UNKNOWN, "session expired")
        assert await keys(kv, b"X/") == []

    run(t)


def test_cancelled_lock_leaves_the_queue():
    async def t(s: InProcServer, ch):
        lease, lock, _, kv = stubs(ch)
        a, b, c = await grant(lease), await grant(lease), await grant(lease)
        held = await lock.Lock(lpb.LockRequest(name=b"C", lease=a))
        call = lock.Lock(lpb.LockRequest(name=b"C", lease=b))
        w = asyncio.ensure_future(call)
        await settle()
        third = asyncio.ensure_future(lock.Lock(lpb.LockRequest(name=b"C", lease=c)))
        await settle()
        call.cancel()
        await settle()
        assert await keys(kv, b"C/") == sorted([held.key, b"C/" + format(c, "x").encode()])
        await lock.Unlock(lpb.UnlockRequest(key=held.key))
        assert (await third).key == b"C/" + format(c, "x").encode()
        assert w.cancelled() or w.done()

    run(t)


# --------------------------------------------------------------- Election


def test_election_basics_match_etcd():
    async def t(s: InProcServer, ch):
        lease, _, el, kv = stubs(ch)
        e = await rpc_error(el.Leader(epb.LeaderRequest(name=b"E")))
        assert (e.code(), e.details()) == (grpc.StatusCode.UNKNOWN, "election: no leader")
        e = await rpc_error(el.Campaign(epb.CampaignRequest(name=b"E", lease=999, value=b"v")))
        assert e.details() == "etcdserver: requested lease not found"
        lid = await grant(lease)
        c = await el.Campaign(epb.CampaignRequest(name=b"E", lease=lid, value=b"v1"))
        key = b"E/" + format(lid, "x").encode()
        assert (c.leader.name, c.leader.key, c.leader.lease) == (b"E", key, lid)
        assert c.leader.rev == c.header.revision == s.store.current_revision
        # campaigning again with another value proclaims it; header is the campaign txn's
        again = await el.Campaign(epb.CampaignRequest(name=b"E", lease=lid, value=b"v2"))
        assert again.leader == c.leader and again.header.revision == c.header.revision
        ld = await el.Leader(epb.LeaderRequest(name=b"E"))
        assert (ld.kv.key, ld.kv.value, ld.kv.create_revision, ld.kv.version) == (key, b"v2", c.leader.rev, 2)
        p = await el.Proclaim(epb.ProclaimRequest(leader=c.leader, value=b"v3"))
        assert p.header.revision == s.store.current_revision
        e = await rpc_error(el.Proclaim(epb.ProclaimRequest(value=b"v3")))
        assert (e.code(), e.details()) == (grpc.StatusCode.UNKNOWN, '"leader" field must be provided')
        bad = epb.LeaderKey()
        bad.CopyFrom(c.leader)
        bad.rev = 1
        e = await rpc_error(el.Proclaim(epb.ProclaimRequest(leader=bad, value=b"v4")))
        assert (e.code(), e.details()) == (grpc.StatusCode.UNKNOWN, "election: not leader")
        # resign with a stale rev: succeeds and changes nothing
        r = await el.Resign(epb.ResignRequest(leader=bad))
        assert r.header.revision == p.header.revision
        e = await rpc_error(el.Resign(epb.ResignRequest()))
        assert e.details() == '"leader" field must be provided'
        r = await el.Resign(epb.ResignRequest(leader=c.leader))
        assert r.header.revision == p.header.revision + 1
        assert (await el.Resign(epb.ResignRequest(leader=c.leader))).header.revision == r.header.revision
        e = await rpc_error(el.Leader(epb.LeaderRequest(name=b"E")))
        assert e.details() == "election: no leader"
        c0 = await el.Campaign(epb.CampaignRequest(name=b"E0", value=b"v"))
        ttl = await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=c0.leader.lease))
        assert ttl.grantedTTL == 60

    run(t)


def test_campaign_waits_for_earlier_candidates():
    async def t(s: InProcServer, ch):
        lease, _, el, _ = stubs(ch)
        a, b, c = await grant(lease), await grant(lease, 5), await grant(lease)
        ca = await el.Campaign(epb.CampaignRequest(name=b"W", lease=a, value=b"a"))
        wb = asyncio.ensure_future(el.Campaign(epb.CampaignRequest(name=b"W", lease=b, value=b"b")))
        await settle()
        wc = asyncio.ensure_future(el.Campaign(epb.CampaignRequest(name=b"W", lease=c, value=b"c")))
        await settle()
        assert not wb.done() and not wc.done()
        await el.Resign(epb.ResignRequest(leader=ca.leader))
        cb = await wb
        assert cb.leader.lease == b
        await settle()
        assert not wc.done()
        assert (await el.Leader(epb.LeaderRequest(name=b"W"))).kv.value == b"b"
        assert await s.expire(6) == [b]  # the leader's lease lapses: next one in
        cc = await wc
        assert cc.leader.lease == c
        assert (await el.Leader(epb.LeaderRequest(name=b"W"))).kv.value == b"c"

    run(t)


def test_observe_streams_leader_changes():
    async def t(s: InProcServer, ch):
        lease, _, el, kv = stubs(ch)
        seen: list[epb.LeaderResponse] = []
        stream = el.Observe(epb.LeaderRequest(name=b"O"))

        async def reader():
            async for r in stream:
                seen.append(r)

        task = asyncio.ensure_future(reader())
        await settle()
        assert seen == []  # no leader yet: nothing sent
        a, b = await grant(lease), await grant(lease)
        ca = await el.Campaign(epb.CampaignRequest(name=b"O", lease=a, value=b"a"))
        wb = asyncio.ensure_future(el.Campaign(epb.CampaignRequest(name=b"O", lease=b, value=b"b")))
        await settle()
        await kv.Put(rpc_pb2.PutRequest(key=b"O/zzz", value=b"other"))  # not the leader: unseen
        p = await el.Proclaim(epb.ProclaimRequest(leader=ca.leader, value=b"a2"))
        r = await el.Resign(epb.ResignRequest(leader=ca.leader))
        await wb
        await settle()
        got = [(x.header.revision, x.kv.key, x.kv.value) for x in seen]
        ka, kb = ca.leader.key, b"O/" + format(b, "x").encode()
        assert got == [
            (ca.header.revision, ka, b"a"),
            (p.header.revision, ka, b"a2"),
            (r.header.revision, kb, b"b"),
        ]
        # the last candidate leaves: the oldest key of the prefix leads (etcd does the same)
        await lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=b))
        await settle()
        assert [(x.kv.key, x.kv.value) for x in seen[3:]] == [(b"O/zzz", b"other")]
        stream.cancel()
        await settle()
        assert task.done()

    run(t)


def test_observe_starts_with_current_leader():
    async def t(s: InProcServer, ch):
        lease, _, el, _ = stubs(ch)
        lid = await grant(lease)
        c = await el.Campaign(epb.CampaignRequest(name=b"N", lease=lid, value=b"x"))
        stream = el.Observe(epb.LeaderRequest(name=b"N"))
        first = await stream.read()
        assert (first.kv.key, first.kv.value, first.kv.create_revision) == (c.leader.key, b"x", c.leader.rev)
        assert first.header.revision == s.store.current_revision
        stream.cancel()

    run(t)


def test_cancelled_campaign_resigns():
    async def t(s: InProcServer, ch):
        lease, _, el, kv = stubs(ch)
        a, b = await grant(lease), await grant(lease)
        await el.Campaign(epb.CampaignRequest(name=b"R", lease=a, value=b"a"))
        call = el.Campaign(epb.CampaignRequest(name=b"R", lease=b, value=b"b"))
        w = asyncio.ensure_future(call)
        await settle()
        assert len(await keys(kv, b"R/")) == 2
        call.cancel()
        await settle()
        assert await keys(kv, b"R/") == [b"R/" + format(a, "x").encode()]
        assert w.done()

    run(t)


def test_waiter_rereads_after_snapshot_restore():
    """Events a waiter missed (the store jumped to a snapshot) are made up
    for by re-reading the store."""
    from kvstore.api.lock import KeyEvents

    async def t(s: InProcServer, ch):
        lease, lock, _, _ = stubs(ch)
        a, b = await grant(lease), await grant(lease)
        held = await lock.Lock(lpb.LockRequest(name=b"S", lease=a))
        w = asyncio.ensure_future(lock.Lock(lpb.LockRequest(name=b"S", lease=b)))
        await settle()
        hub = next(x for x in s.applier.event_sinks if isinstance(x, KeyEvents))
        s.applier.event_sinks.remove(hub)  # the deletion arrives "inside a snapshot"
        await lock.Unlock(lpb.UnlockRequest(key=held.key))
        s.applier.event_sinks.append(hub)
        await settle()
        assert not w.done()
        hub.on_restore()  # what Applier.restore does for every event sink
        assert (await w).key == b"S/" + format(b, "x").encode()

    run(t)
