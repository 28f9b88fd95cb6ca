"""Framing of the peer protocol (see proto/raftpb/raft.proto).

A connection is a byte stream of frames: 4-byte big-endian payload length,
1-byte frame type, payload. Raw frames instead of gRPC because a gRPC stream
message costs ~70 us of CPU in grpc.aio against a few us for a socket write,
and the peer links carry several messages per client request.

Encoding is pure; ``read_frame`` only needs an ``asyncio.StreamReader``.
"""
from __future__ import annotations

import asyncio
import struct
from enum import IntEnum

from .pb import raft_pb2 as pb

__all__ = ["MAGIC", "VERSION", "Frame", "Kind", "Code", "ProtocolError", "frame", "read_frame", "read_hello", "hello", "reply", "parse_reply", "describe"]

MAGIC = b"KVRAFT\x00\n"  # the dialer's first bytes: anything else is refused at once
VERSION = 1
HEADER = struct.Struct(">IB")
MAX_CONTROL = 4096  # hello and reply frames are tiny


class Frame(IntEnum):
    HELLO = 1
    REPLY = 2
    BATCH = 3  # a MessageBatch
    SNAP_MESSAGE = 4  # the MsgSnap (an encoded Message)
    SNAP_DATA = 5
    SNAP_DONE = 6  # a SnapshotDone
    PING = 7  # on a message connection: 8 bytes the receiver sends back in a PONG (round-trip probe)
    PONG = 8


class Kind(IntEnum):
    STREAM = 1
    SNAPSHOT = 2


class Code(IntEnum):
    """gRPC's status numbers, so log lines read as before."""

    OK = 0
    INVALID_ARGUMENT = 3
    PERMISSION_DENIED = 7
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15


class ProtocolError(Exception):
    """The other side broke the framing (or is not a kvstore peer at all)."""


def frame(ftype: Frame, payload: bytes) -> list[bytes]:
    """Header and payload as two buffers (for ``writelines``: no copy of a large batch)."""
    return [HEADER.pack(len(payload), ftype), payload]


def hello(kind: Kind, cluster_id: int, sender: int, receiver: int) -> bytes:
    msg = pb.PeerHello(version=VERSION, kind=kind, cluster_id=cluster_id, sender=sender, receiver=receiver)
    return MAGIC + b"".join(frame(Frame.HELLO, msg.SerializeToString()))


def reply(code: Code, reason: str = "") -> list[bytes]:
    return frame(Frame.REPLY, pb.PeerReply(code=code, reason=reason[:1000]).SerializeToString())


def parse_reply(payload: bytes) -> tuple[Code | int, str]:
    try:
        r = pb.PeerReply.FromString(payload)
    except Exception as e:  # protobuf's DecodeError
        raise ProtocolError(f"malformed reply: {e}") from None
    try:
        return Code(r.code), r.reason
    except ValueError:
        return r.code, r.reason


def describe(code: Code | int, reason: str) -> str:
    name = code.name if isinstance(code, Code) else f"code {code}"
    return f"{name}: {reason}" if reason else name


async def read_frame(reader: asyncio.StreamReader, max_size: int) -> tuple[int, bytes]:
    """The next frame; ``asyncio.IncompleteReadError`` at end of stream,
    ``ProtocolError`` for a frame over ``max_size``."""
    n, ftype = HEADER.unpack(await reader.readexactly(HEADER.size))
    if n > max_size:
        raise ProtocolError(f"frame of {n} bytes (limit {max_size})")
    return ftype, (await reader.readexactly(n) if n else b"")


async def read_hello(reader: asyncio.StreamReader) -> pb.PeerHello:
    """The dialer's opening: magic, then a HELLO frame."""
    if await reader.readexactly(len(MAGIC)) != MAGIC:
        raise ProtocolError("not a kvstore peer connection (bad magic)")
    ftype, payload = await read_frame(reader, MAX_CONTROL)
    if ftype != Frame.HELLO:
        raise ProtocolError(f"expected a hello frame, got type {ftype}")
    try:
        h = pb.PeerHello.FromString(payload)
    except Exception as e:
        raise ProtocolError(f"malformed hello: {e}") from None
    if h.version != VERSION:
        raise ProtocolError(f"peer protocol version {h.version} (we speak {VERSION})")
    return h
