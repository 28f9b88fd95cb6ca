"""``kvctl snapshot save|status|restore``.

A snapshot file is what the Maintenance.Snapshot RPC streams, as etcdctl
writes it: the database followed by its 32-byte SHA-256. kvstore streams
etcd's backend format (a bbolt file, ``kvstore.bbolt``), so the same file
works with etcdctl and etcd; kvstore's older snapshots (an LMDB copy of the
MVCC store) are accepted too.

``status`` prints what ``etcdctl snapshot status`` prints for a bbolt file
(hash: CRC-32C over every bucket's name, keys and values; revision; total
keys; total size), after checking the digest when there is one.

``restore`` turns a snapshot into the data directory of one member of a
*new* cluster:

* the MVCC store is rebuilt from the file (``kvstore.bbolt.restore_snapshot``:
  same keys, values, revisions, versions, leases and auth state); the old
  cluster's members and alarms are not kept and the applied index is reset,
  because the new cluster starts a new Raft log;
* the Raft log is bootstrapped exactly as ``python -m kvstore`` bootstraps a
  new member (the same conf-change entries at term 1 from
  ``--initial-cluster``), so every member restored from the same file with
  the same flags agrees from index 1.

Then start each member with the same ``--name``, ``--initial-cluster``,
``--initial-advertise-peer-urls`` and ``--initial-cluster-token``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .output import Progress

DIGEST = 32


class SnapshotError(Exception):
    pass


def has_digest(size: int) -> bool:
    """etcdctl's rule: a file whose size is 32 bytes past a 512 multiple carries a digest."""
    return size % 512 == DIGEST


def file_format(path: str) -> str:
    """"bbolt" (etcd's format: kvstore and etcd snapshots), "lmdb" (kvstore's older snapshots) or "unknown"."""
    from ..bbolt import snapshot_format

    return snapshot_format(path)


def verify_and_strip(path: str, out_path: str, skip_hash_check: bool, progress: Progress | None = None) -> str:
    """Copy the database part of ``path`` to ``out_path``; check the digest.
    Returns the hex SHA-256 (of the database part)."""
    size = os.path.getsize(path)
    digest_present = has_digest(size)
    if not digest_present and not skip_hash_check:
        raise SnapshotError(f"{path}: snapshot has no SHA-256 digest (use --skip-hash-check for a bare database copy)")
    body = size - DIGEST if digest_present else size
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as src, open(out_path, "wb") as dst:
        while done < body:
            chunk = src.read(min(1 << 20, body - done))
            if not chunk:
                raise SnapshotError(f"{path}: file shrank while reading")
            h.update(chunk)
            dst.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress.update(done, body)
        dst.flush()
        os.fsync(dst.fileno())
        trailer = src.read(DIGEST) if digest_present else b""
    if digest_present and not skip_hash_check and trailer != h.digest():
        raise SnapshotError(f"{path}: SHA-256 mismatch: the snapshot is corrupt")
    return h.hexdigest()


def _check_format(path: str) -> str:
    if not os.path.isfile(path):
        raise SnapshotError(f"{path}: no such file")
    fmt = file_format(path)
    if fmt == "unknown":
        raise SnapshotError(f"{path}: not a snapshot (neither etcd/kvstore bbolt nor a kvstore LMDB copy)")
    return fmt


@dataclass
class SnapshotStatus:
    hash: int
    revision: int
    total_keys: int
    total_size: int
    format: str
    has_digest: bool


def bolt_status(db_path: str) -> tuple[int, int, int, int]:
    """etcdctl's snapshot status of a bbolt file: (hash, revision, total keys, total size)."""
    import crc32c

    from ..bbolt import KEY_BUCKET, BoltReader

    h = 0
    revision = total = 0
    with BoltReader(db_path) as r:
        for name in r.bucket_names():
            h = crc32c.crc32c(name, h)
            for k, v in r.items(name):
                h = crc32c.crc32c(v, crc32c.crc32c(k, h))
                if name == KEY_BUCKET and len(k) >= 8:
                    revision = struct.unpack(">q", k[:8])[0]
                total += 1
        size = r.meta.pgid * r.page_size
    return h, revision, total, size


def status(path: str) -> SnapshotStatus:
    from ..mvcc import MvccStore
    from ..pb import rpc_pb2

    fmt = _check_format(path)
    size = os.path.getsize(path)
    digest = has_digest(size)
    tmp = tempfile.mkdtemp(prefix="kvctl-status-")
    try:
        db = os.path.join(tmp, "snap.db")
        verify_and_strip(path, db, skip_hash_check=not digest)
        if fmt == "bbolt":
            h, rev, total, tsize = bolt_status(db)
            return SnapshotStatus(h, rev, total, tsize, fmt, digest)
        try:
            MvccStore.restore_from(db, os.path.join(tmp, "kv"))
        except ValueError as e:
            raise SnapshotError(str(e)) from None
        store = MvccStore(os.path.join(tmp, "kv"), quota_bytes=max(size * 4, 64 << 20))
        try:
            count = store.range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)).count
            return SnapshotStatus(store.hash(), store.current_revision, count, os.path.getsize(db), fmt, digest)
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_thread(fn: Callable[[], Any], progress: Progress) -> Any:
    """Run ``fn`` in a thread, animating ``progress`` meanwhile."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    while t.is_alive():
        progress.update(0, 0)
        t.join(0.1)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def restore(path: str, argv: list[str], skip_hash_check: bool = False, show_progress: bool | None = None) -> str:
    """Create the data directory of one member of a new cluster from
    ``path``. ``argv``: kvstore server flags (--name, --data-dir,
    --initial-cluster, --initial-cluster-token, --initial-advertise-peer-urls).
    Returns the data directory."""
    from raft.lmdb_storage import LmdbStorage

    from ..bbolt import restore_snapshot
    from ..config import ConfigError, parse
    from ..server import bootstrap_log

    try:
        cfg = parse(argv, environ={})
    except ConfigError as e:
        raise SnapshotError(str(e)) from None
    _check_format(path)
    data_dir = cfg.data_dir
    if os.path.exists(data_dir) and (not os.path.isdir(data_dir) or os.listdir(data_dir)):
        raise SnapshotError(f"data-dir {data_dir!r} exists and is not empty")
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".kvctl-restore-", dir=parent)
    prog = Progress("restore: verify", enabled=show_progress)
    try:
        db = os.path.join(tmp, "snapshot.db")
        verify_and_strip(path, db, skip_hash_check, prog)
        prog.finish()
        member = os.path.join(tmp, "data", "member")
        os.makedirs(member)
        build = Progress("restore: rebuild store", enabled=show_progress)
        try:
            _in_thread(lambda: restore_snapshot(db, os.path.join(member, "kv")), build)
        except ValueError as e:  # BoltError included
            raise SnapshotError(str(e)) from None
        finally:
            build.finish()
        os.unlink(db)
        raft = LmdbStorage(os.path.join(member, "raft"))
        try:
            bootstrap_log(cfg, raft)
        finally:
            raft.close()
        os.makedirs(os.path.join(member, "snap"), exist_ok=True)
        if os.path.isdir(data_dir):
            os.rmdir(data_dir)  # empty (checked above)
        os.replace(os.path.join(tmp, "data"), data_dir)
        fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_dir
