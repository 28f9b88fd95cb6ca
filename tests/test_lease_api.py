"""Lease gRPC service in-process: the real Applier and MVCC store, real gRPC,
a fake clock, and no Raft (a proposal applies at once, as on a one-member
cluster). Expiry is driven by calling the lessor's check explicitly, so no
test waits for time to pass.

``InProcServer`` and ``serve`` are shared with the lock and election tests.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
from types import SimpleNamespace

import grpc
import pytest

pytest.importorskip("kvstore.mvcc.store", reason="the MVCC store has not landed yet")
pytest.importorskip("raft.transport", reason="the peer transport has not landed yet")

from kvstore.apply import Applier  # noqa: E402
from kvstore.lease import FORWARD_HEADER, Lessor  # noqa: E402
from kvstore.mvcc import MvccStore  # noqa: E402
from kvstore.server import KvServer
from kvstore.pb import internal_pb2, rpc_pb2, rpc_pb2_grpc  # noqa: E402
from raft.types import Entry, EntryType  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeNode:
    def __init__(self, member_id: int) -> None:
        self.leader = member_id
        self.term = 2
        self.leader_changed = asyncio.Event()
        self.is_leader = True


class InProcServer:
    """Just enough of KvServer for the API adapters, without Raft."""

    cluster_id = 0x1234
    _ids = itertools.count(0xABC0)

    def __init__(self, clock: Clock | None = None, min_ttl: int = 2) -> None:
        self.member_id = next(self._ids)
        self.cfg = SimpleNamespace(max_txn_ops=128, max_request_bytes=1 << 20)
        self.dir = tempfile.mkdtemp(prefix="kvstore-lease-")
        self.store = MvccStore(self.dir + "/kv")
        self.results: dict[int, object] = {}
        self.applier = Applier(self.store, self.member_id, self._on_result, lambda ml: None)
        self.clock = clock or Clock()
        self.lessor = Lessor(self.store, self.propose, min_ttl=min_ttl, extend=1.0, clock=self.clock)
        self.applier.lease_observers.append(self.lessor)
        self.node = FakeNode(self.member_id)
        self.index = self.store.consistent_index
        self.rids = itertools.count(1)
        self.lessor.set_primary(True)

    def _on_result(self, rid: int, res: object) -> None:
        self.results[rid] = res

    async def propose(self, req: internal_pb2.InternalRequest, timeout: float = 7.0):
        await asyncio.sleep(0)  # let concurrent handlers interleave, as in a Raft batch
        req.id = next(self.rids)
        req.member_id = self.member_id
        self.index += 1
        self.applier.apply([Entry(2, self.index, EntryType.NORMAL, req.SerializeToString())])
        res = self.results.pop(req.id)
        if res.error is not None:
            raise res.error
        return res

    async def read_barrier(self, timeout: float = 7.0) -> None:
        await asyncio.sleep(0)

    learner = False
    client_tls = None
    member_channel = KvServer.member_channel  # forwarding to the leader's client URL

    def has_leader(self) -> bool:
        return self.node.leader != 0

    def is_learner(self) -> bool:
        return self.learner

    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=self.store.current_revision if revision is None else revision,
            raft_term=self.node.term,
        )

    async def expire(self, seconds: float) -> list[int]:
        """Let ``seconds`` pass on the leader's clock and run the expiry check."""
        self.clock.advance(seconds)
        revoked: list[int] = []
        while True:
            ids = await self.lessor.revoke_expired()
            if not ids:
                return revoked
            revoked += ids

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def serve(server: InProcServer):
    """Serve KV, Lease, Lock and Election for ``server``; yields (channel, url)."""
    from kvstore.api.election import ElectionService
    from kvstore.api.kv import KVService
    from kvstore.api.lease import LeaseService
    from kvstore.api.lock import LockService, Recipes
    from kvstore.pb import v3election_pb2_grpc, v3lock_pb2_grpc

    from kvstore.api import MethodTable
    from kvstore.rpc.server import RpcServer

    table = MethodTable()
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(server), table)
    lease = LeaseService(server)
    lease.router.timeout = 1.0
    rpc_pb2_grpc.add_LeaseServicer_to_server(lease, table)
    recipes = Recipes(server)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockService(server, recipes), table)
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(server, recipes), table)
    gs = RpcServer()
    gs.add_generic_rpc_handlers((table,))
    port = await gs.listen("http://127.0.0.1:0")
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ch, f"http://127.0.0.1:{port}"
    finally:
        await ch.close()
        await lease.router.close()
        await gs.stop(None)


