"""The watch hub alone, with an in-memory history: created responses and
watch ids, live dispatch, filters, prev_kv, history replay in chunks and the
unsynced → synced boundary, slow streams, compaction, fragments, progress.

``FakeStore`` is a tiny MVCC history with the surface the hub uses, and
``check_stream`` ports etcd's robustness watch validators (Ordered, Unique,
Atomic, Bookmarkable; Reliable by comparing with the store's history) to one
stream's responses. tests/test_watch_service.py reuses both.
"""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import errors
from kvstore.pb import kv_pb2, rpc_pb2
from kvstore.watch import WatchHub, encode_event, item_bytes, response_prefix

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


def in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    """etcd's convention: b"" = the key alone, b"\\0" = every key >= key."""
    if not range_end:
        return k == key
    if range_end == b"\0":
        return k >= key
    return key <= k < range_end


class FakeStore:
    def __init__(self, carry_prev_kv: bool = False) -> None:
        self.rev = 1
        self.compacted = 0
        self.log: list[kv_pb2.Event] = []  # every event, in revision order
        self.kvs: dict[bytes, kv_pb2.KeyValue] = {}
        self.carry_prev_kv = carry_prev_kv  # live events come with prev_kv
        self.events_calls = 0

    @property
    def current_revision(self) -> int:
        return self.rev

    @property
    def compact_revision(self) -> int:
        return self.compacted

    def _commit(self, ops) -> tuple[int, list[kv_pb2.Event]]:
        self.rev += 1
        out = []
        for op, key, value in ops:
            old = self.kvs.get(key)
            if op == "put":
                kv = kv_pb2.KeyValue(
                    key=key, value=value, mod_revision=self.rev,
                    create_revision=old.create_revision if old else self.rev,
                    version=old.version + 1 if old else 1,
                )
                self.kvs[key] = kv
                ev = kv_pb2.Event(type=PUT, kv=kv)
            else:
                assert old is not None
                del self.kvs[key]
                ev = kv_pb2.Event(type=DELETE, kv=kv_pb2.KeyValue(key=key, mod_revision=self.rev))
            if old is not None:
                ev.prev_kv.CopyFrom(old)
            self.log.append(ev)
            out.append(ev)
        live = []
        for ev in out:
            e = kv_pb2.Event()
            e.CopyFrom(ev)
            if not self.carry_prev_kv:
                e.ClearField("prev_kv")
            live.append(e)
        return self.rev, live

    def put(self, *pairs: tuple[bytes, bytes]) -> tuple[int, list[kv_pb2.Event]]:
        return self._commit([("put", k, v) for k, v in pairs])

    def delete(self, *keys: bytes) -> tuple[int, list[kv_pb2.Event]]:
        return self._commit([("del", k, b"") for k in keys])

    def compact(self, rev: int) -> None:
        self.compacted = max(self.compacted, rev)

    def events(self, start_rev, end_rev, key, range_end, limit=None, prev_kv=False):
        """MvccStore.events(): end exclusive (None = current), soft limit that
        never splits a revision, (events, resume revision), COMPACTED at or
        below the compacted revision."""
        self.events_calls += 1
        if start_rev <= self.compacted:
            raise errors.COMPACTED
        hi = self.rev + 1 if end_rev is None else min(end_rev, self.rev + 1)
        out: list[kv_pb2.Event] = []
        last = -1
        for ev in self.log:
            r = ev.kv.mod_revision
            if r < start_rev or not in_range(ev.kv.key, key, range_end):
                continue
            if r >= hi:
                break
            if limit is not None and len(out) >= limit and r != last:
                return out, r
            e = kv_pb2.Event()
            e.CopyFrom(ev)
            if not prev_kv or r - 1 < self.compacted:
                e.ClearField("prev_kv")
            out.append(e)
            last = r
        return out, hi

    def prev_kv(self, key: bytes, mod_revision: int):
        """The key's KeyValue at mod_revision - 1 (None if compacted/absent)."""
        if mod_revision - 1 < self.compacted:
            return None
        for e in self.log:
            if e.kv.key == key and e.kv.mod_revision == mod_revision:
                return e.prev_kv if e.HasField("prev_kv") else None
        return None

    def expected(self, start_rev, key, range_end, noput=False, nodelete=False, prev_kv=False):
        out = []
        for ev in self.log:
            if ev.kv.mod_revision < start_rev or not in_range(ev.kv.key, key, range_end):
                continue
            if (noput and ev.type == PUT) or (nodelete and ev.type == DELETE):
                continue
            e = kv_pb2.Event()
            e.CopyFrom(ev)
            if not prev_kv or (ev.type == PUT and ev.kv.create_revision == ev.kv.mod_revision):
                e.ClearField("prev_kv")
            out.append(e)
        return out


