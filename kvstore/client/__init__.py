"""Python client for kvstore (and etcd): the v3 API over gRPC.

    from kvstore.client import Client, value, put, get

    with Client("127.0.0.1:2379,127.0.0.1:22379") as c:
        c.put("/config/app/db-host", "db1")
        kv = c.get("/config/app/db-host")            # KeyValue or None
        r = c.get_prefix("/config/app/")            # RangeResult: kvs, count, revision
        c.txn().if_(value("/leader") == "me").then(put("/x", "1")).else_(get("/leader")).commit()
        with c.lease(10) as lease:                  # kept alive until the block ends
            c.put("/services/me", "up", lease=lease.id)
        with c.lock("/locks/jobs", ttl=10) as lk:   # lk.key, lk.revision: fencing token
            c.txn().if_(lk.guard()).then(put("/jobs/last", "me")).commit()
        for ev in c.watch_prefix("/config/app/"):   # survives node failures, no gaps, no repeats
            print(ev.type, ev.key, ev.value)

``AsyncClient`` offers the same operations as coroutines. See
``kvstore.client.core`` for which operations are retried after which failures,
and ``kvstore.client.errors`` for what each error means.
"""
from .aio import (
    AsyncClient,
    AsyncElection,
    AsyncLeadership,
    AsyncLease,
    AsyncLock,
    AsyncWatch,
)
from .backoff import Backoff, Deadline, parse_duration
from .errors import (
    AuthFailed,
    ClientError,
    Compacted,
    LeaseExpired,
    LeaseNotFound,
    LockTimeout,
    NoSpace,
    NotLeader,
    OutcomeUnknown,
    PermissionDenied,
    ServerError,
    Timeout,
    Unavailable,
    WatchCompacted,
    WatchError,
)
from .model import (
    Alarm,
    DeleteResult,
    Event,
    Header,
    KeyValue,
    LeaseGrant,
    LeaseTTL,
    Member,
    PutResult,
    RangeResult,
    Status,
    TxnResult,
    prefix_end,
)
from .sync import (
    Client,
    Election,
    Leadership,
    Lease,
    Lock,
    Observation,
    SnapshotInfo,
    Watch,
)
from .txn import (
    Compare,
    Op,
    TxnBuilder,
    compare,
    create_revision,
    delete,
    get,
    lease,
    mod_revision,
    put,
    txn_op,
    value,
    version,
)

__all__ = [
    "Alarm",
    "AsyncClient",
    "AsyncElection",
    "AsyncLeadership",
    "AsyncLease",
    "AsyncLock",
    "AsyncWatch",
    "AuthFailed",
    "Backoff",
    "Client",
    "ClientError",
    "Compacted",
    "Compare",
    "Deadline",
    "DeleteResult",
    "Election",
    "Event",
    "Header",
    "KeyValue",
    "Leadership",
    "Lease",
    "LeaseExpired",
    "LeaseGrant",
    "LeaseNotFound",
    "LeaseTTL",
    "Lock",
    "LockTimeout",
    "Member",
    "NoSpace",
    "NotLeader",
    "Observation",
    "Op",
    "OutcomeUnknown",
    "PermissionDenied",
    "PutResult",
    "RangeResult",
    "ServerError",
    "SnapshotInfo",
    "Status",
    "Timeout",
    "TxnBuilder",
    "TxnResult",
    "Unavailable",
    "Watch",
    "WatchCompacted",
    "WatchError",
    "compare",
    "create_revision",
    "delete",
    "get",
    "lease",
    "mod_revision",
    "parse_duration",
    "prefix_end",
    "put",
    "txn_op",
    "value",
    "version",
]
