"""bbolt files (etcd's backend format) in pure Python, and etcd-format snapshots.

Part 1 is a reader and a writer of go.etcd.io/bbolt 1.3.x database files:

* every page starts with a 16-byte header: id u64, flags u16 (branch 0x01,
  leaf 0x02, meta 0x04, freelist 0x10), count u16, overflow u32 (a page may
  span ``overflow`` more pages), all little-endian;
* pages 0 and 1 are meta pages: magic 0xED0CDAED, version 2, pageSize, flags,
  the root bucket (root pgid, sequence), the freelist pgid, the high-water
  pgid, txid and an FNV-1a 64 checksum of the meta bytes before it; the
  valid one with the higher txid is current;
* a branch page holds ``count`` 16-byte elements (pos u32, ksize u32, pgid
  u64), a leaf page ``count`` 16-byte elements (flags u32, pos u32, ksize
  u32, vsize u32); ``pos`` is relative to the element itself;
* a bucket is a leaf value with flag 0x01: a 16-byte header (root pgid,
  sequence) and, for an inline bucket (root 0), a leaf page right after it.

``BoltReader`` reads any such file (etcd's own snapshots included: inline
buckets, free pages and overflow pages). ``write_bolt`` writes a fresh,
compact file: pages written in order, each B+tree built bottom-up, an empty
freelist, both meta pages valid, so that bbolt's ``tx.Check()`` (what
``etcdctl snapshot status`` runs) finds nothing to say.

Part 2 maps a kvstore MVCC store to etcd 3.4's backend schema and back:
``write_snapshot(store, path)`` and ``restore_snapshot(src, dest_dir)``.
"""
from __future__ import annotations

import mmap
import os
import shutil
import struct
import tempfile
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_SIZE = 4096  # etcd uses the OS page size

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01

PGID_NO_FREELIST = 0xFFFFFFFFFFFFFFFF

_HDR = struct.Struct("<QHHI")           # page header
_META = struct.Struct("<IIIIQQQQQ")     # meta without checksum (56 bytes)
_ELEM_LEAF = struct.Struct("<IIII")
_ELEM_BRANCH = struct.Struct("<IIQ")
_BUCKET = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
HDR_SIZE = 16
ELEM_SIZE = 16
SHA256_SIZE = 32

# etcd 3.4 backend bucket names
KEY_BUCKET = b"key"
META_BUCKET = b"meta"
LEASE_BUCKET = b"lease"
AUTH_BUCKET = b"auth"
AUTH_USERS_BUCKET = b"authUsers"
AUTH_ROLES_BUCKET = b"authRoles"
ALARM_BUCKET = b"alarm"
CLUSTER_BUCKET = b"cluster"
MEMBERS_BUCKET = b"members"
MEMBERS_REMOVED_BUCKET = b"members_removed"

CONSISTENT_INDEX = b"consistent_index"
SCHEDULED_COMPACT = b"scheduledCompactRev"
FINISHED_COMPACT = b"finishedCompactRev"


class BoltError(ValueError):
    """Not a (valid) bbolt file."""


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ----------------------------------------------------------------------------- reader


class Meta:
    __slots__ = ("page_size", "flags", "root", "sequence", "freelist", "pgid", "txid")

    def __init__(self, page_size, flags, root, sequence, freelist, pgid, txid) -> None:
        self.page_size = page_size
        self.flags = flags
        self.root = root
        self.sequence = sequence
        self.freelist = freelist
        self.pgid = pgid
        self.txid = txid


def _parse_meta(buf, off: int) -> Optional[Meta]:
    """The meta of the page at ``off``, or None if it does not validate."""
    if off + HDR_SIZE + _META.size + 8 > len(buf):
        return None
    _, flags, _, _ = _HDR.unpack_from(buf, off)
    if not flags & META_PAGE:
        return None
    raw = bytes(buf[off + HDR_SIZE: off + HDR_SIZE + _META.size])
    magic, version, psize, mflags, root, seq, freelist, pgid, txid = _META.unpack(raw)
    (checksum,) = _U64.unpack_from(buf, off + HDR_SIZE + _META.size)
    if magic != MAGIC or version != VERSION:
        return None
    if checksum != 0 and checksum != fnv1a64(raw):
        return None
    return Meta(psize, mflags, root, seq, freelist, pgid, txid)


