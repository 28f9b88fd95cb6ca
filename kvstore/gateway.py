"""etcd 3.4's JSON gateway (grpc-gateway v1) on the HTTP listener.

One implementation of each operation, two encodings: every ``/v3/...`` path
calls the very servicer instance gRPC calls (``kvstore.api.servicers``),
through :class:`CallContext`, a stand-in for ``grpc.aio.ServicerContext``
whose ``abort`` raises :class:`CallAborted` instead of ending an RPC. Only
the encoding is done here, the way etcd's gateway does it (checked against
etcd 3.4.23's own gateway, tests/test_http_gateway.py):

* Requests: the body is the JSON form of the request message (the protobuf
  JSON mapping, accepting both the .proto field names and lowerCamel names,
  int64 as number or string, enums by name or number, bytes as base64;
  unknown fields are ignored; an empty body is the empty message). The
  request's Content-Type is not looked at.
* Responses: the message with the .proto field names (``cluster_id``,
  ``create_revision``, ``ID``, ``TTL``, ``dbSize``...), 64-bit integers as
  strings, bytes as base64, enums by name, fields holding their default value
  left out; ``Content-Type: application/json``.
* Errors: HTTP status from the gRPC code (grpc-gateway's table) and the body
  ``{"error": msg, "message": msg, "code": grpc_code}``.
* Streams (``/v3/watch``, ``/v3/lease/keepalive``, ``/v3/election/observe``,
  ``/v3/maintenance/snapshot``): the request body is a sequence of JSON
  objects (read as they arrive); the response is chunked, one
  ``{"result": {...}}`` object per message, each followed by a newline; an
  error ends it with ``{"error": {"grpc_code", "http_code", "message",
  "http_status"}}`` (with that HTTP status if nothing was sent yet). A watch
  stays open after the request body ends, as etcd's does.
* ``/v3beta/...`` answers like ``/v3/...``; ``/v3/maintenance/hash`` is Hash
  (etcd 3.4 routes HashKV to the same path, where Hash wins). Streaming
  paths also accept a WebSocket upgrade (etcd's wsproxy): each text frame
  in is one request object, each response one text frame.
* CORS headers as etcd sends them by default, ``OPTIONS`` answered 200.

Deliberate differences: a malformed first message of a stream is a 400
(code 3) where etcd answers 500 (code 2); bytes fields must be valid base64
(the Python protobuf parser alone would accept garbage); a body larger than
twice --max-request-bytes + 512 KiB is refused with 413 (code 8) without
being read. A path whose service this server does not register answers
501, code 12, as etcd's gateway does for an unknown gRPC service.

Authentication: the ``Authorization`` header carries the token from
``/v3/auth/authenticate`` (as with etcd); each call is authorised by
``kvstore.api.auth.guard`` exactly as the gRPC method wrapper authorises it.
"""
from __future__ import annotations

import asyncio
import binascii
import json
import logging
import re
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import grpc
import aiohttp
from aiohttp import WSMsgType, web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import EtcdError
from .pb import rpc_pb2, v3election_pb2, v3lock_pb2
from .watch import item_bytes


# A client that disconnects or sends a truncated body: its doing, not a server error.
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError)

log = logging.getLogger("kvstore.gateway")

GRPC_OVERHEAD = 512 * 1024  # what gRPC accepts on top of --max-request-bytes
DISCONNECT_CHECK = 1.0  # seconds between checks that a streaming client is still there