class MvccBacked(FakeStore):
    """The real ``MvccStore`` as the hub's history, fed the same writes as the
    fake (which stays the oracle for expected events)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        from kvstore.mvcc import MvccStore

        self.real = MvccStore(path, quota_bytes=64 << 20)

    @property
    def current_revision(self) -> int:
        return self.real.current_revision

    @property
    def compact_revision(self) -> int:
        return self.real.compact_revision

    def _commit(self, ops):
        rev, _ = super()._commit(ops)
        txn = rpc_pb2.TxnRequest(success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value)) if op == "put"
            else rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))
            for op, key, value in ops
        ])
        with self.real.write() as b:
            _, evs = b.txn(txn)
        assert self.real.current_revision == rev
        return rev, evs

    def compact(self, rev: int) -> None:
        if rev > self.compacted:
            with self.real.write() as b:
                b.compact(rev)
        super().compact(rev)

    def events(self, *a, **kw):
        self.events_calls += 1
        return self.real.events(*a, **kw)

    def prev_kv(self, key, mod_revision):
        return self.real.prev_kv(key, mod_revision)

    def close(self) -> None:
        self.real.close()


def check_stream(responses: list[rpc_pb2.WatchResponse]) -> dict[int, list[kv_pb2.Event]]:
    """Validate one stream's responses; return the events per watch id.

    Ordered and Unique (revisions strictly increase across responses of a
    watch, and within a response never decrease), Atomic (a revision's events
    are in one response unless fragmented), created first, nothing after a
    cancel, Bookmarkable (no event at or below a progress revision after it).
    """
    events: dict[int, list[kv_pb2.Event]] = {}
    created: set[int] = set()
    canceled: set[int] = set()
    last_rev: dict[int, int] = {}
    floor: dict[int, int] = {}  # per watch: the last progress revision it saw
    frag: dict[int, list[kv_pb2.Event]] = {}
    for r in responses:
        wid = r.watch_id
        if r.created:
            assert r.events == [] and r.header.revision > 0
            if r.canceled:
                assert wid == -1 and r.cancel_reason
                continue
            assert wid not in created or wid in canceled, f"duplicate created for {wid}"
            created.add(wid)
            canceled.discard(wid)
            events.setdefault(wid, [])
            last_rev[wid] = 0
            floor[wid] = 0
            continue
        if wid == -1:
            assert not r.events and not r.canceled
            for w in created - canceled:
                floor[w] = r.header.revision
            continue
        assert wid in created and wid not in canceled, f"response for unknown/canceled watch {wid}: {r}"
        if r.canceled:
            canceled.add(wid)
            continue
        if not r.events:  # per-watch progress notification
            assert r.header.revision >= last_rev[wid]
            floor[wid] = r.header.revision
            continue
        buf = frag.setdefault(wid, [])
        buf.extend(r.events)
        if r.fragment:
            continue
        evs = frag.pop(wid)
        revs = [e.kv.mod_revision for e in evs]
        assert revs == sorted(revs), f"unordered {revs}"
        assert revs[0] > last_rev[wid], f"duplicate/out of order: {revs} after {last_rev[wid]}"
        assert revs[0] > floor[wid], f"event {revs[0]} after progress {floor[wid]}"
        assert r.header.revision >= revs[-1]
        last_rev[wid] = revs[-1]
        events[wid].extend(evs)
    return events


# ------------------------------------------------------------------ helpers
def mkhub(store: FakeStore | None = None, **kw) -> tuple[FakeStore, WatchHub]:
    store = store or FakeStore()
    return store, WatchHub(store, prev_kv=lambda ev: store.prev_kv(ev.kv.key, ev.kv.mod_revision), **kw)


def C(**kw) -> rpc_pb2.WatchCreateRequest:
    return rpc_pb2.WatchCreateRequest(**kw)


def put(store: FakeStore, hub: WatchHub, *pairs: tuple[bytes, bytes]) -> int:
    rev, evs = store.put(*pairs)
    hub.notify(rev, evs)
    return rev


def delete(store: FakeStore, hub: WatchHub, *keys: bytes) -> int:
    rev, evs = store.delete(*keys)
    hub.notify(rev, evs)
    return rev


def settle(hub: WatchHub) -> None:
    for _ in range(10_000):
        if not hub.sync_round():
            return
    raise AssertionError("catch-up does not converge")


def evs_of(responses, wid):
    return [(kv_pb2.Event.EventType.Name(e.type), e.kv.key, e.kv.mod_revision) for r in responses
            if r.watch_id == wid for e in r.events]


def same_events(got: list[kv_pb2.Event], want: list[kv_pb2.Event]) -> None:
    assert [e.SerializeToString(deterministic=True) for e in got] == [
        e.SerializeToString(deterministic=True) for e in want
    ]


# ------------------------------------------------------------ create/cancel
def test_created_first_with_auto_and_client_ids():
    store, hub = mkhub()
    put(store, hub, (b"a", b"1"))
    s = hub.open_stream()
    assert s.create(C(key=b"a")) == 0
    assert s.create(C(key=b"a", watch_id=7)) == 7
    assert s.create(C(key=b"a")) == 1
    assert s.create(C(key=b"a", watch_id=2)) == 2
    assert s.create(C(key=b"a")) == 3  # auto ids skip ids in use, as etcd
    assert s.create(C(key=b"a", watch_id=-3)) == -3  # etcd accepts any non-zero id
    assert s.create(C(key=b"a", watch_id=7)) == -1
    rs = s.drain()
    assert [(r.watch_id, r.created, r.canceled) for r in rs] == [
        (0, True, False), (7, True, False), (1, True, False), (2, True, False), (3, True, False),
        (-3, True, False), (-1, True, True),
    ]
    assert rs[-1].cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
    assert all(r.header.revision == 2 for r in rs)


def test_empty_range_refused():
    store, hub = mkhub()
    s = hub.open_stream()
    assert s.create(C(key=b"k", range_end=b"a")) == -1
    assert s.create(C(key=b"k", range_end=b"k")) == -1
    rs = s.drain()
    assert [(r.watch_id, r.created, r.canceled, r.cancel_reason) for r in rs] == [
        (-1, True, True, "mvcc: watcher range is empty")
    ] * 2
    assert s.create(C(key=b"k")) == 0  # refusals consume no id


def test_cancel_then_no_more_events_and_unknown_cancel_is_silent():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a"))
    put(store, hub, (b"a", b"1"))
    assert s.cancel(0)
    put(store, hub, (b"a", b"2"))
    assert not s.cancel(0) and not s.cancel(99)
    rs = s.drain()
    assert [(r.watch_id, r.created, r.canceled, len(r.events)) for r in rs] == [
        (0, True, False, 0), (0, False, False, 1), (0, False, True, 0),
    ]
    assert rs[-1].header.revision == 2 and rs[-1].cancel_reason == ""
    assert s.create(C(key=b"a", watch_id=0)) == 1  # next auto id, not reused
    assert s.create(C(key=b"a", watch_id=0 + 0)) == 2


def test_ids_are_per_stream_and_close_forgets_watchers():
    store, hub = mkhub()
    s1, s2 = hub.open_stream(), hub.open_stream()
    assert s1.create(C(key=b"a")) == 0 and s2.create(C(key=b"a")) == 0
    s1.close()
    assert hub.synced_count == 1
    put(store, hub, (b"a", b"1"))
    assert len(s2.drain()) == 2 and s1.drain() == []


# ------------------------------------------------------------------ live events
def test_key_prefix_fromkey_and_all_keys():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"k1"))  # 0: one key
    s.create(C(key=b"k", range_end=b"l"))  # 1: prefix k
    s.create(C(key=b"k2", range_end=b"\0"))  # 2: >= k2
    s.create(C(key=b"", range_end=b"\0"))  # 3: everything
    s.create(C())  # 4: the key "\0"
    rs = s.drain()
    put(store, hub, (b"k1", b"a"))
    rs += s.drain()  # a reader that keeps up: one response per revision
    put(store, hub, (b"k2", b"b"), (b"z", b"c"))
    rs += s.drain()
    put(store, hub, (b"\0", b"d"))
    rs += s.drain()
    delete(store, hub, b"k1")
    rs += s.drain()
    assert evs_of(rs, 0) == [("PUT", b"k1", 2), ("DELETE", b"k1", 5)]
    assert evs_of(rs, 1) == [("PUT", b"k1", 2), ("PUT", b"k2", 3), ("DELETE", b"k1", 5)]
    assert evs_of(rs, 2) == [("PUT", b"k2", 3), ("PUT", b"z", 3)]
    assert evs_of(rs, 3) == [("PUT", b"k1", 2), ("PUT", b"k2", 3), ("PUT", b"z", 3), ("PUT", b"\0", 4),
                             ("DELETE", b"k1", 5)]
    assert evs_of(rs, 4) == [("PUT", b"\0", 4)]
    # one response per revision, header revision = the event's revision
    r3 = [r for r in rs if r.watch_id == 3 and r.events]
    assert [(r.header.revision, len(r.events)) for r in r3] == [(2, 1), (3, 2), (4, 1), (5, 1)]
    check_stream(rs)


def test_batch_of_several_revisions_is_dispatched_per_revision():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a", range_end=b"\0"))
    s.create(C(key=b"c"))
    r1, e1 = store.put((b"a", b"1"))
    r2, e2 = store.put((b"b", b"2"), (b"c", b"3"))
    hub.notify(r2, e1 + e2)  # one apply batch, two revisions
    rs = s.drain()[2:]
    # not yet sent: one response each, with every revision so far
    assert [(r.watch_id, r.header.revision, [e.kv.mod_revision for e in r.events]) for r in rs] == [
        (0, 3, [2, 3, 3]), (1, 3, [3])]


def test_filters():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a", filters=[rpc_pb2.WatchCreateRequest.NOPUT]))
    s.create(C(key=b"a", filters=[rpc_pb2.WatchCreateRequest.NODELETE]))
    s.create(C(key=b"a", filters=[0, 1]))
    put(store, hub, (b"a", b"1"))
    delete(store, hub, b"a")
    rs = s.drain()
    assert evs_of(rs, 0) == [("DELETE", b"a", 3)]
    assert evs_of(rs, 1) == [("PUT", b"a", 2)]
    assert evs_of(rs, 2) == []
    assert len(rs) == 5  # a revision fully filtered out sends nothing


@pytest.mark.parametrize("carry", [False, True])
def test_prev_kv_live(carry):
    store, hub = mkhub(FakeStore(carry_prev_kv=carry))
    s = hub.open_stream()
    s.create(C(key=b"a", prev_kv=True))
    s.create(C(key=b"a"))
    put(store, hub, (b"a", b"1"))
    put(store, hub, (b"a", b"2"))
    delete(store, hub, b"a")
    rs = s.drain()
    with_prev = [e for r in rs if r.watch_id == 0 for e in r.events]
    assert [(e.HasField("prev_kv"), e.prev_kv.value) for e in with_prev] == [(False, b""), (True, b"1"), (True, b"2")]
    assert with_prev[2].prev_kv.mod_revision == 3
    assert not any(e.HasField("prev_kv") for r in rs if r.watch_id == 1 for e in r.events)


def test_future_start_revision_waits():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a", start_revision=4))
    put(store, hub, (b"a", b"1"))
    put(store, hub, (b"a", b"2"))
    put(store, hub, (b"a", b"3"))
    put(store, hub, (b"a", b"4"))
    assert evs_of(s.drain(), 0) == [("PUT", b"a", 4), ("PUT", b"a", 5)]


def test_shared_encoding_for_a_thousand_watchers():
    store, hub = mkhub()
    streams = [hub.open_stream() for _ in range(100)]
    for s in streams:
        for _ in range(10):
            s.create(C(key=b"p/", range_end=b"p0"))
        s.drain()
    put(store, hub, (b"p/x", b"v" * 1000))
    items = [s.get_nowait() for s in streams for _ in range(10)]
    bodies = {id(it[-1]) for it in items}
    assert len(bodies) == 1  # one encoded event shared by all 1,000 responses
    r = rpc_pb2.WatchResponse.FromString(item_bytes(items[-1]))
    assert r.watch_id == 9 and r.events[0].kv.value == b"v" * 1000 and r.header.revision == 2


def test_encoding_matches_protobuf():
    ev = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"k", mod_revision=9))
    prev = kv_pb2.KeyValue(key=b"k", value=b"v", mod_revision=3, create_revision=2, version=2)
    hdr = rpc_pb2.ResponseHeader(cluster_id=2**64 - 1, member_id=5, revision=9, raft_term=3)
    from kvstore.watch import _len_field

    data = response_prefix(_len_field(1, hdr.SerializeToString()), -1, canceled=True, compact_revision=4,
                           cancel_reason="x", fragment=True) + encode_event(ev, prev)
    want = rpc_pb2.WatchResponse(header=hdr, watch_id=-1, canceled=True, compact_revision=4, cancel_reason="x",
                                 fragment=True, events=[kv_pb2.Event(type=ev.type, kv=ev.kv, prev_kv=prev)])
    assert data == want.SerializeToString()


# ---------------------------------------------------------------- history
def test_replay_from_history_then_live_exactly_once():
    store, hub = mkhub(chunk_events=3)
    for i in range(10):
        put(store, hub, (b"k%d" % (i % 3), b"v%d" % i))
    delete(store, hub, b"k0")
    s = hub.open_stream()
    s.create(C(key=b"k", range_end=b"l", start_revision=3, prev_kv=True))
    assert hub.unsynced
    hub.sync_round()  # one chunk
    put(store, hub, (b"k1", b"live1"))  # while unsynced: must come from history
    settle(hub)
    assert not hub.unsynced
    put(store, hub, (b"k2", b"live2"))
    rs = s.drain()
    got = check_stream(rs)[0]
    same_events(got, store.expected(3, b"k", b"l", prev_kv=True))
    replayed = [r for r in rs if r.events and r.header.revision >= 13]
    assert replayed and all(len(r.events) <= 3 for r in replayed)


def test_chunks_never_split_a_revision():
    store, hub = mkhub(chunk_events=2)
    put(store, hub, *[(b"a%d" % i, b"x") for i in range(5)])  # rev 2: five events
    put(store, hub, (b"a0", b"y"))
    put(store, hub, (b"a1", b"y"), (b"a2", b"y"))
    s = hub.open_stream()
    s.create(C(key=b"a", range_end=b"b", start_revision=1))
    settle(hub)
    rs = [r for r in s.drain() if r.events]
    # the limit is soft: a revision is finished once started
    assert [[e.kv.mod_revision for e in r.events] for r in rs] == [[2] * 5, [3, 4, 4]]
    assert all(r.header.revision == 4 for r in rs)  # etcd: current revision on replays


def test_start_at_or_below_compact_revision_is_canceled():
    # etcd 3.4 replays from the compacted revision itself (minus a tombstone
    # there, etcd #18089); our store refuses that replay, so it is canceled.
    store, hub = mkhub()
    for i in range(5):
        put(store, hub, (b"a", b"%d" % i))
    store.compact(4)
    s = hub.open_stream()
    s.create(C(key=b"a", start_revision=3))
    s.create(C(key=b"a", start_revision=4))
    s.create(C(key=b"a", start_revision=5))
    settle(hub)
    rs = s.drain()
    assert [(r.watch_id, r.created, r.canceled, r.compact_revision) for r in rs if not r.events] == [
        (0, True, False, 0), (1, True, False, 0), (2, True, False, 0), (0, False, True, 4), (1, False, True, 4),
    ]
    cancel = [r for r in rs if r.canceled][0]
    assert cancel.cancel_reason == "etcdserver: mvcc: required revision has been compacted"
    assert cancel.header.revision == 6
    assert evs_of(rs, 2) == [("PUT", b"a", 5), ("PUT", b"a", 6)]


def test_negative_start_revision_is_canceled_like_etcd():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a", start_revision=-5))
    rs = s.drain()
    assert [(r.watch_id, r.created, r.canceled, r.compact_revision) for r in rs] == [
        (0, True, False, 0), (0, False, True, -1)
    ]


def test_prev_kv_on_replay():
    store, hub = mkhub()
    put(store, hub, (b"a", b"1"))  # 2
    put(store, hub, (b"b", b"1"))  # 3
    put(store, hub, (b"a", b"2"))  # 4
    delete(store, hub, b"a")  # 5
    put(store, hub, (b"a", b"3"))  # 6
    store.compact(3)
    s = hub.open_stream()
    s.create(C(key=b"a", start_revision=4, prev_kv=True))
    settle(hub)
    evs = [e for r in s.drain() for e in r.events]
    assert [(e.kv.mod_revision, e.HasField("prev_kv"), e.prev_kv.value, e.prev_kv.mod_revision) for e in evs] == [
        (4, True, b"1", 2), (5, True, b"2", 4), (6, False, b"", 0)
    ]


# ------------------------------------------------------------- slow streams
def test_slow_stream_is_bounded_then_catches_up_from_history():
    store, hub = mkhub(queue_max_items=8, queue_max_bytes=600, chunk_events=4)
    slow, fast = hub.open_stream(), hub.open_stream()
    slow.create(C(key=b"k", range_end=b"l"))
    fast.create(C(key=b"k", range_end=b"l"))
    fast_rs = []
    for i in range(100):
        put(store, hub, (b"k%d" % (i % 7), b"v%d" % i))
        fast_rs += fast.drain()
        assert slow.queued <= 8 and slow.queued_bytes <= 600  # bounded
        settle(hub)
    assert hub.unsynced  # the slow watcher left the synced set
    same_events(check_stream(fast_rs)[0], store.expected(2, b"k", b"l"))
    slow_rs = []
    while True:
        got = slow.drain()
        settle(hub)
        if not got and not hub.unsynced:
            break
        slow_rs += got
    same_events(check_stream(slow_rs)[0], store.expected(2, b"k", b"l"))


def test_slow_stream_compacted_meanwhile_is_canceled():
    store, hub = mkhub(queue_max_items=4, queue_max_bytes=100)
    s = hub.open_stream()
    s.create(C(key=b"a"))
    for i in range(10):
        put(store, hub, (b"a", b"%d" % i))
    store.compact(9)
    rs = []
    while (item := s.get_nowait()) is not None:
        rs.append(rpc_pb2.WatchResponse.FromString(item_bytes(item)))
        settle(hub)
    last = rs[-1]
    assert last.canceled and last.compact_revision == 9 and last.watch_id == 0
    revs = [e.kv.mod_revision for r in rs for e in r.events]
    assert revs == list(range(2, 2 + len(revs)))  # no gap before the cancel
    assert not s.watchers and not hub.unsynced


def test_bytes_bound():
    store, hub = mkhub(queue_max_items=1000, queue_max_bytes=10_000)
    s = hub.open_stream()
    s.create(C(key=b"a"))
    for i in range(50):
        put(store, hub, (b"a", b"x" * 1000))
        assert s.queued_bytes <= 10_000 + 1200
    assert hub.unsynced


# ------------------------------------------------------------------- fragment
def test_fragment_splits_like_etcd():
    store, hub = mkhub(max_response_bytes=2500)
    s = hub.open_stream()
    s.create(C(key=b"f", range_end=b"g", fragment=True))
    s.create(C(key=b"f", range_end=b"g"))
    put(store, hub, *[(b"f%d" % i, b"x" * 900) for i in range(5)])
    rs = s.drain()
    frag = [r for r in rs[2:] if r.watch_id == 0]
    assert [(len(r.events), r.fragment) for r in frag] == [(2, True), (2, True), (1, False)]
    assert all(r.ByteSize() < 2500 for r in frag)
    whole = [r for r in rs[2:] if r.watch_id == 1]
    assert [(len(r.events), r.fragment) for r in whole] == [(5, False)]
    check_stream(rs)


def test_fragment_single_huge_event_is_not_split():
    store, hub = mkhub(max_response_bytes=100)
    s = hub.open_stream()
    s.create(C(key=b"f", fragment=True))
    put(store, hub, (b"f", b"x" * 500))
    rs = s.drain()
    assert [(len(r.events), r.fragment) for r in rs] == [(0, False), (1, False)]


# ------------------------------------------------------------------- progress
def test_progress_request_waits_for_unsynced_watchers():
    store, hub = mkhub(chunk_events=2)
    for i in range(6):
        put(store, hub, (b"a", b"%d" % i))
    s = hub.open_stream()
    s.create(C(key=b"b"))
    s.create(C(key=b"a", start_revision=2))
    s.request_progress()
    rs = s.drain()
    assert not any(r.watch_id == -1 for r in rs)  # #15220: not before the replay
    settle(hub)
    rs += s.drain()
    prog = [i for i, r in enumerate(rs) if r.watch_id == -1]
    assert len(prog) == 1 and prog[0] == len(rs) - 1
    assert rs[-1].header.revision == 7 and not rs[-1].created
    check_stream(rs)


def test_progress_request_without_watchers_and_when_synced():
    store, hub = mkhub()
    s = hub.open_stream()
    s.request_progress()
    s.create(C(key=b"a"))
    put(store, hub, (b"a", b"1"))
    s.request_progress()
    rs = s.drain()
    assert [(r.watch_id, r.header.revision, len(r.events)) for r in rs] == [(-1, 1, 0), (0, 1, 0), (0, 2, 1),
                                                                            (-1, 2, 0)]


def test_progress_notify_ticks_only_idle_synced_watchers():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a", progress_notify=True))
    s.create(C(key=b"b", progress_notify=True))
    s.create(C(key=b"c"))
    s.drain()
    s.progress_tick()
    assert [(r.watch_id, r.header.revision) for r in s.drain()] == [(0, 1), (1, 1)]
    put(store, hub, (b"a", b"1"))
    s.drain()
    s.progress_tick()  # watch 0 just got an event: skipped this once (as etcd)
    assert [(r.watch_id, r.header.revision) for r in s.drain()] == [(1, 2)]
    s.progress_tick()
    assert [(r.watch_id, r.header.revision) for r in s.drain()] == [(0, 2), (1, 2)]


def test_progress_notify_timer_fires():
    async def main():
        store, hub = mkhub(progress_interval=0.1)
        s = hub.open_stream()
        s.create(C(key=b"a", progress_notify=True))
        got = []
        while len(got) < 3:
            got.append(rpc_pb2.WatchResponse.FromString(item_bytes(await asyncio.wait_for(s.get(), 5))))
        s.close()
        hub.close()
        return got

    got = asyncio.run(main())
    assert [(r.watch_id, r.created, len(r.events)) for r in got] == [(0, True, 0), (0, False, 0), (0, False, 0)]


# ---------------------------------------------------------- gaps and restore
def test_gap_in_notifications_resyncs_from_history():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a", range_end=b"b"))
    put(store, hub, (b"a1", b"1"))
    store.put((b"a2", b"lost"))  # applied without notify (e.g. snapshot restore)
    put(store, hub, (b"a3", b"3"))
    settle(hub)
    same_events(check_stream(s.drain())[0], store.expected(2, b"a", b"b"))


def test_store_ahead_without_notify_is_noticed_on_progress():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a"))
    store.put((b"a", b"restored"))
    s.request_progress()
    settle(hub)
    rs = s.drain()
    assert [(r.watch_id, r.header.revision, len(r.events)) for r in rs] == [(0, 1, 0), (0, 2, 1), (-1, 2, 0)]


# -------------------------------------------------------------- async driver
def test_sync_task_and_get_run_on_the_loop():
    async def main():
        store, hub = mkhub(queue_max_items=4, chunk_events=5)
        for i in range(50):
            put(store, hub, (b"k", b"%d" % i))
        s = hub.open_stream()
        s.create(C(key=b"k", start_revision=1))
        got = []

        async def writer():
            for i in range(50, 80):
                put(store, hub, (b"k", b"%d" % i))
                await asyncio.sleep(0)

        w = asyncio.ensure_future(writer())
        while True:
            item = await asyncio.wait_for(s.get(), 5)
            got.append(rpc_pb2.WatchResponse.FromString(item_bytes(item)))
            if sum(len(r.events) for r in got) >= 80:
                break
        await w
        hub.close()
        return store, got

    store, got = asyncio.run(main())
    same_events(check_stream(got)[0], store.expected(1, b"k", b""))


# ---------------------------------------------------------------- property
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), min_size=1, max_size=3,
                                           unique=True)),
        st.tuples(st.just("del"), st.sampled_from([b"a", b"b", b"c", b"d"])),
        st.tuples(st.just("watch"), st.integers(0, 40), st.sampled_from([(b"a", b""), (b"a", b"c"), (b"b", b"\0")]),
                  st.booleans(), st.sampled_from([[], [0], [1]]), st.booleans()),
        st.tuples(st.just("drain"), st.integers(0, 1), st.integers(1, 20)),
        st.tuples(st.just("sync"),),
        st.tuples(st.just("progress"), st.integers(0, 1)),
        st.tuples(st.just("cancel"), st.integers(0, 1), st.integers(0, 5)),
        st.tuples(st.just("compact"),),
    ),
    max_size=80,
)


@pytest.mark.parametrize("backend", ["fake", "mvcc"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(script=ops, qmax=st.integers(2, 6), chunk=st.integers(1, 4), qbytes=st.sampled_from([16 << 20, 400, 120]),
       cbytes=st.sampled_from([1 << 20, 100, 40]))
def test_random_histories_satisfy_the_watch_guarantees(tmp_path_factory, backend, script, qmax, chunk, qbytes,
                                                       cbytes):
    """qbytes bounds a stream's queued bytes (slow watchers are evicted to
    history replay), cbytes the bytes of a response (coalesced revisions are
    cut at revision boundaries, and fragments split a large revision)."""
    if backend == "mvcc":
        store = MvccBacked(str(tmp_path_factory.mktemp("mvcc")))
    else:
        store = FakeStore()
    try:
        run_script(store, script, qmax, chunk, qbytes, cbytes)
    finally:
        if backend == "mvcc":
            store.close()


def run_script(store, script, qmax, chunk, qbytes=16 << 20, cbytes=1 << 20):
    store, hub = mkhub(store, queue_max_items=qmax, chunk_events=chunk, queue_max_bytes=qbytes, chunk_bytes=cbytes,
                       max_response_bytes=cbytes + 100)
    streams = [hub.open_stream(), hub.open_stream()]
    received = [[], []]
    specs = [{}, {}]  # wid -> create request
    canceled_by_us = [set(), set()]
    progress_asked = [0, 0]
    for op in script:
        kind = op[0]
        if kind == "put":
            put(store, hub, *[(k, b"v%d" % store.rev) for k in op[1]])
        elif kind == "del":
            if op[1] in store.kvs:
                delete(store, hub, op[1])
        elif kind == "watch":
            _, back, (key, end), pk, filters, frag = op
            si = back % 2
            start = max(0, store.rev - back + 2) if back else 0
            req = C(key=key, range_end=end, start_revision=start, prev_kv=pk, filters=filters, fragment=frag)
            wid = streams[si].create(req)
            specs[si][wid] = (req, start or store.rev + 1)
        elif kind == "drain":
            _, si, n = op
            for _ in range(n):
                item = streams[si].get_nowait()
                if item is None:
                    break
                received[si].append(rpc_pb2.WatchResponse.FromString(item_bytes(item)))
        elif kind == "sync":
            hub.sync_round()
        elif kind == "progress":
            streams[op[1]].request_progress()
            progress_asked[op[1]] += 1
        elif kind == "cancel":
            _, si, wid = op
            if streams[si].cancel(wid):
                canceled_by_us[si].add(wid)
        elif kind == "compact":
            store.compact(max(1, store.rev - 3))
        for s in streams:
            assert s.queued <= qmax + 2 * len(s.watchers) + progress_asked[streams.index(s)] + 8
    # drain everything
    for _ in range(10_000):
        moved = False
        for si, s in enumerate(streams):
            while (item := s.get_nowait()) is not None:
                received[si].append(rpc_pb2.WatchResponse.FromString(item_bytes(item)))
                moved = True
        if hub.sync_round():
            moved = True
        if not moved and not any(s.queued for s in streams):
            if not hub.unsynced:
                break
    assert not hub.unsynced
    for si in range(2):
        got = check_stream(received[si])
        n_progress = sum(1 for r in received[si] if r.watch_id == -1)
        # requests made while a replay runs coalesce into one answer (as etcd's #15220 fix)
        assert min(1, progress_asked[si]) <= n_progress <= progress_asked[si]
        compacted = {r.watch_id for r in received[si] if r.canceled and r.compact_revision}
        for wid, (req, start) in specs[si].items():
            if wid == -1 or wid in canceled_by_us[si]:
                continue  # a canceled watch got a prefix of its events (checked as ordered)
            want = store.expected(start, req.key, req.range_end, noput=0 in req.filters,
                                  nodelete=1 in req.filters, prev_kv=req.prev_kv)
            if wid in compacted:
                n = len(got[wid])
                same_events(got[wid], want[:n])
                continue
            if req.prev_kv:
                # prev_kv of a replayed event may be gone by compaction
                got_ = [kv_pb2.Event(type=e.type, kv=e.kv) for e in got[wid]]
                want_ = [kv_pb2.Event(type=e.type, kv=e.kv) for e in want]
                same_events(got_, want_)
            else:
                same_events(got[wid], want)


def test_replay_chunks_are_bounded_in_bytes_at_revision_boundaries():
    store, hub = mkhub(chunk_bytes=2500)
    for i in range(10):
        put(store, hub, (b"a", b"x" * 1000))
    put(store, hub, *[(b"b%d" % i, b"y" * 1000) for i in range(4)])  # one revision, 4 KB
    s = hub.open_stream()
    s.create(C(key=b"a", range_end=b"c", start_revision=2))
    settle(hub)
    rs = [r for r in s.drain() if r.events]
    assert [[e.kv.mod_revision for e in r.events] for r in rs] == [[2, 3], [4, 5], [6, 7], [8, 9], [10, 11],
                                                                   [12] * 4]


def test_restore_hook_resyncs_synced_watchers():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a", range_end=b"b"))
    s.create(C(key=b"a", start_revision=10))  # future: stays waiting
    store.put((b"a1", b"from-snapshot"))
    store.put((b"a", b"from-snapshot"))
    hub.on_restore()  # Applier.restore calls this after the store was replaced
    settle(hub)
    rs = s.drain()
    assert evs_of(rs, 0) == [("PUT", b"a1", 2), ("PUT", b"a", 3)]
    assert evs_of(rs, 1) == []
    for i in range(7):
        put(store, hub, (b"a", b"%d" % i))
    assert [e[2] for e in evs_of(s.drain(), 1)] == [10]


def test_catch_up_scans_history_in_revision_windows():
    store, hub = mkhub(chunk_revs=10)
    for i in range(95):
        put(store, hub, (b"z" if i % 30 == 0 else b"other", b"%d" % i))
    s = hub.open_stream()
    s.create(C(key=b"z", start_revision=2))
    hub.sync_round()
    assert hub.unsynced  # one window of 10 revisions per round
    settle(hub)
    assert store.events_calls >= 9
    assert [e[2] for e in evs_of(s.drain(), 0)] == [2, 32, 62, 92]


def test_rounds_are_fair_between_unsynced_watchers():
    store, hub = mkhub(chunk_events=1, sync_round_events=3)
    for i in range(20):
        put(store, hub, (b"a", b"%d" % i), (b"b", b"%d" % i))
    s = hub.open_stream()
    hub.queue_max_items = 10_000
    for key in (b"a", b"b", b"a", b"b", b"a"):
        s.create(C(key=key, range_end=key + b"\0", start_revision=2))
    s.create(C(key=b"b", start_revision=2))
    for _ in range(4):
        hub.sync_round()
    got = check_stream(s.drain())
    assert all(got[w] for w in range(6))  # every watcher made progress
