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
