"""A Raft library that knows nothing of keys.

``core.Raft`` is the pure state machine (tick/step/propose → Ready);
``storage`` defines the log contract (``MemoryStorage`` for tests),
``lmdb_storage.LmdbStorage`` the durable log, ``transport.PeerTransport`` the
peer links (framed TCP/TLS, ``wire``) and ``node.RaftNode`` the asyncio driver that runs them.
"""
from .core import Config, Raft, ReadOnlyOption
from .storage import LogStorage, LogWriter, MemoryStorage
from .types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    Ready,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)

__all__ = [
    "Config", "Raft", "ReadOnlyOption", "LogStorage", "LogWriter", "MemoryStorage",
    "ConfChange", "ConfChangeType", "ConfState", "Entry", "EntryType", "HardState", "Message",
    "MsgType", "ProposalDropped", "Ready", "ReadState", "Role", "Snapshot", "SnapshotMeta",
]
