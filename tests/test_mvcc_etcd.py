"""Differential tests: kvstore.mvcc against a real etcd 3.4 (/usr/bin/etcd).

One etcd runs for the whole module. Before each generated example it is
brought to a clean state (leases revoked, every key deleted, compacted at its
current revision D, so its history is empty) and a fresh MvccStore is put in
the same state (current and compacted revision D). The same requests then go
to both; responses must be equal after clearing the header fields only a
server knows (cluster_id, member_id, raft_term), errors must have the same
gRPC code and message, and at the end the histories must agree: a full range
at every revision, HashKV (bit for bit, same CRC-32C layout as etcd) and a
watch replay with prev_kv.

MVCC_DIFF_EXAMPLES (default 100) and MVCC_DIFF_RANDOM=1 (fresh random examples
instead of the derandomized set) tune the depth.
"""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

grpc = pytest.importorskip("grpc")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kvstore import errors  # noqa: E402
from kvstore.mvcc import MvccStore  # noqa: E402
from kvstore.pb import rpc_pb2 as pb  # noqa: E402
from kvstore.pb import rpc_pb2_grpc  # noqa: E402

ETCD = "/usr/bin/etcd"
pytestmark = pytest.mark.skipif(not os.path.exists(ETCD), reason="etcd 3.4 binary not installed")

RR = pb.RangeRequest
C = pb.Compare


# -- the etcd process ---------------------------------------------------------------

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Etcd:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mvcc-etcd-")
        cport, pport = _free_port(), _free_port()
        curl, purl = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
        self.proc = subprocess.Popen(
            [ETCD, "--data-dir", os.path.join(self.dir, "data"), "--name", "m",
             "--listen-client-urls", curl, "--advertise-client-urls", curl,
             "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
             "--initial-cluster", f"m={purl}", "--logger", "zap", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{cport}")
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.maint = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.kv.Range(RR(key=b"x"), timeout=1)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("etcd did not start")
                time.sleep(0.05)

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def reset(self) -> int:
        """Empty keyspace, no leases, history compacted away; returns the revision."""
        for l in self.lease.LeaseLeases(pb.LeaseLeasesRequest()).leases:
            try:
                self.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=l.ID))
            except grpc.RpcError:
                pass
        rev = self.kv.DeleteRange(pb.DeleteRangeRequest(key=b"\x00", range_end=b"\x00")).header.revision
        try:
            self.kv.Compact(pb.CompactionRequest(revision=rev, physical=True))
        except grpc.RpcError as e:
            assert e.details() == errors.COMPACTED.message
        return rev

    def watch_events(self, start_rev: int, sentinel: bytes, timeout: float = 10.0):
        """Events from start_rev on every key (with prev_kv), up to the put of
        ``sentinel`` (excluded)."""
        done = threading.Event()

        def reqs():
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(
                key=b"\x00", range_end=b"\x00", start_revision=start_rev, prev_kv=True))
            done.wait(timeout)

        call = self.watch.Watch(reqs(), timeout=timeout)
        evs = []
        try:
            for resp in call:
                for ev in resp.events:
                    if ev.kv.key == sentinel:
                        return evs
                    evs.append(ev)
        finally:
            done.set()
            call.cancel()
        raise AssertionError("watch ended without the sentinel")


@pytest.fixture(scope="module")
def etcd():
    e = Etcd()
    try:
        yield e
    finally:
        e.close()


def store_at(path: str, rev: int) -> MvccStore:
    """A fresh store in the state of a cleaned etcd: no keys, no history,
    current revision = compacted revision = rev (set through its meta DB)."""
    s = MvccStore(path)
    with s._env.begin(write=True) as t:
        t.put(b"current_rev", struct.pack(">q", rev), db=s._meta)
        t.put(b"compact_rev", struct.pack(">q", rev), db=s._meta)
    s.close()
    return MvccStore(path)


# -- running one request on both ---------------------------------------------------------

