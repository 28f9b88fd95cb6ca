"""Deterministic MVCC key-value store on LMDB with etcd 3.4's semantics.

Layout: one LMDB environment (opened with ``sync=False``: the Raft log is
the durable source of truth and apply re-runs from ``consistent_index``),
with these named databases:

``kv``          encoded key -> serialized ``mvccpb.KeyValue`` of the live
                version (latest reads never touch history)
``hist``        revision key -> serialized ``KeyValue`` (etcd's "key" bucket,
                byte for byte: 17-byte ``main|_|sub`` keys, 18 bytes with a
                trailing ``t`` for a tombstone whose value is ``KeyValue{key}``)
``revs``        dupsort: encoded key -> ``rev17 + flag`` (``p`` put, ``t``
                tombstone) for every stored revision of the key (historical
                reads, compaction, watch prev_kv)
``meta``        current_rev, compact_rev, consistent_index, format
``app``         small application state (``put_meta``/``get_meta``)
``lease``       lease id (8 bytes BE) -> ttl, remaining ttl (2 x int64 BE)
``lease_keys``  dupsort: lease id -> encoded key of every attached key

Everything a write does goes through one LMDB write transaction per
``WriteBatch`` (one batch of Raft entries), so the effects of an entry and
``consistent_index`` are always committed together.
"""
from __future__ import annotations

import os
import shutil
import struct
from typing import Iterator, List, Optional, Tuple

import lmdb

from kvstore import errors
from kvstore.pb import kv_pb2, rpc_pb2

from . import keys as K
from .gosort import go_sort
from .validate import (
    DEFAULT_MAX_TXN_OPS,
    OP_DELETE,
    OP_PUT,
    OP_RANGE,
    OP_TXN,
    TxnOps,
    check_delete,
    check_put,
    check_range,
    ops_readonly,
    request_cost,
    txn_ops,
)

KeyValue = kv_pb2.KeyValue
Event = kv_pb2.Event
PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE

RR = rpc_pb2.RangeRequest
_SORT_NONE, _SORT_ASCEND, _SORT_DESCEND = RR.NONE, RR.ASCEND, RR.DESCEND
_T_KEY, _T_VERSION, _T_CREATE, _T_MOD, _T_VALUE = RR.KEY, RR.VERSION, RR.CREATE, RR.MOD, RR.VALUE

C = rpc_pb2.Compare
_C_EQUAL, _C_GREATER, _C_LESS, _C_NOT_EQUAL = C.EQUAL, C.GREATER, C.LESS, C.NOT_EQUAL
_C_VERSION, _C_CREATE, _C_MOD, _C_VALUE, _C_LEASE = C.VERSION, C.CREATE, C.MOD, C.VALUE, C.LEASE

MAX_LEASE_TTL = 9_000_000_000  # lease.MaxLeaseTTL

_q = struct.Struct(">q")
_qq = struct.Struct(">qq")
_P = K.MAX_RAW_KEY

_META_CURRENT = b"current_rev"
_META_COMPACT = b"compact_rev"
_META_CI = b"consistent_index"
_META_FORMAT = b"format"
_FORMAT = b"1"

_DB_NAMES = (b"kv", b"hist", b"revs", b"meta", b"app", b"lease", b"lease_keys")
_DUPSORT = {b"revs": dict(dupsort=True, dupfixed=True), b"lease_keys": dict(dupsort=True)}


class _Req:
    """One write request (one main revision) in progress."""

    __slots__ = ("main", "sub", "events")

    def __init__(self, begin_rev: int) -> None:
        self.main = begin_rev + 1
        self.sub = 0
        self.events: List[kv_pb2.Event] = []

    @property
    def view_rev(self) -> int:
        # etcd's storeTxnWrite: reads see beginRev, or beginRev+1 once changed
        return self.main if self.sub else self.main - 1


