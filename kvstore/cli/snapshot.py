"""``kvctl snapshot save|status|restore``.

A snapshot file is what the Maintenance.Snapshot RPC streams, as etcdctl
writes it: the database followed by its 32-byte SHA-256. For kvstore the
database is a compacted copy of the member's LMDB MVCC store (keys, their
whole retained history, revisions, leases, auth state). ``restore`` turns it
into the data directory of one member of a *new* cluster:

* the MVCC store is installed as is (same keys, values and revisions); the
  old cluster's member list and alarms are dropped and its applied index is
  reset, because the new cluster starts a new Raft log;
* the Raft log is bootstrapped exactly as ``python -m kvstore`` bootstraps a
  new member (the same conf-change entries at term 1 from
  ``--initial-cluster``), so every member restored from the same file with
  the same flags agrees from index 1.

Then start each member with the same ``--name``, ``--initial-cluster``,
``--initial-advertise-peer-urls`` and ``--initial-cluster-token``.

Snapshots in etcd's own format (bbolt) are recognised and refused: moving
data between etcd and kvstore is not handled here.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass

from .output import Progress

DIGEST = 32
LMDB_MAGIC = 0xBEEFC0DE
BOLT_MAGIC = 0xED0CDAED


class SnapshotError(Exception):
    pass


def has_digest(size: int) -> bool:
    """etcdctl's rule: a file whose size is 32 bytes past a 512 multiple carries a digest."""
    return size % 512 == DIGEST


def file_format(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) >= 20 and struct.unpack_from("<I", head, 16)[0] == LMDB_MAGIC:
        return "kvstore"
    if len(head) >= 20 and struct.unpack_from("<I", head, 16)[0] == BOLT_MAGIC:
        return "etcd"
    return "unknown"


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


def _check_format(path: str) -> None:
    fmt = file_format(path)
    if fmt == "etcd":
        raise SnapshotError(f"{path}: this is an etcd (bbolt) snapshot; kvctl restores kvstore snapshots only")
    if fmt != "kvstore":
        raise SnapshotError(f"{path}: not a kvstore snapshot")


@dataclass
class SnapshotStatus:
    hash: int
    revision: int
    total_keys: int
    total_size: int
    compact_revision: int
    sha256: str
    has_digest: bool


def status(path: str) -> SnapshotStatus:
    from ..mvcc import MvccStore
    from ..pb import rpc_pb2

    if not os.path.isfile(path):
        raise SnapshotError(f"{path}: no such file")
    _check_format(path)
    size = os.path.getsize(path)
    tmp = tempfile.mkdtemp(prefix="kvctl-status-")
    try:
        db = os.path.join(tmp, "snap.db")
        sha = verify_and_strip(path, db, skip_hash_check=not has_digest(size))
        try:
            MvccStore.restore_from(db, os.path.join(tmp, "kv"))
        except ValueError as e:
            raise SnapshotError(str(e)) from None
        store = MvccStore(os.path.join(tmp, "kv"), quota_bytes=max(size * 4, 64 << 20))
        try:
            count = store.range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)).count
            return SnapshotStatus(store.hash(), store.current_revision, count, size - (DIGEST if has_digest(size) else 0),
                                  store.compact_revision, sha, has_digest(size))
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore(path: str, argv: list[str], skip_hash_check: bool = False, show_progress: bool | None = None) -> str:
    """Create the data directory of one member of a new cluster from
    ``path``. ``argv``: kvstore server flags (--name, --data-dir,
    --initial-cluster, --initial-cluster-token, --initial-advertise-peer-urls).
    Returns the data directory."""
    from raft.lmdb_storage import LmdbStorage

    from .. import members
    from ..apply import ALARMS_KEY
    from ..config import ConfigError, parse
    from ..mvcc import MvccStore
    from ..server import bootstrap_log

    try:
        cfg = parse(argv, environ={})
    except ConfigError as e:
        raise SnapshotError(str(e)) from None
    if not os.path.isfile(path):
        raise SnapshotError(f"{path}: no such file")
    _check_format(path)
    data_dir = cfg.data_dir
    if os.path.exists(data_dir) and (not os.path.isdir(data_dir) or os.listdir(data_dir)):
        raise SnapshotError(f"data-dir {data_dir!r} exists and is not empty")
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".kvctl-restore-", dir=parent)
    prog = Progress("restore", enabled=show_progress)
    try:
        db = os.path.join(tmp, "snapshot.db")
        verify_and_strip(path, db, skip_hash_check, prog)
        member = os.path.join(tmp, "data", "member")
        try:
            MvccStore.restore_from(db, os.path.join(member, "kv"))
        except ValueError as e:
            raise SnapshotError(str(e)) from None
        os.unlink(db)
        size = os.path.getsize(os.path.join(member, "kv", "data.mdb"))
        store = MvccStore(os.path.join(member, "kv"), quota_bytes=max(cfg.quota_backend_bytes, size * 2))
        try:
            with store.write() as batch:
                # The new cluster's members come from its Raft log (below).
                batch.put_meta(members.META_KEY, members.dump(members.MemberList()))
                if batch.get_meta(ALARMS_KEY) is not None:
                    batch.delete_meta(ALARMS_KEY)
                batch.set_consistent_index(0)
            store.checkpoint()
        finally:
            store.close()
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
        prog.finish()
        shutil.rmtree(tmp, ignore_errors=True)
    return data_dir
