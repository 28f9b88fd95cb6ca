"""etcdserverpb.KV over gRPC: validation here, semantics in MVCC."""
from __future__ import annotations

import grpc

from ..mvcc import check_delete, check_put, check_range, check_txn, is_txn_readonly
from ..pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from ..server import KvServer
from .authz import txn_serializable
from .common import check_quota, unary


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: KvServer) -> None:
        self.s = server

    @unary
    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.RangeResponse:
        check_range(request)
        if not request.serializable:
            await self.s.read_barrier()
        resp = self.s.store.range(request)
        resp.header.CopyFrom(self.s.header())
        return resp

    @unary
    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        check_put(request)
        await check_quota(self.s, request)
        res = await self.s.propose(internal_pb2.InternalRequest(put=request))
        res.response.header.CopyFrom(self.s.header(res.revision))
        return res.response

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        check_delete(request)
        res = await self.s.propose(internal_pb2.InternalRequest(delete_range=request))
        res.response.header.CopyFrom(self.s.header(res.revision))
        return res.response

    @unary
    async def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.TxnResponse:
        check_txn(request, self.s.cfg.max_txn_ops)
        if is_txn_readonly(request):
            # Like etcd: a read-only txn needs a read point, not a log entry.
            if not txn_serializable(request):
                await self.s.read_barrier()
            resp = self.s.store.txn(request)
            resp.header.CopyFrom(self.s.header())
            return resp
        await check_quota(self.s, request)
        res = await self.s.propose(internal_pb2.InternalRequest(txn=request))
        res.response.header.CopyFrom(self.s.header(res.revision))
        return res.response

    @unary
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        res = await self.s.propose(internal_pb2.InternalRequest(compaction=request))
        res.response.header.CopyFrom(self.s.header(res.revision))
        return res.response

