"""Plain result types and the request builders / response decoders shared by
the sync and asyncio clients (no I/O here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from ..pb import kv_pb2, rpc_pb2

Bytesish = Union[str, bytes]


def to_bytes(v: Bytesish | int | None) -> bytes:
    if v is None:
        return b""
    if isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode()
    raise TypeError(f"expected str or bytes, got {type(v).__name__}")


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix`` (etcd's
    GetPrefixRangeEnd; ``b"\\0"`` = to the end of the key space)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def key_range(key: Bytesish, range_end: Bytesish | None = None, prefix: bool = False,
              from_key: bool = False) -> tuple[bytes, bytes]:
    k = to_bytes(key)
    if prefix:
        if range_end is not None:
            raise ValueError("prefix and range_end are exclusive")
        if not k:  # the whole key space
            return b"\0", b"\0"
        return k, prefix_end(k)
    if from_key:
        return k or b"\0", b"\0"
    return k, to_bytes(range_end)


@dataclass(frozen=True)
class Header:
    cluster_id: int = 0
    member_id: int = 0
    revision: int = 0
    raft_term: int = 0

    @classmethod
    def of(cls, h: rpc_pb2.ResponseHeader) -> Header:
        return cls(h.cluster_id, h.member_id, h.revision, h.raft_term)


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def of(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)

    @property
    def key_text(self) -> str:
        return self.key.decode("utf-8", "replace")

    @property
    def value_text(self) -> str:
        return self.value.decode("utf-8", "replace")


@dataclass(frozen=True)
class Event:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def key(self) -> bytes:
        return self.kv.key

    @property
    def value(self) -> bytes:
        return self.kv.value

    @property
    def revision(self) -> int:
        """The revision of the change (a delete's kv carries it too)."""
        return self.kv.mod_revision

    @classmethod
    def of(cls, ev: kv_pb2.Event) -> Event:
        return cls(
            "DELETE" if ev.type == kv_pb2.Event.DELETE else "PUT",
            KeyValue.of(ev.kv),
            KeyValue.of(ev.prev_kv) if ev.HasField("prev_kv") else None,
        )


@dataclass(frozen=True)
class RangeResult:
    kvs: list[KeyValue]
    count: int
    more: bool
    header: Header

    @property
    def revision(self) -> int:
        return self.header.revision

    def __iter__(self):
        return iter(self.kvs)

    def __len__(self) -> int:
        return len(self.kvs)


@dataclass(frozen=True)
class PutResult:
    header: Header
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.header.revision


@dataclass(frozen=True)
class DeleteResult:
    deleted: int
    header: Header
    prev_kvs: list[KeyValue] = field(default_factory=list)

    @property
    def revision(self) -> int:
        return self.header.revision


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    responses: list[RangeResult | PutResult | DeleteResult | TxnResult]
    header: Header
    retried: bool = False  # a guarded txn that was sent again after an ambiguous failure

    @property
    def revision(self) -> int:
        return self.header.revision


@dataclass(frozen=True)
class LeaseGrant:
    id: int
    ttl: int
    header: Header


@dataclass(frozen=True)
class LeaseTTL:
    id: int
    ttl: int  # remaining seconds; -1 = the lease does not exist
    granted_ttl: int
    keys: list[bytes]


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool = False

    @classmethod
    def of(cls, m: rpc_pb2.Member) -> Member:
        return cls(m.ID, m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner)


@dataclass(frozen=True)
class Status:
    endpoint: str
    version: str
    db_size: int
    db_size_in_use: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: list[str]
    is_learner: bool
    header: Header

    @property
    def member_id(self) -> int:
        return self.header.member_id

    @property
    def is_leader(self) -> bool:
        return self.leader != 0 and self.leader == self.header.member_id


@dataclass(frozen=True)
class Alarm:
    member_id: int
    alarm: str


# -- decoders (response -> result) -------------------------------------------------------


def decode_range(r: rpc_pb2.RangeResponse) -> RangeResult:
    return RangeResult([KeyValue.of(kv) for kv in r.kvs], r.count, r.more, Header.of(r.header))


def decode_put(r: rpc_pb2.PutResponse) -> PutResult:
    return PutResult(Header.of(r.header), KeyValue.of(r.prev_kv) if r.HasField("prev_kv") else None)


def decode_delete(r: rpc_pb2.DeleteRangeResponse) -> DeleteResult:
    return DeleteResult(r.deleted, Header.of(r.header), [KeyValue.of(kv) for kv in r.prev_kvs])


def decode_txn(r: rpc_pb2.TxnResponse, retried: bool = False) -> TxnResult:
    out: list = []
    for op in r.responses:
        kind = op.WhichOneof("response")
        if kind == "response_range":
            out.append(decode_range(op.response_range))
        elif kind == "response_put":
            out.append(decode_put(op.response_put))
        elif kind == "response_delete_range":
            out.append(decode_delete(op.response_delete_range))
        elif kind == "response_txn":
            out.append(decode_txn(op.response_txn))
    return TxnResult(r.succeeded, out, Header.of(r.header), retried)


def decode_first(r: rpc_pb2.RangeResponse) -> KeyValue | None:
    return KeyValue.of(r.kvs[0]) if r.kvs else None


def decode_grant(r: rpc_pb2.LeaseGrantResponse) -> LeaseGrant:
    if r.error:
        from .errors import ServerError

        raise ServerError(r.error)
    return LeaseGrant(r.ID, r.TTL, Header.of(r.header))


def decode_ttl(r: rpc_pb2.LeaseTimeToLiveResponse) -> LeaseTTL:
    return LeaseTTL(r.ID, r.TTL, r.grantedTTL, list(r.keys))


def decode_members(r) -> list[Member]:
    return [Member.of(m) for m in r.members]


def decode_status(endpoint: str):
    def dec(r: rpc_pb2.StatusResponse) -> Status:
        return Status(
            endpoint, r.version, r.dbSize, r.dbSizeInUse, r.leader, r.raftIndex, r.raftTerm,
            r.raftAppliedIndex, list(r.errors), r.isLearner, Header.of(r.header),
        )

    return dec


def decode_alarms(r: rpc_pb2.AlarmResponse) -> list[Alarm]:
    return [Alarm(a.memberID, rpc_pb2.AlarmType.Name(a.alarm)) for a in r.alarms]


# -- request builders ------------------------------------------------------------------------

_SORT_ORDER = {"none": 0, "ascend": 1, "descend": 2}
_SORT_TARGET = {"key": 0, "version": 1, "create": 2, "mod": 3, "modify": 3, "value": 4}


def range_request(
    key: Bytesish,
    range_end: Bytesish | None = None,
    *,
    prefix: bool = False,
    from_key: bool = False,
    revision: int = 0,
    limit: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
    serializable: bool = False,
    sort_order: str = "none",
    sort_target: str = "key",
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> rpc_pb2.RangeRequest:
    k, end = key_range(key, range_end, prefix, from_key)
    try:
        order, target = _SORT_ORDER[sort_order.lower()], _SORT_TARGET[sort_target.lower()]
    except KeyError:
        raise ValueError(f"bad sort order/target {sort_order!r}/{sort_target!r}") from None
    return rpc_pb2.RangeRequest(
        key=k, range_end=end, revision=revision, limit=limit, keys_only=keys_only,
        count_only=count_only, serializable=serializable, sort_order=order, sort_target=target,
        min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
        min_create_revision=min_create_revision, max_create_revision=max_create_revision,
    )


def put_request(key: Bytesish, value: Bytesish, *, lease: int = 0, prev_kv: bool = False,
                ignore_value: bool = False, ignore_lease: bool = False) -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease, prev_kv=prev_kv,
                              ignore_value=ignore_value, ignore_lease=ignore_lease)


def delete_request(key: Bytesish, range_end: Bytesish | None = None, *, prefix: bool = False,
                   from_key: bool = False, prev_kv: bool = False) -> rpc_pb2.DeleteRangeRequest:
    k, end = key_range(key, range_end, prefix, from_key)
    return rpc_pb2.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)


