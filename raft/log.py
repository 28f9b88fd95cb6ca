"""The Raft log as the core sees it: durable storage plus an unstable tail.

Entries appended by the core live in ``unstable`` until the driver reports
them persisted (``stable_to``); a received snapshot waits in
``unstable_snapshot`` the same way.
"""
from __future__ import annotations

from .storage import LogStorage, limit_size
from .types import CompactedError, Entry, Snapshot, UnavailableError


class RaftLog:
    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable: list[Entry] = []
        self.unstable_offset = last + 1
        self.unstable_snapshot: Snapshot | None = None
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first - 1
        self.applied = first - 1

    # -- indexes and terms ----------------------------------------------------
    def first_index(self) -> int:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.meta.index
        return self.storage.last_index()

    def term(self, index: int) -> int:
        """Term at ``index``; 0 beyond the end; CompactedError before the start."""
        if index > self.last_index():
            return 0
        if self.unstable and index >= self.unstable_offset:
            return self.unstable[index - self.unstable_offset].term
        snap = self.unstable_snapshot
        if snap is not None:
            if index == snap.meta.index:
                return snap.meta.term
            if index < snap.meta.index:
                raise CompactedError(index)
        try:
            return self.storage.term(index)
        except UnavailableError:
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except CompactedError:
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Election restriction (§5.4.1): is a candidate's log at least as new?"""
        my_term = self.last_term()
        return term > my_term or (term == my_term and last_index >= self.last_index())

    # -- reading entries --------------------------------------------------------
    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``; raises CompactedError if ``lo`` is gone."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(lo)
        result: list[Entry] = []
        off = self.unstable_offset
        if lo < off:
            result = self.storage.entries(lo, min(hi, off), max_bytes)
            if hi <= off or len(result) < off - lo:
                return result  # all from storage, which applied the size limit
        if hi > off:
            start = max(lo, off) - off
            tail = self.unstable[start : hi - off]
            result = tail if not result else result + tail
        return limit_size(result, max_bytes)

    def next_committed_entries(self, max_bytes: int | None) -> list[Entry]:
        if self.unstable_snapshot is not None:
            return []  # the snapshot must be applied first
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.entries(lo, self.committed + 1, max_bytes)

    def has_next_committed_entries(self) -> bool:
        return self.unstable_snapshot is None and self.committed > max(
            self.applied, self.first_index() - 1
        )

    def snapshot(self) -> Snapshot:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot
        return self.storage.snapshot()

    # -- changing the log -------------------------------------------------------
    def append(self, entries: list[Entry]) -> int:
        if not entries:
            return self.last_index()
        after = entries[0].index
        if after <= self.committed:
            raise AssertionError(f"append at {after} would overwrite committed {self.committed}")
        off = self.unstable_offset
        if after == off + len(self.unstable):
            self.unstable.extend(entries)
        elif after <= off:
            # Replaces entries that are (or will be) in storage; the driver's
            # save() truncates the conflicting stored suffix.
            self.unstable_offset = after
            self.unstable = list(entries)
        else:
            del self.unstable[after - off :]
            self.unstable.extend(entries)
        return self.last_index()

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (0 if none)."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest ``i <= index`` with ``term(i) <= term``: lets a leader skip a
        whole conflicting term in one round trip instead of one entry each."""
        while index > 0:
            try:
                t = self.term(index)
            except CompactedError:
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, index: int, log_term: int, committed: int, entries: list[Entry]) -> int | None:
        """Follower side of AppendEntries; returns the last new index or None on
        a log mismatch at ``index``."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        ci = self.find_conflict(entries)
        if ci:
            if ci <= self.committed:
                raise AssertionError(f"conflict at {ci} with committed entry {self.committed}")
            self.append(entries[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` (at ``term``) were persisted by the driver."""
        off = self.unstable_offset
        if not self.unstable or index < off:
            return
        pos = index - off
        if pos >= len(self.unstable) or self.unstable[pos].term != term:
            return  # replaced meanwhile; the new entries come in the next Ready
        del self.unstable[: pos + 1]
        self.unstable_offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.unstable_snapshot is not None and self.unstable_snapshot.meta.index == index:
            self.unstable_snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.meta.index
        self.unstable = []
        self.unstable_offset = snap.meta.index + 1
        self.unstable_snapshot = snap
