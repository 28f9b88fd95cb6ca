"""gRPC adapters of the etcd v3 API; each is a thin layer over KvServer."""
from __future__ import annotations

import grpc

from ..pb import rpc_pb2_grpc
from ..server import KvServer


def add_services(grpc_server: grpc.aio.Server, server: KvServer) -> None:
    from .cluster import ClusterService
    from .kv import KVService
    from .maintenance import MaintenanceService

    rpc_pb2_grpc.add_KVServicer_to_server(KVService(server), grpc_server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(server), grpc_server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(server), grpc_server)
    from .watch import WatchService

    WatchService(server).add_to(grpc_server)
    _add_lease_lock_election(grpc_server, server)


def _add_lease_lock_election(grpc_server: grpc.aio.Server, server: KvServer) -> None:
    from ..pb import v3election_pb2_grpc, v3lock_pb2_grpc
    from .election import ElectionService
    from .lease import LeaseService
    from .lock import LockService, Recipes

    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(server), grpc_server)
    recipes = Recipes(server)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockService(server, recipes), grpc_server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(server, recipes), grpc_server)
