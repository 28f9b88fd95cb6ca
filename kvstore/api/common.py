"""Shared plumbing of the gRPC adapters: EtcdError → gRPC status."""
from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from ..errors import EtcdError

log = logging.getLogger("kvstore.api")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def unary(fn: F) -> F:
    """Wrap a unary handler: etcd errors become their gRPC status; anything
    unexpected is logged once and reported as INTERNAL, never a dropped call."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except EtcdError as e:
            await context.abort(e.code, e.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "kvstore: internal error")

    return wrapper  # type: ignore[return-value]