def _norm(resp):
    if resp is not None and resp.HasField("header"):
        h = resp.header
        h.ClearField("cluster_id")
        h.ClearField("member_id")
        h.ClearField("raft_term")
    return resp


def on_etcd(e: Etcd, kind: str, req):
    try:
        if kind == "range":
            r = e.kv.Range(req)
        elif kind == "put":
            r = e.kv.Put(req)
        elif kind == "delete":
            r = e.kv.DeleteRange(req)
        elif kind == "txn":
            r = e.kv.Txn(req)
        elif kind == "compact":
            e.kv.Compact(req)
            r = None
        elif kind == "grant":
            e.lease.LeaseGrant(req)
            r = None
        elif kind == "revoke":
            e.lease.LeaseRevoke(req)
            r = None
        else:
            raise AssertionError(kind)
    except grpc.RpcError as ex:
        return None, (ex.code(), ex.details())
    return _norm(r), None


def on_store(s: MvccStore, kind: str, req):
    try:
        if kind == "range":
            return s.range(req), None
        with s.write() as b:
            if kind == "put":
                r = b.put(req)[0]
            elif kind == "delete":
                r = b.delete_range(req)[0]
            elif kind == "txn":
                r = b.txn(req)[0]
            elif kind == "compact":
                b.compact(req.revision, req.physical)
                r = None
            elif kind == "grant":
                b.lease_grant(req.ID, req.TTL)
                r = None
            elif kind == "revoke":
                b.lease_revoke(req.ID)
                r = None
        return r, None
    except errors.EtcdError as ex:
        return None, (ex.code, ex.message)


def both(e: Etcd, s: MvccStore, kind: str, req):
    er, eerr = on_etcd(e, kind, req)
    sr, serr = on_store(s, kind, req)
    assert serr == eerr, f"{kind} {req}: etcd error {eerr}, ours {serr}"
    assert sr == er, f"{kind} {req}\netcd:\n{er}\nours:\n{sr}"
    return sr


def check_history(e: Etcd, s: MvccStore, lo: int) -> None:
    """Both agree on every past state, on HashKV and on a watch replay."""
    cur = s.current_revision
    comp = s._compact_rev
    for rev in range(max(lo, comp), cur + 1):
        both(e, s, "range", RR(key=b"\x00", range_end=b"\x00", revision=rev))
    for rev in sorted({0, cur, cur - 1, comp, comp + 1, cur + 1}):
        try:
            eh = e.maint.HashKV(pb.HashKVRequest(revision=rev))
            eres = (eh.hash, eh.compact_revision, None)
        except grpc.RpcError as ex:
            eres = (ex.code(), ex.details())
        try:
            h, c, _ = s.hash_kv(rev)
            sres = (h, c, None)
        except errors.EtcdError as ex:
            sres = (ex.code, ex.message)
        assert sres == eres, f"HashKV({rev})"
    start = comp + 1
    if start <= cur:
        ours, _ = s.events(start, None, b"\x00", b"\x00", prev_kv=True)
        sentinel = b"\xff\xff~sentinel"
        both(e, s, "put", pb.PutRequest(key=sentinel, value=b"1"))  # both stay in step
        theirs = e.watch_events(start, sentinel)
        assert ours == theirs


# -- generated operations ----------------------------------------------------------------

L = b"L" * 500  # long keys (stored through the hashed encoding) sharing a prefix
KEYS = [b"a", b"ab", b"abc", b"b", b"b\x00", b"c", b"\xff", L[:480], L[:480] + b"\x00", L, L + b"1", L + b"2"]
ENDS = [b"", b"\x00", b"ab", b"abd", b"b\x00", b"c", b"\xff\xff", L + b"1", L + b"2"]
VALUES = [b"", b"x", b"y", b"zz"]
LEASES = [0, 0x11, 0x12, 0x13]

