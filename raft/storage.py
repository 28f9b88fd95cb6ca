"""The log storage contract and an in-memory implementation.

The core only *reads* storage (``LogStorage``); the driver writes it after
each Ready, in one durable batch (``LogWriter.save``). ``MemoryStorage``
implements both and is the reference for tests and simulation.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from .types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)


class LogStorage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""

    def last_index(self) -> int: ...

    def term(self, index: int) -> int:
        """Term of entry ``index``; valid for ``first_index()-1 .. last_index()``.
        Raises CompactedError / UnavailableError outside that range."""

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``; at least one if the range is non-empty,
        then stop before exceeding ``max_bytes`` of entry data."""

    def snapshot(self) -> Snapshot: ...


class LogWriter(Protocol):
    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
    ) -> None:
        """Persist one Ready atomically: a snapshot replaces the log up to its
        index, entries overwrite any conflicting suffix. One fsync if ``sync``."""

    def compact(self, meta: SnapshotMeta, data: bytes = b"") -> None:
        """Record a snapshot at ``meta.index`` and drop entries up to it."""


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """Keep at least one entry, then as many as fit in ``max_bytes``."""
    if max_bytes is None or len(entries) <= 1:
        return entries
    total = 0
    for i, e in enumerate(entries):
        total += len(e.data) + 16
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


class MemoryStorage:
    """Log kept in a Python list; ``ents[0]`` is a dummy holding the snapshot
    index and term, as in etcd's MemoryStorage."""

    def __init__(self, voters: Sequence[int] = (), learners: Sequence[int] = ()) -> None:
        self.hard_state = HardState()
        self.snap = Snapshot(SnapshotMeta(0, 0, ConfState(tuple(voters), tuple(learners))))
        self.ents: list[Entry] = [Entry(0, 0)]

    # -- LogStorage ---------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self.snap.meta.conf_state

    def first_index(self) -> int:
        return self.ents[0].index + 1

    def last_index(self) -> int:
        return self.ents[0].index + len(self.ents) - 1

    def term(self, index: int) -> int:
        offset = self.ents[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self.ents):
            raise UnavailableError(index)
        return self.ents[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self.ents[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        if lo >= hi:
            return []
        return limit_size(self.ents[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self.snap

    # -- LogWriter ----------------------------------------------------------
    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool = True,
    ) -> None:
        if snapshot is not None and not snapshot.is_empty:
            self.apply_snapshot(snapshot)
        if entries:
            self.append(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def apply_snapshot(self, snap: Snapshot) -> None:
        if snap.meta.index <= self.snap.meta.index:
            return
        self.snap = snap
        self.ents = [Entry(snap.meta.term, snap.meta.index)]

    def append(self, entries: Sequence[Entry]) -> None:
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return
        if first > entries[0].index:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self.ents[0].index
        if offset > len(self.ents):
            raise ValueError(f"missing log entry before {entries[0].index}")
        del self.ents[offset:]
        self.ents.extend(entries)

    def compact(self, meta: SnapshotMeta, data: bytes = b"") -> None:
        offset = self.ents[0].index
        if meta.index <= offset:
            return
        if meta.index > self.last_index():
            raise UnavailableError(meta.index)
        term = self.ents[meta.index - offset].term
        self.ents = [Entry(term, meta.index)] + self.ents[meta.index - offset + 1 :]
        self.snap = Snapshot(SnapshotMeta(meta.index, term, meta.conf_state), data)
