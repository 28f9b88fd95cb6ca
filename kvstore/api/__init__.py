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


def add_services(grpc_server: grpc.aio.Server, server: KvServer) -> None:
    from ..pb import v3election_pb2_grpc, v3lock_pb2_grpc

    svc = servicers(server)
    rpc_pb2_grpc.add_KVServicer_to_server(svc["etcdserverpb.KV"], grpc_server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(svc["etcdserverpb.Cluster"], grpc_server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(svc["etcdserverpb.Maintenance"], grpc_server)
    svc["etcdserverpb.Watch"].add_to(grpc_server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(svc["etcdserverpb.Lease"], grpc_server)
    v3lock_pb2_grpc.add_LockServicer_to_server(svc["v3lockpb.Lock"], grpc_server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(svc["v3electionpb.Election"], grpc_server)
    rpc_pb2_grpc.add_AuthServicer_to_server(svc["etcdserverpb.Auth"], grpc_server)


def server_interceptors(server: KvServer) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors the gRPC server must be created with (authorisation)."""
    from .auth import server_interceptors as auth_interceptors

    return auth_interceptors(server)
