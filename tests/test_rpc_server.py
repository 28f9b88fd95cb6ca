"""kvstore.rpc.server in-process on real sockets: grpc.aio clients, and raw
HTTP/2 clients for what a well-behaved gRPC client never sends.

Every test gets its own RpcServer on 127.0.0.1 port 0, serving a few test
methods on bytes (``/test.T/...``). Nothing waits on the clock: handlers
report through asyncio Events, awaited with a generous timeout.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import re
import ssl
import struct

import grpc
import hpack
import pytest

from kvstore.api import MethodTable
from kvstore.rpc import h2
from kvstore.rpc.server import RpcServer

from tests.test_rpc_h2 import REQUEST, Frame, parse, settings

WAIT = 10  # seconds: only a bound on a wait that a working server ends at once
MiB = 1 << 20
BIG = random.Random(7).randbytes(5 * MiB)  # larger than every initial window
# BDP probing on (the default): the client raises its initial window mid-transfer.
BIG_CHANNEL = [("grpc.max_receive_message_length", 16 * MiB), ("grpc.max_send_message_length", 16 * MiB)]


def _ident(b: bytes) -> bytes:
    return b


class State:
    """What the handlers saw, and Events to hold and watch them."""

    def __init__(self) -> None:
        self.started = asyncio.Event()  # a blocking handler is running
        self.release = asyncio.Event()  # set by a test to let it finish
        self.cancelled = asyncio.Event()  # a handler saw CancelledError
        self.done = asyncio.Event()  # a streaming handler's finally ran
        self.seen: dict[str, object] = {}


def _table(state: State) -> MethodTable:
    async def echo(req, ctx):
        state.seen["encoding"] = ctx.encoding  # the request's grpc-encoding (not in the metadata)
        return req

    async def whoami(req, ctx):
        state.seen.update(metadata=ctx.invocation_metadata(), peer=ctx.peer(), auth=ctx.auth_context())
        return b"ok"

    async def abort(req, ctx):
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, req.decode())

    async def boom(req, ctx):
        raise RuntimeError("handler bug")

    async def block(req, ctx):
        state.seen["time_remaining"] = ctx.time_remaining()
        state.started.set()
        try:
            await state.release.wait()
        except asyncio.CancelledError:
            state.cancelled.set()
            raise
        return b"released"

    async def big(req, ctx):
        return BIG

    async def count(req, ctx):  # b"N" or b"N,SIZE": N messages, each its index padded to SIZE bytes
        n, _, size = req.partition(b",")
        for i in range(int(n)):
            yield i.to_bytes(4, "big").ljust(int(size or 4), b".")

    async def first_then_block(req, ctx):
        try:
            yield b"first"
            await state.release.wait()
        except asyncio.CancelledError:
            state.cancelled.set()
            raise
        finally:
            state.done.set()

    async def total(requests, ctx):
        n = 0
        async for msg in requests:
            n += len(msg)
        return str(n).encode()

    async def hold(requests, ctx):  # reads nothing
        state.started.set()
        await state.release.wait()
        return b"held"

    async def bidi(requests, ctx):
        async for msg in requests:
            yield msg.upper()

    kinds = {
        "unary": grpc.unary_unary_rpc_method_handler,
        "server": grpc.unary_stream_rpc_method_handler,
        "client": grpc.stream_unary_rpc_method_handler,
        "bidi": grpc.stream_stream_rpc_method_handler,
    }
    methods = {
        "Echo": ("unary", echo), "Whoami": ("unary", whoami), "Abort": ("unary", abort), "Boom": ("unary", boom),
        "Block": ("unary", block), "Big": ("unary", big), "Count": ("server", count),
        "FirstThenBlock": ("server", first_then_block), "Total": ("client", total), "Bidi": ("bidi", bidi),
        "Hold": ("client", hold),
    }
    table = MethodTable()
    for name, (kind, fn) in methods.items():
        table.handlers[f"/test.T/{name}"] = kinds[kind](fn, request_deserializer=_ident, response_serializer=_ident)
    return table


@contextlib.asynccontextmanager
async def serve(ssl_context: ssl.SSLContext | None = None, url: str | None = None, **kw):
    """A running RpcServer with the test methods: yields (server, port, state)."""
    state = State()
    server = RpcServer(**kw)
    server.add_generic_rpc_handlers((_table(state),))
    port = await server.listen(url or f"{'https' if ssl_context else 'http'}://127.0.0.1:0", ssl_context)
    try:
        yield server, port, state
    finally:
        await server.stop(None)


def run(test, options=(), **server_kw) -> None:
    """``await test(channel, state, server, port)`` against a fresh server."""

    async def main():
        async with serve(**server_kw) as (server, port, state):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=list(options)) as ch:
                await asyncio.wait_for(test(ch, state, server, port), 30)

    asyncio.run(main())


def unary(ch: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return ch.unary_unary(f"/test.T/{name}")


async def rpc_error(aw) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await aw
    return ei.value


async def until_set(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), WAIT)


# ------------------------------------------------------------------ unary
def test_unary_echo_round_trip():
    async def test(ch, state, server, port):
        assert await unary(ch, "Echo")(b"hello") == b"hello"
        assert await unary(ch, "Echo")(b"") == b""
        assert state.seen["encoding"] is None

    run(test)


def test_metadata_and_peer_reach_the_handler():
    async def test(ch, state, server, port):
        md = (("x-plain", "value 1"), ("x-raw-bin", b"\x00\xff\x10binary"), ("x-plain", "value 2"))
        assert await unary(ch, "Whoami")(b"", metadata=md) == b"ok"
        got = state.seen["metadata"]
        assert sorted(kv for kv in got if kv[0].startswith("x-")) == sorted(md)
        assert not any(k.startswith(":") or k in ("content-type", "te", "grpc-timeout") for k, _ in got)
        m = re.fullmatch(r"ipv4:127\.0\.0\.1:(\d+)", state.seen["peer"])
        assert m and int(m.group(1)) not in (0, port)
        assert state.seen["auth"] == {}

    run(test)


@pytest.mark.parametrize("details", ["no such thing", "nöt fóund: 100% ✓ \t", "%41 already-encoded?"])
def test_abort_status_and_details_reach_the_client(details):
    async def test(ch, state, server, port):
        e = await rpc_error(unary(ch, "Abort")(details.encode()))
        assert e.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert e.details() == details

    run(test)


def test_handler_exception_is_unknown_and_the_server_keeps_serving():
    async def test(ch, state, server, port):
        e = await rpc_error(unary(ch, "Boom")(b""))
        assert e.code() is grpc.StatusCode.UNKNOWN
        assert "handler bug" not in (e.details() or "")  # internals are not leaked
        assert await unary(ch, "Echo")(b"still here") == b"still here"

    run(test)


def test_unknown_method_is_unimplemented():
    async def test(ch, state, server, port):
        for path in ("/test.T/Nope", "/other.Service/Echo"):
            e = await rpc_error(ch.unary_unary(path)(b""))
            assert e.code() is grpc.StatusCode.UNIMPLEMENTED
        assert await unary(ch, "Echo")(b"x") == b"x"

    run(test)


def test_message_over_max_receive_is_resource_exhausted():
    async def test(ch, state, server, port):
        assert await unary(ch, "Echo")(b"x" * 1000) == b"x" * 1000  # the limit itself is allowed
        e = await rpc_error(unary(ch, "Echo")(b"x" * 1001))
        assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await unary(ch, "Echo")(b"ok") == b"ok"

    run(test, max_receive_message_length=1000)


def test_gzip_compressed_request_is_accepted():
    async def main():
        async with serve() as (server, port, state):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", compression=grpc.Compression.Gzip) as ch:
                payload = b"compressible " * 5000
                assert await unary(ch, "Echo")(payload) == payload
                assert state.seen["encoding"] == "gzip"

    asyncio.run(main())


# ------------------------------------------------------ deadlines, cancel
def test_deadline_exceeded_cancels_the_handler():
    async def test(ch, state, server, port):
        e = await rpc_error(unary(ch, "Block")(b"", timeout=0.2))
        assert e.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await until_set(state.cancelled)
        remaining = state.seen["time_remaining"]
        assert remaining is not None and remaining <= 1  # the grpc-timeout header was read (rounded up)
        assert await unary(ch, "Echo")(b"x") == b"x"

    run(test)


def test_client_cancelling_a_stream_cancels_the_handler():
    async def test(ch, state, server, port):
        call = ch.unary_stream("/test.T/FirstThenBlock")(b"")
        assert await asyncio.wait_for(call.read(), WAIT) == b"first"
        call.cancel()
        await until_set(state.done)
        assert state.cancelled.is_set()
        assert await unary(ch, "Echo")(b"x") == b"x"

    run(test)


# --------------------------------------------------- volume and streaming
def test_large_response_beyond_every_window_arrives_intact():
    async def test(ch, state, server, port):
        assert await unary(ch, "Big")(b"") == BIG

    run(test, options=BIG_CHANNEL)


# A unary request larger than the stream window (h2.STREAM_WINDOW, 4 MiB): its
# bytes must be credited back as they arrive.
def test_large_unary_request_beyond_the_stream_window():
    async def test(ch, state, server, port):
        assert await unary(ch, "Echo")(BIG, timeout=3) == BIG

    run(test, options=BIG_CHANNEL, max_receive_message_length=8 * MiB)


# A client stream longer than the stream window: credited as the handler reads.
def test_client_stream_beyond_the_stream_window():
    async def test(ch, state, server, port):
        chunk = b"y" * (256 << 10)
        assert await ch.stream_unary("/test.T/Total")(iter([chunk] * 20), timeout=3) == str(20 * len(chunk)).encode()

    run(test)


# Messages of a client stream each larger than the stream window: a message
# in progress is credited as it arrives (else it could never complete).
def test_client_stream_of_messages_beyond_the_stream_window():
    async def test(ch, state, server, port):
        msgs = [b"z" * (100 << 10), BIG, BIG]
        assert await ch.stream_unary("/test.T/Total")(iter(msgs), timeout=10) == str(sum(map(len, msgs))).encode()

    run(test, options=BIG_CHANNEL, max_receive_message_length=8 * MiB)


def test_client_stream_within_the_window():
    async def test(ch, state, server, port):
        msgs = [bytes([i]) * (i * 100) for i in range(30)]
        assert await ch.stream_unary("/test.T/Total")(iter(msgs)) == str(sum(map(len, msgs))).encode()
        assert await ch.stream_unary("/test.T/Total")(iter(())) == b"0"

    run(test)


def test_many_concurrent_calls():
    async def test(ch, state, server, port):
        echo = unary(ch, "Echo")
        got = await asyncio.gather(*(echo(str(i).encode() * (i % 7)) for i in range(200)))
        assert got == [str(i).encode() * (i % 7) for i in range(200)]

    run(test)


def test_server_streaming_delivers_every_message_in_order():
    async def test(ch, state, server, port):
        got = [m async for m in ch.unary_stream("/test.T/Count")(b"1000")]
        assert got == [i.to_bytes(4, "big") for i in range(1000)]
        assert [m async for m in ch.unary_stream("/test.T/Count")(b"0")] == []

    run(test)


def test_server_streaming_beyond_every_window_arrives_intact():
    async def test(ch, state, server, port):
        size = 512 << 10
        got = [m async for m in ch.unary_stream("/test.T/Count")(f"24,{size}".encode())]
        assert got == [i.to_bytes(4, "big").ljust(size, b".") for i in range(24)]

    run(test, options=BIG_CHANNEL)


def test_bidi_stream_echo():
    async def test(ch, state, server, port):
        call = ch.stream_stream("/test.T/Bidi")()
        for i in range(20):
            msg = f"message {i}".encode()
            await call.write(msg)
            assert await asyncio.wait_for(call.read(), WAIT) == msg.upper()  # one at a time: truly interleaved
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), WAIT) is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK

    run(test)


# --------------------------------------------------------- raw HTTP/2 clients
class RawClient:
    """A bare HTTP/2 client on the socket: frames out, frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()

    @classmethod
    async def connect(cls, port: int) -> "RawClient":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def frame(self) -> Frame:
        head = await asyncio.wait_for(self.reader.readexactly(9), WAIT)
        length = int.from_bytes(head[:3], "big")
        return parse(head + await asyncio.wait_for(self.reader.readexactly(length), WAIT))[0]

    async def rest(self) -> list[Frame]:
        """Every frame until the server closes the connection."""
        try:
            return parse(await asyncio.wait_for(self.reader.read(), WAIT))
        except ConnectionResetError:
            return []

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def handshake(self) -> None:
        self.send(h2.PREFACE, h2.frame(h2.SETTINGS, 0, 0))
        assert (await self.frame()).type == h2.SETTINGS

    def close(self) -> None:
        self.writer.close()