def watch_create(
    key: Bytesish, range_end: Bytesish | None = None, *, prefix: bool = False, from_key: bool = False,
    start_revision: int = 0, prev_kv: bool = False, progress_notify: bool = False,
    no_put: bool = False, no_delete: bool = False,
) -> rpc_pb2.WatchCreateRequest:
    k, end = key_range(key, range_end, prefix, from_key)
    filters = []
    if no_put:
        filters.append(rpc_pb2.WatchCreateRequest.NOPUT)
    if no_delete:
        filters.append(rpc_pb2.WatchCreateRequest.NODELETE)
    return rpc_pb2.WatchCreateRequest(key=k, range_end=end, start_revision=start_revision, prev_kv=prev_kv,
                                      progress_notify=progress_notify, filters=filters)


def txn_has_writes(t: rpc_pb2.TxnRequest) -> bool:
    for op in list(t.success) + list(t.failure):
        kind = op.WhichOneof("request")
        if kind in ("request_put", "request_delete_range"):
            return True
        if kind == "request_txn" and txn_has_writes(op.request_txn):
            return True
    return False


def txn_is_safe(t: rpc_pb2.TxnRequest) -> bool:
    """Safe to send again after an ambiguous failure: read-only, or guarded
    by at least one compare (a second run re-evaluates the guard)."""
    return not txn_has_writes(t) or len(t.compare) > 0
