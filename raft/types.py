"""Plain data carried in and out of the Raft core.

Objects use ``__slots__`` (not protobuf) because the core touches entries and
messages on every hot path; the peer transport converts at the edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NONE = 0  # "no node": no leader known, no vote cast


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class MsgType(IntEnum):
    # Local-only messages (never cross the network, term 0).
    HUP = 0  # start an election
    BEAT = 1  # leader: send heartbeats
    CHECK_QUORUM = 2
    PROP = 3  # a proposal (local, or forwarded by a follower to the leader)
    UNREACHABLE = 4
    SNAP_STATUS = 5
    # Network messages.
    APP = 10
    APP_RESP = 11
    VOTE = 12
    VOTE_RESP = 13
    PRE_VOTE = 14
    PRE_VOTE_RESP = 15
    HEARTBEAT = 16
    HEARTBEAT_RESP = 17
    SNAP = 18
    TIMEOUT_NOW = 19
    READ_INDEX = 20
    READ_INDEX_RESP = 21
    TRANSFER_LEADER = 22


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class ConfChangeType(IntEnum):
    ADD_NODE = 0  # add a voter, or promote an existing learner
    REMOVE_NODE = 1
    ADD_LEARNER = 2


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    type: int = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class HardState:
    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(slots=True, frozen=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(slots=True, frozen=True)
class Snapshot:
    """Raft-level snapshot. ``data`` is small and opaque to Raft; a large
    application state travels beside the message, streamed in chunks by the
    transport (see raft.transport)."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        return self.meta.index == 0


@dataclass(slots=True, frozen=True)
class ConfChange:
    type: ConfChangeType
    node_id: int
    context: bytes = b""  # application data, e.g. the member's peer URLs

    def encode(self) -> bytes:
        return bytes((int(self.type),)) + self.node_id.to_bytes(8, "big") + self.context

    @classmethod
    def decode(cls, data: bytes) -> "ConfChange":
        if len(data) < 9:
            raise ValueError("conf change entry too short")
        return cls(ConfChangeType(data[0]), int.from_bytes(data[1:9], "big"), bytes(data[9:]))


@dataclass(slots=True)
class Message:
    type: MsgType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: Snapshot | None = None


@dataclass(slots=True, frozen=True)
class ReadState:
    """A ReadIndex answer: reads tagged ``request_ctx`` may be served once the
    local state machine has applied ``index``."""

    index: int
    request_ctx: bytes


@dataclass(slots=True, frozen=True)
class SoftState:
    leader: int
    role: Role


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver, to be handled in this order:

    1. persist ``snapshot`` (if any), ``entries`` and ``hard_state`` — one
       fsync for all of them when ``must_sync``;
    2. only then send ``messages`` (a vote or an append acknowledgement must
       never leave before what it promises is on disk);
    3. apply ``snapshot`` then ``committed_entries`` to the state machine;
    4. call ``Raft.advance(ready)``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False


class RaftError(Exception):
    """Base class for errors reported by the Raft library."""


class ProposalDropped(RaftError):
    """The proposal was not appended (no leader, leadership transfer, or a
    configuration change is already pending)."""


class CompactedError(RaftError):
    """Requested index is older than the first index kept in storage."""


class UnavailableError(RaftError):
    """Requested index is newer than the last index in storage."""


class StorageCorrupted(RaftError):
    """The on-disk log cannot be trusted; refuse to start."""
