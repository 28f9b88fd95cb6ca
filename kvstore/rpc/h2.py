"""The server side of an HTTP/2 connection (RFC 9113), as gRPC uses it.

Sans-I/O: ``feed(bytes)`` parses frames and reports requests, data and
resets to a :class:`Handler`; everything to send is appended to ``out`` (the
caller writes it, many frames in one syscall). No clock, no socket.

Why our own and not grpcio's server: on this machine a trivial grpc.aio
unary call costs 160-250 us of CPU, most of it the C core's poller kicks and
per-call bookkeeping under the GIL; parsing a few frames in Python costs a
few microseconds (bench/README.md §4). Only what gRPC needs is here: no
server push, no priorities (parsed, ignored), no HTTP/1.1 upgrade.

Flow control follows grpc-go: the connection window is credited back as
data arrives, a stream's window as the application consumes its messages,
so a client cannot make us buffer more than one window per stream. Outbound
DATA respects the peer's windows and frame size; what does not fit waits in
the stream's queue (with its trailers behind it) until WINDOW_UPDATE.
"""
from __future__ import annotations

import logging
import struct
from collections import deque
from typing import Protocol

import hpack

# hpack logs every decoded header at DEBUG: tokens and passwords must never reach a log.
logging.getLogger("hpack").setLevel(logging.WARNING)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# Flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
# Settings
S_HEADER_TABLE_SIZE = 0x1
S_ENABLE_PUSH = 0x2
S_MAX_CONCURRENT_STREAMS = 0x3
S_INITIAL_WINDOW_SIZE = 0x4
S_MAX_FRAME_SIZE = 0x5
S_MAX_HEADER_LIST_SIZE = 0x6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384

# What we offer. Windows are large so a 1.5 MiB Put needs no round trip.
MAX_FRAME_SIZE = 1 << 20
STREAM_WINDOW = 4 << 20
RESET_MEMORY = 1024  # streams we reset whose late frames are still ignored (RFC 9113 §5.1 "closed")
CONN_WINDOW = 16 << 20
MAX_HEADER_BLOCK = 1 << 20  # a header block (HEADERS + CONTINUATION) larger than this ends the connection
MAX_CONCURRENT_STREAMS = 10_000

_HEAD = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id: one frame header
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


