"""The Raft log on disk: an LMDB environment implementing LogStorage and LogWriter.

Semantics are exactly those of ``MemoryStorage`` (the reference); this module
only adds durability, integrity checks and caches.

Layout (one LMDB environment in a directory, three named databases):

``meta``   ``format`` -> format marker and version, written once at creation.
``log``    8-byte big-endian index -> ``crc32 u32 | term u64 | type u8 | data``.
``state``  ``hardstate`` -> ``crc32 | term u64 | vote u64 | commit u64``;
           ``snapshot``  -> ``crc32 | index u64 | term u64 | n_voters u32 |
           n_learners u32 | voters u64* | learners u64* | data``.

All integers are big-endian. Every CRC-32 (zlib) covers the record's key as
well as the rest of its value, so a value that ends up under the wrong key is
caught like a flipped bit.

Durability: the environment is opened with LMDB's own syncing off and
``save(sync=True)`` calls ``env.sync(True)`` once after its single commit:
one fdatasync per Ready, never one per entry. A process killed at any instant
keeps every committed transaction (the data is in the OS page cache). Against
*power loss* this mode is weaker: the commit writes its pages and the new meta
page before the fsync, and the kernel may persist them in any order, so a
power cut inside that window (or before the next sync, after a
``sync=False`` save) can leave a file that fails the integrity checks at the
next start - it is then reported as StorageCorrupted, never used silently.
``power_safe=True`` instead lets LMDB flush the data pages before it writes
the meta page on every commit (one fdatasync per commit, plus one more for
``sync=True``): always consistent after a power cut, at twice the fsyncs.

Reads for the core never touch LMDB on the hot path: the terms of all
retained entries live in an ``array('Q')`` and the most recent entries in a
bounded list; only ``entries()`` over an old range reads LMDB.

Thread safety: writers (save/compact/close) are serialized; reads may run in
another thread concurrently and always see the state before or after a whole
``save``, never a mix.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from array import array
from itertools import islice
from typing import Callable, Iterable, Sequence

import lmdb

try:  # py-lmdb >= 3.0 ships an offline structural verifier
    from lmdb import verify as _lmdb_verify
except ImportError:  # pragma: no cover - older py-lmdb
    _lmdb_verify = None  # type: ignore[assignment]

from . import failpoints as _fp
from .types import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    RaftError,
    Snapshot,
    SnapshotMeta,
    StorageCorrupted,
    UnavailableError,
)

__all__ = ["LmdbStorage", "StorageError", "StorageFull", "StorageInUse"]

log = logging.getLogger("raft.lmdb_storage")

FORMAT_MARKER = b"kvstore-raft-log\x00"
FORMAT_VERSION = 1

_DB_META = b"meta"
_DB_LOG = b"log"
_DB_STATE = b"state"
_KEY_FORMAT = b"format"
_KEY_HARD_STATE = b"hardstate"
_KEY_SNAPSHOT = b"snapshot"
_LOCK_FILE = "LOCK"  # our own flock: LMDB allows several writer processes, we don't
_DATA_FILE = "data.mdb"

_FORMAT_VALUE = FORMAT_MARKER + struct.pack(">I", FORMAT_VERSION)
_ENTRY_HDR = struct.Struct(">IQB")  # crc, term, type; data follows
_ENTRY_BODY = struct.Struct(">QB")  # term, type (what the crc covers after the key)
_CRC = struct.Struct(">I")
_HARD_STATE = struct.Struct(">IQQQ")  # crc, term, vote, commit
_SNAP_HDR = struct.Struct(">IQQII")  # crc, index, term, n_voters, n_learners
_ENTRY_TYPES: dict[int, EntryType] = {int(t): t for t in EntryType}

# lmdb errors that mean "this file is not (or no longer) a valid environment".
_CORRUPTION_ERRORS = (
    lmdb.InvalidError,
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.PanicError,
    lmdb.VersionMismatchError,
    lmdb.IncompatibleError,
    lmdb.BadValsizeError,
)


class StorageError(RaftError):
    """The log store failed (I/O, closed, full); not a statement about the
    data on disk. After a failed commit or fsync the instance refuses further
    writes: restart the process (the kernel may have dropped dirty pages)."""


class StorageFull(StorageError):
    """The LMDB map is full: compact the log or reopen with a larger map_size."""


class StorageInUse(StorageError):
    """Another LmdbStorage (this or another process) has the directory open."""


# --------------------------------------------------------------------- codecs
def _index_key(index: int) -> bytes:
    return index.to_bytes(8, "big")


def _encode_entry(e: Entry) -> tuple[bytes, bytes]:
    key = e.index.to_bytes(8, "big")
    body = _ENTRY_BODY.pack(e.term, e.type)
    data = e.data
    crc = zlib.crc32(data, zlib.crc32(body, zlib.crc32(key)))
    return key, _CRC.pack(crc) + body + data


def _decode_entry(key: bytes | memoryview, value: memoryview | bytes, index: int) -> Entry:
    """Entry stored under ``key`` (expected to be ``index``); checks the CRC."""
    if len(value) < _ENTRY_HDR.size:
        raise StorageCorrupted(f"log entry {index}: record too short ({len(value)} bytes)")
    crc, term, typ = _ENTRY_HDR.unpack_from(value)
    if zlib.crc32(value[4:], zlib.crc32(key)) != crc:
        raise StorageCorrupted(f"log entry {index}: checksum mismatch")
    return Entry(term, index, _ENTRY_TYPES.get(typ, typ), bytes(value[_ENTRY_HDR.size :]))


def _encode_hard_state(hs: HardState) -> bytes:
    body = _HARD_STATE.pack(0, hs.term, hs.vote, hs.commit)[4:]
    return _CRC.pack(zlib.crc32(body, zlib.crc32(_KEY_HARD_STATE))) + body


def _decode_hard_state(value: memoryview | bytes) -> HardState:
    if len(value) != _HARD_STATE.size:
        raise StorageCorrupted(f"hard state record has {len(value)} bytes, expected {_HARD_STATE.size}")
    crc, term, vote, commit = _HARD_STATE.unpack(value)
    if zlib.crc32(value[4:], zlib.crc32(_KEY_HARD_STATE)) != crc:
        raise StorageCorrupted("hard state record: checksum mismatch")
    return HardState(term, vote, commit)


def _encode_snapshot(s: Snapshot) -> bytes:
    m = s.meta
    cs = m.conf_state
    nv, nl = len(cs.voters), len(cs.learners)
    body = (
        _SNAP_HDR.pack(0, m.index, m.term, nv, nl)[4:]
        + struct.pack(f">{nv + nl}Q", *cs.voters, *cs.learners)
        + s.data
    )
    return _CRC.pack(zlib.crc32(body, zlib.crc32(_KEY_SNAPSHOT))) + body


def _decode_snapshot(value: memoryview | bytes) -> Snapshot:
    if len(value) < _SNAP_HDR.size:
        raise StorageCorrupted(f"snapshot record too short ({len(value)} bytes)")
    crc, index, term, nv, nl = _SNAP_HDR.unpack_from(value)
    if zlib.crc32(value[4:], zlib.crc32(_KEY_SNAPSHOT)) != crc:
        raise StorageCorrupted("snapshot record: checksum mismatch")
    ids_end = _SNAP_HDR.size + 8 * (nv + nl)
    if ids_end > len(value):
        raise StorageCorrupted("snapshot record: member lists overrun the record")
    ids = struct.unpack_from(f">{nv + nl}Q", value, _SNAP_HDR.size)
    meta = SnapshotMeta(index, term, ConfState(tuple(ids[:nv]), tuple(ids[nv:])))
    return Snapshot(meta, bytes(value[ids_end:]))


def _take(entries: Iterable[Entry], max_bytes: int, out: list[Entry], total: int) -> tuple[int, bool]:
    """Append to ``out`` with storage.limit_size semantics (at least one entry,
    then stop before exceeding ``max_bytes``); returns (total, stopped)."""
    for e in entries:
        total += len(e.data) + 16
        if total > max_bytes and out:
            return total, True
        out.append(e)
    return total, False


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -------------------------------------------------------------------- storage
class LmdbStorage:
    """Raft log, hard state and snapshot record in an LMDB environment.

    ``path`` is a directory; missing or empty means a fresh store, created
    with a snapshot record at index 0 holding ``voters``/``learners`` (those
    two arguments are ignored when the store already exists, like etcd's
    initial-cluster). Raises StorageCorrupted if the directory holds a
    damaged or foreign environment, StorageInUse if it is already open.

    ``verify`` (default on) walks the whole LMDB file structure with
    ``lmdb.verify`` before liblmdb maps it (a damaged B-tree can otherwise
    crash the process with SIGSEGV/SIGBUS) and checks every entry's CRC; it
    costs roughly a second per few hundred MB. Without it the open still
    checks the file size, every record's framing, the hard-state and snapshot
    CRCs and index contiguity; entry CRCs are always checked when entries are
    read back from LMDB.
    """

    # Reads take ``_lock`` and writers publish under it: the driver may run
    # save() on its storage thread while the core reads on the event loop.
    thread_safe = True


    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        voters: Sequence[int] = (),
        learners: Sequence[int] = (),
        map_size: int = 64 << 30,
        cache_entries: int = 8192,
        cache_bytes: int = 64 << 20,
        verify: bool = True,
        power_safe: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.power_safe = power_safe
        self._map_size = map_size
        self._cache_max_entries = max(0, cache_entries)
        self._cache_max_bytes = max(0, cache_bytes)
        self._wlock = threading.Lock()  # one writer at a time
        self._lock = threading.Lock()  # caches vs. readers; held across commit
        self._closed = False
        self._failed: BaseException | None = None
        self._env: lmdb.Environment | None = None
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        self._lock_fd = self._lock_directory()
        try:
            self._open(tuple(voters), tuple(learners), verify)
        except BaseException:
            if self._env is not None:
                self._env.close()
                self._env = None
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------- opening
    def _lock_directory(self) -> int:
        fd = os.open(os.path.join(self.path, _LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageInUse(f"{self.path}: raft log is already open (by this or another process)") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _corrupted(self, what: str) -> StorageCorrupted:
        return StorageCorrupted(f"{self.path}: {what}")

    def _open(self, voters: tuple[int, ...], learners: tuple[int, ...], verify: bool) -> None:
        data_file = os.path.join(self.path, _DATA_FILE)
        try:
            file_size = os.path.getsize(data_file)
        except FileNotFoundError:
            file_size = 0
        if file_size and verify and _lmdb_verify is not None:
            try:
                problems = _lmdb_verify.verify(self.path, subdir=True)
            except _lmdb_verify.VerifyError as e:
                raise self._corrupted(f"{_DATA_FILE} is not a usable LMDB file: {e}") from None
            except OSError:
                raise
            except Exception as e:  # the verifier tripping over garbage it did not anticipate
                raise self._corrupted(f"{_DATA_FILE} cannot be verified: {type(e).__name__}: {e}") from None
            if problems:
                shown = "; ".join(problems[:3])
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                raise self._corrupted(f"{_DATA_FILE} structure is damaged: {shown}{more}")
        try:
            env = lmdb.open(
                self.path,
                map_size=self._map_size,
                subdir=True,
                max_dbs=4,
                sync=self.power_safe,  # off: save() issues the single fsync itself
                metasync=False,
                readahead=False,
                mode=0o600,
                max_spare_txns=2,
            )
        except _CORRUPTION_ERRORS as e:
            raise self._corrupted(f"cannot open LMDB environment: {e}") from None
        except lmdb.Error as e:
            raise StorageError(f"{self.path}: cannot open LMDB environment: {e}") from e
        self._env = env
        # A file shorter than its own meta page claims would SIGBUS on access.
        info, psize = env.info(), env.stat()["psize"]
        need = (info["last_pgno"] + 1) * psize
        if os.path.getsize(data_file) < need:
            raise self._corrupted(f"{_DATA_FILE} is truncated ({os.path.getsize(data_file)} < {need} bytes)")
        env.reader_check()  # free reader slots left by a killed process
        try:
            fresh = self._open_databases(voters, learners)
            if fresh:
                env.sync(True)
                _fsync_dir(self.path)  # make the new files' directory entries durable
            self._load(verify)
        except lmdb.Error as e:
            # Reading a few records of our own cannot fail on a sound file.
            raise self._corrupted(f"LMDB error while loading: {e}") from None

    def _open_databases(self, voters: tuple[int, ...], learners: tuple[int, ...]) -> bool:
        """Open (or create, if the environment is empty) the named databases
        and check the format marker. Returns True for a fresh store."""
        env = self._env
        assert env is not None
        with env.begin(write=True) as txn:
            names = set(txn.cursor().iternext(values=False))
            if not names:
                # Never committed anything (new, or killed during creation).
                self._meta_db = env.open_db(_DB_META, txn=txn)
                self._log_db = env.open_db(_DB_LOG, txn=txn)
                self._state_db = env.open_db(_DB_STATE, txn=txn)
                txn.put(_KEY_FORMAT, _FORMAT_VALUE, db=self._meta_db)
                snap = Snapshot(SnapshotMeta(0, 0, ConfState(voters, learners)))
                txn.put(_KEY_SNAPSHOT, _encode_snapshot(snap), db=self._state_db)
                return True
            if _DB_META not in names:
                raise self._corrupted("not a kvstore raft log (LMDB environment without a 'meta' database)")
            try:
                self._meta_db = env.open_db(_DB_META, txn=txn, create=False)
            except (lmdb.NotFoundError, lmdb.IncompatibleError):
                raise self._corrupted("not a kvstore raft log ('meta' is not a database)") from None
            marker = txn.get(_KEY_FORMAT, db=self._meta_db)
            if marker is None or not marker.startswith(FORMAT_MARKER):
                raise self._corrupted("not a kvstore raft log (format marker missing)")
            if marker != _FORMAT_VALUE:
                raise self._corrupted(f"unsupported raft log format {marker[len(FORMAT_MARKER):].hex()}")
            unexpected = names - {_DB_META, _DB_LOG, _DB_STATE}
            if unexpected:
                raise self._corrupted(f"unexpected databases {sorted(unexpected)!r}")
            try:
                self._log_db = env.open_db(_DB_LOG, txn=txn, create=False)
                self._state_db = env.open_db(_DB_STATE, txn=txn, create=False)
            except (lmdb.NotFoundError, lmdb.IncompatibleError) as e:
                raise self._corrupted(f"raft log databases missing: {e}") from None
            return False

    def _load(self, verify: bool) -> None:
        """Read hard state and snapshot, scan the log: contiguity, framing,
        terms (and CRCs when ``verify``); fill the caches."""
        env = self._env
        assert env is not None
        with env.begin(buffers=True) as txn:
            raw = txn.get(_KEY_HARD_STATE, db=self._state_db)
            self._hard_state = _decode_hard_state(raw) if raw is not None else HardState()
            raw = txn.get(_KEY_SNAPSHOT, db=self._state_db)
            if raw is None:
                raise self._corrupted("snapshot record missing")
            self._snap = _decode_snapshot(raw)
            offset = self._snap.meta.index
            terms = array("Q", [self._snap.meta.term])
            expected = offset + 1
            hdr = _ENTRY_HDR
            crc32 = zlib.crc32
            cur = txn.cursor(self._log_db)
            for key, value in cur:
                if len(key) != 8:
                    raise self._corrupted(f"log key of {len(key)} bytes")
                index = int.from_bytes(key, "big")
                if index != expected:
                    if expected == offset + 1:
                        raise self._corrupted(f"log starts at {index}, but the snapshot is at {offset}")
                    raise self._corrupted(f"log has a gap: entry {expected} missing before {index}")
                if len(value) < hdr.size:
                    raise self._corrupted(f"log entry {index}: record too short")
                crc, term, _ = hdr.unpack_from(value)
                if verify and crc32(value[4:], crc32(key)) != crc:
                    raise self._corrupted(f"log entry {index}: checksum mismatch")
                terms.append(term)
                expected += 1
            self._terms = terms
            self._offset = offset
            self._last = expected - 1
            # Most recent entries, newest first, within the cache bounds.
            cache: list[Entry] = []
            nbytes = 0
            if self._cache_max_entries and cur.last():
                index = self._last
                while True:
                    key, value = cur.item()
                    e = _decode_entry(key, value, index)
                    if cache and (len(cache) >= self._cache_max_entries or nbytes + len(e.data) > self._cache_max_bytes):
                        break
                    cache.append(e)
                    nbytes += len(e.data)
                    index -= 1
                    if not cur.prev():
                        break
            cache.reverse()
            self._cache = cache
            self._cache_bytes = nbytes
            self._cache_start = self._last - len(cache) + 1

    # ------------------------------------------------------- LogStorage (reads)
    def initial_state(self) -> tuple[HardState, ConfState]:
        with self._lock:
            return self._hard_state, self._snap.meta.conf_state

    def first_index(self) -> int:
        return self._offset + 1

    def last_index(self) -> int:
        return self._last

    def term(self, index: int) -> int:
        with self._lock:
            i = index - self._offset
            if i < 0:
                raise CompactedError(index)
            if i >= len(self._terms):
                raise UnavailableError(index)
            return self._terms[i]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        with self._lock:
            if lo <= self._offset:
                raise CompactedError(lo)
            if hi > self._last + 1:
                raise UnavailableError(hi)
            if lo >= hi:
                return []
            cs = self._cache_start
            cache = self._cache
            if lo >= cs:
                if max_bytes is None or self._cache_bytes + 16 * len(cache) <= max_bytes:
                    return cache[lo - cs : hi - cs]  # the whole cache fits: so does any slice
                out: list[Entry] = []
                _take(islice(cache, lo - cs, hi - cs), max_bytes, out, 0)
                return out
            # Older than the cache: LMDB for [lo, min(hi, cs)), then the cache.
            out, total, stopped = self._read_log(lo, min(hi, cs), max_bytes)
            if hi > cs and not stopped:
                if max_bytes is None:
                    out.extend(cache[: hi - cs])
                else:
                    _take(islice(cache, 0, hi - cs), max_bytes, out, total)
            return out

    def _read_log(self, lo: int, hi: int, max_bytes: int | None) -> tuple[list[Entry], int, bool]:
        """Entries [lo, hi) from LMDB (caller holds ``_lock`` and checked the
        range), with the limit_size rule; returns (entries, bytes, stopped)."""
        if self._closed:
            raise StorageError(f"{self.path}: storage is closed")
        env = self._env
        assert env is not None
        out: list[Entry] = []
        total = 0
        with env.begin(db=self._log_db, buffers=True) as txn:
            cur = txn.cursor()
            if not cur.set_key(_index_key(lo)):
                raise self._corrupted(f"log entry {lo} missing")
            index = lo
            while True:
                key, value = cur.item()
                if int.from_bytes(key, "big") != index:
                    raise self._corrupted(f"log entry {index} missing")
                e = _decode_entry(key, value, index)
                if max_bytes is not None:
                    total += len(e.data) + 16
                    if total > max_bytes and out:
                        return out, total, True
                out.append(e)
                index += 1
                if index >= hi:
                    return out, total, False
                if not cur.next():
                    raise self._corrupted(f"log entry {index} missing")

    def snapshot(self) -> Snapshot:
        return self._snap

    # -------------------------------------------------------- LogWriter (writes)
    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool = True,
    ) -> None:
        """Persist one Ready in one LMDB transaction and, if ``sync``, one
        fsync. Atomic: on any error nothing of this call is visible."""
        with self._wlock:
            self._check_writable()
            apply_snap = snapshot is not None and not snapshot.is_empty and snapshot.meta.index > self._offset
            if apply_snap:
                assert snapshot is not None
                offset = base_last = snapshot.meta.index
            else:
                offset, base_last = self._offset, self._last
            ents: Sequence[Entry] = entries or ()
            if ents:
                start = ents[0].index
                for i, e in enumerate(ents):
                    if e.index != start + i:
                        raise ValueError(f"entries not contiguous: index {e.index} at position {i} after {start}")
                if ents[-1].index <= offset:
                    ents = ()  # all older than the snapshot: nothing to do
                elif start <= offset:
                    ents = ents[offset + 1 - start :]
                if ents and ents[0].index > base_last + 1:
                    raise ValueError(f"missing log entry before {ents[0].index}")
            # Encode before the transaction: keeps LMDB's write lock short and
            # rejects unencodable values before anything is written.
            try:
                pairs = [_encode_entry(e) for e in ents] if ents else []
                hs_value = _encode_hard_state(hard_state) if hard_state is not None else None
                snap_value = _encode_snapshot(snapshot) if apply_snap and snapshot is not None else None
            except (struct.error, OverflowError) as e:
                raise ValueError(f"value out of range for the raft log (64-bit fields): {e}") from None

            def write(txn: lmdb.Transaction) -> None:
                if snap_value is not None:
                    txn.put(_KEY_SNAPSHOT, snap_value, db=self._state_db)
                    txn.drop(self._log_db, delete=False)
                if pairs:
                    cur = txn.cursor(self._log_db)
                    if ents[0].index <= base_last:  # conflicting suffix
                        self._delete_from(cur, ents[0].index)
                    _, added = cur.putmulti(pairs, append=True)
                    if added != len(pairs):
                        raise AssertionError(f"raft log append wrote {added} of {len(pairs)} entries")
                if hs_value is not None:
                    txn.put(_KEY_HARD_STATE, hs_value, db=self._state_db)

            def publish() -> None:
                if apply_snap:
                    assert snapshot is not None
                    self._snap = snapshot
                    self._offset = offset
                    self._last = offset
                    self._terms = array("Q", [snapshot.meta.term])
                    self._cache = []
                    self._cache_bytes = 0
                    self._cache_start = offset + 1
                if ents:
                    self._append_to_caches(ents)
                if hard_state is not None:
                    self._hard_state = hard_state

            self._transact(write, publish)
            if sync:
                self._fsync()

    def compact(self, meta: SnapshotMeta, data: bytes = b"", sync: bool = False) -> None:
        """Record a snapshot at ``meta.index`` (with the log's term there, as
        MemoryStorage does) and drop the entries up to it, atomically. Not
        fsynced by default: losing a compaction in a crash only leaves a
        longer log; the next synced save makes it durable."""
        with self._wlock:
            self._check_writable()
            offset = self._offset
            if meta.index <= offset:
                return
            if meta.index > self._last:
                raise UnavailableError(meta.index)
            term = self._terms[meta.index - offset]
            snap = Snapshot(SnapshotMeta(meta.index, term, meta.conf_state), data)
            try:
                value = _encode_snapshot(snap)
            except (struct.error, OverflowError) as e:
                raise ValueError(f"value out of range for the raft log (64-bit fields): {e}") from None

            def write(txn: lmdb.Transaction) -> None:
                txn.put(_KEY_SNAPSHOT, value, db=self._state_db)
                cur = txn.cursor(self._log_db)
                if cur.first():
                    while True:
                        key = cur.key()
                        if not key or int.from_bytes(key, "big") > meta.index:
                            break
                        cur.delete()

            def publish() -> None:
                del self._terms[: meta.index - offset]
                self._offset = meta.index
                self._snap = snap
                if self._cache_start <= meta.index:
                    cut = meta.index + 1 - self._cache_start
                    self._cache_bytes -= sum(len(e.data) for e in self._cache[:cut])
                    del self._cache[:cut]
                    self._cache_start = meta.index + 1

            self._transact(write, publish)
            if sync:
                self._fsync()

    def close(self) -> None:
        """Close the environment and release the directory lock. Idempotent."""
        with self._wlock:
            if self._closed:
                return
            self._closed = True
            with self._lock:
                if self._env is not None:
                    self._env.close()
            os.close(self._lock_fd)

    def __enter__(self) -> "LmdbStorage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LmdbStorage({self.path!r}, first={self._offset + 1}, last={self._last})"

    # ------------------------------------------------------------- internals
    def _check_writable(self) -> None:
        if self._closed:
            raise StorageError(f"{self.path}: storage is closed")
        if self._failed is not None:
            raise StorageError(f"{self.path}: refusing to write after an earlier failure: {self._failed}")

    def _transact(self, write: Callable[[lmdb.Transaction], None], publish: Callable[[], None]) -> None:
        """Run ``write`` in one write transaction; commit and ``publish`` the
        new state to the caches under ``_lock``, so readers see all or none."""
        env = self._env
        assert env is not None
        txn = env.begin(write=True)
        try:
            write(txn)
        except lmdb.MapFullError:
            txn.abort()
            raise self._full() from None
        except lmdb.Error as e:
            txn.abort()
            raise StorageError(f"{self.path}: write failed: {e}") from e
        except BaseException:
            txn.abort()
            raise
        with self._lock:
            try:
                txn.commit()
            except lmdb.MapFullError:
                raise self._full() from None
            except lmdb.Error as e:
                # The commit may have been partly written: stop writing.
                self._failed = e
                raise StorageError(f"{self.path}: commit failed: {e}") from e
            publish()

    def _full(self) -> StorageFull:
        return StorageFull(
            f"{self.path}: raft log store is full (map_size {self._map_size} bytes); "
            "compact the log or reopen with a larger map_size"
        )

    def _fsync(self) -> None:
        env = self._env
        assert env is not None
        try:
            if _fp.ENABLED:
                _fp.inject("raftFsync")  # sleep: a slow disk; error: a failed fsync
            env.sync(True)
        except (lmdb.Error, _fp.FailpointError) as e:
            # After a failed fsync the page cache may have dropped the dirty
            # pages (fsyncgate): retrying would report success for lost data.
            self._failed = e
            raise StorageError(f"{self.path}: fsync failed: {e}") from e

    @staticmethod
    def _delete_from(cur: lmdb.Cursor, index: int) -> None:
        """Delete every entry with index >= ``index``."""
        if not cur.set_range(_index_key(index)):
            return
        while cur.key():
            cur.delete()  # moves to the next record

    def _append_to_caches(self, ents: Sequence[Entry]) -> None:
        start = ents[0].index
        del self._terms[start - self._offset :]
        self._terms.extend([e.term for e in ents])
        cache = self._cache
        if start <= self._cache_start:
            self._cache = cache = list(ents)
            self._cache_start = start
            self._cache_bytes = sum(len(e.data) for e in ents)
        else:
            cut = start - self._cache_start
            if cut < len(cache):
                self._cache_bytes -= sum(len(e.data) for e in cache[cut:])
                del cache[cut:]
            cache.extend(ents)
            self._cache_bytes += sum(len(e.data) for e in ents)
        self._last = ents[-1].index
        if len(cache) > self._cache_max_entries or self._cache_bytes > self._cache_max_bytes:
            # Trim to 3/4 of the bounds, so the O(n) front deletion is paid
            # once per quarter-cache of appends rather than on every append.
            keep_n = self._cache_max_entries * 3 // 4
            keep_b = self._cache_max_bytes * 3 // 4
            n, b, drop = len(cache), self._cache_bytes, 0
            while drop < n and (n - drop > keep_n or b > keep_b):
                b -= len(cache[drop].data)
                drop += 1
            del cache[:drop]
            self._cache_start += drop
            self._cache_bytes = b
