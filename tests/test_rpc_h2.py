"""kvstore.rpc.h2 driven directly: bytes in, Handler events and frames out.

No sockets, no clock: every test feeds hand-built frames (``h2.frame`` and
``hpack.Encoder``) and parses what the connection queued in ``out``.
"""
from __future__ import annotations

import struct
import tracemalloc
from typing import NamedTuple

import hpack
import pytest

from kvstore.rpc import h2

MiB = 1 << 20
REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/test.T/Echo"), (":authority", "x"),
           ("content-type", "application/grpc"), ("te", "trailers")]


class Frame(NamedTuple):
    type: int
    flags: int
    sid: int
    payload: bytes


class Recorder:
    """An h2.Handler that records every callback."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_request(self, sid: int, headers: list[tuple[str, str]], end_stream: bool) -> None:
        self.events.append(("request", sid, headers, end_stream))

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        self.events.append(("data", sid, data, end_stream))

    def on_reset(self, sid: int, code: int) -> None:
        self.events.append(("reset", sid, code))

    def on_writable(self, sid: int) -> None:
        self.events.append(("writable", sid))

    def take(self) -> list[tuple]:
        out, self.events = self.events, []
        return out


def parse(data: bytes) -> list[Frame]:
    frames, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        payload = data[pos + 9 : pos + 9 + length]
        assert len(payload) == length, "truncated frame in the output"
        frames.append(Frame(ftype, flags, sid, payload))
        pos += 9 + length
    return frames


def sent(conn: h2.H2Connection) -> list[Frame]:
    """The frames the connection queued since the last call (then cleared)."""
    data = b"".join(conn.out)
    conn.out.clear()
    return parse(data)


def settings(**values: int) -> bytes:
    keys = {"initial_window": h2.S_INITIAL_WINDOW_SIZE, "max_frame": h2.S_MAX_FRAME_SIZE,
            "table_size": h2.S_HEADER_TABLE_SIZE}
    return h2.frame(h2.SETTINGS, 0, 0, b"".join(struct.pack(">HI", keys[k], v) for k, v in values.items()))


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def window_update(sid: int, inc: int) -> bytes:
    return h2.frame(h2.WINDOW_UPDATE, 0, sid, u32(inc))


def goaway_code(frames: list[Frame]) -> int:
    goaways = [f for f in frames if f.type == h2.GOAWAY]
    assert len(goaways) == 1, frames
    assert goaways[0].sid == 0
    return struct.unpack(">I", goaways[0].payload[4:8])[0]


def assert_connection_error(conn: h2.H2Connection, code: int) -> None:
    assert goaway_code(sent(conn)) == code
    assert conn.closed and conn.goaway_sent


def connect(max_concurrent_streams: int = h2.MAX_CONCURRENT_STREAMS, **peer_settings: int):
    """A connection past the handshake, its output cleared: (conn, recorder, encoder)."""
    rec = Recorder()
    conn = h2.H2Connection(rec, max_concurrent_streams)
    conn.feed(h2.PREFACE + settings(**peer_settings))
    sent(conn)
    return conn, rec, hpack.Encoder()


def headers_frame(enc: hpack.Encoder, sid: int, end_stream: bool = False, extra=()) -> bytes:
    flags = h2.END_HEADERS | (h2.END_STREAM if end_stream else 0)
    return h2.frame(h2.HEADERS, flags, sid, enc.encode(REQUEST + list(extra)))


def open_stream(conn: h2.H2Connection, rec: Recorder, enc: hpack.Encoder, sid: int, end_stream: bool = False) -> None:
    conn.feed(headers_frame(enc, sid, end_stream))
    assert [e[:2] for e in rec.take()] == [("request", sid)]


def data_frames(frames: list[Frame], sid: int) -> list[bytes]:
    return [f.payload for f in frames if f.type == h2.DATA and f.sid == sid]


# ------------------------------------------------------------------ handshake
def test_preface_and_settings_answered_with_our_settings_window_and_ack():
    conn = h2.H2Connection(Recorder())
    conn.feed(h2.PREFACE + settings(initial_window=1000))
    frames = sent(conn)
    assert [(f.type, f.flags, f.sid) for f in frames] == [
        (h2.SETTINGS, 0, 0), (h2.WINDOW_UPDATE, 0, 0), (h2.SETTINGS, h2.ACK, 0)]
    ours = dict(struct.iter_unpack(">HI", frames[0].payload))
    assert ours == {
        h2.S_ENABLE_PUSH: 0,
        h2.S_MAX_CONCURRENT_STREAMS: h2.MAX_CONCURRENT_STREAMS,
        h2.S_INITIAL_WINDOW_SIZE: h2.STREAM_WINDOW,
        h2.S_MAX_FRAME_SIZE: h2.MAX_FRAME_SIZE,
        h2.S_MAX_HEADER_LIST_SIZE: h2.MAX_HEADER_BLOCK,
    }
    assert struct.unpack(">I", frames[1].payload)[0] == h2.CONN_WINDOW - h2.DEFAULT_WINDOW
    assert frames[2].payload == b""
    assert conn.peer_initial_window == 1000
    assert not conn.closed


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"])
def test_bad_preface_is_a_protocol_error(data):
    rec = Recorder()
    conn = h2.H2Connection(rec)
    sent(conn)
    conn.feed(data)
    assert_connection_error(conn, h2.PROTOCOL_ERROR)
    conn.feed(h2.PREFACE)  # nothing is parsed any more
    assert sent(conn) == [] and rec.events == []


def test_ping_is_acked_with_its_payload_and_an_ack_is_not_answered():
    conn, _, _ = connect()
    conn.feed(h2.frame(h2.PING, 0, 0, b"12345678") + h2.frame(h2.PING, h2.ACK, 0, b"abcdefgh"))
    assert sent(conn) == [Frame(h2.PING, h2.ACK, 0, b"12345678")]


# -------------------------------------------------------------------- headers
def test_headers_split_over_continuation_frames():
    conn, rec, enc = connect()
    block = enc.encode(REQUEST + [("x-long", "v" * 100)])
    a, b, c = block[:10], block[10:40], block[40:]
    conn.feed(h2.frame(h2.HEADERS, h2.END_STREAM, 1, a) + h2.frame(h2.CONTINUATION, 0, 1, b))
    assert rec.events == []
    conn.feed(h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, c))
    assert rec.take() == [("request", 1, REQUEST + [("x-long", "v" * 100)], True)]
    assert not conn.closed


def test_headers_with_padding_and_priority_fields():
    conn, rec, enc = connect()
    block = enc.encode(REQUEST)
    payload = bytes([4]) + u32(0) + b"\x10" + block + b"\0" * 4  # pad length, dependency, weight, block, padding
    conn.feed(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.PADDED | h2.PRIORITY_FLAG, 1, payload))
    assert rec.take() == [("request", 1, REQUEST, False)]


@pytest.mark.parametrize("between", [
    h2.frame(h2.PING, 0, 0, b"12345678"),
    h2.frame(h2.DATA, 0, 1, b"x"),
    h2.frame(h2.CONTINUATION, h2.END_HEADERS, 3, b""),  # a CONTINUATION of another stream
])
def test_frame_inside_a_header_block_is_a_protocol_error(between):
    conn, rec, enc = connect()
    block = enc.encode(REQUEST)
    conn.feed(h2.frame(h2.HEADERS, 0, 1, block[:5]) + between + h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[5:]))
    assert_connection_error(conn, h2.PROTOCOL_ERROR)
    assert rec.events == []


def test_header_block_larger_than_the_limit_ends_the_connection():
    conn, rec, _ = connect()
    conn.feed(h2.frame(h2.HEADERS, 0, 1, b"\x82" * h2.MAX_HEADER_BLOCK))
    assert sent(conn) == [] and not conn.closed
    conn.feed(h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, b"\x82"))
    assert_connection_error(conn, h2.ENHANCE_YOUR_CALM)
    assert rec.events == []


def test_decreasing_stream_id_is_a_connection_error():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 5)
    conn.feed(headers_frame(enc, 3))
    frames = sent(conn)
    assert goaway_code(frames) in (h2.PROTOCOL_ERROR, h2.STREAM_CLOSED)
    assert struct.unpack(">I", [f for f in frames if f.type == h2.GOAWAY][0].payload[:4])[0] == 5  # last stream id
    assert conn.closed and rec.events == []


def test_headers_on_a_stream_we_reset_are_ignored():
    """Our status ends the stream with RST_STREAM(NO_ERROR); trailers the
    client sent before it saw that are ignored, not a connection error."""
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    conn.send_headers(1, b"status", end_stream=True)
    assert [(f.type, struct.unpack(">I", f.payload)[0]) for f in sent(conn) if f.type == h2.RST_STREAM] == [
        (h2.RST_STREAM, h2.NO_ERROR)]
    conn.feed(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, enc.encode([("grpc-status", "0")])))
    assert sent(conn) == [] and not conn.closed and rec.events == []
    open_stream(conn, rec, enc, 3)  # the HPACK state stayed in step


def test_headers_on_a_stream_the_client_ended_reset_that_stream_only():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1, end_stream=True)
    conn.feed(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, enc.encode([("x", "y")])))
    assert [(f.type, f.sid, f.payload) for f in sent(conn)] == [(h2.RST_STREAM, 1, u32(h2.STREAM_CLOSED))]
    assert rec.take() == [("reset", 1, h2.STREAM_CLOSED)] and not conn.closed
    open_stream(conn, rec, enc, 3)


@pytest.mark.parametrize("table_size", [None, 50])  # 50: one entry fits, so adding one evicts the other
def test_identical_header_blocks_decode_by_the_current_dynamic_table(table_size):
    conn, rec, _ = connect()
    enc = hpack.Encoder()
    if table_size is not None:
        enc.header_table_size = table_size
    blocks = [enc.encode([("x-k", "one")]), enc.encode([("x-k", "one")]),
              enc.encode([("x-k", "two")]), enc.encode([("x-k", "two")])]
    assert blocks[1] == blocks[3]  # byte for byte the same block: a reference to the newest table entry
    for i, block in enumerate(blocks):
        conn.feed(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 2 * i + 1, block))
    got = [e[2] for e in rec.take()]
    assert got == [[("x-k", "one")], [("x-k", "one")], [("x-k", "two")], [("x-k", "two")]]


def test_repeated_header_block_decodes_the_same_every_time():
    conn, rec, enc = connect()
    for sid in (1, 3, 5):
        conn.feed(headers_frame(enc, sid, end_stream=True))
    assert [e[2] for e in rec.take()] == [REQUEST] * 3


# ----------------------------------------------------------------------- data
def test_data_reaches_the_handler():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    conn.feed(h2.frame(h2.DATA, 0, 1, b"hello") + h2.frame(h2.DATA, h2.END_STREAM, 1, b" world"))
    assert rec.take() == [("data", 1, b"hello", False), ("data", 1, b" world", True)]


def test_data_padding_is_stripped():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    conn.feed(h2.frame(h2.DATA, h2.PADDED, 1, b"\x03abc\0\0\0") + h2.frame(h2.DATA, h2.PADDED, 1, b"\x00xyz"))
    assert rec.take() == [("data", 1, b"abc", False), ("data", 1, b"xyz", False)]


def test_data_padding_longer_than_the_frame_is_a_protocol_error():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    conn.feed(h2.frame(h2.DATA, h2.PADDED, 1, b"\x05abc"))
    assert_connection_error(conn, h2.PROTOCOL_ERROR)


def test_data_beyond_the_stream_window_resets_the_stream():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    open_stream(conn, rec, enc, 3)
    chunk = b"x" * MiB
    for _ in range(h2.STREAM_WINDOW // MiB):  # exactly the window: accepted
        conn.feed(h2.frame(h2.DATA, 0, 1, chunk))
    assert [e[0] for e in rec.take()] == ["data"] * (h2.STREAM_WINDOW // MiB)
    assert not any(f.type == h2.RST_STREAM for f in sent(conn))
    conn.feed(h2.frame(h2.DATA, 0, 1, b"!"))
    assert rec.take() == [("reset", 1, h2.FLOW_CONTROL_ERROR)]
    assert sent(conn) == [Frame(h2.RST_STREAM, 0, 1, u32(h2.FLOW_CONTROL_ERROR))]
    conn.feed(h2.frame(h2.DATA, 0, 1, b"late") + h2.frame(h2.DATA, 0, 3, b"other"))  # in flight: ignored
    assert rec.take() == [("data", 3, b"other", False)]
    assert not conn.closed


def test_connection_window_is_credited_as_data_arrives():
    conn, rec, enc = connect()
    for sid in (1, 3, 5, 7):
        open_stream(conn, rec, enc, sid)
    quarter = h2.CONN_WINDOW // 4
    conn.feed(h2.frame(h2.DATA, 0, 1, b"x" * MiB) + h2.frame(h2.DATA, 0, 3, b"x" * MiB)
              + h2.frame(h2.DATA, 0, 5, b"x" * MiB) + h2.frame(h2.DATA, 0, 7, b"x" * (quarter - 3 * MiB - 1)))
    assert not [f for f in sent(conn) if f.type == h2.WINDOW_UPDATE]
    conn.feed(h2.frame(h2.DATA, 0, 7, b"x"))
    assert sent(conn) == [Frame(h2.WINDOW_UPDATE, 0, 0, u32(quarter))]


def test_consumed_sends_a_stream_window_update():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    half = h2.STREAM_WINDOW // 2
    conn.feed(h2.frame(h2.DATA, 0, 1, b"x" * MiB) + h2.frame(h2.DATA, 0, 1, b"x" * MiB))
    sent(conn)
    conn.consumed(1, half)
    assert sent(conn) == [Frame(h2.WINDOW_UPDATE, 0, 1, u32(half))]


def test_consumed_small_amounts_wait_for_a_quarter_window():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    conn.feed(h2.frame(h2.DATA, 0, 1, b"x" * MiB) + h2.frame(h2.DATA, 0, 1, b"x" * MiB))
    sent(conn)
    conn.consumed(1, 1000)
    assert sent(conn) == []


def test_consumed_as_it_arrives_keeps_the_peer_sending():
    """A peer that obeys the windows streams 3 windows' worth through one stream
    whose application consumes every frame at once."""
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    stream_credit, conn_credit = h2.STREAM_WINDOW, h2.CONN_WINDOW  # as the peer sees them
    delivered = 0
    for _ in range(3 * h2.STREAM_WINDOW // MiB):
        n = min(MiB, stream_credit, conn_credit)
        assert n > 0, f"peer stalled with no window after {delivered} bytes"
        conn.feed(h2.frame(h2.DATA, 0, 1, b"x" * n))
        stream_credit -= n
        conn_credit -= n
        delivered += sum(len(e[2]) for e in rec.take())
        conn.consumed(1, n)
        for f in sent(conn):
            if f.type == h2.WINDOW_UPDATE:
                inc = struct.unpack(">I", f.payload)[0]
                if f.sid == 0:
                    conn_credit += inc
                else:
                    stream_credit += inc
    assert delivered == 3 * h2.STREAM_WINDOW


# ------------------------------------------------------------ outbound data
def test_send_data_respects_the_peer_window_and_queues_trailers_behind_data():
    conn, rec, enc = connect(initial_window=10)
    open_stream(conn, rec, enc, 1, end_stream=True)
    body = bytes(range(100))
    conn.send_headers(1, b"\x88")
    assert conn.send_data(1, body) is False
    frames = sent(conn)
    assert [(f.type, f.payload) for f in frames] == [(h2.HEADERS, b"\x88"), (h2.DATA, body[:10])]
    assert conn.queued(1) == 90
    conn.send_headers(1, b"trailers", end_stream=True)
    assert sent(conn) == []  # held behind the queued data
    conn.feed(window_update(1, 30))
    assert [(f.type, f.payload) for f in sent(conn)] == [(h2.DATA, body[10:40])]
    assert conn.queued(1) == 60
    conn.feed(window_update(1, 1000))
    frames = sent(conn)
    assert [(f.type, f.flags, f.payload) for f in frames] == [
        (h2.DATA, 0, body[40:]), (h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, b"trailers")]
    assert 1 not in conn.streams  # both sides closed
    assert rec.events == []  # no on_writable once the stream is closed


def test_on_writable_when_the_queue_drains():
    conn, rec, enc = connect(initial_window=10)
    open_stream(conn, rec, enc, 1)
    assert conn.send_data(1, b"a" * 15) is False
    assert conn.send_data(1, b"b" * 5) is False  # behind the queue
    assert b"".join(data_frames(sent(conn), 1)) == b"a" * 10
    conn.feed(window_update(1, 5))
    assert b"".join(data_frames(sent(conn), 1)) == b"a" * 5
    assert rec.take() == []
    conn.feed(window_update(1, 5))
    assert b"".join(data_frames(sent(conn), 1)) == b"b" * 5
    assert rec.take() == [("writable", 1)]
    assert conn.queued(1) == 0


def test_send_data_splits_by_the_peer_max_frame_size():
    conn, rec, enc = connect(initial_window=1 << 20)
    conn.feed(window_update(0, 1 << 20))
    open_stream(conn, rec, enc, 1)
    body = bytes(i % 251 for i in range(40000))
    assert conn.send_data(1, body) is True
    chunks = data_frames(sent(conn), 1)
    assert [len(c) for c in chunks] == [16384, 16384, 40000 - 2 * 16384]
    assert b"".join(chunks) == body
    conn.feed(settings(max_frame=20000))
    sent(conn)
    conn.send_data(1, body)
    assert [len(c) for c in data_frames(sent(conn), 1)] == [20000, 20000]


def test_large_header_block_is_split_into_continuation_by_the_peer_max_frame_size():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1, end_stream=True)
    block = bytes(i % 256 for i in range(40000))
    conn.send_headers(1, block, end_stream=True)
    frames = sent(conn)
    assert [(f.type, f.flags, len(f.payload)) for f in frames] == [
        (h2.HEADERS, h2.END_STREAM, 16384), (h2.CONTINUATION, 0, 16384),
        (h2.CONTINUATION, h2.END_HEADERS, 40000 - 2 * 16384)]
    assert b"".join(f.payload for f in frames) == block


def test_connection_window_blocks_and_releases_every_stream():
    conn, rec, enc = connect(initial_window=1 << 20)
    open_stream(conn, rec, enc, 1)
    open_stream(conn, rec, enc, 3)
    a, b = b"a" * 60000, b"b" * 20000
    conn.send_data(1, a)
    conn.send_data(3, b)
    frames = sent(conn)
    assert sum(map(len, data_frames(frames, 1))) + sum(map(len, data_frames(frames, 3))) == h2.DEFAULT_WINDOW
    conn.feed(window_update(0, 100000))
    rest = sent(conn)
    assert b"".join(data_frames(frames + rest, 1)) == a
    assert b"".join(data_frames(frames + rest, 3)) == b


def test_initial_window_change_adjusts_open_streams():
    conn, rec, enc = connect(initial_window=10)
    open_stream(conn, rec, enc, 1)
    body = bytes(range(100))
    conn.send_data(1, body)
    assert data_frames(sent(conn), 1) == [body[:10]]
    conn.feed(settings(initial_window=50))  # +40 for the open stream
    frames = sent(conn)
    assert data_frames(frames, 1) == [body[10:50]]
    assert Frame(h2.SETTINGS, h2.ACK, 0, b"") in frames
    conn.feed(settings(initial_window=0))  # the stream's window goes to -50
    assert data_frames(sent(conn), 1) == []
    conn.feed(window_update(1, 50))  # back to 0: still nothing
    assert data_frames(sent(conn), 1) == []
    conn.feed(window_update(1, 50))
    assert data_frames(sent(conn), 1) == [body[50:]]


# RFC 9113 §6.5.3: the sender of SETTINGS applies them when it receives the ACK.
# grpc-c clients raise their initial window while data flows (BDP probing) and
# reject DATA beyond the old window ("frame of size N overflows local window of M").
def test_settings_ack_precedes_data_released_by_a_larger_initial_window():
    conn, rec, enc = connect(initial_window=10)
    open_stream(conn, rec, enc, 1)
    conn.send_data(1, b"x" * 100)
    sent(conn)
    conn.feed(settings(initial_window=1000))
    assert [f.type for f in sent(conn)] == [h2.SETTINGS, h2.DATA]


def test_reset_drops_queued_output():
    conn, rec, enc = connect(initial_window=10)
    open_stream(conn, rec, enc, 1)
    conn.send_data(1, b"x" * 100)
    sent(conn)
    conn.reset(1, h2.CANCEL)
    assert sent(conn) == [Frame(h2.RST_STREAM, 0, 1, u32(h2.CANCEL))]
    conn.feed(window_update(0, 1000) + window_update(1, 1000))  # late update for the reset stream: ignored
    assert data_frames(sent(conn), 1) == []
    assert not conn.closed


# ----------------------------------------------------- resets and errors
def test_rst_stream_from_the_client_is_reported():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    conn.feed(h2.frame(h2.RST_STREAM, 0, 1, u32(h2.CANCEL)))
    assert rec.take() == [("reset", 1, h2.CANCEL)]
    assert 1 not in conn.streams and not conn.closed


def _setting(key: int, value: int) -> bytes:
    return h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", key, value))


@pytest.mark.parametrize("data, code", [
    (h2.frame(h2.PING, 0, 0, b"1234567"), h2.FRAME_SIZE_ERROR),
    (h2.frame(h2.PING, 0, 0, b"123456789"), h2.FRAME_SIZE_ERROR),
    (h2.frame(h2.PING, 0, 1, b"12345678"), h2.PROTOCOL_ERROR),
    (h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, b"\x82"), h2.PROTOCOL_ERROR),
    (h2.frame(h2.HEADERS, h2.END_HEADERS, 2, b"\x82"), h2.PROTOCOL_ERROR),
    (h2.frame(h2.HEADERS, h2.END_HEADERS, 0, b"\x82"), h2.PROTOCOL_ERROR),
    (h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\xff\xff\xff\xff"), h2.COMPRESSION_ERROR),
    (h2.frame(h2.DATA, 0, 1, b"x"), h2.PROTOCOL_ERROR),
    (h2.frame(h2.DATA, 0, 0, b"x"), h2.PROTOCOL_ERROR),
    (h2.frame(h2.RST_STREAM, 0, 7, u32(h2.CANCEL)), h2.PROTOCOL_ERROR),
    (h2.frame(h2.RST_STREAM, 0, 0, u32(h2.CANCEL)), h2.PROTOCOL_ERROR),
    (h2.frame(h2.PRIORITY, 0, 0, u32(0) + b"\x10"), h2.PROTOCOL_ERROR),
    (h2.frame(h2.GOAWAY, 0, 1, u32(0) + u32(0)), h2.PROTOCOL_ERROR),
    (window_update(0, 0), h2.PROTOCOL_ERROR),
    (window_update(9, 1), h2.PROTOCOL_ERROR),
    (window_update(0, h2.MAX_WINDOW), h2.FLOW_CONTROL_ERROR),
    (h2.frame_header(h2.DATA, 0, 1, h2.MAX_FRAME_SIZE + 1), h2.FRAME_SIZE_ERROR),  # the header alone is enough
    (h2.frame(h2.PUSH_PROMISE, h2.END_HEADERS, 1, u32(2) + b"\x82"), h2.PROTOCOL_ERROR),
    (h2.frame(h2.SETTINGS, h2.ACK, 0, b"\0" * 6), h2.FRAME_SIZE_ERROR),
    (h2.frame(h2.SETTINGS, 0, 0, b"\0" * 5), h2.FRAME_SIZE_ERROR),
    (h2.frame(h2.SETTINGS, 0, 1, b""), h2.PROTOCOL_ERROR),
    (_setting(h2.S_MAX_FRAME_SIZE, 100), h2.PROTOCOL_ERROR),
    (_setting(h2.S_ENABLE_PUSH, 2), h2.PROTOCOL_ERROR),
    (_setting(h2.S_INITIAL_WINDOW_SIZE, h2.MAX_WINDOW + 1), h2.FLOW_CONTROL_ERROR),
], ids=["ping-short", "ping-long", "ping-on-stream", "continuation-alone", "even-stream", "headers-on-0",
        "bad-hpack", "data-idle", "data-on-0", "rst-idle", "rst-on-0", "priority-on-0", "goaway-on-stream",
        "window-update-0", "window-update-idle", "window-overflow", "frame-too-large", "push-promise",
        "settings-ack-payload", "settings-length", "settings-on-stream", "max-frame-small", "enable-push-2",
        "initial-window-too-large"])
def test_connection_errors(data, code):
    conn, rec, _ = connect()
    conn.feed(data)
    assert_connection_error(conn, code)
    assert rec.events == []
    conn.feed(h2.frame(h2.PING, 0, 0, b"12345678"))  # nothing is parsed any more
    assert sent(conn) == []


def test_window_update_of_zero_on_a_stream_resets_it():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    conn.feed(window_update(1, 0))
    assert sent(conn) == [Frame(h2.RST_STREAM, 0, 1, u32(h2.PROTOCOL_ERROR))]
    assert rec.take() == [("reset", 1, h2.PROTOCOL_ERROR)]
    assert not conn.closed


def test_max_concurrent_streams_refuses_the_excess():
    conn, rec, enc = connect(max_concurrent_streams=2)
    open_stream(conn, rec, enc, 1, end_stream=True)
    open_stream(conn, rec, enc, 3)
    conn.feed(headers_frame(enc, 5))
    assert rec.take() == []
    assert sent(conn) == [Frame(h2.RST_STREAM, 0, 5, u32(h2.REFUSED_STREAM))]
    conn.feed(h2.frame(h2.DATA, 0, 5, b"x"))  # in flight for the refused stream: ignored
    assert rec.take() == [] and not conn.closed
    conn.send_headers(1, b"\x88", end_stream=True)  # stream 1 completes: room for one more
    sent(conn)
    open_stream(conn, rec, enc, 7)
    assert sent(conn) == []


def test_after_goaway_new_streams_are_ignored_and_open_ones_continue():
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    conn.goaway()
    frames = sent(conn)
    assert [f.type for f in frames] == [h2.GOAWAY]
    assert frames[0].payload == u32(1) + u32(h2.NO_ERROR)
    conn.feed(headers_frame(enc, 3, end_stream=True))
    assert rec.take() == []
    conn.feed(h2.frame(h2.DATA, h2.END_STREAM, 1, b"last"))
    assert rec.take() == [("data", 1, b"last", True)]
    assert not conn.closed


def test_client_goaway_is_noted():
    conn, _, _ = connect()
    conn.feed(h2.frame(h2.GOAWAY, 0, 0, u32(0) + u32(h2.NO_ERROR)))
    assert conn.goaway_received and not conn.closed


def test_unknown_frame_types_and_priority_are_ignored():
    conn, rec, _ = connect()
    conn.feed(h2.frame(0xFA, 0xFF, 0, b"whatever") + h2.frame(0x20, 0, 9, b"")
              + h2.frame(h2.PRIORITY, 0, 1, u32(0) + b"\x10") + h2.frame(h2.PING, 0, 0, b"pingpong"))
    assert sent(conn) == [Frame(h2.PING, h2.ACK, 0, b"pingpong")]
    assert rec.events == [] and not conn.closed


# ------------------------------------------------------------- framing
def _session() -> bytes:
    enc = hpack.Encoder()
    block = enc.encode(REQUEST + [("x-meta", "m" * 40)])
    return b"".join([
        h2.PREFACE, settings(initial_window=100, max_frame=20000),
        h2.frame(h2.HEADERS, 0, 1, block[:7]), h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[7:]),
        h2.frame(h2.DATA, h2.PADDED, 1, b"\x02payload\0\0"),
        h2.frame(h2.PING, 0, 0, b"01234567"),
        headers_frame(enc, 3, end_stream=True),
        window_update(0, 1000),
        h2.frame(h2.DATA, h2.END_STREAM, 1, b"end"),
        h2.frame(h2.RST_STREAM, 0, 3, u32(h2.CANCEL)),
    ])


def _run(chunks) -> tuple[list[tuple], bytes]:
    rec = Recorder()
    conn = h2.H2Connection(rec)
    for c in chunks:
        conn.feed(c)
    assert not conn.closed
    return rec.events, b"".join(conn.out)


def test_bytes_fed_one_at_a_time_give_the_same_events():
    data = _session()
    whole = _run([data])
    assert [e[:2] for e in whole[0]] == [("request", 1), ("data", 1), ("request", 3), ("data", 1), ("reset", 3)]
    assert whole[0][1] == ("data", 1, b"payload", False)
    assert Frame(h2.PING, h2.ACK, 0, b"01234567") in parse(whole[1])
    assert _run([data[i : i + 1] for i in range(len(data))]) == whole
    assert _run([data[i : i + 7] for i in range(0, len(data), 7)]) == whole


# ------------------------------------------------------------ hostile input
def test_a_frame_trickling_in_is_joined_once():
    """A peer sending a 1 MiB frame a few bytes at a time made every read copy
    the partial frame again (seconds of CPU per MiB): it is joined once complete."""
    conn, rec, enc = connect()
    open_stream(conn, rec, enc, 1)
    payload = bytes(range(256)) * (MiB // 256)
    data = h2.frame(h2.DATA, h2.END_STREAM, 1, payload) + h2.frame(h2.PING, 0, 0, b"12345678")
    conn.feed(data[:100])
    partial = conn._buf
    last = 9 + len(payload) - 1  # the DATA frame's last byte
    for i in range(100, last, 8):
        conn.feed(data[i : min(i + 8, last)])
    assert conn._buf is partial  # not rebuilt by the reads in between
    conn.feed(data[last:])
    assert rec.take() == [("data", 1, payload, True)]
    assert sent(conn)[-1] == Frame(h2.PING, h2.ACK, 0, b"12345678")


def _held_while(fn) -> int:
    """Bytes allocated by ``fn()`` and still held when it returns."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_endless_empty_continuation_frames_hold_no_memory():
    conn, rec, enc = connect()
    conn.feed(h2.frame(h2.HEADERS, 0, 1, enc.encode(REQUEST)))
    empty = h2.frame(h2.CONTINUATION, 0, 1) * 10_000

    def flood():
        for _ in range(20):
            conn.feed(empty)

    assert _held_while(flood) < 100_000  # a list of 200,000 fragments held 1.6 MB
    conn.feed(h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1))
    assert rec.take() == [("request", 1, REQUEST, False)]
    assert not conn.closed


def test_distinct_large_header_blocks_are_not_kept():
    """The decoded-block cache is for the small blocks clients repeat: 512
    blocks of 1 MiB (values never indexed leave the table alone) held a GiB."""
    conn, rec, _ = connect()
    enc = hpack.Encoder()
    big = "v" * (64 << 10)

    def requests():
        for sid in range(1, 80, 2):
            extra = [hpack.NeverIndexedHeaderTuple("x-big", f"{sid}{big}")]
            block = enc.encode(REQUEST + extra, huffman=False)
            conn.feed(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid, block))
            assert rec.take()[0][2][-1] == ("x-big", f"{sid}{big}")

    assert _held_while(requests) < MiB  # 40 blocks and their decoded headers: 5 MiB
