"""Strict reconfiguration checks (etcd 3.4's default --strict-reconfig-check):
membership changes that could cost the quorum are refused, on the leader
and through a follower (which forwards them to the leader). The "started
members" checks are shadowed by the contact checks in a live cluster, so
they are tested as the pure functions they are."""
from __future__ import annotations

import time

import grpc
import pytest

from kvstore import errors, members
from kvstore.pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from tests.procs import Cluster


def member_list(*spec: str) -> members.MemberList:
    """'s' started voter, 'n' never-started voter, 'l' learner; ids 1, 2, ..."""
    ml = members.MemberList()
    for i, kind in enumerate(spec, start=1):
        ml.members.append(internal_pb2.Member(id=i, name=f"m{i}" if kind != "n" else "", is_learner=kind == "l"))
    return ml


def test_ready_to_add_voting_cases() -> None:
    assert members.ready_to_add_voting(member_list("s"))
    assert not members.ready_to_add_voting(member_list("s", "n"))
    assert not members.ready_to_add_voting(member_list("s", "s", "n"))  # 2 of 4: no quorum of started
    assert members.ready_to_add_voting(member_list("s", "s", "s", "n"))
    assert members.ready_to_add_voting(member_list("s", "s", "l", "l"))


def test_ready_to_remove_and_promote() -> None:
    ml = member_list("s", "s", "n")
    assert not members.ready_to_remove_voting(ml, 1)  # left: one started of two
    assert members.ready_to_remove_voting(ml, 3)  # the never-started one may go
    assert members.ready_to_promote(member_list("s", "s", "l"))
    assert not members.ready_to_promote(member_list("s", "n", "n", "l"))


def test_connected_enough_to_remove() -> None:
    voting = [1, 2, 3]
    # Me = 1. Member 3 is out of contact: removing it is always safe.
    assert members.connected_enough_to_remove(voting, 1, 3, {2})
    # Removing 2 while 3 is out of contact would leave me alone of two: refused.
    assert not members.connected_enough_to_remove(voting, 1, 2, {2})
    assert members.connected_enough_to_remove(voting, 1, 2, {2, 3})
    # Removing myself: the other two must answer.
    assert members.connected_enough_to_remove(voting, 1, 1, {2, 3})
    assert not members.connected_enough_to_remove(voting, 1, 1, {2})
    # Five members, two out of contact: removing a live one leaves 2 of 4.
    assert not members.connected_enough_to_remove([1, 2, 3, 4, 5], 1, 2, {2, 3})


def _stub(node) -> rpc_pb2_grpc.ClusterStub:
    return rpc_pb2_grpc.ClusterStub(grpc.insecure_channel(node.endpoint))


def _leader(c: Cluster):
    for _ in range(100):
        for n in c.nodes:
            if n.alive and rpc_pb2_grpc.MaintenanceStub(grpc.insecure_channel(n.endpoint)).Status(
                    rpc_pb2.StatusRequest(), timeout=5).leader == _member_id(n):
                return n
        time.sleep(0.1)
    raise AssertionError("no leader")


def _member_id(n) -> int:
    return rpc_pb2_grpc.MaintenanceStub(grpc.insecure_channel(n.endpoint)).Status(
        rpc_pb2.StatusRequest(), timeout=5).header.member_id


def test_removal_that_would_lose_the_quorum_is_refused() -> None:
    """3 members, one down: removing a live one (through the leader or a
    follower) is 'unhealthy cluster'; removing the dead one goes through."""
    with Cluster(3).start() as c:
        leader = _leader(c)
        follower, down = [n for n in c.nodes if n is not leader]
        ids = {n.name: _member_id(n) for n in c.nodes}
        down.kill()
        time.sleep(1.5)  # more than an election timeout without an answer from it
        for via in (leader, follower):
            with pytest.raises(grpc.RpcError) as err:
                _stub(via).MemberRemove(rpc_pb2.MemberRemoveRequest(ID=ids[follower.name]), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == errors.UNHEALTHY.message
            with pytest.raises(grpc.RpcError) as err:
                _stub(via).MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=["http://127.0.0.1:9"]), timeout=10)
            assert err.value.details() == errors.UNHEALTHY.message
        resp = _stub(follower).MemberRemove(rpc_pb2.MemberRemoveRequest(ID=ids[down.name]), timeout=10)
        assert sorted(m.ID for m in resp.members) == sorted([ids[leader.name], ids[follower.name]])
        # Answered by the follower once it applied the change itself.
        listed = _stub(follower).MemberList(rpc_pb2.MemberListRequest(), timeout=10).members
        assert ids[down.name] not in {m.ID for m in listed}


def test_a_follower_removing_itself_gets_the_answer() -> None:
    """Forwarded to the leader; the follower is out once it is applied, so it
    answers with the leader's member list rather than waiting to catch up."""
    with Cluster(3).start() as c:
        leader = _leader(c)
        follower = next(n for n in c.nodes if n is not leader)
        me = _member_id(follower)
        deadline = time.monotonic() + 30
        # Just after the start it may be refused for a moment (a client retries
        # UNAVAILABLE): the leader has not published its client URLs yet.
        while True:
            try:
                resp = _stub(follower).MemberRemove(rpc_pb2.MemberRemoveRequest(ID=me), timeout=10)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert me not in {m.ID for m in resp.members} and len(resp.members) == 2
        assert me not in {m.ID for m in _stub(leader).MemberList(rpc_pb2.MemberListRequest(), timeout=10).members}
