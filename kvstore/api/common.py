"""Shared plumbing of the gRPC adapters: EtcdError → gRPC status."""
from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from .. import errors
from ..errors import EtcdError
from ..pb import internal_pb2, rpc_pb2

log = logging.getLogger("kvstore.api")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

NOT_SUPPORTED_FOR_LEARNER = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner")


def _refused_by_learner(service: Any, request: Any) -> bool:
    """etcd 3.4's isRPCSupportedForLearner: a learner serves Status and
    serializable Range only; every other unary RPC is refused."""
    server = getattr(service, "s", None)
    if server is None or not server.is_learner():
        return False
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


_SERVICE_NAMES = {
    "KVService": "etcdserverpb.KV",
    "LeaseService": "etcdserverpb.Lease",
    "ClusterService": "etcdserverpb.Cluster",
    "MaintenanceService": "etcdserverpb.Maintenance",
    "AuthService": "etcdserverpb.Auth",
    "LockService": "v3lockpb.Lock",
    "ElectionService": "v3electionpb.Election",
}
# grpc-go's code names, as etcd's go-grpc-prometheus labels them.
_PROM_CODES = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}


def unary(fn: F) -> F:
    """Wrap a unary handler: etcd errors become their gRPC status; anything
    unexpected is logged once and reported as INTERNAL, never a dropped call."""

    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metrics = getattr(getattr(self, "s", None), "metrics", None)
        service = _SERVICE_NAMES.get(type(self).__name__, type(self).__name__)
        if metrics is not None:
            metrics.rpc_started(service, method)

        def handled(code: str) -> None:
            # Before the status leaves: a client that reads /metrics right
            # after its call returned must see the call counted.
            if metrics is not None:
                metrics.rpc_handled(service, method, _PROM_CODES.get(code, code))

        try:
            if _refused_by_learner(self, request):
                raise NOT_SUPPORTED_FOR_LEARNER
            resp = await fn(self, request, context)
        except EtcdError as e:
            handled(e.code.name)
            await context.abort(e.code, e.message)
        except grpc.aio.AbortError:
            handled("ABORTED")
            raise
        except Exception:
            handled("INTERNAL")
            log.exception("internal error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "kvstore: internal error")
        handled("OK")
        return resp

    return wrapper  # type: ignore[return-value]
