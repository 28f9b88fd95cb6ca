"""The Applier (committed entries -> MVCC store) on its own, without Raft."""
from __future__ import annotations

from kvstore import errors
from kvstore.apply import Applier
from kvstore.mvcc import MvccStore
from kvstore.pb import internal_pb2, rpc_pb2 as pb
from raft.types import Entry


class Member:
    """One member's store and applier; records results, events and lease calls."""

    def __init__(self, path: str, member_id: int) -> None:
        self.store = MvccStore(path, quota_bytes=64 << 20)
        self.results: dict[int, object] = {}
        self.events: list[bytes] = []
        self.leases: list[tuple] = []
        self.applier = Applier(self.store, member_id, self.results.__setitem__, lambda ml: None)
        self.applier.event_sinks.append(self)
        self.applier.lease_observers.append(self)

    def notify(self, revision: int, events: list) -> None:
        self.events += [e.SerializeToString() for e in events]

    def on_grant(self, lease_id: int, ttl: int) -> None:
        self.leases.append(("grant", lease_id, ttl))

    def on_revoke(self, lease_id: int) -> None:
        self.leases.append(("revoke", lease_id))

    def on_restore(self) -> None:
        pass


def _op_put(key: bytes, value: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def _requests() -> list[internal_pb2.InternalRequest]:
    R = internal_pb2.InternalRequest
    alarm = pb.AlarmRequest
    return [
        R(put=pb.PutRequest(key=b"a", value=b"1")),
        R(lease_grant=pb.LeaseGrantRequest(ID=7, TTL=60)),
        R(put=pb.PutRequest(key=b"l", value=b"x", lease=7, prev_kv=True)),
        R(put=pb.PutRequest(key=b"m", lease=8)),  # LEASE_NOT_FOUND
        R(txn=pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a")), _op_put(b"b", b"2")])),
        R(alarm=alarm(action=alarm.ACTIVATE, memberID=1, alarm=pb.NOSPACE)),
        R(put=pb.PutRequest(key=b"c")),  # NO_SPACE
        R(txn=pb.TxnRequest(success=[pb.RequestOp(request_txn=pb.TxnRequest(success=[_op_put(b"c")]))])),  # NO_SPACE
        R(txn=pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"b"))])),
        R(alarm=alarm(action=alarm.DEACTIVATE, memberID=1, alarm=pb.NOSPACE)),
        R(put=pb.PutRequest(key=b"c", value=b"3")),
        R(lease_revoke=pb.LeaseRevokeRequest(ID=7)),
        R(delete_range=pb.DeleteRangeRequest(key=b"a", range_end=b"\x00")),
    ]


def test_every_member_applies_the_same_and_answers_its_own(tmp_path):
    members = [Member(str(tmp_path / f"m{i}"), i) for i in (1, 2)]
    entries = []
    for i, req in enumerate(_requests()):
        req.id = 100 + i
        req.member_id = 1 + i % 2  # proposals from both members
        entries.append(Entry(3, i + 1, data=req.SerializeToString()))
    entries.insert(5, Entry(3, 0, data=b""))  # a new leader's empty entry (index fixed below)
    for i, e in enumerate(entries):
        e.index = i + 1
    for m in members:
        m.applier.apply(entries[:7])
        m.applier.apply(entries[7:])
        m.applier.apply(entries[3:])  # already applied: ignored
    a, b = members
    assert a.events == b.events and len(a.events) == 8
    assert a.leases == b.leases == [("grant", 7, 60), ("revoke", 7)]
    assert a.store.hash_kv() == b.store.hash_kv()
    assert a.store.consistent_index == b.store.consistent_index == len(entries)
    assert a.applier.term == 3
    # each member got exactly the results of its own proposals
    assert sorted(a.results) == [100 + i for i in range(0, 13, 2)]
    assert sorted(b.results) == [100 + i for i in range(1, 13, 2)]
    res = {**a.results, **b.results}
    assert res[103].error is errors.LEASE_NOT_FOUND
    assert res[106].error is errors.NO_SPACE and res[107].error is errors.NO_SPACE
    assert res[108].error is None and res[108].response.responses[0].response_delete_range.deleted == 1
    assert res[102].response.header.revision == 3 and not res[102].response.HasField("prev_kv")
    assert res[104].response.responses[0].response_range.kvs[0].value == b"1"
    assert res[110].error is None and res[110].revision == 6
    assert [kv.key for kv in a.store.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00")).kvs] == []
    for m in members:
        m.store.close()
