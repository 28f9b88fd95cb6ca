"""Thin helpers over the etcd v3 gRPC API (stubs from kvstore.pb) for the harness."""

from __future__ import annotations

import grpc

from kvstore.pb import rpc_pb2, rpc_pb2_grpc

_channels: dict[str, grpc.Channel] = {}


def channel(endpoint: str) -> grpc.Channel:
    """A shared insecure channel to ``host:port`` (one per endpoint)."""
    ch = _channels.get(endpoint)
    if ch is None:
        ch = _channels[endpoint] = grpc.insecure_channel(endpoint)
    return ch


def status(endpoint: str, timeout: float = 2.0) -> dict | None:
    """Maintenance.Status as a dict, or None if the node does not answer."""
    try:
        r = rpc_pb2_grpc.MaintenanceStub(channel(endpoint)).Status(
            rpc_pb2.StatusRequest(), timeout=timeout)
    except grpc.RpcError:
        return None
    return {"member_id": r.header.member_id, "leader": r.leader, "raft_term": r.raftTerm,
            "revision": r.header.revision, "raft_index": r.raftIndex}


def member_list(endpoint: str, timeout: float = 5.0) -> list[dict]:
    r = rpc_pb2_grpc.ClusterStub(channel(endpoint)).MemberList(
        rpc_pb2.MemberListRequest(), timeout=timeout)
    return [{"ID": m.ID, "name": m.name, "peerURLs": list(m.peerURLs)} for m in r.members]


def member_add(endpoint: str, peer_urls: list[str], timeout: float = 10.0) -> int:
    r = rpc_pb2_grpc.ClusterStub(channel(endpoint)).MemberAdd(
        rpc_pb2.MemberAddRequest(peerURLs=peer_urls), timeout=timeout)
    return r.member.ID


def member_remove(endpoint: str, member_id: int, timeout: float = 10.0) -> None:
    rpc_pb2_grpc.ClusterStub(channel(endpoint)).MemberRemove(
        rpc_pb2.MemberRemoveRequest(ID=member_id), timeout=timeout)


def move_leader(endpoint: str, target_id: int, timeout: float = 10.0) -> None:
    """Maintenance.MoveLeader (must be sent to the current leader)."""
    rpc_pb2_grpc.MaintenanceStub(channel(endpoint)).MoveLeader(
        rpc_pb2.MoveLeaderRequest(targetID=target_id), timeout=timeout)