def _goaways(frames: list[Frame]) -> list[tuple[int, int]]:
    return [struct.unpack(">II", f.payload[:8]) for f in frames if f.type == h2.GOAWAY]


def test_http1_request_gets_the_connection_closed():
    async def test(ch, state, server, port):
        raw = await RawClient.connect(port)
        raw.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        frames = await raw.rest()  # returns at EOF: the server closed
        assert all(code == h2.PROTOCOL_ERROR for _, code in _goaways(frames))
        raw.close()
        assert await unary(ch, "Echo")(b"after") == b"after"

    run(test)


@pytest.mark.parametrize("method, content_type, status", [
    ("POST", "text/plain", "415"), ("POST", None, "415"), ("GET", "application/grpc", "405")])
async def raw_request(port: int, headers: list[tuple[str, str]], *messages: bytes) -> tuple[int, dict[str, str]]:
    """One request on a raw connection (``messages`` are DATA payloads, the last
    ends the stream): the flags and decoded headers of the response's first HEADERS."""
    raw = await RawClient.connect(port)
    try:
        await raw.handshake()
        block = raw.encoder.encode(headers)
        data = [h2.frame(h2.DATA, h2.END_STREAM if i == len(messages) - 1 else 0, 1, m) for i, m in enumerate(messages)]
        raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS | (0 if messages else h2.END_STREAM), 1, block), *data)
        f = await raw.frame()
        while not (f.type == h2.HEADERS and f.sid == 1):
            f = await raw.frame()
        return f.flags, dict(hpack.Decoder().decode(f.payload))
    finally:
        raw.close()


