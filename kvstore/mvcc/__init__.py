"""etcd 3.4's MVCC key-value store (and its lease table) on LMDB.

``MvccStore`` holds the committed state and serves local reads;
``MvccStore.write()`` opens a ``WriteBatch`` (one LMDB write transaction) in
which the apply loop applies a batch of Raft entries. ``validate`` has the
request checks etcd's gRPC layer does before proposing.

Semantics are etcd 3.4.23's (checked differentially against the real binary
in tests/test_mvcc_etcd.py), including its quirks: reads inside a txn see the
txn's earlier writes; nested txn compares are all evaluated at txn start; a
non-KEY sort_target with sort_order NONE sorts only the first limit+1 keys;
Range ``count`` is taken before the min/max revision filters; ties in sorted
ranges come out in Go 1.19 ``sort.Sort`` order; a Range at the compacted
revision itself is allowed, below it is COMPACTED; ``compact(0)`` succeeds once
on a never-compacted store; ``hash_kv`` is bit-identical to etcd's HashKV.

Where we differ on purpose:
- ``events()`` raises COMPACTED for start_rev <= the compacted revision (etcd:
  < , but a tombstone at exactly that revision is already gone, so etcd's
  watch would silently miss it).
- Quota: a write is never refused because of the local file size, which
  differs between members (etcd applies such writes too and only changes the
  reply). The API layer checks ``available(req)`` before proposing and raises
  the NOSPACE alarm on ``over_quota()``; while the replicated alarm is active
  the caller sets ``store.capped = True`` and puts / txns with puts / lease
  grants raise NO_SPACE (etcd's applierV3Capped). NO_SPACE is also raised
  before a write that could fill the LMDB map (map_size defaults to
  2 x quota_bytes), which would otherwise poison the whole batch.
- A txn whose ``ignore_value``/``ignore_lease`` put lost its key to an earlier
  delete in the same txn (etcd panics) fails with KEY_NOT_FOUND and leaves
  nothing behind.

Threads: reads may run in any thread, also while a batch is open;
``defragment``/``restore``/``close`` reopen the environment and must not run
concurrently with anything else on the store.
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
