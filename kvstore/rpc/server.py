"""gRPC over our HTTP/2 connection (kvstore.rpc.h2): the client API server.

It serves the servicers grpc.aio would serve, unchanged: the generated
``add_*Servicer_to_server`` handlers (collected by kvstore.api.MethodTable)
are called with a context object offering the part of
``grpc.aio.ServicerContext`` they use (abort, write, invocation_metadata,
auth_context, peer, time_remaining...). gRPC's wire rules followed here:
length-prefixed messages (gzip accepted), ``grpc-timeout`` deadlines,
``-bin`` metadata in base64, status in trailers (trailers-only when nothing
was sent), grpc-go's status messages for protocol-level failures.

Each call runs in its own task; a client's RST_STREAM or a lost connection
cancels it. Frames produced while one read is processed go out in one
write; those produced by tasks are flushed once per loop iteration.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import struct
import zlib
from collections import deque
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote, urlsplit

import grpc

from raft.transport import tune_socket

from . import h2

log = logging.getLogger("kvstore.rpc")

_PREFIX = struct.Struct(">BI")

# Request bytes a connection may hold that its calls have not read yet (partial
# messages included): above 64 clients x 1.5 MiB Puts arriving at once on one connection.
UNREAD_LIMIT = 256 << 20
MESSAGE_COST = 100  # what holding one message costs beyond its payload (tuple, bytes and int headers)
WRITE_HIGH = 1 << 20  # a streaming writer waits while this much of its output is queued
TRANSPORT_LIMIT = 64 << 20  # a peer leaving this much unread is dropped
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 10, 3
USER_TIMEOUT_MS = 60_000

_RESERVED = frozenset(
    ("content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "grpc-message-type")
)
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


# ------------------------------------------------------------------- HPACK out
def _hpack_int(n: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes((first | n,))
    out = bytearray((first | limit,))
    n -= limit
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header literal, never entered in the table (our encoder keeps no state)."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


def _literal_indexed_name(index: int, value: bytes) -> bytes:
    return _hpack_int(index, 4, 0) + _hpack_int(len(value), 7, 0) + value


_STATUS_200 = b"\x88"  # static table entry 8
_CONTENT_TYPE = _literal_indexed_name(31, b"application/grpc")
RESPONSE_HEADERS = _STATUS_200 + _CONTENT_TYPE
TRAILERS_OK = _literal(b"grpc-status", b"0")


def _status_block(code: int, message: str, trailers_only: bool) -> bytes:
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        # gRPC: percent-encode everything outside printable ASCII, and '%'.
        block += _literal(b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    return RESPONSE_HEADERS + block if trailers_only else block


def http_error_block(status: int) -> bytes:
    return _literal_indexed_name(8, str(status).encode()) + _literal_indexed_name(31, b"text/plain")


def _code_number(code: grpc.StatusCode) -> int:
    return code.value[0]


def parse_timeout(value: str) -> float | None:
    """grpc-timeout: up to 8 digits and a unit (H M S m u n)."""
    digits = value[:-1]
    if len(value) < 2 or len(value) > 9 or not (digits.isascii() and digits.isdigit()):  # not "²": int() refuses it
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(digits) * unit


def _metadata(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, Any], ...]:
    out: list[tuple[str, Any]] = []
    for k, v in headers:
        if k.startswith(":") or k in _RESERVED:  # not k[0]: a header name may be empty
            continue
        if k.endswith("-bin"):
            try:
                out.append((k, base64.b64decode(v + "=" * (-len(v) % 4))))
            except (ValueError, TypeError):
                continue
        else:
            out.append((k, v))
    return tuple(out)


class _Aborted(grpc.aio.AbortError):
    """Raised by ``abort``: the status is already recorded on the call."""


class _Requests:
    """The request iterator of a client-streaming call."""

    __slots__ = ("call",)

    def __init__(self, call: "Call") -> None:
        self.call = call

    def __aiter__(self) -> "_Requests":
        return self

    async def __anext__(self) -> Any:
        msg = await self.call.read()
        if msg is grpc.aio.EOF:
            raise StopAsyncIteration
        return msg


# ----------------------------------------------------------------------- call
class Call:
    """One RPC on one stream; also its ``ServicerContext``."""

    __slots__ = (
        "conn", "sid", "path", "method", "metadata", "deadline", "task", "timer", "buf", "need", "messages", "waiter",
        "eof", "headers_sent", "finished", "cancelled_", "code_", "details_", "encoding", "callbacks", "prepaid",
    )

    def __init__(self, conn: "Connection", sid: int, path: str, method: grpc.RpcMethodHandler,
                 metadata: tuple[tuple[str, Any], ...], encoding: str | None) -> None:
        self.conn = conn
        self.sid = sid
        self.path = path
        self.method = method
        self.metadata = metadata
        self.encoding = encoding
        self.deadline: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buf = bytearray()  # the start of an incomplete message
        self.need = 5  # bytes the incomplete message needs before parsing is worth trying
        self.prepaid = 0  # bytes of the incomplete message already credited back (see _prepay)
        self.messages: deque[tuple[bytes, int]] = deque()  # (payload, wire size) received, not yet read
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.headers_sent = False
        self.finished = False
        self.cancelled_ = False
        self.code_: grpc.StatusCode | None = None
        self.details_ = ""
        self.callbacks: list[Callable[[Any], None]] | None = None

    # -------------------------------------------------------------- inbound
    def feed(self, data: bytes, end: bool) -> None:
        if self.finished:
            return
        if data:
            if not self._parse(data):
                return
            if not self.method.request_streaming and not end:
                self.conn.consumed(self.sid, len(data))  # bounded by the message size check
        if end:
            self.eof = True
            if self.buf:
                self.fail(grpc.StatusCode.INTERNAL, "grpc: the client ended the stream inside a message")
                return
        if self.task is None:
            if not self.method.request_streaming:
                if end:
                    self._start_unary_request()
                return
            self.start(_Requests(self))
        if self.waiter is not None and not self.waiter.done() and (self.messages or self.eof):
            self.waiter.set_result(None)

    def _parse(self, data: bytes) -> bool:
        """Split request bytes into messages; False if that ended the call or the connection.

        ``conn.unread`` counts what is held: the incomplete message, and each
        message as decompressed plus its bookkeeping (a gzip bomb or a flood of
        empty messages holds far more than its bytes on the wire)."""
        conn = self.conn
        held = self.buf
        if held:
            held += data  # a message over many frames is copied once, not once a frame
            conn.unread += len(data)
            if len(held) < self.need:
                self._prepay()
                return self._within_limit()
            conn.unread -= len(held)  # counted again below, as messages and the rest
            self.buf = bytearray()
            buf: bytes | bytearray = held
        else:
            buf = data
        pos, n = 0, len(buf)
        limit = conn.server.max_receive
        while n - pos >= 5:
            flag, length = _PREFIX.unpack_from(buf, pos)
            if length > limit:
                self.fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"grpc: received message larger than max ({length} vs. {limit})")
                return False
            if n - pos - 5 < length:
                break
            payload: bytes | None = bytes(buf[pos + 5 : pos + 5 + length])
            pos += 5 + length
            if flag:
                payload = self._decompress(payload)
                if payload is None:
                    return False
            if self.messages and not self.method.request_streaming:
                self.fail(grpc.StatusCode.INTERNAL,
                          "grpc: the client sent more than one request message on a unary call")
                return False
            self.messages.append((payload, length + 5 - self.prepaid))
            self.prepaid = 0
            conn.unread += len(payload) + MESSAGE_COST
            if not self._within_limit():
                return False
        if pos < n:
            if buf is held:
                del held[:pos]
                self.buf = held
            else:
                self.buf = bytearray(memoryview(buf)[pos:])
            self.need = 5 + _PREFIX.unpack_from(self.buf)[1] if len(self.buf) >= 5 else 5
            conn.unread += len(self.buf)
            self._prepay()
        return self._within_limit()

    def _prepay(self) -> None:
        """On a streaming call, credit a message in progress as it arrives:
        stream credit otherwise comes back as messages are read, and a
        message larger than the credit left would never complete. What is
        held stays bounded: one message (at most the size limit) plus a window."""
        if self.method.request_streaming:
            n = len(self.buf) - self.prepaid
            if n > 0:
                self.prepaid += n
                self.conn.consumed(self.sid, n)

    def _within_limit(self) -> bool:
        if self.conn.unread <= UNREAD_LIMIT:
            return True
        self.conn.abandon(f"client sent more than {UNREAD_LIMIT} bytes of requests not yet read")
        return False

    def _decompress(self, payload: bytes) -> bytes | None:
        enc = self.encoding
        if enc in (None, "identity"):
            self.fail(grpc.StatusCode.INTERNAL, "grpc: compressed flag set with identity or empty encoding")
            return None
        if enc not in ("gzip", "deflate"):
            self.fail(grpc.StatusCode.UNIMPLEMENTED, f'grpc: Decompressor is not installed for grpc-encoding "{enc}"')
            return None
        limit = self.conn.server.max_receive
        try:
            d = zlib.decompressobj(31 if enc == "gzip" else 15)
            out = d.decompress(payload, limit + 1)
        except zlib.error as e:
            self.fail(grpc.StatusCode.INTERNAL, f"grpc: failed to decompress the received message: {e}")
            return None
        if len(out) > limit:
            self.fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"grpc: received message after decompression larger than max ({limit})")
            return None
        return out

    def _start_unary_request(self) -> None:
        if not self.messages:  # more than one is refused as it arrives
            self.fail(grpc.StatusCode.INTERNAL, "grpc: the client sent no request message")
            return
        payload, _ = self.messages.popleft()
        self.conn.unread -= len(payload) + MESSAGE_COST
        try:
            request = self.method.request_deserializer(payload)
        except Exception as e:
            self.fail(grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {e}")
            return
        self.start(request)

    async def read(self) -> Any:
        """The next request message, or ``grpc.aio.EOF``."""
        while not self.messages:
            if self.eof or self.finished:
                return grpc.aio.EOF
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        payload, size = self.messages.popleft()  # a deque: a backlog of tiny messages is read in linear time
        self.conn.unread -= len(payload) + MESSAGE_COST
        self.conn.consumed(self.sid, size)
        try:
            return self.method.request_deserializer(payload)
        except Exception as e:
            await self.abort(grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {e}")

    # ------------------------------------------------------------- running
    def start(self, arg: Any) -> None:
        self.task = self.conn.loop.create_task(self._run(arg))

    async def _run(self, arg: Any) -> None:
        m = self.method
        try:
            if not m.response_streaming:
                fn = m.unary_unary if not m.request_streaming else m.stream_unary
                resp = await fn(arg, self)
                if self.finished:
                    return
                if resp is None:
                    self.finish(grpc.StatusCode.INTERNAL, "kvstore: the handler returned no response")
                    return
                self._send_message(m.response_serializer(resp))
            else:
                fn = m.unary_stream if not m.request_streaming else m.stream_stream
                res = fn(arg, self)
                if hasattr(res, "__anext__"):
                    async for msg in res:
                        await self.write(msg)
                else:
                    await res
            self.finish(self.code_ or grpc.StatusCode.OK, self.details_)
        except _Aborted:
            self.finish(self.code_ or grpc.StatusCode.UNKNOWN, self.details_)
        except asyncio.CancelledError:
            if not self.cancelled_ and not self.finished:
                self.finish(grpc.StatusCode.CANCELLED, "kvstore: the call was cancelled")
                raise
        except Exception:
            log.exception("unexpected error in %s", self.path)
            self.finish(grpc.StatusCode.UNKNOWN, "kvstore: unexpected error in the handler")

    def _send_message(self, payload: bytes) -> None:
        h = self.conn.h2
        if not self.headers_sent:
            self.headers_sent = True
            h.send_headers(self.sid, RESPONSE_HEADERS)
        h.send_data(self.sid, _PREFIX.pack(0, len(payload)) + payload)
        self.conn.want_flush()

    def finish(self, code: grpc.StatusCode, message: str = "") -> None:
        """Send the status (once); the stream is done."""
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        if not self.cancelled_:
            if code is grpc.StatusCode.OK and self.headers_sent:
                block = TRAILERS_OK
            else:
                block = _status_block(_code_number(code), message, not self.headers_sent)
            self.conn.h2.send_headers(self.sid, block, end_stream=True)
            self.conn.want_flush()
        self.conn.calls.pop(self.sid, None)
        if self.messages or self.buf:
            self.conn.unread -= sum(len(p) + MESSAGE_COST for p, _ in self.messages) + len(self.buf)
            self.messages.clear()
            self.buf = bytearray()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if self.callbacks:
            for cb in self.callbacks:
                try:
                    cb(self)
                except Exception:
                    log.exception("done callback failed")

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """A wire-level failure: status now, the handler (if running) cancelled."""
        self.finish(code, message)
        if self.task is not None and not self.task.done():
            self.cancelled_ = True
            self.task.cancel()

    def cancel(self) -> None:
        """The client reset the stream or the connection is gone."""
        if self.finished:
            return
        self.cancelled_ = True
        self.finish(grpc.StatusCode.CANCELLED)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def expire(self) -> None:
        self.timer = None
        if self.finished:
            return
        self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.cancelled_ = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # ---------------------------------------------------- ServicerContext
    async def write(self, message: Any) -> None:
        if self.finished:
            raise asyncio.CancelledError()
        self._send_message(self.method.response_serializer(message))
        conn = self.conn
        while not self.finished and (conn.h2.queued(self.sid) > WRITE_HIGH or conn.paused):
            await conn.writable()
        if self.finished and self.cancelled_:
            raise asyncio.CancelledError()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        if code is grpc.StatusCode.OK:
            raise ValueError("abort with OK")
        self.code_ = code
        self.details_ = details
        raise _Aborted()

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self.metadata

    def peer(self) -> str:
        return self.conn.peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.conn.auth

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.conn.loop.time())

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code_ = code

    def set_details(self, details: str) -> None:
        self.details_ = details

    def code(self) -> grpc.StatusCode | None:
        return self.code_

    def details(self) -> str:
        return self.details_

    async def send_initial_metadata(self, metadata: Any) -> None:
        if not self.headers_sent and not self.finished:
            self.headers_sent = True
            self.conn.h2.send_headers(self.sid, RESPONSE_HEADERS)
            self.conn.want_flush()

    def set_trailing_metadata(self, metadata: Any) -> None:
        """Not sent: no kvstore method has trailing metadata."""

    def cancelled(self) -> bool:
        return self.cancelled_

    def done(self) -> bool:
        return self.finished

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.finished:
            callback(self)
            return
        if self.callbacks is None:
            self.callbacks = []
        self.callbacks.append(callback)


# ----------------------------------------------------------------- connection
class Connection(asyncio.Protocol):
    """One client connection: bytes in → h2 → calls; frames out in batches."""

    def __init__(self, server: "RpcServer") -> None:
        self.server = server
        self.loop = server.loop
        self.h2 = h2.H2Connection(self, server.max_concurrent_streams)
        self.calls: dict[int, Call] = {}
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.auth: dict[str, list[bytes]] = {}
        self.paused = False
        self.unread = 0  # request bytes received by this connection's calls, not yet read
        self._feeding = False
        self._flush_pending = False
        self._writers: list[asyncio.Future[None]] = []

    # ------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self.server.connections.add(self)
        self.peer = _peer_name(transport)
        self.auth = _auth_context(transport)
        tune_socket(transport, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, USER_TIMEOUT_MS)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.server.received_bytes += len(data)
        self._feeding = True
        try:
            self.h2.feed(data)
        finally:
            self._feeding = False
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.h2.closed = True
        for call in list(self.calls.values()):
            call.cancel()
        self.calls.clear()
        self._wake_writers()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writers()

    def want_flush(self) -> None:
        if not self._feeding and not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        out = self.h2.out
        t = self.transport
        if t is None or t.is_closing():
            out.clear()
            return
        if out:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            t.write(data)
            self.server.sent_bytes += len(data)
            if t.get_write_buffer_size() > TRANSPORT_LIMIT:
                log.warning("client %s reads nothing of %d buffered bytes: dropped", self.peer, TRANSPORT_LIMIT)
                t.abort()
                return
        if self.h2.closed or (self.h2.goaway_sent and not self.calls and not self.h2.streams):
            t.close()

    def consumed(self, sid: int, n: int) -> None:
        self.h2.consumed(sid, n)
        self.want_flush()

    async def writable(self) -> None:
        """Until a stream's queue drains or the transport resumes writing."""
        fut = self.loop.create_future()
        self._writers.append(fut)
        await fut

    def _wake_writers(self) -> None:
        writers, self._writers = self._writers, []
        for f in writers:
            if not f.done():
                f.set_result(None)

    def goaway(self) -> None:
        self.h2.goaway()
        self.want_flush()

    def abandon(self, reason: str) -> None:
        """A client abusing the connection: GOAWAY, every call ended, closed."""
        log.warning("client %s: %s: connection closed", self.peer, reason)
        self.h2.fail(h2.ENHANCE_YOUR_CALM, reason)
        for call in list(self.calls.values()):
            call.cancel()
        self.want_flush()

    # -------------------------------------------------------- h2.Handler
    def on_request(self, sid: int, headers: list[tuple[str, str]], end_stream: bool) -> None:
        method = path = content_type = encoding = timeout = None
        for k, v in headers:
            if k == ":path":
                path = v
            elif k == ":method":
                method = v
            elif k == "content-type":
                content_type = v
            elif k == "grpc-timeout":
                timeout = v
            elif k == "grpc-encoding":
                encoding = v
        if method != "POST":
            self._http_error(sid, 405)
            return
        if content_type is None or not content_type.startswith("application/grpc"):
            self._http_error(sid, 415)
            return
        handler = self.server.handlers.get(path or "")
        if handler is None:
            self._status_only(sid, grpc.StatusCode.UNIMPLEMENTED, self.server.unknown(path or ""))
            return
        call = Call(self, sid, path or "", handler, _metadata(headers), encoding)
        self.calls[sid] = call
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                self.calls.pop(sid, None)
                self._status_only(sid, grpc.StatusCode.INTERNAL, f"transport: malformed grpc-timeout: {timeout}")
                return
            call.deadline = self.loop.time() + seconds
            call.timer = self.loop.call_later(seconds, call.expire)
        if end_stream or handler.request_streaming:
            call.feed(b"", end_stream)

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        call = self.calls.get(sid)
        if call is not None:
            call.feed(data, end_stream)

    def on_reset(self, sid: int, code: int) -> None:
        call = self.calls.pop(sid, None)
        if call is not None:
            call.cancel()

    def on_writable(self, sid: int) -> None:
        if self._writers:
            self._wake_writers()

    def _http_error(self, sid: int, status: int) -> None:
        self.h2.send_headers(sid, http_error_block(status), end_stream=True)

    def _status_only(self, sid: int, code: grpc.StatusCode, message: str) -> None:
        self.h2.send_headers(sid, _status_block(_code_number(code), message, True), end_stream=True)
        self.want_flush()


