"""etcdserverpb.Auth over gRPC, and the one place gRPC calls are authorised.

``server_interceptors(server)`` gives the interceptor ``__main__`` installs on
the gRPC server: while auth is enabled it resolves the caller (``token``
metadata, as etcd's clients send it) for every unary and server-streaming
call, runs ``server.auth.check_request`` (reads after their ReadIndex
barrier), and runs the handler under the caller's identity so that whatever
it proposes is checked again when applied (see ``kvstore.auth``). While auth
is disabled it costs one boolean test per call.

``AuthWatchService`` is the Watch service with etcd's per-create check: a
create the caller may not read is answered, in order, with a created and
canceled response (watch id -1) whose cancel_reason is the gRPC error
string, exactly as etcd 3.4 does.

Errors are etcd's, including its shapes: Maintenance admin calls fail with
code UNKNOWN and the raw "auth: ..." message; Lock and Election with code
UNKNOWN and the "etcdserver: ..." message (their recipes run through clientv3
in etcd).
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, AsyncIterator

import grpc

from .. import errors
from ..auth import ANONYMOUS, Auth, AuthInfo, raw_auth_error
from ..errors import EtcdError
from ..pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from ..server import KvServer
from .common import unary
from .watch import WatchService

log = logging.getLogger("kvstore.api.auth")

TOKEN_KEYS = ("token", "authorization")  # rpctypes.TokenFieldNameGRPC / ...Swagger
GATEWAY_KEY = "grpcgateway-accept"  # a gateway's certificate is not a user

# Calls that never look at credentials (etcd: no AuthInfoFromCtx on them).
UNCHECKED = frozenset(
    {
        "/etcdserverpb.Auth/Authenticate",
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Lease/LeaseLeases",
        "/etcdserverpb.Watch/Watch",  # per create request, in AuthWatchService
    }
)
RAW_STYLE = frozenset(
    {
        "/etcdserverpb.Maintenance/Defragment",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Maintenance/Hash",
        "/etcdserverpb.Maintenance/HashKV",
    }
)
RECIPE_PREFIXES = ("/v3lockpb.Lock/", "/v3electionpb.Election/")
LEASE_FORWARD_HEADER = "kvstore-lease-forwarded"  # kvstore.lease.FORWARD_HEADER

# Go's names of gRPC codes, for watch cancel reasons ("rpc error: code = ...").
_GO_CODE = {
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
}


def go_status_string(e: EtcdError) -> str:
    return f"rpc error: code = {_GO_CODE.get(e.code, e.code.name)} desc = {e.message}"


def _styled(method: str, e: EtcdError) -> EtcdError:
    if method in RAW_STYLE:
        return raw_auth_error(e)
    if method.startswith(RECIPE_PREFIXES) and e.code != grpc.StatusCode.UNAVAILABLE:
        return EtcdError(grpc.StatusCode.UNKNOWN, e.message)
    return e


def credentials(context: Any, auth: Auth) -> tuple[str | None, str | None]:
    """(token, client certificate common name) of a call."""
    token = None
    gateway = False
    for k, v in context.invocation_metadata() or ():
        if k in TOKEN_KEYS and token is None:
            token = v if isinstance(v, str) else v.decode()
        elif k == GATEWAY_KEY:
            gateway = True
    cn = None
    if token is None and auth.client_cert_auth and not gateway:
        try:
            names = context.auth_context().get("x509_common_name") or ()
        except Exception:  # pragma: no cover - no TLS on this call
            names = ()
        if names:
            cn = names[0].decode() if isinstance(names[0], bytes) else names[0]
    return token, cn


def _set_serializable(t: rpc_pb2.TxnRequest) -> None:
    for op in list(t.success) + list(t.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            op.request_range.serializable = True
        elif which == "request_txn":
            _set_serializable(op.request_txn)


def _txn_serializable(t: rpc_pb2.TxnRequest) -> bool:
    for op in list(t.success) + list(t.failure):
        which = op.WhichOneof("request")
        if which == "request_range" and not op.request_range.serializable:
            return False
        if which == "request_txn" and not _txn_serializable(op.request_txn):
            return False
    return True


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, server: KvServer) -> None:
        self.s = server
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in UNCHECKED:
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(method, handler))
            self._wrapped[method] = cached
        return cached[1]

    async def _authorize(self, auth: Auth, method: str, request: Any, context: Any) -> AuthInfo:
        """Resolve and check one call; reads get their barrier here."""
        token, cn = credentials(context, auth)
        info = await auth.resolve(token, cn)
        s = self.s
        if method == "/etcdserverpb.KV/Range":
            if not request.serializable and not s.is_learner():
                # Check against state at least as new as the read point; the
                # handler then reads without a second barrier.
                await s.read_barrier()
                request.serializable = True
        elif method == "/etcdserverpb.KV/Txn":
            from ..mvcc import is_txn_readonly

            if is_txn_readonly(request) and not _txn_serializable(request) and not s.is_learner():
                await s.read_barrier()
                _set_serializable(request)
        elif method == "/etcdserverpb.Lease/LeaseTimeToLive":
            md = context.invocation_metadata() or ()
            if any(k == LEASE_FORWARD_HEADER for k, _ in md):
                return info  # checked by the member the client called
        auth.check_request(info, method, request)
        return info

    def unary_unary(self, method: str, inner: Any) -> Any:
        """``inner(request, context)`` authorised as a call of ``method``."""
        s = self.s

        async def unary_unary(request: Any, context: Any) -> Any:
            auth = s.auth
            if not auth.enabled:
                return await inner(request, context)
            try:
                info = await self._authorize(auth, method, request, context)
            except EtcdError as e:
                e = _styled(method, e)
                await context.abort(e.code, e.message)
            with auth.identity(info):
                return await inner(request, context)

        return unary_unary

    def unary_stream(self, method: str, inner: Any) -> Any:
        """The same for a server-streaming ``inner`` (an async generator)."""
        s = self.s

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            auth = s.auth
            info = None
            if auth.enabled:
                try:
                    info = await self._authorize(auth, method, request, context)
                except EtcdError as e:
                    e = _styled(method, e)
                    await context.abort(e.code, e.message)
            if info is None:
                async for item in inner(request, context):
                    yield item
                return
            with auth.identity(info):
                async for item in inner(request, context):
                    yield item

        return unary_stream

    def _wrap(self, method: str, h: Any) -> Any:
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.unary_unary(method, h.unary_unary),
                request_deserializer=h.request_deserializer,
                response_serializer=h.response_serializer,
            )
        if h.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self.unary_stream(method, h.unary_stream),
                request_deserializer=h.request_deserializer,
                response_serializer=h.response_serializer,
            )
        return h  # client streams: LeaseKeepAlive and Watch (see UNCHECKED)


def guard(server: KvServer, method: str, fn: Any) -> Any:
    """``fn(request, context)`` (a servicer method) authorised exactly as the
    gRPC interceptor authorises a call of ``method`` (e.g.
    "/etcdserverpb.KV/Range"): for front ends that call the servicers
    directly (HTTP gateway, REST API). The context needs
    ``invocation_metadata()`` (the token under "token" or "authorization")
    and ``abort(code, message)``. Watch and LeaseKeepAlive need no guard
    (the Watch servicer checks each create itself)."""
    if method in UNCHECKED:
        return fn
    ic: AuthInterceptor | None = getattr(server, "_auth_interceptor", None)
    if ic is None:
        ic = AuthInterceptor(server)
        server._auth_interceptor = ic  # type: ignore[attr-defined]
    if inspect.isasyncgenfunction(fn):
        return ic.unary_stream(method, fn)
    return ic.unary_unary(method, fn)


def server_interceptors(server: KvServer) -> list[grpc.aio.ServerInterceptor]:
    return [AuthInterceptor(server)]


class AuthWatchService(WatchService):
    """Watch with etcd's permission check of each create request."""

    async def Watch(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        auth = self.s.auth
        creds = credentials(context, auth) if auth is not None else (None, None)
        await super().Watch(_Tagged(request_iterator, creds), context)

    async def _read(self, request_iterator, stream) -> None:
        creds = getattr(request_iterator, "creds", (None, None))
        await super()._read(self._checked(request_iterator, stream, creds), stream)

    async def _checked(self, request_iterator, stream, creds) -> AsyncIterator[rpc_pb2.WatchRequest]:
        auth = self.s.auth
        async for req in request_iterator:
            if auth.enabled and req.WhichOneof("request_union") == "create_request":
                try:
                    info = await auth.resolve(*creds)
                    err = auth.watch_error(info, req.create_request)
                except EtcdError as e:
                    err = e
                if err is not None:
                    stream._refuse(stream.hub.rev, go_status_string(err))
                    continue
            yield req


class _Tagged:
    """A request iterator that carries the stream's credentials along."""

    __slots__ = ("_it", "creds")

    def __init__(self, it: Any, creds: tuple[str | None, str | None]) -> None:
        self._it = it
        self.creds = creds

    def __aiter__(self):
        return self._it.__aiter__()


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, server: KvServer) -> None:
        self.s = server

    async def _propose(self, **kw: Any) -> Any:
        res = await self.s.propose(internal_pb2.InternalRequest(**kw))
        resp = res.response
        resp.header.CopyFrom(self.s.header(res.revision))
        return resp

    def _caller(self) -> AuthInfo:
        return Auth.current() or ANONYMOUS

    @unary
    async def AuthEnable(self, request: rpc_pb2.AuthEnableRequest, context) -> rpc_pb2.AuthEnableResponse:
        return await self._propose(auth_enable=request)

    @unary
    async def AuthDisable(self, request: rpc_pb2.AuthDisableRequest, context) -> rpc_pb2.AuthDisableResponse:
        return await self._propose(auth_disable=request)

    @unary
    async def Authenticate(self, request: rpc_pb2.AuthenticateRequest, context) -> rpc_pb2.AuthenticateResponse:
        return await self.s.auth.authenticate(request.name, request.password)

    @unary
    async def UserAdd(self, request: rpc_pb2.AuthUserAddRequest, context) -> rpc_pb2.AuthUserAddResponse:
        if not request.name:
            raise errors.USER_EMPTY
        no_password = request.options.no_password
        hashed = b"" if no_password else await self.s.auth.hash_password(request.password)
        return await self._propose(
            auth_user_add=internal_pb2.AuthUserAdd(name=request.name, password_hash=hashed, no_password=no_password)
        )

    @unary
    async def UserGet(self, request: rpc_pb2.AuthUserGetRequest, context) -> rpc_pb2.AuthUserGetResponse:
        await self.s.read_barrier()
        st = self.s.auth.state
        me = self._caller().user
        err = st.admin_error(me)
        if err is not None and request.name != me:
            raise err
        u = st.users.get(request.name)
        if u is None:
            raise errors.USER_NOT_FOUND
        return rpc_pb2.AuthUserGetResponse(header=self.s.header(), roles=list(u.roles))

    @unary
    async def UserList(self, request: rpc_pb2.AuthUserListRequest, context) -> rpc_pb2.AuthUserListResponse:
        await self.s.read_barrier()
        st = self.s.auth.state
        err = st.admin_error(self._caller().user)
        if err is not None:
            raise err
        return rpc_pb2.AuthUserListResponse(header=self.s.header(), users=st.user_names())

    @unary
    async def UserDelete(self, request: rpc_pb2.AuthUserDeleteRequest, context) -> rpc_pb2.AuthUserDeleteResponse:
        return await self._propose(auth_user_delete=request)

    @unary
    async def UserChangePassword(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context
    ) -> rpc_pb2.AuthUserChangePasswordResponse:
        hashed = await self.s.auth.hash_password(request.password)
        return await self._propose(
            auth_user_change_password=internal_pb2.AuthUserChangePassword(name=request.name, password_hash=hashed)
        )

    @unary
    async def UserGrantRole(self, request: rpc_pb2.AuthUserGrantRoleRequest, context) -> rpc_pb2.AuthUserGrantRoleResponse:
        return await self._propose(auth_user_grant_role=request)

    @unary
    async def UserRevokeRole(
        self, request: rpc_pb2.AuthUserRevokeRoleRequest, context
    ) -> rpc_pb2.AuthUserRevokeRoleResponse:
        return await self._propose(auth_user_revoke_role=request)

    @unary
    async def RoleAdd(self, request: rpc_pb2.AuthRoleAddRequest, context) -> rpc_pb2.AuthRoleAddResponse:
        return await self._propose(auth_role_add=request)

    @unary
    async def RoleGet(self, request: rpc_pb2.AuthRoleGetRequest, context) -> rpc_pb2.AuthRoleGetResponse:
        await self.s.read_barrier()
        st = self.s.auth.state
        me = self._caller().user
        err = st.admin_error(me)
        if err is not None and not st.has_role(me, request.role):
            raise err
        r = st.roles.get(request.role)
        if r is None:
            raise errors.ROLE_NOT_FOUND
        return rpc_pb2.AuthRoleGetResponse(header=self.s.header(), perm=list(r.keyPermission))

    @unary
    async def RoleList(self, request: rpc_pb2.AuthRoleListRequest, context) -> rpc_pb2.AuthRoleListResponse:
        await self.s.read_barrier()
        st = self.s.auth.state
        err = st.admin_error(self._caller().user)
        if err is not None:
            raise err
        return rpc_pb2.AuthRoleListResponse(header=self.s.header(), roles=st.role_names())

    @unary
    async def RoleDelete(self, request: rpc_pb2.AuthRoleDeleteRequest, context) -> rpc_pb2.AuthRoleDeleteResponse:
        return await self._propose(auth_role_delete=request)

    @unary
    async def RoleGrantPermission(
        self, request: rpc_pb2.AuthRoleGrantPermissionRequest, context
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        return await self._propose(auth_role_grant_permission=request)

    @unary
    async def RoleRevokePermission(
        self, request: rpc_pb2.AuthRoleRevokePermissionRequest, context
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        return await self._propose(auth_role_revoke_permission=request)
