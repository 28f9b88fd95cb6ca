"""Request validation exactly as etcd 3.4's gRPC layer does it
(``etcdserver/api/v3rpc/key.go``), plus etcd's quota cost functions.

The API layer should call these *before* proposing a request (as etcd
does); ``WriteBatch`` calls them again at apply time, which is cheap and
keeps a bad entry from ever touching the store.
"""
from __future__ import annotations

from typing import Any, List, Set, Tuple

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


# RequestOp kinds (``WhichOneof("request")``)
OP_RANGE = "request_range"
OP_PUT = "request_put"
OP_DELETE = "request_delete_range"
OP_TXN = "request_txn"

Op = Tuple[str, Any]  # (kind, the sub-request; a TxnOps for OP_TXN)


class TxnOps:
    """A TxnRequest taken apart into Python lists, once: protobuf repeated
    fields and oneofs are slow to walk, and applying a txn walks it several
    times (validation, compares, checks, execution)."""

    __slots__ = ("compare", "success", "failure")

    def __init__(self, compare: List[rpc_pb2.Compare], success: List[Op], failure: List[Op]) -> None:
        self.compare = compare
        self.success = success
        self.failure = failure


def check_txn(r: rpc_pb2.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """checkTxnRequest, then checkIntervals on both branches (kvServer.Txn)."""
    txn_ops(r, max_txn_ops)


def txn_ops(r: rpc_pb2.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> TxnOps:
    """check_txn, returning the request taken apart (TxnOps)."""
    t = _txn_request_ops(r, max_txn_ops)
    _check_intervals(t.success)
    _check_intervals(t.failure)
    return t


def _txn_request_ops(r: rpc_pb2.TxnRequest, max_txn_ops: int) -> TxnOps:
    """checkTxnRequest (errors in etcd's order) while taking ``r`` apart."""
    compare = r.compare[:]  # slicing is the cheapest way to a list of a repeated field
    success = r.success[:]
    failure = r.failure[:]
    opc = max(len(compare), len(success), len(failure))
    if opc > max_txn_ops:
        raise errors.TOO_MANY_OPS
    for c in compare:
        if not c.key:
            raise errors.EMPTY_KEY
    left = max_txn_ops - opc
    return TxnOps(compare, _request_ops(success, left), _request_ops(failure, left))


def _request_ops(reqs: List[rpc_pb2.RequestOp], max_txn_ops: int) -> List[Op]:
    """checkRequestOp for each op of a branch: [(kind, sub-request)]."""
    out: List[Op] = []
    for u in reqs:
        which = u.WhichOneof("request")
        if which == OP_PUT:
            sub: Any = u.request_put
            check_put(sub)
        elif which == OP_RANGE:
            sub = u.request_range
            check_range(sub)
        elif which == OP_DELETE:
            sub = u.request_delete_range
            check_delete(sub)
        elif which == OP_TXN:
            sub = _txn_request_ops(u.request_txn, max_txn_ops)
        else:  # empty op
            raise errors.KEY_NOT_FOUND
        out.append((which, sub))
    return out


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


def _check_intervals(ops: List[Op]) -> Tuple[Set[bytes], List[Interval]]:
    """etcd's checkIntervals: puts and deletes of one branch must not overlap,
    recursively through nested txns; overlapping deletes are allowed."""
    dels: List[Interval] = []
    put_keys: List[bytes] = []
    txns: List[TxnOps] = []
    for which, sub in ops:
        if which == OP_PUT:
            put_keys.append(sub.key)
        elif which == OP_DELETE:
            k = sub.key
            dels.append((k, sub.range_end or k + b"\x00"))
        elif which == OP_TXN:
            txns.append(sub)

    puts: Set[bytes] = set()
    for t in txns:
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

    for k in put_keys:
        if k in puts:
            raise errors.DUPLICATE_KEY
        if dels and _intersects_point(dels, k):
            raise errors.DUPLICATE_KEY
        puts.add(k)
    return puts, dels


def ops_readonly(t: TxnOps) -> bool:
    """is_txn_readonly of a taken-apart txn."""
    return all(w == OP_RANGE for w, _ in t.success) and all(w == OP_RANGE for w, _ in t.failure)


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