def _with(**changes: str | None) -> list[tuple[str, str]]:
    """REQUEST with some headers replaced (None: removed) or added; ``_`` in names is ``-``."""
    changes = {k.replace("_", "-"): v for k, v in changes.items()}
    changes = {(":" + k[1:] if k.startswith("-") else k): v for k, v in changes.items()}
    headers = [(k, changes.get(k, v)) for k, v in REQUEST if changes.get(k, v) is not None]
    return headers + [(k, v) for k, v in changes.items() if v is not None and k not in dict(REQUEST)]


@pytest.mark.parametrize("headers, status", [
    (_with(content_type="text/plain"), "415"), (_with(content_type=None), "415"), (_with(_method="GET"), "405")])
def test_non_grpc_request_gets_an_http_error(headers, status):
    async def test(ch, state, server, port):
        flags, got = await raw_request(port, headers)
        assert flags & h2.END_STREAM
        assert got[":status"] == status
        assert "grpc-status" not in got

    run(test)


def _msg(payload: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(payload)) + payload


@pytest.mark.parametrize("headers, messages, code", [
    (_with(_path="/test.T/Missing"), [], grpc.StatusCode.UNIMPLEMENTED),
    (_with(grpc_timeout="1x"), [_msg(b"a")], grpc.StatusCode.INTERNAL),
    (_with(grpc_encoding="snappy"), [_msg(b"a", 1)], grpc.StatusCode.UNIMPLEMENTED),
    (_with(), [_msg(b"a", 1)], grpc.StatusCode.INTERNAL),  # compressed flag without an encoding
    (_with(grpc_encoding="gzip"), [_msg(b"not gzip", 1)], grpc.StatusCode.INTERNAL),
    (_with(), [_msg(b"abc")[:-1]], grpc.StatusCode.INTERNAL),  # the stream ends inside a message
    (_with(), [_msg(b"a"), _msg(b"b")], grpc.StatusCode.INTERNAL),  # two requests on a unary call
    (_with(), [b""], grpc.StatusCode.INTERNAL),  # no request at all
], ids=["unknown-method", "bad-timeout", "unknown-encoding", "no-encoding", "bad-gzip", "truncated", "two", "none"])
def test_malformed_grpc_request_gets_a_trailers_only_status(headers, messages, code):
    async def test(ch, state, server, port):
        flags, got = await raw_request(port, headers, *messages)
        assert flags & h2.END_STREAM
        assert (got[":status"], got["content-type"], got["grpc-status"]) == (
            "200", "application/grpc", str(code.value[0]))

    run(test)


