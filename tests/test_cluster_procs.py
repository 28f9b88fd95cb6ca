"""Real ``python -m kvstore`` processes on loopback: a cluster forms,
replicates, survives SIGKILL of its leader, changes membership and catches a
new member up by snapshot."""
from __future__ import annotations

import os
import time

import grpc
import pytest

from kvstore.pb import rpc_pb2, rpc_pb2_grpc
from tests.procs import Cluster, Node


def kv(node: Node) -> rpc_pb2_grpc.KVStub:
    return rpc_pb2_grpc.KVStub(grpc.insecure_channel(node.endpoint))


def status(node: Node) -> rpc_pb2.StatusResponse:
    ch = grpc.insecure_channel(node.endpoint)
    return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=5)


def retry(fn, timeout: float = 20.0):
    """Call ``fn`` until it succeeds; clients retry across elections too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def leader_of(c: Cluster) -> Node:
    def find() -> Node:
        for n in c.nodes:
            if n.alive:
                st = status(n)
                if st.leader and st.leader == st.header.member_id:
                    return n
        raise grpc.RpcError("no leader yet")

    return retry(find)


def get(node: Node, key: bytes, serializable: bool = False) -> bytes | None:
    r = kv(node).Range(rpc_pb2.RangeRequest(key=key, serializable=serializable), timeout=5)
    return r.kvs[0].value if r.kvs else None


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(3).start()
    yield c
    c.close()


def test_writes_through_any_member_are_applied_on_all(cluster: Cluster) -> None:
    for i, n in enumerate(cluster.nodes):
        retry(lambda: kv(n).Put(rpc_pb2.PutRequest(key=b"any/%d" % i, value=b"v%d" % i), timeout=5))
    for n in cluster.nodes:
        retry(lambda: get(n, b"any/0"))  # linearizable read: this member caught up
        for i in range(3):
            assert get(n, b"any/%d" % i, serializable=True) == b"v%d" % i
    ids = {status(n).header.member_id for n in cluster.nodes}
    assert len(ids) == 3
    assert len({status(n).leader for n in cluster.nodes}) == 1


def test_sigkill_leader_loses_no_acknowledged_write_and_rejoins(cluster: Cluster) -> None:
    leader = leader_of(cluster)
    acked = []
    for i in range(50):
        target = cluster.nodes[i % 3]
        retry(lambda: kv(target).Put(rpc_pb2.PutRequest(key=b"kill/%03d" % i, value=b"x"), timeout=5))
        acked.append(b"kill/%03d" % i)
    old_term = status(leader).raftTerm
    leader.kill()
    survivors = [n for n in cluster.nodes if n is not leader]
    new_leader = leader_of(cluster)
    assert new_leader is not leader
    assert status(new_leader).raftTerm > old_term
    retry(lambda: kv(survivors[0]).Put(rpc_pb2.PutRequest(key=b"kill/after", value=b"y"), timeout=5))
    r = retry(lambda: kv(survivors[1]).Range(rpc_pb2.RangeRequest(key=b"kill/", range_end=b"kill0"), timeout=5))
    keys = [x.key for x in r.kvs]
    assert all(k in keys for k in acked) and b"kill/after" in keys
    leader.restart()
    cluster.wait_healthy(30, [leader])
    retry(lambda: get(leader, b"kill/after") or (_ for _ in ()).throw(grpc.RpcError("not yet")))
    assert get(leader, b"kill/after", serializable=True) == b"y"
    assert len(kv(leader).Range(rpc_pb2.RangeRequest(key=b"kill/", range_end=b"kill0", serializable=True)).kvs) == 51


def test_sigterm_is_clean_and_restart_keeps_data(cluster: Cluster) -> None:
    n = cluster.nodes[2]
    retry(lambda: kv(n).Put(rpc_pb2.PutRequest(key=b"term/k", value=b"1"), timeout=5))
    assert n.terminate() == 0
    n.restart()
    cluster.wait_healthy(30, [n])
    assert retry(lambda: get(n, b"term/k")) == b"1"


def test_member_remove_and_add_back(cluster: Cluster) -> None:
    victim = next(n for n in cluster.nodes if n is not leader_of(cluster))
    vid = status(victim).header.member_id
    other = next(n for n in cluster.nodes if n is not victim)
    cl = rpc_pb2_grpc.ClusterStub(grpc.insecure_channel(other.endpoint))
    retry(lambda: cl.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=vid), timeout=10))
    ids = [m.ID for m in cl.MemberList(rpc_pb2.MemberListRequest(), timeout=5).members]
    assert vid not in ids and len(ids) == 2
    # The removed member notices and stops on its own.
    victim.proc.wait(timeout=30)
    cluster.nodes.remove(victim)
    retry(lambda: kv(other).Put(rpc_pb2.PutRequest(key=b"member/after-remove", value=b"1"), timeout=5))

    fresh = cluster.add_node(victim.name + "b")
    resp = retry(lambda: cl.MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=[fresh.peer_url]), timeout=10))
    assert len(resp.members) == 3
    fresh.start(cluster.initial_cluster, state="existing")
    cluster.wait_healthy(30, [fresh])
    assert retry(lambda: get(fresh, b"member/after-remove")) == b"1"


def test_new_member_catches_up_by_snapshot() -> None:
    with Cluster(3, extra_args=["--snapshot-count", "20"]) as c:
        c.start()
        for i in range(150):
            n = c.nodes[i % 3]
            retry(lambda: kv(n).Put(rpc_pb2.PutRequest(key=b"snap/%03d" % i, value=b"v" * 100), timeout=5))
        cl = rpc_pb2_grpc.ClusterStub(grpc.insecure_channel(c.nodes[0].endpoint))
        fresh = c.add_node("n4")
        retry(lambda: cl.MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=[fresh.peer_url], isLearner=True), timeout=10))
        fresh.start(c.initial_cluster, state="existing")
        c.wait_healthy(30, [fresh])
        # A learner serves serializable reads only (as in etcd): wait until it
        # holds everything, which it can only get from the snapshot.
        def caught_up() -> rpc_pb2.RangeResponse:
            r = kv(fresh).Range(rpc_pb2.RangeRequest(key=b"snap/", range_end=b"snap0", serializable=True), timeout=5)
            if len(r.kvs) != 150:
                raise grpc.RpcError(f"{len(r.kvs)} keys so far")
            return r

        r = retry(caught_up, timeout=30)
        assert [x.key for x in r.kvs] == [b"snap/%03d" % i for i in range(150)]
        with open(fresh.log_path) as f:
            assert "restored state from snapshot" in f.read()
        # Restored: the received file is not kept (the store has its own copy).
        snap_dir = os.path.join(fresh.data_dir, "member", "snap")
        assert [n for n in os.listdir(snap_dir) if n.endswith(".snap")] == []
        # Promoted, the former learner answers HashKV: every member's history
        # hashes the same at the same revision.
        fid = rpc_pb2_grpc.MaintenanceStub(grpc.insecure_channel(fresh.endpoint)).Status(
            rpc_pb2.StatusRequest(), timeout=5).header.member_id
        lead_cl = rpc_pb2_grpc.ClusterStub(grpc.insecure_channel(leader_of(c).endpoint))
        retry(lambda: lead_cl.MemberPromote(rpc_pb2.MemberPromoteRequest(ID=fid), timeout=10))
        rev = r.header.revision
        hashes = set()
        for n in c.nodes:
            m = rpc_pb2_grpc.MaintenanceStub(grpc.insecure_channel(n.endpoint))
            hashes.add(retry(lambda: m.HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=5)).hash)
        assert len(hashes) == 1


def test_force_new_cluster_recovers_from_a_lost_majority() -> None:
    with Cluster(3) as c:
        c.start()
        n1 = c.nodes[0]
        for i in range(20):
            retry(lambda: kv(n1).Put(rpc_pb2.PutRequest(key=b"fnc/%02d" % i, value=b"v"), timeout=5))
        rev = kv(n1).Range(rpc_pb2.RangeRequest(key=b"fnc/19")).kvs[0].mod_revision
        for n in c.nodes:
            n.kill()  # the majority is gone for good
        n1.extra_args.append("--force-new-cluster")
        n1.restart()
        c.wait_healthy(30, [n1])
        r = retry(lambda: kv(n1).Range(rpc_pb2.RangeRequest(key=b"fnc/", range_end=b"fnc0"), timeout=5))
        assert len(r.kvs) == 20 and r.kvs[-1].mod_revision == rev
        cl = rpc_pb2_grpc.ClusterStub(grpc.insecure_channel(n1.endpoint))
        assert [m.name for m in cl.MemberList(rpc_pb2.MemberListRequest(), timeout=5).members] == ["n1"]
        retry(lambda: kv(n1).Put(rpc_pb2.PutRequest(key=b"fnc/after", value=b"w"), timeout=5))
        assert get(n1, b"fnc/after") == b"w"
