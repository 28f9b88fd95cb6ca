"""The auth store travels with Raft snapshots: a member that joins after the
log holding the auth changes was compacted enforces the same rules."""
from __future__ import annotations

import time

import grpc

from kvstore import errors
from kvstore.pb import auth_pb2, rpc_pb2, rpc_pb2_grpc
from tests.procs import Cluster


def retry(fn, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_member_joining_by_snapshot_enforces_auth() -> None:
    with Cluster(3, extra_args=["--snapshot-count", "20"]) as c:
        c.start()
        ch = grpc.insecure_channel(c.nodes[0].endpoint)
        auth = rpc_pb2_grpc.AuthStub(ch)
        kv = rpc_pb2_grpc.KVStub(ch)
        retry(lambda: auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rpw"), timeout=10))
        auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
        auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="alice", password="apw"), timeout=10)
        auth.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="app"), timeout=10)
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"app/", range_end=b"app0")
        auth.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(name="app", perm=perm), timeout=10)
        auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="app"), timeout=10)
        auth.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=10)
        root = [("token", auth.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rpw"), timeout=10).token)]
        for i in range(120):  # well past --snapshot-count: the auth entries are compacted away
            kv.Put(rpc_pb2.PutRequest(key=b"app/%03d" % i, value=b"v"), metadata=root, timeout=10)
        fresh = c.add_node("n4")

        def add() -> None:  # UNAVAILABLE (a leader change under load) is retried, as clients do
            try:
                rpc_pb2_grpc.ClusterStub(ch).MemberAdd(
                    rpc_pb2.MemberAddRequest(peerURLs=[fresh.peer_url]), metadata=root, timeout=10
                )
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    if e.details() == errors.PEER_U_R_L_EXIST.message:
                        return  # an attempt that reported an error went through after all
                    raise AssertionError(e.details()) from None
                raise
        retry(add)
        fresh.start(c.initial_cluster, state="existing")
        c.wait_healthy(60, [fresh])
        fch = grpc.insecure_channel(fresh.endpoint)
        fauth = rpc_pb2_grpc.AuthStub(fch)
        fkv = rpc_pb2_grpc.KVStub(fch)
        # The password is checked against the new member's own (restored) store.
        tok = retry(lambda: fauth.Authenticate(rpc_pb2.AuthenticateRequest(name="alice", password="apw"), timeout=10))
        alice = [("token", tok.token)]
        r = retry(lambda: fkv.Range(rpc_pb2.RangeRequest(key=b"app/", range_end=b"app0", count_only=True), metadata=alice, timeout=10))
        assert r.count == 120
        for md, want in [(alice, "etcdserver: permission denied"), ([], "etcdserver: user name is empty")]:
            try:
                fkv.Range(rpc_pb2.RangeRequest(key=b"other"), metadata=md, timeout=10)
                raise AssertionError("read allowed")
            except grpc.RpcError as e:
                assert e.details() == want
        try:
            fauth.Authenticate(rpc_pb2.AuthenticateRequest(name="alice", password="bad"), timeout=10)
            raise AssertionError("wrong password accepted")
        except grpc.RpcError as e:
            assert e.details() == "etcdserver: authentication failed, invalid user ID or password"
        with open(fresh.log_path) as f:
            assert "restored state from snapshot" in f.read()
