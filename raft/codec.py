"""Conversion between raft.types objects and the peer protocol (raft.pb).

Plain functions with every field spelled out: no descriptor walking, no
``getattr`` loops, because every Raft message of the cluster passes through
here twice. Decoding validates enum values so a malformed or newer-version
message is rejected as a whole (``ValueError``) instead of half-understood.
"""
from __future__ import annotations

from typing import Iterable

from .pb import raft_pb2 as pb
from .types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

__all__ = [
    "encode_entry",
    "decode_entry",
    "encode_snapshot",
    "decode_snapshot",
    "encode_message",
    "decode_message",
    "encode_batch",
    "decode_batch",
    "frame_message",
]

# Enum lookups by value: a dict hit is several times cheaper than calling the
# IntEnum class, and unknown values come out as None.
_MSG_TYPES: dict[int, MsgType] = {int(t): t for t in MsgType}
_ENTRY_TYPES: dict[int, EntryType] = {int(t): t for t in EntryType}

_PbEntry = pb.Entry
_PbMessage = pb.Message


def encode_entry(e: Entry) -> pb.Entry:
    return _PbEntry(term=e.term, index=e.index, type=e.type, data=e.data)


def decode_entry(p: pb.Entry) -> Entry:
    et = _ENTRY_TYPES.get(p.type)
    if et is None:
        raise ValueError(f"unknown entry type {p.type} at index {p.index}")
    return Entry(p.term, p.index, et, p.data)


def encode_snapshot(s: Snapshot) -> pb.Snapshot:
    m = s.meta
    cs = m.conf_state
    return pb.Snapshot(
        meta=pb.SnapshotMeta(
            index=m.index,
            term=m.term,
            conf_state=pb.ConfState(voters=cs.voters, learners=cs.learners),
        ),
        data=s.data,
    )


def decode_snapshot(p: pb.Snapshot) -> Snapshot:
    m = p.meta
    cs = m.conf_state
    return Snapshot(
        SnapshotMeta(m.index, m.term, ConfState(tuple(cs.voters), tuple(cs.learners))),
        p.data,
    )


def encode_message(m: Message) -> pb.Message:
    p = _PbMessage(
        type=m.type,
        to=m.to,
        frm=m.frm,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        context=m.context,
    )
    if m.entries:
        add = p.entries.add  # builds in place; extend() would copy each Entry
        for e in m.entries:
            add(term=e.term, index=e.index, type=e.type, data=e.data)
    if m.snapshot is not None:
        p.snapshot.CopyFrom(encode_snapshot(m.snapshot))
    return p


def decode_message(p: pb.Message) -> Message:
    mt = _MSG_TYPES.get(p.type)
    if mt is None:
        raise ValueError(f"unknown message type {p.type}")
    entries: list[Entry] = []
    if p.entries:
        types = _ENTRY_TYPES
        for e in p.entries:
            et = types.get(e.type)
            if et is None:
                raise ValueError(f"unknown entry type {e.type} at index {e.index}")
            entries.append(Entry(e.term, e.index, et, e.data))
    return Message(
        mt,
        p.to,
        p.frm,
        p.term,
        p.log_term,
        p.index,
        entries,
        p.commit,
        p.reject,
        p.reject_hint,
        p.context,
        decode_snapshot(p.snapshot) if p.HasField("snapshot") else None,
    )


def encode_batch(messages: Iterable[Message]) -> pb.MessageBatch:
    return pb.MessageBatch(messages=[encode_message(m) for m in messages])


def decode_batch(p: pb.MessageBatch) -> list[Message]:
    """All messages of a batch; raises ValueError if any of them is malformed."""
    return [decode_message(m) for m in p.messages]


def frame_message(m: Message) -> bytes:
    """``m`` encoded as one element of ``MessageBatch.messages`` (field 1).

    Protobuf parses concatenated encodings as one message with the repeated
    fields appended, so ``b"".join(frames)`` *is* the encoded MessageBatch:
    the transport encodes each message once, when it is queued, and a batch
    costs a join. Raises ValueError/TypeError for values protobuf rejects.
    """
    body = encode_message(m).SerializeToString()
    n = len(body)
    if n < 0x80:
        return b"\x0a" + bytes((n,)) + body
    head = bytearray(b"\x0a")
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + body