class Bucket:
    """A bucket of a ``BoltReader``: ordered (key, value) pairs and sub-buckets."""

    def __init__(self, reader: "BoltReader", root: int, inline: Optional[bytes], sequence: int = 0) -> None:
        self._r = reader
        self.root = root
        self._inline = inline
        self.sequence = sequence

    def _entries(self) -> Iterator[Tuple[bytes, bytes, int]]:
        """(key, value, leaf flags) in key order."""
        if self.root == 0:
            if self._inline is None:
                return
            yield from self._r._leaf_entries(self._inline, 0)
            return
        yield from self._r._tree_entries(self.root)

    def items(self) -> Iterator[Tuple[bytes, bytes]]:
        """Plain (key, value) pairs, in key order (sub-buckets skipped)."""
        for k, v, f in self._entries():
            if not f & BUCKET_LEAF_FLAG:
                yield k, v

    def bucket_names(self) -> List[bytes]:
        return [k for k, _, f in self._entries() if f & BUCKET_LEAF_FLAG]

    def bucket(self, name: bytes) -> Optional["Bucket"]:
        for k, v, f in self._entries():
            if k == name and f & BUCKET_LEAF_FLAG:
                return self._r._bucket_of(v)
        return None

    def get(self, key: bytes) -> Optional[bytes]:
        for k, v, f in self._entries():
            if k == key and not f & BUCKET_LEAF_FLAG:
                return v
            if k > key:
                return None
        return None

    def __len__(self) -> int:
        return sum(1 for _ in self.items())


class BoltReader:
    """Read-only view of a bbolt file (a trailing snapshot digest is ignored).

    Use as a context manager or call ``close()``."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "rb")
        size = os.fstat(self._f.fileno()).st_size
        if size < HDR_SIZE + _META.size + 8:
            self._f.close()
            raise BoltError(f"{path}: file too small to be a bbolt database")
        self._buf = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            metas = []
            m0 = _parse_meta(self._buf, 0)
            if m0 is not None:
                metas.append(m0)
            # meta 1 sits one page further: try meta 0's page size, then the usual ones
            for ps in ([m0.page_size] if m0 else []) + [4096, 8192, 16384, 32768, 65536, 1024, 2048]:
                m1 = _parse_meta(self._buf, ps)
                if m1 is not None and m1.page_size == ps:
                    metas.append(m1)
                    break
            if not metas:
                raise BoltError(f"{path}: not a bbolt database (no valid meta page)")
            self.meta = max(metas, key=lambda m: m.txid)
        except Exception:
            self.close()
            raise
        self.page_size = self.meta.page_size
        self.path = path

    def close(self) -> None:
        try:
            self._buf.close()
        except Exception:
            pass
        self._f.close()

    def __enter__(self) -> "BoltReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- pages --------------------------------------------------------------------

    def _page_off(self, pgid: int) -> int:
        off = pgid * self.page_size
        if pgid >= self.meta.pgid or off + HDR_SIZE > len(self._buf):
            raise BoltError(f"page {pgid} out of bounds")
        return off

    def _leaf_entries(self, buf, off: int) -> Iterator[Tuple[bytes, bytes, int]]:
        _, flags, count, _ = _HDR.unpack_from(buf, off)
        if not flags & LEAF_PAGE:
            raise BoltError(f"expected a leaf page, got flags {flags:#x}")
        base = off + HDR_SIZE
        for i in range(count):
            e = base + i * ELEM_SIZE
            f, pos, ks, vs = _ELEM_LEAF.unpack_from(buf, e)
            k = bytes(buf[e + pos: e + pos + ks])
            v = bytes(buf[e + pos + ks: e + pos + ks + vs])
            yield k, v, f

    def _tree_entries(self, pgid: int) -> Iterator[Tuple[bytes, bytes, int]]:
        buf = self._buf
        stack = [pgid]
        while stack:
            p = stack.pop()
            off = self._page_off(p)
            _, flags, count, _ = _HDR.unpack_from(buf, off)
            if flags & BRANCH_PAGE:
                base = off + HDR_SIZE
                kids = []
                for i in range(count):
                    _, _, child = _ELEM_BRANCH.unpack_from(buf, base + i * ELEM_SIZE)
                    kids.append(child)
                stack.extend(reversed(kids))
            elif flags & LEAF_PAGE:
                yield from self._leaf_entries(buf, off)
            else:
                raise BoltError(f"page {p}: invalid type {flags:#x}")

    def _bucket_of(self, value: bytes) -> Bucket:
        root, seq = _BUCKET.unpack_from(value, 0)
        return Bucket(self, root, value[_BUCKET.size:] if root == 0 else None, seq)

    # -- API ----------------------------------------------------------------------

    @property
    def root(self) -> Bucket:
        return Bucket(self, self.meta.root, None, self.meta.sequence)

    def bucket_names(self) -> List[bytes]:
        return self.root.bucket_names()

    def bucket(self, name: bytes) -> Optional[Bucket]:
        return self.root.bucket(name)

    def items(self, name: bytes) -> Iterator[Tuple[bytes, bytes]]:
        """(key, value) of a top-level bucket (nothing if it does not exist)."""
        b = self.bucket(name)
        if b is not None:
            yield from b.items()

    def to_dict(self) -> Dict[bytes, Dict[bytes, bytes]]:
        """Every top-level bucket's plain key/values (for tests and small files)."""
        return {n: dict(self.bucket(n).items()) for n in self.bucket_names()}