def test_raw_unary_call_gets_headers_then_a_message_then_ok_trailers():
    async def test(ch, state, server, port):
        raw = await RawClient.connect(port)
        await raw.handshake()
        raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, raw.encoder.encode(REQUEST)),
                 h2.frame(h2.DATA, h2.END_STREAM, 1, _msg(b"raw")))
        frames = []
        while not frames or not frames[-1].flags & h2.END_STREAM:
            f = await raw.frame()
            if f.sid == 1:
                frames.append(f)
        assert [f.type for f in frames] == [h2.HEADERS, h2.DATA, h2.HEADERS]
        dec = hpack.Decoder()
        assert dict(dec.decode(frames[0].payload)) == {":status": "200", "content-type": "application/grpc"}
        assert frames[1].payload == _msg(b"raw")
        assert dict(dec.decode(frames[2].payload)) == {"grpc-status": "0"}
        raw.close()

    run(test)


def test_settings_ack_precedes_released_data():
    """A client that raises its initial window while a response waits for window
    must see the SETTINGS ACK before DATA beyond its old window."""
    async def test(ch, state, server, port):
        raw = await RawClient.connect(port)
        raw.send(h2.PREFACE, settings(initial_window=1000),
                 h2.frame(h2.HEADERS, h2.END_HEADERS, 1, raw.encoder.encode(_with(_path="/test.T/Big"))),
                 h2.frame(h2.DATA, h2.END_STREAM, 1, _msg(b"")))
        received = 0
        while received < 1000:  # the response fills the initial window, then waits
            f = await raw.frame()
            received += len(f.payload) if f.type == h2.DATA else 0
        raw.send(settings(initial_window=1 << 20))
        f = await raw.frame()
        while f.type not in (h2.SETTINGS, h2.DATA):
            f = await raw.frame()
        assert (f.type, f.flags) == (h2.SETTINGS, h2.ACK)
        raw.close()

    run(test)


