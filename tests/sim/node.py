"""One simulated server: a lossy disk, a state machine, and the Raft object.

The disk loses unsynced writes on crash (like LazyFS): every write reaches
``live`` (what the running process reads, i.e. the page cache) at once, but
reaches ``durable`` only when a synced write flushes it. A crash keeps a
random prefix of the unsynced writes and throws the rest away.

The state machine appends every applied entry to a list. Its applied index is
durable only at checkpoints (and when a snapshot is taken or installed); after
a restart it re-applies from there, skipping entries it already has.
"""
from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

from raft.storage import MemoryStorage
from raft.types import ConfChange, ConfChangeType, Entry, HardState, Snapshot, SnapshotMeta

if TYPE_CHECKING:
    from raft.core import Raft


def clone_storage(src: MemoryStorage) -> MemoryStorage:
    dst = MemoryStorage()
    dst.hard_state = src.hard_state
    dst.snap = src.snap
    dst.ents = list(src.ents)
    return dst


class SimDisk:
    __slots__ = ("live", "durable", "pending", "syncs", "lost")

    def __init__(self, voters: tuple[int, ...], learners: tuple[int, ...]) -> None:
        self.durable = MemoryStorage(voters, learners)
        self.live = clone_storage(self.durable)
        self.pending: list[tuple] = []  # unsynced writes, oldest first
        self.syncs = 0
        self.lost = 0

    def _flush(self) -> None:
        for op in self.pending:
            self._apply(self.durable, op)
        self.pending.clear()

    @staticmethod
    def _apply(st: MemoryStorage, op: tuple) -> None:
        if op[0] == "save":
            st.save(op[1], op[2], op[3], True)
        else:
            st.compact(op[1], op[2])

    def save(self, hs: HardState | None, ents: list[Entry], snap: Snapshot | None, sync: bool) -> None:
        op = ("save", hs, list(ents), snap)
        self._apply(self.live, op)
        if sync:
            self._flush()
            self._apply(self.durable, op)
            self.syncs += 1
        else:
            self.pending.append(op)

    def compact(self, meta: SnapshotMeta, data: bytes) -> None:
        op = ("compact", meta, data)
        self._apply(self.live, op)
        self._flush()
        self._apply(self.durable, op)
        self.syncs += 1

    def crash(self, rng) -> None:
        keep = rng.randint(0, len(self.pending))
        self.lost += len(self.pending) - keep
        for op in self.pending[:keep]:
            self._apply(self.durable, op)
        self.pending.clear()
        self.live = clone_storage(self.durable)


def apply_membership(voters: set[int], learners: set[int], cc: ConfChange) -> None:
    """The application's view of a conf change; mirrors Raft.apply_conf_change."""
    n = cc.node_id
    if cc.type == ConfChangeType.ADD_NODE:
        learners.discard(n)
        voters.add(n)
    elif cc.type == ConfChangeType.ADD_LEARNER:
        if n not in voters:
            learners.add(n)
    else:
        voters.discard(n)
        learners.discard(n)


class StateMachine:
    """Applied entries as ``(index, term, type, data)``, contiguous from 1,
    plus the membership they imply."""

    __slots__ = ("applied", "entries", "voters", "learners", "durable")

    def __init__(self, voters: tuple[int, ...], learners: tuple[int, ...]) -> None:
        self.applied = 0
        self.entries: list[tuple[int, int, int, bytes]] = []
        self.voters = set(voters)
        self.learners = set(learners)
        self.durable = self._state()

    def _state(self):
        return (self.applied, tuple(self.entries), tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def _load(self, st) -> None:
        self.applied, ents, v, l = st
        self.entries = list(ents)
        self.voters, self.learners = set(v), set(l)

    def serialize(self) -> bytes:
        return pickle.dumps(self._state(), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, data: bytes) -> None:
        self._load(pickle.loads(data))

    def checkpoint(self) -> None:
        self.durable = self._state()

    def crash(self) -> None:
        self._load(self.durable)

    def apply(self, e: Entry) -> None:
        self.entries.append((e.index, e.term, int(e.type), e.data))
        self.applied = e.index

    def conf(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(sorted(self.voters)), tuple(sorted(self.learners))


class SimNode:
    __slots__ = (
        "id",
        "disk",
        "sm",
        "raft",
        "inc",
        "ready_scheduled",
        "inflight",
        "async_mode",
        "mem_committed",
        "persisted_commit",
        "destroyed",
        "down_since",
        "restart_at",
        "started_at",
        "period",
    )

    def __init__(self, nid: int, voters: tuple[int, ...], learners: tuple[int, ...]) -> None:
        self.id = nid
        self.disk = SimDisk(voters, learners)
        self.sm = StateMachine(voters, learners)
        self.raft: Raft | None = None
        self.inc = 0  # incarnation: events of a crashed incarnation are ignored
        self.ready_scheduled = False
        self.inflight = None  # a Ready taken but not yet persisted (async mode)
        self.async_mode = False
        self.mem_committed = 0  # commit index of this incarnation (never decreases)
        self.persisted_commit = 0
        self.destroyed = False
        self.down_since = -1
        self.restart_at = -1
        self.started_at = 0
        self.period: float = 0.0  # drift runs: this incarnation's tick period (0: varies per tick)

    @property
    def up(self) -> bool:
        return self.raft is not None
