"""etcdserverpb.Watch over gRPC: one bidirectional call ↔ one hub stream.

Requests are read in a task of their own and applied to the stream as they
come (create, cancel, progress); responses are what the stream queues,
already serialized, written one by one with gRPC flow control. While the
stream's send queue is full no further request is read, so a client that
does not read cannot make the server buffer without bound.

As etcd 3.4: the call stays open after the client half-closes (its watches
keep running); with the ``hasleader=true`` metadata (clientv3's
WithRequireLeader) the call is refused with "etcdserver: no leader" when the
member has no leader, and ended with that error once the member has had no
leader for three election timeouts; learners refuse the stream.
"""
from __future__ import annotations

import asyncio
import logging

import grpc

from .. import errors
from ..errors import EtcdError
from ..pb import rpc_pb2
from ..server import KvServer
from ..watch import WatchHub, WatchStream, hub_for, item_bytes

log = logging.getLogger("kvstore.api.watch")

REQUIRE_LEADER_KEY = "hasleader"  # rpctypes.MetadataRequireLeaderKey
MAX_NO_LEADER_CHECKS = 3  # etcd's maxNoLeaderCnt (election timeouts)
NOT_SUPPORTED_FOR_LEARNER = EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner")


class WatchService:
    """Registered by hand (``add_to``) so responses can be pre-serialized."""

    def __init__(self, server: KvServer, hub: WatchHub | None = None) -> None:
        self.s = server
        self.hub = hub if hub is not None else hub_for(server)

    def add_to(self, grpc_server: grpc.aio.Server) -> None:
        handlers = {
            "Watch": grpc.stream_stream_rpc_method_handler(
                self.Watch,
                request_deserializer=rpc_pb2.WatchRequest.FromString,
                response_serializer=item_bytes,
            )
        }
        grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.Watch", handlers),))
        add_registered = getattr(grpc_server, "add_registered_method_handlers", None)
        if add_registered is not None:
            add_registered("etcdserverpb.Watch", handlers)

    async def Watch(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        if self.s.is_learner():
            await context.abort(NOT_SUPPORTED_FOR_LEARNER.code, NOT_SUPPORTED_FOR_LEARNER.message)
        require_leader = any(
            k == REQUIRE_LEADER_KEY and v == "true" for k, v in (context.invocation_metadata() or ())
        )
        if require_leader and not self.s.has_leader():
            await context.abort(errors.NO_LEADER.code, errors.NO_LEADER.message)

        stream = self.hub.open_stream()
        failure: list[EtcdError] = []
        tasks = [asyncio.ensure_future(self._read(request_iterator, stream))]
        if require_leader:
            tasks.append(asyncio.ensure_future(self._monitor_leader(stream, failure)))
        try:
            while True:
                item = await stream.get()
                if item is None:
                    break
                await context.write(item)
        finally:
            stream.close()
            for t in tasks:
                t.cancel()
        if failure:
            await context.abort(failure[0].code, failure[0].message)

    async def _read(self, request_iterator, stream: WatchStream) -> None:
        try:
            async for req in request_iterator:
                if stream.closed:
                    return
                kind = req.WhichOneof("request_union")
                if kind == "create_request":
                    stream.create(req.create_request)
                elif kind == "cancel_request":
                    stream.cancel(req.cancel_request.watch_id)
                elif kind == "progress_request":
                    stream.request_progress()
                await stream.wait_room()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the client went away mid-read: the writer ends too
            log.debug("watch stream receive ended: %r", e)
        # EOF (client half-closed): etcd keeps sending on the stream.

    async def _monitor_leader(self, stream: WatchStream, failure: list[EtcdError]) -> None:
        interval = max(0.05, self.s.cfg.election_timeout / 1000.0)
        missed = 0
        while not stream.closed:
            await asyncio.sleep(interval)
            missed = 0 if self.s.has_leader() else missed + 1
            if missed >= MAX_NO_LEADER_CHECKS:
                failure.append(errors.NO_LEADER)
                stream.close()
                return
