"""Shared plumbing of the gRPC adapters: the per-method wrapper (authorisation,
counters, EtcdError → gRPC status)."""
from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from .. import errors
from ..errors import EtcdError
from ..metrics import RpcCounts
from ..pb import internal_pb2, rpc_pb2, v3election_pb2, v3lock_pb2
from . import authz

log = logging.getLogger("kvstore.api")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

NOT_SUPPORTED_FOR_LEARNER = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner")


def _refused_by_learner(request: Any) -> bool:
    """etcd 3.4's isRPCSupportedForLearner (asked on a learner): it serves
    Status and serializable Range only; every other unary RPC is refused."""
    if isinstance(request, rpc_pb2.StatusRequest):
        return False
    if isinstance(request, rpc_pb2.RangeRequest):
        return not request.serializable
    return True


async def check_quota(server: Any, req: Any) -> None:
    """etcd's quotaAlarmer: a Put, Txn with puts or LeaseGrant that could take
    the store past --quota-backend-bytes raises the NOSPACE alarm (through
    Raft, for this member) and is refused."""
    if server.store.available(req):
        return
    alarm = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=server.member_id, alarm=rpc_pb2.NOSPACE)
    try:
        await server.propose(internal_pb2.InternalRequest(alarm=alarm))
    except EtcdError as e:
        log.warning("raising the NOSPACE alarm failed: %s", e.message)
    raise errors.NO_SPACE


def _service_names() -> dict[str, str]:
    """Generated servicer base class name → full gRPC service name."""
    out = {}
    for mod in (rpc_pb2, v3lock_pb2, v3election_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            out[svc.name + "Servicer"] = svc.full_name
    return out


_SERVICE_NAMES = _service_names()


# grpc-go's code names, as etcd's go-grpc-prometheus labels them.
_PROM_CODES = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}


class _Site:
    """What the wrapper of one servicer method needs on every call, resolved
    on its first call (kept on the servicer instance)."""

    __slots__ = ("server", "path", "checked", "counts")

    def __init__(self, servicer: Any, method: str) -> None:
        service = next(
            (_SERVICE_NAMES[c.__name__] for c in type(servicer).__mro__ if c.__name__ in _SERVICE_NAMES),
            type(servicer).__name__,
        )
        self.server = getattr(servicer, "s", None)
        self.path = f"/{service}/{method}"
        self.checked = self.path not in authz.UNCHECKED
        metrics = getattr(self.server, "metrics", None)
        self.counts: RpcCounts | None = metrics.rpc_counts(service, method) if metrics is not None else None


def unary(fn: F) -> F:
    """Wrap a unary handler: authorisation while auth is enabled (one flag
    test otherwise, see authz), learner refusal, per-RPC counters; etcd errors
    become their gRPC status; anything unexpected is logged once and
    reported as INTERNAL, never a dropped call."""

    method = fn.__name__
    attr = "_site_" + method

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        site: _Site | None = getattr(self, attr, None)
        if site is None:
            site = _Site(self, method)
            setattr(self, attr, site)
        counts = site.counts
        if counts is not None:
            counts.started += 1
        try:
            server = site.server
            auth = getattr(server, "auth", None)
            if auth is not None and auth.enabled and site.checked:
                resp = await _authorized(fn, site, auth, self, request, context)
            else:
                if server is not None and server.is_learner() and _refused_by_learner(request):
                    raise NOT_SUPPORTED_FOR_LEARNER
                resp = await fn(self, request, context)
        except EtcdError as e:
            # Counted before the status leaves: a client that reads /metrics
            # right after its call returned must see the call counted.
            if counts is not None:
                counts.handled_code(_PROM_CODES.get(e.code.name, e.code.name))
            await context.abort(e.code, e.message)
        except grpc.aio.AbortError:
            if counts is not None:
                counts.handled_code("Aborted")
            raise
        except Exception:
            if counts is not None:
                counts.handled_code("Internal")
            log.exception("internal error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "kvstore: internal error")
        if counts is not None:
            counts.ok += 1
        return resp

    wrapper.authorizes = True  # type: ignore[attr-defined]  # authz.guard adds nothing
    return wrapper  # type: ignore[return-value]


async def _authorized(
    fn: Callable[..., Awaitable[Any]], site: _Site, auth: Any, servicer: Any, request: Any, context: Any
) -> Any:
    """``fn`` as the caller (auth is enabled): resolved and checked first."""
    try:
        info = await authz.authorize(site.server, auth, site.path, request, context)
    except EtcdError as e:
        raise authz.styled(site.path, e) from None
    if site.server.is_learner() and _refused_by_learner(request):
        raise NOT_SUPPORTED_FOR_LEARNER
    with auth.identity(info):
        return await fn(servicer, request, context)