key_st = st.sampled_from(KEYS)
end_st = st.sampled_from(ENDS)
single_end_st = st.sampled_from([b""] * 3 + ENDS)
value_st = st.sampled_from(VALUES)
lease_st = st.sampled_from([0, 0, 0, 0, 0x11, 0x12, 0x13])
rare = st.sampled_from([False] * 5 + [True])
# revisions relative to the state when the request is sent
rev_st = st.one_of(st.just(("zero", 0)), st.tuples(st.just("cur"), st.integers(-1, 4)),
                   st.tuples(st.just("comp"), st.integers(-1, 1)))
filter_st = st.one_of(st.just(("zero", 0)), st.just(("zero", 0)), rev_st)


def R(spec, cur, comp):
    kind, d = spec
    if kind == "zero":
        return 0
    if kind == "cur":
        return cur - d
    return comp + d


put_st = st.tuples(st.just("put"), key_st, value_st, lease_st, st.booleans(), rare, rare)
del_st = st.tuples(st.just("delete"), key_st, single_end_st, st.booleans())
range_st = st.tuples(st.just("range"), key_st, single_end_st, st.sampled_from([0, 0, 1, 2, 5]), rev_st,
                     st.integers(0, 2), st.integers(0, 4), rare, rare,
                     st.tuples(filter_st, filter_st, filter_st, filter_st))
cmp_st = st.tuples(key_st, st.sampled_from([b""] * 4 + ENDS), st.integers(0, 4), st.integers(0, 3),
                   value_st, rev_st, st.integers(0, 3), lease_st)


def txn_st(depth):
    ops = [put_st, del_st, range_st]
    if depth > 0:
        ops.append(st.deferred(lambda: txn_st(depth - 1)))
    op = st.one_of(ops)
    return st.tuples(st.just("txn"), st.lists(cmp_st, max_size=2), st.lists(op, max_size=3),
                     st.lists(op, max_size=3))


compact_st = st.tuples(st.just("compact"), rev_st)
grant_st = st.tuples(st.just("grant"), st.sampled_from(LEASES[1:]))
revoke_st = st.tuples(st.just("revoke"), st.sampled_from(LEASES[1:]))
op_st = st.one_of(put_st, put_st, del_st, range_st, range_st, txn_st(2), compact_st, grant_st, revoke_st)


def build(op, cur, comp):
    kind = op[0]
    if kind == "put":
        _, k, v, lease, prev, ign_v, ign_l = op
        if ign_v and v != b"zz":
            v = b""  # mostly a valid ignore_value, sometimes VALUE_PROVIDED
        if ign_l and lease != 0x13:
            lease = 0
        return pb.PutRequest(key=k, value=v, lease=lease, prev_kv=prev, ignore_value=ign_v, ignore_lease=ign_l)
    if kind == "delete":
        _, k, end, prev = op
        return pb.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev)
    if kind == "range":
        _, k, end, limit, rev, order, target, keys_only, count_only, (f1, f2, f3, f4) = op
        return RR(key=k, range_end=end, limit=limit, revision=R(rev, cur, comp), sort_order=order,
                  sort_target=target, keys_only=keys_only, count_only=count_only,
                  min_mod_revision=R(f1, cur, comp), max_mod_revision=R(f2, cur, comp),
                  min_create_revision=R(f3, cur, comp), max_create_revision=R(f4, cur, comp))
    if kind == "txn":
        _, cmps, succ, fail = op
        t = pb.TxnRequest()
        for k, end, target, result, v, rev, ver, lease in cmps:
            c = t.compare.add(key=k, range_end=end, target=target, result=result)
            if target == C.VALUE:
                c.value = v
            elif target in (C.CREATE, C.MOD):
                setattr(c, "create_revision" if target == C.CREATE else "mod_revision", R(rev, cur, comp))
            elif target == C.VERSION:
                c.version = ver
            else:
                c.lease = lease
        for ops, out in ((succ, t.success), (fail, t.failure)):
            for sub in ops:
                r = build(sub, cur, comp)
                field = {"put": "request_put", "delete": "request_delete_range", "range": "request_range",
                         "txn": "request_txn"}[sub[0]]
                getattr(out.add(), field).CopyFrom(r)
        return t
    if kind == "compact":
        return pb.CompactionRequest(revision=R(op[1], cur, comp), physical=True)
    if kind == "grant":
        return pb.LeaseGrantRequest(ID=op[1], TTL=1000)
    if kind == "revoke":
        return pb.LeaseRevokeRequest(ID=op[1])
    raise AssertionError(kind)


