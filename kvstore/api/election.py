"""v3electionpb.Election over gRPC: etcd's server-side election recipe.

The same recipe as clientv3's ``concurrency.Election``, which etcd runs
against itself to serve this API:

* Campaign puts ``name + "/" + "%x" % lease`` with the value and the lease
  ("create if absent"; a campaign with a lease that already has the key
  reuses it and proclaims the new value), then waits until every key of the
  election created before its own is gone. The leader is the key of the
  prefix with the smallest create_revision; ``LeaderKey.rev`` (the key's
  create_revision) is the fencing token Proclaim and Resign compare on.
* Like Lock, a campaign whose key vanished while it waited (its lease
  expired) fails with ``session expired`` instead of claiming leadership.
* Proclaim rewrites the value only while the key still has that
  create_revision (else ``election: not leader``); Resign deletes it under
  the same condition (and succeeds either way).
* Leader returns the current leader's key-value (``election: no leader``
  when there is none). Observe streams the current leader and then every
  change: new values of the leader key and, after its deletion, the next
  leader, with the header revision of the change.

Errors are reported as etcd reports them: code UNKNOWN with etcd's message
(transient UNAVAILABLE errors are kept as such, see lock.py).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, AsyncIterator

import grpc

from ..errors import EtcdError
from ..pb import kv_pb2, rpc_pb2, v3election_pb2, v3election_pb2_grpc
from .lease import check_not_learner
from .lock import (
    RECHECK_INTERVAL,
    SESSION_EXPIRED,
    RecipeError,
    Recipes,
    create_revision_is,
    first_create,
    prefix_end,
    recipe,
    recipe_error,
    session_key,
)

if TYPE_CHECKING:
    from ..server import KvServer

log = logging.getLogger("kvstore.api.election")

NOT_LEADER = "election: not leader"  # concurrency.ErrElectionNotLeader
NO_LEADER = "election: no leader"  # concurrency.ErrElectionNoLeader
MISSING_LEADER_KEY = '"leader" field must be provided'  # v3election.ErrMissingLeaderKey


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, server: KvServer, recipes: Recipes | None = None) -> None:
        self.s = server
        self.r = recipes or Recipes(server)

    async def _proclaim(self, key: bytes, rev: int, lease: int, value: bytes) -> rpc_pb2.ResponseHeader:
        resp, revision = await self.r.txn(
            rpc_pb2.TxnRequest(
                compare=[create_revision_is(key, rev)],
                success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))],
            )
        )
        if not resp.succeeded:
            raise RecipeError(NOT_LEADER)
        return self.s.header(revision)

    async def _resign(self, key: bytes, rev: int) -> rpc_pb2.ResponseHeader:
        _, revision = await self.r.txn(
            rpc_pb2.TxnRequest(
                compare=[create_revision_is(key, rev)],
                success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))],
            )
        )
        return self.s.header(revision)

    @recipe
    async def Campaign(
        self, request: v3election_pb2.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.CampaignResponse:
        r = self.r
        lease_id = await r.lease_for(request.lease)
        prefix = request.name + b"/"
        key = session_key(prefix, lease_id)
        resp, revision = await r.txn(
            rpc_pb2.TxnRequest(
                compare=[create_revision_is(key, 0)],
                success=[
                    rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=request.value, lease=lease_id))
                ],
                failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
            )
        )
        header = self.s.header(revision)
        leader_rev = revision
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            leader_rev = kv.create_revision
            if kv.value != request.value:
                try:
                    await self._proclaim(key, leader_rev, lease_id, request.value)
                except BaseException:
                    r.in_background(self._resign(key, leader_rev), f"resigning {key!r}")
                    raise
        try:
            await r.wait_deletes(prefix, leader_rev - 1)
            mine = await r.get(rpc_pb2.RangeRequest(key=key))
        except BaseException as e:
            if not isinstance(e, EtcdError):  # cancelled: give the place up (etcd's Resign)
                r.in_background(self._resign(key, leader_rev), f"resigning {key!r}")
            raise
        if not mine.kvs or mine.kvs[0].create_revision != leader_rev:
            raise RecipeError(SESSION_EXPIRED)
        return v3election_pb2.CampaignResponse(
            header=header,
            leader=v3election_pb2.LeaderKey(name=request.name, key=key, rev=leader_rev, lease=lease_id),
        )

    @recipe
    async def Proclaim(
        self, request: v3election_pb2.ProclaimRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ProclaimResponse:
        if not request.HasField("leader"):
            raise RecipeError(MISSING_LEADER_KEY)
        ld = request.leader
        header = await self._proclaim(ld.key, ld.rev, ld.lease, request.value)
        return v3election_pb2.ProclaimResponse(header=header)

    @recipe
    async def Resign(
        self, request: v3election_pb2.ResignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ResignResponse:
        if not request.HasField("leader"):
            raise RecipeError(MISSING_LEADER_KEY)
        header = await self._resign(request.leader.key, request.leader.rev)
        return v3election_pb2.ResignResponse(header=header)

    @recipe
    async def Leader(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.LeaderResponse:
        resp = await self.r.get(first_create(request.name + b"/"))
        if not resp.kvs:
            raise RecipeError(NO_LEADER)
        return v3election_pb2.LeaderResponse(header=resp.header, kv=resp.kvs[0])

    async def Observe(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        try:
            check_not_learner(self.s)
            async for resp in self._observe(request.name + b"/"):
                yield resp
        except EtcdError as e:
            await context.abort(*recipe_error(e))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in Observe")
            await context.abort(grpc.StatusCode.INTERNAL, "kvstore: internal error")

    async def _observe(self, prefix: bytes) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        """etcd's Election.observe on applied events: the leader, its updates,
        and after its deletion the next leader; never a gap, since the prefix
        subscription starts at the very read that found the leader."""
        r = self.r
        events = r.events
        query = first_create(prefix)
        while True:
            await self.s.read_barrier()
            found = self.s.store.range(query)
            sub = events.subscribe(prefix, prefix_end(prefix))  # no await since the read
            try:
                if found.kvs:
                    kv = found.kvs[0]
                    header = self.s.header()
                else:
                    kv = None
                    while kv is None:  # the first put on the prefix
                        ev = await sub.next(RECHECK_INTERVAL)
                        if ev is None:
                            if sub.reset:
                                break
                            continue
                        if ev.type == kv_pb2.Event.PUT:
                            kv = ev.kv
                            header = self.s.header(kv.mod_revision)
                    if kv is None:
                        continue  # events lost: look again
                yield v3election_pb2.LeaderResponse(header=header, kv=kv)
                key = kv.key
                while True:  # the leader key: new values until its deletion
                    ev = await sub.next(RECHECK_INTERVAL)
                    if ev is None:
                        if sub.reset:
                            break
                        continue
                    if ev.kv.key != key or ev.kv.mod_revision <= kv.mod_revision:
                        continue
                    if ev.type == kv_pb2.Event.DELETE:
                        break
                    yield v3election_pb2.LeaderResponse(header=self.s.header(ev.kv.mod_revision), kv=ev.kv)
            finally:
                events.unsubscribe(sub)