def test_stop_sends_goaway_to_an_idle_connection_and_closes_it():
    async def main():
        async with serve() as (server, port, state):
            raw = await RawClient.connect(port)
            await raw.handshake()
            await server.stop(1.0)
            frames = await raw.rest()
            assert _goaways(frames) == [(0, h2.NO_ERROR)]
            raw.close()
            with pytest.raises(OSError):
                await RawClient.connect(port)  # no longer listening

    asyncio.run(main())


def test_stop_lets_a_running_call_finish_within_grace():
    async def test(ch, state, server, port):
        call = asyncio.ensure_future(unary(ch, "Block")(b""))
        await until_set(state.started)

        async def release_after_goaway():  # runs once stop() has sent GOAWAY and waits for the call
            assert server.connections and all(c.h2.goaway_sent for c in server.connections)
            state.release.set()

        await asyncio.gather(server.stop(WAIT), release_after_goaway())
        assert await call == b"released"
        assert not state.cancelled.is_set()

    run(test)


def test_stop_cancels_calls_still_running_after_grace():
    async def test(ch, state, server, port):
        call = asyncio.ensure_future(unary(ch, "Block")(b""))
        await until_set(state.started)
        await server.stop(0.2)
        await until_set(state.cancelled)
        await rpc_error(call)

    run(test)


