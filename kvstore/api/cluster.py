"""etcdserverpb.Cluster: the member list mapped onto Raft membership changes.

Changes that could cost the cluster its quorum are refused as etcd 3.4 does
with its default ``--strict-reconfig-check``: not enough members that ever
started (``re-configuration failed due to not enough started members``), or
not enough members in contact (``unhealthy cluster``). Contact is what the
leader sees: a member it heard from within an election timeout (every live
member answers its heartbeats; etcd asks for 5 s of connection, which refuses
every change for 5 s after a start). A member that is not the leader
forwards such requests to it, once.
"""
from __future__ import annotations

from typing import Any

import grpc

from raft.types import ConfChangeType, Role

from .. import errors, members
from ..config import ConfigError, check_url, member_id
from ..errors import EtcdError
from ..pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from ..server import REQUEST_TIMEOUT, KvServer
from .common import unary

FORWARD_HEADER = "kvstore-member-forwarded"  # set on a follower → leader call


def _check_urls(urls: list[str]) -> None:
    if not urls:
        raise errors.MEMBER_BAD_U_R_LS
    for u in urls:
        try:
            check_url("peer-urls", u)
        except ConfigError:
            raise errors.MEMBER_BAD_U_R_LS from None


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: KvServer) -> None:
        self.s = server

    def _header(self) -> rpc_pb2.ResponseHeader:
        # etcd's ClusterServer header: cluster_id, member_id and raft_term, no revision.
        return self.s.header(0)

    def _list(self) -> list[rpc_pb2.Member]:
        return [members.to_etcd(m) for m in self.s.applier.members.members]

    @unary
    async def MemberList(self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.MemberListResponse:
        return rpc_pb2.MemberListResponse(header=self._header(), members=self._list())

    @unary
    async def MemberAdd(self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.MemberAddResponse:
        urls = list(request.peerURLs)
        _check_urls(urls)
        ml = self.s.applier.members
        if members.peer_url_taken(ml, urls):
            raise errors.PEER_U_R_L_EXIST
        mid = member_id(urls, self.s.cfg.initial_cluster_token)
        if members.find(ml, mid) is not None:
            raise errors.MEMBER_EXIST
        if not self._on_leader(context):
            return await self._forward("MemberAdd", request, context)
        if not request.isLearner and not members.ready_to_add_voting(ml):
            raise errors.MEMBER_NOT_ENOUGH_STARTED
        in_contact = self.s.node.in_contact()
        if any(v != self.s.member_id and v not in in_contact for v in _voting_ids(ml)):
            raise errors.UNHEALTHY  # every voting member must answer (etcd: isConnectedFullySince)
        m = internal_pb2.Member(id=mid, peer_urls=urls, is_learner=request.isLearner)
        cc = ConfChangeType.ADD_LEARNER if request.isLearner else ConfChangeType.ADD_NODE
        await self.s.propose_conf_change(cc, mid, m)
        added = members.find(self.s.applier.members, mid) or m
        return rpc_pb2.MemberAddResponse(header=self._header(), member=members.to_etcd(added), members=self._list())

    @unary
    async def MemberRemove(self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.MemberRemoveResponse:
        ml = self.s.applier.members
        m = members.find(ml, request.ID)
        if m is None:
            raise errors.MEMBER_NOT_FOUND
        if not m.is_learner:  # (a learner never counts towards a quorum)
            if not self._on_leader(context):
                # (removing itself, this member will not apply it: it is out)
                return await self._forward("MemberRemove", request, context, catch_up=request.ID != self.s.member_id)
            if not members.ready_to_remove_voting(ml, request.ID):
                raise errors.MEMBER_NOT_ENOUGH_STARTED
            if not members.connected_enough_to_remove(_voting_ids(ml), self.s.member_id, request.ID,
                                                      self.s.node.in_contact()):
                raise errors.UNHEALTHY
        await self.s.propose_conf_change(ConfChangeType.REMOVE_NODE, request.ID, None)
        return rpc_pb2.MemberRemoveResponse(header=self._header(), members=self._list())

    @unary
    async def MemberUpdate(self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.MemberUpdateResponse:
        urls = list(request.peerURLs)
        _check_urls(urls)
        ml = self.s.applier.members
        if members.find(ml, request.ID) is None:
            raise errors.MEMBER_NOT_FOUND
        if members.peer_url_taken(ml, urls, except_id=request.ID):
            raise errors.PEER_U_R_L_EXIST
        await self.s.propose(
            internal_pb2.InternalRequest(member_update=internal_pb2.Member(id=request.ID, peer_urls=urls))
        )
        return rpc_pb2.MemberUpdateResponse(header=self._header(), members=self._list())

    @unary
    async def MemberPromote(self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.MemberPromoteResponse:
        m = members.find(self.s.applier.members, request.ID)
        if m is None:
            raise errors.MEMBER_NOT_FOUND
        if not m.is_learner:
            raise errors.MEMBER_NOT_LEARNER
        # Only the leader knows how far the learner got: forwarded to it, as
        # etcd does (over its peer HTTP /members/promote).
        if not self._on_leader(context):
            return await self._forward("MemberPromote", request, context)
        if not members.ready_to_promote(self.s.applier.members):
            raise errors.MEMBER_NOT_ENOUGH_STARTED
        raft = self.s.node.raft
        match = raft.progress().get(request.ID, (0, 0, ""))[0]
        if match < raft.log.committed * 0.9:
            raise errors.LEARNER_NOT_READY
        await self.s.propose_conf_change(ConfChangeType.ADD_NODE, request.ID, None)
        return rpc_pb2.MemberPromoteResponse(header=self._header(), members=self._list())

    def _on_leader(self, context: grpc.aio.ServicerContext) -> bool:
        """True on the leader; False if the call should go to the leader; a
        call forwarded to a member that is no longer leader fails (the client retries)."""
        if self.s.node.raft.role == Role.LEADER:
            return True
        if any(k == FORWARD_HEADER for k, _ in (context.invocation_metadata() or ())):
            raise errors.NOT_LEADER
        return False

    async def _forward(self, method: str, request: Any, context: grpc.aio.ServicerContext, catch_up: bool = True) -> Any:
        """The leader's answer, once this member applied the change too (a
        member list read next from it shows it)."""
        urls = self._leader_client_urls()
        if not urls:  # a leader that just started: its published URLs may not be applied here yet
            await self.s.read_barrier()
            urls = self._leader_client_urls()
        if not urls:
            raise errors.NO_LEADER
        async with self.s.member_channel(urls[0]) as ch:
            try:
                resp = await getattr(rpc_pb2_grpc.ClusterStub(ch), method)(
                    request, metadata=_forwarded_metadata(context), timeout=REQUEST_TIMEOUT
                )
            except grpc.aio.AioRpcError as e:
                raise EtcdError(e.code(), e.details() or "") from None
        resp.header.CopyFrom(self._header())
        if catch_up:
            try:
                await self.s.read_barrier()
            except EtcdError:
                return resp  # done on the leader all the same: its member list
            del resp.members[:]
            resp.members.extend(self._list())
        return resp


    def _leader_client_urls(self) -> list[str]:
        leader = self.s.node.leader
        return [] if leader == 0 else list(getattr(members.find(self.s.applier.members, leader), "client_urls", []))


def _voting_ids(ml: members.MemberList) -> list[int]:
    return [m.id for m in members.voters(ml)]


def _forwarded_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """Mark the call as forwarded (it is never forwarded again) and carry the
    caller's auth token, so the leader checks the same user."""
    md: list[tuple[str, str]] = [(FORWARD_HEADER, "1")]
    for k, v in context.invocation_metadata() or ():
        if k == "token":
            md.append((k, v))
    return tuple(md)