EXAMPLES = int(os.environ.get("MVCC_DIFF_EXAMPLES", "100"))


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          derandomize=not os.environ.get("MVCC_DIFF_RANDOM"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(ops=st.lists(op_st, min_size=6, max_size=30))
def test_differential_against_etcd(etcd, tmp_path_factory, ops):
    d = etcd.reset()
    s = store_at(str(tmp_path_factory.mktemp("kv")), d)
    try:
        for op in ops:
            req = build(op, s.current_revision, s._compact_rev)
            both(etcd, s, op[0], req)
        check_history(etcd, s, d)
    finally:
        s.close()


# -- scripted scenarios ---------------------------------------------------------------------

def test_sort_ties_match_go(etcd, tmp_path):
    """More than 12 equal sort keys: etcd's order of ties is Go's pdqsort's."""
    d = etcd.reset()
    s = store_at(str(tmp_path / "kv"), d)
    reqs = []
    for i in range(70):
        reqs.append(pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"k%02d" % ((i * 37) % 70), value=b"v%d" % (i % 3))),
            pb.RequestOp(request_put=pb.PutRequest(key=b"j%02d" % ((i * 11) % 70), value=b"w%d" % (i % 4)))]))
    for i in range(0, 70, 3):
        reqs.append(pb.PutRequest(key=b"k%02d" % i, value=b"v%d" % (i % 5)))
    for r in reqs:
        both(etcd, s, "txn" if isinstance(r, pb.TxnRequest) else "put", r)
    for target in range(5):
        for order in range(3):
            for limit in (0, 7):
                both(etcd, s, "range", RR(key=b"\x00", range_end=b"\x00", sort_order=order, sort_target=target,
                                          limit=limit))
                both(etcd, s, "range", RR(key=b"j", range_end=b"k", sort_order=order, sort_target=target,
                                          revision=d + 40, min_mod_revision=d + 10))
    s.close()


def test_lease_revoke_and_compaction_history(etcd, tmp_path):
    d = etcd.reset()
    s = store_at(str(tmp_path / "kv"), d)
    both(etcd, s, "grant", pb.LeaseGrantRequest(ID=0x21, TTL=1000))
    both(etcd, s, "grant", pb.LeaseGrantRequest(ID=0x21, TTL=1000))
    for i, k in enumerate([b"z", b"m", b"a", b"q"]):
        both(etcd, s, "put", pb.PutRequest(key=k, value=b"%d" % i, lease=0x21 if i != 3 else 0))
    both(etcd, s, "put", pb.PutRequest(key=b"m", value=b"again", lease=0x21))
    both(etcd, s, "put", pb.PutRequest(key=b"a", value=b"free"))
    both(etcd, s, "delete", pb.DeleteRangeRequest(key=b"q"))
    both(etcd, s, "compact", pb.CompactionRequest(revision=d + 5, physical=True))
    both(etcd, s, "revoke", pb.LeaseRevokeRequest(ID=0x21))
    both(etcd, s, "revoke", pb.LeaseRevokeRequest(ID=0x21))
    both(etcd, s, "put", pb.PutRequest(key=b"m", value=b"x", lease=0x21))
    both(etcd, s, "range", RR(key=b"\x00", range_end=b"\x00"))
    check_history(etcd, s, d)
    both(etcd, s, "compact", pb.CompactionRequest(revision=s.current_revision, physical=True))
    both(etcd, s, "range", RR(key=b"\x00", range_end=b"\x00", revision=s.current_revision - 1))
    check_history(etcd, s, d)
    s.close()
