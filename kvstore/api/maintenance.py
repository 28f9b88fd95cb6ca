"""etcdserverpb.Maintenance: status, alarms, hashes, defrag, snapshots, leadership."""
from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from typing import AsyncIterator

import grpc

from raft.types import Role

from .. import bbolt, errors, members
from ..pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from ..server import KvServer
from .common import unary

SNAPSHOT_CHUNK = 64 * 1024


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: KvServer) -> None:
        self.s = server

    @unary
    async def Status(self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.StatusResponse:
        return self.s.status()

    @unary
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.AlarmResponse:
        if request.action == rpc_pb2.AlarmRequest.GET:
            resp = rpc_pb2.AlarmResponse(alarms=list(self.s.applier.alarms.alarms))
        else:
            res = await self.s.propose(internal_pb2.InternalRequest(alarm=request))
            resp = res.response
        resp.header.CopyFrom(self.s.header())
        return resp

    @unary
    async def Defragment(self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.DefragmentResponse:
        self.s.store.defragment()
        return rpc_pb2.DefragmentResponse(header=self.s.header())

    @unary
    async def Hash(self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashResponse:
        return rpc_pb2.HashResponse(header=self.s.header(), hash=self.s.store.hash())

    @unary
    async def HashKV(self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashKVResponse:
        h, compact_rev, rev = self.s.store.hash_kv(request.revision)
        return rpc_pb2.HashKVResponse(header=self.s.header(rev), hash=h, compact_revision=compact_rev)

    @unary
    async def MoveLeader(self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.MoveLeaderResponse:
        node = self.s.node
        if node.raft.role != Role.LEADER:
            raise errors.NOT_LEADER
        target = members.find(self.s.applier.members, request.targetID)
        if target is None or target.is_learner or request.targetID == self.s.member_id:
            raise errors.BAD_LEADER_TRANSFEREE
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self.s.cfg.election_timeout / 1000.0 + 1.0
        node.transfer_leader(request.targetID)
        while node.leader != request.targetID:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.TIMEOUT_DUE_TO_LEADER_FAIL
            try:
                await asyncio.wait_for(node.leader_changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return rpc_pb2.MoveLeaderResponse(header=self.s.header())

    async def Snapshot(self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """Streams a consistent copy of the store in etcd's backend format (a
        bbolt file, see kvstore.bbolt.write_snapshot, so that etcdctl's
        ``snapshot status``/``restore`` and etcd itself accept it) followed by
        its SHA-256, as etcd does, so a receiver can verify the file. (Raft
        snapshots between members stay LMDB copies: KvServer's copy_to.)"""
        fd, path = tempfile.mkstemp(prefix="snapshot-", dir=os.path.join(self.s.member_dir, "snap"))
        os.close(fd)
        try:
            await asyncio.get_running_loop().run_in_executor(None, bbolt.write_snapshot, self.s.store, path)
            size = os.path.getsize(path)
            digest = hashlib.sha256()
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(SNAPSHOT_CHUNK):
                    digest.update(chunk)
                    sent += len(chunk)
                    yield rpc_pb2.SnapshotResponse(header=self.s.header(), remaining_bytes=size - sent + 32, blob=chunk)
            yield rpc_pb2.SnapshotResponse(header=self.s.header(), remaining_bytes=0, blob=digest.digest())
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