# (path under /v3/, gRPC service, method) as etcd 3.4 declares them (the
# "// POST /v3/..." comments of proto/etcd/*); tests check this against them.
ROUTES: list[tuple[str, str, str]] = [
    ("kv/range", "etcdserverpb.KV", "Range"),
    ("kv/put", "etcdserverpb.KV", "Put"),
    ("kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("kv/txn", "etcdserverpb.KV", "Txn"),
    ("kv/compaction", "etcdserverpb.KV", "Compact"),
    ("watch", "etcdserverpb.Watch", "Watch"),
    ("lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("lease/keepalive", "etcdserverpb.Lease", "LeaseKeepAlive"),
    ("lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    ("kv/lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    ("lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("cluster/member/add", "etcdserverpb.Cluster", "MemberAdd"),
    ("cluster/member/remove", "etcdserverpb.Cluster", "MemberRemove"),
    ("cluster/member/update", "etcdserverpb.Cluster", "MemberUpdate"),
    ("cluster/member/list", "etcdserverpb.Cluster", "MemberList"),
    ("cluster/member/promote", "etcdserverpb.Cluster", "MemberPromote"),
    ("maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    ("maintenance/status", "etcdserverpb.Maintenance", "Status"),
    ("maintenance/defragment", "etcdserverpb.Maintenance", "Defragment"),
    ("maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    ("maintenance/snapshot", "etcdserverpb.Maintenance", "Snapshot"),
    ("maintenance/transfer-leadership", "etcdserverpb.Maintenance", "MoveLeader"),
    ("auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    ("auth/user/changepw", "etcdserverpb.Auth", "UserChangePassword"),
    ("auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    ("auth/user/revoke", "etcdserverpb.Auth", "UserRevokeRole"),
    ("auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    ("auth/role/grant", "etcdserverpb.Auth", "RoleGrantPermission"),
    ("auth/role/revoke", "etcdserverpb.Auth", "RoleRevokePermission"),
    ("lock/lock", "v3lockpb.Lock", "Lock"),
    ("lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("election/campaign", "v3electionpb.Election", "Campaign"),
    ("election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("election/leader", "v3electionpb.Election", "Leader"),
    ("election/observe", "v3electionpb.Election", "Observe"),
    ("election/resign", "v3electionpb.Election", "Resign"),
]
PREFIXES = ("/v3/", "/v3beta/")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
}


# ------------------------------------------------------------------ gRPC codes
def http_status(code: grpc.StatusCode) -> int:
    """grpc-gateway's HTTPStatusFromCode."""
    return _HTTP_STATUS.get(code, 500)


_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

_HTTP_TEXT = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 409: "Conflict", 412: "Precondition Failed", 413: "Request Entity Too Large",
    429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


def code_number(code: grpc.StatusCode) -> int:
    return int(code.value[0])


# ------------------------------------------------------- calling the servicers
class CallAborted(grpc.aio.AbortError):
    """``CallContext.abort``: the gRPC status the servicer ended the call with.

    A subclass of ``grpc.aio.AbortError`` so the servicers' error wrappers
    let it through as they let a real abort through."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details

    def __repr__(self) -> str:
        return f"CallAborted({self.code.name}, {self.details!r})"


class CallContext:
    """The part of ``grpc.aio.ServicerContext`` the servicers use."""

    def __init__(
        self,
        metadata: Iterable[tuple[str, str]] = (),
        write: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self._metadata = tuple(metadata)
        self._write = write
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise CallAborted(code, details)

    async def write(self, message: Any) -> None:
        if self._write is None:
            raise RuntimeError("write on a unary call")
        await self._write(message)

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def peer(self) -> str:
        return "http"

    def auth_context(self) -> dict[str, Any]:
        return {}  # no TLS identity: an HTTP caller authenticates with a token

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def add_done_callback(self, callback: Any) -> None:
        pass


def http_metadata(request: web.Request) -> list[tuple[str, str]]:
    """gRPC metadata from HTTP headers, as grpc-gateway forwards them:
    ``Authorization`` (etcd reads it as the auth token: the bare token, as
    returned by /v3/auth/authenticate), ``Grpc-Metadata-*``, and
    ``grpcgateway-accept`` (marks a gateway call)."""
    md = [("grpcgateway-accept", request.headers.get("Accept", "*/*"))]
    for k, v in request.headers.items():
        lk = k.lower()
        if lk == "authorization":
            md.append(("authorization", v))
        elif lk.startswith("grpc-metadata-"):
            md.append((lk[len("grpc-metadata-"):], v))
    return md


class Method:
    """One RPC: its servicer method and message classes."""

    def __init__(self, service: str, name: str) -> None:
        self.service = service
        self.name = name
        pkg_svc = {
            "etcdserverpb": rpc_pb2, "v3lockpb": v3lock_pb2, "v3electionpb": v3election_pb2,
        }[service.split(".")[0]].DESCRIPTOR.services_by_name[service.split(".")[1]]
        desc = pkg_svc.methods_by_name[name]
        self.request_class = message_factory.GetMessageClass(desc.input_type)
        self.response_class = message_factory.GetMessageClass(desc.output_type)
        self.client_streaming = desc.client_streaming
        self.server_streaming = desc.server_streaming

    def handler(self, server: Any) -> Callable[..., Any]:
        """The servicer method, authorised as the gRPC method wrapper authorises
        the same call (kvstore.api.auth.guard)."""
        from .api import servicers
        from .api.auth import guard

        svc = servicers(server).get(self.service)
        fn = getattr(svc, self.name, None) if svc is not None else None
        if fn is None:
            raise CallAborted(grpc.StatusCode.UNIMPLEMENTED, f"unknown service {self.service}")
        return guard(server, f"/{self.service}/{self.name}", fn)


_METHODS: dict[tuple[str, str], Method] = {}


def method(service: str, name: str) -> Method:
    m = _METHODS.get((service, name))
    if m is None:
        m = _METHODS[(service, name)] = Method(service, name)
    return m


async def call(server: Any, service: str, name: str, request: Message,
               metadata: Iterable[tuple[str, str]] = ()) -> Message:
    """A unary RPC in-process, through the same servicer as gRPC; raises
    :class:`CallAborted` with the status it would have ended with."""
    fn = method(service, name).handler(server)
    try:
        return await fn(request, CallContext(metadata))
    except CallAborted:
        raise
    except EtcdError as e:  # a servicer without the error wrapper
        raise CallAborted(e.code, e.message) from None
    except NotImplementedError:
        raise CallAborted(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!") from None


# --------------------------------------------------------------------- JSON
def to_json(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_B64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")


def _check_bytes(value: Any) -> None:
    if not isinstance(value, str):
        return  # the parser reports the wrong type
    m = _B64.fullmatch(value)
    if m is None or len(value.rstrip("=")) % 4 == 1:
        bad = _B64.match(value).end() if m is None else len(value)  # type: ignore[union-attr]
        raise json_format.ParseError(f"illegal base64 data at input byte {bad}")
    if "=" in value and len(value) % 4:
        raise json_format.ParseError(f"illegal base64 data at input byte {len(value)}")


def _check_base64(obj: Any, desc: Any) -> None:
    """Strict base64 for bytes fields (json_format alone accepts garbage)."""
    if not isinstance(obj, dict):
        return
    for k, v in obj.items():
        f = desc.fields_by_name.get(k) or desc.fields_by_camelcase_name.get(k)
        if f is None or v is None:
            continue
        repeated = f.is_repeated
        values = v if repeated and isinstance(v, list) else [v]
        for one in values:
            if f.type == FieldDescriptor.TYPE_BYTES:
                _check_bytes(one)
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                _check_base64(one, f.message_type)


def parse(obj: Any, cls: type[Message]) -> Message:
    """A request message from its decoded JSON value; ParseError if bad."""
    if obj is None:
        return cls()
    if not isinstance(obj, dict):
        raise json_format.ParseError(f"json: cannot unmarshal {type(obj).__name__} into Go value of type {cls.DESCRIPTOR.full_name}")
    msg = cls()
    try:
        _check_base64(obj, cls.DESCRIPTOR)
        json_format.ParseDict(obj, msg, ignore_unknown_fields=True)
    except json_format.ParseError:
        raise
    except RecursionError:
        raise json_format.ParseError("exceeded max depth") from None
    except (ValueError, TypeError, AttributeError, binascii.Error) as e:
        raise json_format.ParseError(str(e)) from None
    return msg


class BodyTooLarge(Exception):
    pass


class JsonStream:
    """JSON values read one by one from a request body as it arrives (Go's
    json.Decoder on the body)."""

    def __init__(self, read: Callable[[], Awaitable[bytes]], limit: int) -> None:
        self._read = read
        self._limit = limit
        self._buf = ""
        self._pending = b""
        self._eof = False
        self._decoder = json.JSONDecoder()

    async def next(self) -> Any:
        """The next value; EOFError at the end; ValueError if malformed;
        BodyTooLarge if one value exceeds the limit."""
        while True:
            text = self._buf.lstrip()
            self._buf = text
            if text:
                try:
                    value, end = self._decoder.raw_decode(text)
                except RecursionError:
                    raise ValueError("exceeded max depth") from None
                except json.JSONDecodeError as e:
                    if self._eof:
                        raise ValueError("unexpected EOF" if _incomplete(text, e) else e.msg) from None
                else:
                    # A number at the very end of what arrived may go on.
                    if self._eof or end < len(text) or not text[end - 1].isdigit():
                        self._buf = text[end:]
                        return value
            elif self._eof:
                raise EOFError
            if len(self._buf) > self._limit:
                raise BodyTooLarge
            chunk = await self._read()
            if not chunk:
                self._eof = True
                if self._pending:
                    self._buf += self._pending.decode("utf-8", "replace")
                    self._pending = b""
                continue
            data = self._pending + chunk
            try:
                self._buf += data.decode("utf-8")
                self._pending = b""
            except UnicodeDecodeError as e:
                if e.start >= len(data) - 3:  # a character split across chunks
                    self._buf += data[: e.start].decode("utf-8")
                    self._pending = data[e.start:]
                else:
                    self._buf += data.decode("utf-8", "replace")
                    self._pending = b""


def _incomplete(text: str, e: json.JSONDecodeError) -> bool:
    """Whether a decode error is the text ending too early."""
    return e.pos >= len(text) - 1 or "Unterminated" in e.msg


# ------------------------------------------------------------------- answers
def error_body(code: grpc.StatusCode, message: str) -> bytes:
    return dumps({"error": message, "message": message, "code": code_number(code)})


def error_response(code: grpc.StatusCode, message: str, status: int | None = None) -> web.Response:
    return web.Response(
        body=error_body(code, message),
        status=status or http_status(code),
        content_type="application/json",
        headers=CORS_HEADERS,
    )


def stream_error(code: grpc.StatusCode, message: str) -> bytes:
    hc = http_status(code)
    err: dict[str, Any] = {"grpc_code": code_number(code), "http_code": hc, "message": message,
                           "http_status": _HTTP_TEXT.get(hc, "")}
    return dumps({"error": {k: v for k, v in err.items() if v}})


def _body_limit(server: Any) -> int:
    return 2 * (server.cfg.max_request_bytes + GRPC_OVERHEAD)


def _check_size(server: Any, msg: Message) -> None:
    limit = server.cfg.max_request_bytes + GRPC_OVERHEAD
    size = msg.ByteSize()
    if size > limit:
        raise CallAborted(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({size} vs. {limit})"
        )


async def wait_disconnected(request: web.Request) -> None:
    """Returns once the client's connection is gone (aiohttp does not cancel
    handlers on disconnect; this checks the transport now and then)."""
    while True:
        t = request.transport
        if t is None or t.is_closing():
            return
        await asyncio.sleep(DISCONNECT_CHECK)


async def run_until_disconnected(request: web.Request, coro: Awaitable[Any]) -> Any:
    """Run ``coro``; cancel it if the client goes away first (then None)."""
    task = asyncio.ensure_future(coro)
    watchdog = asyncio.ensure_future(wait_disconnected(request))
    try:
        await asyncio.wait([task, watchdog], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass
        watchdog.cancel()
    return None if task.cancelled() else task.result()


# ------------------------------------------------------------------ handlers
class Gateway:
    def __init__(self, server: Any) -> None:
        self.s = server

    def routes(self) -> list[web.RouteDef]:
        out = []
        for path, service, name in ROUTES:
            m = method(service, name)
            for prefix in PREFIXES:
                h = self._stream_handler(m) if (m.client_streaming or m.server_streaming) else self._unary_handler(m)
                out.append(web.post(prefix + path, h))
                if m.client_streaming or m.server_streaming:
                    out.append(web.get(prefix + path, self._ws_handler(m), allow_head=False))
        for prefix in PREFIXES:
            out.append(web.options(prefix + r"{tail:[\s\S]*}", self._options))
            out.append(web.route("*", prefix + r"{tail:[\s\S]*}", self._not_found))
        return out

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(status=200, headers=CORS_HEADERS)

    async def _not_found(self, request: web.Request) -> web.Response:
        # A known path with another method is 405, as Go's mux answers.
        tail = request.match_info.get("tail", "")
        if any(tail == p for p, _, _ in ROUTES):
            return web.Response(status=405, text="Method Not Allowed\n", headers=CORS_HEADERS)
        return web.Response(status=404, text="Not Found\n", headers=CORS_HEADERS)

    async def _read_one(self, request: web.Request, m: Method) -> Message:
        if request.content_length is not None and request.content_length > _body_limit(self.s):
            raise BodyTooLarge
        stream = JsonStream(request.content.readany, _body_limit(self.s))
        try:
            obj = await stream.next()
        except EOFError:
            obj = None
        except ValueError as e:
            raise CallAborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        try:
            msg = parse(obj, m.request_class)
        except json_format.ParseError as e:
            raise CallAborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        _check_size(self.s, msg)
        return msg

    def _unary_handler(self, m: Method) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                req = await self._read_one(request, m)
                resp = await call(self.s, m.service, m.name, req, http_metadata(request))
            except BodyTooLarge:
                return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, "request body too large", 413)
            except CallAborted as e:
                return error_response(e.code, e.details)
            except _CLIENT_GONE as e:
                log.debug("gateway: client went away during %s: %s", m.name, e)
                return error_response(grpc.StatusCode.INVALID_ARGUMENT, "incomplete request body", 400)
            except Exception:
                log.exception("gateway: internal error in %s", m.name)
                return error_response(grpc.StatusCode.INTERNAL, "kvstore: internal error")
            return web.Response(body=dumps(to_json(resp)), content_type="application/json", headers=CORS_HEADERS)

        return handle

    def _stream_handler(self, m: Method) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.content_length is not None and request.content_length > _body_limit(self.s) and not m.client_streaming:
                return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, "request body too large", 413)
            stream = JsonStream(request.content.readany, _body_limit(self.s))
            try:
                first = await self._first(stream, m)
            except BodyTooLarge:
                return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, "request body too large", 413)
            except CallAborted as e:
                return error_response(e.code, e.details)
            except _CLIENT_GONE as e:
                log.debug("gateway: client went away during %s: %s", m.name, e)
                return error_response(grpc.StatusCode.INVALID_ARGUMENT, "incomplete request body", 400)
            except Exception:
                log.exception("gateway: internal error in %s", m.name)
                return error_response(grpc.StatusCode.INTERNAL, "kvstore: internal error")

            response = web.StreamResponse(headers={**CORS_HEADERS, "Content-Type": "application/json"})

            async def send(data: bytes) -> None:
                if not response.prepared:
                    await response.prepare(request)
                await response.write(data)

            async def fail(code: grpc.StatusCode, message: str) -> None:
                if not response.prepared:
                    response.set_status(http_status(code))
                await send(stream_error(code, message))

            await run_until_disconnected(request, self._run(m, first, stream, request, send, fail))
            if not response.prepared:
                await response.prepare(request)
            try:
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                pass
            return response

        return handle

    async def _first(self, stream: JsonStream, m: Method) -> Message | None:
        """The first request of a stream (None: the body was empty)."""
        try:
            obj = await stream.next()
        except EOFError:
            if m.client_streaming:
                return None
            obj = None
        except ValueError as e:
            raise CallAborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        try:
            msg = parse(obj, m.request_class)
        except json_format.ParseError as e:
            raise CallAborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        _check_size(self.s, msg)
        return msg

    async def _run(
        self,
        m: Method,
        first: Message | None,
        stream: JsonStream,
        request: web.Request,
        send: Callable[[bytes], Awaitable[None]],
        fail: Callable[[grpc.StatusCode, str], Awaitable[None]],
    ) -> None:
        async def requests() -> AsyncIterator[Message]:
            if first is None:
                return
            yield first
            while True:
                try:
                    obj = await stream.next()
                    msg = parse(obj, m.request_class)
                    _check_size(self.s, msg)
                except (EOFError, ValueError, BodyTooLarge, json_format.ParseError, CallAborted):
                    return  # as etcd's gateway: a bad message ends the request stream
                yield msg

        await self._invoke(m, first, requests(), http_metadata(request), send, fail)

    async def _invoke(
        self,
        m: Method,
        first: Message | None,
        request_iter: AsyncIterator[Message],
        metadata: list[tuple[str, str]],
        send: Callable[[bytes], Awaitable[None]],
        fail: Callable[[grpc.StatusCode, str], Awaitable[None]],
    ) -> None:
        """Run a streaming RPC, sending each response as ``{"result": ...}``."""
        rcls = m.response_class

        async def write(item: Any) -> None:
            msg = item if isinstance(item, Message) else rcls.FromString(item_bytes(item))
            await send(dumps({"result": to_json(msg)}) + b"\n")

        try:
            fn = m.handler(self.s)
            ctx = CallContext(metadata, write)
            result = fn(request_iter if m.client_streaming else first, ctx)
            if hasattr(result, "__aiter__"):
                async for resp in result:
                    await write(resp)
            else:
                await result
        except CallAborted as e:
            await fail(e.code, e.details)
        except EtcdError as e:
            await fail(e.code, e.message)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("gateway: internal error in %s", m.name)
            await fail(grpc.StatusCode.INTERNAL, "kvstore: internal error")

    def _ws_handler(self, m: Method) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """etcd's wsproxy: a WebSocket carrying the same JSON stream."""

        async def handle(request: web.Request) -> web.StreamResponse:
            ws = web.WebSocketResponse()
            if not ws.can_prepare(request).ok:
                return web.Response(status=405, text="Method Not Allowed\n", headers=CORS_HEADERS)
            await ws.prepare(request)
            queue: asyncio.Queue[Message | None] = asyncio.Queue()

            async def reader() -> None:
                try:
                    async for frame in ws:
                        if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                            break
                        data = frame.data if isinstance(frame.data, str) else frame.data.decode("utf-8", "replace")
                        try:
                            queue.put_nowait(parse(json.loads(data), m.request_class))
                        except (ValueError, json_format.ParseError):
                            break
                finally:
                    queue.put_nowait(None)

            async def requests() -> AsyncIterator[Message]:
                while (msg := await queue.get()) is not None:
                    yield msg

            async def send(data: bytes) -> None:
                await ws.send_str(data.decode().rstrip("\n"))

            async def fail(code: grpc.StatusCode, message: str) -> None:
                await send(stream_error(code, message))

            async def run() -> None:
                if m.client_streaming:
                    await self._invoke(m, None, requests(), http_metadata(request), send, fail)
                else:
                    first = await queue.get()
                    if first is not None:
                        await self._invoke(m, first, requests(), http_metadata(request), send, fail)

            read_task = asyncio.ensure_future(reader())
            run_task = asyncio.ensure_future(run())
            try:
                # The socket closing ends the call (a WebSocket has no half-close).
                await asyncio.wait([read_task, run_task], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (read_task, run_task):
                    t.cancel()
                for t in (read_task, run_task):
                    try:
                        await t
                    except BaseException:
                        pass
                await ws.close()
            return ws

        return handle


def gateway_routes(server: Any) -> list[web.RouteDef]:
    return Gateway(server).routes()