def run(test):
    """Run ``test(server, channel)`` against a fresh in-process server."""

    async def main():
        s = InProcServer()
        try:
            async with serve(s) as (ch, _):
                await test(s, ch)
        finally:
            s.close()

    asyncio.run(main())


async def rpc_error(aw) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await aw
    return ei.value


async def keepalive(stub: rpc_pb2_grpc.LeaseStub, *ids: int) -> list[rpc_pb2.LeaseKeepAliveResponse]:
    call = stub.LeaseKeepAlive()
    out = []
    for lid in ids:
        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lid))
        out.append(await call.read())
    await call.done_writing()
    return out


# ---------------------------------------------------------------------------


def test_grant_ids_and_ttls():
    async def t(s: InProcServer, ch):
        lease = rpc_pb2_grpc.LeaseStub(ch)
        g = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30))
        assert g.ID > 0 and g.TTL == 30 and not g.error
        assert g.header.cluster_id == s.cluster_id and g.header.member_id == s.member_id
        # below the minimum: raised to it (etcd: 1 s → 2 s with default timing)
        small = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=1, ID=77))
        assert (small.ID, small.TTL) == (77, 2)
        neg = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=-5, ID=-5))
        assert (neg.ID, neg.TTL) == (-5, 2)
        e = await rpc_error(lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30, ID=77)))
        assert (e.code(), e.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
        e = await rpc_error(lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=9_000_000_001)))
        assert (e.code(), e.details()) == (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
        ids = {(await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10))).ID for _ in range(20)}
        assert len(ids) == 20 and all(i > 0 for i in ids)

    run(t)


def test_timetolive_keys_leases_and_revoke():
    async def t(s: InProcServer, ch):
        lease = rpc_pb2_grpc.LeaseStub(ch)
        kv = rpc_pb2_grpc.KVStub(ch)
        g = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30, ID=100))
        await kv.Put(rpc_pb2.PutRequest(key=b"a", value=b"1", lease=100))
        await kv.Put(rpc_pb2.PutRequest(key=b"b", value=b"2", lease=100))
        await kv.Put(rpc_pb2.PutRequest(key=b"c", value=b"3"))
        s.clock.advance(10.5)
        ttl = await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=100, keys=True))
        assert (ttl.ID, ttl.TTL, ttl.grantedTTL) == (100, 19, 30)
        assert sorted(ttl.keys) == [b"a", b"b"]
        nokeys = await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=100))
        assert list(nokeys.keys) == []
        ls = await lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest())
        assert [l.ID for l in ls.leases] == [g.ID]

        before = (await kv.Range(rpc_pb2.RangeRequest(key=b"c"))).header.revision
        rv = await lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=100))
        assert rv.header.revision == before + 1  # both keys deleted in one revision
        left = await kv.Range(rpc_pb2.RangeRequest(key=b"a", range_end=b"z"))
        assert [x.key for x in left.kvs] == [b"c"]
        e = await rpc_error(lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=100)))
        assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
        e = await rpc_error(lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=0)))
        assert e.code() == grpc.StatusCode.NOT_FOUND
        # etcd: a missing lease is not an error here, but TTL -1 with the asked ID
        gone = await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=100, keys=True))
        assert (gone.ID, gone.TTL, gone.grantedTTL, list(gone.keys)) == (100, -1, 0, [])
        assert gone.header.revision == rv.header.revision
        assert list((await lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest())).leases) == []
        e = await rpc_error(kv.Put(rpc_pb2.PutRequest(key=b"x", lease=100)))
        assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")

    run(t)


