"""Per-call authorisation of the gRPC API and of the front ends that call its
servicers directly (HTTP gateway, REST API).

No gRPC interceptor: an interceptor makes grpc.aio run Python coroutines to
look up the handler of every call (tens of microseconds, auth on or off).
Instead the per-method wrapper every unary handler already has
(``common.unary``) tests ``auth.enabled`` and, while auth is enabled, calls
``authorize``; every other method (Lock and Election recipes, the
server-streaming Snapshot and Observe) is wrapped by ``guard`` when it is
registered. Auth enabled at runtime is enforced from the next call on.

While auth is enabled a call is resolved (``token`` metadata, as etcd's
clients send it, or a client certificate's common name), checked with
``server.auth.check_request`` (reads after their ReadIndex barrier), and run
under the caller's identity, so that whatever it proposes is checked again
when applied (see ``kvstore.auth``).
"""
from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Callable

import grpc

from ..auth import Auth, AuthInfo, raw_auth_error
from ..errors import EtcdError
from ..mvcc import is_txn_readonly
from ..pb import rpc_pb2

TOKEN_KEYS = ("token", "authorization")  # rpctypes.TokenFieldNameGRPC / ...Swagger
GATEWAY_KEY = "grpcgateway-accept"  # a gateway's certificate is not a user
LEASE_FORWARD_HEADER = "kvstore-lease-forwarded"  # kvstore.lease.FORWARD_HEADER

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


def styled(method: str, e: EtcdError) -> EtcdError:
    """An auth error as etcd reports it for ``method``: Maintenance admin calls
    with code UNKNOWN and the raw "auth: ..." message, Lock and Election with
    code UNKNOWN (their recipes run through clientv3 in etcd)."""
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


def txn_serializable(t: rpc_pb2.TxnRequest) -> bool:
    """etcd: a txn is serializable only if every range in it (and in nested txns) is."""
    for op in list(t.success) + list(t.failure):
        which = op.WhichOneof("request")
        if which == "request_range" and not op.request_range.serializable:
            return False
        if which == "request_txn" and not txn_serializable(op.request_txn):
            return False
    return True


def _set_serializable(t: rpc_pb2.TxnRequest) -> None:
    for op in list(t.success) + list(t.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            op.request_range.serializable = True
        elif which == "request_txn":
            _set_serializable(op.request_txn)


async def authorize(server: Any, auth: Auth, method: str, request: Any, context: Any) -> AuthInfo:
    """Resolve and check one call of ``method`` (gRPC path) while auth is
    enabled; raises EtcdError (unstyled). A linearizable read gets its
    barrier here and is marked serializable, so that it is checked against
    state at least as new as its read point and read without a second one."""
    token, cn = credentials(context, auth)
    info = await auth.resolve(token, cn)
    if method == "/etcdserverpb.KV/Range":
        if not request.serializable and not server.is_learner():
            await server.read_barrier()
            request.serializable = True
    elif method == "/etcdserverpb.KV/Txn":
        if is_txn_readonly(request) and not txn_serializable(request) and not server.is_learner():
            await server.read_barrier()
            _set_serializable(request)
    elif method == "/etcdserverpb.Lease/LeaseTimeToLive":
        md = context.invocation_metadata() or ()
        if any(k == LEASE_FORWARD_HEADER for k, _ in md):
            return info  # checked by the member the client called
    auth.check_request(info, method, request)
    return info


def guard(server: Any, method: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(request, context)`` (a servicer method, or an async generator for
    a server stream) authorised as a call of ``method`` (e.g.
    "/etcdserverpb.KV/Range"). ``fn`` itself when it needs no wrapper: a
    ``common.unary`` handler authorises itself, and Watch, LeaseKeepAlive
    and the other UNCHECKED calls take no credentials. The context needs
    ``invocation_metadata()`` and ``abort(code, message)``."""
    if method in UNCHECKED or getattr(fn, "authorizes", False):
        return fn
    if inspect.isasyncgenfunction(fn):
        return _guard_stream(server, method, fn)
    return _guard_unary(server, method, fn)


async def _caller(server: Any, auth: Auth, method: str, request: Any, context: Any) -> AuthInfo:
    """``authorize``, its refusal as the call's status (etcd's style)."""
    try:
        return await authorize(server, auth, method, request, context)
    except EtcdError as e:
        e = styled(method, e)
        await context.abort(e.code, e.message)
        raise e from None  # for a context whose abort returns


def _guard_unary(server: Any, method: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request: Any, context: Any) -> Any:
        auth = server.auth
        if not auth.enabled:
            return await fn(request, context)
        with auth.identity(await _caller(server, auth, method, request, context)):
            return await fn(request, context)

    return guarded


def _guard_stream(server: Any, method: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request: Any, context: Any) -> AsyncIterator[Any]:
        auth = server.auth
        if not auth.enabled:
            async for item in fn(request, context):
                yield item
            return
        with auth.identity(await _caller(server, auth, method, request, context)):
            async for item in fn(request, context):
                yield item

    return guarded


class Guarded:
    """A servicer as the gRPC server sees it: each method through ``guard``
    (the generated ``add_*Servicer_to_server`` look the methods up by name)."""

    def __init__(self, servicer: Any, server: Any, service: str) -> None:
        self._servicer = servicer
        self._server = server
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return guard(self._server, f"/{self._service}/{name}", getattr(self._servicer, name))
