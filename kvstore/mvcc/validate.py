"""Request validation exactly as etcd 3.4's gRPC layer does it
(``etcdserver/api/v3rpc/key.go``), plus etcd's quota cost functions.

The API layer should call these *before* proposing a request (as etcd
does); ``WriteBatch`` calls them again at apply time, which is cheap and
keeps a bad entry from ever touching the store.
"""
from __future__ import annotations

from typing import List, Set, Tuple

from kvstore import errors
from kvstore.pb import rpc_pb2

DEFAULT_MAX_TXN_OPS = 128

# etcdserver/quota.go
KV_OVERHEAD = 256
LEASE_OVERHEAD = 64


def check_range(r: rpc_pb2.RangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_put(r: rpc_pb2.PutRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    if r.ignore_value and r.value:
        raise errors.VALUE_PROVIDED
    if r.ignore_lease and r.lease != 0:
        raise errors.LEASE_PROVIDED


def check_delete(r: rpc_pb2.DeleteRangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_txn(r: rpc_pb2.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """checkTxnRequest, then checkIntervals on both branches (kvServer.Txn)."""
    _check_txn_request(r, max_txn_ops)
    _check_intervals(r.success)
    _check_intervals(r.failure)


def _check_txn_request(r: rpc_pb2.TxnRequest, max_txn_ops: int) -> None:
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_txn_ops:
        raise errors.TOO_MANY_OPS
    for c in r.compare:
        if not c.key:
            raise errors.EMPTY_KEY
    for u in r.success:
        _check_request_op(u, max_txn_ops - opc)
    for u in r.failure:
        _check_request_op(u, max_txn_ops - opc)


def _check_request_op(u: rpc_pb2.RequestOp, max_txn_ops: int) -> None:
    which = u.WhichOneof("request")
    if which == "request_range":
        check_range(u.request_range)
    elif which == "request_put":
        check_put(u.request_put)
    elif which == "request_delete_range":
        check_delete(u.request_delete_range)
    elif which == "request_txn":
        _check_txn_request(u.request_txn, max_txn_ops)
    else:  # empty op
        raise errors.KEY_NOT_FOUND


# An interval is (begin, end) over etcd's "string affine" order, where an
# empty end is +infinity. A single key k is the point (k, k + b"\0").
Interval = Tuple[bytes, bytes]


def _intersects_point(dels: List[Interval], k: bytes) -> bool:
    # adt.IntervalTree.Intersects(NewStringAffinePoint(k)): some [b, e) with
    # b <= k < e (e == b"" meaning unbounded). Note that a delete with
    # range_end "\0" is the interval [key, "\0") which contains no key at all:
    # etcd does not see it as overlapping any put, and neither do we.
    for b, e in dels:
        if b <= k and (not e or k < e):
            return True
    return False


def _check_intervals(reqs) -> Tuple[Set[bytes], List[Interval]]:
    """etcd's checkIntervals: puts and deletes of one branch must not overlap,
    recursively through nested txns; overlapping deletes are allowed."""
    dels: List[Interval] = []
    for req in reqs:
        if req.WhichOneof("request") != "request_delete_range":
            continue
        d = req.request_delete_range
        if d.range_end:
            dels.append((d.key, d.range_end))
        else:
            dels.append((d.key, d.key + b"\x00"))

    puts: Set[bytes] = set()
    for req in reqs:
        if req.WhichOneof("request") != "request_txn":
            continue
        t = req.request_txn
        puts_then, dels_then = _check_intervals(t.success)
        puts_else, dels_else = _check_intervals(t.failure)
        for k in sorted(puts_then):
            if k in puts:
                raise errors.DUPLICATE_KEY
            if _intersects_point(dels, k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        for k in sorted(puts_else):
            if k in puts and k not in puts_then:
                raise errors.DUPLICATE_KEY
            if _intersects_point(dels, k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        # dels.Union(child, ["\x00", "")): intervals ending exactly at "\x00"
        # are not carried over (they are empty anyway).
        dels.extend(iv for iv in dels_then if iv[1] != b"\x00")
        dels.extend(iv for iv in dels_else if iv[1] != b"\x00")

    for req in reqs:
        if req.WhichOneof("request") != "request_put":
            continue
        k = req.request_put.key
        if k in puts:
            raise errors.DUPLICATE_KEY
        if _intersects_point(dels, k):
            raise errors.DUPLICATE_KEY
        puts.add(k)
    return puts, dels


def is_txn_readonly(r: rpc_pb2.TxnRequest) -> bool:
    """etcd's isTxnReadonly: every op of both branches is a range (a nested
    txn counts as a write)."""
    for u in r.success:
        if u.WhichOneof("request") != "request_range":
            return False
    for u in r.failure:
        if u.WhichOneof("request") != "request_range":
            return False
    return True


def _cost_put(r: rpc_pb2.PutRequest) -> int:
    return KV_OVERHEAD + len(r.key) + len(r.value)


def request_cost(r) -> int:
    """etcd's backendQuota.Cost: bytes a request may add (0 = not mutating)."""
    if isinstance(r, rpc_pb2.PutRequest):
        return _cost_put(r)
    if isinstance(r, rpc_pb2.TxnRequest):
        s = sum(_cost_put(u.request_put) for u in r.success if u.WhichOneof("request") == "request_put")
        f = sum(_cost_put(u.request_put) for u in r.failure if u.WhichOneof("request") == "request_put")
        return max(s, f)
    if isinstance(r, rpc_pb2.LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0