# ----------------------------------------------------------------------------- writer


class _PageWriter:
    def __init__(self, f, page_size: int) -> None:
        self.f = f
        self.ps = page_size
        self.next = 0

    def write(self, flags: int, count: int, body: bytes) -> int:
        """Write one page (with overflow as needed); returns its pgid."""
        pgid = self.next
        total = HDR_SIZE + len(body)
        npages = max(1, -(-total // self.ps))
        hdr = _HDR.pack(pgid, flags, count, npages - 1)
        self.f.write(hdr)
        self.f.write(body)
        self.f.write(b"\0" * (npages * self.ps - total))
        self.next += npages
        return pgid


def _build_tree(pw: _PageWriter, items: Iterable[Tuple[bytes, bytes, int]]) -> int:
    """Write a B+tree of (key, value, leaf flags) in key order; returns the root pgid."""
    ps = pw.ps
    level: List[Tuple[bytes, int]] = []  # (first key, pgid) of each page of the level
    cur: List[Tuple[bytes, bytes, int]] = []
    size = HDR_SIZE

    def flush_leaf() -> None:
        n = len(cur)
        heads = bytearray()
        data = bytearray()
        for i, (k, v, f) in enumerate(cur):
            pos = (n - i) * ELEM_SIZE + len(data)
            heads += _ELEM_LEAF.pack(f, pos, len(k), len(v))
            data += k
            data += v
        level.append((cur[0][0] if cur else b"", pw.write(LEAF_PAGE, n, bytes(heads + data))))

    prev = None
    for k, v, f in items:
        if prev is not None and k <= prev:
            raise ValueError("keys must be written in strictly increasing order")
        prev = k
        need = ELEM_SIZE + len(k) + len(v)
        if cur and (size + need > ps or len(cur) >= 0xFFFF):
            flush_leaf()
            cur = []
            size = HDR_SIZE
        cur.append((k, v, f))
        size += need
    if cur or not level:
        flush_leaf()

    while len(level) > 1:
        upper = []
        for group in _group_branch(level, ps):
            n = len(group)
            heads = bytearray()
            data = bytearray()
            for j, (k, child) in enumerate(group):
                pos = (n - j) * ELEM_SIZE + len(data)
                heads += _ELEM_BRANCH.pack(pos, len(k), child)
                data += k
            upper.append((group[0][0], pw.write(BRANCH_PAGE, n, bytes(heads + data))))
        level = upper
    return level[0][1]


def _group_branch(level: List[Tuple[bytes, int]], ps: int) -> List[List[Tuple[bytes, int]]]:
    """Split a level's (first key, pgid) list into branch pages of at least
    two elements each (a one-element branch is legal but pointless)."""
    groups: List[List[Tuple[bytes, int]]] = []
    group: List[Tuple[bytes, int]] = []
    size = HDR_SIZE
    for el in level:
        need = ELEM_SIZE + len(el[0])
        if group and (size + need > ps or len(group) >= 0xFFFF):
            groups.append(group)
            group = []
            size = HDR_SIZE
        group.append(el)
        size += need
    groups.append(group)
    if len(groups) > 1 and len(groups[-1]) == 1:
        groups[-1].insert(0, groups[-2].pop())
    return groups


def write_bolt(path: str, buckets: Dict[bytes, Iterable[Tuple[bytes, bytes]]],
               page_size: int = PAGE_SIZE, txid: int = 1) -> int:
    """Write a fresh bbolt file at ``path`` with top-level ``buckets``: name ->
    (key, value) pairs in strictly increasing key order (any iterable: they
    are streamed to disk). Returns the file size."""
    with open(path, "wb") as f:
        pw = _PageWriter(f, page_size)
        # meta pages are written last; reserve them
        f.write(b"\0" * (2 * page_size))
        pw.next = 2
        freelist = pw.write(FREELIST_PAGE, 0, b"")
        roots = []
        for name in sorted(buckets):
            roots.append((name, _BUCKET.pack(_build_tree(pw, ((k, v, 0) for k, v in buckets[name])), 0),
                          BUCKET_LEAF_FLAG))
        root = _build_tree(pw, roots)
        high = pw.next
        base = txid & ~1
        for i in (0, 1):
            t = base + i  # bbolt writes meta txid % 2 to page txid % 2
            raw = _META.pack(MAGIC, VERSION, page_size, 0, root, 0, freelist, high, t)
            page = _HDR.pack(i, META_PAGE, 0, 0) + raw + _U64.pack(fnv1a64(raw))
            f.seek(i * page_size)
            f.write(page)
        f.flush()
        os.fsync(f.fileno())
        return high * page_size


# ----------------------------------------------------------------------------- etcd schema

def _uvarint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_lease(lease_id: int, ttl: int, remaining_ttl: int) -> bytes:
    """leasepb.Lease{ID: 1, TTL: 2, RemainingTTL: 3} (int64 varints, zeros omitted)."""
    out = bytearray()
    for field, val in ((1, lease_id), (2, ttl), (3, remaining_ttl)):
        if val:
            out.append(field << 3)
            out += _uvarint(val)
    return bytes(out)


def decode_lease(raw: bytes) -> Tuple[int, int, int]:
    """(ID, TTL, RemainingTTL) of a serialized leasepb.Lease."""
    vals = {1: 0, 2: 0, 3: 0}
    i = 0
    while i < len(raw):
        tag = 0
        shift = 0
        while True:
            b = raw[i]
            i += 1
            tag |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            n = 0
            shift = 0
            while True:
                b = raw[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            if n >= 1 << 63:
                n -= 1 << 64
            if field in vals:
                vals[field] = n
        elif wt == 2:
            n = 0
            shift = 0
            while True:
                b = raw[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            i += n
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise BoltError("bad leasepb.Lease encoding")
    return vals[1], vals[2], vals[3]


def _rev_bytes(main: int) -> bytes:
    return struct.pack(">Q", main & 0xFFFFFFFFFFFFFFFF) + b"_" + struct.pack(">Q", 0)


def _auth_items(raw: Optional[bytes]):
    """etcd's auth, authUsers, authRoles buckets from kvstore's auth state."""
    from kvstore.auth.state import AuthState

    st = AuthState.load(raw)
    auth = [(b"authEnabled", b"\x01" if st.enabled else b"\x00"),
            (b"authRevision", struct.pack(">Q", st.revision))]
    users = sorted((n.encode(), u.SerializeToString(deterministic=True)) for n, u in st.users.items())
    roles = sorted((n.encode(), r.SerializeToString(deterministic=True)) for n, r in st.roles.items())
    return auth, users, roles


def write_snapshot(store, dest_path: str, page_size: int = PAGE_SIZE) -> int:
    """Write a consistent snapshot of ``store`` (a ``kvstore.mvcc.MvccStore``)
    at ``dest_path`` as an etcd 3.4 backend file (bbolt), what etcd's
    Maintenance.Snapshot streams (without the SHA-256 trailer: the caller
    appends it when streaming).

    Everything is read in one LMDB read transaction: bucket ``key`` gets
    every retained history entry (17/18-byte revision keys -> mvccpb.KeyValue,
    byte for byte), ``meta`` the consistent index and, once compacted,
    ``scheduledCompactRev``/``finishedCompactRev``, ``lease`` every lease
    (leasepb.Lease with TTL and the checkpointed remaining TTL), ``auth``/
    ``authUsers``/``authRoles`` kvstore's auth state (authpb, as etcd stores
    it; kvstore's password hashes are scrypt, not bcrypt), ``cluster`` the
    cluster version, and empty ``alarm``, ``members``, ``members_removed``
    (a restore rewrites membership). Returns the file size in bytes."""
    from kvstore.mvcc import keys as K

    tmp = dest_path + ".tmp"
    txn = store._read()
    try:
        meta = store._meta
        q = struct.Struct(">q")
        compact = q.unpack(txn.get(b"compact_rev", db=meta))[0]
        ci = q.unpack(txn.get(b"consistent_index", db=meta))[0]
        meta_items = [(CONSISTENT_INDEX, struct.pack(">Q", ci & 0xFFFFFFFFFFFFFFFF))]
        if compact >= 0:
            meta_items += [(FINISHED_COMPACT, _rev_bytes(compact)), (SCHEDULED_COMPACT, _rev_bytes(compact))]
        meta_items.sort()

        def leases():
            for k, v in txn.cursor(store._lease).iternext():
                ttl, rem = struct.unpack(">qq", v)
                yield k, encode_lease(K.int64_of(k), ttl, rem)

        auth, users, roles = _auth_items(txn.get(b"auth", db=store._app))
        buckets = {
            KEY_BUCKET: txn.cursor(store._hist).iternext(),
            META_BUCKET: meta_items,
            LEASE_BUCKET: leases(),
            AUTH_BUCKET: auth,
            AUTH_USERS_BUCKET: users,
            AUTH_ROLES_BUCKET: roles,
            ALARM_BUCKET: [],
            CLUSTER_BUCKET: [(b"clusterVersion", b"3.4.0")],
            MEMBERS_BUCKET: [],
            MEMBERS_REMOVED_BUCKET: [],
        }
        size = write_bolt(tmp, buckets, page_size)
    finally:
        txn.abort()
    os.replace(tmp, dest_path)
    return size


# ----------------------------------------------------------------------------- restore

LMDB_MAGIC = 0xBEEFC0DE


def snapshot_format(path: str) -> str:
    """"bbolt", "lmdb" (kvstore's older LMDB-copy snapshots) or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) >= 20:
        m = struct.unpack_from("<I", head, 16)[0]
        if m == MAGIC:
            return "bbolt"
        if m == LMDB_MAGIC:
            return "lmdb"
    return "unknown"


def _strip_digest(src_path: str, tmpdir: str) -> str:
    """A copy of the database part of ``src_path`` if it carries etcd's
    SHA-256 trailer (size % 512 == 32, checked), else ``src_path`` itself."""
    import hashlib

    size = os.path.getsize(src_path)
    if size % 512 != SHA256_SIZE:
        return src_path
    body = size - SHA256_SIZE
    out = os.path.join(tmpdir, "snapshot.db")
    h = hashlib.sha256()
    with open(src_path, "rb") as src, open(out, "wb") as dst:
        left = body
        while left:
            chunk = src.read(min(1 << 20, left))
            if not chunk:
                raise BoltError(f"{src_path}: file shrank while reading")
            h.update(chunk)
            dst.write(chunk)
            left -= len(chunk)
        if src.read(SHA256_SIZE) != h.digest():
            raise BoltError(f"{src_path}: SHA-256 mismatch: the snapshot is corrupt")
    return out


def restore_snapshot(src_path: str, dest_store_dir: str) -> int:
    """Turn a snapshot file into a kvstore MVCC store directory.

    ``src_path``: a bbolt snapshot (from ``etcdctl snapshot save`` against
    etcd or kvstore, with or without the 32-byte SHA-256 trailer, which is
    verified when present), a bare etcd ``member/snap/db`` file, or one of
    kvstore's older LMDB-copy snapshots (detected by magic).
    ``dest_store_dir``: the store directory (what ``MvccStore(path)``
    opens); it must not exist or be empty.

    The store is rebuilt from the history in bucket ``key``: same keys,
    values, create/mod revisions, versions and leases; the current revision
    is the last one in the history (at least the compacted revision), the
    compacted revision is ``finishedCompactRev`` (an unfinished
    ``scheduledCompactRev`` is completed). Leases come from bucket
    ``lease`` with the keys that name them attached. Auth users/roles and
    the enabled flag come from ``auth``/``authUsers``/``authRoles``
    (etcd's bcrypt password hashes do not verify on kvstore: reset the
    passwords). The consistent index is reset to 0 and no member list or
    alarm is kept: the store is for a new cluster, whose Raft log starts
    afresh. Returns the store's current revision."""
    from kvstore.mvcc import MvccStore

    if os.path.exists(dest_store_dir) and os.listdir(dest_store_dir):
        raise ValueError(f"{dest_store_dir!r} exists and is not empty")
    if not os.path.isfile(src_path):
        raise ValueError(f"{src_path}: no such file")
    tmpdir = tempfile.mkdtemp(prefix=".restore-", dir=os.path.dirname(os.path.abspath(dest_store_dir)) or None)
    try:
        db = _strip_digest(src_path, tmpdir)
        fmt = snapshot_format(db)
        if fmt == "lmdb":
            MvccStore.restore_from(db, dest_store_dir)
            store = MvccStore(dest_store_dir, quota_bytes=max(os.path.getsize(db) * 4, 2 << 30))
            try:
                with store.write() as batch:
                    for name in (b"members", b"alarms"):  # the new cluster has its own
                        if batch.get_meta(name) is not None:
                            batch.delete_meta(name)
                    batch.set_consistent_index(0)
                store.checkpoint()
                return store.current_revision
            finally:
                store.close()
        if fmt != "bbolt":
            raise BoltError(f"{src_path}: neither an etcd/kvstore bbolt snapshot nor an LMDB copy")
        with BoltReader(db) as r:
            return _restore_bolt(r, dest_store_dir, os.path.getsize(db))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _restore_bolt(r: BoltReader, dest: str, size: int) -> int:
    from kvstore.mvcc import MvccStore
    from kvstore.mvcc import keys as K
    from kvstore.pb import kv_pb2

    q = struct.Struct(">q")
    meta = dict(r.items(META_BUCKET))
    finished = meta.get(FINISHED_COMPACT)
    scheduled = meta.get(SCHEDULED_COMPACT)
    compact = K.rev_main(finished) if finished else -1
    sched = K.rev_main(scheduled) if scheduled else -1

    store = MvccStore(dest, quota_bytes=max(size * 4, 2 << 30))
    try:
        env = store._env
        last_main = 1
        with env.begin(write=True) as txn:
            hist, kvdb, revs = store._hist, store._kv, store._revs
            live_leases: Dict[bytes, int] = {}
            for k, v in r.items(KEY_BUCKET):
                if len(k) not in (17, 18) or k[8:9] != b"_":
                    raise BoltError(f"bad revision key {k!r} in bucket 'key'")
                tomb = len(k) == 18
                if tomb and k[17] != K.TOMBSTONE:
                    raise BoltError(f"bad revision key {k!r} in bucket 'key'")
                if not txn.put(k, v, db=hist, append=True):
                    raise BoltError("bucket 'key' is not in revision order")
                kv = kv_pb2.KeyValue.FromString(v)
                enc = K.enc_key(kv.key)
                last_main = max(last_main, K.rev_main(k))
                if tomb:
                    txn.put(enc, k, db=revs)
                    txn.delete(enc, db=kvdb)
                    live_leases.pop(enc, None)
                else:
                    txn.put(enc, k + K.FLAG_PUT, db=revs)
                    txn.put(enc, v, db=kvdb)
                    if kv.lease:
                        live_leases[enc] = kv.lease
                    else:
                        live_leases.pop(enc, None)
            lease_ids = set()
            for k, v in r.items(LEASE_BUCKET):
                lid, ttl, rem = decode_lease(v)
                lk = K.int64_key(lid)
                txn.put(lk, struct.pack(">qq", ttl, rem), db=store._lease)
                lease_ids.add(lid)
            for enc, lid in sorted(live_leases.items()):
                if lid in lease_ids:
                    txn.put(K.int64_key(lid), enc, db=store._lkeys)
            cur = max(last_main, compact, 1)
            m = store._meta
            txn.put(b"current_rev", q.pack(cur), db=m)
            txn.put(b"compact_rev", q.pack(compact), db=m)
            txn.put(b"consistent_index", q.pack(0), db=m)
            auth = _auth_state(r)
            if auth is not None:
                txn.put(b"auth", auth, db=store._app)
    finally:
        store.close()
    store = MvccStore(dest, quota_bytes=max(size * 4, 2 << 30))
    try:
        if sched > compact and sched <= store.current_revision:
            with store.write() as batch:
                batch.compact(sched)
        store.checkpoint()
        return store.current_revision
    finally:
        store.close()


def _auth_state(r: BoltReader) -> Optional[bytes]:
    from kvstore.auth.state import AuthState
    from kvstore.pb import auth_pb2

    auth = dict(r.items(AUTH_BUCKET))
    users = list(r.items(AUTH_USERS_BUCKET))
    roles = list(r.items(AUTH_ROLES_BUCKET))
    if not auth and not users and not roles:
        return None
    st = AuthState()
    st.enabled = auth.get(b"authEnabled") == b"\x01"
    rev = auth.get(b"authRevision")
    st.revision = struct.unpack(">Q", rev)[0] if rev and len(rev) == 8 else 1
    for name, raw in users:
        st.users[name.decode()] = auth_pb2.User.FromString(raw)
    for name, raw in roles:
        st.roles[name.decode()] = auth_pb2.Role.FromString(raw)
    return st.dump()
