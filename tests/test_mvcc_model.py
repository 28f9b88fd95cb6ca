"""Model-based tests of kvstore.mvcc's storage and indexes.

A plain in-memory model keeps the full history; the store, fed the same
puts/deletes/lease revokes/compactions in random batches with restarts,
defragmentation and snapshot restores in between, must answer every range at
every revision >= the compacted one, every watch replay (resumed through
``limit``) and every lease's key list exactly like the model. Keys include
long ones (beyond LMDB's key size) sharing prefixes, so the re-sorting of
hashed long-key groups is exercised with many members.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import errors
from kvstore.mvcc import MvccStore
from kvstore.mvcc import keys as K
from kvstore.pb import kv_pb2, rpc_pb2 as pb

P = b"p" * 479
GROUP = [P + b"ab", P + b"a" + b"x" * 30, P + b"aa", P + b"a\xff" * 9]  # long keys, one 480-byte prefix
KEYS = [b"a", b"b", b"b\x00", b"c", P, P + b"a", P + b"b", P + b"b" * 40, P[:200], b"\xff"] + GROUP
ENDS = [b"", b"\x00", b"b\x00", P + b"a", P + b"ab", P + b"b", b"\xff"]


class Model:
    def __init__(self):
        self.rev = 1
        self.compact = -1
        self.live = {}  # key -> (create, mod, version, value, lease)
        self.hist = []  # (rev, key, kv tuple or None)
        self.leases = {}

    def put(self, key, value, lease):
        if lease and lease not in self.leases:
            return
        self.rev += 1
        old = self.live.get(key)
        kv = (old[0] if old else self.rev, self.rev, old[2] + 1 if old else 1, value, lease)
        self.live[key] = kv
        self.hist.append((self.rev, key, kv))

    def _delete(self, keys):
        self.rev += 1
        for k in sorted(keys):
            del self.live[k]
            self.hist.append((self.rev, k, None))

    def delete(self, key, end):
        ks = [k for k in self.live if in_range(k, key, end)]
        if ks:
            self._delete(ks)

    def revoke(self, lease):
        if lease not in self.leases:
            return
        del self.leases[lease]
        ks = [k for k, kv in self.live.items() if kv[4] == lease]
        if ks:
            self._delete(ks)

    def at(self, rev):
        state = {}
        for r, k, kv in self.hist:
            if r > rev:
                break
            if kv is None:
                state.pop(k, None)
            else:
                state[k] = kv
        return state


def in_range(k, key, end):
    if end == b"":
        return k == key
    if end == b"\x00":
        return k >= key
    return key <= k < end


def kvs_of(state, key=b"\x00", end=b"\x00"):
    return [(k,) + state[k] for k in sorted(state) if in_range(k, key, end)]


def store_kvs(resp):
    return [(kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease) for kv in resp.kvs]


op_st = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(GROUP), st.just(b"g"), st.just(0)),
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.sampled_from([b"", b"v", b"w" * 50]),
              st.sampled_from([0, 0, 0, 1, 2])),
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.just(b"x"), st.just(0)),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.sampled_from(ENDS)),
    st.tuples(st.just("compact"), st.integers(0, 6)),
    st.tuples(st.just("grant"), st.sampled_from([1, 2])),
    st.tuples(st.just("revoke"), st.sampled_from([1, 2])),
    st.tuples(st.just("batch"), st.sampled_from(["commit", "reopen", "defrag", "snapshot"])),
)


@settings(max_examples=int(os.environ.get("MVCC_MODEL_EXAMPLES", "60")), deadline=None, database=None,
          derandomize=not os.environ.get("MVCC_DIFF_RANDOM"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_st, min_size=5, max_size=60))
def test_store_matches_model(tmp_path_factory, ops):
    base = tmp_path_factory.mktemp("m")
    path = str(base / "kv")
    s = MvccStore(path)
    m = Model()
    b = s.write()
    try:
        for op in ops:
            kind = op[0]
            if kind == "batch":
                b.commit()
                if op[1] == "reopen":
                    s.close()
                    s = MvccStore(path)
                elif op[1] == "defrag":
                    s.defragment()
                elif op[1] == "snapshot":
                    snap = str(base / "snap.db")
                    s.copy_to(snap)
                    s.close()
                    path = str(base / ("kv%d" % len(os.listdir(base))))
                    MvccStore.restore_from(snap, path)
                    s = MvccStore(path)
                b = s.write()
            elif kind == "put":
                _, k, v, lease = op
                try:
                    b.put(pb.PutRequest(key=k, value=v, lease=lease))
                except errors.EtcdError as e:
                    assert e.message == errors.LEASE_NOT_FOUND.message and lease not in m.leases
                m.put(k, v, lease)
            elif kind == "delete":
                b.delete_range(pb.DeleteRangeRequest(key=op[1], range_end=op[2]))
                m.delete(op[1], op[2])
            elif kind == "compact":
                rev = m.rev - op[1]
                try:
                    b.compact(rev)
                    m.compact = rev
                except errors.EtcdError as e:
                    assert rev <= m.compact and e.message == errors.COMPACTED.message
            elif kind == "grant":
                try:
                    b.lease_grant(op[1], 10)
                    m.leases[op[1]] = 10
                except errors.EtcdError:
                    assert op[1] in m.leases
            elif kind == "revoke":
                try:
                    b.lease_revoke(op[1])
                except errors.EtcdError:
                    assert op[1] not in m.leases
                m.revoke(op[1])
            assert b.current_revision == m.rev
        b.commit()
        check(s, m)
    finally:
        if s._batch is not None:
            s._batch.abort()
        s.close()


def check(s: MvccStore, m: Model) -> None:
    assert s.current_revision == m.rev
    lo = max(m.compact, 1)
    for rev in range(lo, m.rev + 1):
        state = m.at(rev)
        assert store_kvs(s.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00", revision=rev))) == kvs_of(state)
    for key in KEYS:
        for end in ENDS:
            for rev in {m.rev, lo, (lo + m.rev) // 2}:
                want = kvs_of(m.at(rev), key, end)
                r = s.range(pb.RangeRequest(key=key, range_end=end, revision=rev, limit=2))
                assert store_kvs(r) == want[:2] and r.count == len(want) and r.more == (len(want) > 2)
    # watch replay, resumed through a small limit
    start = m.compact + 1 if m.compact >= 1 else 1
    want = [(r, k, kv) for r, k, kv in m.hist if r >= start]
    got = []
    nxt = start
    while True:
        evs, nxt2 = s.events(nxt, None, b"\x00", b"\x00", limit=3)
        got += evs
        if nxt2 == nxt or not evs:
            break
        nxt = nxt2
    assert [(e.kv.mod_revision, e.kv.key, None if e.type == kv_pb2.Event.DELETE else
             (e.kv.create_revision, e.kv.mod_revision, e.kv.version, e.kv.value, e.kv.lease)) for e in got] == want
    for key in (P + b"a", b"b"):
        evs, _ = s.events(start, None, key, b"")
        assert [e.kv.mod_revision for e in evs] == [r for r, k, _ in want if k == key]
    # physically: history above the compacted revision, plus each key's live
    # revision at it (tombstones at or below it are gone); the per-key index agrees
    last = {}
    for i, (r, k, kv) in enumerate(m.hist):
        if r <= m.compact:
            last[k] = i
    want_hist = [(r, k, kv is None) for i, (r, k, kv) in enumerate(m.hist)
                 if r > m.compact or (last.get(k) == i and kv is not None)]
    with s._env.begin() as t:
        got_hist = [(K.rev_main(hk), K.kv_key(v), K.is_tombstone(hk)) for hk, v in t.cursor(s._hist).iternext()]
        got_revs = sorted((K.rev_main(d), K.kv_key(t.get(K.hist_key_of_dup(d), db=s._hist)), K.is_tombstone(d))
                          for _, d in t.cursor(s._revs).iternext())
        assert t.stat(s._kv)["entries"] == len(m.live)
    assert got_hist == want_hist
    assert got_revs == sorted(want_hist)
    assert sorted(s.lease_list()) == sorted(m.leases.items())
    for lease in (1, 2):
        assert s.lease_keys(lease) == sorted(k for k, kv in m.live.items() if kv[4] == lease)
