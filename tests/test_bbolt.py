"""kvstore.bbolt: bbolt files and etcd-format snapshots, checked against the
real etcd 3.4 tools (Debian etcd-server / etcd-client): kvstore -> etcd
(``etcdctl snapshot status/restore``, then /usr/bin/etcd on the restored data
dir) and etcd -> kvstore (``etcdctl snapshot save`` from a real etcd, then
``restore_snapshot`` and MvccStore reads)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from kvstore import bbolt
from kvstore.mvcc import MvccStore
from kvstore.pb import rpc_pb2
from tests import etcd_single
from tests.procs import Cluster

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
needs_etcd = pytest.mark.skipif(not (etcd_single.available() and os.path.exists(ETCDCTL)),
                                reason="etcd-server / etcd-client not installed")


def etcdctl(*args: str, endpoint: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [ETCDCTL]
    if endpoint:
        cmd += ["--endpoints", endpoint]
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed: {p.stdout}{p.stderr}")
    return p


def with_digest(db: str, out: str) -> str:
    data = open(db, "rb").read()
    with open(out, "wb") as f:
        f.write(data + hashlib.sha256(data).digest())
    return out


def all_kvs(get) -> list[tuple]:
    r = get(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"))
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in r.kvs]


def json_kvs(out: str) -> list[tuple]:
    import base64

    d = json.loads(out)
    return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")), kv.get("create_revision", 0),
             kv.get("mod_revision", 0), kv.get("version", 0), kv.get("lease", 0)) for kv in d.get("kvs", [])]


def populate(store: MvccStore) -> int:
    """Puts, overwrites, deletes, a lease with keys, a big value, a compaction."""
    with store.write() as b:
        b.lease_grant(0x1234, 600)
        b.lease_grant(0x99, 900)
        b.lease_checkpoint(0x99, 321)
        for i in range(1500):
            b.put(rpc_pb2.PutRequest(key=b"k/%04d" % i, value=b"v%d" % i * (i % 20),
                                     lease=0x1234 if i % 100 == 0 else 0))
        b.put(rpc_pb2.PutRequest(key=b"k/0001", value=b"again"))
        b.delete_range(rpc_pb2.DeleteRangeRequest(key=b"k/0002"))
        b.put(rpc_pb2.PutRequest(key=b"gone", value=b"x"))
        b.delete_range(rpc_pb2.DeleteRangeRequest(key=b"gone"))
        b.put(rpc_pb2.PutRequest(key=b"big", value=bytes(range(256)) * 300))
        b.compact(10)
        b.put(rpc_pb2.PutRequest(key=b"k/0003", value=b"after compaction"))
        b.put(rpc_pb2.PutRequest(key=b"\x00\xffbin", value=b"\x00"))
        b.put(rpc_pb2.PutRequest(key=b"long/" + b"L" * 700, value=b"long key", lease=0x99))
    return store.current_revision


def add_auth(store: MvccStore) -> None:
    from kvstore.auth.state import META_KEY, AuthState
    from kvstore.pb import auth_pb2

    st = AuthState()
    st.enabled = True
    st.revision = 7
    st.users["root"] = auth_pb2.User(name=b"root", password=b"scrypt$1$8$1$c2FsdA==$aGFzaA==", roles=["root"])
    st.roles["app"] = auth_pb2.Role(name=b"app", keyPermission=[
        auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"app/", range_end=b"app0")])
    with store.write() as b:
        b.put_meta(META_KEY, st.dump())


# -- the bbolt layer ------------------------------------------------------------------


def test_write_read_round_trip(tmp_path) -> None:
    buckets = {
        b"many": [(b"%08d" % i, b"x" * (i % 37)) for i in range(30000)],  # 3 levels
        b"empty": [],
        b"big": [(b"a", b"A" * 50000), (b"b", b"B"), (b"c", b"C" * 9000)],  # overflow pages
        b"wide": [(bytes([i]) * 300, bytes([i]) * 700) for i in range(1, 200)],
    }
    path = str(tmp_path / "t.db")
    size = bbolt.write_bolt(path, buckets)
    assert size == os.path.getsize(path) and size % bbolt.PAGE_SIZE == 0
    with bbolt.BoltReader(path) as r:
        assert r.bucket_names() == sorted(buckets)
        assert r.meta.pgid * r.page_size == size
        for name, items in buckets.items():
            assert list(r.items(name)) == items
        assert r.bucket(b"nope") is None
        assert r.bucket(b"big").get(b"c") == b"C" * 9000


def test_empty_store(tmp_path) -> None:
    src = MvccStore(str(tmp_path / "src"))
    try:
        bbolt.write_snapshot(src, str(tmp_path / "s.db"))
    finally:
        src.close()
    assert bbolt.restore_snapshot(str(tmp_path / "s.db"), str(tmp_path / "dst")) == 1
    dst = MvccStore(str(tmp_path / "dst"))
    try:
        assert dst.current_revision == 1 and dst.compact_revision == 0 and all_kvs(dst.range) == []
        assert dst.lease_list() == []
    finally:
        dst.close()


def test_writer_refuses_unsorted_keys(tmp_path) -> None:
    with pytest.raises(ValueError):
        bbolt.write_bolt(str(tmp_path / "t.db"), {b"b": [(b"b", b""), (b"a", b"")]})


def test_reader_rejects_garbage(tmp_path) -> None:
    p = tmp_path / "junk"
    p.write_bytes(os.urandom(8192))
    with pytest.raises(bbolt.BoltError):
        bbolt.BoltReader(str(p))
    assert bbolt.snapshot_format(str(p)) == "unknown"


def test_lease_codec() -> None:
    for lid, ttl, rem in [(1, 5, 0), (0x7FFFFFFFFFFFFFFF, 9_000_000_000, 3), (42, 0, 0)]:
        assert bbolt.decode_lease(bbolt.encode_lease(lid, ttl, rem)) == (lid, ttl, rem)


# -- kvstore store <-> snapshot, no etcd needed ----------------------------------------


def test_snapshot_restore_round_trip(tmp_path) -> None:
    src = MvccStore(str(tmp_path / "src"))
    try:
        rev = populate(src)
        add_auth(src)
        snap = str(tmp_path / "s.db")
        bbolt.write_snapshot(src, snap)
        with bbolt.BoltReader(snap) as r:
            assert bbolt.KEY_BUCKET in r.bucket_names() and bbolt.LEASE_BUCKET in r.bucket_names()
        full = with_digest(snap, str(tmp_path / "s.snap"))
        assert bbolt.restore_snapshot(full, str(tmp_path / "dst")) == rev
        dst = MvccStore(str(tmp_path / "dst"))
        try:
            assert dst.current_revision == rev and dst.compact_revision == src.compact_revision == 10
            assert all_kvs(dst.range) == all_kvs(src.range)
            for r in (10, 11, 1504, rev - 1):
                q = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=r)
                assert dst.range(q) == src.range(q), r
            assert dst.hash_kv() == src.hash_kv()
            assert dst.lease_list() == src.lease_list()
            assert dst.lease_get(0x99) == (900, 321)
            assert dst.lease_keys(0x1234) == src.lease_keys(0x1234) and len(dst.lease_keys(0x1234)) == 15
            assert dst.lease_keys(0x99) == [b"long/" + b"L" * 700]
            assert dst.events(11, None, b"\0", b"\0") == src.events(11, None, b"\0", b"\0")
            assert dst.consistent_index == 0
            assert dst.get_meta(b"auth") == src.get_meta(b"auth")  # users, roles, enabled, revision
        finally:
            dst.close()
    finally:
        src.close()


def test_restore_checks_digest_and_accepts_lmdb_copies(tmp_path) -> None:
    src = MvccStore(str(tmp_path / "src"))
    try:
        rev = populate(src)
        snap = str(tmp_path / "s.db")
        bbolt.write_snapshot(src, snap)
        bad = with_digest(snap, str(tmp_path / "bad.snap"))
        with open(bad, "r+b") as f:
            f.seek(5000)
            f.write(b"!")
        with pytest.raises(ValueError, match="SHA-256"):
            bbolt.restore_snapshot(bad, str(tmp_path / "x"))
        # kvstore's older snapshots: an LMDB copy (+ digest)
        src.copy_to(str(tmp_path / "old.mdb"))
        old = with_digest(str(tmp_path / "old.mdb"), str(tmp_path / "old.snap"))
        assert bbolt.snapshot_format(str(tmp_path / "old.mdb")) == "lmdb"
        assert bbolt.restore_snapshot(old, str(tmp_path / "fromold")) == rev
        dst = MvccStore(str(tmp_path / "fromold"))
        try:
            assert all_kvs(dst.range) == all_kvs(src.range)
        finally:
            dst.close()
        with pytest.raises(ValueError, match="not empty"):
            bbolt.restore_snapshot(old, str(tmp_path / "fromold"))
    finally:
        src.close()


# -- against the real etcd tools ---------------------------------------------------------


@needs_etcd
def test_etcdctl_status_and_restore_of_our_snapshot(tmp_path) -> None:
    src = MvccStore(str(tmp_path / "src"))
    try:
        rev = populate(src)
        snap = str(tmp_path / "s.db")
        bbolt.write_snapshot(src, snap)
        full = with_digest(snap, str(tmp_path / "s.snap"))
        st = json.loads(etcdctl("snapshot", "status", full, "-w", "json").stdout)
        with bbolt.BoltReader(snap) as r:
            total = sum(len(r.bucket(n)) for n in r.bucket_names())
            nhist = len(r.bucket(b"key"))
        assert st["revision"] == rev and st["totalKey"] == total
        with src._env.begin() as txn:
            assert nhist == txn.stat(src._hist)["entries"]  # every retained revision

        e = etcd_single.Etcd()
        try:
            peer = f"http://127.0.0.1:{e.peer_port}"
            etcdctl("snapshot", "restore", full, "--data-dir", os.path.join(e.root, "data"), "--name", "e1",
                    "--initial-cluster", f"e1={peer}", "--initial-advertise-peer-urls", peer)
            e.start()
            got = json_kvs(etcdctl("get", "", "--from-key", "-w", "json", endpoint=e.endpoint).stdout)
            assert got == all_kvs(src.range)
            for r in (10, 500, rev - 1):
                old = json_kvs(etcdctl("get", "", "--from-key", "--rev", str(r), "-w", "json",
                                       endpoint=e.endpoint).stdout)
                assert old == all_kvs(lambda q: src.range(rpc_pb2.RangeRequest(key=q.key, range_end=q.range_end,
                                                                              revision=r)))
            p = etcdctl("get", "k", "--rev", "9", endpoint=e.endpoint, check=False)
            assert "required revision has been compacted" in p.stderr
            hdr = json.loads(etcdctl("get", "nothing", "-w", "json", endpoint=e.endpoint).stdout)["header"]
            assert hdr["revision"] == rev
            leases = etcdctl("lease", "list", endpoint=e.endpoint).stdout.split()
            assert "0000000000001234" in leases and "0000000000000099" in leases
            ttl = json.loads(etcdctl("lease", "timetolive", "1234", "--keys", "-w", "json",
                                     endpoint=e.endpoint).stdout)
            assert ttl["granted-ttl"] == 600 and len(ttl["keys"]) == 15
            # and it keeps working as an etcd store
            etcdctl("put", "k/new", "x", endpoint=e.endpoint)
            hdr = json.loads(etcdctl("get", "k/new", "-w", "json", endpoint=e.endpoint).stdout)["header"]
            assert hdr["revision"] == rev + 1
        finally:
            e.close()
    finally:
        src.close()


@needs_etcd
def test_restore_from_a_real_etcd_snapshot(tmp_path) -> None:
    e = etcd_single.Etcd().start()
    try:
        ep = e.endpoint
        etcdctl("put", "a", "1", endpoint=ep)
        etcdctl("put", "a", "2", endpoint=ep)
        etcdctl("put", "b", "x", endpoint=ep)
        etcdctl("del", "b", endpoint=ep)
        lid = etcdctl("lease", "grant", "3000", endpoint=ep).stdout.split()[1]
        etcdctl("put", "l1", "leased", "--lease", lid, endpoint=ep)
        etcdctl("put", "l2", "leased", "--lease", lid, endpoint=ep)
        import grpc

        from kvstore.pb import rpc_pb2_grpc

        with grpc.insecure_channel(ep) as ch:  # enough for branch pages in etcd's own file
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(3000):
                kv.Put(rpc_pb2.PutRequest(key=b"bulk/%04d" % (i % 2000), value=b"v" * (i % 150)), timeout=10)
        subprocess.run([ETCDCTL, "--endpoints", ep, "put", "big"], input="B" * 20000, text=True,
                       env=dict(os.environ, ETCDCTL_API="3"), check=True, capture_output=True)
        etcdctl("compact", "3", endpoint=ep)
        etcdctl("put", "a", "3", endpoint=ep)
        etcdctl("del", "bulk/0060", endpoint=ep)
        want = json_kvs(etcdctl("get", "", "--from-key", "-w", "json", endpoint=ep).stdout)
        rev = json.loads(etcdctl("get", "x", "-w", "json", endpoint=ep).stdout)["header"]["revision"]
        hist = {r: json_kvs(etcdctl("get", "", "--from-key", "--rev", str(r), "-w", "json", endpoint=ep).stdout)
                for r in [3, 4, 5, 6, 7, 8, 100, 2500, rev - 2, rev - 1, rev]}
        snap = str(tmp_path / "etcd.snap")
        etcdctl("snapshot", "save", snap, endpoint=ep)
    finally:
        e.close()
    assert bbolt.snapshot_format(snap) == "bbolt"
    assert bbolt.restore_snapshot(snap, str(tmp_path / "kv")) == rev
    st = MvccStore(str(tmp_path / "kv"))
    try:
        assert st.current_revision == rev and st.compact_revision == 3
        assert all_kvs(st.range) == want
        for r, kvs in hist.items():
            assert all_kvs(lambda q: st.range(rpc_pb2.RangeRequest(key=q.key, range_end=q.range_end,
                                                                   revision=r))) == kvs, r
        assert st.lease_list() == [(int(lid, 16), 3000)]
        assert st.lease_keys(int(lid, 16)) == [b"l1", b"l2"]
        # the store is usable: a write takes the next revision, the lease revokes its keys
        with st.write() as b:
            b.put(rpc_pb2.PutRequest(key=b"after", value=b"1"))
            b.lease_revoke(int(lid, 16))
        assert st.current_revision == rev + 2
        assert st.range(rpc_pb2.RangeRequest(key=b"l1")).count == 0
    finally:
        st.close()


@needs_etcd
def test_etcdctl_snapshot_save_from_kvstore(tmp_path) -> None:
    with Cluster(1) as c:
        c.start()
        ep = c.nodes[0].endpoint
        etcdctl("put", "/s/a", "1", endpoint=ep)
        etcdctl("put", "/s/a", "2", endpoint=ep)
        etcdctl("put", "/s/b", "3", endpoint=ep)
        rev = json.loads(etcdctl("get", "/s/a", "-w", "json", endpoint=ep).stdout)["header"]["revision"]
        snap = str(tmp_path / "kv.snap")
        etcdctl("snapshot", "save", snap, endpoint=ep)
    data = open(snap, "rb").read()
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    st = json.loads(etcdctl("snapshot", "status", snap, "-w", "json").stdout)
    assert st["revision"] == rev and st["totalKey"] >= 3
    assert bbolt.restore_snapshot(snap, str(tmp_path / "kv")) == rev
    s = MvccStore(str(tmp_path / "kv"))
    try:
        got = s.range(rpc_pb2.RangeRequest(key=b"/s/", range_end=b"/s0"))
        assert [(kv.key, kv.value, kv.version) for kv in got.kvs] == [(b"/s/a", b"2", 2), (b"/s/b", b"3", 1)]
    finally:
        s.close()