class _View:
    """Read logic over one LMDB transaction (read or write)."""

    def __init__(self, store: "MvccStore", txn: lmdb.Transaction) -> None:
        self._s = store
        self._txn = txn

    # -- meta -----------------------------------------------------------------

    def _meta_revs(self) -> Tuple[int, int]:
        g = self._txn.get
        m = self._s._meta
        return _q.unpack(g(_META_CURRENT, db=m))[0], _q.unpack(g(_META_COMPACT, db=m))[0]

    def _lease_exists(self, lease_id: int) -> bool:
        return self._txn.get(K.int64_key(lease_id), db=self._s._lease) is not None

    # -- ordered walks over encoded keys ----------------------------------------

    def _walk(self, cur: lmdb.Cursor, key: bytes, end: bytes, real_key, nodup: bool = False,
              values: bool = True) -> Iterator[Tuple[bytes, Optional[bytes]]]:
        """Yield (dbkey, value) for real keys in [key, end) (end b"" = unbounded)
        in real key order; re-sorts groups of long-key encodings."""
        seek = key if len(key) <= _P else key[:_P]
        if not cur.set_range(seek):
            return
        if nodup:
            it = cur.iternext_nodup(keys=True, values=values)
        else:
            it = cur.iternext(keys=True, values=values)
        group = None
        gp = None
        for item in it:
            if values:
                k, v = item
            else:
                k, v = item, None
            if len(k) <= _P:
                if group:
                    for _, k2, v2 in sorted(group):
                        yield k2, v2
                group = None
                if end and k >= end:
                    return
                if k < key:
                    continue
                yield k, v
            else:
                p = k[:_P]
                if group is not None and p != gp:
                    for _, k2, v2 in sorted(group):
                        yield k2, v2
                    group = None
                if group is None:
                    if end and p >= end:
                        return
                    group = []
                    gp = p
                rk = real_key(k, v if values else cur.value())
                if rk >= key and (not end or rk < end):
                    group.append((rk, k, v))
        if group:
            for _, k2, v2 in sorted(group):
                yield k2, v2

    def _rk_latest(self, k: bytes, v: bytes) -> bytes:
        return K.kv_key(v)

    def _rk_revs(self, k: bytes, first_dup: bytes) -> bytes:
        return K.kv_key(self._txn.get(K.hist_key_of_dup(first_dup), db=self._s._hist))

    def _latest(self, key: bytes, end: Optional[bytes], keep: Optional[int]) -> Tuple[List[bytes], int]:
        """Live KeyValues (serialized) in the range at the view's current
        revision: (first ``keep`` of them, or all if None; total count)."""
        txn = self._txn
        kvdb = self._s._kv
        if end is None:
            raw = txn.get(K.enc_key(key), db=kvdb)
            if raw is None:
                return [], 0
            return ([raw] if keep is None or keep > 0 else []), 1
        cur = txn.cursor(kvdb)
        if keep is None:
            raws = [v for _, v in self._walk(cur, key, end, self._rk_latest)]
            return raws, len(raws)
        raws = []
        if keep > 0:
            for _, v in self._walk(cur, key, end, self._rk_latest):
                raws.append(v)
                if len(raws) >= keep:
                    break
            else:
                return raws, len(raws)
            key = K.kv_key(raws[-1]) + b"\x00"  # count the rest, keys only
            cur = txn.cursor(kvdb)
        n = len(raws)
        for _ in self._walk(cur, key, end, self._rk_latest, values=False):
            n += 1
        return raws, n

    def _latest_items(self, key: bytes, end: Optional[bytes]) -> List[Tuple[bytes, bytes]]:
        txn = self._txn
        kvdb = self._s._kv
        if end is None:
            enc = K.enc_key(key)
            raw = txn.get(enc, db=kvdb)
            return [] if raw is None else [(enc, raw)]
        return list(self._walk(txn.cursor(kvdb), key, end, self._rk_latest))

    @staticmethod
    def _dup_at(lc: lmdb.Cursor, enc: bytes, rev: int) -> Optional[bytes]:
        """The key's latest revs entry with main revision <= rev, or None."""
        if lc.set_range_dup(enc, K.rev_key(rev + 1, 0) + b"\x00"):
            if lc.prev_dup():
                return lc.value()
            return None
        if lc.set_key(enc):
            lc.last_dup()
            return lc.value()
        return None

    def _raw_at(self, enc: bytes, rev: int) -> Optional[bytes]:
        d = self._dup_at(self._txn.cursor(self._s._revs), enc, rev)
        if d is None or d[17] == K.TOMBSTONE:
            return None
        return self._txn.get(d[:17], db=self._s._hist)

    def _at(self, key: bytes, end: Optional[bytes], rev: int, keep: Optional[int]) -> Tuple[List[bytes], int]:
        """Like _latest but at a past revision, through the per-key index."""
        txn = self._txn
        if end is None:
            raw = self._raw_at(K.enc_key(key), rev)
            if raw is None:
                return [], 0
            return ([raw] if keep is None or keep > 0 else []), 1
        revs = self._s._revs
        hist = self._s._hist
        lc = txn.cursor(revs)
        raws = []
        n = 0
        get = txn.get
        for enc, _ in self._walk(txn.cursor(revs), key, end, self._rk_revs, nodup=True):
            d = self._dup_at(lc, enc, rev)
            if d is None or d[17] == K.TOMBSTONE:
                continue
            if keep is None or n < keep:
                raws.append(get(d[:17], db=hist))
            n += 1
        return raws, n

    # -- Range ----------------------------------------------------------------

    def _range_into(self, req: rpc_pb2.RangeRequest, cur_rev: int, compact: int,
                    resp: rpc_pb2.RangeResponse) -> None:
        """applierV3backend.Range + storeTxnRead.rangeKeys."""
        rev = req.revision
        if rev > cur_rev:
            raise errors.FUTURE_REV
        if rev <= 0:
            rev = cur_rev
        if rev < compact:
            raise errors.COMPACTED
        resp.header.revision = cur_rev
        key = req.key
        end = K.mk_gte_range(req.range_end)
        fetch = self._latest if rev == cur_rev else (lambda k, e, keep: self._at(k, e, rev, keep))

        if req.count_only:
            _, count = fetch(key, end, 0)
            resp.count = count
            return

        limit = req.limit
        filtered = (req.min_mod_revision or req.max_mod_revision
                    or req.min_create_revision or req.max_create_revision)
        # etcd fetches everything only for an explicit sort order or a filter;
        # otherwise limit+1 keys in key order, which a non-KEY sort_target
        # with order NONE then sorts (only those!).
        if req.sort_order != _SORT_NONE or filtered or limit <= 0:
            raws, count = fetch(key, end, None)
        else:
            raws, count = fetch(key, end, limit + 1)
        resp.count = count
        order = req.sort_order
        target = req.sort_target
        if target != _T_KEY and order == _SORT_NONE:
            order = _SORT_ASCEND
        sorting = order in (_SORT_ASCEND, _SORT_DESCEND) and target in (
            _T_KEY, _T_VERSION, _T_CREATE, _T_MOD, _T_VALUE)

        if not filtered and (not sorting or target == _T_KEY):
            # key order is the index order: no parsing needed
            if sorting and order == _SORT_DESCEND:
                raws.reverse()
            if limit > 0 and len(raws) > limit:
                del raws[limit:]
                resp.more = True
            add = resp.kvs.add
            if req.keys_only:
                for raw in raws:
                    kv = add()
                    kv.MergeFromString(raw)
                    kv.ClearField("value")
            else:
                for raw in raws:
                    add().MergeFromString(raw)
            return

        kvs = [KeyValue.FromString(raw) for raw in raws]
        if req.max_mod_revision:
            m = req.max_mod_revision
            kvs = [kv for kv in kvs if not kv.mod_revision > m]
        if req.min_mod_revision:
            m = req.min_mod_revision
            kvs = [kv for kv in kvs if not kv.mod_revision < m]
        if req.max_create_revision:
            m = req.max_create_revision
            kvs = [kv for kv in kvs if not kv.create_revision > m]
        if req.min_create_revision:
            m = req.min_create_revision
            kvs = [kv for kv in kvs if not kv.create_revision < m]
        if sorting:
            if target == _T_KEY:
                if order == _SORT_DESCEND:
                    kvs.reverse()
            else:
                attr = {_T_VERSION: "version", _T_CREATE: "create_revision",
                        _T_MOD: "mod_revision", _T_VALUE: "value"}[target]
                kvs = go_sort(kvs, key=lambda kv: getattr(kv, attr), reverse=(order == _SORT_DESCEND))
        if limit > 0 and len(kvs) > limit:
            del kvs[limit:]
            resp.more = True
        if req.keys_only:
            for kv in kvs:
                kv.ClearField("value")
        resp.kvs.extend(kvs)

    # -- Txn (read parts) -----------------------------------------------------

    def _compare(self, c: rpc_pb2.Compare) -> bool:
        """applyCompare: every key of the range must satisfy the compare."""
        raws, _ = self._latest(c.key, K.mk_gte_range(c.range_end), None)
        if not raws:
            if c.target == _C_VALUE:
                return False
            return _compare_kv(c, None)
        for raw in raws:
            if not _compare_kv(c, KeyValue.FromString(raw)):
                return False
        return True

    def _path(self, t: TxnOps):
        """compareToPath: every compare of the txn and of the nested txns on
        the taken branches is evaluated against the state at txn start."""
        ok = True
        for c in t.compare:
            if not self._compare(c):
                ok = False
                break
        ops = t.success if ok else t.failure
        children = [self._path(sub) for w, sub in ops if w == OP_TXN]
        return ok, children

    def _check_ranges(self, t: TxnOps, path, begin_rev: int, compact: int) -> None:
        """checkRequestRange over the taken path (against the txn start view)."""
        ok, children = path
        ci = 0
        for w, sub in (t.success if ok else t.failure):
            if w == OP_TXN:
                self._check_ranges(sub, children[ci], begin_rev, compact)
                ci += 1
            elif w == OP_RANGE:
                rev = sub.revision
                if rev == 0:
                    continue
                if rev > begin_rev:
                    raise errors.FUTURE_REV
                if rev < compact:
                    raise errors.COMPACTED

    def _txn_into(self, r: _Req, t: TxnOps, path, resp: Optional[rpc_pb2.TxnResponse],
                  compact: int) -> None:
        """applyTxn: run the taken branch, responses in op order (``resp``
        None: only the writes, nobody reads the responses)."""
        ok, children = path
        ci = 0
        ops = t.success if ok else t.failure
        if resp is None:
            for w, sub in ops:
                if w == OP_PUT:
                    self._put_into(r, sub, None)
                elif w == OP_DELETE:
                    self._delete_into(r, sub, None)
                elif w == OP_TXN:
                    self._txn_into(r, sub, children[ci], None, compact)
                    ci += 1
            return
        resp.succeeded = ok
        add = resp.responses.add
        for w, sub in ops:
            out = add()
            if w == OP_PUT:
                self._put_into(r, sub, out.response_put)
            elif w == OP_RANGE:
                self._range_into(sub, r.view_rev, compact, out.response_range)
            elif w == OP_DELETE:
                self._delete_into(r, sub, out.response_delete_range)
            elif w == OP_TXN:
                nested = out.response_txn
                nested.header.SetInParent()  # etcd leaves nested headers empty
                self._txn_into(r, sub, children[ci], nested, compact)
                ci += 1

    def _put_into(self, r, req, resp):  # pragma: no cover - read views never write
        raise AssertionError("write in a read-only view")

    _delete_into = _put_into

    # -- history --------------------------------------------------------------

    def _prev_raw(self, key: bytes, mod_revision: int, compact: int) -> Optional[bytes]:
        """What etcd's watch attaches as prev_kv: Range(key, rev=mod_revision-1)."""
        rev = mod_revision - 1
        if rev <= 0 or rev < compact:
            return None
        return self._raw_at(K.enc_key(key), rev)