def _peer_name(transport: asyncio.BaseTransport) -> str:
    addr = transport.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname() or ''}"
    return "unknown"


def _auth_context(transport: asyncio.BaseTransport) -> dict[str, list[bytes]]:
    """grpc's auth context keys for a verified client certificate."""
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return {}
    out: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    cert = sslobj.getpeercert()
    if cert:
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    out["x509_common_name"] = [value.encode()]
    return out


# --------------------------------------------------------------------- server
class RpcServer:
    """Listens on client URLs and serves the registered gRPC methods."""

    def __init__(self, *, max_receive_message_length: int = 4 << 20,
                 max_concurrent_streams: int = h2.MAX_CONCURRENT_STREAMS) -> None:
        self.loop = asyncio.get_running_loop()
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.max_receive = max_receive_message_length
        self.max_concurrent_streams = max_concurrent_streams
        self.connections: set[Connection] = set()
        self.sent_bytes = 0  # on every connection, as written to the transport
        self.received_bytes = 0
        self._services: set[str] = set()
        self._listeners: list[asyncio.AbstractServer] = []

    def add_generic_rpc_handlers(self, generic: Iterable[Any]) -> None:
        """Accepts kvstore.api.MethodTable (a path → handler table)."""
        for g in generic:
            table: Mapping[str, grpc.RpcMethodHandler] | None = getattr(g, "handlers", None)
            if table is None:
                raise TypeError(f"unsupported handler {g!r}: expected a MethodTable")
            self.handlers.update(table)
        self._services = {p.lstrip("/").rpartition("/")[0] for p in self.handlers}

    def unknown(self, path: str) -> str:
        """grpc-go's text for a path no handler serves."""
        service, _, method = path.lstrip("/").rpartition("/")
        if not service:
            return f"malformed method name: {path!r}"
        if service in self._services:
            return f"unknown method {method} for service {service}"
        return f"unknown service {service}"

    async def listen(self, url: str, ssl_context: ssl.SSLContext | None = None) -> int:
        """Serve on a client URL (http, https, unix, unixs); OSError if it cannot
        bind. Returns the TCP port (the one chosen for port 0), 0 for unix."""
        parts = urlsplit(url)
        factory = lambda: Connection(self)  # noqa: E731
        if parts.scheme.startswith("unix"):
            path = parts.path or parts.netloc
            srv = await self.loop.create_unix_server(factory, path, ssl=ssl_context)
        else:
            srv = await self.loop.create_server(
                factory, parts.hostname or "127.0.0.1", 2379 if parts.port is None else parts.port, ssl=ssl_context,
                reuse_address=True, backlog=1024,
            )
        self._listeners.append(srv)
        sockets = srv.sockets or ()
        return sockets[0].getsockname()[1] if sockets and sockets[0].family != socket.AF_UNIX else 0

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop listening, let calls in flight finish for ``grace`` seconds, then end them."""
        for srv in self._listeners:
            srv.close()
        conns = list(self.connections)
        for c in conns:
            c.goaway()
        running = [call.task for c in conns for call in c.calls.values() if call.task is not None]
        if grace and running:
            await asyncio.wait(running, timeout=grace)
        for c in list(self.connections):
            for call in list(c.calls.values()):
                call.cancel()
            if c.transport is not None:
                c.flush()
                c.transport.close()
        for srv in self._listeners:
            try:
                await asyncio.wait_for(srv.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
        self._listeners.clear()
