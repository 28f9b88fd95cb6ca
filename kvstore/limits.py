"""Resource limits a client cannot talk its way past (issue 8, safe defaults).

* ``--max-watches-per-stream`` (default 10000): a Watch stream holding that
  many watches refuses the next create request the way etcd refuses any
  single watch, with a created+canceled response whose ``cancel_reason`` is
  ``etcdserver: too many watches on this stream ...``; the stream and its
  other watches carry on (a gRPC error would end all of them).
* ``--max-leases`` (default 1000000): LeaseGrant fails with
  RESOURCE_EXHAUSTED ``etcdserver: too many leases ...`` while this member's
  applied lease table holds that many leases. The count is the member's own
  view, so concurrent grants through several members can overshoot a little:
  a guard against runaway clients, not an exact quota.
* The request size limit is ``--max-request-bytes`` (gRPC message size and
  the HTTP body size).

Both apply to every API at once: gRPC, the JSON gateway and the REST API
call the same servicer instances and watch hub, and ``install`` wraps those
instances (no change to the servicers themselves). Leases that the Lock
service grants for its own sessions are not counted against the limit.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import grpc

from .pb import rpc_pb2

log = logging.getLogger("kvstore.limits")


def too_many_watches(limit: int) -> str:
    return f"etcdserver: too many watches on this stream: limit is {limit} (--max-watches-per-stream)"


def too_many_leases(limit: int) -> str:
    return f"etcdserver: too many leases: limit is {limit} (--max-leases)"


def install(server: Any) -> None:
    """Apply the configured limits to ``server``'s API (after ``server.start()``,
    before the gRPC services and the HTTP app are built)."""
    from .api import servicers
    from .watch import hub_for

    cfg = server.cfg
    if cfg.max_watches_per_stream > 0:
        _limit_watches(hub_for(server), cfg.max_watches_per_stream)
    if cfg.max_leases > 0:
        _limit_leases(servicers(server)["etcdserverpb.Lease"], server, cfg.max_leases)


def _limit_watches(hub: Any, limit: int) -> None:
    if getattr(hub, "_kvstore_watch_limit", None) is not None:
        return
    hub._kvstore_watch_limit = limit
    open_stream = hub.open_stream
    reason = too_many_watches(limit)

    @functools.wraps(open_stream)
    def open_limited_stream() -> Any:
        stream = open_stream()
        create = stream.create

        def create_limited(req: rpc_pb2.WatchCreateRequest) -> int:
            if len(stream.watchers) >= limit and not stream.closed:
                log.debug("watch create refused: %d watches on the stream", len(stream.watchers))
                return stream._refuse(stream.hub.rev, reason)
            return create(req)

        stream.create = create_limited
        return stream

    hub.open_stream = open_limited_stream


def _limit_leases(service: Any, server: Any, limit: int) -> None:
    grant = service.LeaseGrant
    if getattr(grant, "_kvstore_lease_limit", None) is not None:
        return
    message = too_many_leases(limit)

    @functools.wraps(grant)
    async def lease_grant_limited(request: rpc_pb2.LeaseGrantRequest, context: Any) -> Any:
        if len(server.lessor) >= limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        return await grant(request, context)

    lease_grant_limited._kvstore_lease_limit = limit  # type: ignore[attr-defined]
    service.LeaseGrant = lease_grant_limited
