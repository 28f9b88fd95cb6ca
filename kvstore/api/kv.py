"""etcdserverpb.KV over gRPC: validation here, semantics in MVCC."""
from __future__ import annotations

import grpc

from .. import errors
from ..pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from ..server import KvServer
from .common import unary


def check_key(key: bytes) -> None:
    if not key:
        raise errors.EMPTY_KEY


def check_txn(txn: rpc_pb2.TxnRequest, max_ops: int) -> None:
    if len(txn.success) > max_ops or len(txn.failure) > max_ops:
        raise errors.TOO_MANY_OPS
    for c in txn.compare:
        check_key(c.key)
    for op in list(txn.success) + list(txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_range":
            check_key(op.request_range.key)
        elif kind == "request_put":
            check_key(op.request_put.key)
        elif kind == "request_delete_range":
            check_key(op.request_delete_range.key)
        elif kind == "request_txn":
            check_txn(op.request_txn, max_ops)


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: KvServer) -> None:
        self.s = server

    @unary
    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.RangeResponse:
        check_key(request.key)
        if not request.serializable:
            await self.s.read_barrier()
        resp = self.s.store.range(request)
        resp.header.CopyFrom(self.s.header())
        return resp

    @unary
    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        check_key(request.key)
        res = await self.s.propose(internal_pb2.InternalRequest(put=request))
        res.response.header.CopyFrom(self.s.header(res.revision))
        return res.response

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        check_key(request.key)
        res = await self.s.propose(internal_pb2.InternalRequest(delete_range=request))
        res.response.header.CopyFrom(self.s.header(res.revision))
        return res.response

    @unary
    async def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.TxnResponse:
        check_txn(request, self.s.cfg.max_txn_ops)
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