def _cmp(a, b) -> int:
    return (a > b) - (a < b)


def _compare_kv(c: rpc_pb2.Compare, kv: Optional[kv_pb2.KeyValue]) -> bool:
    """etcd's compareKV; ``kv`` None is the zero KeyValue."""
    which = c.WhichOneof("target_union")
    t = c.target
    if t == _C_VALUE:
        v = c.value if which == "value" else b""
        result = _cmp(kv.value if kv is not None else b"", v)
    elif t == _C_CREATE:
        v = c.create_revision if which == "create_revision" else 0
        result = _cmp(kv.create_revision if kv is not None else 0, v)
    elif t == _C_MOD:
        v = c.mod_revision if which == "mod_revision" else 0
        result = _cmp(kv.mod_revision if kv is not None else 0, v)
    elif t == _C_VERSION:
        v = c.version if which == "version" else 0
        result = _cmp(kv.version if kv is not None else 0, v)
    elif t == _C_LEASE:
        v = c.lease if which == "lease" else 0
        result = _cmp(kv.lease if kv is not None else 0, v)
    else:
        result = 0
    res = c.result
    if res == _C_EQUAL:
        return result == 0
    if res == _C_NOT_EQUAL:
        return result != 0
    if res == _C_GREATER:
        return result > 0
    if res == _C_LESS:
        return result < 0
    return True


