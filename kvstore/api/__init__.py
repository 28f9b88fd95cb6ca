"""gRPC adapters of the etcd v3 API; each is a thin layer over KvServer."""
from __future__ import annotations

from typing import Any

import grpc

from ..pb import rpc_pb2_grpc
from ..server import KvServer


def servicers(server: KvServer) -> dict[str, Any]:
    """The one instance of each servicer of ``server``, by full gRPC service
    name; gRPC and the HTTP gateway (kvstore/gateway.py) call the same ones."""
    svc: dict[str, Any] | None = getattr(server, "api_servicers", None)
    if svc is None:
        from .auth import AuthService, AuthWatchService
        from .cluster import ClusterService
        from .election import ElectionService
        from .kv import KVService
        from .lease import LeaseService
        from .lock import LockService, Recipes
        from .maintenance import MaintenanceService

        recipes = Recipes(server)
        svc = {
            "etcdserverpb.KV": KVService(server),
            "etcdserverpb.Watch": AuthWatchService(server),  # WatchService + per-create auth check
            "etcdserverpb.Lease": LeaseService(server),
            "etcdserverpb.Cluster": ClusterService(server),
            "etcdserverpb.Maintenance": MaintenanceService(server),
            "v3lockpb.Lock": LockService(server, recipes),
            "v3electionpb.Election": ElectionService(server, recipes),
            "etcdserverpb.Auth": AuthService(server),
        }
        server.api_servicers = svc  # type: ignore[attr-defined]
    return svc


def add_services(grpc_server: Any, server: KvServer) -> None:
    """Register every servicer, each method authorised (kvstore.api.authz),
    all in one ``MethodTable``, on ``grpc_server``: a kvstore.rpc RpcServer
    (or anything with ``add_generic_rpc_handlers``, e.g. grpc.aio's server)."""
    from ..pb import v3election_pb2_grpc, v3lock_pb2_grpc
    from .authz import Guarded

    svc = servicers(server)
    table = MethodTable()

    def g(name: str) -> Any:
        return Guarded(svc[name], server, name)

    rpc_pb2_grpc.add_KVServicer_to_server(g("etcdserverpb.KV"), table)
    rpc_pb2_grpc.add_ClusterServicer_to_server(g("etcdserverpb.Cluster"), table)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(g("etcdserverpb.Maintenance"), table)
    svc["etcdserverpb.Watch"].add_to(table)
    rpc_pb2_grpc.add_LeaseServicer_to_server(g("etcdserverpb.Lease"), table)
    v3lock_pb2_grpc.add_LockServicer_to_server(g("v3lockpb.Lock"), table)
    v3election_pb2_grpc.add_ElectionServicer_to_server(g("v3electionpb.Election"), table)
    rpc_pb2_grpc.add_AuthServicer_to_server(g("etcdserverpb.Auth"), table)
    grpc_server.add_generic_rpc_handlers((table,))


class MethodTable(grpc.GenericRpcHandler):
    """Every method's handler, found by its path in one dict.

    Stands in for the server while the generated ``add_*_to_server``
    functions register; kvstore.rpc.RpcServer then serves its ``handlers``
    (and grpc.aio could, as one generic handler)."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, h in handlers.items():
            self.handlers[f"/{service}/{name}"] = h

    def add_generic_rpc_handlers(self, generic: Any) -> None:
        """The same methods again, as the generated code also passes them."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(handler_call_details.method)