def test_keepalive_stream():
    async def t(s: InProcServer, ch):
        lease = rpc_pb2_grpc.LeaseStub(ch)
        await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10, ID=5))
        s.clock.advance(8)
        r1, r2, r3 = await keepalive(lease, 5, 424242, 0)
        assert (r1.ID, r1.TTL) == (5, 10)
        assert (r2.ID, r2.TTL) == (424242, 0)  # unknown lease: TTL 0, no error
        assert (r3.ID, r3.TTL) == (0, 0)
        assert r1.header.member_id == s.member_id and r1.header.revision == s.store.current_revision
        ttl = await lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=5))
        assert ttl.TTL == 10  # renewed at the keep-alive
        # Kept alive across many TTLs; each keep-alive restarts the full TTL.
        for _ in range(5):
            assert await s.expire(9) == []
            (r,) = await keepalive(lease, 5)
            assert r.TTL == 10
        assert await s.expire(10.5) == [5]
        (r,) = await keepalive(lease, 5)
        assert r.TTL == 0

    run(t)


def test_expiry_deletes_attached_keys_in_one_revision():
    async def t(s: InProcServer, ch):
        lease = rpc_pb2_grpc.LeaseStub(ch)
        kv = rpc_pb2_grpc.KVStub(ch)
        await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=5, ID=1))
        await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=50, ID=2))
        for k in (b"k1", b"k2", b"k3"):
            await kv.Put(rpc_pb2.PutRequest(key=k, value=b"v", lease=1))
        await kv.Put(rpc_pb2.PutRequest(key=b"k4", value=b"v", lease=2))
        rev = s.store.current_revision
        seen: list[tuple[int, list]] = []

        class Sink:
            def notify(self, revision, events):
                seen.append((revision, [(e.type, e.kv.key) for e in events]))

        s.applier.event_sinks.append(Sink())
        assert await s.expire(4) == []
        assert await s.expire(1.5) == [1]
        assert seen == [(rev + 1, [(1, b"k1"), (1, b"k2"), (1, b"k3")])]
        left = await kv.Range(rpc_pb2.RangeRequest(key=b"k", range_end=b"l"))
        assert [x.key for x in left.kvs] == [b"k4"]

    run(t)


def test_lease_state_survives_restart_of_lessor():
    async def t(s: InProcServer, ch):
        lease = rpc_pb2_grpc.LeaseStub(ch)
        for i in (1, 2, 3):
            await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10 * i, ID=i))
        await lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=2))
        # A new lessor over the same store (what a restart does):
        fresh = Lessor(s.store, s.propose, clock=s.clock, extend=1.0)
        assert sorted(fresh.lease_ids()) == [1, 3]
        fresh.set_primary(True)
        assert fresh.time_to_live(3) == (31, 30)  # full TTL + election timeout
        # ...and a snapshot restore goes through on_restore:
        s.store.checkpoint()
        s.lessor.on_restore()
        assert sorted(s.lessor.lease_ids()) == [1, 3]

    run(t)


