"""The friendly REST API: raw values over HTTP, conditional writes, blocking
reads and Server-Sent Events (what etcd's JSON gateway lacks).

Every operation goes through the same servicers as gRPC (``gateway.call``:
KV.Range / Put / DeleteRange / Txn, Lease.LeaseGrant / LeaseRevoke) and the
watches through the server's one watch hub, so validation, errors, limits
and linearizability are etcd's. The endpoints (also in ``OPENAPI``, served at
``/openapi.json``):

``GET /kv/<key>``
    The raw value (``application/octet-stream``), 404 if absent. Headers:
    ``ETag: "<mod_revision>"``, ``X-Kvstore-Create-Revision``,
    ``X-Kvstore-Mod-Revision``, ``X-Kvstore-Version``, ``X-Kvstore-Lease``
    (decimal, 0 = none) and ``X-Kvstore-Revision`` (the store revision the
    answer was read at, also on a 404). ``?rev=N`` reads the key as of
    revision N. ``If-None-Match: "<mod_revision>"`` answers 304 when unchanged.
    Reads are linearizable; ``?serializable`` reads this member's state
    without asking the leader.
``GET /kv/<key>?wait=<revision>[&timeout=30s]``
    A blocking query: answers as soon as the key changes after ``revision``
    (at once if it already has, or if that revision was compacted), and on
    timeout (default 30 s, at most 600 s; ``500ms``, ``30s``, ``2m`` or plain
    seconds), either way with the key's current state as a plain GET does
    (unchanged: the same ETag). Waits on the watch hub, never polls. The next
    call passes the answer's ``X-Kvstore-Revision`` as ``wait``. With
    ``&prefix`` it waits for any key under the prefix and answers the listing.
``GET /kv/<prefix>?prefix``
    ``{"revision", "count", "kvs": [{"key", "value", "create_revision",
    "mod_revision", "version", "lease"}], "more", "continue"}``; ``?keys``
    leaves values out, ``?limit=N`` pages: pass the answer's ``continue``
    token as ``?continue=`` for the next page (read at the first page's
    revision, so the pages form one consistent listing). A key or value that
    is not UTF-8 is given base64-encoded as ``key_base64`` / ``value_base64``.
    ``lease`` is a decimal string (IDs exceed JavaScript's exact integers).
``PUT /kv/<key>``
    The body is the value (at most --max-request-bytes, else 413).
    ``?lease=ID`` attaches a lease (decimal, or hex with ``0x``);
    ``?ttl=SECONDS`` grants a fresh lease first (Lease.LeaseGrant).
    ``If-Match: "<mod_revision>"`` writes only if the key is at that
    revision (compare-and-swap), ``If-Match: *`` only if it exists,
    ``If-None-Match: *`` only if it does not (create); 412 otherwise, with
    the current state in the headers. 201 when created, 200 when replaced;
    the body is ``{"key", "revision", "create_revision", "mod_revision",
    "version", "lease"}`` and ETag the new mod_revision.
``DELETE /kv/<key>``
    ``{"deleted", "revision"}``; 404 if there was no such key. The same
    preconditions as PUT. ``?prefix`` deletes every key under the prefix
    (no preconditions then).
``GET /watch/<prefix>``
    Server-Sent Events for every change under the prefix (``?exact``: only
    that key), from now, from ``?rev=N``, or after the ``Last-Event-ID``
    header (what EventSource sends when it reconnects). One message per
    revision, so a reconnect neither misses nor repeats a change:
    ``id: <revision>`` and ``data: {"revision", "events": [{"type": "PUT" |
    "DELETE", "key", "value", ..., "prev"?}]}`` (``?prev_kv`` adds the
    previous key-value). A comment line is sent every 15 s. If the revision
    to resume from was compacted, an ``event: error`` message with
    ``{"error", "code": 410, "compact_revision"}`` is sent and the stream
    ends (resume by re-reading the keys, then watching from that revision).

Authentication (while etcd-style auth is enabled): ``Authorization: <token>``
with the token from ``POST /v3/auth/authenticate``, as etcd's gateway takes
it; the servicers check every call as they check gRPC calls, and the watch
endpoints check READ on their range like a Watch create.

Errors are ``{"error": message, "code": http_status}``: 400 bad input,
401 no or invalid credentials, 403 permission denied, 404 no such key,
409 the request conflicts with the store (unknown lease), 410 revision
compacted, 412 precondition failed, 413 too large, 429 too many requests,
503 no leader, timeout or database space exceeded (NOSPACE alarm).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import grpc
from aiohttp import web

from . import errors
from .errors import EtcdError
from .gateway import CallAborted, call, http_metadata, run_until_disconnected
from .pb import kv_pb2, rpc_pb2
from .watch import hub_for, item_bytes

log = logging.getLogger("kvstore.rest")

MAX_INT64 = (1 << 63) - 1
DEFAULT_WAIT = 30.0  # seconds a blocking query waits by default
MAX_WAIT = 600.0
SSE_HEARTBEAT = 15.0

KV = "etcdserverpb.KV"
LEASE = "etcdserverpb.Lease"


# ------------------------------------------------------------------ errors
class RestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        body = {"error": self.message, "code": self.status, **self.extra}
        headers = dict(self.headers)
        if self.status == 503:
            headers.setdefault("Retry-After", "1")
        return web.Response(text=json.dumps(body), status=self.status, content_type="application/json",
                            headers=headers)


# Refusals for want of (valid) credentials while auth is enabled: 401.
_NO_CREDENTIALS = frozenset({
    errors.USER_EMPTY.message, errors.INVALID_AUTH_TOKEN.message, errors.AUTH_FAILED.message,
    "etcdserver: auth token is expired",
})


def from_abort(e: CallAborted) -> RestError:
    """The REST status of a gRPC status a servicer ended with."""
    code, msg = e.code, e.details
    if msg in _NO_CREDENTIALS:
        status = 401
    elif code == grpc.StatusCode.INVALID_ARGUMENT:
        status = 413 if msg == errors.REQUEST_TOO_LARGE.message else 400
    elif code == grpc.StatusCode.OUT_OF_RANGE:
        status = 410 if msg == errors.COMPACTED.message else 400
    elif code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                  grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED):
        status = 409  # e.g. "requested lease not found" on a write
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        status = 503 if msg == errors.NO_SPACE.message else 429
    elif code == grpc.StatusCode.UNAVAILABLE:
        status = 503
    elif code == grpc.StatusCode.UNAUTHENTICATED or msg in _NO_CREDENTIALS:
        status = 401
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        status = 403
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        status = 504
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        status = 501
    else:
        status = 500
    return RestError(status, msg)


# ------------------------------------------------------------- parameters
def _flag(request: web.Request, name: str) -> bool:
    v = request.query.get(name)
    if v is None:
        return False
    v = v.strip().lower()
    if v in ("", "1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise RestError(400, f"invalid value for ?{name}: {v!r} (a flag: true or false)")


def _int_param(request: web.Request, name: str, lo: int = 0) -> int | None:
    v = request.query.get(name)
    if v is None:
        return None
    try:
        n = int(v.strip(), 10)
    except ValueError:
        raise RestError(400, f"invalid value for ?{name}: {v!r} (an integer)") from None
    if n < lo or n > MAX_INT64:
        raise RestError(400, f"?{name} out of range: {v!r}")
    return n


def _lease_param(request: web.Request) -> int | None:
    v = request.query.get("lease")
    if v is None:
        return None
    s = v.strip().lower()
    try:
        n = int(s[2:], 16) if s.startswith("0x") else int(s, 10)
    except ValueError:
        raise RestError(400, f"invalid lease ID {v!r} (decimal, or hex with 0x)") from None
    if n <= 0 or n > MAX_INT64:
        raise RestError(400, f"lease ID out of range: {v!r}")
    return n


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")


def parse_duration(v: str) -> float:
    m = _DURATION.fullmatch(v.strip())
    if m is None:
        raise RestError(400, f"invalid timeout {v!r} (e.g. 500ms, 30s, 2m)")
    n = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if n > MAX_WAIT:
        raise RestError(400, f"timeout {v!r} too long (at most {int(MAX_WAIT)}s)")
    return n


def _etag_revision(v: str) -> int:
    s = v.strip()
    if s.startswith("W/"):
        s = s[2:]
    s = s.strip('"')
    try:
        n = int(s, 10)
    except ValueError:
        raise RestError(400, f"invalid entity tag {v!r} (a mod_revision)") from None
    if n < 0 or n > MAX_INT64:
        raise RestError(400, f"invalid entity tag {v!r}")
    return n


def _key(request: web.Request, prefix: str) -> bytes:
    """The key: the rest of the raw path, percent-decoded to bytes."""
    raw = request.raw_path.split("?", 1)[0]
    return unquote_to_bytes(raw[len(prefix):])


def prefix_end(key: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd (b"\\0" = to the end of the key space)."""
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _range_of(key: bytes, prefix: bool) -> tuple[bytes, bytes]:
    if not prefix:
        return key, b""
    if not key:
        return b"\0", b"\0"
    return key, prefix_end(key)