class ConnectionError_(Exception):
    """A connection error: the connection ends with GOAWAY(code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack((len(payload) << 8) | ftype, flags, sid) + payload


def frame_header(ftype: int, flags: int, sid: int, length: int) -> bytes:
    return _HEAD.pack((length << 8) | ftype, flags, sid)


class Handler(Protocol):
    """What the connection reports; called from inside ``feed``."""

    def on_request(self, sid: int, headers: list[tuple[str, str]], end_stream: bool) -> None: ...

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None: ...

    def on_reset(self, sid: int, code: int) -> None: ...

    def on_writable(self, sid: int) -> None: ...


class _Stream:
    """Per-stream flow-control state and the outbound queue."""

    __slots__ = ("sid", "send_window", "recv_window", "unacked", "queue", "queued", "remote_closed", "local_closed")

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW  # credit the peer still has on this stream
        self.unacked = 0  # bytes the application took that the peer was not yet told of
        self.queue: deque[tuple[bytes, bool]] | None = None  # (DATA payload | trailer block marker, is_trailers)
        self.queued = 0  # DATA bytes waiting in the queue
        self.remote_closed = False
        self.local_closed = False


class HeaderDecoder:
    """HPACK decoding with a cache of whole header blocks.

    A client repeats the same block (all references to table entries) for
    every call of a method; decoding it again in pure Python costs ~20 us.
    A block's meaning depends on the dynamic table, so cached results are
    dropped whenever a block changes the table."""

    CACHE_LIMIT = 512
    CACHE_BLOCK_LIMIT = 1024  # larger blocks are not kept: 512 of 1 MiB each would hold a GiB

    def __init__(self) -> None:
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self.decoder.max_allowed_table_size = 65536
        self.cache: dict[bytes, list[tuple[str, str]]] = {}

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        hit = self.cache.get(block)
        if hit is not None:
            return hit
        table = self.decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            headers = [(str(k), str(v)) for k, v in self.decoder.decode(block)]
        except hpack.HPACKError as e:
            raise ConnectionError_(COMPRESSION_ERROR, f"bad header block: {e}") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise ConnectionError_(COMPRESSION_ERROR, f"bad header block: {e}") from None
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if after[0] != before[0] or after[1] is not before[1] or after[2] != before[2]:
            self.cache.clear()
        elif len(block) <= self.CACHE_BLOCK_LIMIT:
            if len(self.cache) >= self.CACHE_LIMIT:
                self.cache.clear()
            self.cache[block] = headers
        return headers


class H2Connection:
    """One server connection's HTTP/2 state. ``out`` collects bytes to send."""

    def __init__(self, handler: Handler, max_concurrent_streams: int = MAX_CONCURRENT_STREAMS) -> None:
        self.handler = handler
        self.out: list[bytes] = []
        self.streams: dict[int, _Stream] = {}
        self.max_concurrent = max_concurrent_streams
        self.last_sid = 0  # highest stream id the peer opened
        self.goaway_sent = False
        self.goaway_received = False
        self.closed = False  # a connection error was found: nothing more is parsed
        self._buf = b""  # unparsed bytes: the start of an incomplete frame
        self._more: list[bytes] = []  # bytes received after _buf, joined once the frame is complete
        self._have = 0  # len(_buf) + the lengths in _more
        self._need = 0  # bytes the incomplete frame needs before parsing is worth trying
        self._preface = False
        self._decoder = HeaderDecoder()
        # Outbound
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW
        self._blocked: dict[int, _Stream] = {}  # streams whose queue waits for window
        self._reset_sids: dict[int, None] = {}  # the latest streams we sent RST_STREAM on
        # Inbound
        self._recv_unacked = 0  # connection-level bytes received and not yet credited back
        self._continuation: tuple[int, int, bytearray] | None = None  # (sid, flags, the block so far)
        self.out.append(
            frame(
                SETTINGS,
                0,
                0,
                b"".join(
                    _SETTING.pack(k, v)
                    for k, v in (
                        (S_ENABLE_PUSH, 0),
                        (S_MAX_CONCURRENT_STREAMS, max_concurrent_streams),
                        (S_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                        (S_MAX_FRAME_SIZE, MAX_FRAME_SIZE),
                        (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK),
                    )
                ),
            )
        )
        self.out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONN_WINDOW - DEFAULT_WINDOW)))

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes) -> None:
        """Parse what arrived; a protocol violation queues GOAWAY and sets ``closed``."""
        if self.closed:
            return
        if self._buf:
            # A frame arriving in many small reads is joined once, not once a read
            # (a peer trickling a 1 MiB frame would otherwise cost quadratic copying).
            self._have += len(data)
            if self._have < self._need:
                self._more.append(data)
                return
            buf = b"".join((self._buf, *self._more, data))
            self._more.clear()
        else:
            buf = data
        try:
            pos = 0
            if not self._preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self._buf = buf
                    self._have, self._need = len(buf), 0  # every byte of the preface is checked as it comes
                    return
                if buf[: len(PREFACE)] != PREFACE:
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._preface = True
                pos = len(PREFACE)
            end = len(buf)
            unpack = _HEAD.unpack_from
            while end - pos >= 9:
                lt, flags, sid = unpack(buf, pos)
                length = lt >> 8
                if length > MAX_FRAME_SIZE:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {MAX_FRAME_SIZE}")
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                self._frame(lt & 0xFF, flags, sid & 0x7FFFFFFF, buf[start:pos])
                if self.closed:
                    return
            self._buf = buf[pos:] if pos < end else b""
            self._have = end - pos
            self._need = 9 + (unpack(buf, pos)[0] >> 8) if end - pos >= 9 else 9
        except ConnectionError_ as e:
            self.fail(e.code, str(e))

    def fail(self, code: int, message: str = "") -> None:
        """End the connection with GOAWAY (the caller closes it after flushing)."""
        if self.closed:
            return
        self.closed = True
        self._buf = b""
        self._more.clear()
        self.out.append(frame(GOAWAY, 0, 0, _U32.pack(self.last_sid) + _U32.pack(code) + message.encode()[:256]))
        self.goaway_sent = True

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._continuation is not None and ftype != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
        if ftype == DATA:
            self._data(flags, sid, payload)
        elif ftype == HEADERS:
            self._headers(flags, sid, payload)
        elif ftype == CONTINUATION:
            self._continuation_frame(flags, sid, payload)
        elif ftype == SETTINGS:
            self._settings(flags, sid, payload)
        elif ftype == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif ftype == PING:
            if sid != 0:
                raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            if sid == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise ConnectionError_(FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
            if sid > self.last_sid:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            st = self.streams.pop(sid, None)
            if st is not None:
                self._blocked.pop(sid, None)
                self.handler.on_reset(sid, _U32.unpack(payload)[0])
        elif ftype == PRIORITY:
            if sid == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PRIORITY payload must be 5 bytes")
        elif ftype == GOAWAY:
            if sid != 0:
                raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
            self.goaway_received = True
        elif ftype == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "clients cannot push")
        # Unknown frame types are ignored (RFC 9113 §4.1).

    def _strip_padding(self, flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload:
                raise ConnectionError_(PROTOCOL_ERROR, "padded frame without pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise ConnectionError_(PROTOCOL_ERROR, "padding exceeds the frame")
            return payload[1 : len(payload) - pad]
        return payload

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        self._received(n)
        st = self.streams.get(sid)
        if st is None or st.remote_closed:
            if sid > self.last_sid:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we closed or reset: frames in flight are ignored
        if n > st.recv_window:
            self.reset(sid, FLOW_CONTROL_ERROR)
            self.handler.on_reset(sid, FLOW_CONTROL_ERROR)
            return
        st.recv_window -= n
        data = self._strip_padding(flags, payload)
        if n != len(data):  # padding is flow-controlled but never reaches the application
            self.consumed(sid, n - len(data))
        end = bool(flags & END_STREAM)
        if end:
            st.remote_closed = True
            if st.local_closed:
                self._forget(st)
        self.handler.on_data(sid, data, end)

    def _received(self, n: int) -> None:
        self._recv_unacked += n
        if self._recv_unacked > CONN_WINDOW:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "peer sent more than the connection window")
        if self._recv_unacked >= CONN_WINDOW // 4:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_unacked)))
            self._recv_unacked = 0

    def consumed(self, sid: int, n: int) -> None:
        """The application took ``n`` bytes of ``sid``: the peer may send more
        (credited back in quarter-window steps)."""
        st = self.streams.get(sid)
        if st is None or st.remote_closed or n <= 0:
            return
        st.unacked += n
        if st.unacked >= STREAM_WINDOW // 4:
            self.out.append(frame(WINDOW_UPDATE, 0, sid, _U32.pack(st.unacked)))
            st.recv_window += st.unacked
            st.unacked = 0

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._strip_padding(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS priority fields truncated")
            if _U32.unpack_from(block)[0] & 0x7FFFFFFF == sid:
                raise ConnectionError_(PROTOCOL_ERROR, "stream depends on itself")
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(sid, flags, block)
        else:
            self._continuation = (sid, flags, bytearray(block))

    def _continuation_frame(self, flags: int, sid: int, payload: bytes) -> None:
        cont = self._continuation
        if cont is None or cont[0] != sid:
            raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = cont[2]
        if len(block) + len(payload) > MAX_HEADER_BLOCK:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header block too large")
        block += payload  # one buffer: endless empty CONTINUATION frames hold no memory
        if flags & END_HEADERS:
            self._continuation = None
            self._header_block(sid, cont[1], bytes(block))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        headers = self._decoder.decode(block)  # always: keeps the HPACK state in step
        end = bool(flags & END_STREAM)
        st = self.streams.get(sid)
        if st is not None:  # trailers from the client: must end the stream
            if st.remote_closed:  # the client already ended it
                self.reset(sid, STREAM_CLOSED)
                self.handler.on_reset(sid, STREAM_CLOSED)
                return
            if not end:
                raise ConnectionError_(PROTOCOL_ERROR, "trailers without END_STREAM")
            st.remote_closed = True
            if st.local_closed:
                self._forget(st)
            self.handler.on_data(sid, b"", True)
            return
        if sid in self._reset_sids:
            return  # sent before our RST_STREAM reached the client: ignored, as the RFC asks
        if sid % 2 == 0 or sid <= self.last_sid:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on a closed or invalid stream id")
        self.last_sid = sid
        if self.goaway_sent:
            return  # above the last stream we promised to serve: ignored
        if len(self.streams) >= self.max_concurrent:
            self._send_reset(sid, REFUSED_STREAM)
            return
        st = _Stream(sid, self.peer_initial_window)
        st.remote_closed = end
        self.streams[sid] = st
        self.handler.on_request(sid, headers, end)

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        grown = False
        for off in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, off)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise ConnectionError_(FLOW_CONTROL_ERROR, "stream window overflow")
                grown = grown or delta > 0
            elif key == S_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == S_ENABLE_PUSH:
                if value > 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
            # HEADER_TABLE_SIZE: we never add to our encoder's table, so any size
            # is honoured; the rest only bound what we could send anyway.
        # The ACK first: the peer applies its new settings when it reads the ACK,
        # so data they allow must come after it (RFC 9113 §6.5.3).
        self.out.append(frame(SETTINGS, ACK, 0))
        if grown:
            self._drain_blocked()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
            self._drain_blocked()
            return
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_sid:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if inc == 0:
            self.reset(sid, PROTOCOL_ERROR)
            self.handler.on_reset(sid, PROTOCOL_ERROR)
            return
        st.send_window += inc
        if st.send_window > MAX_WINDOW:
            self.reset(sid, FLOW_CONTROL_ERROR)
            self.handler.on_reset(sid, FLOW_CONTROL_ERROR)
            return
        if st.queue:
            self._drain(st)

    def _forget(self, st: _Stream) -> None:
        self.streams.pop(st.sid, None)
        self._blocked.pop(st.sid, None)

    # ----------------------------------------------------------------- output
    def send_headers(self, sid: int, block: bytes, end_stream: bool = False) -> None:
        """Response headers, or trailers when ``end_stream`` (queued behind data)."""
        st = self.streams.get(sid)
        if st is None or st.local_closed:
            return
        if end_stream and st.queue:
            st.queue.append((block, True))
            return
        self._put_headers(st, block, end_stream)

    def _put_headers(self, st: _Stream, block: bytes, end_stream: bool) -> None:
        limit = self.peer_max_frame
        flags = END_STREAM if end_stream else 0
        if len(block) <= limit:
            self.out.append(frame(HEADERS, flags | END_HEADERS, st.sid, block))
        else:
            self.out.append(frame(HEADERS, flags, st.sid, block[:limit]))
            for off in range(limit, len(block), limit):
                last = off + limit >= len(block)
                self.out.append(frame(CONTINUATION, END_HEADERS if last else 0, st.sid, block[off : off + limit]))
        if end_stream:
            self._end_local(st)

    def _end_local(self, st: _Stream) -> None:
        st.local_closed = True
        if st.remote_closed:
            self._forget(st)
        else:
            # grpc-go: the status is final, whatever the client still sends is not read.
            self._send_reset(st.sid, NO_ERROR)
            st.remote_closed = True
            self._forget(st)

    def send_data(self, sid: int, data: bytes) -> bool:
        """Queue ``data`` on ``sid``; True if all of it went out at once."""
        st = self.streams.get(sid)
        if st is None or st.local_closed:
            return True
        if st.queue:
            st.queue.append((data, False))
            st.queued += len(data)
            return False
        n = len(data)
        if n <= st.send_window and n <= self.send_window and n <= self.peer_max_frame:
            st.send_window -= n
            self.send_window -= n
            self.out.append(_HEAD.pack((n << 8) | DATA, 0, sid) + data)
            return True
        st.queue = deque(((data, False),))
        st.queued = n
        self._drain(st)
        return not st.queue

    def queued(self, sid: int) -> int:
        st = self.streams.get(sid)
        return st.queued if st is not None else 0

    def _drain(self, st: _Stream) -> None:
        q = st.queue
        assert q is not None
        limit = self.peer_max_frame
        while q:
            data, is_trailers = q[0]
            if is_trailers:
                q.popleft()
                self._put_headers(st, data, True)
                break
            room = min(st.send_window, self.send_window, limit)
            if room <= 0:
                break
            if len(data) <= room:
                q.popleft()
                chunk = data
            else:
                chunk = data[:room]
                q[0] = (data[room:], False)
            n = len(chunk)
            st.send_window -= n
            self.send_window -= n
            st.queued -= n
            self.out.append(_HEAD.pack((n << 8) | DATA, 0, st.sid) + chunk)
        if q:
            self._blocked[st.sid] = st
        else:
            self._blocked.pop(st.sid, None)
            st.queue = None
            if not st.local_closed:
                self.handler.on_writable(st.sid)

    def _drain_blocked(self) -> None:
        for st in list(self._blocked.values()):
            if self.send_window <= 0:
                return
            if st.queue:
                self._drain(st)

    def reset(self, sid: int, code: int) -> None:
        """Abandon a stream (RST_STREAM); its queued output is dropped."""
        st = self.streams.pop(sid, None)
        if st is None:
            return
        self._blocked.pop(sid, None)
        self._send_reset(sid, code)

    def _send_reset(self, sid: int, code: int) -> None:
        self.out.append(frame(RST_STREAM, 0, sid, _U32.pack(code)))
        recent = self._reset_sids
        recent[sid] = None
        if len(recent) > RESET_MEMORY:
            del recent[next(iter(recent))]

    def goaway(self) -> None:
        """Graceful shutdown: no stream above the last seen one will be served."""
        if not self.goaway_sent:
            self.goaway_sent = True
            self.out.append(frame(GOAWAY, 0, 0, _U32.pack(self.last_sid) + _U32.pack(NO_ERROR)))
