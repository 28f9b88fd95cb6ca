"""LmdbStorage: equivalence with MemoryStorage, durability, corruption, fsyncs."""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.lmdb_storage import LmdbStorage, StorageFull, StorageInUse, _encode_hard_state
from raft.storage import MemoryStorage
from raft.types import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
    StorageCorrupted,
    UnavailableError,
)

REPO = Path(__file__).resolve().parent.parent
CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except (CompactedError, UnavailableError, ValueError) as e:
        return "raised", type(e)


def payload(index: int, term: int) -> bytes:
    """Deterministic entry data, so a reopened log can be checked entry by entry."""
    return b"%d/%d;" % (index, term) * (1 + (index * 7 + term) % 40)


# ------------------------------------------------------------- equivalence
U64 = st.one_of(st.integers(0, 12), st.just(2**64 - 1))
CONF = st.builds(
    ConfState,
    st.lists(U64, max_size=3).map(tuple),
    st.lists(U64, max_size=2).map(tuple),
)
HARD = st.builds(HardState, U64, U64, U64)


def assert_same(mem: MemoryStorage, disk: LmdbStorage, data: st.DataObject) -> None:
    assert disk.first_index() == mem.first_index()
    assert disk.last_index() == mem.last_index()
    assert disk.initial_state() == mem.initial_state()
    assert disk.snapshot() == mem.snapshot()
    for i in range(max(0, mem.first_index() - 3), mem.last_index() + 3):
        assert outcome(disk.term, i) == outcome(mem.term, i), i
    lo_min, hi_max = max(0, mem.first_index() - 2), mem.last_index() + 3
    for _ in range(3):
        lo = data.draw(st.integers(lo_min, hi_max), label="lo")
        # lo <= hi: MemoryStorage slices with a negative bound when hi < its
        # snapshot index < lo, returning entries for an inverted range.
        hi = data.draw(st.integers(lo, hi_max), label="hi")
        max_bytes = data.draw(st.one_of(st.none(), st.integers(0, 200)), label="max_bytes")
        assert outcome(disk.entries, lo, hi, max_bytes) == outcome(mem.entries, lo, hi, max_bytes), (lo, hi, max_bytes)
    # The whole log, which also crosses the cache / LMDB boundary.
    assert disk.entries(mem.first_index(), mem.last_index() + 1) == mem.entries(mem.first_index(), mem.last_index() + 1)


