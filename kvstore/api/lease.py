"""etcdserverpb.Lease over gRPC.

Grant and Revoke are Raft proposals; KeepAlive and TimeToLive are answered
from the leader's lessor (forwarded by ``LeaseRouter`` when this member
follows); Leases lists this member's applied lease table. Responses and
errors are etcd 3.4's, including its quirks: a keep-alive or time-to-live of
an unknown lease is not an error (TTL 0, resp. TTL -1).
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from .. import errors
from ..errors import EtcdError
from ..lease import FORWARD_HEADER, RETRY_TTL, LeaseRouter
from ..pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from .common import check_quota, unary

if TYPE_CHECKING:
    from ..server import KvServer

log = logging.getLogger("kvstore.api.lease")


REQUIRE_LEADER_KEY = "hasleader"  # rpctypes.MetadataRequireLeaderKey

# etcd's gRPC interceptor refuses every Lease/Lock/Election call on a learner.
NOT_SUPPORTED_FOR_LEARNER = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner")


def check_not_learner(server: "KvServer") -> None:
    if server.is_learner():
        raise NOT_SUPPORTED_FOR_LEARNER


def _forwarded(context: grpc.aio.ServicerContext) -> bool:
    return any(k == FORWARD_HEADER for k, _ in (context.invocation_metadata() or ()))


async def grant(server: KvServer, ttl: int, lease_id: int = 0) -> rpc_pb2.LeaseGrantResponse:
    """Grant through Raft (also used by Lock/Campaign without a lease)."""
    lessor = server.lessor
    ttl = lessor.grant_ttl(ttl)
    if lease_id == 0:
        lease_id = lessor.new_id()
    res = await server.propose(
        internal_pb2.InternalRequest(lease_grant=rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id))
    )
    resp = res.response
    resp.header.CopyFrom(server.header(res.revision))
    return resp


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, server: KvServer) -> None:
        self.s = server
        self.router = LeaseRouter(server)

    @unary
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        check_not_learner(self.s)
        await check_quota(self.s, request)
        return await grant(self.s, request.TTL, request.ID)

    @unary
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        check_not_learner(self.s)
        if request.ID == 0:
            raise errors.LEASE_NOT_FOUND
        res = await self.s.propose(
            internal_pb2.InternalRequest(lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=request.ID))
        )
        resp = res.response if res.response is not None else rpc_pb2.LeaseRevokeResponse()
        resp.header.CopyFrom(self.s.header(res.revision))
        return resp

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        if self.s.is_learner():
            await context.abort(NOT_SUPPORTED_FOR_LEARNER.code, NOT_SUPPORTED_FOR_LEARNER.message)
        metadata = context.invocation_metadata() or ()
        if any(k == REQUIRE_LEADER_KEY and v == "true" for k, v in metadata) and not self.s.has_leader():
            # clientv3 opens keep-alive streams WithRequireLeader: refuse at
            # once, as etcd's interceptor does, so the client tries elsewhere.
            await context.abort(errors.NO_LEADER.code, errors.NO_LEADER.message)
        if _forwarded(context):
            async for resp in self._forwarded_keepalive(request_iterator):
                yield resp
            return
        try:
            async for req in request_iterator:
                try:
                    ttl = await self.router.renew(req.ID)
                except EtcdError as e:
                    if e.message != errors.LEASE_NOT_FOUND.message:
                        raise
                    ttl = 0
                yield rpc_pb2.LeaseKeepAliveResponse(header=self.s.header(), ID=req.ID, TTL=ttl)
        except EtcdError as e:
            await context.abort(e.code, e.message)
        except grpc.aio.AbortError:
            raise
        except DecodeError as e:
            # The client's bytes, not our fault: an error for it, one quiet line for us.
            log.debug("undecodable LeaseKeepAlive message: %s", e)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "kvstore: malformed request message")
        except Exception:
            log.exception("internal error in LeaseKeepAlive")
            await context.abort(grpc.StatusCode.INTERNAL, "kvstore: internal error")

    async def _forwarded_keepalive(
        self, request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest]
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        """The member-to-member dialect (see kvstore.lease.RETRY_TTL):
        concurrent renewals, answers matched by ID, TTL -1 = retry elsewhere."""
        out: asyncio.Queue[rpc_pb2.LeaseKeepAliveResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(lease_id: int) -> None:
            try:
                ttl = await self.router.renew(lease_id, forwarded=True)
            except EtcdError as e:
                ttl = 0 if e.message == errors.LEASE_NOT_FOUND.message else RETRY_TTL
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("forwarded renewal of %x failed", lease_id)
                ttl = RETRY_TTL
            out.put_nowait(rpc_pb2.LeaseKeepAliveResponse(header=self.s.header(), ID=lease_id, TTL=ttl))

        async def pump() -> None:
            try:
                async for req in request_iterator:
                    t = asyncio.ensure_future(one(req.ID))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            except Exception:
                pass
            finally:
                out.put_nowait(None)

        reader = asyncio.ensure_future(pump())
        try:
            while (resp := await out.get()) is not None:
                yield resp
        finally:
            reader.cancel()
            for t in list(tasks):
                t.cancel()

    @unary
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        check_not_learner(self.s)
        try:
            resp = await self.router.time_to_live(request.ID, request.keys, _forwarded(context))
        except EtcdError as e:
            if e.message != errors.LEASE_NOT_FOUND.message:
                raise
            resp = rpc_pb2.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
        rev = resp.header.revision
        resp.header.CopyFrom(self.s.header(rev or None))
        return resp

    @unary
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        check_not_learner(self.s)
        return rpc_pb2.LeaseLeasesResponse(
            header=self.s.header(),
            leases=[rpc_pb2.LeaseStatus(ID=lid) for lid in self.s.lessor.lease_ids()],
        )
