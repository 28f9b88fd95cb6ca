"""etcdserverpb.Cluster: the member list mapped onto Raft membership changes."""
from __future__ import annotations

import grpc

from raft.types import ConfChangeType, Role

from .. import errors, members
from ..config import ConfigError, check_url, member_id
from ..errors import EtcdError
from ..pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from ..server import REQUEST_TIMEOUT, KvServer
from .common import unary

PROMOTE_FORWARD_HEADER = "kvstore-promote-forwarded"  # set on a follower → leader call


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
        m = internal_pb2.Member(id=mid, peer_urls=urls, is_learner=request.isLearner)
        cc = ConfChangeType.ADD_LEARNER if request.isLearner else ConfChangeType.ADD_NODE
        await self.s.propose_conf_change(cc, mid, m)
        added = members.find(self.s.applier.members, mid) or m
        return rpc_pb2.MemberAddResponse(header=self._header(), member=members.to_etcd(added), members=self._list())

    @unary
    async def MemberRemove(self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.MemberRemoveResponse:
        if members.find(self.s.applier.members, request.ID) is None:
            raise errors.MEMBER_NOT_FOUND
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
        raft = self.s.node.raft
        if raft.role != Role.LEADER:
            # Only the leader knows how far the learner got: forward to it
            # once, as etcd does (over its peer HTTP /members/promote).
            if any(k == PROMOTE_FORWARD_HEADER for k, _ in (context.invocation_metadata() or ())):
                raise errors.NOT_LEADER
            return await self._forward_promote(request, context)
        match = raft.progress().get(request.ID, (0, 0, ""))[0]
        if match < raft.log.committed * 0.9:
            raise errors.LEARNER_NOT_READY
        await self.s.propose_conf_change(ConfChangeType.ADD_NODE, request.ID, None)
        return rpc_pb2.MemberPromoteResponse(header=self._header(), members=self._list())

    async def _forward_promote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        leader = self.s.node.leader
        urls = [] if leader == 0 else list(getattr(members.find(self.s.applier.members, leader), "client_urls", []))
        if not urls:
            raise errors.NO_LEADER
        async with self.s.member_channel(urls[0]) as ch:
            try:
                resp = await rpc_pb2_grpc.ClusterStub(ch).MemberPromote(
                    request, metadata=_forwarded_metadata(context), timeout=REQUEST_TIMEOUT
                )
            except grpc.aio.AioRpcError as e:
                raise EtcdError(e.code(), e.details() or "") from None
        return rpc_pb2.MemberPromoteResponse(header=self._header(), members=list(resp.members))


def _forwarded_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """Mark the call as forwarded (it is never forwarded again) and carry the
    caller's auth token, so the leader checks the same user."""
    md: list[tuple[str, str]] = [(PROMOTE_FORWARD_HEADER, "1")]
    for k, v in context.invocation_metadata() or ():
        if k == "token":
            md.append((k, v))
    return tuple(md)