class WriteBatch(_View):
    """One LMDB write transaction for a batch of Raft entries.

    Use as a context manager: commits on normal exit, aborts on exception.
    A request that raises (validation, missing lease, NO_SPACE...) leaves no
    trace; earlier requests of the batch are unaffected. Each write request
    that changes something takes exactly one new main revision.

    ``fill_prev_kv``: when True, events returned by writes carry ``prev_kv``
    (the key's previous live version, as a watch with prev_kv would show).
    """

    def __init__(self, store: "MvccStore") -> None:
        super().__init__(store, store._env.begin(write=True))
        self._rev = store._current_rev
        self._compact = store._compact_rev
        self._ci = store._consistent_index
        self._base_size = store.db_size()
        self._pending = 0
        self._open = True
        self.fill_prev_kv = False

    # -- context manager / lifecycle -------------------------------------------

    def __enter__(self) -> "WriteBatch":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self._open:
            return False
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def commit(self) -> None:
        s = self._s
        txn = self._txn
        m = s._meta
        txn.put(_META_CURRENT, _q.pack(self._rev), db=m)
        txn.put(_META_COMPACT, _q.pack(self._compact), db=m)
        txn.put(_META_CI, _q.pack(self._ci), db=m)
        txn.commit()
        self._open = False
        s._current_rev = self._rev
        s._compact_rev = self._compact
        s._consistent_index = self._ci
        s._batch = None

    def abort(self) -> None:
        if self._open:
            self._txn.abort()
            self._open = False
            self._s._batch = None

    # -- state visible inside the batch -----------------------------------------

    @property
    def current_revision(self) -> int:
        return self._rev

    @property
    def compact_revision(self) -> int:
        return max(self._compact, 0)

    @property
    def consistent_index(self) -> int:
        return self._ci

    def set_consistent_index(self, index: int) -> None:
        self._ci = index

    # -- guards -----------------------------------------------------------------

    def _guard(self, nbytes: int) -> None:
        """Refuse a write that could fill the LMDB map (MDB_MAP_FULL would
        poison the whole batch). Only reachable when quota_bytes is close to
        map_size; the quota itself is the caller's (see MvccStore.available)."""
        s = self._s
        cost = 3 * nbytes + 1024
        if self._base_size + self._pending + cost > s._map_limit:
            raise errors.NO_SPACE
        self._pending += cost

    def _finish(self, r: _Req) -> None:
        if r.sub:
            self._rev = r.main

    # -- writes -------------------------------------------------------------------

    def _write_put(self, r: _Req, key: bytes, enc: bytes, value: bytes, lease: int,
                   create: int, version: int, old_lease: int, old_raw: Optional[bytes]) -> None:
        """Store one new version of ``key`` (``create``/``version`` already
        worked out from the live version) and queue its event."""
        s = self._s
        txn = self._txn
        main = r.main
        sub = r.sub
        ev = Event()
        kv = ev.kv
        kv.key = key
        kv.create_revision = create
        kv.mod_revision = main
        kv.version = version
        kv.value = value
        if lease:
            kv.lease = lease
        raw = kv.SerializeToString()
        if not txn.put(K.rev_key(main, sub), raw, db=s._hist, append=True):
            raise RuntimeError(f"revision {main} is not after the stored history")
        txn.put(enc, raw, db=s._kv)
        txn.put(enc, K.put_dup(main, sub), db=s._revs)
        if old_lease != lease:
            if old_lease:
                txn.delete(K.int64_key(old_lease), enc, db=s._lkeys)
            if lease:
                txn.put(K.int64_key(lease), enc, db=s._lkeys)
        if old_raw is not None and self.fill_prev_kv:
            ev.prev_kv.MergeFromString(old_raw)
        r.sub = sub + 1
        r.events.append(ev)

    def _write_delete(self, r: _Req, key: bytes, enc: bytes, old_lease: int, old_raw: bytes) -> None:
        s = self._s
        txn = self._txn
        main = r.main
        tk = K.tomb_key(main, r.sub)
        if not txn.put(tk, K.tombstone_value(key), db=s._hist, append=True):
            raise RuntimeError(f"revision {main} is not after the stored history")
        txn.delete(enc, db=s._kv)
        txn.put(enc, tk, db=s._revs)
        if old_lease:
            txn.delete(K.int64_key(old_lease), enc, db=s._lkeys)
        ev = Event()
        ev.type = DELETE
        kv = ev.kv
        kv.key = key
        kv.mod_revision = main
        if self.fill_prev_kv:
            ev.prev_kv.MergeFromString(old_raw)
        r.sub += 1
        r.events.append(ev)

    def _put_into(self, r: _Req, req: rpc_pb2.PutRequest, resp: Optional[rpc_pb2.PutResponse]) -> None:
        """One put; ``resp`` None when nobody reads the response."""
        key = req.key
        enc = key if len(key) <= _P else K.enc_key(key)
        old_raw = self._txn.get(enc, db=self._s._kv)
        if old_raw is None:
            if req.ignore_value or req.ignore_lease:
                raise errors.KEY_NOT_FOUND
            self._write_put(r, key, enc, req.value, req.lease, r.main, 1, 0, None)
        else:
            old = KeyValue.FromString(old_raw)
            old_lease = old.lease
            value = old.value if req.ignore_value else req.value
            lease = old_lease if req.ignore_lease else req.lease
            if resp is not None and req.prev_kv:
                resp.prev_kv.MergeFromString(old_raw)
            self._write_put(r, key, enc, value, lease, old.create_revision, old.version + 1, old_lease, old_raw)
        if resp is not None:
            resp.header.revision = r.main

    def _delete_into(self, r: _Req, req: rpc_pb2.DeleteRangeRequest,
                     resp: Optional[rpc_pb2.DeleteRangeResponse]) -> None:
        items = self._latest_items(req.key, K.mk_gte_range(req.range_end))
        if resp is not None and req.prev_kv:
            add = resp.prev_kvs.add
            for _, raw in items:
                add().MergeFromString(raw)
        for enc, raw in items:
            old = KeyValue.FromString(raw)
            self._write_delete(r, old.key, enc, old.lease, raw)
        if resp is not None:
            resp.deleted = len(items)
            resp.header.revision = r.view_rev

    # The write requests: ``reply=False`` skips building the response (a
    # member applying an entry another member proposed has nobody to send it
    # to); the effects and events are the same.

    def put(self, req: rpc_pb2.PutRequest, reply: bool = True
            ) -> Tuple[Optional[rpc_pb2.PutResponse], List[kv_pb2.Event]]:
        check_put(req)
        if self._s.capped:
            raise errors.NO_SPACE
        self._guard(len(req.key) + len(req.value))
        lease = req.lease
        if lease and not self._lease_exists(lease):
            raise errors.LEASE_NOT_FOUND
        r = _Req(self._rev)
        resp = rpc_pb2.PutResponse() if reply else None
        self._put_into(r, req, resp)
        self._rev = r.main  # a put always writes
        return resp, r.events

    def delete_range(self, req: rpc_pb2.DeleteRangeRequest, reply: bool = True
                     ) -> Tuple[Optional[rpc_pb2.DeleteRangeResponse], List[kv_pb2.Event]]:
        check_delete(req)
        self._guard(len(req.key) + len(req.range_end))
        r = _Req(self._rev)
        resp = rpc_pb2.DeleteRangeResponse() if reply else None
        self._delete_into(r, req, resp)
        self._finish(r)
        return resp, r.events

    def txn(self, req: rpc_pb2.TxnRequest, reply: bool = True
            ) -> Tuple[Optional[rpc_pb2.TxnResponse], List[kv_pb2.Event]]:
        """A Txn. Without ``reply`` its range ops are not run at all: they
        change nothing, and their errors were already checked up front."""
        s = self._s
        t = txn_ops(req, s.max_txn_ops)
        if s.capped and request_cost(req) > 0:
            raise errors.NO_SPACE
        self._guard(req.ByteSize())
        path = self._path(t)
        flags = [False, False]  # put with ignore_value/ignore_lease, delete
        self._check_puts(t, path, flags)
        self._check_ranges(t, path, self._rev, self._compact)
        r = _Req(self._rev)
        resp = rpc_pb2.TxnResponse() if reply else None
        if flags[0] and flags[1]:
            # A delete may remove the key an ignore_value/ignore_lease put
            # needs (etcd panics there); run under a savepoint so that the
            # KEY_NOT_FOUND leaves nothing behind.
            parent = self._txn
            child = self._s._env.begin(write=True, parent=parent)
            self._txn = child
            try:
                self._txn_into(r, t, path, resp, self._compact)
            except BaseException:
                child.abort()
                raise
            else:
                child.commit()
            finally:
                self._txn = parent
        else:
            self._txn_into(r, t, path, resp, self._compact)
        if resp is not None:
            resp.header.revision = r.view_rev
        self._finish(r)
        return resp, r.events

    def _check_puts(self, t: TxnOps, path, flags) -> None:
        """checkRequestPut over the taken path (against the txn start view)."""
        ok, children = path
        ci = 0
        kvdb = self._s._kv
        for w, p in (t.success if ok else t.failure):
            if w == OP_TXN:
                self._check_puts(p, children[ci], flags)
                ci += 1
            elif w == OP_PUT:
                if p.ignore_value or p.ignore_lease:
                    flags[0] = True
                    if self._txn.get(K.enc_key(p.key), db=kvdb) is None:
                        raise errors.KEY_NOT_FOUND
                if p.lease and not self._lease_exists(p.lease):
                    raise errors.LEASE_NOT_FOUND
            elif w == OP_DELETE:
                flags[1] = True

    def range(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        """Range inside the batch: sees the batch's writes."""
        check_range(req)
        resp = rpc_pb2.RangeResponse()
        self._range_into(req, self._rev, self._compact, resp)
        return resp

    # -- compaction -----------------------------------------------------------------

    def compact(self, revision: int, physical: bool = True) -> None:
        """Compact history up to ``revision``. For every key the latest revision
        <= ``revision`` is kept unless it is a tombstone; later history stays.
        Always done physically, within this transaction; ``physical`` is
        accepted for API parity (etcd only uses it to delay the response).
        Work is proportional to the revisions since the previous compaction."""
        if revision <= self._compact:
            raise errors.COMPACTED
        if revision > self._rev:
            raise errors.FUTURE_REV
        s = self._s
        txn = self._txn
        start = max(self._compact, 0) + 1
        self._compact = revision
        touched = set()
        hc = txn.cursor(s._hist)
        if hc.set_range(K.rev_key(start, 0)):
            limit = K.rev_key(revision + 1, 0)
            for k, v in hc.iternext():
                if k >= limit:
                    break
                touched.add(K.kv_key(v))
        if not touched:
            return
        revs = s._revs
        hist = s._hist
        lc = txn.cursor(revs)
        bound = K.rev_key(revision + 1, 0)
        for key in sorted(touched):
            enc = K.enc_key(key)
            if not lc.set_key(enc):
                continue
            dups = []
            for d in lc.iternext_dup(keys=False, values=True):
                if d >= bound:
                    break
                dups.append(d)
            if not dups:
                continue
            drop = dups[:-1]
            if dups[-1][17] == K.TOMBSTONE:
                drop.append(dups[-1])
            for d in drop:
                txn.delete(enc, d, db=revs)
                txn.delete(K.hist_key_of_dup(d), db=hist)

    # -- leases ---------------------------------------------------------------------------

    def lease_grant(self, lease_id: int, ttl: int) -> None:
        """Persist a lease (ttl as given: the lessor applies its minimum TTL)."""
        if self._s.capped:
            raise errors.NO_SPACE
        if lease_id == 0:
            raise errors.LEASE_NOT_FOUND
        if ttl > MAX_LEASE_TTL:
            raise errors.LEASE_T_T_L_TOO_LARGE
        lk = K.int64_key(lease_id)
        if self._txn.get(lk, db=self._s._lease) is not None:
            raise errors.LEASE_EXIST
        self._guard(64)
        self._txn.put(lk, _qq.pack(ttl, 0), db=self._s._lease)

    def lease_revoke(self, lease_id: int) -> List[kv_pb2.Event]:
        """Delete the lease and all its keys in ONE revision (keys in byte order,
        as etcd's lessor does); no revision if it has no keys."""
        s = self._s
        txn = self._txn
        lk = K.int64_key(lease_id)
        if txn.get(lk, db=s._lease) is None:
            raise errors.LEASE_NOT_FOUND
        cur = txn.cursor(s._lkeys)
        encs = list(cur.iternext_dup(keys=False, values=True)) if cur.set_key(lk) else []
        items = []
        for enc in encs:
            raw = txn.get(enc, db=s._kv)
            if raw is not None:
                items.append((K.kv_key(raw), enc, raw))
        items.sort()
        r = _Req(self._rev)
        for key, enc, raw in items:
            self._write_delete(r, key, enc, lease_id, raw)
        txn.delete(lk, db=s._lease)
        txn.delete(lk, db=s._lkeys)
        self._finish(r)
        return r.events

    def lease_checkpoint(self, lease_id: int, remaining_ttl: int) -> None:
        """Persist a lease's remaining TTL (etcd's LeaseCheckpoint); ignored
        for an unknown lease, as etcd does."""
        lk = K.int64_key(lease_id)
        v = self._txn.get(lk, db=self._s._lease)
        if v is None:
            return
        ttl, _ = _qq.unpack(v)
        self._txn.put(lk, _qq.pack(ttl, remaining_ttl), db=self._s._lease)

    def lease_get(self, lease_id: int) -> Optional[Tuple[int, int]]:
        v = self._txn.get(K.int64_key(lease_id), db=self._s._lease)
        return None if v is None else _qq.unpack(v)

    # -- application metadata ------------------------------------------------------------

    def put_meta(self, name: bytes, value: bytes) -> None:
        self._txn.put(name, value, db=self._s._app)

    def get_meta(self, name: bytes) -> Optional[bytes]:
        return self._txn.get(name, db=self._s._app)

    def delete_meta(self, name: bytes) -> None:
        self._txn.delete(name, db=self._s._app)


class MvccStore:
    """etcd 3.4's MVCC store (plus lease table) on one LMDB environment."""

    def __init__(self, path: str, *, quota_bytes: int = 2 << 30, map_size: Optional[int] = None,
                 max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
        self.path = path
        self.quota_bytes = quota_bytes
        self.max_txn_ops = max_txn_ops
        if map_size is None:
            map_size = max(2 * quota_bytes, 64 << 20)
        self._map_size = map_size
        self._map_limit = map_size - map_size // 8
        # NOSPACE alarm in force (set by the caller from its replicated alarm
        # state): puts, txns with puts and lease grants raise NO_SPACE, like
        # etcd's applierV3Capped. Deterministic because the alarm is.
        self.capped = False
        self._batch: Optional[WriteBatch] = None
        os.makedirs(path, exist_ok=True)
        self._open()

    # -- environment ---------------------------------------------------------------------

    def _open(self) -> None:
        self._env = env = lmdb.open(
            self.path, map_size=self._map_size, max_dbs=len(_DB_NAMES) + 1,
            sync=False, metasync=False, readahead=False, subdir=True)
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name, txn=txn, **_DUPSORT.get(name, {})) for name in _DB_NAMES}
            m = dbs[b"meta"]
            if txn.get(_META_FORMAT, db=m) is None:
                txn.put(_META_FORMAT, _FORMAT, db=m)
                txn.put(_META_CURRENT, _q.pack(1), db=m)
                txn.put(_META_COMPACT, _q.pack(-1), db=m)
                txn.put(_META_CI, _q.pack(0), db=m)
            elif txn.get(_META_FORMAT, db=m) != _FORMAT:
                raise RuntimeError(f"unsupported store format at {self.path}")
            self._current_rev = _q.unpack(txn.get(_META_CURRENT, db=m))[0]
            self._compact_rev = _q.unpack(txn.get(_META_COMPACT, db=m))[0]
            self._consistent_index = _q.unpack(txn.get(_META_CI, db=m))[0]
        self._kv = dbs[b"kv"]
        self._hist = dbs[b"hist"]
        self._revs = dbs[b"revs"]
        self._meta = dbs[b"meta"]
        self._app = dbs[b"app"]
        self._lease = dbs[b"lease"]
        self._lkeys = dbs[b"lease_keys"]
        self._dbs = dbs
        self._psize = env.stat()["psize"]

    def key_count(self) -> int:
        """Live keys, from LMDB's page statistics: O(1), for metrics."""
        with self._env.begin() as txn:
            return txn.stat(self._kv)["entries"]

    def close(self) -> None:
        if self._batch is not None:
            self._batch.abort()
        self._env.close()

    def __enter__(self) -> "MvccStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------

    # While a WriteBatch is open these follow it (the apply loop reads them
    # between entries); reads (range, events, ...) always see committed state.

    @property
    def current_revision(self) -> int:
        b = self._batch
        return self._current_rev if b is None else b._rev

    @property
    def compact_revision(self) -> int:
        """Last compacted revision (0 = none)."""
        b = self._batch
        return max(self._compact_rev if b is None else b._compact, 0)

    @property
    def consistent_index(self) -> int:
        b = self._batch
        return self._consistent_index if b is None else b._ci

    def write(self) -> WriteBatch:
        """Begin the write transaction for one batch of Raft entries. Only one
        batch may be open at a time (LMDB has a single writer)."""
        if self._batch is not None:
            raise RuntimeError("a WriteBatch is already open")
        self._batch = WriteBatch(self)
        return self._batch

    def _read(self) -> lmdb.Transaction:
        return self._env.begin()

    # -- reads -----------------------------------------------------------------------------

    def range(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        """Local read of committed state; header.revision is set, the rest of
        the header is the caller's."""
        check_range(req)
        resp = rpc_pb2.RangeResponse()
        with self._read() as txn:
            v = _View(self, txn)
            cur, compact = v._meta_revs()
            v._range_into(req, cur, compact, resp)
        return resp

    def txn(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """A read-only txn (``validate.is_txn_readonly``) served locally, as
        etcd serves them without Raft. Raises ValueError for a txn that writes."""
        t = txn_ops(req, self.max_txn_ops)
        if not ops_readonly(t):
            raise ValueError("txn has writes: apply it through a WriteBatch")
        resp = rpc_pb2.TxnResponse()
        with self._read() as txn:
            v = _View(self, txn)
            cur, compact = v._meta_revs()
            path = v._path(t)
            v._check_ranges(t, path, cur, compact)
            r = _Req(cur)
            v._txn_into(r, t, path, resp, compact)
            resp.header.revision = cur
        return resp

    def events(self, start_rev: int, end_rev: Optional[int], key: bytes, range_end: bytes,
               limit: Optional[int] = None, prev_kv: bool = False) -> Tuple[List[kv_pb2.Event], int]:
        """History replay for watchers: events with start_rev <= mod_revision <
        end_rev (None: up to the current revision) on [key, range_end) (range_end
        b"" = the single key, b"\\0" = every key >= key), in revision order.

        ``limit`` is a soft bound: a revision is never split, so more events may
        be returned. Returns (events, next_rev) where next_rev is where to resume.
        With ``prev_kv`` each event carries the key's previous version, as
        etcd's watch does (none if that revision is compacted).
        Raises COMPACTED if start_rev <= the compacted revision."""
        with self._read() as txn:
            v = _View(self, txn)
            cur, compact = v._meta_revs()
            if start_rev <= compact:
                raise errors.COMPACTED
            lo = max(start_rev, 1)
            hi = cur + 1 if end_rev is None else min(end_rev, cur + 1)
            evs: List[kv_pb2.Event] = []
            if lo >= hi:
                return evs, lo
            end = K.mk_gte_range(range_end)
            hist = self._hist
            last_main = -1
            get = txn.get

            def add(k: bytes, raw: bytes, main: int) -> None:
                ev = Event()
                kv = ev.kv
                kv.MergeFromString(raw)
                if len(k) == 18:
                    ev.type = DELETE
                    kv.mod_revision = main
                if prev_kv:
                    p = v._prev_raw(kv.key, main, compact)
                    if p is not None:
                        ev.prev_kv.MergeFromString(p)
                evs.append(ev)

            if end is None:
                c = txn.cursor(self._revs)
                if c.set_range_dup(K.enc_key(key), K.rev_key(lo, 0)):
                    for d in c.iternext_dup(keys=False, values=True):
                        main = K.rev_main(d)
                        if main >= hi:
                            break
                        if limit is not None and len(evs) >= limit and main != last_main:
                            return evs, main
                        hk = K.hist_key_of_dup(d)
                        add(hk, get(hk, db=hist), main)
                        last_main = main
                return evs, hi
            c = txn.cursor(hist)
            if c.set_range(K.rev_key(lo, 0)):
                for k, raw in c.iternext():
                    main = K.rev_main(k)
                    if main >= hi:
                        break
                    rk = K.kv_key(raw)
                    if rk < key or (end and rk >= end):
                        continue
                    if limit is not None and len(evs) >= limit and main != last_main:
                        return evs, main
                    add(k, raw, main)
                    last_main = main
            return evs, hi

    def prev_kv(self, key: bytes, mod_revision: int) -> Optional[kv_pb2.KeyValue]:
        """The version of ``key`` just before ``mod_revision`` (what etcd's
        watch sends as prev_kv), or None (absent, or compacted)."""
        with self._read() as txn:
            v = _View(self, txn)
            _, compact = v._meta_revs()
            raw = v._prev_raw(key, mod_revision, compact)
        return None if raw is None else KeyValue.FromString(raw)

    # -- hashes ------------------------------------------------------------------------------

    def hash_kv(self, revision: int = 0) -> Tuple[int, int, int]:
        """etcd's HashByRev, bit for bit: CRC-32C (Castagnoli) of b"key" and of
        every (revision key, value) of history up to ``revision`` (0 = current),
        where revisions at or below the compacted one count only if they are
        still their key's live version at ``revision``. Returns (hash,
        compact_revision as etcd reports it (-1 = never compacted), revision
        hashed). COMPACTED if 0 < revision <= compacted, FUTURE_REV if ahead."""
        crc32c = K.crc32c
        with self._read() as txn:
            v = _View(self, txn)
            cur, compact = v._meta_revs()
            if revision > 0 and revision <= compact:
                raise errors.COMPACTED
            if revision > cur:
                raise errors.FUTURE_REV
            rev = revision if revision > 0 else cur
            upper = K.rev_key(rev + 1, 0)
            lower = K.rev_key(compact + 1, 0) if compact >= 0 else b""
            h = crc32c(b"key")
            lc = txn.cursor(self._revs)
            keep_nonempty = None
            for k, val in txn.cursor(self._hist).iternext():
                if k >= upper:
                    break
                if k < lower:
                    # kept by compaction: counts only if still the live version at rev
                    enc = K.enc_key(K.kv_key(val))
                    kept = True
                    if lc.set_key_dup(enc, k + K.FLAG_PUT) and lc.next_dup() and lc.value() < upper:
                        kept = False
                    if not kept:
                        if keep_nonempty is None:
                            keep_nonempty = self._any_live_at(v, rev, cur)
                        if keep_nonempty:
                            continue
                h = crc32c(k, h)
                h = crc32c(val, h)
            return h, compact, rev

    def _any_live_at(self, v: _View, rev: int, cur: int) -> bool:
        if rev == cur:
            return v._txn.stat(self._kv)["entries"] > 0
        _, n = v._at(b"\x00", b"", rev, 0)
        return n > 0

    def hash(self) -> int:
        """CRC-32C of the whole store (every database, names in order),
        except consistent_index, like etcd's Maintenance.Hash."""
        crc32c = K.crc32c
        h = 0
        with self._read() as txn:
            for name in sorted(self._dbs):
                db = self._dbs[name]
                h = crc32c(name, h)
                for k, val in txn.cursor(db).iternext():
                    if db is self._meta and k == _META_CI:
                        continue
                    h = crc32c(k, h)
                    h = crc32c(val, h)
        return h

    # -- leases ------------------------------------------------------------------------------

    def lease_list(self) -> List[Tuple[int, int]]:
        """(lease id, granted ttl) for every lease, by id."""
        with self._read() as txn:
            out = [(K.int64_of(k), _qq.unpack(val)[0]) for k, val in txn.cursor(self._lease).iternext()]
        out.sort()
        return out

    def lease_get(self, lease_id: int) -> Optional[Tuple[int, int]]:
        """(granted ttl, remaining ttl from the last checkpoint, 0 = none) or None."""
        with self._read() as txn:
            val = txn.get(K.int64_key(lease_id), db=self._lease)
        return None if val is None else _qq.unpack(val)

    def lease_keys(self, lease_id: int) -> List[bytes]:
        """Keys attached to the lease, in byte order."""
        with self._read() as txn:
            cur = txn.cursor(self._lkeys)
            encs = list(cur.iternext_dup(keys=False, values=True)) if cur.set_key(K.int64_key(lease_id)) else []
            out = []
            for enc in encs:
                raw = txn.get(enc, db=self._kv)
                if raw is not None:
                    out.append(K.kv_key(raw))
        out.sort()
        return out

    def get_meta(self, name: bytes) -> Optional[bytes]:
        with self._read() as txn:
            return txn.get(name, db=self._app)

    # -- size / quota ---------------------------------------------------------------------

    def db_size(self) -> int:
        """Bytes of the database file in use by LMDB (high-water mark of pages,
        including free pages: etcd's dbSize)."""
        return (self._env.info()["last_pgno"] + 1) * self._psize

    def db_size_in_use(self) -> int:
        """Bytes of pages holding data (etcd's dbSizeInUse)."""
        pages = 2  # meta pages
        st = self._env.stat()
        pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        with self._read() as txn:
            for db in self._dbs.values():
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * self._psize

    def over_quota(self) -> bool:
        """The store has reached quota_bytes (raise the NOSPACE alarm)."""
        return self.db_size() >= self.quota_bytes

    def available(self, req_or_cost) -> bool:
        """etcd's backendQuota.Available for a request (or a byte cost): what
        the API layer checks before proposing a Put/Txn/LeaseGrant."""
        cost = req_or_cost if isinstance(req_or_cost, int) else request_cost(req_or_cost)
        if cost == 0:
            return True
        return self.db_size() + cost < self.quota_bytes

    # -- durability, snapshots, defrag --------------------------------------------------------

    def checkpoint(self) -> None:
        """Make everything committed so far durable (fsync)."""
        self._env.sync(True)

    def copy_to(self, path: str) -> None:
        """Write a consistent, compacted copy of the store as one file at
        ``path`` (what Maintenance.Snapshot streams; restore_from installs it)."""
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            # Not compact=True: LMDB 0.9.x's compacting copy segfaults on a
            # dupfixed DB with ~150+ duplicates under one key (our ``revs``
            # of a key written that often). Free pages travel along instead.
            self._env.copyfd(fd, compact=False)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))

    @classmethod
    def restore_from(cls, src: str, path: str) -> None:
        """Install a copy (a file from copy_to, or a store directory) as the
        store at ``path``, replacing what is there with one atomic rename.
        No MvccStore may have ``path`` open."""
        if os.path.isdir(src):
            src = os.path.join(src, "data.mdb")
        os.makedirs(path, exist_ok=True)
        tmp = os.path.join(path, "data.mdb.restore")
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            env = lmdb.open(tmp, subdir=False, readonly=True, lock=False, max_dbs=len(_DB_NAMES) + 1)
            try:
                with env.begin() as txn:
                    m = env.open_db(b"meta", txn=txn, create=False)
                    if txn.get(_META_FORMAT, db=m) != _FORMAT or txn.get(_META_CURRENT, db=m) is None:
                        raise ValueError(f"{src} is not a kvstore MVCC snapshot")
            finally:
                env.close()
        except lmdb.Error as e:
            os.unlink(tmp)
            raise ValueError(f"{src} is not a kvstore MVCC snapshot: {e}") from e
        except ValueError:
            os.unlink(tmp)
            raise
        os.replace(tmp, os.path.join(path, "data.mdb"))
        _fsync_dir(path)

    def restore(self, src: str) -> None:
        """Replace this open store's content with a copy (restore_from on its
        own path) and reopen. No WriteBatch may be open."""
        if self._batch is not None:
            raise RuntimeError("cannot restore with an open WriteBatch")
        self._env.close()
        try:
            self.restore_from(src, self.path)
        finally:
            self._open()

    def defragment(self) -> None:
        """Rewrite the store compactly (free pages dropped) and reopen it.
        No WriteBatch may be open."""
        if self._batch is not None:
            raise RuntimeError("cannot defragment with an open WriteBatch")
        data = os.path.join(self.path, "data.mdb")
        tmp_dir = os.path.join(self.path, "defrag.tmp")
        shutil.rmtree(tmp_dir, ignore_errors=True)
        self._rebuild_into(tmp_dir)
        self._env.close()
        os.replace(os.path.join(tmp_dir, "data.mdb"), data)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        _fsync_dir(self.path)
        self._open()

    def _rebuild_into(self, dest_dir: str) -> None:
        """Copy every record into a fresh environment: a compaction that does
        not use LMDB's compacting copy (it crashes on large dupfixed sets)."""
        os.makedirs(dest_dir)
        env = lmdb.open(dest_dir, map_size=self._map_size, max_dbs=len(_DB_NAMES) + 1,
                        sync=False, metasync=False, subdir=True)
        try:
            with self._env.begin() as src, env.begin(write=True) as dst:
                for name in _DB_NAMES:
                    flags = _DUPSORT.get(name, {})
                    ddb = env.open_db(name, txn=dst, **flags)
                    items = src.cursor(self._dbs[name]).iternext(keys=True, values=True)
                    dst.cursor(ddb).putmulti(items, dupdata=bool(flags), append=not flags)
            env.sync(True)
        finally:
            env.close()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