def test_follower_forwards_keepalive_and_timetolive_to_leader():
    """A client on a follower keeps its lease alive through the leader."""

    async def main():
        leader, follower = InProcServer(), InProcServer()
        try:
            async with serve(leader) as (lch, lurl), serve(follower) as (fch, _):
                follower.lessor.set_primary(False)
                follower.node.leader = leader.member_id
                follower.node.is_leader = False
                follower.applier.members = internal_pb2.MemberList(
                    members=[
                        internal_pb2.Member(id=leader.member_id, name="l", client_urls=[lurl]),
                        internal_pb2.Member(id=follower.member_id, name="f"),
                    ]
                )
                await rpc_pb2_grpc.LeaseStub(lch).LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10, ID=9))
                stub = rpc_pb2_grpc.LeaseStub(fch)
                leader.clock.advance(7)
                (r, missing) = await keepalive(stub, 9, 12345)
                assert (r.ID, r.TTL) == (9, 10)
                assert r.header.member_id == follower.member_id
                assert (missing.ID, missing.TTL) == (12345, 0)
                assert leader.lessor.time_to_live(9) == (10, 10)  # renewed on the leader
                ttl = await stub.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=9, keys=True))
                assert (ttl.TTL, ttl.grantedTTL) == (10, 10)
                gone = await stub.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=12345))
                assert (gone.ID, gone.TTL) == (12345, -1)
                # A forwarded call is never forwarded again: a member that is
                # not the leader answers "not leader" to it.
                e = await rpc_error(
                    stub.LeaseTimeToLive(
                        rpc_pb2.LeaseTimeToLiveRequest(ID=9), metadata=((FORWARD_HEADER, "1"),)
                    )
                )
                assert e.details() == "etcdserver: not leader"
                # No reachable leader: the follower gives up with a timeout.
                leader.lessor.set_primary(False)
                call = stub.LeaseKeepAlive()
                await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=9))
                e = await rpc_error(call.read())
                assert (e.code(), e.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
        finally:
            leader.close()
            follower.close()

    asyncio.run(main())


def test_forwarded_keepalive_dialect():
    """Member-to-member keep-alives: served concurrently, matched by ID,
    TTL -1 = retry at the leader."""

    async def t(s: InProcServer, ch):
        lease = rpc_pb2_grpc.LeaseStub(ch)
        await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=5, ID=1))
        await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=50, ID=2))
        s.clock.advance(6)  # lease 1 expired, its revoke not yet proposed
        call = lease.LeaseKeepAlive(metadata=((FORWARD_HEADER, "1"),))
        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=1))
        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=2))
        first = await call.read()
        assert (first.ID, first.TTL) == (2, 50)  # not held up behind lease 1
        assert await s.expire(0) == [1]
        second = await call.read()
        assert (second.ID, second.TTL) == (1, 0)  # revoked: not found
        s.lessor.set_primary(False)  # no longer the leader
        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=2))
        third = await call.read()
        assert (third.ID, third.TTL) == (2, -1)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF

    run(t)


def test_learner_refuses_lease_lock_election():
    from kvstore.pb import v3election_pb2, v3election_pb2_grpc, v3lock_pb2, v3lock_pb2_grpc

    async def t(s: InProcServer, ch):
        s.learner = True
        lease = rpc_pb2_grpc.LeaseStub(ch)
        calls = [
            lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10)),
            lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=1)),
            lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=1)),
            lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest()),
            v3lock_pb2_grpc.LockStub(ch).Lock(v3lock_pb2.LockRequest(name=b"l", lease=1)),
            v3election_pb2_grpc.ElectionStub(ch).Leader(v3election_pb2.LeaderRequest(name=b"e")),
        ]
        for c in calls:
            e = await rpc_error(c)
            assert (e.code(), e.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner")
        ka = lease.LeaseKeepAlive()
        await ka.write(rpc_pb2.LeaseKeepAliveRequest(ID=1))
        e = await rpc_error(ka.read())
        assert e.details() == "etcdserver: rpc not supported for learner"
        obs = v3election_pb2_grpc.ElectionStub(ch).Observe(v3election_pb2.LeaderRequest(name=b"e"))
        e = await rpc_error(obs.read())
        assert e.details() == "etcdserver: rpc not supported for learner"

    run(t)


def test_keepalive_require_leader():
    async def t(s: InProcServer, ch):
        lease = rpc_pb2_grpc.LeaseStub(ch)
        await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10, ID=3))
        ok = lease.LeaseKeepAlive(metadata=(("hasleader", "true"),))
        await ok.write(rpc_pb2.LeaseKeepAliveRequest(ID=3))
        assert (await ok.read()).TTL == 10
        ok.cancel()
        s.node.leader = 0
        call = lease.LeaseKeepAlive(metadata=(("hasleader", "true"),))
        e = await rpc_error(call.read())
        assert (e.code(), e.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")

    run(t)