# ------------------------------------------------------------------- TLS
def test_tls_with_alpn_h2(tmp_path):
    from kvstore.tls import self_signed_cert

    cert, key = self_signed_cert(str(tmp_path), ["127.0.0.1", "localhost"], 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    with open(cert, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())

    async def main():
        async with serve(ssl_context=ctx) as (server, port, state):
            async with grpc.aio.secure_channel(f"localhost:{port}", creds) as ch:
                assert await unary(ch, "Echo")(b"secret") == b"secret"
                assert await unary(ch, "Whoami")(b"") == b"ok"
                assert state.seen["auth"] == {"transport_security_type": [b"ssl"]}

    asyncio.run(main())


def test_unix_socket(tmp_path):
    async def main():
        path = tmp_path / "rpc.sock"
        async with serve(url=f"unix://{path}") as (server, port, state):
            assert port == 0
            async with grpc.aio.insecure_channel(f"unix:{path}") as ch:
                assert await unary(ch, "Echo")(b"local") == b"local"
                assert await unary(ch, "Whoami")(b"") == b"ok"
                assert str(state.seen["peer"]).startswith("unix:")

    asyncio.run(main())


def test_connection_with_too_much_unread_request_data_is_closed(monkeypatch) -> None:
    """A client cannot make the server buffer requests without bound: past
    UNREAD_LIMIT bytes that no handler read, the connection ends (GOAWAY
    ENHANCE_YOUR_CALM), its calls fail, and the server serves new clients."""
    from kvstore.rpc import server as rpc_server

    monkeypatch.setattr(rpc_server, "UNREAD_LIMIT", 1 * MiB)

    async def test(ch, state, server, port):
        chunk = b"z" * (64 << 10)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.stream_unary("/test.T/Hold")(iter([chunk] * 40), timeout=WAIT)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED)
        assert not any(c.unread for c in server.connections)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
            assert await fresh.unary_unary("/test.T/Echo")(b"still serving", timeout=WAIT) == b"still serving"

    run(test)


# ------------------------------------------------------------ hostile input
def test_non_ascii_digits_in_grpc_timeout_are_malformed():
    """"²" passes str.isdigit() but not int(): the exception escaped
    data_received, logged a traceback and killed the client's connection."""
    async def test(ch, state, server, port):
        flags, got = await raw_request(port, _with(grpc_timeout="\u00b2S"), _msg(b"a"))
        assert (flags & h2.END_STREAM, got["grpc-status"]) == (h2.END_STREAM, str(grpc.StatusCode.INTERNAL.value[0]))

    run(test)


def test_empty_header_name_is_not_metadata_and_the_call_is_served():
    async def test(ch, state, server, port):
        flags, got = await raw_request(port, REQUEST + [("", "x")], _msg(b"a"))
        assert not flags & h2.END_STREAM and got[":status"] == "200"  # response headers: served

    run(test)


class _StubConnection:
    """What a Call uses of its Connection, without a socket."""

    def __init__(self, max_receive: int) -> None:
        self.server = type("Server", (), {"max_receive": max_receive})()
        self.unread = 0

    def consumed(self, sid: int, n: int) -> None:
        pass

    def abandon(self, reason: str) -> None:
        raise AssertionError(reason)


