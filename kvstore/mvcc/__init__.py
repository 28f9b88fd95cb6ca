"""etcd 3.4's MVCC key-value store (and its lease table) on LMDB.

``MvccStore`` holds the committed state and serves local reads;
``MvccStore.write()`` opens a ``WriteBatch`` (one LMDB write transaction) in
which the apply loop applies a batch of Raft entries. ``validate`` has the
request checks etcd's gRPC layer does before proposing.
"""
from .store import MAX_LEASE_TTL, MvccStore, WriteBatch
from .validate import (
    DEFAULT_MAX_TXN_OPS,
    check_delete,
    check_put,
    check_range,
    check_txn,
    is_txn_readonly,
    request_cost,
)

__all__ = [
    "MvccStore",
    "WriteBatch",
    "MAX_LEASE_TTL",
    "DEFAULT_MAX_TXN_OPS",
    "check_range",
    "check_put",
    "check_delete",
    "check_txn",
    "is_txn_readonly",
    "request_cost",
]