def draw_entries(data: st.DataObject, start: int, max_n: int = 6) -> list[Entry]:
    n = data.draw(st.integers(0, max_n), label="n")
    return [
        Entry(
            data.draw(U64, label="term"),
            start + k,
            data.draw(st.sampled_from([EntryType.NORMAL, EntryType.CONF_CHANGE]), label="type"),
            data.draw(st.binary(max_size=40), label="data"),
        )
        for k in range(n)
    ]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_equivalent_to_memory_storage(data: st.DataObject) -> None:
    voters = data.draw(st.lists(st.integers(1, 5), max_size=3).map(tuple), label="voters")
    cache = dict(
        cache_entries=data.draw(st.sampled_from([0, 1, 3, 8192]), label="cache_entries"),
        cache_bytes=data.draw(st.sampled_from([0, 60, 1 << 20]), label="cache_bytes"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        mem = MemoryStorage(voters)
        disk = LmdbStorage(tmp, voters=voters, **cache)
        try:
            for _ in range(data.draw(st.integers(1, 25), label="steps")):
                op = data.draw(st.sampled_from(["append", "snapshot", "hard_state", "gap", "compact", "reopen"]))
                first, last, snap_index = mem.first_index(), mem.last_index(), mem.snapshot().meta.index
                if op == "append":
                    start = data.draw(st.integers(max(1, first - 3), last + 1), label="start")
                    hs = data.draw(st.one_of(st.none(), HARD), label="hs")
                    sync = data.draw(st.booleans(), label="sync")
                    ents = draw_entries(data, start)
                    mem.save(hs, ents, None, sync)
                    disk.save(hs, ents, None, sync)
                elif op == "snapshot":
                    index = data.draw(st.integers(max(0, snap_index - 2), last + 6), label="snap_index")
                    snap = Snapshot(
                        SnapshotMeta(index, data.draw(U64, label="snap_term"), data.draw(CONF, label="conf")),
                        data.draw(st.binary(max_size=30), label="snap_data"),
                    )
                    base_last = index if index > snap_index else last
                    start = data.draw(st.integers(max(1, base_last - 4), base_last + 1), label="start")
                    ents = draw_entries(data, start)
                    hs = data.draw(st.one_of(st.none(), HARD), label="hs")
                    mem.save(hs, ents, snap, True)
                    disk.save(hs, ents, snap, True)
                elif op == "hard_state":
                    hs = data.draw(HARD, label="hs")
                    mem.save(hs, [], None, False)
                    disk.save(hs, [], None, False)
                elif op == "gap":
                    ents = [Entry(1, last + 2), Entry(1, last + 3)]
                    with pytest.raises(ValueError):
                        mem.save(HardState(9, 9, 9), ents, None, True)
                    with pytest.raises(ValueError):
                        disk.save(HardState(9, 9, 9), ents, None, True)
                elif op == "compact":
                    index = data.draw(st.integers(max(0, snap_index - 1), last + 1), label="compact_index")
                    meta = SnapshotMeta(index, data.draw(U64, label="meta_term"), data.draw(CONF, label="conf"))
                    blob = data.draw(st.binary(max_size=30), label="compact_data")
                    assert outcome(disk.compact, meta, blob) == outcome(mem.compact, meta, blob)
                else:
                    disk.close()
                    disk = LmdbStorage(tmp, **cache)
                assert_same(mem, disk, data)
            disk.close()
            disk = LmdbStorage(tmp)
            assert_same(mem, disk, data)
        finally:
            disk.close()


def test_reopen_after_close(tmp_path: Path) -> None:
    with LmdbStorage(tmp_path, voters=(1, 2, 3), learners=(4,)) as s:
        assert s.first_index() == 1 and s.last_index() == 0 and s.term(0) == 0
        s.save(HardState(2, 1, 5), [Entry(1 + i // 50, i, EntryType.NORMAL, payload(i, 1)) for i in range(1, 201)], None, True)
        s.save(None, [Entry(3, 150, EntryType.CONF_CHANGE, b"cc"), Entry(3, 151)], None, True)
        s.compact(SnapshotMeta(100, 0, ConfState((1, 2), (4,))), b"app-state")
        expected = s.entries(101, 152)
    with LmdbStorage(tmp_path, voters=(9,)) as s:  # voters ignored: the store exists
        assert s.initial_state() == (HardState(2, 1, 5), ConfState((1, 2), (4,)))
        assert s.snapshot() == Snapshot(SnapshotMeta(100, s.term(100), ConfState((1, 2), (4,))), b"app-state")
        assert (s.first_index(), s.last_index()) == (101, 151)
        assert s.entries(101, 152) == expected
        assert s.entries(150, 152)[0].type is EntryType.CONF_CHANGE
        with pytest.raises(CompactedError):
            s.term(99)
        with pytest.raises(UnavailableError):
            s.entries(101, 153)


def test_fresh_store_forms(tmp_path: Path) -> None:
    missing = tmp_path / "a" / "b"
    with LmdbStorage(missing) as s:
        assert s.last_index() == 0
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with LmdbStorage(empty_dir) as s:
        assert s.initial_state() == (HardState(), ConfState())
    zero_file = tmp_path / "zero"
    zero_file.mkdir()
    (zero_file / "data.mdb").touch()  # e.g. killed right after creating the file
    with LmdbStorage(zero_file, voters=(1,)) as s:
        assert s.snapshot().meta.conf_state == ConfState((1,))


def test_invalid_appends_change_nothing(tmp_path: Path) -> None:
    with LmdbStorage(tmp_path) as s:
        s.save(HardState(1, 0, 0), [Entry(1, 1), Entry(1, 2)], None, True)
        with pytest.raises(ValueError, match="contiguous"):
            s.save(HardState(5, 0, 0), [Entry(2, 3), Entry(2, 5)], None, True)
        with pytest.raises(ValueError, match="missing log entry"):
            s.save(HardState(5, 0, 0), [Entry(2, 4)], None, True)
        with pytest.raises(ValueError, match="64-bit"):
            s.save(HardState(5, 0, 0), [Entry(2**64, 3)], None, True)
        assert s.initial_state()[0] == HardState(1, 0, 0)
        assert s.last_index() == 2
    with LmdbStorage(tmp_path) as s:
        assert s.initial_state()[0] == HardState(1, 0, 0)
        assert s.last_index() == 2


def test_second_open_is_refused(tmp_path: Path) -> None:
    with LmdbStorage(tmp_path):
        with pytest.raises(StorageInUse):
            LmdbStorage(tmp_path)
    LmdbStorage(tmp_path).close()  # released on close


def test_map_full_is_a_clear_error(tmp_path: Path) -> None:
    with LmdbStorage(tmp_path, map_size=1 << 20) as s:
        s.save(HardState(1, 0, 0), [Entry(1, 1, EntryType.NORMAL, b"x" * 1000)], None, True)
        with pytest.raises(StorageFull, match="map_size"):
            for i in range(2, 10_000):
                s.save(HardState(1, 0, i), [Entry(1, i, EntryType.NORMAL, os.urandom(4000))], None, False)
        last, hs = s.last_index(), s.initial_state()[0]
        assert s.term(last) == 1
    with LmdbStorage(tmp_path, map_size=1 << 20) as s:  # the failed save left nothing behind
        assert (s.last_index(), s.initial_state()[0]) == (last, hs)


def test_reads_concurrent_with_writes(tmp_path: Path) -> None:
    """A reader thread sees whole saves only: every entry it gets is intact."""
    s = LmdbStorage(tmp_path, cache_entries=16)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                lo = s.first_index()
                for e in s.entries(lo, s.last_index() + 1, max_bytes=4096):
                    assert e.data == payload(e.index, e.term)
            except (CompactedError, UnavailableError):
                pass
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        term = 1
        for n in range(300):
            last = s.last_index()
            start = last + 1 if n % 7 else max(s.first_index(), last - 2)
            term += n % 7 == 0
            s.save(HardState(term, 0, 0), [Entry(term, i, EntryType.NORMAL, payload(i, term)) for i in range(start, last + 5)], None, False)
            if n % 50 == 49:
                s.compact(SnapshotMeta(s.last_index() - 20, 0, ConfState()))
    finally:
        stop.set()
        t.join()
        s.close()
    assert not errors, errors


def test_power_safe_mode_round_trip(tmp_path: Path) -> None:
    with LmdbStorage(tmp_path, power_safe=True) as s:
        assert s._env.flags()["sync"] is True
        s.save(HardState(1, 1, 1), [Entry(1, i, EntryType.NORMAL, payload(i, 1)) for i in range(1, 11)], None, True)
        s.save(HardState(1, 1, 5), [], None, False)
    with LmdbStorage(tmp_path) as s:
        assert s.initial_state()[0] == HardState(1, 1, 5)
        assert [e.data for e in s.entries(1, 11)] == [payload(i, 1) for i in range(1, 11)]


# ---------------------------------------------------------------- fsync count
class CountingEnv:
    """Delegates to the real environment, counting sync() calls."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self.syncs = 0

    def sync(self, force: bool = False) -> None:
        self.syncs += 1
        self._env.sync(force)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def test_one_fsync_per_save(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path)
    try:
        # LMDB itself must not sync on commit, or there would be more than one.
        assert s._env.flags()["sync"] is False
        env = s._env = CountingEnv(s._env)
        s.save(HardState(1, 1, 0), [Entry(1, i, EntryType.NORMAL, b"e" * 100) for i in range(1, 501)], None, True)
        assert env.syncs == 1
        s.save(HardState(1, 1, 400), [], None, False)
        s.save(None, [Entry(1, 501)], None, False)
        assert env.syncs == 1
        s.compact(SnapshotMeta(300, 0, ConfState()))
        assert env.syncs == 1
        s.save(HardState(2, 1, 400), [Entry(2, 401 + i) for i in range(100)], Snapshot(SnapshotMeta(400, 1)), True)
        assert env.syncs == 2
    finally:
        s.close()


STRACE_CHILD = textwrap.dedent(
    """
    import os, sys
    from raft.lmdb_storage import LmdbStorage
    from raft.types import Entry, HardState
    s = LmdbStorage(sys.argv[1])
    def marker(name):
        try:
            os.statvfs("/nonexistent-strace-marker-" + name)
        except OSError:
            pass
    marker("begin")
    for n in range(10):
        last = s.last_index()
        s.save(HardState(1, 1, last), [Entry(1, last + 1 + i, 0, b"x" * 200) for i in range(50)], None, n % 2 == 0)
    marker("end")
    s.close()
    """
)


def test_fsync_syscalls_per_save(tmp_path: Path) -> None:
    """Counts real sync syscalls with strace: 5 synced + 5 unsynced saves of
    50 entries must issue exactly 5."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    out = tmp_path / "trace"
    proc = subprocess.run(
        [strace, "-f", "-qq", "-o", str(out), "-e", "trace=fsync,fdatasync,msync,sync_file_range,syncfs,statfs",
         sys.executable, "-c", STRACE_CHILD, str(tmp_path / "db")],
        env=CHILD_ENV, capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0 and "ptrace" in proc.stderr.lower():
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if "strace-marker-begin" in line)
    end = next(i for i, line in enumerate(lines) if "strace-marker-end" in line)
    syncs = [line for line in lines[begin:end] if re.search(r"\b(fsync|fdatasync|msync|sync_file_range|syncfs)\(", line)]
    assert len(syncs) == 5, syncs


# ------------------------------------------------------------ SIGKILL safety
KILL_CHILD = textwrap.dedent(
    """
    import random, sys
    from raft.lmdb_storage import LmdbStorage
    from raft.types import ConfState, Entry, HardState, SnapshotMeta

    def payload(index, term):  # same as tests.test_lmdb_storage.payload
        return b"%d/%d;" % (index, term) * (1 + (index * 7 + term) % 40)

    s = LmdbStorage(sys.argv[1], voters=(1,))
    rng = random.Random(int(sys.argv[2]))
    term = max(1, s.initial_state()[0].term)
    print("ready", flush=True)
    while True:
        last = s.last_index()
        if rng.random() < 0.1 and last - s.first_index() > 5:
            term += 1  # overwrite a suffix with a newer term, always extending
            start = last - rng.randint(0, 3)
            end = last + rng.randint(1, 5)
        else:
            start, end = last + 1, last + rng.randint(1, 20)
        ents = [Entry(term, i, 0, payload(i, term)) for i in range(start, end + 1)]
        s.save(HardState(term, 1, max(0, start - 10)), ents, None, rng.random() < 0.5)
        print(end, term, flush=True)  # only after save() returned
        if rng.random() < 0.05 and s.last_index() - s.first_index() > 200:
            s.compact(SnapshotMeta(s.last_index() - 100, 0, ConfState((1,))))
    """
)


def check_log(s: LmdbStorage) -> None:
    prev_term = s.snapshot().meta.term
    ents = s.entries(s.first_index(), s.last_index() + 1)
    assert [e.index for e in ents] == list(range(s.first_index(), s.last_index() + 1))
    for e in ents:
        assert e.data == payload(e.index, e.term), e.index
        assert e.term >= prev_term
        prev_term = e.term


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_saved_entry(tmp_path: Path) -> None:
    rng = random.Random(1234)
    db = tmp_path / "db"
    for round_no in range(10):
        seen: list[bytes] = []
        with subprocess.Popen(
            [sys.executable, "-c", KILL_CHILD, str(db), str(round_no)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CHILD_ENV, cwd=REPO,
        ) as child:
            assert child.stdout is not None and child.stderr is not None
            try:
                assert child.stdout.readline() == b"ready\n"
                for _ in range(rng.randint(1, 300)):
                    line = child.stdout.readline()
                    if not line:
                        pytest.fail(f"child died: {child.stderr.read().decode()}")
                    seen.append(line)
                child.send_signal(signal.SIGKILL)  # the child is still saving
            finally:
                child.kill()
                seen.append(child.stdout.read())  # through the same buffered reader
                child.stderr.read()
        # Every complete line is a save that returned before the kill.
        reports = [line.split() for line in b"".join(seen).decode().split("\n")[:-1]]
        assert reports
        saved_last, saved_term = max((int(a), int(b)) for a, b in reports)
        with LmdbStorage(db) as s:
            assert s.last_index() >= saved_last, (round_no, s.last_index(), saved_last)
            assert s.term(saved_last) >= saved_term
            assert s.initial_state()[0].term >= saved_term
            check_log(s)


# ---------------------------------------------------------------- corruption
def make_store(path: Path, n: int = 300) -> None:
    with LmdbStorage(path, voters=(1, 2, 3)) as s:
        s.save(
            HardState(0x1122334455667788, 2, 77),
            [Entry(1, i, EntryType.NORMAL, b"PAYLOAD%06d-" % i * 20) for i in range(1, n + 1)],
            None,
            True,
        )


def patch_file(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_garbage_file_is_corruption(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(random.Random(5).randbytes(256 * 1024))
    for verify in (True, False):
        with pytest.raises(StorageCorrupted, match="data.mdb|LMDB"):
            LmdbStorage(tmp_path, verify=verify)
    with pytest.raises(StorageCorrupted):  # not StorageInUse: failed opens release the lock
        LmdbStorage(tmp_path)


def test_foreign_lmdb_environment_is_rejected(tmp_path: Path) -> None:
    with lmdb.open(str(tmp_path / "plain")) as env, env.begin(write=True) as txn:
        txn.put(b"hello", b"world")
    with pytest.raises(StorageCorrupted, match="not a kvstore raft log"):
        LmdbStorage(tmp_path / "plain")
    with lmdb.open(str(tmp_path / "named"), max_dbs=2) as env:
        db = env.open_db(b"meta")
        with env.begin(write=True, db=db) as txn:
            txn.put(b"format", b"something else")
    with pytest.raises(StorageCorrupted, match="format marker"):
        LmdbStorage(tmp_path / "named")


def test_unsupported_format_version(tmp_path: Path) -> None:
    make_store(tmp_path, 3)
    with lmdb.open(str(tmp_path), max_dbs=4) as env:
        db = env.open_db(b"meta")
        with env.begin(write=True, db=db) as txn:
            txn.put(b"format", b"kvstore-raft-log\x00" + struct.pack(">I", 99))
    with pytest.raises(StorageCorrupted, match="unsupported raft log format"):
        LmdbStorage(tmp_path)


def test_log_gap_is_detected(tmp_path: Path) -> None:
    make_store(tmp_path, 10)
    with lmdb.open(str(tmp_path), max_dbs=4) as env:
        db = env.open_db(b"log")
        with env.begin(write=True, db=db) as txn:
            txn.delete((5).to_bytes(8, "big"))
    with pytest.raises(StorageCorrupted, match="gap: entry 5 missing"):
        LmdbStorage(tmp_path)


def test_flipped_entry_byte_is_detected(tmp_path: Path) -> None:
    make_store(tmp_path)
    data = tmp_path / "data.mdb"
    at = data.read_bytes().index(b"PAYLOAD000042-") + 9
    patch_file(data, at, b"X")
    with pytest.raises(StorageCorrupted, match="entry 42: checksum"):
        LmdbStorage(tmp_path)
    # Without the full check at open, the damage surfaces when the entry is read.
    with LmdbStorage(tmp_path, verify=False, cache_entries=10) as s:
        assert [e.index for e in s.entries(40, 42)] == [40, 41]
        with pytest.raises(StorageCorrupted, match="entry 42"):
            s.entries(40, 50)


def test_flipped_hard_state_byte_is_detected(tmp_path: Path) -> None:
    make_store(tmp_path, 5)
    data = tmp_path / "data.mdb"
    record = _encode_hard_state(HardState(0x1122334455667788, 2, 77))
    at = data.read_bytes().index(record)
    patch_file(data, at + 10, b"\xff")
    for verify in (True, False):
        with pytest.raises(StorageCorrupted, match="hard state"):
            LmdbStorage(tmp_path, verify=verify)


OPEN_CHILD = textwrap.dedent(
    """
    import sys
    from raft.lmdb_storage import LmdbStorage
    from raft.types import StorageCorrupted, HardState
    expected = [b"PAYLOAD%06d-" % i * 20 for i in range(1, int(sys.argv[2]) + 1)]
    for path in sys.argv[3:]:
        try:
            with LmdbStorage(path, verify=sys.argv[1] == "verify") as s:
                data = [e.data for e in s.entries(1, s.last_index() + 1)]
                ok = data == expected and s.initial_state()[0] == HardState(0x1122334455667788, 2, 77)
                print("intact" if ok else "WRONG", flush=True)
        except StorageCorrupted as e:
            print("corrupted", e, flush=True)
    """
)


def open_in_child(paths: list[Path], n: int, verify: bool = True) -> list[str]:
    """Open each store in a subprocess (a crash there fails the test instead
    of killing pytest); one result line per store."""
    proc = subprocess.run(
        [sys.executable, "-c", OPEN_CHILD, "verify" if verify else "fast", str(n), *map(str, paths)],
        env=CHILD_ENV, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(paths), proc.stderr
    return lines


def test_truncated_file_is_corruption_not_sigbus(tmp_path: Path) -> None:
    paths = []
    for verify in (True, False):
        p = tmp_path / f"store-{verify}"
        make_store(p)
        size = (p / "data.mdb").stat().st_size
        os.truncate(p / "data.mdb", size // 2)
        paths.append(p)
    for verify, p in zip((True, False), paths):
        [result] = open_in_child([p], 300, verify)
        assert result.startswith("corrupted") and ("truncated" in result or "beyond EOF" in result), result


@pytest.mark.slow
def test_random_byte_damage_is_detected_or_harmless(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    make_store(pristine)
    size = (pristine / "data.mdb").stat().st_size
    rng = random.Random(99)
    paths = []
    for trial in range(40):
        p = tmp_path / f"t{trial}"
        p.mkdir()
        shutil.copy(pristine / "data.mdb", p / "data.mdb")
        for _ in range(rng.choice([1, 4, 32])):
            patch_file(p / "data.mdb", rng.randrange(size), bytes([rng.randrange(256)]))
        paths.append(p)
    results = open_in_child(paths, 300)
    assert not [r for r in results if r.startswith("WRONG")], results
    assert any(r.startswith("corrupted") for r in results)