def test_a_message_over_many_frames_is_not_copied_again_per_frame():
    """A 4 MiB request in 64-byte DATA frames copied the partial message once a
    frame: minutes of CPU for a few MiB sent. Partial bytes count as unread."""
    from kvstore.rpc.server import Call

    conn = _StubConnection(8 * MiB)
    call = Call(conn, 1, "/test.T/Echo", _table(State()).handlers["/test.T/Echo"], (), None)
    message = _msg(BIG[: 4 * MiB])
    call.feed(message[:64], False)
    partial = call.buf
    for i in range(64, len(message) - 64, 64):
        call.feed(message[i : i + 64], False)
    assert call.buf is partial  # grown in place
    assert conn.unread == i + 64  # every byte fed, held
    call.feed(message[i + 64 :], False)
    assert [m for m, _ in call.messages] == [BIG[: 4 * MiB]]


def _gzip_msg(size: int) -> bytes:
    import gzip

    return _msg(gzip.compress(bytes(size)), 1)


async def _raw_call(port: int, path: str, *data: bytes, extra=()) -> RawClient:
    """A raw connection with one call on stream 1 (``data``: DATA payloads, the stream left open)."""
    raw = await RawClient.connect(port)
    await raw.handshake()
    raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, raw.encoder.encode(_with(_path=path, **dict(extra)))),
             *(h2.frame(h2.DATA, 0, 1, d) for d in data))
    return raw


@pytest.mark.parametrize("what, data", [
    # 20 messages of 300 bytes, each 256 KiB once decompressed: unread counted 6 KB
    ("gzip-bombs", [b"".join([_gzip_msg(256 << 10)] * 20)]),
    # 100,000 empty messages: 500 KB on the wire, each a tuple and a deque slot held
    ("empty-messages", [_msg(b"") * 100_000]),
], ids=lambda x: x if isinstance(x, str) else "")
def test_unread_counts_what_the_server_holds(monkeypatch, what, data):
    from kvstore.rpc import server as rpc_server

    monkeypatch.setattr(rpc_server, "UNREAD_LIMIT", 1 * MiB)

    async def test(ch, state, server, port):
        raw = await _raw_call(port, "/test.T/Hold", *data, extra={"grpc_encoding": "gzip"}.items())
        assert _goaways(await raw.rest()) == [(1, h2.ENHANCE_YOUR_CALM)]
        raw.close()

    run(test)


def test_partial_messages_count_as_unread(monkeypatch):
    """Incomplete unary requests are held too: 10,000 streams of 4 MiB each
    could hold 40 GB on one connection."""
    from kvstore.rpc import server as rpc_server

    monkeypatch.setattr(rpc_server, "UNREAD_LIMIT", 1 * MiB)

    async def test(ch, state, server, port):
        raw = await RawClient.connect(port)
        await raw.handshake()
        half = _msg(bytes(MiB))[: 512 << 10]
        for sid in (1, 3, 5):
            raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, raw.encoder.encode(REQUEST)),
                     h2.frame(h2.DATA, 0, sid, half))
        assert _goaways(await raw.rest()) == [(5, h2.ENHANCE_YOUR_CALM)]
        raw.close()

    run(test)


def test_second_message_on_a_unary_call_fails_it_at_once():
    """Not at END_STREAM: a unary call credits its bytes as they arrive, so
    messages held until then were bounded by nothing but the connection limit."""
    async def test(ch, state, server, port):
        raw = await _raw_call(port, "/test.T/Echo", _msg(b"a") + _msg(b"b"))
        f = await raw.frame()
        while not (f.type == h2.HEADERS and f.sid == 1):
            f = await raw.frame()
        assert f.flags & h2.END_STREAM
        assert dict(hpack.Decoder().decode(f.payload))["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
        raw.close()

    run(test)