# ---------------------------------------------------------------- encoding
def _text(out: dict[str, Any], name: str, data: bytes) -> None:
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[name + "_base64"] = base64.b64encode(data).decode()


def kv_json(kv: kv_pb2.KeyValue, with_value: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _text(out, "key", kv.key)
    if with_value:
        _text(out, "value", kv.value)
    out["create_revision"] = kv.create_revision
    out["mod_revision"] = kv.mod_revision
    out["version"] = kv.version
    out["lease"] = str(kv.lease)
    return out


def kv_headers(kv: kv_pb2.KeyValue, revision: int) -> dict[str, str]:
    return {
        "ETag": f'"{kv.mod_revision}"',
        "X-Kvstore-Create-Revision": str(kv.create_revision),
        "X-Kvstore-Mod-Revision": str(kv.mod_revision),
        "X-Kvstore-Version": str(kv.version),
        "X-Kvstore-Lease": str(kv.lease),
        "X-Kvstore-Revision": str(revision),
    }


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json", headers=headers)


def _token(revision: int, key: bytes) -> str:
    return base64.urlsafe_b64encode(str(revision).encode() + b"." + key).decode().rstrip("=")


def _untoken(token: str) -> tuple[int, bytes]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        rev, key = raw.split(b".", 1)
        n = int(rev)
    except (ValueError, binascii.Error):
        raise RestError(400, "invalid continue token") from None
    if n <= 0 or n > MAX_INT64:
        raise RestError(400, "invalid continue token")
    return n, key


# ----------------------------------------------------------------- handlers
class Rest:
    def __init__(self, server: Any) -> None:
        self.s = server

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(r"/kv/{key:[\s\S]*}", self._wrap(self.get)),
            web.put(r"/kv/{key:[\s\S]*}", self._wrap(self.put)),
            web.delete(r"/kv/{key:[\s\S]*}", self._wrap(self.delete)),
            web.get(r"/watch/{key:[\s\S]*}", self._wrap(self.watch)),
            web.get("/openapi.json", self.openapi),
        ]

    def _wrap(self, fn: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request)
            except RestError as e:
                return e.response()
            except CallAborted as e:
                return from_abort(e).response()
            except EtcdError as e:
                return from_abort(CallAborted(e.code, e.message)).response()
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("REST: internal error in %s %s", request.method, request.path)
                return RestError(500, "kvstore: internal error").response()

        return handle

    async def _call(self, request: web.Request, service: str, name: str, req: Any) -> Any:
        return await call(self.s, service, name, req, http_metadata(request))

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(OPENAPI)

    # -- reads ---------------------------------------------------------------
    async def get(self, request: web.Request) -> web.StreamResponse:
        key = _key(request, "/kv/")
        prefix = _flag(request, "prefix")
        serializable = _flag(request, "serializable")
        rev = _int_param(request, "rev")
        wait = _int_param(request, "wait")
        timeout = request.query.get("timeout")
        wait_for = parse_duration(timeout) if timeout is not None else DEFAULT_WAIT
        if not prefix and not key:
            raise RestError(400, "no key given (GET /kv/<key>, or /kv/<prefix>?prefix to list)")
        if wait is not None:
            if rev is not None:
                raise RestError(400, "?wait and ?rev cannot be combined")
            if "continue" in request.query:
                raise RestError(400, "?wait and ?continue cannot be combined")
            return await self._long_poll(request, key, prefix, wait, wait_for, serializable)
        if prefix:
            return await self._list(request, key, rev or 0, serializable)
        return await self._get_one(request, key, rev or 0, serializable)

    async def _range(self, request: web.Request, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        return await self._call(request, KV, "Range", req)

    async def _get_one(self, request: web.Request, key: bytes, rev: int, serializable: bool) -> web.StreamResponse:
        resp = await self._range(request, rpc_pb2.RangeRequest(key=key, revision=rev, serializable=serializable))
        return self._one_answer(request, key, resp.kvs[0] if resp.kvs else None, resp.header.revision)

    def _one_answer(self, request: web.Request, key: bytes, kv: kv_pb2.KeyValue | None, revision: int) -> web.StreamResponse:
        if kv is None:
            raise RestError(404, "key not found", headers={"X-Kvstore-Revision": str(revision)})
        headers = kv_headers(kv, revision)
        inm = request.headers.get("If-None-Match")
        if inm is not None:
            tags = [t for t in (x.strip() for x in inm.split(",")) if t]
            if "*" in tags or any(_etag_revision(t) == kv.mod_revision for t in tags):
                return web.Response(status=304, headers=headers)
        return web.Response(body=kv.value, headers=headers, content_type="application/octet-stream")

    async def _list(self, request: web.Request, key: bytes, rev: int, serializable: bool) -> web.Response:
        keys_only = _flag(request, "keys")
        limit = _int_param(request, "limit") or 0
        start, end = _range_of(key, True)
        token = request.query.get("continue")
        if token is not None:
            rev, start = _untoken(token)
            if start < key or (end != b"\0" and start >= end):
                raise RestError(400, "continue token does not belong to this prefix")
        req = rpc_pb2.RangeRequest(key=start, range_end=end, limit=limit, revision=rev,
                                   serializable=serializable, keys_only=keys_only)
        resp = await self._range(request, req)
        revision = rev or resp.header.revision
        body: dict[str, Any] = {
            "revision": revision,
            "count": resp.count,
            "kvs": [kv_json(kv, not keys_only) for kv in resp.kvs],
            "more": resp.more,
        }
        if resp.more and resp.kvs:
            body["continue"] = _token(revision, resp.kvs[-1].key + b"\0")
        return _json(body, headers={"X-Kvstore-Revision": str(revision)})

    async def _long_poll(self, request: web.Request, key: bytes, prefix: bool, wait: int,
                         timeout: float, serializable: bool) -> web.StreamResponse:
        """A blocking query on the watch hub: waits for the first change after
        ``wait`` (or the timeout), then answers the current state."""
        start, end = _range_of(key, prefix)
        await self._check_read(request, start, end)
        await run_until_disconnected(request, self._first_change(start, end, wait, timeout))
        if request.transport is None:
            raise ConnectionResetError("client gone")
        if prefix:
            return await self._list(request, key, 0, serializable)
        return await self._get_one(request, key, 0, serializable)

    async def _check_read(self, request: web.Request, key: bytes, end: bytes) -> None:
        """While auth is enabled, the caller needs READ on the watched range
        (the hub is not behind a servicer: the same check as a Watch create)."""
        auth = getattr(self.s, "auth", None)
        if auth is None or not auth.enabled:
            return
        info = await auth.resolve(request.headers.get("Authorization") or None)
        err = auth.watch_error(info, rpc_pb2.WatchCreateRequest(key=key, range_end=end))
        if err is not None:
            raise err

    async def _first_change(self, key: bytes, end: bytes, wait: int, timeout: float) -> bool:
        """Whether [key, end) changed after revision ``wait`` within ``timeout``
        (a compacted ``wait`` counts as a change: it cannot be ruled out)."""
        hub = hub_for(self.s)
        stream = hub.open_stream()
        try:
            stream.create(rpc_pb2.WatchCreateRequest(key=key, range_end=end, start_revision=min(wait, MAX_INT64 - 1) + 1))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    item = await asyncio.wait_for(stream.get(), remaining)
                except asyncio.TimeoutError:
                    return False
                if item is None:
                    return False
                resp = rpc_pb2.WatchResponse.FromString(item_bytes(item))
                if resp.canceled or resp.events:
                    return True
        finally:
            stream.close()

    # -- writes --------------------------------------------------------------
    def _preconditions(self, request: web.Request, key: bytes) -> list[rpc_pb2.Compare]:
        im = request.headers.get("If-Match")
        inm = request.headers.get("If-None-Match")
        if im is not None and inm is not None:
            raise RestError(400, "If-Match and If-None-Match cannot be combined")
        if im is not None:
            tag = im.strip()
            if tag == "*":
                return [rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.VERSION,
                                        result=rpc_pb2.Compare.GREATER, version=0)]
            if "," in tag:
                raise RestError(400, "If-Match takes one entity tag")
            return [rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL,
                                    mod_revision=_etag_revision(tag))]
        if inm is not None:
            if inm.strip() != "*":
                raise RestError(400, "If-None-Match on a write takes only *")
            return [rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL,
                                    create_revision=0)]
        return []

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.s.cfg.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RestError(413, f"value too large (at most {limit} bytes, --max-request-bytes)")
        chunks, size = [], 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise RestError(413, f"value too large (at most {limit} bytes, --max-request-bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    def _precondition_failed(self, key: bytes, current: rpc_pb2.RangeResponse, revision: int) -> RestError:
        if current.kvs:
            kv = current.kvs[0]
            return RestError(412, "precondition failed", headers=kv_headers(kv, revision),
                             mod_revision=kv.mod_revision)
        return RestError(412, "precondition failed: no such key", headers={"X-Kvstore-Revision": str(revision)},
                         mod_revision=0)

    async def put(self, request: web.Request) -> web.StreamResponse:
        key = _key(request, "/kv/")
        if not key:
            raise RestError(400, "no key given (PUT /kv/<key>)")
        lease = _lease_param(request)
        ttl = _int_param(request, "ttl", lo=1)
        if lease is not None and ttl is not None:
            raise RestError(400, "?lease and ?ttl cannot be combined")
        for flag in ("prefix", "wait", "rev"):
            if flag in request.query:
                raise RestError(400, f"?{flag} does not apply to PUT")
        compares = self._preconditions(request, key)
        value = await self._read_body(request)
        granted = 0
        if ttl is not None:
            g = await self._call(request, LEASE, "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl))
            lease = granted = g.ID
        put = rpc_pb2.PutRequest(key=key, value=value, lease=lease or 0, prev_kv=True)
        try:
            if compares:
                txn = rpc_pb2.TxnRequest(
                    compare=compares,
                    success=[rpc_pb2.RequestOp(request_put=put)],
                    failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
                )
                t = await self._call(request, KV, "Txn", txn)
                if not t.succeeded:
                    raise self._precondition_failed(key, t.responses[0].response_range, t.header.revision)
                presp = t.responses[0].response_put
                revision = t.header.revision
            else:
                presp = await self._call(request, KV, "Put", put)
                revision = presp.header.revision
        except BaseException:
            if granted:
                self._revoke_later(granted)
            raise
        prev = presp.prev_kv if presp.HasField("prev_kv") else None
        kv = kv_pb2.KeyValue(
            key=key,
            create_revision=prev.create_revision if prev is not None else revision,
            mod_revision=revision,
            version=(prev.version + 1) if prev is not None else 1,
            lease=lease or 0,
        )
        body = kv_json(kv, with_value=False)
        body["revision"] = revision
        return _json(body, status=200 if prev is not None else 201, headers=kv_headers(kv, revision))

    def _revoke_later(self, lease_id: int) -> None:
        async def revoke() -> None:
            try:
                await call(self.s, LEASE, "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease_id))
            except Exception as e:  # best effort: the lease expires anyway
                log.debug("revoking unused lease %x: %r", lease_id, e)

        asyncio.ensure_future(revoke())

    async def delete(self, request: web.Request) -> web.StreamResponse:
        key = _key(request, "/kv/")
        prefix = _flag(request, "prefix")
        if not prefix and not key:
            raise RestError(400, "no key given (DELETE /kv/<key>, or /kv/<prefix>?prefix)")
        compares = self._preconditions(request, key)
        if prefix and compares:
            raise RestError(400, "preconditions apply to a single key, not to ?prefix")
        start, end = _range_of(key, prefix)
        dreq = rpc_pb2.DeleteRangeRequest(key=start, range_end=end)
        if compares:
            txn = rpc_pb2.TxnRequest(
                compare=compares,
                success=[rpc_pb2.RequestOp(request_delete_range=dreq)],
                failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
            )
            t = await self._call(request, KV, "Txn", txn)
            if not t.succeeded:
                raise self._precondition_failed(key, t.responses[0].response_range, t.header.revision)
            deleted, revision = t.responses[0].response_delete_range.deleted, t.header.revision
        else:
            d = await self._call(request, KV, "DeleteRange", dreq)
            deleted, revision = d.deleted, d.header.revision
        headers = {"X-Kvstore-Revision": str(revision)}
        if not prefix and deleted == 0:
            raise RestError(404, "key not found", headers=headers)
        return _json({"deleted": deleted, "revision": revision}, headers=headers)

    # -- Server-Sent Events ------------------------------------------------------
    async def watch(self, request: web.Request) -> web.StreamResponse:
        key = _key(request, "/watch/")
        exact = _flag(request, "exact")
        if exact and not key:
            raise RestError(400, "?exact needs a key")
        prev_kv = _flag(request, "prev_kv")
        serializable = _flag(request, "serializable")
        start = _int_param(request, "rev") or 0
        last_id = request.headers.get("Last-Event-ID")
        if last_id is not None and last_id.strip():
            try:
                n = int(last_id.strip(), 10)
            except ValueError:
                raise RestError(400, f"invalid Last-Event-ID {last_id!r} (a revision)") from None
            if n < 0 or n >= MAX_INT64:
                raise RestError(400, f"invalid Last-Event-ID {last_id!r}")
            start = n + 1
        k, end = _range_of(key, not exact)
        await self._check_read(request, k, end)
        if start == 0 and not serializable:
            await self.s.read_barrier()  # "from now" means after every acknowledged write
        hub = hub_for(self.s)
        stream = hub.open_stream()
        try:
            stream.create(rpc_pb2.WatchCreateRequest(key=k, range_end=end, start_revision=start, prev_kv=prev_kv))
            resp = web.StreamResponse(headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            })
            await resp.prepare(request)
            first = start if start > 0 else hub.rev + 1
            await resp.write(f": watching from revision {first}\n\n".encode())
            await run_until_disconnected(request, self._pump(stream, resp, prev_kv))
        finally:
            stream.close()
        return resp

    async def _pump(self, stream: Any, resp: web.StreamResponse, prev_kv: bool) -> None:
        while True:
            try:
                item = await asyncio.wait_for(stream.get(), SSE_HEARTBEAT)
            except asyncio.TimeoutError:
                await resp.write(b": ping\n\n")
                continue
            if item is None:
                return
            w = rpc_pb2.WatchResponse.FromString(item_bytes(item))
            if w.canceled:
                if w.compact_revision:
                    data = {"error": errors.COMPACTED.message, "code": 410, "compact_revision": w.compact_revision}
                else:
                    data = {"error": w.cancel_reason or "watch canceled", "code": 400}
                await resp.write(f"event: error\ndata: {json.dumps(data)}\n\n".encode())
                return
            out = []
            by_rev: dict[int, list[Any]] = {}
            for ev in w.events:
                by_rev.setdefault(ev.kv.mod_revision, []).append(ev)
            for rev, evs in by_rev.items():
                events = []
                for ev in evs:
                    if ev.type == kv_pb2.Event.DELETE:
                        e: dict[str, Any] = {"type": "DELETE"}
                        _text(e, "key", ev.kv.key)
                        e["mod_revision"] = ev.kv.mod_revision
                    else:
                        e = {"type": "PUT", **kv_json(ev.kv)}
                    if prev_kv and ev.HasField("prev_kv"):
                        e["prev"] = kv_json(ev.prev_kv)
                    events.append(e)
                out.append(f"id: {rev}\ndata: {json.dumps({'revision': rev, 'events': events})}\n\n")
            if out:
                await resp.write("".join(out).encode())


def rest_routes(server: Any) -> list[web.RouteDef]:
    return Rest(server).routes()


# ------------------------------------------------------------------ OpenAPI
def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_INT_HEADER = {"schema": {"type": "string", "pattern": "^[0-9]+$"}}
_KV_HEADERS = {
    "ETag": {"description": "the key's mod_revision, quoted", "schema": {"type": "string"}},
    "X-Kvstore-Create-Revision": _INT_HEADER,
    "X-Kvstore-Mod-Revision": _INT_HEADER,
    "X-Kvstore-Version": _INT_HEADER,
    "X-Kvstore-Lease": {"description": "lease ID (decimal), 0 if none", **_INT_HEADER},
    "X-Kvstore-Revision": {"description": "store revision of the answer", **_INT_HEADER},
}
_COMMON_ERRORS = {
    "400": _err("bad input"),
    "401": _err("authentication required (auth enabled)"),
    "403": _err("permission denied"),
    "409": _err("conflicts with the store (e.g. unknown lease)"),
    "410": _err("revision compacted"),
    "429": _err("too many requests"),
    "500": _err("internal error"),
    "501": _err("not implemented"),
    "503": _err("no leader, timeout, or database space exceeded"),
    "504": _err("timeout"),
}


def _q(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_FLAG = {"type": "string", "enum": ["", "true", "false", "1", "0"]}
_NONNEG = {"type": "integer", "minimum": 0, "maximum": MAX_INT64}
_IF_MATCH = {"type": "string", "pattern": '^(\\*|(W/)?"?[0-9]{1,18}"?)$'}
_KEY_PARAM = {
    "name": "key", "in": "path", "required": True,
    "description": "the key (percent-encoded; may contain /)",
    "schema": {"type": "string", "minLength": 1},
}
_PREFIX_PARAM = {
    "name": "prefix", "in": "path", "required": True,
    "description": "the key prefix (percent-encoded; may contain /)",
    "schema": {"type": "string", "minLength": 1},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "kvstore REST API",
        "version": "1",
        "description": "Raw values over HTTP with conditional writes, blocking reads and Server-Sent Events. "
        "etcd's JSON gateway (/v3/...) is served too; see etcd's documentation for it.",
    },
    "paths": {
        "/kv/{key}": {
            "get": {
                "summary": "Read a key (raw value), list a prefix (JSON), or wait for a change",
                "parameters": [
                    _KEY_PARAM,
                    _q("prefix", "list every key under the prefix as JSON", _FLAG),
                    _q("keys", "with prefix: keys and metadata only", _FLAG),
                    _q("limit", "with prefix: at most this many keys (0 = all)", _NONNEG),
                    _q("continue", "with prefix: the continue token of the previous page",
                       {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}),
                    _q("rev", "read as of this revision (0 = current)", _NONNEG),
                    _q("wait", "block until a change after this revision", _NONNEG),
                    _q("timeout", "with wait: how long to block (e.g. 500ms, 30s, 2m; at most 600s)",
                       {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m)?$"}),
                    _q("serializable", "read this member's state without a linearizable read barrier", _FLAG),
                    {"name": "If-None-Match", "in": "header", "required": False,
                     "description": "304 if the key's ETag matches (entity tags, comma-separated, or *)",
                     "schema": {"type": "string", "pattern": '^(\\*|(W/)?"?[0-9]{1,18}"?( *, *(W/)?"?[0-9]{1,18}"?)*)$'}},
                ],
                "responses": {
                    "200": {
                        "description": "the raw value (single key, with its ETag and X-Kvstore-* headers) "
                        "or the listing (prefix, with X-Kvstore-Revision)",
                        "headers": _KV_HEADERS,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "application/json": {"schema": {"$ref": "#/components/schemas/Listing"}},
                        },
                    },
                    "304": {"description": "not modified (If-None-Match)", "headers": _KV_HEADERS},
                    "404": {**_err("no such key"),
                            "headers": {"X-Kvstore-Revision": _KV_HEADERS["X-Kvstore-Revision"]}},
                    **_COMMON_ERRORS,
                },
            },
            "put": {
                "summary": "Write a key (the body is the value)",
                "parameters": [
                    _KEY_PARAM,
                    _q("lease", "attach this lease (decimal, or hex with 0x)",
                       {"type": "string", "pattern": "^([0-9]+|0x[0-9a-fA-F]+)$"}),
                    _q("ttl", "grant a new lease with this TTL (seconds) and attach it",
                       {"type": "integer", "minimum": 1, "maximum": MAX_INT64}),
                    {"name": "If-Match", "in": "header", "required": False,
                     "description": "write only if the key's mod_revision is this (or * : if it exists)",
                     "schema": _IF_MATCH},
                    {"name": "If-None-Match", "in": "header", "required": False,
                     "description": "* : write only if the key does not exist", "schema": {"type": "string", "enum": ["*"]}},
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {
                    "200": {"description": "replaced", "headers": _KV_HEADERS,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WriteResult"}}}},
                    "201": {"description": "created", "headers": _KV_HEADERS,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WriteResult"}}}},
                    "412": _err("precondition failed (the current state is in the headers)"),
                    "413": _err("value larger than --max-request-bytes"),
                    **_COMMON_ERRORS,
                },
            },
            "delete": {
                "summary": "Delete a key, or every key under a prefix",
                "parameters": [
                    _KEY_PARAM,
                    _q("prefix", "delete every key under the prefix", _FLAG),
                    {"name": "If-Match", "in": "header", "required": False,
                     "description": "delete only if the key's mod_revision is this (or * : if it exists)",
                     "schema": _IF_MATCH},
                    {"name": "If-None-Match", "in": "header", "required": False,
                     "description": "* : only if the key does not exist", "schema": {"type": "string", "enum": ["*"]}},
                ],
                "responses": {
                    "200": {"description": "deleted", "headers": {"X-Kvstore-Revision": _KV_HEADERS["X-Kvstore-Revision"]},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeleteResult"}}}},
                    "404": _err("no such key"),
                    "412": _err("precondition failed"),
                    **_COMMON_ERRORS,
                },
            },
        },
        "/watch/{prefix}": {
            "get": {
                "summary": "Server-Sent Events for the changes under a prefix",
                "description": "One message per revision: `id: <revision>`, `data: {\"revision\", \"events\"}`. "
                "Reconnecting with Last-Event-ID resumes after that revision. A compacted start revision "
                "gives an `event: error` message with code 410, then the stream ends.",
                "parameters": [
                    _PREFIX_PARAM,
                    _q("exact", "watch only this key, not the prefix", _FLAG),
                    _q("rev", "start at this revision (default: now)", _NONNEG),
                    _q("prev_kv", "add each key's previous state to events", _FLAG),
                    _q("serializable", "start from this member's state without a read barrier", _FLAG),
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "description": "resume after this revision", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                ],
                "responses": {
                    "200": {"description": "the event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    **_COMMON_ERRORS,
                },
            },
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "code"],
                "properties": {
                    "error": {"type": "string"},
                    "code": {"type": "integer"},
                    "mod_revision": {"type": "integer"},
                    "compact_revision": {"type": "integer"},
                },
            },
            "KeyValue": {
                "type": "object",
                "required": ["create_revision", "mod_revision", "version", "lease"],
                "properties": {
                    "key": {"type": "string"},
                    "key_base64": {"type": "string", "format": "byte"},
                    "value": {"type": "string"},
                    "value_base64": {"type": "string", "format": "byte"},
                    "create_revision": {"type": "integer"},
                    "mod_revision": {"type": "integer"},
                    "version": {"type": "integer"},
                    "lease": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "Listing": {
                "type": "object",
                "required": ["revision", "count", "kvs", "more"],
                "properties": {
                    "revision": {"type": "integer"},
                    "count": {"type": "integer", "description": "keys from this page's start to the end of the prefix"},
                    "kvs": {"type": "array", "items": {"$ref": "#/components/schemas/KeyValue"}},
                    "more": {"type": "boolean"},
                    "continue": {"type": "string"},
                },
            },
            "WriteResult": {
                "type": "object",
                "required": ["revision", "create_revision", "mod_revision", "version", "lease"],
                "properties": {
                    "key": {"type": "string"},
                    "key_base64": {"type": "string"},
                    "revision": {"type": "integer"},
                    "create_revision": {"type": "integer"},
                    "mod_revision": {"type": "integer"},
                    "version": {"type": "integer"},
                    "lease": {"type": "string"},
                },
            },
            "DeleteResult": {
                "type": "object",
                "required": ["deleted", "revision"],
                "properties": {"deleted": {"type": "integer"}, "revision": {"type": "integer"}},
            },
        }
    },
}
